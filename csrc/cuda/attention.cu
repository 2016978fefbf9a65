// CUDA attention (additive, and dot: AttnRows::dot), forward and backward (formulas and layout: csrc/attention.h).
// No torch headers: the binding (attention_binding.cpp) checks the tensors, runs the query projection and
// weight-gradient GEMMs, and passes raw pointers and the stream.
//
// One block of kThreads per query row n, over source row b = n / R; the row's S scores (and in backward their
// gradients) live in dynamic shared memory. Backward writes the row's own slice of grad_keys / grad_values (of
// type G: T for R = 1, the accumulate type for R > 1, summed over the R rows by the binding), so no two blocks
// write the same memory and no atomics are needed. Scores: one warp per position, lanes over H (coalesced), a
// warp reduction. Context and grad_values: threads over Dv (coalesced). grad_keys and the row's d qp / d v
// shares: threads over H, looping over positions.
// Positions s >= valid_len are never read. A valid_len outside [0, S] cannot raise without a host sync: the row's
// outputs are NaN instead, and nothing is read out of bounds.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cmath>
#include <cstdint>
#include <type_traits>

#include "cuda/acc.cuh"
#include "cuda/attention_cuda.h"

namespace s2s_fused::cuda {
namespace {

using cpu::AttnBackwardParams;
using cpu::AttnForwardParams;
using cpu::AttnRows;
using s2s_fused::Dtype;

constexpr int kThreads = 128;
constexpr int kWarps = kThreads / 32;

__device__ __forceinline__ float tanh_acc(float v) { return tanhf(v); }
__device__ __forceinline__ double tanh_acc(double v) { return tanh(v); }
__device__ __forceinline__ float exp_acc(float v) { return __expf(v); }
__device__ __forceinline__ double exp_acc(double v) { return exp(v); }

// An accumulate-type value stored as G: rounded once to the element type T, or kept in A (G = A).
template <typename G, typename A>
__device__ __forceinline__ G store_as(A v) {
  if constexpr (std::is_same_v<G, A>) {
    return v;
  } else {
    return from_acc<G>(v);
  }
}

template <typename A>
__device__ __forceinline__ A warp_sum(A v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

template <typename A>
__device__ __forceinline__ A warp_max(A v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmax(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Block-wide reduction (every thread gets the result); `red` holds kWarps values.
template <bool kMax, typename A>
__device__ A block_reduce(A v, A* red) {
  v = kMax ? warp_max(v) : warp_sum(v);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  __syncthreads();  // red may still be read by a previous reduction
  if (lane == 0) red[warp] = v;
  __syncthreads();
  A r = red[0];
  for (int w = 1; w < kWarps; ++w) r = kMax ? fmax(r, red[w]) : r + red[w];
  return r;
}

// Query row n's attention weights over source row b into w[0, S): softmax of the scores over s < L, 0 beyond, 1/S
// everywhere for L = 0.
template <typename T, typename A>
__device__ void row_weights(const AttnRows& p, int64_t n, int64_t b, int64_t L, A* w, A* red) {
  const int64_t S = p.S, H = p.H;
  const T* keys = static_cast<const T*>(p.keys) + b * S * H;
  const A* qp = static_cast<const A*>(p.qp) + n * H;
  const T* v = static_cast<const T*>(p.v);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  for (int64_t s = warp; s < L; s += kWarps) {
    A acc = 0;
    if (p.dot) {
      for (int64_t h = lane; h < H; h += 32) acc += qp[h] * to_acc(keys[s * H + h]);
    } else {
      for (int64_t h = lane; h < H; h += 32) acc += to_acc(v[h]) * tanh_acc(qp[h] + to_acc(keys[s * H + h]));
    }
    acc = warp_sum(acc);
    if (lane == 0) w[s] = acc;
  }
  __syncthreads();
  if (L == 0) {
    for (int64_t s = threadIdx.x; s < S; s += kThreads) w[s] = A(1) / A(S);
    __syncthreads();
    return;
  }
  A m = -INFINITY;
  for (int64_t s = threadIdx.x; s < L; s += kThreads) m = fmax(m, w[s]);
  m = block_reduce<true>(m, red);
  A sum = 0;
  for (int64_t s = threadIdx.x; s < L; s += kThreads) {
    const A e = exp_acc(w[s] - m);
    w[s] = e;
    sum += e;
  }
  sum = block_reduce<false>(sum, red);
  const A inv = A(1) / sum;
  for (int64_t s = threadIdx.x; s < S; s += kThreads) w[s] = s < L ? w[s] * inv : A(0);
  __syncthreads();
}

template <typename T, typename A>
__global__ void __launch_bounds__(kThreads) attention_forward_kernel(const AttnForwardParams prm) {
  extern __shared__ unsigned char smem_raw[];
  A* red = reinterpret_cast<A*>(smem_raw);
  A* w = red + kWarps;
  const AttnRows& p = prm.rows;
  const int64_t n = blockIdx.x, b = n / p.R, S = p.S, Dv = p.Dv;
  int64_t L = p.valid_len[b];
  const bool bad = L < 0 || L > S;
  if (bad) L = 0;
  row_weights<T, A>(p, n, b, L, w, red);
  const A nan_if_bad = bad ? A(NAN) : A(0);
  T* wout = static_cast<T*>(prm.weights) + n * S;
  for (int64_t s = threadIdx.x; s < S; s += kThreads) wout[s] = from_acc<T>(w[s] + nan_if_bad);
  const int64_t used = L == 0 ? S : L;
  const T* values = static_cast<const T*>(p.values) + b * S * Dv;
  T* ctx = static_cast<T*>(prm.context) + n * Dv;
  for (int64_t d = threadIdx.x; d < Dv; d += kThreads) {
    A acc = 0;
    for (int64_t s = 0; s < used; ++s) acc += w[s] * to_acc(values[s * Dv + d]);
    ctx[d] = from_acc<T>(acc + nan_if_bad);
  }
}

// G: the type of grad_keys / grad_values (T for R = 1, A for R > 1).
template <typename T, typename A, typename G>
__global__ void __launch_bounds__(kThreads) attention_backward_kernel(const AttnBackwardParams prm) {
  extern __shared__ unsigned char smem_raw[];
  A* red = reinterpret_cast<A*>(smem_raw);
  A* w = red + kWarps;
  A* ds = w + prm.rows.S;
  const AttnRows& p = prm.rows;
  const int64_t n = blockIdx.x, b = n / p.R, S = p.S, H = p.H, Dv = p.Dv;
  int64_t L = p.valid_len[b];
  const bool bad = L < 0 || L > S;
  if (bad) L = 0;
  const A nan_if_bad = bad ? A(NAN) : A(0);
  row_weights<T, A>(p, n, b, L, w, red);
  const T* g = static_cast<const T*>(prm.grad_context) + n * Dv;
  const T* gw = prm.grad_weights ? static_cast<const T*>(prm.grad_weights) + n * S : nullptr;
  const T* values = static_cast<const T*>(p.values) + b * S * Dv;
  // d loss / d weights_s = g . values_s (+ grad_weights_s), s < L
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  for (int64_t s = warp; s < L; s += kWarps) {
    A acc = 0;
    for (int64_t d = lane; d < Dv; d += 32) acc += to_acc(g[d]) * to_acc(values[s * Dv + d]);
    acc = warp_sum(acc);
    if (lane == 0) ds[s] = acc + (gw ? to_acc(gw[s]) : A(0));
  }
  // grad_values_s = weights_s g (0 past valid_len; g / S for an empty row)
  G* gv = static_cast<G*>(prm.grad_values) + n * S * Dv;
  for (int64_t i = threadIdx.x; i < S * Dv; i += kThreads) {
    gv[i] = store_as<G>(w[i / Dv] * to_acc(g[i % Dv]) + nan_if_bad);
  }
  __syncthreads();
  A part = 0;
  for (int64_t s = threadIdx.x; s < L; s += kThreads) part += w[s] * ds[s];
  const A sigma = block_reduce<false>(part, red);
  for (int64_t s = threadIdx.x; s < L; s += kThreads) ds[s] = w[s] * (ds[s] - sigma);  // d loss / d score_s
  __syncthreads();
  const T* keys = static_cast<const T*>(p.keys) + b * S * H;
  const A* qp = static_cast<const A*>(p.qp) + n * H;
  const T* v = static_cast<const T*>(p.v);
  G* gk = static_cast<G*>(prm.grad_keys) + n * S * H;
  A* gqp = static_cast<A*>(prm.grad_qp) + n * H;
  if (p.dot) {
    // d loss / d k_s = ds_s qp; d loss / d qp = sum_s ds_s k_s
    for (int64_t h = threadIdx.x; h < H; h += kThreads) {
      const A q = qp[h];
      A aq = 0;
      for (int64_t s = 0; s < L; ++s) {
        gk[s * H + h] = store_as<G>(ds[s] * q + nan_if_bad);
        aq += ds[s] * to_acc(keys[s * H + h]);
      }
      for (int64_t s = L; s < S; ++s) gk[s * H + h] = store_as<G>(nan_if_bad);
      gqp[h] = aq + nan_if_bad;
    }
    return;
  }
  A* gvr = static_cast<A*>(prm.grad_v_rows) + n * H;
  for (int64_t h = threadIdx.x; h < H; h += kThreads) {
    const A vh = to_acc(v[h]), q = qp[h];
    A aq = 0, av = 0;
    for (int64_t s = 0; s < L; ++s) {
      const A t = tanh_acc(q + to_acc(keys[s * H + h]));
      const A dpre = ds[s] * vh * (A(1) - t * t);
      gk[s * H + h] = store_as<G>(dpre + nan_if_bad);
      aq += dpre;
      av += ds[s] * t;
    }
    for (int64_t s = L; s < S; ++s) gk[s * H + h] = store_as<G>(nan_if_bad);
    gqp[h] = aq + nan_if_bad;
    gvr[h] = av + nan_if_bad;
  }
}

template <typename T, typename A>
cudaError_t launch_forward(const AttnForwardParams& p, cudaStream_t stream) {
  const size_t smem = sizeof(A) * (kWarps + p.rows.S);
  if (smem > 48 * 1024) {
    const cudaError_t e = cudaFuncSetAttribute(attention_forward_kernel<T, A>,
                                               cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
    if (e != cudaSuccess) return e;
  }
  attention_forward_kernel<T, A><<<static_cast<unsigned>(p.rows.N), kThreads, smem, stream>>>(p);
  return cudaGetLastError();
}

template <typename T, typename A, typename G>
cudaError_t launch_backward_as(const AttnBackwardParams& p, cudaStream_t stream) {
  const size_t smem = sizeof(A) * (kWarps + 2 * p.rows.S);
  if (smem > 48 * 1024) {
    const cudaError_t e = cudaFuncSetAttribute(attention_backward_kernel<T, A, G>,
                                               cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
    if (e != cudaSuccess) return e;
  }
  attention_backward_kernel<T, A, G><<<static_cast<unsigned>(p.rows.N), kThreads, smem, stream>>>(p);
  return cudaGetLastError();
}

template <typename T, typename A>
cudaError_t launch_backward(const AttnBackwardParams& p, cudaStream_t stream) {
  return p.rows.R == 1 ? launch_backward_as<T, A, T>(p, stream) : launch_backward_as<T, A, A>(p, stream);
}

}  // namespace

cudaError_t attention_forward_launch(const AttnForwardParams& p, cudaStream_t stream) {
  if (p.rows.N == 0) return cudaSuccess;
  switch (p.rows.dtype) {
    case Dtype::Float32: return launch_forward<float, float>(p, stream);
    case Dtype::Float64: return launch_forward<double, double>(p, stream);
    case Dtype::Float16: return launch_forward<__half, float>(p, stream);
    case Dtype::BFloat16: return launch_forward<__nv_bfloat16, float>(p, stream);
  }
  return cudaErrorInvalidValue;
}

cudaError_t attention_backward_launch(const AttnBackwardParams& p, cudaStream_t stream) {
  if (p.rows.N == 0) return cudaSuccess;
  switch (p.rows.dtype) {
    case Dtype::Float32: return launch_backward<float, float>(p, stream);
    case Dtype::Float64: return launch_backward<double, double>(p, stream);
    case Dtype::Float16: return launch_backward<__half, float>(p, stream);
    case Dtype::BFloat16: return launch_backward<__nv_bfloat16, float>(p, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace s2s_fused::cuda
