// The per-capability RNN kernels (csrc/cpu/kernels/rnn_pointwise.cpp, packed_gemm.cpp) and their run-time choice,
// declared once for every CPU file that calls them.
#pragma once

#include "cpu/dispatch.h"
#include "cpu/packed_gemm.h"
#include "rnn_core.h"

namespace s2s_fused::cpu {

// One capability's copy of the pointwise kernels (csrc/rnn_core.h), each over rows [row_begin, row_end).
struct RnnPointwiseKernels {
  void (*lstm_forward)(const LstmForwardParams&, int64_t row_begin, int64_t row_end);
  void (*lstm_backward)(const LstmBackwardParams&, int64_t row_begin, int64_t row_end);
  void (*gru_forward)(const GruForwardParams&, int64_t row_begin, int64_t row_end);
  void (*gru_forward_stage2)(const GruForwardParams&, int64_t row_begin, int64_t row_end);   // reset_before
  void (*gru_backward)(const GruBackwardParams&, int64_t row_begin, int64_t row_end);
  void (*gru_backward_stage2)(const GruBackwardParams&, int64_t row_begin, int64_t row_end);  // reset_before
};

}  // namespace s2s_fused::cpu

S2S_CPU_KERNEL_TABLE(RnnPointwiseKernels, rnn_pointwise_kernels)
S2S_CPU_KERNEL_TABLE(PackedGemmKernels, packed_gemm_kernels)
