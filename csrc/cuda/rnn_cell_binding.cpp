// CUDA registration of the rnn_cell ops. Small batch (B <= 32, not float64): one fused kernel per step (the
// recurrent and input GEMM tiles for all gates of a hidden unit, with the cell update in the epilogue).
// Otherwise: csrc/rnn_cell_impl.h on the CUDA device of cuda/rnn_policy.h (cuBLAS GEMMs through ATen + one
// pointwise kernel). Backward: pointwise kernel + cuBLAS GEMMs. Every launch goes on the current stream under a
// device guard.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "cuda/rnn_policy.h"
#include "rnn_cell_impl.h"

namespace s2s_fused::cuda {
namespace {

// The fused step kernel covers small-batch problems; false means "use the GEMM + pointwise path".
bool try_fused_step(bool lstm, const CellArgs& a, const at::Tensor& cx, at::Tensor& h1, at::Tensor& c1,
                    at::Tensor& ws) {
  if (a.B == 0 || a.B > 32 || a.input.scalar_type() == at::kDouble) return false;
  const at::Tensor w_ih = a.w_ih.contiguous(), w_hh = a.w_hh.contiguous();
  FusedStepParams p;
  p.dtype = to_dtype(a.input.scalar_type());
  p.B = a.B;
  p.I = a.I;
  p.H = a.H;
  p.x = a.input.const_data_ptr();
  p.hx = a.hx.const_data_ptr();
  p.cx = lstm ? cx.const_data_ptr() : nullptr;
  p.w_ih = w_ih.const_data_ptr();
  p.w_hh = w_hh.const_data_ptr();
  p.b_ih = ptr_or_null(a.b_ih);
  p.b_hh = ptr_or_null(a.b_hh);
  h1 = at::empty_like(a.hx);
  c1 = lstm ? at::empty_like(a.hx) : at::Tensor();
  ws = at::empty({a.B, 4 * a.H}, a.input.options());
  p.h1 = h1.mutable_data_ptr();
  p.c1 = lstm ? c1.mutable_data_ptr() : nullptr;
  p.ws = ws.mutable_data_ptr();
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const cudaError_t err = lstm ? lstm_fused_step(p, stream) : gru_fused_step(p, stream);
  if (err == cudaErrorNotSupported) return false;
  check_launch(err, lstm ? "lstm_fused_step" : "gru_fused_step");
  return true;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> lstm_cell_forward_cuda(
    const at::Tensor& input, const at::Tensor& hx, const at::Tensor& cx, const at::Tensor& w_ih,
    const at::Tensor& w_hh, const std::optional<at::Tensor>& b_ih, const std::optional<at::Tensor>& b_hh) {
  const c10::cuda::CUDAGuard guard(input.device());
  const CellArgs a = check_cell_args(input, hx, w_ih, w_hh, b_ih, b_hh, 4);
  check_same(cx, input, "cx", "input");
  TORCH_CHECK(cx.sizes() == hx.sizes(), "cx: expected shape ", hx.sizes(), " (as hx), got ", cx.sizes());
  at::Tensor h1, c1, ws;
  if (try_fused_step(true, a, cx.contiguous(), h1, c1, ws)) return {h1, c1, ws};
  return lstm_cell_forward_impl(CudaRnnPolicy{}, input, hx, cx, w_ih, w_hh, b_ih, b_hh);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> lstm_cell_backward_cuda(
    const std::optional<at::Tensor>& grad_h1, const std::optional<at::Tensor>& grad_c1, const at::Tensor& input,
    const at::Tensor& hx, const at::Tensor& cx, const at::Tensor& w_ih, const at::Tensor& w_hh,
    const at::Tensor& workspace, const at::Tensor& c1, std::array<bool, 6> grad_mask) {
  const c10::cuda::CUDAGuard guard(input.device());
  return lstm_cell_backward_impl(CudaRnnPolicy{}, grad_h1, grad_c1, input, hx, cx, w_ih, w_hh, workspace, c1,
                                 grad_mask);
}

std::tuple<at::Tensor, at::Tensor> gru_cell_forward_cuda(const at::Tensor& input, const at::Tensor& hx,
                                                         const at::Tensor& w_ih, const at::Tensor& w_hh,
                                                         const std::optional<at::Tensor>& b_ih,
                                                         const std::optional<at::Tensor>& b_hh, bool reset_after) {
  const c10::cuda::CUDAGuard guard(input.device());
  if (reset_after) {
    const CellArgs a = check_cell_args(input, hx, w_ih, w_hh, b_ih, b_hh, 3);
    at::Tensor h1, c1, ws;
    if (try_fused_step(false, a, at::Tensor(), h1, c1, ws)) return {h1, ws};
  }
  return gru_cell_forward_impl(CudaRnnPolicy{}, input, hx, w_ih, w_hh, b_ih, b_hh, reset_after);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> gru_cell_backward_cuda(
    const at::Tensor& grad_h1, const at::Tensor& input, const at::Tensor& hx, const at::Tensor& w_ih,
    const at::Tensor& w_hh, const at::Tensor& workspace, bool reset_after, std::array<bool, 6> grad_mask) {
  const c10::cuda::CUDAGuard guard(input.device());
  return gru_cell_backward_impl(CudaRnnPolicy{}, grad_h1, input, hx, w_ih, w_hh, workspace, reset_after,
                                grad_mask);
}

}  // namespace
}  // namespace s2s_fused::cuda

TORCH_LIBRARY_IMPL(s2s_fused, CUDA, m) {
  m.impl("lstm_cell_forward", &s2s_fused::cuda::lstm_cell_forward_cuda);
  m.impl("lstm_cell_backward", &s2s_fused::cuda::lstm_cell_backward_cuda);
  m.impl("gru_cell_forward", &s2s_fused::cuda::gru_cell_forward_cuda);
  m.impl("gru_cell_backward", &s2s_fused::cuda::gru_cell_backward_cuda);
}
