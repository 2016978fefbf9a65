// CUDA pointwise LSTM/GRU kernels and the fused one-kernel cell step (declarations and contracts in
// rnn_pointwise.cuh / csrc/rnn_core.h), over the cell math of rnn_cell_math.cuh. No torch headers: compiled by plain
// nvcc in CI.
//
// Pointwise kernels: one thread per (row, hidden unit), all gates of that unit, so every value is read and
// written once; x is the fast grid dimension over H (coalesced along a row), y the batch row, z the direction.
// Math in float (double for double), rounded once on store. Offsets are 64-bit.
#include "cuda/rnn_cell_math.cuh"
#include "cuda/rnn_pointwise.cuh"

namespace s2s_fused::cuda {
namespace {

// Element (b, j) of an optional row-major view; nullptr reads as zero.
template <typename T>
__device__ __forceinline__ acc_t<T> ld(const CMat& m, int64_t b, int64_t j) {
  return m.data ? to_acc(static_cast<const T*>(m.data)[b * m.ld + j]) : acc_t<T>(0);
}
template <typename T>
__device__ __forceinline__ void st(const Mat& m, int64_t b, int64_t j, acc_t<T> v) {
  if (m.data) static_cast<T*>(m.data)[b * m.ld + j] = from_acc<T>(v);
}
__device__ __forceinline__ CMat as_const(const Mat& m) { return {m.data, m.ld}; }

// This thread's hidden unit: x runs over H (coalesced along a row), y over batch rows.
__device__ __forceinline__ int64_t unit_index() { return blockIdx.x * int64_t(blockDim.x) + threadIdx.x; }

// The work of one thread: unit j of row b. A finished row (active[b] == 0) goes to `finished`, the others to
// `live`; both get (b, j).
template <class P, class Finished, class Live>
__device__ __forceinline__ void for_unit(const P& p, int64_t B, Finished finished, Live live) {
  const int64_t j = unit_index(), b = blockIdx.y;
  if (j >= p.H || b >= B) return;
  if (p.active && !p.active[b]) {
    finished(b, j);
  } else {
    live(b, j);
  }
}

// A finished row of a forward kernel: the state is kept (h1 = hx) and the output is zero.
template <typename T>
__device__ __forceinline__ void keep_state(const ForwardStep& p, int64_t b, int64_t j) {
  st<T>(p.h1, b, j, ld<T>(p.hx, b, j));
  st<T>(p.out, b, j, acc_t<T>(0));
}

// dh = dh1 + dh2 of a backward kernel (each optional).
template <typename T>
__device__ __forceinline__ acc_t<T> load_dh(const BackwardStep& p, int64_t b, int64_t j) {
  return ld<T>(p.dh1, b, j) + ld<T>(p.dh2, b, j);
}

// A gate's two products and two biases at column `col` (g2 and both biases optional).
template <typename T>
__device__ __forceinline__ acc_t<T> pre_activation(const CMat& g1, const CMat& g2, const void* b1, const void* b2,
                                                   int64_t b, int64_t col) {
  return ld<T>(g1, b, col) + ld<T>(g2, b, col) + element_or_zero<T>(b1, col) + element_or_zero<T>(b2, col);
}

template <typename T>
__device__ __forceinline__ void lstm_forward_body(const LstmForwardParams& p, int64_t B) {
  const auto finished = [&](int64_t b, int64_t j) {
    keep_state<T>(p, b, j);
    st<T>(p.c1, b, j, ld<T>(p.cx, b, j));
  };
  for_unit(p, B, finished, [&](int64_t b, int64_t j) {
    const int64_t H = p.H;
    acc_t<T> pre[4];
#pragma unroll
    for (int k = 0; k < 4; ++k) pre[k] = pre_activation<T>(p.g1, p.g2, p.b_ih, p.b_hh, b, k * H + j);
    const LstmStep<acc_t<T>> s = lstm_step(pre[0], pre[1], pre[2], pre[3], ld<T>(p.cx, b, j));
    st<T>(p.ws, b, j, s.i);
    st<T>(p.ws, b, H + j, s.f);
    st<T>(p.ws, b, 2 * H + j, s.g);
    st<T>(p.ws, b, 3 * H + j, s.o);
    st<T>(p.c1, b, j, s.c);
    st<T>(p.h1, b, j, s.h);
    st<T>(p.out, b, j, s.h);
  });
}

template <typename T>
__device__ __forceinline__ void lstm_backward_body(const LstmBackwardParams& p, int64_t B) {
  const auto finished = [&](int64_t b, int64_t j) {
    st<T>(p.dhx, b, j, load_dh<T>(p, b, j));
    st<T>(p.dcx, b, j, ld<T>(p.dc1, b, j));
#pragma unroll
    for (int k = 0; k < 4; ++k) st<T>(p.dgates, b, k * p.H + j, acc_t<T>(0));
  };
  for_unit(p, B, finished, [&](int64_t b, int64_t j) {
    const int64_t H = p.H;
    const LstmGrads<acc_t<T>> g = lstm_grads(ld<T>(p.ws, b, j), ld<T>(p.ws, b, H + j), ld<T>(p.ws, b, 2 * H + j),
                                             ld<T>(p.ws, b, 3 * H + j), ld<T>(p.cx, b, j), ld<T>(p.c1, b, j),
                                             load_dh<T>(p, b, j), ld<T>(p.dc1, b, j));
    st<T>(p.dgates, b, j, g.di);
    st<T>(p.dgates, b, H + j, g.df);
    st<T>(p.dgates, b, 2 * H + j, g.dg);
    st<T>(p.dgates, b, 3 * H + j, g.d_o);
    st<T>(p.dcx, b, j, g.dcx);
  });
}

// reset_after: the whole cell; reset_before: stage 1 (r, z, rh = r * hx; stage 2 handles finished rows).
template <typename T>
__device__ __forceinline__ void gru_forward_body(const GruForwardParams& p, int64_t B) {
  const bool after = p.kind == CellKind::GRU_RESET_AFTER;
  const auto finished = [&](int64_t b, int64_t j) {
    if (after) keep_state<T>(p, b, j);
  };
  for_unit(p, B, finished, [&](int64_t b, int64_t j) {
    using A = acc_t<T>;
    const int64_t H = p.H;
    const A pre_r = pre_activation<T>(p.gi, p.gh, p.b_ih, p.b_hh, b, j);
    const A pre_z = pre_activation<T>(p.gi, p.gh, p.b_ih, p.b_hh, b, H + j);
    const A h = ld<T>(p.hx, b, j);
    if (!after) {
      const A r = sigmoid(pre_r);
      st<T>(p.ws, b, j, r);
      st<T>(p.ws, b, H + j, sigmoid(pre_z));
      st<T>(p.rh, b, j, r * h);
      return;
    }
    const A hn = ld<T>(p.gh, b, 2 * H + j) + element_or_zero<T>(p.b_hh, 2 * H + j);
    const A n_in = ld<T>(p.gi, b, 2 * H + j) + element_or_zero<T>(p.b_ih, 2 * H + j);
    const GruStep<A> s = gru_reset_after_step(pre_r, pre_z, n_in, hn, h);
    st<T>(p.ws, b, j, s.r);
    st<T>(p.ws, b, H + j, s.z);
    st<T>(p.ws, b, 2 * H + j, s.n);
    st<T>(p.ws, b, 3 * H + j, hn);
    st<T>(p.h1, b, j, s.h);
    st<T>(p.out, b, j, s.h);
  });
}

// reset_before stage 2: n = tanh(gi_n + ghn + b_in + b_hn) and the new state.
template <typename T>
__device__ __forceinline__ void gru_forward_stage2_body(const GruForwardParams& p, int64_t B) {
  for_unit(p, B, [&](int64_t b, int64_t j) { keep_state<T>(p, b, j); }, [&](int64_t b, int64_t j) {
    const int64_t H = p.H;
    const acc_t<T> n = tanh(ld<T>(p.gi, b, 2 * H + j) + ld<T>(p.ghn, b, j) +
                            element_or_zero<T>(p.b_ih, 2 * H + j) + element_or_zero<T>(p.b_hh, 2 * H + j));
    const acc_t<T> hnew = gru_state(n, ld<T>(as_const(p.ws), b, H + j), ld<T>(p.hx, b, j));
    st<T>(p.ws, b, 2 * H + j, n);
    st<T>(p.h1, b, j, hnew);
    st<T>(p.out, b, j, hnew);
  });
}

// reset_after: the whole pointwise backward; reset_before: stage 1 (dz, dn).
template <typename T>
__device__ __forceinline__ void gru_backward_body(const GruBackwardParams& p, int64_t B) {
  const auto finished = [&](int64_t b, int64_t j) {
    st<T>(p.dhx, b, j, load_dh<T>(p, b, j));
#pragma unroll
    for (int k = 0; k < 3; ++k) {
      st<T>(p.dgi, b, k * p.H + j, acc_t<T>(0));
      st<T>(p.dgh, b, k * p.H + j, acc_t<T>(0));
    }
  };
  for_unit(p, B, finished, [&](int64_t b, int64_t j) {
    using A = acc_t<T>;
    const int64_t H = p.H;
    const A dh = load_dh<T>(p, b, j);
    const A r = ld<T>(p.ws, b, j), z = ld<T>(p.ws, b, H + j), n = ld<T>(p.ws, b, 2 * H + j);
    const GruGrads<A> g = gru_grads(z, n, ld<T>(p.hx, b, j), dh);
    st<T>(p.dgi, b, H + j, g.dz);
    st<T>(p.dgi, b, 2 * H + j, g.dn);
    if (p.kind != CellKind::GRU_RESET_AFTER) return;
    const A dr = gru_dr(g.dn, ld<T>(p.ws, b, 3 * H + j), r);
    st<T>(p.dgi, b, j, dr);
    st<T>(p.dgh, b, j, dr);
    st<T>(p.dgh, b, H + j, g.dz);
    st<T>(p.dgh, b, 2 * H + j, g.dn * r);
    st<T>(p.dhx, b, j, dh * z);
  });
}

// reset_before stage 2: dr, dhx = dh * z + drh * r and rh = r * hx. A finished row: stage 1 already passed dh
// through and zeroed the gate gradients; rh only feeds dW_hn, scaled by dn = 0.
template <typename T>
__device__ __forceinline__ void gru_backward_stage2_body(const GruBackwardParams& p, int64_t B) {
  for_unit(p, B, [&](int64_t b, int64_t j) { st<T>(p.rh, b, j, acc_t<T>(0)); }, [&](int64_t b, int64_t j) {
    using A = acc_t<T>;
    const A r = ld<T>(p.ws, b, j), z = ld<T>(p.ws, b, p.H + j), h = ld<T>(p.hx, b, j);
    const A drh = ld<T>(p.drh, b, j);
    st<T>(p.dgi, b, j, gru_dr(drh, h, r));
    st<T>(p.dhx, b, j, load_dh<T>(p, b, j) * z + drh * r);
    st<T>(p.rh, b, j, r * h);
  });
}

constexpr int kThreads = 128;

// One launch covers D directions: block z runs direction z with its own parameters. The z branch is uniform per
// block and keeps both parameter sets in the kernel's parameter space (no local copy).
template <typename P>
struct Directions {
  P p[2];
};

#define S2S_POINTWISE_KERNEL(name, P)                                                     \
  template <typename T>                                                                   \
  __global__ void name##_kernel(Directions<P> pp, int64_t B) {                            \
    if (blockIdx.z == 0) name##_body<T>(pp.p[0], B); else name##_body<T>(pp.p[1], B);     \
  }                                                                                       \
  template <typename T>                                                                   \
  struct name##_launch {                                                                  \
    static void run(const Directions<P>& pp, int64_t B, dim3 grid, cudaStream_t stream) { \
      name##_kernel<T><<<grid, kThreads, 0, stream>>>(pp, B);                             \
    }                                                                                     \
  };

