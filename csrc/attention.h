// Additive (Bahdanau) attention kernels' parameters, shared by the CPU capability builds
// (csrc/cpu/kernels/attention.cpp) and the CUDA kernels (csrc/cuda/attention.cu). Plain C++ (no torch headers).
//
// One decoder step, per batch row b (s < S positions, h < H attention units, d < Dv value features):
//   score_s = sum_h v_h tanh(qp_bh + k_bsh),  qp = query W_q^T (B, H), computed by a GEMM before the kernel;
//   weights_b = softmax of score_s over s < L = valid_len[b], 0 at s >= L;
//   context_bd = sum_s weights_bs values_bsd.
// L = 0: uniform weights 1/S over every position (d2l's -1e6 masking), independent of query, keys, w_q and v.
//
// Layout: keys (B, S, H), values (B, S, Dv), grad tensors and outputs contiguous in the inputs' dtype; qp, dqp and
// grad_v_rows contiguous (B, H) in `acc` precision (double for double inputs, else float); v (H,) contiguous;
// valid_len (B,) int64 in [0, S] (checked before a kernel runs).
#pragma once

#include <cstdint>

#include "dtype.h"

namespace s2s_fused::cpu {

struct AttnRows {
  Dtype dtype;
  int64_t B = 0, S = 1, H = 0, Dv = 0;
  const void* keys = nullptr;
  const void* values = nullptr;
  const void* v = nullptr;
  const void* qp = nullptr;            // (B, H) acc
  const int64_t* valid_len = nullptr;  // (B,)
};

struct AttnForwardParams {
  AttnRows rows;
  void* context = nullptr;  // (B, Dv)
  void* weights = nullptr;  // (B, S)
};

// The scores are recomputed from qp (S*H tanh per row, as many as the forward): cheaper than saving (B, S, H).
struct AttnBackwardParams {
  AttnRows rows;
  const void* grad_context = nullptr;  // (B, Dv)
  const void* grad_weights = nullptr;  // (B, S) or nullptr
  void* grad_keys = nullptr;           // (B, S, H)
  void* grad_values = nullptr;         // (B, S, Dv)
  void* grad_qp = nullptr;             // (B, H) acc: d loss / d qp = sum_s d loss / d keys_s
  void* grad_v_rows = nullptr;         // (B, H) acc: row b's share of d loss / d v
};

// CPU kernels over batch rows [b0, b1).
struct AttentionKernels {
  void (*forward)(const AttnForwardParams&, int64_t b0, int64_t b1);
  void (*backward)(const AttnBackwardParams&, int64_t b0, int64_t b1);
};

}  // namespace s2s_fused::cpu
