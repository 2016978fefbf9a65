// CUDA pointwise LSTM/GRU kernels and the fused one-kernel step (declarations and contracts in
// rnn_pointwise.cuh / rnn_pointwise.h). No torch headers: compiled by plain nvcc in CI.
//
// Pointwise kernels: one thread per (row, hidden unit), all gates of that unit, so every value is read and
// written once; x is the fast grid dimension over H (coalesced along a row), y the batch row. Math in float
// (double for double), rounded once on store. Offsets are 64-bit.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "cuda/rnn_pointwise.cuh"

namespace s2s_fused::cuda {
namespace {

template <typename T> struct Acc { using type = float; };
template <> struct Acc<double> { using type = double; };

template <typename T> __device__ __forceinline__ typename Acc<T>::type to_acc(T v) { return static_cast<typename Acc<T>::type>(v); }
template <> __device__ __forceinline__ float to_acc<__half>(__half v) { return __half2float(v); }
template <> __device__ __forceinline__ float to_acc<__nv_bfloat16>(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T> __device__ __forceinline__ T from_acc(typename Acc<T>::type v) { return static_cast<T>(v); }
template <> __device__ __forceinline__ __half from_acc<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

// Element (b, j) of an optional row-major view; nullptr reads as zero.
template <typename T>
__device__ __forceinline__ typename Acc<T>::type ld(const CMat& m, int64_t b, int64_t j) {
  return m.data ? to_acc(static_cast<const T*>(m.data)[b * m.ld + j]) : typename Acc<T>::type(0);
}
template <typename T>
__device__ __forceinline__ typename Acc<T>::type ld_vec(const void* v, int64_t j) {
  return v ? to_acc(static_cast<const T*>(v)[j]) : typename Acc<T>::type(0);
}
template <typename T>
__device__ __forceinline__ void st(const Mat& m, int64_t b, int64_t j, typename Acc<T>::type v) {
  if (m.data) static_cast<T*>(m.data)[b * m.ld + j] = from_acc<T>(v);
}
__device__ __forceinline__ CMat as_const(const Mat& m) { return {m.data, m.ld}; }

// This thread's hidden unit: x runs over H (coalesced along a row), y over batch rows.
__device__ __forceinline__ int64_t unit_index() { return blockIdx.x * int64_t(blockDim.x) + threadIdx.x; }

template <typename A> __device__ __forceinline__ A sigmoid(A x) { return A(1) / (A(1) + exp(-x)); }

template <typename T>
__device__ __forceinline__ void lstm_forward_body(const LstmForwardParams& p, int64_t B) {
  using A = typename Acc<T>::type;
  const int64_t H = p.H, j = unit_index(), b = blockIdx.y;
  if (j >= H || b >= B) return;
  if (p.active && !p.active[b]) {
    st<T>(p.h1, b, j, ld<T>(p.hx, b, j));
    st<T>(p.c1, b, j, ld<T>(p.cx, b, j));
    st<T>(p.out, b, j, A(0));
    return;
  }
  A pre[4];
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    const int64_t col = k * H + j;
    pre[k] = ld<T>(p.g1, b, col) + ld<T>(p.g2, b, col) + ld_vec<T>(p.b1, col) + ld_vec<T>(p.b2, col);
  }
  const A i = sigmoid(pre[0]), f = sigmoid(pre[1]), g = tanh(pre[2]), o = sigmoid(pre[3]);
  const A c = f * ld<T>(p.cx, b, j) + i * g;
  const A h = o * tanh(c);
  st<T>(p.ws, b, j, i);
  st<T>(p.ws, b, H + j, f);
  st<T>(p.ws, b, 2 * H + j, g);
  st<T>(p.ws, b, 3 * H + j, o);
  st<T>(p.c1, b, j, c);
  st<T>(p.h1, b, j, h);
  st<T>(p.out, b, j, h);
}

template <typename T>
__device__ __forceinline__ void lstm_backward_body(const LstmBackwardParams& p, int64_t B) {
  using A = typename Acc<T>::type;
  const int64_t H = p.H, j = unit_index(), b = blockIdx.y;
  if (j >= H || b >= B) return;
  const A dh = ld<T>(p.dh1, b, j) + ld<T>(p.dh2, b, j);
  if (p.active && !p.active[b]) {
    st<T>(p.dhx, b, j, dh);
    st<T>(p.dcx, b, j, ld<T>(p.dc1, b, j));
#pragma unroll
    for (int k = 0; k < 4; ++k) st<T>(p.dgates, b, k * H + j, A(0));
    return;
  }
  const A i = ld<T>(p.ws, b, j), f = ld<T>(p.ws, b, H + j), g = ld<T>(p.ws, b, 2 * H + j),
          o = ld<T>(p.ws, b, 3 * H + j);
  const A tc = tanh(ld<T>(p.c1, b, j));
  const A dc = ld<T>(p.dc1, b, j) + dh * o * (A(1) - tc * tc);
  st<T>(p.dgates, b, j, dc * g * i * (A(1) - i));
  st<T>(p.dgates, b, H + j, dc * ld<T>(p.cx, b, j) * f * (A(1) - f));
  st<T>(p.dgates, b, 2 * H + j, dc * i * (A(1) - g * g));
  st<T>(p.dgates, b, 3 * H + j, dh * tc * o * (A(1) - o));
  st<T>(p.dcx, b, j, dc * f);
}

// reset_after: the whole cell; reset_before: stage 1 (r, z, rh = r * hx).
template <typename T>
__device__ __forceinline__ void gru_forward_body(const GruForwardParams& p, int64_t B) {
  using A = typename Acc<T>::type;
  const int64_t H = p.H, j = unit_index(), b = blockIdx.y;
  if (j >= H || b >= B) return;
  const A h = ld<T>(p.hx, b, j);
  if (p.active && !p.active[b]) {
    if (p.reset_after) {
      st<T>(p.h1, b, j, h);
      st<T>(p.out, b, j, A(0));
    }
    return;
  }
  const A r = sigmoid(ld<T>(p.gi, b, j) + ld<T>(p.gh, b, j) + ld_vec<T>(p.b_ih, j) + ld_vec<T>(p.b_hh, j));
  const A z = sigmoid(ld<T>(p.gi, b, H + j) + ld<T>(p.gh, b, H + j) + ld_vec<T>(p.b_ih, H + j) +
                      ld_vec<T>(p.b_hh, H + j));
  st<T>(p.ws, b, j, r);
  st<T>(p.ws, b, H + j, z);
  if (p.reset_after) {
    const A hn = ld<T>(p.gh, b, 2 * H + j) + ld_vec<T>(p.b_hh, 2 * H + j);
    const A n = tanh(ld<T>(p.gi, b, 2 * H + j) + ld_vec<T>(p.b_ih, 2 * H + j) + r * hn);
    const A hnew = n + z * (h - n);
    st<T>(p.ws, b, 2 * H + j, n);
    st<T>(p.ws, b, 3 * H + j, hn);
    st<T>(p.h1, b, j, hnew);
    st<T>(p.out, b, j, hnew);
  } else {
    st<T>(p.rh, b, j, r * h);
  }
}

template <typename T>
__device__ __forceinline__ void gru_forward_stage2_body(const GruForwardParams& p, int64_t B) {
  using A = typename Acc<T>::type;
  const int64_t H = p.H, j = unit_index(), b = blockIdx.y;
  if (j >= H || b >= B) return;
  const A h = ld<T>(p.hx, b, j);
  if (p.active && !p.active[b]) {
    st<T>(p.h1, b, j, h);
    st<T>(p.out, b, j, A(0));
    return;
  }
  const A n = tanh(ld<T>(p.gi, b, 2 * H + j) + ld<T>(p.ghn, b, j) + ld_vec<T>(p.b_ih, 2 * H + j) +
                   ld_vec<T>(p.b_hh, 2 * H + j));
  const A z = ld<T>(as_const(p.ws), b, H + j);
  const A hnew = n + z * (h - n);
  st<T>(p.ws, b, 2 * H + j, n);
  st<T>(p.h1, b, j, hnew);
  st<T>(p.out, b, j, hnew);
}

template <typename T>
__device__ __forceinline__ void gru_backward_body(const GruBackwardParams& p, int64_t B) {
  using A = typename Acc<T>::type;
  const int64_t H = p.H, j = unit_index(), b = blockIdx.y;
  if (j >= H || b >= B) return;
  const A dh = ld<T>(p.dh1, b, j) + ld<T>(p.dh2, b, j);
  if (p.active && !p.active[b]) {
    st<T>(p.dhx, b, j, dh);
#pragma unroll
    for (int k = 0; k < 3; ++k) {
      st<T>(p.dgi, b, k * H + j, A(0));
      st<T>(p.dgh, b, k * H + j, A(0));
    }
    return;
  }
  const A r = ld<T>(p.ws, b, j), z = ld<T>(p.ws, b, H + j), n = ld<T>(p.ws, b, 2 * H + j);
  const A h = ld<T>(p.hx, b, j);
  const A dn = dh * (A(1) - z) * (A(1) - n * n);
  const A dz = dh * (h - n) * z * (A(1) - z);
  st<T>(p.dgi, b, H + j, dz);
  st<T>(p.dgi, b, 2 * H + j, dn);
  if (p.reset_after) {
    const A hn = ld<T>(p.ws, b, 3 * H + j);
    const A dr = dn * hn * r * (A(1) - r);
    st<T>(p.dgi, b, j, dr);
    st<T>(p.dgh, b, j, dr);
    st<T>(p.dgh, b, H + j, dz);
    st<T>(p.dgh, b, 2 * H + j, dn * r);
    st<T>(p.dhx, b, j, dh * z);
  }
}

template <typename T>
__device__ __forceinline__ void gru_backward_stage2_body(const GruBackwardParams& p, int64_t B) {
  using A = typename Acc<T>::type;
  const int64_t H = p.H, j = unit_index(), b = blockIdx.y;
  if (j >= H || b >= B) return;
  if (p.active && !p.active[b]) {
    st<T>(p.rh, b, j, A(0));
    return;
  }
  const A dh = ld<T>(p.dh1, b, j) + ld<T>(p.dh2, b, j);
  const A r = ld<T>(p.ws, b, j), z = ld<T>(p.ws, b, H + j), h = ld<T>(p.hx, b, j);
  const A drh = ld<T>(p.drh, b, j);
  st<T>(p.dgi, b, j, drh * h * r * (A(1) - r));
  st<T>(p.dhx, b, j, dh * z + drh * r);
  st<T>(p.rh, b, j, r * h);
}

constexpr int kThreads = 128;

// The kernels: one direction (the cells and the single-direction layers), or both directions of a bidirectional
// layer in one launch (gridDim.z = 2, block z runs direction z with its own parameters). The z branch is
// uniform per block and keeps both parameter sets in the kernel's parameter space (no local copy).
template <typename P>
struct ParamPair {
  P p0, p1;
};

#define S2S_POINTWISE_KERNELS(name, P)                                            \
  template <typename T>                                                           \
  __global__ void name##_kernel(P p, int64_t B) {                                 \
    name##_body<T>(p, B);                                                         \
  }                                                                               \
  template <typename T>                                                           \
  __global__ void name##_bidir_kernel(ParamPair<P> pp, int64_t B) {               \
    if (blockIdx.z == 0) name##_body<T>(pp.p0, B); else name##_body<T>(pp.p1, B); \
  }

