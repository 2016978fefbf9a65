// CPU registration of the rnn_layer ops: the whole time loop in C++ (rnn_layer_impl.h), BLAS GEMMs through ATen
// and the vectorized pointwise kernels of csrc/cpu/kernels/rnn_pointwise.cpp, parallel over batch rows.
#include <ATen/Context.h>
#include <cstdlib>
#include <torch/library.h>

#include "cpu/rnn_pointwise_cpu.h"
#include "rnn_layer_impl.h"

// oneDNN's matmul, as ATen uses it (exported by libtorch_cpu; its header is not shipped). Weak, so a torch built
// without it still loads this extension (and uses ATen's BLAS).
namespace at::native {
__attribute__((weak)) void mkldnn_matmul(const at::Tensor& mat1, const at::Tensor& mat2, const at::Tensor& result,
                                         float beta, float alpha);
}

namespace s2s_fused::cpu {
namespace {

// fp32 GEMMs through oneDNN where it is available: on this project's AMD (Zen, AVX-512) machines MKL's sgemm
// takes its generic path, and oneDNN's kernels (the ones torch.nn.LSTM's CPU path uses) were 7-25% faster on
// the layer's shapes (benchmarks/NOTES.md, rnn_layer). Other dtypes, and builds without oneDNN: ATen (BLAS).
bool use_onednn_gemm(const at::Tensor& out) {
  static const bool available = at::hasMKLDNN() && &at::native::mkldnn_matmul != nullptr &&
                                std::getenv("S2S_FUSED_NO_ONEDNN") == nullptr;
  return available && out.scalar_type() == at::kFloat && out.numel() > 0;
}

struct CpuLayerPolicy : CpuPointwise {
  void gemm(at::Tensor& out, const at::Tensor& a, const at::Tensor& b, bool accumulate) const {
    if (a.size(1) == 0) {  // empty inner dimension: oneDNN and BLAS disagree on what to do; the answer is 0
      if (!accumulate) out.zero_();
      return;
    }
    if (use_onednn_gemm(out)) {
      at::native::mkldnn_matmul(a, b, out, accumulate ? 1.f : 0.f, 1.f);
    } else if (accumulate) {
      out.addmm_(a, b);
    } else {
      at::mm_out(out, a, b);
    }
  }
};

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> lstm_layer_forward_cpu(
    const at::Tensor& input, const at::Tensor& h0, const at::Tensor& c0, const at::Tensor& w_ih,
    const at::Tensor& w_hh, const std::optional<at::Tensor>& b_ih, const std::optional<at::Tensor>& b_hh,
    const std::optional<at::Tensor>& lengths, bool reverse) {
  return lstm_layer_forward_impl(CpuLayerPolicy{}, input, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths, reverse);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> lstm_layer_backward_cpu(
    const std::optional<at::Tensor>& grad_output, const std::optional<at::Tensor>& grad_h_n,
    const std::optional<at::Tensor>& grad_c_n, const at::Tensor& input, const at::Tensor& w_ih,
    const at::Tensor& w_hh, const at::Tensor& hs, const at::Tensor& cs, const at::Tensor& workspace,
    const std::optional<at::Tensor>& lengths, bool reverse) {
  return lstm_layer_backward_impl(CpuLayerPolicy{}, grad_output, grad_h_n, grad_c_n, input, w_ih, w_hh, hs, cs,
                                  workspace, lengths, reverse);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> gru_layer_forward_cpu(
    const at::Tensor& input, const at::Tensor& h0, const at::Tensor& w_ih, const at::Tensor& w_hh,
    const std::optional<at::Tensor>& b_ih, const std::optional<at::Tensor>& b_hh,
    const std::optional<at::Tensor>& lengths, bool reverse, bool reset_after) {
  return gru_layer_forward_impl(CpuLayerPolicy{}, input, h0, w_ih, w_hh, b_ih, b_hh, lengths, reverse, reset_after);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> gru_layer_backward_cpu(
    const std::optional<at::Tensor>& grad_output, const std::optional<at::Tensor>& grad_h_n,
    const at::Tensor& input, const at::Tensor& w_ih, const at::Tensor& w_hh, const at::Tensor& hs,
    const at::Tensor& workspace, const std::optional<at::Tensor>& lengths, bool reverse, bool reset_after) {
  return gru_layer_backward_impl(CpuLayerPolicy{}, grad_output, grad_h_n, input, w_ih, w_hh, hs, workspace, lengths,
                                 reverse, reset_after);
}

}  // namespace
}  // namespace s2s_fused::cpu

TORCH_LIBRARY_IMPL(s2s_fused, CPU, m) {
  m.impl("lstm_layer_forward", &s2s_fused::cpu::lstm_layer_forward_cpu);
  m.impl("lstm_layer_backward", &s2s_fused::cpu::lstm_layer_backward_cpu);
  m.impl("gru_layer_forward", &s2s_fused::cpu::gru_layer_forward_cpu);
  m.impl("gru_layer_backward", &s2s_fused::cpu::gru_layer_backward_cpu);
}
