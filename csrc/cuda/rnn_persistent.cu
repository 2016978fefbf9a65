// Persistent small-batch recurrence (declared in rnn_pointwise.cuh): one cooperative kernel runs all T steps of
// one direction of an LSTM or GRU (reset_after) layer. Each block keeps the W_hh rows of its hidden units (all
// gates) in shared memory for the whole sequence, so the weights are read from HBM once instead of once per step;
// per step it reads h_{t-1} (B x H, from L2), computes its units' gate pre-activations, applies the cell update
// (rnn_cell_math.cuh) in registers and writes h_t; one grid-wide barrier separates the steps. The input
// projections of all steps are computed before (one GEMM), as on the per-step path, and the buffers it writes
// (states in their TimeLayout slots, workspace, output) are exactly the per-step path's, so backward is unchanged.
//
// Used for B <= 8 when the whole W_hh fits in the shared memory of the co-resident blocks; otherwise the launcher
// returns cudaErrorNotSupported and the caller runs the per-step loop.
#include <cooperative_groups.h>

#include "cuda/rnn_cell_math.cuh"
#include "cuda/rnn_pointwise.cuh"

namespace cg = cooperative_groups;

namespace s2s_fused::cuda {
namespace {

constexpr int kRows = 8;       // max batch rows
constexpr int kThreads = 256;  // 8 warps per block

__host__ __device__ inline size_t align16(size_t n) { return (n + 15) & ~size_t(15); }

// Shared memory: the block's weight rows [units][G][H] in T, then h_{t-1} [B][H] in float.
inline size_t smem_bytes(int units, int G, int64_t H, int64_t B, size_t elem) {
  return align16(size_t(units) * G * H * elem) + size_t(B) * H * sizeof(float);
}

template <typename T, bool kGru>
__global__ void __launch_bounds__(kThreads) persistent_sequence_kernel(Sequence q, int64_t d, int units) {
  constexpr int G = kGru ? 3 : 4;
  extern __shared__ __align__(16) unsigned char smem[];
  T* w_s = reinterpret_cast<T*>(smem);
  float* h_s = reinterpret_cast<float*>(smem + align16(size_t(units) * G * q.H * sizeof(T)));
  cg::grid_group grid = cg::this_grid();
  const int64_t H = q.H, B = q.B;
  const TimeLayout layout = q.layout(d);
  const int64_t j0 = int64_t(blockIdx.x) * units;
  const int nunits = static_cast<int>(max(int64_t(0), min(int64_t(units), H - j0)));
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;

  // The block's weights, once: row (u, g) is W_hh[g*H + j0 + u, :].
  const T* w_hh = static_cast<const T*>(q.w[d].w_hh);
  for (int64_t i = threadIdx.x; i < int64_t(nunits) * G * H; i += blockDim.x) {
    const int64_t k = i % H, ug = i / H, g = ug % G, u = ug / G;
    w_s[i] = w_hh[(g * H + j0 + u) * H + k];
  }

  T* hs = static_cast<T*>(q.hs.data);
  T* cs = static_cast<T*>(q.cs.data);
  T* out = static_cast<T*>(q.out);
  for (int64_t s = 0; s < q.T; ++s) {
    const int64_t t = layout.time(s);
    const int64_t prev = q.hs.offset(d, layout.read(s)), next = q.hs.offset(d, layout.write(s));  // (B, H) slots
    __syncthreads();  // h_s of the previous step is no longer read
    for (int64_t i = threadIdx.x; i < B * H; i += blockDim.x) h_s[i] = to_acc(hs[prev + i]);
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
          const float w = to_acc(wu[g * H + k]);
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
        const int64_t bh_prev = prev + b * H + j, bh_next = next + b * H + j;
        const int64_t o = q.out_offset(d, t) + b * q.out_ld() + j;
        const float h = to_acc(hs[bh_prev]);
        const void* b_ih = q.w[d].b_ih;
        const void* b_hh = q.w[d].b_hh;
        if (q.active && !q.active[t * B + b]) {  // finished sequence: keep the state, output zero
          hs[bh_next] = hs[bh_prev];
          if (!kGru) cs[bh_next] = cs[bh_prev];
          out[o] = from_acc<T>(0.f);
        } else if (!kGru) {
          // input projection in, activated gates out
          T* gates = static_cast<T*>(q.gates.data) + q.gates.offset(d, t) + b * 4 * H;
          float pre[4];
#pragma unroll
          for (int g = 0; g < 4; ++g)
            pre[g] = dot[g] + to_acc(gates[g * H + j]) + element_or_zero<T>(b_ih, g * H + j) +
                     element_or_zero<T>(b_hh, g * H + j);
          const LstmStep<float> c = lstm_step(pre[0], pre[1], pre[2], pre[3], to_acc(cs[bh_prev]));
          gates[j] = from_acc<T>(c.i);
          gates[H + j] = from_acc<T>(c.f);
          gates[2 * H + j] = from_acc<T>(c.g);
          gates[3 * H + j] = from_acc<T>(c.o);
          cs[bh_next] = from_acc<T>(c.c);
          hs[bh_next] = from_acc<T>(c.h);
          out[o] = from_acc<T>(c.h);
        } else {
          const T* gi = static_cast<const T*>(q.gi.data) + q.gi.offset(d, t) + b * 3 * H;
          const float hn = dot[2] + element_or_zero<T>(b_hh, 2 * H + j);
          const GruStep<float> c = gru_reset_after_step(
              to_acc(gi[j]) + dot[0] + element_or_zero<T>(b_ih, j) + element_or_zero<T>(b_hh, j),
              to_acc(gi[H + j]) + dot[1] + element_or_zero<T>(b_ih, H + j) + element_or_zero<T>(b_hh, H + j),
              to_acc(gi[2 * H + j]) + element_or_zero<T>(b_ih, 2 * H + j), hn, h);
          if (q.ws.data) {  // none in inference
            T* ws = static_cast<T*>(q.ws.data) + q.ws.offset(d, t) + b * 4 * H;
            ws[j] = from_acc<T>(c.r);
            ws[H + j] = from_acc<T>(c.z);
            ws[2 * H + j] = from_acc<T>(c.n);
            ws[3 * H + j] = from_acc<T>(hn);
          }
          hs[bh_next] = from_acc<T>(c.h);
          out[o] = from_acc<T>(c.h);
        }
      }
    }
    grid.sync();  // h_t complete (and visible) everywhere before any block reads it
  }
}

