// The CPU pointwise policy for rnn_cell_impl.h (and the layers): the capability-selected kernels of
// csrc/cpu/kernels/rnn_pointwise.cpp, run in parallel over batch rows.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>

#include "cpu/dispatch.h"
#include "rnn_pointwise.h"

S2S_CPU_KERNEL_TABLE(RnnPointwiseKernels, rnn_pointwise_kernels)

namespace s2s_fused::cpu {

// Rows per task: enough elements that a task outweighs its scheduling cost (~32K gate values).
inline int64_t row_grain(int64_t H, int64_t gates) { return std::max<int64_t>(1, 32768 / std::max<int64_t>(1, gates * H)); }

struct CpuPointwise {
  template <class P, class F>
  static void rows(const P& p, int64_t B, int64_t gates, F fn) {
    at::parallel_for(0, B, row_grain(p.H, gates), [&](int64_t r0, int64_t r1) { fn(p, r0, r1); });
  }
  void lstm_forward(const LstmForwardParams& p, int64_t B) const { rows(p, B, 4, rnn_pointwise_kernels().lstm_forward); }
  void lstm_backward(const LstmBackwardParams& p, int64_t B) const { rows(p, B, 4, rnn_pointwise_kernels().lstm_backward); }
  void gru_forward(const GruForwardParams& p, int64_t B) const { rows(p, B, 3, rnn_pointwise_kernels().gru_forward); }
  void gru_forward_stage2(const GruForwardParams& p, int64_t B) const {
    rows(p, B, 3, rnn_pointwise_kernels().gru_forward_stage2);
  }
  void gru_backward(const GruBackwardParams& p, int64_t B) const { rows(p, B, 3, rnn_pointwise_kernels().gru_backward); }
  void gru_backward_stage2(const GruBackwardParams& p, int64_t B) const {
    rows(p, B, 3, rnn_pointwise_kernels().gru_backward_stage2);
  }
};

}  // namespace s2s_fused::cpu
