// Masked softmax cross-entropy kernels' parameters, shared by the CPU capability builds
// (csrc/cpu/kernels/cross_entropy.cpp) and the CUDA kernels (csrc/cuda/cross_entropy.cu). Plain C++ (no torch
// headers).
//
// Layout: the logits are R = B * T rows of V classes (2-D logits are B = 1, T = N). Row n is (b, t) = (n / T,
// n % T) and starts at logits + b * stride_b + t * stride_t; classes are contiguous. target and valid_len are
// contiguous int64; loss and lse are contiguous (R,) in `acc` precision (double for double logits, else float);
// grad_loss is read at b * grad_stride_b + t * grad_stride_t (any strides, stride 0 included).
//
// Masking: row n is masked when t >= valid_len[b] (valid_len given) or target[n] == ignore_index. A masked row's
// logits are never read: forward writes loss 0 and lse 0, backward writes a zero gradient row.
//
// Label smoothing eps (torch's definition): loss = (1 - eps) * (lse - x_y) + eps * (lse - mean_j x_j);
// d loss / d x_j = softmax_j - eps / V - (1 - eps) * [j == y].
#pragma once

#include <cstdint>

#include "dtype.h"

namespace s2s_fused::cpu {

struct CeRows {
  Dtype dtype;
  const void* logits = nullptr;
  int64_t R = 0, V = 0, T = 1;
  int64_t stride_b = 0, stride_t = 0;
  const int64_t* target = nullptr;     // (R,)
  const int64_t* valid_len = nullptr;  // (B,) or nullptr
  int64_t ignore_index = -100;
  double label_smoothing = 0.0;
};

struct CeForwardParams {
  CeRows rows;
  void* loss = nullptr;  // (R,) acc type
  void* lse = nullptr;   // (R,) acc type
};

struct CeBackwardParams {
  CeRows rows;
  const void* lse = nullptr;        // (R,) acc type
  const void* grad_loss = nullptr;  // acc type, strided as described above
  int64_t grad_stride_b = 0, grad_stride_t = 0;
  void* grad_logits = nullptr;  // (R, V) contiguous, logits' dtype
};

// CPU kernels over rows [r0, r1). Each returns the first row in the range whose (unmasked) target lies outside
// [0, V), or -1; such a row is written as NaN (loss, lse, gradient) and never read out of bounds.
struct CrossEntropyKernels {
  int64_t (*forward)(const CeForwardParams&, int64_t r0, int64_t r1);
  int64_t (*backward)(const CeBackwardParams&, int64_t r0, int64_t r1);
};

}  // namespace s2s_fused::cpu
