// Beam-search top-k step (see s2s_fused/ops/beam.py for the op's exact semantics).
//
// Candidate (i, v) of batch row b scores beam_scores[b, i] + log_softmax(logits[b, i])[v]; the op returns the best
// k of the K*V candidates per batch row in torch.sort's order (NaN above +inf, equal scores to the lower flat index
// i*V + v). The CPU kernels work in two stages:
//  1. per beam row (b, i): one pass over the logits keeps the running max / sum-exp and the top kk = min(k, V)
//     raw logits (log_softmax is monotone within a row), then turns the survivors into scores and writes the
//     row's best kk candidates, sorted by (score desc, index asc);
//  2. per batch row b: a K-way merge of those sorted lists (csrc/cpu/beam.cpp).
// Non-finite values follow torch: log_softmax is NaN everywhere in a row holding a NaN or +inf logit or only -inf
// logits (x - max is NaN there), so such a "poisoned" row offers NaN candidates, which rank first, by index; a
// NaN beam score gives NaN candidates and a +inf one +inf (NaN where the logit is -inf: inf + -inf). Rows whose
// order is no longer the logits' take the exact path. The CUDA kernels (csrc/cuda/beam.cu) rank with
// beam_rank_before below and follow the same rule.
#pragma once

#include <cstdint>

#include "rnn_pointwise.h"  // Dtype

namespace s2s_fused {

#if defined(__CUDACC__)
#define S2S_BEAM_HOST_DEVICE __host__ __device__
#else
#define S2S_BEAM_HOST_DEVICE
#endif

// The op's candidate order, torch.sort(descending=True, stable=True)'s: score descending with NaN above every
// number (+inf included), equal scores (NaN with NaN) to the lower flat index. A strict weak order.
template <typename A>
S2S_BEAM_HOST_DEVICE inline bool beam_rank_before(A sa, int64_t ia, A sb, int64_t ib) {
  const bool na = sa != sa, nb = sb != sb;
  if (na != nb) return na;
  if (na) return ia < ib;
  return sa > sb || (sa == sb && ia < ib);
}

}  // namespace s2s_fused

namespace s2s_fused::cpu {

// Largest k the single-pass path keeps per row; above it every row takes the exact path (every score of the row,
// selected with O(k) memory), which is slower but gives the same answer.
constexpr int64_t kBeamFastMaxK = 64;

struct BeamRowParams {
  Dtype dtype;                 // of the logits
  const void* logits = nullptr;
  int64_t stride_b = 0, stride_k = 0;  // in elements; the vocabulary dimension is contiguous
  const float* beam_scores = nullptr;  // (B*K,) contiguous
  const uint8_t* finished = nullptr;   // (B*K,) or null
  int64_t eos_id = -1;
  int64_t K = 0, V = 0;
  int64_t kk = 0;              // candidates kept per beam row: min(k, V)
  bool exact = false;          // k > kBeamFastMaxK: every row takes the exact path
  double* cand_score = nullptr;   // (B*K, kk) out, sorted per row
  int64_t* cand_index = nullptr;  // (B*K, kk) out: flat index i*V + v
};

struct BeamKernels {
  // Rows r in [row_begin, row_end) of the flattened (B*K) beam rows.
  void (*beam_rows)(const BeamRowParams&, int64_t row_begin, int64_t row_end);
};

}  // namespace s2s_fused::cpu
