// Torch side of the masked cross-entropy ops, shared by the CPU registration (csrc/cpu/cross_entropy.cpp) and
// the CUDA binding (csrc/cuda/cross_entropy_binding.cpp): argument checks (TORCH_CHECK, for direct callers of
// torch.ops.s2s_fused.*; the Python wrapper checks first) and the raw-pointer view of csrc/cross_entropy.h.
// Nothing here reads tensor values, so nothing here synchronises with a device.
#pragma once

#include <ATen/ATen.h>

#include "checks.h"
#include "cross_entropy.h"

namespace s2s_fused {

struct CeArgs {
  at::Tensor logits, target, valid_len;  // logits: classes contiguous; target, valid_len contiguous int64
  cpu::CeRows rows;
  int64_t B = 1, T = 1;
};

inline at::ScalarType ce_acc_dtype(at::ScalarType logits) {
  return logits == at::kDouble ? at::kDouble : at::kFloat;
}

inline CeArgs ce_args(const at::Tensor& logits_in, const at::Tensor& target_in,
                      const std::optional<at::Tensor>& valid_len_in, int64_t ignore_index, double label_smoothing) {
  TORCH_CHECK(logits_in.dim() == 2 || logits_in.dim() == 3,
              "logits: expected a 2-D (N, V) or 3-D (B, T, V) tensor, got ", logits_in.dim(), "-D with shape ",
              logits_in.sizes());
  check_floating(logits_in, "logits");
  TORCH_CHECK(target_in.scalar_type() == at::kLong, "target: expected an int64 tensor, got ",
              target_in.scalar_type());
  TORCH_CHECK(target_in.sizes() == logits_in.sizes().slice(0, logits_in.dim() - 1), "target: expected shape ",
              logits_in.sizes().slice(0, logits_in.dim() - 1), " (logits without its class dim), got ",
              target_in.sizes());
  TORCH_CHECK(target_in.device() == logits_in.device(), "target: expected device ", logits_in.device(),
              " (as logits), got ", target_in.device());
  TORCH_CHECK(label_smoothing >= 0.0 && label_smoothing <= 1.0,
              "label_smoothing: expected a value in [0, 1], got ", label_smoothing);
  const int64_t V = logits_in.size(-1);
  TORCH_CHECK(V >= 1, "logits: expected at least one class, got shape ", logits_in.sizes());
  CeArgs a;
  a.logits = logits_in.stride(-1) == 1 || V == 1 ? logits_in : logits_in.contiguous();
  a.target = target_in.contiguous();
  if (a.logits.dim() == 3) {
    a.B = a.logits.size(0);
    a.T = a.logits.size(1);
  } else {
    a.B = 1;
    a.T = a.logits.size(0);
  }
  if (valid_len_in.has_value() && valid_len_in->defined()) {
    const auto& vl = *valid_len_in;
    TORCH_CHECK(a.logits.dim() == 3, "valid_len: only allowed with 3-D (B, T, V) logits, got logits of shape ",
                a.logits.sizes());
    TORCH_CHECK(vl.scalar_type() == at::kLong, "valid_len: expected an int64 tensor, got ", vl.scalar_type());
    TORCH_CHECK(vl.dim() == 1 && vl.size(0) == a.B, "valid_len: expected shape (", a.B, ",), got ", vl.sizes());
    TORCH_CHECK(vl.device() == a.logits.device(), "valid_len: expected device ", a.logits.device(),
                " (as logits), got ", vl.device());
    a.valid_len = vl.contiguous();
  }
  auto& r = a.rows;
  r.dtype = to_dtype(a.logits.scalar_type());
  r.logits = a.logits.const_data_ptr();
  r.R = a.B * a.T;
  r.V = V;
  r.T = std::max<int64_t>(a.T, 1);
  r.stride_b = a.logits.dim() == 3 ? a.logits.stride(0) : 0;
  r.stride_t = a.logits.stride(a.logits.dim() - 2);
  r.target = a.target.const_data_ptr<int64_t>();
  r.valid_len = a.valid_len.defined() ? a.valid_len.const_data_ptr<int64_t>() : nullptr;
  r.ignore_index = ignore_index;
  r.label_smoothing = label_smoothing;
  return a;
}

// grad_loss: shaped as target, dtype of the loss (acc type); any strides, stride 0 included.
inline void ce_grad_strides(const CeArgs& a, const at::Tensor& grad_loss, int64_t& sb, int64_t& st) {
  if (a.logits.dim() == 3) {
    sb = grad_loss.stride(0);
    st = grad_loss.stride(1);
  } else {
    sb = 0;
    st = grad_loss.stride(0);
  }
}

inline void ce_check_backward(const CeArgs& a, const at::Tensor& grad_loss, const at::Tensor& lse) {
  const auto acc = ce_acc_dtype(a.logits.scalar_type());
  TORCH_CHECK(grad_loss.sizes() == a.target.sizes(), "grad_loss: expected shape ", a.target.sizes(),
              " (as target), got ", grad_loss.sizes());
  TORCH_CHECK(grad_loss.scalar_type() == acc, "grad_loss: expected dtype ", acc, ", got ",
              grad_loss.scalar_type());
  TORCH_CHECK(lse.sizes() == a.target.sizes(), "lse: expected shape ", a.target.sizes(), " (as target), got ",
              lse.sizes());
  TORCH_CHECK(lse.scalar_type() == acc, "lse: expected dtype ", acc, ", got ", lse.scalar_type());
  TORCH_CHECK(grad_loss.device() == a.logits.device() && lse.device() == a.logits.device(),
              "grad_loss, lse: expected device ", a.logits.device(), " (as logits), got ", grad_loss.device(),
              " and ", lse.device());
}

}  // namespace s2s_fused
