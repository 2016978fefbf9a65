// CUDA registration of the masked cross-entropy ops: tensor checks (csrc/cross_entropy_args.h; nothing reads tensor
// values, so no device sync), device guard, current stream, and the launchers of csrc/cuda/cross_entropy.cu.
// Out-of-range targets / valid_len are reported by the kernels as NaN (see the .cu), not raised.
#include <ATen/ATen.h>
#include <c10/core/DeviceGuard.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>
#include <cuda_runtime_api.h>
#include <torch/library.h>

#include "cross_entropy_args.h"
#include "cuda/cross_entropy_cuda.h"

namespace s2s_fused::cuda {
namespace {

// The device-generic guard and stream API (c10/core) rather than c10/cuda's headers, which a CPU build of torch
// does not ship complete, so that tools/check_cuda.sh can syntax-check this file on a machine without CUDA torch.
void check_cuda(const CeArgs& a) {
  TORCH_CHECK(a.logits.is_cuda(), "logits: expected a CUDA tensor, got ", a.logits.device());
}

cudaStream_t current_stream(const at::Tensor& t) {
  const c10::Stream s = c10::impl::getDeviceGuardImpl(c10::DeviceType::CUDA)->getStream(t.device());
  return static_cast<cudaStream_t>(s.native_handle());
}

void check_launch(cudaError_t err, const char* what) {
  TORCH_CHECK(err == cudaSuccess, what, ": CUDA launch failed: ", cudaGetErrorString(err));
}

std::tuple<at::Tensor, at::Tensor> masked_ce_forward_cuda(const at::Tensor& logits, const at::Tensor& target,
                                                          const std::optional<at::Tensor>& valid_len,
                                                          int64_t ignore_index, double label_smoothing) {
  const c10::DeviceGuard guard(logits.device());
  CeArgs a = ce_args(logits, target, valid_len, ignore_index, label_smoothing);
  check_cuda(a);
  const auto opts = a.logits.options().dtype(ce_acc_dtype(a.logits.scalar_type()));
  at::Tensor loss = at::empty(a.target.sizes(), opts);
  at::Tensor lse = at::empty(a.target.sizes(), opts);
  cpu::CeForwardParams p;
  p.rows = a.rows;
  p.loss = loss.mutable_data_ptr();
  p.lse = lse.mutable_data_ptr();
  check_launch(masked_ce_forward_launch(p, current_stream(a.logits)), "masked_ce_forward");
  return {loss, lse};
}

at::Tensor masked_ce_backward_cuda(const at::Tensor& grad_loss, const at::Tensor& logits, const at::Tensor& target,
                                   const std::optional<at::Tensor>& valid_len, const at::Tensor& lse_in,
                                   int64_t ignore_index, double label_smoothing) {
  const c10::DeviceGuard guard(logits.device());
  CeArgs a = ce_args(logits, target, valid_len, ignore_index, label_smoothing);
  check_cuda(a);
  ce_check_backward(a, grad_loss, lse_in);
  at::Tensor lse = lse_in.contiguous();
  at::Tensor grad = at::empty(a.logits.sizes(), a.logits.options().memory_format(at::MemoryFormat::Contiguous));
  cpu::CeBackwardParams p;
  p.rows = a.rows;
  p.lse = lse.const_data_ptr();
  p.grad_loss = grad_loss.const_data_ptr();
  ce_grad_strides(a, grad_loss, p.grad_stride_b, p.grad_stride_t);
  p.grad_logits = grad.mutable_data_ptr();
  check_launch(masked_ce_backward_launch(p, current_stream(a.logits)), "masked_ce_backward");
  return grad;
}

}  // namespace
}  // namespace s2s_fused::cuda

TORCH_LIBRARY_IMPL(s2s_fused, CUDA, m) {
  m.impl("masked_ce_forward", &s2s_fused::cuda::masked_ce_forward_cuda);
  m.impl("masked_ce_backward", &s2s_fused::cuda::masked_ce_backward_cuda);
}