S2S_POINTWISE_KERNELS(lstm_forward, LstmForwardParams)
S2S_POINTWISE_KERNELS(lstm_backward, LstmBackwardParams)
S2S_POINTWISE_KERNELS(gru_forward, GruForwardParams)
S2S_POINTWISE_KERNELS(gru_forward_stage2, GruForwardParams)
S2S_POINTWISE_KERNELS(gru_backward, GruBackwardParams)
S2S_POINTWISE_KERNELS(gru_backward_stage2, GruBackwardParams)

// `kernel` names the kernel template, `args` its arguments; nz = 1 (one direction) or 2 (bidir).
#define S2S_POINTWISE_DISPATCH(kernel, args)                                                             \
  switch (dtype) {                                                                                       \
    case Dtype::Float32: kernel<float><<<grid, kThreads, 0, stream>>> args; break;                       \
    case Dtype::Float64: kernel<double><<<grid, kThreads, 0, stream>>> args; break;                      \
    case Dtype::Float16: kernel<__half><<<grid, kThreads, 0, stream>>> args; break;                      \
    case Dtype::BFloat16: kernel<__nv_bfloat16><<<grid, kThreads, 0, stream>>> args; break;              \
  }

inline dim3 pointwise_grid(int64_t H, int64_t B, unsigned nz) {
  return dim3(static_cast<unsigned>((H + kThreads - 1) / kThreads), static_cast<unsigned>(B), nz);
}

