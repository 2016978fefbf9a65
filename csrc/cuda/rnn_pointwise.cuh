// CUDA launchers of the RNN ops' kernels (parameters: csrc/rnn_core.h). Plain CUDA: no torch headers. Every
// launcher runs on `stream` and returns the launch error.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "rnn_core.h"

namespace s2s_fused::cuda {

// The pointwise kernels for D = 1 or 2 directions in one launch (gridDim.z = D): p[d] is direction d's step (its
// own pointers and row strides; the same H and dtype), B rows each. The same results as D launches of one.
cudaError_t lstm_forward(const LstmForwardParams* p, int64_t D, int64_t B, cudaStream_t stream);
cudaError_t lstm_backward(const LstmBackwardParams* p, int64_t D, int64_t B, cudaStream_t stream);
cudaError_t gru_forward(const GruForwardParams* p, int64_t D, int64_t B, cudaStream_t stream);
cudaError_t gru_forward_stage2(const GruForwardParams* p, int64_t D, int64_t B, cudaStream_t stream);
cudaError_t gru_backward(const GruBackwardParams* p, int64_t D, int64_t B, cudaStream_t stream);
cudaError_t gru_backward_stage2(const GruBackwardParams* p, int64_t D, int64_t B, cudaStream_t stream);

// One whole cell step in one kernel: each block computes, for a tile of batch rows and a tile of hidden units, the
// G gate pre-activations x W_ih^T + h W_hh^T (+ biases) of that tile (all gates, so the cell update happens in
// registers) and applies the LSTM (G = 4) or GRU reset_after (G = 3) update in the epilogue. For small batch,
// where the step is bound by reading the weights once. Returns cudaErrorNotSupported for shapes/dtypes it does
// not cover (the caller then runs the GEMMs and the pointwise kernel).
struct FusedStepParams {
  Dtype dtype;
  int64_t B, I, H;
  const void* x;     // (B, I) contiguous
  const void* hx;    // (B, H) contiguous
  const void* cx;    // (B, H) contiguous, LSTM only
  const void* w_ih;  // (G·H, I) contiguous
  const void* w_hh;  // (G·H, H) contiguous
  const void* b_ih;  // (G·H,) or nullptr
  const void* b_hh;  // (G·H,) or nullptr
  void* h1;          // (B, H)
  void* c1;          // (B, H), LSTM only
  void* ws;          // (B, 4H) workspace as the pointwise kernels write it
};
cudaError_t lstm_fused_step(const FusedStepParams& p, cudaStream_t stream);
cudaError_t gru_fused_step(const FusedStepParams& p, cudaStream_t stream);

// Direction d of a whole forward sequence in one persistent kernel (csrc/cuda/rnn_persistent.cu), on q's buffers
// with the input projections already in q.gates / q.gi. cudaErrorNotSupported (and nothing launched): a sequence
// it does not cover (B > 8, GRU reset_before, float64, W_hh too large for the co-resident blocks' shared memory,
// no cooperative launch); the caller then runs the per-step loop.
cudaError_t persistent_sequence(const Sequence& q, int64_t d, cudaStream_t stream);

}  // namespace s2s_fused::cuda
