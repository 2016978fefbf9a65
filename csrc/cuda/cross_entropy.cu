// CUDA masked softmax cross-entropy, forward and backward (layout and masking: csrc/cross_entropy.h). No torch
// headers: the binding (cross_entropy_binding.cpp) checks the tensors and passes raw pointers and the stream.
//
// One group of TPR threads per row: a warp (TPR = 32, 8 rows per 256-thread block) for V <= 1024, the whole block
// (TPR = 256) above. Loads are 16 bytes (VEC elements) when the logits' rows, strides and V allow it; offsets are
// 64-bit. Forward: each thread keeps an online (max, sum-exp) over its elements (one exp per element plus one per
// 16-byte pack), then the group merges them; one read of the row. Backward: one read, one write. Masked rows
// read no logits. A target outside [0, V) or a valid_len outside [0, T] cannot raise here (no host sync): the row
// (the whole sequence for valid_len) gets NaN loss, lse and gradient, and no load goes out of bounds.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cmath>
#include <cstdint>

#include "cuda/acc.cuh"
#include "cuda/cross_entropy_cuda.h"

namespace s2s_fused::cuda {
namespace {

using cpu::CeBackwardParams;
using cpu::CeForwardParams;
using cpu::CeRows;
using s2s_fused::Dtype;

constexpr int kThreads = 256;

__device__ __forceinline__ float exp_acc(float v) { return __expf(v); }
__device__ __forceinline__ double exp_acc(double v) { return exp(v); }
__device__ __forceinline__ float log_acc(float v) { return __logf(v); }
__device__ __forceinline__ double log_acc(double v) { return log(v); }

template <typename A>
__device__ __forceinline__ A neg_inf() { return -INFINITY; }
template <typename A>
__device__ __forceinline__ A quiet_nan() { return NAN; }

template <typename T, int VEC>
struct alignas(sizeof(T) * VEC) Pack {
  T v[VEC];
};

struct MaxOp {
  template <typename A>
  __device__ A operator()(A a, A b) const { return a > b ? a : b; }
};
struct SumOp {
  template <typename A>
  __device__ A operator()(A a, A b) const { return a + b; }
};

// Reduce over the TPR threads of a row group. TPR = 32: one warp per row (every lane of the warp has the same row,
// so the full-mask shuffles are convergent). TPR = kThreads: the whole block, through shared memory.
template <int TPR, typename A, typename Op>
__device__ __forceinline__ A group_reduce(A v, Op op, A* smem) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, o));
  if constexpr (TPR > 32) {
    const int warp = threadIdx.x / 32;
    __syncthreads();  // smem may still be read by the previous reduction
    if (threadIdx.x % 32 == 0) smem[warp] = v;
    __syncthreads();
    v = smem[0];
#pragma unroll
    for (int w = 1; w < TPR / 32; ++w) v = op(v, smem[w]);
  }
  return v;
}

struct RowState {
  int64_t b, t, y;
  bool masked, bad;
};

// Reads only target[n] and valid_len[b]; y is clamped into [0, V) so no later load can go out of bounds.
__device__ __forceinline__ RowState row_state(const CeRows& p, int64_t n) {
  RowState s;
  s.b = n / p.T;
  s.t = n - s.b * p.T;
  s.y = p.target[n];
  s.masked = s.y == p.ignore_index;
  s.bad = false;
  if (p.valid_len != nullptr) {
    const int64_t vl = p.valid_len[s.b];
    s.bad = vl < 0 || vl > p.T;
    s.masked = s.masked || s.t >= vl;
  }
  s.bad = s.bad || (!s.masked && (s.y < 0 || s.y >= p.V));
  s.y = s.y < 0 ? 0 : (s.y >= p.V ? p.V - 1 : s.y);
  return s;
}