#define S2S_POINTWISE_LAUNCH(name)                                                               \
  template <typename P>                                                                          \
  cudaError_t launch_##name(const P& p, int64_t B, cudaStream_t stream) {                        \
    if (B == 0 || p.H == 0) return cudaSuccess;                                                  \
    if (B > 65535) return cudaErrorInvalidConfiguration;                                         \
    const dim3 grid = pointwise_grid(p.H, B, 1);                                                 \
    const Dtype dtype = p.dtype;                                                                 \
    S2S_POINTWISE_DISPATCH(name##_kernel, (p, B))                                                \
    return cudaGetLastError();                                                                   \
  }                                                                                              \
  template <typename P>                                                                          \
  cudaError_t launch_##name##_bidir(const P& p0, const P& p1, int64_t B, cudaStream_t stream) {  \
    if (B == 0 || p0.H == 0) return cudaSuccess;                                                 \
    if (B > 65535 || p1.H != p0.H || p1.dtype != p0.dtype) return cudaErrorInvalidConfiguration; \
    const dim3 grid = pointwise_grid(p0.H, B, 2);                                                \
    const Dtype dtype = p0.dtype;                                                                \
    const ParamPair<P> pp{p0, p1};                                                               \
    S2S_POINTWISE_DISPATCH(name##_bidir_kernel, (pp, B))                                         \
    return cudaGetLastError();                                                                   \
  }

