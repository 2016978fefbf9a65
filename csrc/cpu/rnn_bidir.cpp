// CPU registration of the rnn_layer_bidir ops: the device-generic two-direction template of
// csrc/rnn_bidir_impl.h with the CPU policy of rnn_pointwise_cpu.h, which has no two-direction pointwise or
// batched GEMM methods, so each step runs the single-direction kernels and GEMMs once per direction. The modules
// use these ops only for CUDA input (on CPU they keep the per-direction ops); registering the same template here
// is what tests its logic on CPU against the per-direction ops and torch.nn.
#include <torch/library.h>

#include "cpu/rnn_pointwise_cpu.h"
#include "rnn_bidir_impl.h"

namespace s2s_fused::cpu {
namespace {

using OptT = std::optional<at::Tensor>;

// The CPU policy has none of the two-direction methods: every step runs the single-direction kernels twice.
static_assert(!bidir::has_bidir_pointwise<CpuPointwise> && !bidir::has_batched_gemm<CpuPointwise> &&
              !has_step_recorder<CpuPointwise>);

auto lstm_bidir_forward_cpu(const at::Tensor& input, const at::Tensor& h0, const at::Tensor& c0,
                            const at::Tensor& w_ih, const at::Tensor& w_hh, const OptT& b_ih, const OptT& b_hh,
                            const at::Tensor& w_ih_r, const at::Tensor& w_hh_r, const OptT& b_ih_r,
                            const OptT& b_hh_r, const OptT& lengths) {
  return lstm_layer_bidir_forward_impl(CpuPointwise{}, input, h0, c0, w_ih, w_hh, b_ih, b_hh, w_ih_r, w_hh_r,
                                       b_ih_r, b_hh_r, lengths);
}

auto lstm_bidir_backward_cpu(const OptT& grad_output, const OptT& grad_h_n, const OptT& grad_c_n,
                             const at::Tensor& input, const at::Tensor& w_ih, const at::Tensor& w_hh,
                             const at::Tensor& w_ih_r, const at::Tensor& w_hh_r, const at::Tensor& hs,
                             const at::Tensor& cs, const at::Tensor& workspace, const OptT& lengths) {
  return lstm_layer_bidir_backward_impl(CpuPointwise{}, grad_output, grad_h_n, grad_c_n, input, w_ih, w_hh, w_ih_r,
                                        w_hh_r, hs, cs, workspace, lengths);
}

auto gru_bidir_forward_cpu(const at::Tensor& input, const at::Tensor& h0, const at::Tensor& w_ih,
                           const at::Tensor& w_hh, const OptT& b_ih, const OptT& b_hh, const at::Tensor& w_ih_r,
                           const at::Tensor& w_hh_r, const OptT& b_ih_r, const OptT& b_hh_r, const OptT& lengths,
                           bool reset_after) {
  return gru_layer_bidir_forward_impl(CpuPointwise{}, input, h0, w_ih, w_hh, b_ih, b_hh, w_ih_r, w_hh_r, b_ih_r,
                                      b_hh_r, lengths, reset_after);
}

auto gru_bidir_backward_cpu(const OptT& grad_output, const OptT& grad_h_n, const at::Tensor& input,
                            const at::Tensor& w_ih, const at::Tensor& w_hh, const at::Tensor& w_ih_r,
                            const at::Tensor& w_hh_r, const at::Tensor& hs, const at::Tensor& workspace,
                            const OptT& lengths, bool reset_after) {
  return gru_layer_bidir_backward_impl(CpuPointwise{}, grad_output, grad_h_n, input, w_ih, w_hh, w_ih_r, w_hh_r, hs,
                                       workspace, lengths, reset_after);
}

}  // namespace
}  // namespace s2s_fused::cpu

TORCH_LIBRARY_IMPL(s2s_fused, CPU, m) {
  m.impl("lstm_layer_bidir_forward", &s2s_fused::cpu::lstm_bidir_forward_cpu);
  m.impl("lstm_layer_bidir_backward", &s2s_fused::cpu::lstm_bidir_backward_cpu);
  m.impl("gru_layer_bidir_forward", &s2s_fused::cpu::gru_bidir_forward_cpu);
  m.impl("gru_layer_bidir_backward", &s2s_fused::cpu::gru_bidir_backward_cpu);
}
