// Persistent small-batch recurrence (declared in rnn_pointwise.cuh): one cooperative kernel runs all T steps of
// one LSTM or GRU (reset_after) layer-direction. Each block keeps the W_hh rows of its hidden units (all gates)
// in shared memory for the whole sequence, so the weights are read from HBM once instead of once per step; per
// step it reads h_{t-1} (B x H, from L2), computes its units' gate pre-activations, applies the cell update in
// registers and writes h_t; one grid-wide barrier separates the steps. The input projections of all steps are
// computed before (one GEMM), as on the other paths, and the outputs (hs, cs, workspace, output) are exactly
// those of the per-step path, so backward is unchanged.
//
// Used for B <= 8 when the whole W_hh fits in the shared memory of the co-resident blocks; otherwise the launcher
// returns cudaErrorNotSupported and the caller runs the per-step path.
#include <cooperative_groups.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "cuda/rnn_pointwise.cuh"

namespace cg = cooperative_groups;

namespace s2s_fused::cuda {
namespace {

constexpr int kRows = 8;       // max batch rows
constexpr int kThreads = 256;  // 8 warps per block

__device__ __forceinline__ float to_f(float v) { return v; }
__device__ __forceinline__ float to_f(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_f(__nv_bfloat16 v) { return __bfloat162float(v); }
template <typename T> __device__ __forceinline__ T from_f(float v);
template <> __device__ __forceinline__ float from_f<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_f<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

__device__ __forceinline__ float sigmoidf_(float x) { return 1.f / (1.f + expf(-x)); }

template <typename T>
__device__ __forceinline__ float bias_at(const void* v, int64_t i) {
  return v ? to_f(static_cast<const T*>(v)[i]) : 0.f;
}

__host__ __device__ inline size_t align16(size_t n) { return (n + 15) & ~size_t(15); }

// Shared memory: the block's weight rows [units][G][H] in T, then h_{t-1} [B][H] in float.
inline size_t smem_bytes(int units, int G, int64_t H, int64_t B, size_t elem) {
  return align16(size_t(units) * G * H * elem) + size_t(B) * H * sizeof(float);
}

template <typename T, bool kGru>
__global__ void __launch_bounds__(kThreads) persistent_recurrence_kernel(PersistentParams p, int units) {
  constexpr int G = kGru ? 3 : 4;
  extern __shared__ __align__(16) unsigned char smem[];
  T* w_s = reinterpret_cast<T*>(smem);
  float* h_s = reinterpret_cast<float*>(smem + align16(size_t(units) * G * p.H * sizeof(T)));
  cg::grid_group grid = cg::this_grid();
  const int64_t H = p.H, B = p.B, T_ = p.T;
  const int64_t j0 = int64_t(blockIdx.x) * units;
  const int nunits = static_cast<int>(max(int64_t(0), min(int64_t(units), H - j0)));
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;

  // The block's weights, once: row (u, g) is W_hh[g*H + j0 + u, :].
  const T* w_hh = static_cast<const T*>(p.w_hh);
  for (int64_t i = threadIdx.x; i < int64_t(nunits) * G * H; i += blockDim.x) {
    const int64_t k = i % H, ug = i / H, g = ug % G, u = ug / G;
    w_s[i] = w_hh[(g * H + j0 + u) * H + k];
  }

  T* hs = static_cast<T*>(p.hs);
  T* cs = static_cast<T*>(p.cs);
  T* out = static_cast<T*>(p.out);
  for (int64_t s = 0; s < T_; ++s) {
    const int64_t t = p.reverse ? T_ - 1 - s : s;
    const int64_t prev = p.reverse ? t + 1 : t, next = p.reverse ? t : t + 1;  // hs/cs slices read / written
    const T* hprev = hs + prev * B * H;
    __syncthreads();  // h_s of the previous step is no longer read
    for (int64_t i = threadIdx.x; i < B * H; i += blockDim.x) h_s[i] = to_f(hprev[i]);
    __syncthreads();
    for (int u = warp; u < nunits; u += nwarps) {
      const int64_t j = j0 + u;
      float acc[G][kRows];
#pragma unroll
      for (int g = 0; g < G; ++g)
#pragma unroll
        for (int r = 0; r < kRows; ++r) acc[g][r] = 0.f;
      const T* wu = w_s + int64_t(u) * G * H;
      for (int64_t k = lane; k < H; k += 32) {
        float hv[kRows];
#pragma unroll
        for (int r = 0; r < kRows; ++r) hv[r] = r < B ? h_s[r * H + k] : 0.f;
#pragma unroll
        for (int g = 0; g < G; ++g) {
          const float w = to_f(wu[g * H + k]);
#pragma unroll
          for (int r = 0; r < kRows; ++r) acc[g][r] = fmaf(w, hv[r], acc[g][r]);
        }
      }
#pragma unroll
      for (int g = 0; g < G; ++g)
#pragma unroll
        for (int r = 0; r < kRows; ++r)
#pragma unroll
          for (int off = 16; off > 0; off >>= 1) acc[g][r] += __shfl_xor_sync(0xffffffffu, acc[g][r], off);
      if (lane < B) {
        const int64_t b = lane;
        float dot[G];  // this lane's column, selected with static register indices
#pragma unroll
        for (int g = 0; g < G; ++g) {
          dot[g] = 0.f;
#pragma unroll
          for (int r = 0; r < kRows; ++r)
            if (r == lane) dot[g] = acc[g][r];
        }
        const int64_t bh_prev = prev * B * H + b * H + j, bh_next = next * B * H + b * H + j;
        const int64_t o = (t * B + b) * H + j;
        const float h = to_f(hs[bh_prev]);
        if (p.active && !p.active[t * B + b]) {  // finished sequence: keep the state, output zero
          hs[bh_next] = hs[bh_prev];
          if (!kGru) cs[bh_next] = cs[bh_prev];
          out[o] = from_f<T>(0.f);
        } else if (!kGru) {
          T* gates = static_cast<T*>(p.gates) + (t * B + b) * 4 * H;  // input projection in, activated gates out
          float pre[4];
#pragma unroll
          for (int g = 0; g < 4; ++g)
            pre[g] = dot[g] + to_f(gates[g * H + j]) + bias_at<T>(p.b1, g * H + j) + bias_at<T>(p.b2, g * H + j);
          const float i = sigmoidf_(pre[0]), f = sigmoidf_(pre[1]), gg = tanhf(pre[2]), og = sigmoidf_(pre[3]);
          const float c = f * to_f(cs[bh_prev]) + i * gg;
          const float hn = og * tanhf(c);
          gates[j] = from_f<T>(i);
          gates[H + j] = from_f<T>(f);
          gates[2 * H + j] = from_f<T>(gg);
          gates[3 * H + j] = from_f<T>(og);
          cs[bh_next] = from_f<T>(c);
          hs[bh_next] = from_f<T>(hn);
          out[o] = from_f<T>(hn);
        } else {
          const T* gi = static_cast<const T*>(p.gi) + (t * B + b) * 3 * H;
          T* ws = static_cast<T*>(p.ws) + (t * B + b) * 4 * H;
          const float r = sigmoidf_(to_f(gi[j]) + dot[0] + bias_at<T>(p.b1, j) + bias_at<T>(p.b2, j));
          const float z = sigmoidf_(to_f(gi[H + j]) + dot[1] + bias_at<T>(p.b1, H + j) + bias_at<T>(p.b2, H + j));
          const float hn = dot[2] + bias_at<T>(p.b2, 2 * H + j);
          const float n = tanhf(to_f(gi[2 * H + j]) + bias_at<T>(p.b1, 2 * H + j) + r * hn);
          const float hnew = n + z * (h - n);
          ws[j] = from_f<T>(r);
          ws[H + j] = from_f<T>(z);
          ws[2 * H + j] = from_f<T>(n);
          ws[3 * H + j] = from_f<T>(hn);
          hs[bh_next] = from_f<T>(hnew);
          out[o] = from_f<T>(hnew);
        }
      }
    }
    grid.sync();  // h_t complete (and visible) everywhere before any block reads it
  }
}

template <typename T, bool kGru>
cudaError_t launch_persistent(const PersistentParams& p, cudaStream_t stream) {
  constexpr int G = kGru ? 3 : 4;
  int dev = 0, sms = 0, coop = 0, max_smem = 0;
  cudaError_t err = cudaGetDevice(&dev);
  if (err != cudaSuccess) return err;
  // Every runtime failure is returned as itself; cudaErrorNotSupported only ever comes from this function's own
  // decisions (no runtime call failed), so the caller falls back without touching the thread's last-error state.
  if ((err = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev)) != cudaSuccess) return err;
  if ((err = cudaDeviceGetAttribute(&coop, cudaDevAttrCooperativeLaunch, dev)) != cudaSuccess) return err;
  if ((err = cudaDeviceGetAttribute(&max_smem, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev)) != cudaSuccess)
    return err;
  if (!coop || sms <= 0) return cudaErrorNotSupported;
  auto kernel = persistent_recurrence_kernel<T, kGru>;
  // The fewest units per block (so the most blocks: more SMs stream their weights in parallel) whose blocks all fit
  // at once, one grid barrier per step requiring co-residency.
  for (int units = static_cast<int>((p.H + sms - 1) / sms); units <= p.H; ++units) {
    const size_t smem = smem_bytes(units, G, p.H, p.B, sizeof(T));
    if (smem > size_t(max_smem)) return cudaErrorNotSupported;
    const int blocks = static_cast<int>((p.H + units - 1) / units);
    if ((err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem))) != cudaSuccess)
      return err;
    int per_sm = 0;
    if ((err = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kThreads, smem)) != cudaSuccess)
      return err;
    if (per_sm * sms < blocks) continue;
    PersistentParams args = p;
    int units_arg = units;
    void* kargs[] = {&args, &units_arg};
    return cudaLaunchCooperativeKernel(reinterpret_cast<void*>(kernel), dim3(blocks), dim3(kThreads), kargs, smem,
                                       stream);
  }
  return cudaErrorNotSupported;
}

template <bool kGru>
cudaError_t by_dtype(const PersistentParams& p, cudaStream_t stream) {
  switch (p.dtype) {
    case Dtype::Float32: return launch_persistent<float, kGru>(p, stream);
    case Dtype::Float16: return launch_persistent<__half, kGru>(p, stream);
    case Dtype::BFloat16: return launch_persistent<__nv_bfloat16, kGru>(p, stream);
    default: return cudaErrorNotSupported;  // float64: per-step path
  }
}

}  // namespace

cudaError_t persistent_recurrence(const PersistentParams& p, cudaStream_t stream) {
  if (p.B < 1 || p.B > kRows || p.T < 1 || p.H < 1) return cudaErrorNotSupported;
  if (p.gru && !p.reset_after) return cudaErrorNotSupported;  // two products per step: per-step path
  return p.gru ? by_dtype<true>(p, stream) : by_dtype<false>(p, stream);
}

}  // namespace s2s_fused::cuda