S2S_POINTWISE_LAUNCH(lstm_forward)
S2S_POINTWISE_LAUNCH(lstm_backward)
S2S_POINTWISE_LAUNCH(gru_forward)
S2S_POINTWISE_LAUNCH(gru_forward_stage2)
S2S_POINTWISE_LAUNCH(gru_backward)
S2S_POINTWISE_LAUNCH(gru_backward_stage2)

// ------------------------------------------------------------------------------------------- fused step
// One warp per hidden unit j: it owns the G weight rows {g*H + j} of W_ih and W_hh and computes their dot
// products with up to kMaxRows batch rows; lanes stride over k so each weight row is read once, coalesced.
// After a butterfly reduction every lane holds all G x rows sums, and lane b applies the cell update of batch
// row b for unit j in registers. Blocks in y cover further batch tiles (each re-reads the weights from L2).
constexpr int kWarpsPerBlock = 4;
constexpr int kMaxRows = 8;

// Sum over k of in[b, k] * w[g*H + j, k] for both sources (x with W_ih, K = I; h with W_hh, K = H), into
// acc[slot(src, g)][r] for the rows of this tile, then reduced across the warp. SLOTS = 4: LSTM adds both
// sources into the gate's slot; GRU (reset_after) keeps W_hn h apart in slot 3, as r multiplies it alone.
template <typename T, bool kGru>
__device__ __forceinline__ void fused_step_dots(const FusedStepParams& p, int64_t j, int64_t b0, int rows,
                                                int lane, float (&acc)[4][kMaxRows]) {
  constexpr int G = kGru ? 3 : 4;
#pragma unroll
  for (int g = 0; g < 4; ++g)
#pragma unroll
    for (int r = 0; r < kMaxRows; ++r) acc[g][r] = 0.f;
#pragma unroll
  for (int src = 0; src < 2; ++src) {
    const int64_t K = src == 0 ? p.I : p.H;
    const T* in = static_cast<const T*>(src == 0 ? p.x : p.hx);
    const T* w = static_cast<const T*>(src == 0 ? p.w_ih : p.w_hh);
    for (int64_t k = lane; k < K; k += 32) {
      float xv[kMaxRows];
#pragma unroll
      for (int r = 0; r < kMaxRows; ++r) xv[r] = r < rows ? to_acc(in[(b0 + r) * K + k]) : 0.f;
#pragma unroll
      for (int g = 0; g < G; ++g) {
        const float wv = to_acc(w[(g * p.H + j) * K + k]);
        const int slot = (kGru && src == 1 && g == 2) ? 3 : g;
#pragma unroll
        for (int r = 0; r < kMaxRows; ++r) acc[slot][r] = fmaf(wv, xv[r], acc[slot][r]);
      }
    }
  }
#pragma unroll
  for (int g = 0; g < 4; ++g)
#pragma unroll
    for (int r = 0; r < kMaxRows; ++r)
#pragma unroll
      for (int off = 16; off > 0; off >>= 1) acc[g][r] += __shfl_xor_sync(0xffffffffu, acc[g][r], off);
}

