// CPU registration of the additive attention ops: the query projection and weight gradients as ATen GEMMs, the
// fused per-row part (tanh scores, masked softmax, context; and its backward) in the capability-selected kernels
// of csrc/cpu/kernels/attention.cpp, parallel over batch rows. valid_len outside [0, S] is an error before any
// kernel runs (on CPU reading it costs no device sync).
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "attention_args.h"
#include "cpu/dispatch.h"

S2S_CPU_KERNEL_TABLE(AttentionKernels, attention_kernels)

namespace s2s_fused::cpu {
namespace {

void check_valid_len_values(const AttnArgs& a) {
  const int64_t* vl = a.rows.valid_len;
  for (int64_t b = 0; b < a.rows.B; ++b) {
    TORCH_CHECK(vl[b] >= 0 && vl[b] <= a.rows.S, "valid_len: expected values in [0, S=", a.rows.S, "], got ", vl[b],
                " at index ", b);
  }
}

// Rows per task: about 16K multiply-adds of the score and context loops, so a task outweighs its scheduling.
int64_t attn_grain(const AttnRows& r) { return std::max<int64_t>(1, 16384 / std::max<int64_t>(1, r.S * (r.H + r.Dv))); }

std::tuple<at::Tensor, at::Tensor, at::Tensor> additive_attention_forward_cpu(
    const at::Tensor& query, const at::Tensor& keys, const at::Tensor& values, const at::Tensor& w_q,
    const at::Tensor& v, const at::Tensor& valid_len) {
  AttnArgs a = attn_args(query, keys, values, w_q, v, valid_len);
  check_valid_len_values(a);
  at::Tensor qp = attn_query_proj(a);
  auto [context, weights] = attn_forward_outputs(a);
  const auto p = attn_forward_params(a, qp, context, weights);
  at::parallel_for(0, p.rows.B, attn_grain(p.rows),
                   [&](int64_t b0, int64_t b1) { attention_kernels().forward(p, b0, b1); });
  return {context, weights, qp};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> additive_attention_backward_cpu(
    const at::Tensor& grad_context, const std::optional<at::Tensor>& grad_weights, const at::Tensor& query,
    const at::Tensor& keys, const at::Tensor& values, const at::Tensor& w_q, const at::Tensor& v,
    const at::Tensor& valid_len, const at::Tensor& query_proj) {
  AttnArgs a = attn_args(query, keys, values, w_q, v, valid_len);
  const at::Tensor gw = contiguous_or_undefined(grad_weights);
  attn_check_backward(a, grad_context, gw, query_proj);
  check_valid_len_values(a);
  const at::Tensor g = grad_context.contiguous(), qp = query_proj.contiguous();
  AttnBackwardOutputs o = attn_backward_outputs(a);
  const auto p = attn_backward_params(a, g, gw, qp, o);
  at::parallel_for(0, p.rows.B, attn_grain(p.rows),
                   [&](int64_t b0, int64_t b1) { attention_kernels().backward(p, b0, b1); });
  auto [grad_query, grad_w_q, grad_v] = attn_finish_backward(a, o);
  return {grad_query, o.grad_keys, o.grad_values, grad_w_q, grad_v};
}

}  // namespace
}  // namespace s2s_fused::cpu

TORCH_LIBRARY_IMPL(s2s_fused, CPU, m) {
  m.impl("additive_attention_forward", &s2s_fused::cpu::additive_attention_forward_cpu);
  m.impl("additive_attention_backward", &s2s_fused::cpu::additive_attention_backward_cpu);
}
