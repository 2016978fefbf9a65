// CPU registration of the rnn_layer ops: the whole time loop in C++ (rnn_layer_impl.h), BLAS GEMMs through ATen
// and the vectorized pointwise kernels of csrc/cpu/kernels/rnn_pointwise.cpp, parallel over batch rows.
#include <torch/library.h>

#include "cpu/rnn_pointwise_cpu.h"
#include "rnn_layer_impl.h"

namespace s2s_fused::cpu {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> lstm_layer_forward_cpu(
    const at::Tensor& input, const at::Tensor& h0, const at::Tensor& c0, const at::Tensor& w_ih,
    const at::Tensor& w_hh, const std::optional<at::Tensor>& b_ih, const std::optional<at::Tensor>& b_hh,
    const std::optional<at::Tensor>& lengths, bool reverse) {
  return lstm_layer_forward_impl(CpuPointwise{}, input, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths, reverse);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> lstm_layer_backward_cpu(
    const std::optional<at::Tensor>& grad_output, const std::optional<at::Tensor>& grad_h_n,
    const std::optional<at::Tensor>& grad_c_n, const at::Tensor& input, const at::Tensor& w_ih,
    const at::Tensor& w_hh, const at::Tensor& hs, const at::Tensor& cs, const at::Tensor& workspace,
    const std::optional<at::Tensor>& lengths, bool reverse) {
  return lstm_layer_backward_impl(CpuPointwise{}, grad_output, grad_h_n, grad_c_n, input, w_ih, w_hh, hs, cs,
                                  workspace, lengths, reverse);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> gru_layer_forward_cpu(
    const at::Tensor& input, const at::Tensor& h0, const at::Tensor& w_ih, const at::Tensor& w_hh,
    const std::optional<at::Tensor>& b_ih, const std::optional<at::Tensor>& b_hh,
    const std::optional<at::Tensor>& lengths, bool reverse, bool reset_after) {
  return gru_layer_forward_impl(CpuPointwise{}, input, h0, w_ih, w_hh, b_ih, b_hh, lengths, reverse, reset_after);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> gru_layer_backward_cpu(
    const std::optional<at::Tensor>& grad_output, const std::optional<at::Tensor>& grad_h_n,
    const at::Tensor& input, const at::Tensor& w_ih, const at::Tensor& w_hh, const at::Tensor& hs,
    const at::Tensor& workspace, const std::optional<at::Tensor>& lengths, bool reverse, bool reset_after) {
  return gru_layer_backward_impl(CpuPointwise{}, grad_output, grad_h_n, input, w_ih, w_hh, hs, workspace, lengths,
                                 reverse, reset_after);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> lstm_layer_inference_cpu(
    const at::Tensor& input, const at::Tensor& h0, const at::Tensor& c0, const at::Tensor& w_ih,
    const at::Tensor& w_hh, const std::optional<at::Tensor>& b_ih, const std::optional<at::Tensor>& b_hh,
    const std::optional<at::Tensor>& lengths, bool reverse) {
  return lstm_layer_inference_impl(CpuPointwise{}, input, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths, reverse);
}

std::tuple<at::Tensor, at::Tensor> gru_layer_inference_cpu(
    const at::Tensor& input, const at::Tensor& h0, const at::Tensor& w_ih, const at::Tensor& w_hh,
    const std::optional<at::Tensor>& b_ih, const std::optional<at::Tensor>& b_hh,
    const std::optional<at::Tensor>& lengths, bool reverse, bool reset_after) {
  return gru_layer_inference_impl(CpuPointwise{}, input, h0, w_ih, w_hh, b_ih, b_hh, lengths, reverse, reset_after);
}

}  // namespace
}  // namespace s2s_fused::cpu

TORCH_LIBRARY_IMPL(s2s_fused, CPU, m) {
  m.impl("lstm_layer_forward", &s2s_fused::cpu::lstm_layer_forward_cpu);
  m.impl("lstm_layer_backward", &s2s_fused::cpu::lstm_layer_backward_cpu);
  m.impl("gru_layer_forward", &s2s_fused::cpu::gru_layer_forward_cpu);
  m.impl("gru_layer_backward", &s2s_fused::cpu::gru_layer_backward_cpu);
  m.impl("lstm_layer_inference", &s2s_fused::cpu::lstm_layer_inference_cpu);
  m.impl("gru_layer_inference", &s2s_fused::cpu::gru_layer_inference_cpu);
}
