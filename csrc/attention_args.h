// Torch side of the attention ops (additive and dot), shared by the CPU registration (csrc/cpu/attention.cpp) and
// the CUDA binding (csrc/cuda/attention_binding.cpp): argument checks (TORCH_CHECK, for direct callers of
// torch.ops.s2s_fused.*; the Python wrapper checks first), the query projection and the weight gradients (GEMMs
// through ATen, around the fused per-row kernels), and the raw-pointer view of csrc/attention.h. Nothing here
// reads tensor values, so nothing here synchronises with a device.
#pragma once

#include <ATen/ATen.h>

#include "attention.h"
#include "checks.h"

namespace s2s_fused {

struct AttnArgs {
  at::Tensor query, keys, values, w_q, v, valid_len;  // keys, values, v, valid_len contiguous
  cpu::AttnRows rows;
};

inline at::ScalarType attn_acc_dtype(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

// w_q and v: the additive op's (both null for the dot op, whose keys must have query's width: H = Hq).
inline AttnArgs attn_args_of(const at::Tensor& query, const at::Tensor& keys, const at::Tensor& values,
                             const at::Tensor* w_q, const at::Tensor* v, const at::Tensor& valid_len) {
  check_floating(query, "query");
  check_dim(query, 2, "query");
  check_same(keys, query, "keys", "query");
  check_dim(keys, 3, "keys");
  check_same(values, query, "values", "query");
  check_dim(values, 3, "values");
  if (w_q) {
    check_same(*w_q, query, "w_q", "query");
    check_dim(*w_q, 2, "w_q");
    check_same(*v, query, "v", "query");
    check_dim(*v, 1, "v");
  }
  TORCH_CHECK(valid_len.scalar_type() == at::kLong, "valid_len: expected an int64 tensor, got ",
              valid_len.scalar_type());
  TORCH_CHECK(valid_len.device() == query.device(), "valid_len: expected device ", query.device(),
              " (as query), got ", valid_len.device());
  check_dim(valid_len, 1, "valid_len");
  const int64_t N = query.size(0), Hq = query.size(1), B = keys.size(0), S = keys.size(1), H = keys.size(2);
  // N = R*B with R >= 1 (R query rows per source row), and N = B = 0 for an empty batch
  TORCH_CHECK(B == 0 ? N == 0 : N >= B && N % B == 0,
              "keys: expected B rows with query's N = R*B (R >= 1 query rows per source row; N = ", N,
              "), got shape ", keys.sizes());
  TORCH_CHECK(S >= 1, "keys: expected at least one position (S >= 1), got shape ", keys.sizes());
  check_size(values, 0, B, "values");
  check_size(values, 1, S, "values");
  if (w_q) {
    TORCH_CHECK(w_q->size(0) == H && w_q->size(1) == Hq, "w_q: expected shape [", H, ", ", Hq,
                "] (keys' H, query's Hq), got ", w_q->sizes());
    check_size(*v, 0, H, "v");
  } else {
    TORCH_CHECK(H == Hq, "keys: expected size ", Hq, " in dim 2 (query's Hq), got shape ", keys.sizes());
  }
  check_size(valid_len, 0, B, "valid_len");
  AttnArgs a;
  a.query = query;
  a.keys = keys.contiguous();
  a.values = values.contiguous();
  if (w_q) {
    a.w_q = *w_q;
    a.v = v->contiguous();
  }
  a.valid_len = valid_len.contiguous();
  auto& r = a.rows;
  r.dtype = to_dtype(query.scalar_type());
  r.dot = w_q == nullptr;
  r.N = N;
  r.B = B;
  r.R = B == 0 ? 1 : N / B;
  r.S = S;
  r.H = H;
  r.Dv = values.size(2);
  r.keys = a.keys.const_data_ptr();
  r.values = a.values.const_data_ptr();
  r.v = ptr_or_null(a.v);
  r.valid_len = a.valid_len.const_data_ptr<int64_t>();
  return a;
}

inline AttnArgs attn_args(const at::Tensor& query, const at::Tensor& keys, const at::Tensor& values,
                          const at::Tensor& w_q, const at::Tensor& v, const at::Tensor& valid_len) {
  return attn_args_of(query, keys, values, &w_q, &v, valid_len);
}

inline AttnArgs dot_attn_args(const at::Tensor& query, const at::Tensor& keys, const at::Tensor& values,
                              const at::Tensor& valid_len) {
  return attn_args_of(query, keys, values, nullptr, nullptr, valid_len);
}

// qp = query W_q^T (N, H), contiguous, in the accumulate type: one GEMM for the whole batch. Dot scores: the query
// itself (no copy when it is already contiguous in that type).
inline at::Tensor attn_query_proj(const AttnArgs& a) {
  const auto acc = attn_acc_dtype(a.query.scalar_type());
  if (a.rows.dot) return a.query.to(acc).contiguous();
  return at::matmul(a.query.to(acc), a.w_q.to(acc).t()).contiguous();
}

inline void attn_check_grads(const AttnArgs& a, const at::Tensor& grad_context, const at::Tensor& grad_weights) {
  const auto& r = a.rows;
  check_same(grad_context, a.query, "grad_context", "query");
  TORCH_CHECK(grad_context.dim() == 2 && grad_context.size(0) == r.N && grad_context.size(1) == r.Dv,
              "grad_context: expected shape [", r.N, ", ", r.Dv, "] (as context), got ", grad_context.sizes());
  if (grad_weights.defined()) {
    check_same(grad_weights, a.query, "grad_weights", "query");
    TORCH_CHECK(grad_weights.dim() == 2 && grad_weights.size(0) == r.N && grad_weights.size(1) == r.S,
                "grad_weights: expected shape [", r.N, ", ", r.S, "] (as weights), got ", grad_weights.sizes());
  }
}

inline void attn_check_backward(const AttnArgs& a, const at::Tensor& grad_context,
                                const at::Tensor& grad_weights, const at::Tensor& query_proj) {
  attn_check_grads(a, grad_context, grad_weights);
  const auto& r = a.rows;
  const auto acc = attn_acc_dtype(a.query.scalar_type());
  TORCH_CHECK(query_proj.scalar_type() == acc, "query_proj: expected dtype ", acc, ", got ",
              query_proj.scalar_type());
  TORCH_CHECK(query_proj.device() == a.query.device(), "query_proj: expected device ", a.query.device(),
              " (as query), got ", query_proj.device());
  TORCH_CHECK(query_proj.dim() == 2 && query_proj.size(0) == r.N && query_proj.size(1) == r.H,
              "query_proj: expected shape [", r.N, ", ", r.H, "] (query W_q^T), got ", query_proj.sizes());
}

// The forward's outputs, allocated: context (N, Dv), weights (N, S) in the inputs' dtype.
inline std::tuple<at::Tensor, at::Tensor> attn_forward_outputs(const AttnArgs& a) {
  const auto& r = a.rows;
  const auto opts = a.query.options();
  return {at::empty({r.N, r.Dv}, opts), at::empty({r.N, r.S}, opts)};
}

struct AttnBackwardOutputs {
  at::Tensor grad_keys, grad_values, grad_qp, grad_v_rows;
};

// grad_keys / grad_values: the gradients for R = 1, else each query row's share in acc precision (csrc/attention.h),
// which attn_source_grads sums.
inline AttnBackwardOutputs attn_backward_outputs(const AttnArgs& a) {
  const auto& r = a.rows;
  const auto opts = a.query.options();
  const auto acc = opts.dtype(attn_acc_dtype(a.query.scalar_type()));
  const auto grad_opts = r.R == 1 ? opts : acc;
  return {at::empty({r.N, r.S, r.H}, grad_opts), at::empty({r.N, r.S, r.Dv}, grad_opts), at::empty({r.N, r.H}, acc),
          r.dot ? at::Tensor() : at::empty({r.N, r.H}, acc)};
}

// The kernels' raw-pointer views of the forward's and the backward's tensors.
inline cpu::AttnForwardParams attn_forward_params(const AttnArgs& a, const at::Tensor& qp, at::Tensor& context,
                                                  at::Tensor& weights) {
  cpu::AttnForwardParams p;
  p.rows = a.rows;
  p.rows.qp = qp.const_data_ptr();
  p.context = context.mutable_data_ptr();
  p.weights = weights.mutable_data_ptr();
  return p;
}

// grad_context, grad_weights (or undefined) and qp contiguous.
inline cpu::AttnBackwardParams attn_backward_params(const AttnArgs& a, const at::Tensor& grad_context,
                                                    const at::Tensor& grad_weights, const at::Tensor& qp,
                                                    AttnBackwardOutputs& o) {
  cpu::AttnBackwardParams p;
  p.rows = a.rows;
  p.rows.qp = qp.const_data_ptr();
  p.grad_context = grad_context.const_data_ptr();
  p.grad_weights = ptr_or_null(grad_weights);
  p.grad_keys = o.grad_keys.mutable_data_ptr();
  p.grad_values = o.grad_values.mutable_data_ptr();
  p.grad_qp = o.grad_qp.mutable_data_ptr();
  p.grad_v_rows = o.grad_v_rows.defined() ? o.grad_v_rows.mutable_data_ptr() : nullptr;
  return p;
}

// grad_keys and grad_values from the per-row kernels' outputs: for R > 1 the sums of the query rows' shares over
// each source row.
inline std::tuple<at::Tensor, at::Tensor> attn_source_grads(const AttnArgs& a, const AttnBackwardOutputs& o) {
  const auto& r = a.rows;
  if (r.R == 1) return {o.grad_keys, o.grad_values};
  const auto dtype = a.query.scalar_type();
  return {o.grad_keys.view({r.B, r.R, r.S, r.H}).sum(1).to(dtype),
          o.grad_values.view({r.B, r.R, r.S, r.Dv}).sum(1).to(dtype)};
}

// From the per-row kernels' outputs: (grad_query, grad_keys, grad_values, grad_w_q, grad_v), two GEMMs, a column
// sum, and the source rows' sums.
inline std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> attn_finish_backward(
    const AttnArgs& a, const AttnBackwardOutputs& o) {
  const auto dtype = a.query.scalar_type();
  const auto acc = attn_acc_dtype(dtype);
  at::Tensor grad_query = at::matmul(o.grad_qp, a.w_q.to(acc)).to(dtype);
  at::Tensor grad_w_q = at::matmul(o.grad_qp.t(), a.query.to(acc)).to(dtype);
  at::Tensor grad_v = o.grad_v_rows.sum(0).to(dtype);
  auto [grad_keys, grad_values] = attn_source_grads(a, o);
  return {grad_query, grad_keys, grad_values, grad_w_q, grad_v};
}

// The dot op's (grad_query, grad_keys, grad_values): d loss / d qp is d loss / d query.
inline std::tuple<at::Tensor, at::Tensor, at::Tensor> dot_attn_finish_backward(const AttnArgs& a,
                                                                             const AttnBackwardOutputs& o) {
  auto [grad_keys, grad_values] = attn_source_grads(a, o);
  return {o.grad_qp.to(a.query.scalar_type()), grad_keys, grad_values};
}

}  // namespace s2s_fused