S2S_POINTWISE_KERNEL(lstm_forward, LstmForwardParams)
S2S_POINTWISE_KERNEL(lstm_backward, LstmBackwardParams)
S2S_POINTWISE_KERNEL(gru_forward, GruForwardParams)
S2S_POINTWISE_KERNEL(gru_forward_stage2, GruForwardParams)
S2S_POINTWISE_KERNEL(gru_backward, GruBackwardParams)
S2S_POINTWISE_KERNEL(gru_backward_stage2, GruBackwardParams)
#undef S2S_POINTWISE_KERNEL

template <template <typename> class Launch, typename P>
cudaError_t launch_pointwise(const P* p, int64_t D, int64_t B, cudaStream_t stream) {
  if (D < 1 || D > 2) return cudaErrorInvalidValue;
  if (B == 0 || p[0].H == 0) return cudaSuccess;
  if (B > 65535 || (D == 2 && (p[1].H != p[0].H || p[1].dtype != p[0].dtype))) return cudaErrorInvalidConfiguration;
  Directions<P> pp{{p[0], p[D - 1]}};
  const dim3 grid(static_cast<unsigned>((p[0].H + kThreads - 1) / kThreads), static_cast<unsigned>(B),
                  static_cast<unsigned>(D));
  switch (p[0].dtype) {
    case Dtype::Float32: Launch<float>::run(pp, B, grid, stream); break;
    case Dtype::Float64: Launch<double>::run(pp, B, grid, stream); break;
    case Dtype::Float16: Launch<__half>::run(pp, B, grid, stream); break;
    case Dtype::BFloat16: Launch<__nv_bfloat16>::run(pp, B, grid, stream); break;
  }
  return cudaGetLastError();
}

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
  for (int g = 0; g < 4; ++g) pre[g] += element_or_zero<T>(p.b_ih, g * H + j) + element_or_zero<T>(p.b_hh, g * H + j);
  const LstmStep<float> c = lstm_step(pre[0], pre[1], pre[2], pre[3], to_acc(static_cast<const T*>(p.cx)[b * H + j]));
  T* ws = static_cast<T*>(p.ws) + b * 4 * H;
  ws[j] = from_acc<T>(c.i);
  ws[H + j] = from_acc<T>(c.f);
  ws[2 * H + j] = from_acc<T>(c.g);
  ws[3 * H + j] = from_acc<T>(c.o);
  static_cast<T*>(p.c1)[b * H + j] = from_acc<T>(c.c);
  static_cast<T*>(p.h1)[b * H + j] = from_acc<T>(c.h);
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
  const float hn = s[3] + element_or_zero<T>(p.b_hh, 2 * H + j);
  const GruStep<float> c = gru_reset_after_step(s[0] + element_or_zero<T>(p.b_ih, j) + element_or_zero<T>(p.b_hh, j),
                                                s[1] + element_or_zero<T>(p.b_ih, H + j) +
                                                    element_or_zero<T>(p.b_hh, H + j),
                                                s[2] + element_or_zero<T>(p.b_ih, 2 * H + j), hn,
                                                to_acc(static_cast<const T*>(p.hx)[b * H + j]));
  T* ws = static_cast<T*>(p.ws) + b * 4 * H;
  ws[j] = from_acc<T>(c.r);
  ws[H + j] = from_acc<T>(c.z);
  ws[2 * H + j] = from_acc<T>(c.n);
  ws[3 * H + j] = from_acc<T>(hn);
  static_cast<T*>(p.h1)[b * H + j] = from_acc<T>(c.h);
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

