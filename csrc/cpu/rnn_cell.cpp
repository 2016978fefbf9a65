// CPU registration of the rnn_cell ops: csrc/rnn_cell_impl.h on the CPU device of csrc/cpu/rnn_policy.h (the vectorized
// pointwise kernels in parallel over batch rows; GEMMs on the path measured fastest here for the op and shape,
// csrc/cpu/cpu_path.h: our micro-kernel over cached packed weights, oneDNN or ATen's BLAS).
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "cpu/rnn_policy.h"
#include "rnn_cell_impl.h"

namespace s2s_fused::cpu {
namespace {

// The tuning key of a cell op: batch in power-of-two buckets, sizes exact, and which gradients are wanted. Read
// before the op's checks, so it takes any dims (a malformed call fails in the checks, before any choice is kept).
std::string cell_key(const char* op, const at::Tensor& input, const at::Tensor& hx, std::string extra = "") {
  const auto size = [](const at::Tensor& t, int64_t d) { return t.dim() == 2 ? t.size(d) : int64_t(0); };
  return std::string(op) + " B~" + std::to_string(bucket(size(input, 0))) + " I=" + std::to_string(size(input, 1)) +
         " H=" + std::to_string(size(hx, 1)) + extra;
}
std::string mask_key(std::array<bool, 6> mask) {
  std::string s = " grads=";
  for (bool m : mask) s += m ? '1' : '0';
  return s;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> lstm_cell_forward_cpu(
    const at::Tensor& input, const at::Tensor& hx, const at::Tensor& cx, const at::Tensor& w_ih,
    const at::Tensor& w_hh, const std::optional<at::Tensor>& b_ih, const std::optional<at::Tensor>& b_hh) {
  return CpuRnnPolicy::run(cell_key("lstm_cell_forward", input, hx), input.scalar_type(), [&](const CpuRnnPolicy& pw) {
    return lstm_cell_forward_impl(pw, input, hx, cx, w_ih, w_hh, b_ih, b_hh);
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> lstm_cell_backward_cpu(
    const std::optional<at::Tensor>& grad_h1, const std::optional<at::Tensor>& grad_c1, const at::Tensor& input,
    const at::Tensor& hx, const at::Tensor& cx, const at::Tensor& w_ih, const at::Tensor& w_hh,
    const at::Tensor& workspace, const at::Tensor& c1, std::array<bool, 6> grad_mask) {
  return CpuRnnPolicy::run(cell_key("lstm_cell_backward", input, hx, mask_key(grad_mask)), input.scalar_type(),
                           [&](const CpuRnnPolicy& pw) {
                             return lstm_cell_backward_impl(pw, grad_h1, grad_c1, input, hx, cx, w_ih, w_hh,
                                                            workspace, c1, grad_mask);
                           });
}

std::tuple<at::Tensor, at::Tensor> gru_cell_forward_cpu(const at::Tensor& input, const at::Tensor& hx,
                                                        const at::Tensor& w_ih, const at::Tensor& w_hh,
                                                        const std::optional<at::Tensor>& b_ih,
                                                        const std::optional<at::Tensor>& b_hh, bool reset_after) {
  return CpuRnnPolicy::run(cell_key("gru_cell_forward", input, hx, reset_after ? "" : " reset_before"),
                           input.scalar_type(), [&](const CpuRnnPolicy& pw) {
                             return gru_cell_forward_impl(pw, input, hx, w_ih, w_hh, b_ih, b_hh, reset_after);
                           });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> gru_cell_backward_cpu(
    const at::Tensor& grad_h1, const at::Tensor& input, const at::Tensor& hx, const at::Tensor& w_ih,
    const at::Tensor& w_hh, const at::Tensor& workspace, bool reset_after, std::array<bool, 6> grad_mask) {
  return CpuRnnPolicy::run(
      cell_key("gru_cell_backward", input, hx, (reset_after ? "" : " reset_before") + mask_key(grad_mask)),
      input.scalar_type(), [&](const CpuRnnPolicy& pw) {
        return gru_cell_backward_impl(pw, grad_h1, input, hx, w_ih, w_hh, workspace, reset_after, grad_mask);
      });
}

}  // namespace
}  // namespace s2s_fused::cpu

TORCH_LIBRARY_IMPL(s2s_fused, CPU, m) {
  m.impl("lstm_cell_forward", &s2s_fused::cpu::lstm_cell_forward_cpu);
  m.impl("lstm_cell_backward", &s2s_fused::cpu::lstm_cell_backward_cpu);
  m.impl("gru_cell_forward", &s2s_fused::cpu::gru_cell_forward_cpu);
  m.impl("gru_cell_backward", &s2s_fused::cpu::gru_cell_backward_cpu);
}
