// CUDA registration of the rnn_layer ops: the time loop of csrc/rnn_layer_impl.h in C++ (no Python per step),
// cuBLAS GEMMs through ATen and the pointwise launchers of csrc/cuda/rnn_pointwise.cuh (shared with the cells),
// every launch on the current stream under a device guard. Variable lengths are an (T, B) mask on the device,
// so no step needs a host sync.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "cuda/rnn_policy.h"
#include "rnn_layer_impl.h"

namespace s2s_fused::cuda {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> lstm_layer_forward_cuda(
    const at::Tensor& input, const at::Tensor& h0, const at::Tensor& c0, const at::Tensor& w_ih,
    const at::Tensor& w_hh, const std::optional<at::Tensor>& b_ih, const std::optional<at::Tensor>& b_hh,
    const std::optional<at::Tensor>& lengths, bool reverse) {
  const c10::cuda::CUDAGuard guard(input.device());
  return lstm_layer_forward_impl(CudaRnnPolicy{}, input, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths, reverse);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> lstm_layer_backward_cuda(
    const std::optional<at::Tensor>& grad_output, const std::optional<at::Tensor>& grad_h_n,
    const std::optional<at::Tensor>& grad_c_n, const at::Tensor& input, const at::Tensor& w_ih,
    const at::Tensor& w_hh, const at::Tensor& hs, const at::Tensor& cs, const at::Tensor& workspace,
    const std::optional<at::Tensor>& lengths, bool reverse) {
  const c10::cuda::CUDAGuard guard(input.device());
  return lstm_layer_backward_impl(CudaRnnPolicy{}, grad_output, grad_h_n, grad_c_n, input, w_ih, w_hh, hs,
                                  cs, workspace, lengths, reverse);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> gru_layer_forward_cuda(
    const at::Tensor& input, const at::Tensor& h0, const at::Tensor& w_ih, const at::Tensor& w_hh,
    const std::optional<at::Tensor>& b_ih, const std::optional<at::Tensor>& b_hh,
    const std::optional<at::Tensor>& lengths, bool reverse, bool reset_after) {
  const c10::cuda::CUDAGuard guard(input.device());
  return gru_layer_forward_impl(CudaRnnPolicy{}, input, h0, w_ih, w_hh, b_ih, b_hh, lengths, reverse,
                                reset_after);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> gru_layer_backward_cuda(
    const std::optional<at::Tensor>& grad_output, const std::optional<at::Tensor>& grad_h_n,
    const at::Tensor& input, const at::Tensor& w_ih, const at::Tensor& w_hh, const at::Tensor& hs,
    const at::Tensor& workspace, const std::optional<at::Tensor>& lengths, bool reverse, bool reset_after) {
  const c10::cuda::CUDAGuard guard(input.device());
  return gru_layer_backward_impl(CudaRnnPolicy{}, grad_output, grad_h_n, input, w_ih, w_hh, hs, workspace,
                                 lengths, reverse, reset_after);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> lstm_layer_inference_cuda(
    const at::Tensor& input, const at::Tensor& h0, const at::Tensor& c0, const at::Tensor& w_ih,
    const at::Tensor& w_hh, const std::optional<at::Tensor>& b_ih, const std::optional<at::Tensor>& b_hh,
    const std::optional<at::Tensor>& lengths, bool reverse) {
  const c10::cuda::CUDAGuard guard(input.device());
  return lstm_layer_inference_impl(CudaRnnPolicy{}, input, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths, reverse);
}

std::tuple<at::Tensor, at::Tensor> gru_layer_inference_cuda(
    const at::Tensor& input, const at::Tensor& h0, const at::Tensor& w_ih, const at::Tensor& w_hh,
    const std::optional<at::Tensor>& b_ih, const std::optional<at::Tensor>& b_hh,
    const std::optional<at::Tensor>& lengths, bool reverse, bool reset_after) {
  const c10::cuda::CUDAGuard guard(input.device());
  return gru_layer_inference_impl(CudaRnnPolicy{}, input, h0, w_ih, w_hh, b_ih, b_hh, lengths, reverse, reset_after);
}

}  // namespace
}  // namespace s2s_fused::cuda

TORCH_LIBRARY_IMPL(s2s_fused, CUDA, m) {
  m.impl("lstm_layer_forward", &s2s_fused::cuda::lstm_layer_forward_cuda);
  m.impl("lstm_layer_backward", &s2s_fused::cuda::lstm_layer_backward_cuda);
  m.impl("gru_layer_forward", &s2s_fused::cuda::gru_layer_forward_cuda);
  m.impl("gru_layer_backward", &s2s_fused::cuda::gru_layer_backward_cuda);
  m.impl("lstm_layer_inference", &s2s_fused::cuda::lstm_layer_inference_cuda);
  m.impl("gru_layer_inference", &s2s_fused::cuda::gru_layer_inference_cuda);
}
