// Argument checks shared by the CPU and CUDA entry points (for callers of torch.ops.s2s_fused.* directly; the
// Python wrappers check first with friendlier messages). Each message names the argument, what was expected and
// what came.
#pragma once

#include <ATen/ATen.h>

#include <string>

#include "rnn_core.h"

namespace s2s_fused {

inline void check_dim(const at::Tensor& t, int64_t dim, const char* name) {
  TORCH_CHECK(t.dim() == dim, name, ": expected a ", dim, "-D tensor, got ", t.dim(), "-D with shape ", t.sizes());
}

inline void check_size(const at::Tensor& t, int64_t dim, int64_t size, const char* name) {
  TORCH_CHECK(t.size(dim) == size, name, ": expected size ", size, " in dim ", dim, ", got shape ", t.sizes());
}

inline void check_same(const at::Tensor& t, const at::Tensor& ref, const char* name, const char* ref_name) {
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), name, ": expected dtype ", ref.scalar_type(), " (as ",
              ref_name, "), got ", t.scalar_type());
  TORCH_CHECK(t.device() == ref.device(), name, ": expected device ", ref.device(), " (as ", ref_name, "), got ",
              t.device());
}

inline void check_floating(const at::Tensor& t, const char* name) {
  const auto s = t.scalar_type();
  TORCH_CHECK(s == at::kFloat || s == at::kDouble || s == at::kHalf || s == at::kBFloat16, name,
              ": expected a float32, float64, float16 or bfloat16 tensor, got ", s);
}

// input's dtype and device and exactly `shape`: what the kernels assume of a saved state or workspace, an incoming
// gradient or a cell state, which they read by those sizes; `what` says where the shape comes from (" (as hx)").
inline void check_saved(const at::Tensor& t, at::IntArrayRef shape, const at::Tensor& input, const char* name,
                        const char* what = "") {
  check_same(t, input, name, "input");
  TORCH_CHECK(t.sizes() == shape, name, ": expected shape ", shape, what, ", got ", t.sizes());
}

// One LSTM/GRU cell's or layer-direction's weights: w_ih (G·H, I), w_hh (G·H, P), optional biases (G·H,), all
// of input's dtype and device; P, the state's width, is H but for a projected LSTM (P < 0: H). `suffix` is
// appended to their names ("_r": a bidirectional op's reverse direction).
inline void check_rnn_weights(const at::Tensor& input, const at::Tensor& w_ih, const at::Tensor& w_hh,
                              const at::Tensor& b_ih, const at::Tensor& b_hh, int64_t gates, int64_t I, int64_t H,
                              const std::string& suffix = "", int64_t P = -1) {
  if (P < 0) P = H;
  const std::string wi = "w_ih" + suffix, wh = "w_hh" + suffix, bi = "b_ih" + suffix, bh = "b_hh" + suffix;
  check_same(w_ih, input, wi.c_str(), "input");
  check_same(w_hh, input, wh.c_str(), "input");
  check_dim(w_ih, 2, wi.c_str());
  check_dim(w_hh, 2, wh.c_str());
  TORCH_CHECK(w_ih.size(0) == gates * H && w_ih.size(1) == I, wi, ": expected shape (", gates * H, ", ", I,
              "), got ", w_ih.sizes());
  TORCH_CHECK(w_hh.size(0) == gates * H && w_hh.size(1) == P, wh, ": expected shape (", gates * H, ", ", P,
              "), got ", w_hh.sizes());
  for (auto [t, name] : {std::pair{&b_ih, &bi}, std::pair{&b_hh, &bh}}) {
    if (!t->defined()) continue;
    check_same(*t, input, name->c_str(), "input");
    TORCH_CHECK(t->dim() == 1 && t->size(0) == gates * H, *name, ": expected shape (", gates * H, ",), got ",
                t->sizes());
  }
}

// An LSTM layer's projection w_hr (P, H) (torch's weight_hr): input's dtype and device, P = the state h's width
// (h0.size(1)); H, the hidden size, is taken from it.
inline void check_projection(const at::Tensor& input, const at::Tensor& w_hr, int64_t P, const std::string& suffix) {
  const std::string name = "w_hr" + suffix;
  check_same(w_hr, input, name.c_str(), "input");
  check_dim(w_hr, 2, name.c_str());
  TORCH_CHECK(w_hr.size(0) == P, name, ": expected ", P, " rows (the projection size, h0.size(1)), got shape ",
              w_hr.sizes());
}

inline Dtype to_dtype(at::ScalarType s) {
  switch (s) {
    case at::kFloat: return Dtype::Float32;
    case at::kDouble: return Dtype::Float64;
    case at::kHalf: return Dtype::Float16;
    case at::kBFloat16: return Dtype::BFloat16;
    default: TORCH_CHECK(false, "unsupported dtype ", s);
  }
}

// Optional tensors: a defined one must be a contiguous (or made contiguous) tensor of the reference's dtype.
inline at::Tensor contiguous_or_undefined(const std::optional<at::Tensor>& t) {
  return (t.has_value() && t->defined()) ? t->contiguous() : at::Tensor();
}

inline const void* ptr_or_null(const at::Tensor& t) { return t.defined() ? t.const_data_ptr() : nullptr; }

inline CMat cmat(const at::Tensor& t) {
  if (!t.defined()) return {};
  TORCH_INTERNAL_ASSERT(t.dim() == 2 && (t.stride(1) == 1 || t.size(1) <= 1 || t.numel() == 0));
  return {t.const_data_ptr(), t.stride(0)};
}

inline Mat mat(const at::Tensor& t) {
  if (!t.defined()) return {};
  TORCH_INTERNAL_ASSERT(t.dim() == 2 && (t.stride(1) == 1 || t.size(1) <= 1 || t.numel() == 0));
  return {t.mutable_data_ptr(), t.stride(0)};
}

}  // namespace s2s_fused