// This lane's column of the reduced sums (registers are indexed statically, so select with a loop).
__device__ __forceinline__ void lane_sums(const float (&acc)[4][kMaxRows], int lane, float (&sums)[4]) {
#pragma unroll
  for (int g = 0; g < 4; ++g) {
    sums[g] = 0.f;
#pragma unroll
    for (int r = 0; r < kMaxRows; ++r)
      if (r == lane) sums[g] = acc[g][r];
  }
}

template <typename T>
__device__ __forceinline__ float bias_at(const void* v, int64_t col) {
  return v ? to_acc(static_cast<const T*>(v)[col]) : 0.f;
}

template <typename T>
__global__ void lstm_fused_step_kernel(FusedStepParams p) {
  const int lane = threadIdx.x & 31;
  const int64_t j = blockIdx.x * int64_t(kWarpsPerBlock) + (threadIdx.x >> 5);
  const int64_t b0 = blockIdx.y * int64_t(kMaxRows);
  if (j >= p.H) return;  // the whole warp leaves together
  const int rows = static_cast<int>(min(int64_t(kMaxRows), p.B - b0));
  float acc[4][kMaxRows];
  fused_step_dots<T, false>(p, j, b0, rows, lane, acc);
  if (lane >= rows) return;
  float pre[4];
  lane_sums(acc, lane, pre);
  const int64_t b = b0 + lane, H = p.H;
#pragma unroll
  for (int g = 0; g < 4; ++g) pre[g] += bias_at<T>(p.b_ih, g * H + j) + bias_at<T>(p.b_hh, g * H + j);
  const float i = sigmoid(pre[0]), f = sigmoid(pre[1]), gg = tanhf(pre[2]), o = sigmoid(pre[3]);
  const float c = f * to_acc(static_cast<const T*>(p.cx)[b * H + j]) + i * gg;
  T* ws = static_cast<T*>(p.ws) + b * 4 * H;
  ws[j] = from_acc<T>(i);
  ws[H + j] = from_acc<T>(f);
  ws[2 * H + j] = from_acc<T>(gg);
  ws[3 * H + j] = from_acc<T>(o);
  static_cast<T*>(p.c1)[b * H + j] = from_acc<T>(c);
  static_cast<T*>(p.h1)[b * H + j] = from_acc<T>(o * tanhf(c));
}

// GRU reset_after needs the n-gate input and hidden products apart (r multiplies only the hidden one), so it
// keeps G = 3 accumulators for x W_ih^T and one more for h W_hn^T.
template <typename T>
__global__ void gru_fused_step_kernel(FusedStepParams p) {
  const int lane = threadIdx.x & 31;
  const int64_t j = blockIdx.x * int64_t(kWarpsPerBlock) + (threadIdx.x >> 5);
  const int64_t b0 = blockIdx.y * int64_t(kMaxRows);
  if (j >= p.H) return;
  const int rows = static_cast<int>(min(int64_t(kMaxRows), p.B - b0));
  float acc[4][kMaxRows];
  fused_step_dots<T, true>(p, j, b0, rows, lane, acc);
  if (lane >= rows) return;
  float s[4];  // r, z (input + hidden), n input part, n hidden part
  lane_sums(acc, lane, s);
  const int64_t b = b0 + lane, H = p.H;
  const float r = sigmoid(s[0] + bias_at<T>(p.b_ih, j) + bias_at<T>(p.b_hh, j));
  const float z = sigmoid(s[1] + bias_at<T>(p.b_ih, H + j) + bias_at<T>(p.b_hh, H + j));
  const float hn = s[3] + bias_at<T>(p.b_hh, 2 * H + j);
  const float n = tanhf(s[2] + bias_at<T>(p.b_ih, 2 * H + j) + r * hn);
  const float h = to_acc(static_cast<const T*>(p.hx)[b * H + j]);
  T* ws = static_cast<T*>(p.ws) + b * 4 * H;
  ws[j] = from_acc<T>(r);
  ws[H + j] = from_acc<T>(z);
  ws[2 * H + j] = from_acc<T>(n);
  ws[3 * H + j] = from_acc<T>(hn);
  static_cast<T*>(p.h1)[b * H + j] = from_acc<T>(n + z * (h - n));
}