template <typename T, typename A, int TPR, int VEC>
__global__ void __launch_bounds__(kThreads) masked_ce_forward_kernel(const CeForwardParams prm) {
  __shared__ A smem[kThreads / 32];
  const CeRows& p = prm.rows;
  const int64_t n = static_cast<int64_t>(blockIdx.x) * (kThreads / TPR) + threadIdx.x / TPR;
  const int lane = threadIdx.x % TPR;
  if (n >= p.R) return;  // uniform per row group (a warp, or the whole block with one row)
  const RowState st = row_state(p, n);
  A* loss = static_cast<A*>(prm.loss);
  A* lse_out = static_cast<A*>(prm.lse);
  if (st.masked || st.bad) {  // uniform per row group
    if (lane == 0) {
      loss[n] = st.bad ? quiet_nan<A>() : A(0);
      lse_out[n] = st.bad ? quiet_nan<A>() : A(0);
    }
    return;
  }
  const T* x = static_cast<const T*>(p.logits) + st.b * p.stride_b + st.t * p.stride_t;
  const int64_t V = p.V;
  const bool smooth = p.label_smoothing != 0.0;
  A m = neg_inf<A>(), s = A(0), sx = A(0);
  for (int64_t j = static_cast<int64_t>(lane) * VEC; j < V; j += static_cast<int64_t>(TPR) * VEC) {
    A v[VEC];
    if constexpr (VEC > 1) {  // V % VEC == 0 and the row is 16-byte aligned (checked at launch)
      const Pack<T, VEC> pk = *reinterpret_cast<const Pack<T, VEC>*>(x + j);
#pragma unroll
      for (int k = 0; k < VEC; ++k) v[k] = to_acc(pk.v[k]);
    } else {
      v[0] = to_acc(x[j]);
    }
    A pm = v[0];
#pragma unroll
    for (int k = 1; k < VEC; ++k) pm = v[k] > pm ? v[k] : pm;
    const A m_new = pm > m ? pm : m;
    if (m_new != neg_inf<A>()) {
      A add = A(0);
#pragma unroll
      for (int k = 0; k < VEC; ++k) add += exp_acc(v[k] - m_new);
      s = s * (m == neg_inf<A>() ? A(0) : exp_acc(m - m_new)) + add;
      m = m_new;
    }
    if (smooth) {
#pragma unroll
      for (int k = 0; k < VEC; ++k) sx += v[k];
    }
  }
  const A M = group_reduce<TPR>(m, MaxOp{}, smem);
  const A mine = (m == neg_inf<A>()) ? A(0) : s * exp_acc(m - M);
  const A S = group_reduce<TPR>(mine, SumOp{}, smem);
  const A SX = smooth ? group_reduce<TPR>(sx, SumOp{}, smem) : A(0);
  if (lane == 0) {
    const A lse = M + log_acc(S);
    A l = lse - to_acc(x[st.y]);
    if (smooth) {
      const A eps = static_cast<A>(p.label_smoothing);
      l = (A(1) - eps) * l + eps * (lse - SX / static_cast<A>(V));
    }
    loss[n] = l;
    lse_out[n] = lse;
  }
}

template <typename T, typename A, int TPR, int VEC>
__global__ void __launch_bounds__(kThreads) masked_ce_backward_kernel(const CeBackwardParams prm) {
  const CeRows& p = prm.rows;
  const int64_t n = static_cast<int64_t>(blockIdx.x) * (kThreads / TPR) + threadIdx.x / TPR;
  const int lane = threadIdx.x % TPR;
  if (n >= p.R) return;
  const RowState st = row_state(p, n);
  const int64_t V = p.V;
  T* out = static_cast<T*>(prm.grad_logits) + n * V;
  const int64_t step = static_cast<int64_t>(TPR) * VEC;
  if (st.masked || st.bad) {  // a zero (NaN for bad input) row, no logits read
    const T fill = from_acc<T>(st.bad ? quiet_nan<A>() : A(0));
    for (int64_t j = static_cast<int64_t>(lane) * VEC; j < V; j += step) {
#pragma unroll
      for (int k = 0; k < VEC; ++k) out[j + k] = fill;
    }
    return;
  }
  const T* x = static_cast<const T*>(p.logits) + st.b * p.stride_b + st.t * p.stride_t;
  const A g = static_cast<const A*>(prm.grad_loss)[st.b * prm.grad_stride_b + st.t * prm.grad_stride_t];
  const A lse = static_cast<const A*>(prm.lse)[n];
  const A eps = static_cast<A>(p.label_smoothing);
  const A off = eps / static_cast<A>(V);
  const A hit = A(1) - eps;
  // d x_j = g * (softmax_j - eps / V - (1 - eps) [j == y]): the true-class term in acc precision, rounded once.
  for (int64_t j = static_cast<int64_t>(lane) * VEC; j < V; j += step) {
    if constexpr (VEC > 1) {
      const Pack<T, VEC> pk = *reinterpret_cast<const Pack<T, VEC>*>(x + j);
      Pack<T, VEC> o;
#pragma unroll
      for (int k = 0; k < VEC; ++k) {
        const A d = g * (exp_acc(to_acc(pk.v[k]) - lse) - off - (j + k == st.y ? hit : A(0)));
        o.v[k] = from_acc<T>(d);
      }
      *reinterpret_cast<Pack<T, VEC>*>(out + j) = o;
    } else {
      const A d = g * (exp_acc(to_acc(x[j]) - lse) - off - (j == st.y ? hit : A(0)));
      out[j] = from_acc<T>(d);
    }
  }
}

