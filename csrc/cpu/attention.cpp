// CPU registration of the attention ops (additive, and dot with the same kernels): the query projection and weight
// gradients as ATen GEMMs, the fused per-row part (tanh or dot scores, masked softmax, context; and its backward)
// in the capability-selected kernels of csrc/cpu/kernels/attention.cpp, parallel over source rows: a task runs all
// R query rows of its source rows back to back, while that row's keys and values are in cache. valid_len outside
// [0, S] is an error before any kernel runs (on CPU reading it costs no device sync).
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

// Source rows per task: about 16K multiply-adds of the score and context loops (R query rows each), so a task
// outweighs its scheduling.
int64_t attn_grain(const AttnRows& r) {
  return std::max<int64_t>(1, 16384 / std::max<int64_t>(1, r.R * r.S * (r.H + r.Dv)));
}

// fn(n0, n1) over the query rows of whole source rows, in parallel.
template <typename F>
void for_source_rows(const AttnRows& r, const F& fn) {
  at::parallel_for(0, r.B, attn_grain(r), [&](int64_t b0, int64_t b1) { fn(b0 * r.R, b1 * r.R); });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> additive_attention_forward_cpu(
    const at::Tensor& query, const at::Tensor& keys, const at::Tensor& values, const at::Tensor& w_q,
    const at::Tensor& v, const at::Tensor& valid_len) {
  AttnArgs a = attn_args(query, keys, values, w_q, v, valid_len);
  check_valid_len_values(a);
  at::Tensor qp = attn_query_proj(a);
  auto [context, weights] = attn_forward_outputs(a);
  const auto p = attn_forward_params(a, qp, context, weights);
  for_source_rows(p.rows, [&](int64_t n0, int64_t n1) { attention_kernels().forward(p, n0, n1); });
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
  for_source_rows(p.rows, [&](int64_t n0, int64_t n1) { attention_kernels().backward(p, n0, n1); });
  return attn_finish_backward(a, o);
}

std::tuple<at::Tensor, at::Tensor> dot_attention_forward_cpu(const at::Tensor& query, const at::Tensor& keys,
                                                             const at::Tensor& values, const at::Tensor& valid_len) {
  AttnArgs a = dot_attn_args(query, keys, values, valid_len);
  check_valid_len_values(a);
  const at::Tensor qp = attn_query_proj(a);
  auto [context, weights] = attn_forward_outputs(a);
  const auto p = attn_forward_params(a, qp, context, weights);
  for_source_rows(p.rows, [&](int64_t n0, int64_t n1) { attention_kernels().forward(p, n0, n1); });
  return {context, weights};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> dot_attention_backward_cpu(
    const at::Tensor& grad_context, const std::optional<at::Tensor>& grad_weights, const at::Tensor& query,
    const at::Tensor& keys, const at::Tensor& values, const at::Tensor& valid_len) {
  AttnArgs a = dot_attn_args(query, keys, values, valid_len);
  const at::Tensor gw = contiguous_or_undefined(grad_weights);
  attn_check_grads(a, grad_context, gw);
  check_valid_len_values(a);
  const at::Tensor g = grad_context.contiguous(), qp = attn_query_proj(a);
  AttnBackwardOutputs o = attn_backward_outputs(a);
  const auto p = attn_backward_params(a, g, gw, qp, o);
  for_source_rows(p.rows, [&](int64_t n0, int64_t n1) { attention_kernels().backward(p, n0, n1); });
  return dot_attn_finish_backward(a, o);
}

}  // namespace
}  // namespace s2s_fused::cpu

TORCH_LIBRARY_IMPL(s2s_fused, CPU, m) {
  m.impl("additive_attention_forward", &s2s_fused::cpu::additive_attention_forward_cpu);
  m.impl("additive_attention_backward", &s2s_fused::cpu::additive_attention_backward_cpu);
  m.impl("dot_attention_forward", &s2s_fused::cpu::dot_attention_forward_cpu);
  m.impl("dot_attention_backward", &s2s_fused::cpu::dot_attention_backward_cpu);
}
