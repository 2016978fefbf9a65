// CPU registration of the rnn_cell ops: csrc/rnn_cell_impl.h on the CPU device of csrc/cpu/rnn_policy.h (GEMMs
// through oneDNN or ATen, the vectorized pointwise kernels in parallel over batch rows).
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "cpu/rnn_policy.h"
#include "rnn_cell_impl.h"

namespace s2s_fused::cpu {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor> lstm_cell_forward_cpu(
    const at::Tensor& input, const at::Tensor& hx, const at::Tensor& cx, const at::Tensor& w_ih,
    const at::Tensor& w_hh, const std::optional<at::Tensor>& b_ih, const std::optional<at::Tensor>& b_hh) {
  return lstm_cell_forward_impl(CpuRnnPolicy{}, input, hx, cx, w_ih, w_hh, b_ih, b_hh);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> lstm_cell_backward_cpu(
    const std::optional<at::Tensor>& grad_h1, const std::optional<at::Tensor>& grad_c1, const at::Tensor& input,
    const at::Tensor& hx, const at::Tensor& cx, const at::Tensor& w_ih, const at::Tensor& w_hh,
    const at::Tensor& workspace, const at::Tensor& c1, std::array<bool, 6> grad_mask) {
  return lstm_cell_backward_impl(CpuRnnPolicy{}, grad_h1, grad_c1, input, hx, cx, w_ih, w_hh, workspace, c1,
                                 grad_mask);
}

std::tuple<at::Tensor, at::Tensor> gru_cell_forward_cpu(const at::Tensor& input, const at::Tensor& hx,
                                                        const at::Tensor& w_ih, const at::Tensor& w_hh,
                                                        const std::optional<at::Tensor>& b_ih,
                                                        const std::optional<at::Tensor>& b_hh, bool reset_after) {
  return gru_cell_forward_impl(CpuRnnPolicy{}, input, hx, w_ih, w_hh, b_ih, b_hh, reset_after);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> gru_cell_backward_cpu(
    const at::Tensor& grad_h1, const at::Tensor& input, const at::Tensor& hx, const at::Tensor& w_ih,
    const at::Tensor& w_hh, const at::Tensor& workspace, bool reset_after, std::array<bool, 6> grad_mask) {
  return gru_cell_backward_impl(CpuRnnPolicy{}, grad_h1, input, hx, w_ih, w_hh, workspace, reset_after,
                                grad_mask);
}

}  // namespace
}  // namespace s2s_fused::cpu

TORCH_LIBRARY_IMPL(s2s_fused, CPU, m) {
  m.impl("lstm_cell_forward", &s2s_fused::cpu::lstm_cell_forward_cpu);
  m.impl("lstm_cell_backward", &s2s_fused::cpu::lstm_cell_backward_cpu);
  m.impl("gru_cell_forward", &s2s_fused::cpu::gru_cell_forward_cpu);
  m.impl("gru_cell_backward", &s2s_fused::cpu::gru_cell_backward_cpu);
}
