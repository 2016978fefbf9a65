// Attention kernels' parameters (additive / Bahdanau, and dot / Luong), shared by the CPU capability builds
// (csrc/cpu/kernels/attention.cpp) and the CUDA kernels (csrc/cuda/attention.cu). Plain C++ (no torch headers).
//
// One decoder step, per query row n < N, attending source row b = n / R (s < S positions, h < H attention units,
// d < Dv value features); N = R*B: the R query rows of a source row are consecutive (batch-major beams share their
// sentence's keys and values, one copy of them):
//   score_s = sum_h v_h tanh(qp_nh + k_bsh),  qp = query W_q^T (N, H), computed by a GEMM before the kernel;
//   weights_n = softmax of score_s over s < L = valid_len[b], 0 at s >= L;
//   context_nd = sum_s weights_ns values_bsd.
// L = 0: uniform weights 1/S over every position (d2l's -1e6 masking), independent of query, keys, w_q and v.
// Dot (Luong) scores (`dot`): score_s = sum_h qp_nh k_bsh with qp = the query itself (H = Hq; Luong's "general"
// score is this over keys projected once per source, W_a m_s); v, grad_v_rows and the tanh are unused.
//
// Layout: keys (B, S, H), values (B, S, Dv), outputs contiguous in the inputs' dtype; qp, dqp and grad_v_rows
// contiguous (N, H) in `acc` precision (double for double inputs, else float); v (H,) contiguous; valid_len (B,)
// int64 in [0, S] (checked before a kernel runs).
#pragma once

#include <cstdint>

#include "dtype.h"

namespace s2s_fused::cpu {

struct AttnRows {
  Dtype dtype;
  bool dot = false;                    // dot (Luong) scores instead of additive ones
  int64_t N = 0, B = 0, R = 1, S = 1, H = 0, Dv = 0;  // N query rows = R * B source rows (R = 1 when B = 0)
  const void* keys = nullptr;          // (B, S, H)
  const void* values = nullptr;        // (B, S, Dv)
  const void* v = nullptr;             // (H,); additive only
  const void* qp = nullptr;            // (N, H) acc
  const int64_t* valid_len = nullptr;  // (B,)
};

struct AttnForwardParams {
  AttnRows rows;
  void* context = nullptr;  // (N, Dv)
  void* weights = nullptr;  // (N, S)
};

// The scores are recomputed from qp (S*H tanh per row, as many as the forward): cheaper than saving (N, S, H).
// grad_keys and grad_values hold one slice per query row, so no two rows write the same memory: for R = 1 they are
// the gradients themselves, (B, S, .) in the inputs' dtype; for R > 1 they are (N, S, .) in `acc` precision, each
// query row's share, which the caller sums over the R rows of a source row (rounding once, to the inputs' dtype).
struct AttnBackwardParams {
  AttnRows rows;
  const void* grad_context = nullptr;  // (N, Dv)
  const void* grad_weights = nullptr;  // (N, S) or nullptr
  void* grad_keys = nullptr;           // (N, S, H): R = 1 dtype, R > 1 acc
  void* grad_values = nullptr;         // (N, S, Dv): R = 1 dtype, R > 1 acc
  void* grad_qp = nullptr;             // (N, H) acc: d loss / d qp = sum_s d loss / d keys_s
  void* grad_v_rows = nullptr;         // (N, H) acc: row n's share of d loss / d v; additive only
};

// CPU kernels over query rows [n0, n1).
struct AttentionKernels {
  void (*forward)(const AttnForwardParams&, int64_t n0, int64_t n1);
  void (*backward)(const AttnBackwardParams&, int64_t n0, int64_t n1);
};

}  // namespace s2s_fused::cpu