template <typename T, bool kGru>
cudaError_t launch_persistent(const Sequence& q, int64_t d, cudaStream_t stream) {
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
  auto kernel = persistent_sequence_kernel<T, kGru>;
  // The fewest units per block (so the most blocks: more SMs stream their weights in parallel) whose blocks all fit
  // at once, one grid barrier per step requiring co-residency.
  for (int units = static_cast<int>((q.H + sms - 1) / sms); units <= q.H; ++units) {
    const size_t smem = smem_bytes(units, G, q.H, q.B, sizeof(T));
    if (smem > size_t(max_smem)) return cudaErrorNotSupported;
    const int blocks = static_cast<int>((q.H + units - 1) / units);
    if ((err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem))) != cudaSuccess)
      return err;
    int per_sm = 0;
    if ((err = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kThreads, smem)) != cudaSuccess)
      return err;
    if (per_sm * sms < blocks) continue;
    Sequence args = q;
    int64_t d_arg = d;
    int units_arg = units;
    void* kargs[] = {&args, &d_arg, &units_arg};
    return cudaLaunchCooperativeKernel(reinterpret_cast<void*>(kernel), dim3(blocks), dim3(kThreads), kargs, smem,
                                       stream);
  }
  return cudaErrorNotSupported;
}

template <bool kGru>
cudaError_t by_dtype(const Sequence& q, int64_t d, cudaStream_t stream) {
  switch (q.dtype) {
    case Dtype::Float32: return launch_persistent<float, kGru>(q, d, stream);
    case Dtype::Float16: return launch_persistent<__half, kGru>(q, d, stream);
    case Dtype::BFloat16: return launch_persistent<__nv_bfloat16, kGru>(q, d, stream);
    default: return cudaErrorNotSupported;  // float64: per-step path
  }
}

}  // namespace

cudaError_t persistent_sequence(const Sequence& q, int64_t d, cudaStream_t stream) {
  if (q.B < 1 || q.B > kRows || q.T < 1 || q.H < 1 || q.P != q.H || q.fuse_input) return cudaErrorNotSupported;
  if (q.kind == CellKind::GRU_RESET_BEFORE) return cudaErrorNotSupported;  // two products per step: per-step path
  return q.kind == CellKind::GRU_RESET_AFTER ? by_dtype<true>(q, d, stream) : by_dtype<false>(q, d, stream);
}

}  // namespace s2s_fused::cuda
