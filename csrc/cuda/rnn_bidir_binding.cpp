// CUDA registration of the rnn_layer_bidir ops: the two-direction template of csrc/rnn_bidir_impl.h with the CUDA
// policy (one strided-batched cuBLAS GEMM and one gridDim.z = 2 pointwise launch per step for both directions;
// the persistent kernel per direction for small batch; the step loop replayed as a CUDA graph when
// S2S_FUSED_CUDA_GRAPH=1), every launch on the current stream under a device guard.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "cuda/rnn_policy.h"
#include "rnn_bidir_impl.h"

namespace s2s_fused::cuda {
namespace {

using OptT = std::optional<at::Tensor>;

// The CUDA policy takes the two-direction paths of the template (not its per-direction fallbacks).
static_assert(bidir::has_bidir_pointwise<CudaRnnPolicy>, "CudaRnnPolicy: the *_bidir pointwise launchers");
static_assert(bidir::has_batched_gemm<CudaRnnPolicy>, "CudaRnnPolicy: gemm_batched");
static_assert(has_step_recorder<CudaRnnPolicy>, "CudaRnnPolicy: run_steps (CUDA graphs)");

auto lstm_bidir_forward_cuda(const at::Tensor& input, const at::Tensor& h0, const at::Tensor& c0,
                             const at::Tensor& w_ih, const at::Tensor& w_hh, const OptT& b_ih, const OptT& b_hh,
                             const at::Tensor& w_ih_r, const at::Tensor& w_hh_r, const OptT& b_ih_r,
                             const OptT& b_hh_r, const OptT& lengths) {
  const c10::cuda::CUDAGuard guard(input.device());
  return lstm_layer_bidir_forward_impl(CudaRnnPolicy{}, input, h0, c0, w_ih, w_hh, b_ih, b_hh, w_ih_r, w_hh_r,
                                       b_ih_r, b_hh_r, lengths);
}

auto lstm_bidir_backward_cuda(const OptT& grad_output, const OptT& grad_h_n, const OptT& grad_c_n,
                              const at::Tensor& input, const at::Tensor& w_ih, const at::Tensor& w_hh,
                              const at::Tensor& w_ih_r, const at::Tensor& w_hh_r, const at::Tensor& hs,
                              const at::Tensor& cs, const at::Tensor& workspace, const OptT& lengths) {
  const c10::cuda::CUDAGuard guard(input.device());
  return lstm_layer_bidir_backward_impl(CudaRnnPolicy{}, grad_output, grad_h_n, grad_c_n, input, w_ih, w_hh,
                                        w_ih_r, w_hh_r, hs, cs, workspace, lengths);
}

auto gru_bidir_forward_cuda(const at::Tensor& input, const at::Tensor& h0, const at::Tensor& w_ih,
                            const at::Tensor& w_hh, const OptT& b_ih, const OptT& b_hh, const at::Tensor& w_ih_r,
                            const at::Tensor& w_hh_r, const OptT& b_ih_r, const OptT& b_hh_r, const OptT& lengths,
                            bool reset_after) {
  const c10::cuda::CUDAGuard guard(input.device());
  return gru_layer_bidir_forward_impl(CudaRnnPolicy{}, input, h0, w_ih, w_hh, b_ih, b_hh, w_ih_r, w_hh_r, b_ih_r,
                                      b_hh_r, lengths, reset_after);
}

auto gru_bidir_backward_cuda(const OptT& grad_output, const OptT& grad_h_n, const at::Tensor& input,
                             const at::Tensor& w_ih, const at::Tensor& w_hh, const at::Tensor& w_ih_r,
                             const at::Tensor& w_hh_r, const at::Tensor& hs, const at::Tensor& workspace,
                             const OptT& lengths, bool reset_after) {
  const c10::cuda::CUDAGuard guard(input.device());
  return gru_layer_bidir_backward_impl(CudaRnnPolicy{}, grad_output, grad_h_n, input, w_ih, w_hh, w_ih_r, w_hh_r,
                                       hs, workspace, lengths, reset_after);
}

}  // namespace
}  // namespace s2s_fused::cuda

TORCH_LIBRARY_IMPL(s2s_fused, CUDA, m) {
  m.impl("lstm_layer_bidir_forward", &s2s_fused::cuda::lstm_bidir_forward_cuda);
  m.impl("lstm_layer_bidir_backward", &s2s_fused::cuda::lstm_bidir_backward_cuda);
  m.impl("gru_layer_bidir_forward", &s2s_fused::cuda::gru_bidir_forward_cuda);
  m.impl("gru_layer_bidir_backward", &s2s_fused::cuda::gru_bidir_backward_cuda);
}
