// CPU registration of the rnn_layer_bidir ops: the device-generic two-direction template of
// csrc/rnn_bidir_impl.h with the CPU policy of rnn_pointwise_cpu.h, which has no two-direction pointwise or
// batched GEMM methods, so each step runs the single-direction kernels and GEMMs once per direction. The modules
// use these ops only for CUDA input (on CPU they keep the per-direction ops); registering the same template here
// is what tests its logic on CPU against the per-direction ops and torch.nn. With S2S_FUSED_TEST_BIDIR_BRANCHES=1
// a test policy drives the template's two-direction branches (the ones CUDA takes) instead.
#include <torch/library.h>

#include <cstdlib>

#include "cpu/rnn_pointwise_cpu.h"
#include "rnn_bidir_impl.h"

namespace s2s_fused::cpu {
namespace {

using OptT = std::optional<at::Tensor>;

// The CPU policy has none of the two-direction methods: every step runs the single-direction kernels twice.
static_assert(!bidir::has_bidir_pointwise<CpuPointwise> && !bidir::has_batched_gemm<CpuPointwise> &&
              !has_step_recorder<CpuPointwise>);

// Test only (S2S_FUSED_TEST_BIDIR_BRANCHES=1, read per call): the CPU policy plus the two-direction methods the CUDA
// policy has, so the template's CUDA branches run on CPU: the batched GEMM through the very ATen calls the CUDA
// policy makes (baddbmm_ / bmm_out on the strided (2, ...) step views), the pointwise pair as two CPU kernel calls.
struct CpuPolicyWithBidirBranches : CpuPointwise {
  void gemm_batched(at::Tensor& out, const at::Tensor& a, const at::Tensor& b, bool accumulate) const {
    if (accumulate) out.baddbmm_(a, b); else at::bmm_out(out, a, b);
  }
#define S2S_CPU_PAIR(name, P)                                          \
  void name##_bidir(const P& p0, const P& p1, int64_t B) const {       \
    name(p0, B);                                                       \
    name(p1, B);                                                       \
  }
  S2S_CPU_PAIR(lstm_forward, LstmForwardParams)
  S2S_CPU_PAIR(lstm_backward, LstmBackwardParams)
  S2S_CPU_PAIR(gru_forward, GruForwardParams)
  S2S_CPU_PAIR(gru_forward_stage2, GruForwardParams)
  S2S_CPU_PAIR(gru_backward, GruBackwardParams)
  S2S_CPU_PAIR(gru_backward_stage2, GruBackwardParams)
#undef S2S_CPU_PAIR
};
static_assert(bidir::has_bidir_pointwise<CpuPolicyWithBidirBranches> &&
              bidir::has_batched_gemm<CpuPolicyWithBidirBranches>);

// Runs f(policy) with the CPU policy, or with the test policy above when S2S_FUSED_TEST_BIDIR_BRANCHES=1.
template <class F>
auto with_policy(F&& f) {
  const char* on = std::getenv("S2S_FUSED_TEST_BIDIR_BRANCHES");
  if (on != nullptr && on[0] == '1') return f(CpuPolicyWithBidirBranches{});
  return f(CpuPointwise{});
}

auto lstm_bidir_forward_cpu(const at::Tensor& input, const at::Tensor& h0, const at::Tensor& c0,
                            const at::Tensor& w_ih, const at::Tensor& w_hh, const OptT& b_ih, const OptT& b_hh,
                            const at::Tensor& w_ih_r, const at::Tensor& w_hh_r, const OptT& b_ih_r,
                            const OptT& b_hh_r, const OptT& lengths) {
  return with_policy([&](const auto& pw) {
    return lstm_layer_bidir_forward_impl(pw, input, h0, c0, w_ih, w_hh, b_ih, b_hh, w_ih_r, w_hh_r, b_ih_r, b_hh_r,
        lengths);
  });
}

auto lstm_bidir_backward_cpu(const OptT& grad_output, const OptT& grad_h_n, const OptT& grad_c_n,
                             const at::Tensor& input, const at::Tensor& w_ih, const at::Tensor& w_hh,
                             const at::Tensor& w_ih_r, const at::Tensor& w_hh_r, const at::Tensor& hs,
                             const at::Tensor& cs, const at::Tensor& workspace, const OptT& lengths) {
  return with_policy([&](const auto& pw) {
    return lstm_layer_bidir_backward_impl(pw, grad_output, grad_h_n, grad_c_n, input, w_ih, w_hh, w_ih_r, w_hh_r,
        hs, cs, workspace, lengths);
  });
}

auto gru_bidir_forward_cpu(const at::Tensor& input, const at::Tensor& h0, const at::Tensor& w_ih,
                           const at::Tensor& w_hh, const OptT& b_ih, const OptT& b_hh, const at::Tensor& w_ih_r,
                           const at::Tensor& w_hh_r, const OptT& b_ih_r, const OptT& b_hh_r, const OptT& lengths,
                           bool reset_after) {
  return with_policy([&](const auto& pw) {
    return gru_layer_bidir_forward_impl(pw, input, h0, w_ih, w_hh, b_ih, b_hh, w_ih_r, w_hh_r, b_ih_r, b_hh_r,
        lengths, reset_after);
  });
}

auto gru_bidir_backward_cpu(const OptT& grad_output, const OptT& grad_h_n, const at::Tensor& input,
                            const at::Tensor& w_ih, const at::Tensor& w_hh, const at::Tensor& w_ih_r,
                            const at::Tensor& w_hh_r, const at::Tensor& hs, const at::Tensor& workspace,
                            const OptT& lengths, bool reset_after) {
  return with_policy([&](const auto& pw) {
    return gru_layer_bidir_backward_impl(pw, grad_output, grad_h_n, input, w_ih, w_hh, w_ih_r, w_hh_r, hs,
        workspace, lengths, reset_after);
  });
}

}  // namespace
}  // namespace s2s_fused::cpu

TORCH_LIBRARY_IMPL(s2s_fused, CPU, m) {
  m.impl("lstm_layer_bidir_forward", &s2s_fused::cpu::lstm_bidir_forward_cpu);
  m.impl("lstm_layer_bidir_backward", &s2s_fused::cpu::lstm_bidir_backward_cpu);
  m.impl("gru_layer_bidir_forward", &s2s_fused::cpu::gru_bidir_forward_cpu);
  m.impl("gru_layer_bidir_backward", &s2s_fused::cpu::gru_bidir_backward_cpu);
}