template <typename T>
bool can_vectorize(const CeRows& p, const void* out, int vec) {
  const auto aligned = [](const void* q) { return reinterpret_cast<uintptr_t>(q) % 16 == 0; };
  return vec > 1 && p.V % vec == 0 && p.stride_t % vec == 0 && p.stride_b % vec == 0 && aligned(p.logits) &&
         (out == nullptr || aligned(out));
}

template <typename T, typename A, template <typename, typename, int, int> class K, typename Params>
cudaError_t launch_typed(const Params& prm, const void* out, cudaStream_t stream) {
  const CeRows& p = prm.rows;
  if (p.R == 0) return cudaSuccess;
  constexpr int kVec = 16 / sizeof(T);
  const bool vec = can_vectorize<T>(p, out, kVec);
  const bool warp_per_row = p.V <= 1024;
  const int64_t rows_per_block = warp_per_row ? kThreads / 32 : 1;
  const dim3 grid(static_cast<unsigned>((p.R + rows_per_block - 1) / rows_per_block));
  if (warp_per_row) {
    if (vec) K<T, A, 32, kVec>::launch(grid, stream, prm);
    else K<T, A, 32, 1>::launch(grid, stream, prm);
  } else {
    if (vec) K<T, A, kThreads, kVec>::launch(grid, stream, prm);
    else K<T, A, kThreads, 1>::launch(grid, stream, prm);
  }
  return cudaGetLastError();
}

template <typename T, typename A, int TPR, int VEC>
struct ForwardK {
  static void launch(dim3 grid, cudaStream_t stream, const CeForwardParams& prm) {
    masked_ce_forward_kernel<T, A, TPR, VEC><<<grid, kThreads, 0, stream>>>(prm);
  }
};
template <typename T, typename A, int TPR, int VEC>
struct BackwardK {
  static void launch(dim3 grid, cudaStream_t stream, const CeBackwardParams& prm) {
    masked_ce_backward_kernel<T, A, TPR, VEC><<<grid, kThreads, 0, stream>>>(prm);
  }
};

}  // namespace

cudaError_t masked_ce_forward_launch(const CeForwardParams& p, cudaStream_t stream) {
  switch (p.rows.dtype) {
    case Dtype::Float32: return launch_typed<float, float, ForwardK>(p, nullptr, stream);
    case Dtype::Float64: return launch_typed<double, double, ForwardK>(p, nullptr, stream);
    case Dtype::Float16: return launch_typed<__half, float, ForwardK>(p, nullptr, stream);
    case Dtype::BFloat16: return launch_typed<__nv_bfloat16, float, ForwardK>(p, nullptr, stream);
  }
  return cudaErrorInvalidValue;
}

cudaError_t masked_ce_backward_launch(const CeBackwardParams& p, cudaStream_t stream) {
  switch (p.rows.dtype) {
    case Dtype::Float32: return launch_typed<float, float, BackwardK>(p, p.grad_logits, stream);
    case Dtype::Float64: return launch_typed<double, double, BackwardK>(p, p.grad_logits, stream);
    case Dtype::Float16: return launch_typed<__half, float, BackwardK>(p, p.grad_logits, stream);
    case Dtype::BFloat16: return launch_typed<__nv_bfloat16, float, BackwardK>(p, p.grad_logits, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace s2s_fused::cuda