#define S2S_POINTWISE_ENTRY(name, P)                                                    \
  cudaError_t name(const P* p, int64_t D, int64_t B, cudaStream_t stream) {             \
    return launch_pointwise<name##_launch>(p, D, B, stream);                            \
  }
S2S_POINTWISE_ENTRY(lstm_forward, LstmForwardParams)
S2S_POINTWISE_ENTRY(lstm_backward, LstmBackwardParams)
S2S_POINTWISE_ENTRY(gru_forward, GruForwardParams)
S2S_POINTWISE_ENTRY(gru_forward_stage2, GruForwardParams)
S2S_POINTWISE_ENTRY(gru_backward, GruBackwardParams)
S2S_POINTWISE_ENTRY(gru_backward_stage2, GruBackwardParams)
#undef S2S_POINTWISE_ENTRY

cudaError_t lstm_fused_step(const FusedStepParams& p, cudaStream_t s) {
  if (!fused_step_supported(p)) return cudaErrorNotSupported;
  return by_fused_dtype<LstmFused>(p, s);
}
cudaError_t gru_fused_step(const FusedStepParams& p, cudaStream_t s) {
  if (!fused_step_supported(p)) return cudaErrorNotSupported;
  return by_fused_dtype<GruFused>(p, s);
}

}  // namespace s2s_fused::cuda
