// The CPU device of the RNN ops (the interface of csrc/rnn_device.h): the capability-selected pointwise kernels of
// csrc/cpu/kernels/rnn_pointwise.cpp in parallel over batch rows, GEMMs through oneDNN or ATen, and for fp32 the
// whole sequence loop with packed weights (csrc/cpu/rnn_packed_sequence.h).
#pragma once

#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <span>

#include "config.h"
#include "cpu/memory.h"
#include "cpu/rnn_kernel_tables.h"
#include "cpu/rnn_packed_sequence.h"
#include "rnn_core.h"

// oneDNN's matmul, as ATen uses it (exported by libtorch_cpu; its header is not shipped). Weak, so a torch built
// without it still loads this extension (and uses ATen's BLAS).
namespace at::native {
__attribute__((weak)) void mkldnn_matmul(const at::Tensor& mat1, const at::Tensor& mat2, const at::Tensor& result,
                                         float beta, float alpha);
}

namespace s2s_fused::cpu {

// Rows per task: enough elements that a task outweighs its scheduling cost (~32K gate values).
inline int64_t row_grain(int64_t H, int64_t gates) {
  return std::max<int64_t>(1, 32768 / std::max<int64_t>(1, gates * H));
}

// fp32 GEMMs through oneDNN where it is available: on this project's AMD (Zen, AVX-512) machines MKL's sgemm
// takes its generic path, and oneDNN's kernels (the ones torch.nn.LSTM's CPU path uses) were 7-25% faster on
// the layer's shapes (benchmarks/NOTES.md, rnn_layer). Other dtypes, and builds without oneDNN: ATen (BLAS).
// Small products stay on ATen's BLAS: oneDNN builds a primitive per call, which costs more than a small GEMM
// (a T=1, B=1, H=4 GRU layer's backward took 68 us with its three weight-gradient GEMMs on oneDNN).
inline bool use_onednn_gemm(const at::Tensor& out, int64_t inner) {
  static const bool available = at::hasMKLDNN() && &at::native::mkldnn_matmul != nullptr;
  constexpr int64_t kMinMacs = int64_t(1) << 18;  // 64^3
  return available && !config::on(config::Switch::NoOnednn) && out.scalar_type() == at::kFloat &&
         out.numel() > 0 && out.numel() * inner >= kMinMacs;
}

// With S2S_FUSED_CHECK_GEMM_TAILS on (the test session turns it on): before each GEMM, fail if the columns that
// oneDNN's AMX bf16 matmul reads past K in every row but the last (up to the next multiple of 32, within the row
// stride) hold NaN or inf. That kernel cancels them against zero padding of the other operand, so a non-finite
// value there leaks into the product (uxlfoundation/oneDNN#5717); on machines without AMX they are never read, and
// this check makes a buffer left unwritten next to a GEMM operand fail everywhere, not only on Intel AMX machines.
inline void check_gemm_operand_tail(const at::Tensor& a, const char* name) {
  if (!config::on(config::Switch::CheckGemmTails) || a.dim() != 2 || a.stride(1) != 1 || a.size(0) < 2) return;
  const int64_t K = a.size(1), ld = a.stride(0);
  const int64_t tail = std::min<int64_t>((K + 31) / 32 * 32, ld) - K;
  if (K <= 32 || tail <= 0) return;
  const at::Tensor past = a.as_strided({a.size(0) - 1, tail}, {ld, 1}, a.storage_offset() + K);
  TORCH_CHECK(at::isfinite(past).all().item<bool>(), "s2s_fused: GEMM operand ", name, " (", a.sizes(),
              ", row stride ", ld, "): the ", tail, " elements after some row hold NaN/inf (unwritten memory?)");
}

struct CpuRnnPolicy {
  struct Guard {  // nothing to select on the CPU
    explicit Guard(const at::Device&) {}
  };

  // Sequence-sized buffers (workspaces, states, gradients): huge-page backed where they are large.
  at::Tensor buffer(at::IntArrayRef sizes, const at::TensorOptions& options) const {
    return empty_huge(sizes, options);
  }

  // out = a @ b (+ out when accumulate); 3-D operands: one batched product over the leading (direction) dim.
  void gemm(at::Tensor& out, const at::Tensor& a, const at::Tensor& b, bool accumulate) const {
    if (a.size(-1) == 0) {  // empty inner dimension: oneDNN and BLAS disagree on what to do; the answer is 0
      if (!accumulate) out.zero_();
      return;
    }
    if (a.dim() == 3) {
      for (int64_t d = 0; d < a.size(0); ++d) check_gemm_operand_tail(a.select(0, d), "a");
      if (accumulate) out.baddbmm_(a, b); else at::bmm_out(out, a, b);
      return;
    }
    check_gemm_operand_tail(a, "a");
    if (use_onednn_gemm(out, a.size(1))) {
      at::native::mkldnn_matmul(a, b, out, accumulate ? 1.f : 0.f, 1.f);
    } else if (accumulate) {
      out.addmm_(a, b);
    } else {
      at::mm_out(out, a, b);
    }
  }

  // Each direction's kernel in parallel over the batch rows.
  template <class P, class Kernel>
  static void rows(std::span<const P> p, int64_t B, int64_t gates, Kernel kernel) {
    for (const P& q : p) {
      at::parallel_for(0, B, row_grain(q.H, gates), [&](int64_t r0, int64_t r1) { kernel(q, r0, r1); });
    }
  }
  void lstm_forward(std::span<const LstmForwardParams> p, int64_t B) const {
    rows(p, B, 4, rnn_pointwise_kernels().lstm_forward);
  }
  void lstm_backward(std::span<const LstmBackwardParams> p, int64_t B) const {
    rows(p, B, 4, rnn_pointwise_kernels().lstm_backward);
  }
  void gru_forward(std::span<const GruForwardParams> p, int64_t B) const {
    rows(p, B, 3, rnn_pointwise_kernels().gru_forward);
  }
  void gru_forward_stage2(std::span<const GruForwardParams> p, int64_t B) const {
    rows(p, B, 3, rnn_pointwise_kernels().gru_forward_stage2);
  }
  void gru_backward(std::span<const GruBackwardParams> p, int64_t B) const {
    rows(p, B, 3, rnn_pointwise_kernels().gru_backward);
  }
  void gru_backward_stage2(std::span<const GruBackwardParams> p, int64_t B) const {
    rows(p, B, 3, rnn_pointwise_kernels().gru_backward_stage2);
  }

  // fp32: the whole time loop with packed weights, each thread over its own rows, computing each step's input
  // projection next to its recurrent product; other dtypes: the per-step loop.
  bool projects_input(Dtype dtype) const { return use_packed_sequence(dtype); }
  bool run_sequence(const Sequence& q) const { return packed_sequence_forward(q); }
  bool run_sequence_backward(const Sequence& q, const SequenceGrads& g) const {
    return packed_sequence_backward(q, g);
  }
};

}  // namespace s2s_fused::cpu