template <template <typename> class Launch>
cudaError_t by_fused_dtype(const FusedStepParams& p, cudaStream_t stream) {
  switch (p.dtype) {
    case Dtype::Float32: return Launch<float>::run(p, stream);
    case Dtype::Float16: return Launch<__half>::run(p, stream);
    case Dtype::BFloat16: return Launch<__nv_bfloat16>::run(p, stream);
    default: return cudaErrorNotSupported;  // float64: cuBLAS + pointwise path
  }
}

inline dim3 fused_grid(const FusedStepParams& p) {
  return dim3(static_cast<unsigned>((p.H + kWarpsPerBlock - 1) / kWarpsPerBlock),
              static_cast<unsigned>((p.B + kMaxRows - 1) / kMaxRows));
}

template <typename T>
struct LstmFused {
  static cudaError_t run(const FusedStepParams& p, cudaStream_t s) {
    lstm_fused_step_kernel<T><<<fused_grid(p), kWarpsPerBlock * 32, 0, s>>>(p);
    return cudaGetLastError();
  }
};
template <typename T>
struct GruFused {
  static cudaError_t run(const FusedStepParams& p, cudaStream_t s) {
    gru_fused_step_kernel<T><<<fused_grid(p), kWarpsPerBlock * 32, 0, s>>>(p);
    return cudaGetLastError();
  }
};

bool fused_step_supported(const FusedStepParams& p) {
  // Small batch only (the weights are re-read once per 8-row tile), and grid limits.
  return p.B > 0 && p.H > 0 && p.B <= 4 * kMaxRows && (p.B + kMaxRows - 1) / kMaxRows <= 65535;
}

}  // namespace

cudaError_t lstm_forward(const LstmForwardParams& p, int64_t B, cudaStream_t s) { return launch_lstm_forward(p, B, s); }
cudaError_t lstm_backward(const LstmBackwardParams& p, int64_t B, cudaStream_t s) { return launch_lstm_backward(p, B, s); }
cudaError_t gru_forward(const GruForwardParams& p, int64_t B, cudaStream_t s) { return launch_gru_forward(p, B, s); }
cudaError_t gru_forward_stage2(const GruForwardParams& p, int64_t B, cudaStream_t s) {
  return launch_gru_forward_stage2(p, B, s);
}
cudaError_t gru_backward(const GruBackwardParams& p, int64_t B, cudaStream_t s) { return launch_gru_backward(p, B, s); }
cudaError_t gru_backward_stage2(const GruBackwardParams& p, int64_t B, cudaStream_t s) {
  return launch_gru_backward_stage2(p, B, s);
}

// Both directions of a bidirectional layer in one launch (p0: forward direction, p1: reverse; same H, dtype).
#define S2S_POINTWISE_BIDIR_ENTRY(name, P)                                                  \
  cudaError_t name##_bidir(const P& p0, const P& p1, int64_t B, cudaStream_t s) {           \
    return launch_##name##_bidir(p0, p1, B, s);                                            \
  }
S2S_POINTWISE_BIDIR_ENTRY(lstm_forward, LstmForwardParams)
S2S_POINTWISE_BIDIR_ENTRY(lstm_backward, LstmBackwardParams)
S2S_POINTWISE_BIDIR_ENTRY(gru_forward, GruForwardParams)
S2S_POINTWISE_BIDIR_ENTRY(gru_forward_stage2, GruForwardParams)
S2S_POINTWISE_BIDIR_ENTRY(gru_backward, GruBackwardParams)
S2S_POINTWISE_BIDIR_ENTRY(gru_backward_stage2, GruBackwardParams)

cudaError_t lstm_fused_step(const FusedStepParams& p, cudaStream_t s) {
  if (!fused_step_supported(p)) return cudaErrorNotSupported;
  return by_fused_dtype<LstmFused>(p, s);
}
cudaError_t gru_fused_step(const FusedStepParams& p, cudaStream_t s) {
  if (!fused_step_supported(p)) return cudaErrorNotSupported;
  return by_fused_dtype<GruFused>(p, s);
}

}  // namespace s2s_fused::cuda
