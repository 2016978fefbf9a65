// CUDA launchers of the pointwise LSTM/GRU work (csrc/rnn_pointwise.h describes the parameters), shared by the
// cell ops and the sequence layers, and the fused "recurrent GEMM + gate epilogue" step kernels for small batch.
// Plain CUDA: no torch headers. Every launcher processes all B rows on `stream` and returns the launch error.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "rnn_pointwise.h"

namespace s2s_fused::cuda {

cudaError_t lstm_forward(const LstmForwardParams& p, int64_t B, cudaStream_t stream);
cudaError_t lstm_backward(const LstmBackwardParams& p, int64_t B, cudaStream_t stream);
cudaError_t gru_forward(const GruForwardParams& p, int64_t B, cudaStream_t stream);
cudaError_t gru_forward_stage2(const GruForwardParams& p, int64_t B, cudaStream_t stream);
cudaError_t gru_backward(const GruBackwardParams& p, int64_t B, cudaStream_t stream);
cudaError_t gru_backward_stage2(const GruBackwardParams& p, int64_t B, cudaStream_t stream);

// Both directions of a bidirectional layer in one launch (gridDim.z = 2): p0 is the forward direction's step, p1
// the reverse direction's (each with its own pointers and row strides; same H and dtype). Same results as
// calling the single-direction launcher on p0 and then on p1.
cudaError_t lstm_forward_bidir(const LstmForwardParams& p0, const LstmForwardParams& p1, int64_t B,
                               cudaStream_t stream);
cudaError_t lstm_backward_bidir(const LstmBackwardParams& p0, const LstmBackwardParams& p1, int64_t B,
                                cudaStream_t stream);
cudaError_t gru_forward_bidir(const GruForwardParams& p0, const GruForwardParams& p1, int64_t B, cudaStream_t stream);
cudaError_t gru_forward_stage2_bidir(const GruForwardParams& p0, const GruForwardParams& p1, int64_t B,
                                     cudaStream_t stream);
cudaError_t gru_backward_bidir(const GruBackwardParams& p0, const GruBackwardParams& p1, int64_t B,
                               cudaStream_t stream);
cudaError_t gru_backward_stage2_bidir(const GruBackwardParams& p0, const GruBackwardParams& p1, int64_t B,
                                      cudaStream_t stream);

// One whole step in one kernel: each block computes, for a tile of batch rows and a tile of hidden units, the
// G gate pre-activations x W_ih^T + h W_hh^T (+ biases) of that tile (all gates, so the cell update happens in
// registers) and applies the LSTM (G = 4) or GRU reset_after (G = 3) update in the epilogue. For small batch,
// where the step is bound by reading the weights once. Returns cudaErrorNotSupported for shapes/dtypes it does
// not cover (the caller then falls back to cuBLAS + the pointwise kernel).
struct FusedStepParams {
  Dtype dtype;
  int64_t B, I, H;
  const void* x;     // (B, I) contiguous
  const void* hx;    // (B, H) contiguous
  const void* cx;    // (B, H) contiguous, LSTM only
  const void* w_ih;  // (G*H, I) contiguous
  const void* w_hh;  // (G*H, H) contiguous
  const void* b_ih;  // (G*H,) or nullptr
  const void* b_hh;  // (G*H,) or nullptr
  void* h1;          // (B, H)
  void* c1;          // (B, H), LSTM only
  void* ws;          // (B, 4H) workspace as the pointwise kernels write it
};
cudaError_t lstm_fused_step(const FusedStepParams& p, cudaStream_t stream);

// The persistent small-batch recurrence (csrc/cuda/rnn_persistent.cu). cudaErrorNotSupported: shape, dtype or
// device it does not cover (B > 8, float64, W_hh too large for the co-resident blocks' shared memory, no
// cooperative launch); the caller then runs the per-step path.
cudaError_t persistent_recurrence(const PersistentParams& p, cudaStream_t stream);
cudaError_t gru_fused_step(const FusedStepParams& p, cudaStream_t stream);

}  // namespace s2s_fused::cuda
