// Register-tiled fp32 GEMM over a pre-packed right-hand operand (see packed_gemm.h), compiled once per CPU
// capability by setup.py. It is the recurrent product of the CPU layers: C (M x N) (+)= A (M x K) @ B (K x N)
// with M = a thread's batch rows (1..64), K = H or G·H, N = G·H or H, where ATen's GEMMs lose a third of the
// machine to their small-M setup (benchmarks/NOTES.md, rnn_layer).
//
// Micro-kernel: MR rows x NV vectors of accumulators stay in registers over the whole K loop; per k it loads
// NV vectors of the packed panel (contiguous) and broadcasts MR values of A. Panels are walked outermost so one
// panel (K x NV*W floats) stays in L2 while every row tile of the thread's rows streams over it.
#include "cpu/packed_gemm.h"

#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cstring>

namespace s2s_fused::cpu {
namespace CPU_CAPABILITY {
namespace {

using V = at::vec::Vectorized<float>;
constexpr int64_t W = V::size();
// Accumulator rows per tile: with 32 vector registers (AVX-512) 4 rows x 4 vectors measured fastest (114 GF/s on
// one Zen 4 core for M=32, K=256, N=1024, vs 107 for 6 rows and 112 for 8). With 16 (AVX2), 3 rows x 4 vectors
// fill them exactly when the k step broadcasts the rows' A values first and then streams the panel one vector at a
// time (12 accumulators + 3 broadcasts + 1 panel vector): 3 broadcasts and 4 loads per 12 FMAs instead of 2 and 4
// per 8 with 2 rows.
#if defined(CPU_CAPABILITY_AVX512)
constexpr int kRows = 4;
constexpr bool kBroadcastFirst = false;
#else
constexpr int kRows = 3;
constexpr bool kBroadcastFirst = true;
#endif

// acc (MR x NV vectors) = (beta ? C : 0) + A[0:MR, 0:K] @ panel; C's vector v of row r at c + r * ldc + v * voff.
template <int MR, int NV>
inline void tile(const float* a, int64_t lda, const float* panel, int64_t K, float* c, int64_t ldc, int64_t voff,
                 bool beta) {
  V acc[MR][NV];
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r) {
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[r][v] = beta ? V::loadu(c + r * ldc + v * voff) : V(0.f);
  }
  for (int64_t k = 0; k < K; ++k) {
    if constexpr (kBroadcastFirst) {
      V x[MR];
#pragma GCC unroll 8
      for (int r = 0; r < MR; ++r) x[r] = V(a[r * lda + k]);
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) {
        const V b = V::loadu(panel + (k * NV + v) * W);
#pragma GCC unroll 8
        for (int r = 0; r < MR; ++r) acc[r][v] = at::vec::fmadd(x[r], b, acc[r][v]);
      }
    } else {
      V b[NV];
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) b[v] = V::loadu(panel + (k * NV + v) * W);
#pragma GCC unroll 8
      for (int r = 0; r < MR; ++r) {
        const V x(a[r * lda + k]);
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) acc[r][v] = at::vec::fmadd(x, b[v], acc[r][v]);
      }
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r) {
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[r][v].store(c + r * ldc + v * voff);
  }
}

// Rows [0, M) against one panel, full vectors only.
template <int NV>
void panel_rows(const float* a, int64_t lda, int64_t M, const float* panel, int64_t K, float* c, int64_t ldc,
                int64_t voff, bool beta) {
  int64_t m = 0;
  for (; m + kRows <= M; m += kRows) tile<kRows, NV>(a + m * lda, lda, panel, K, c + m * ldc, ldc, voff, beta);
  if constexpr (kRows > 2) {
    for (; m + 2 <= M; m += 2) tile<2, NV>(a + m * lda, lda, panel, K, c + m * ldc, ldc, voff, beta);
  }
  for (; m < M; ++m) tile<1, NV>(a + m * lda, lda, panel, K, c + m * ldc, ldc, voff, beta);
}

// A panel some of whose lanes fall outside the output (the last one when the segment length is not a multiple
// of the panel width): each row goes through a full-width scratch row, only the valid lanes are read and written.
template <int NV>
void panel_rows_edge(const PackedLayout& L, int64_t p, const float* a, int64_t lda, int64_t M, const float* panel,
                     float* c, int64_t ldc, bool beta) {
  alignas(64) float scratch[NV * W];
  int64_t valid[NV];
  for (int v = 0; v < NV; ++v) valid[v] = std::clamp<int64_t>(L.len - (p * L.ps + v * L.vi), 0, W);
  for (int64_t m = 0; m < M; ++m) {
    float* crow = c + m * ldc + p * L.ps;
    for (int v = 0; v < NV; ++v) {
      float* dst = scratch + v * W;
      std::fill(dst, dst + W, 0.f);
      if (beta && valid[v] > 0) std::memcpy(dst, crow + v * (L.vs + L.vi), valid[v] * sizeof(float));
    }
    tile<1, NV>(a + m * lda, lda, panel, L.K, scratch, NV * W, W, true);
    for (int v = 0; v < NV; ++v) {
      if (valid[v] > 0) std::memcpy(crow + v * (L.vs + L.vi), scratch + v * W, valid[v] * sizeof(float));
    }
  }
}

template <int NV>
void gemm_nv(const PackedLayout& L, const float* packed, const float* a, int64_t lda, int64_t M, float* c,
             int64_t ldc, bool beta) {
  const int64_t panel_size = L.K * NV * W;
  const int64_t voff = L.vs + L.vi;
  for (int64_t p = 0; p < L.panels; ++p) {
    const float* panel = packed + p * panel_size;
    // Full when the last vector's last lane is inside the segment.
    if (p * L.ps + (NV - 1) * L.vi + W <= L.len) {
      panel_rows<NV>(a, lda, M, panel, L.K, c + p * L.ps, ldc, voff, beta);
    } else {
      panel_rows_edge<NV>(L, p, a, lda, M, panel, c, ldc, beta);
    }
  }
}

void packed_gemm(const PackedLayout& L, const float* packed, const float* a, int64_t lda, int64_t M, float* c,
                 int64_t ldc, bool beta) {
  if (M <= 0) return;
  if (L.K == 0) {  // empty inner dimension: C = beta * C
    if (!beta) {
      for (int64_t m = 0; m < M; ++m) {
        for (int64_t v = 0; v < L.nv; ++v) {
          for (int64_t p = 0; p < L.panels; ++p) {
            const int64_t seg = p * L.ps + v * L.vi;
            const int64_t n = std::clamp<int64_t>(L.len - seg, 0, W);
            if (n > 0) std::fill_n(c + m * ldc + v * L.vs + seg, n, 0.f);
          }
        }
      }
    }
    return;
  }
  switch (L.nv) {
    case 1: return gemm_nv<1>(L, packed, a, lda, M, c, ldc, beta);
    case 2: return gemm_nv<2>(L, packed, a, lda, M, c, ldc, beta);
    case 3: return gemm_nv<3>(L, packed, a, lda, M, c, ldc, beta);
    default: return gemm_nv<4>(L, packed, a, lda, M, c, ldc, beta);
  }
}

// dst[p][k][v][l] = B[k][column(p, v, l)] with B[k][n] = src[k * sk + n * sn]; lanes outside the segment are 0.
void pack(const PackedLayout& L, const float* src, int64_t sk, int64_t sn, float* dst, int64_t p0, int64_t p1) {
  if (sk == 1) {
    // B = W^T (forward): the valid lanes of a vector are `lanes` consecutive rows of W, each contiguous in k, so
    // the vector is that (lanes x K) block of W transposed into the panel (row stride nv * W): ATen's
    // transpose_mxn, 16 x 16 blocks in registers on AVX-512. Element by element (each row of W in turn, every
    // write 256 B past the last) packing took 1.2-1.3x as long: 678-729 vs 553 perf samples in 200 LSTM layer
    // forwards (T=32, B=64, I=H=256, 1 thread), about 3 % of the forward before.
    const int64_t stride = L.nv * W;
    for (int64_t p = p0; p < p1; ++p) {
      for (int64_t v = 0; v < L.nv; ++v) {
        const int64_t seg = p * L.ps + v * L.vi;
        const int64_t lanes = std::clamp<int64_t>(L.len - seg, 0, W);
        float* out = dst + ((p * L.K) * L.nv + v) * W;
        if (lanes > 0) {
          at::vec::transpose_mxn<float>(src + (v * L.vs + seg) * sn, sn, out, stride, static_cast<int>(lanes),
                                        static_cast<int>(L.K));
        }
        if (lanes < W) {
          for (int64_t k = 0; k < L.K; ++k) std::fill(out + k * stride + lanes, out + k * stride + W, 0.f);
        }
      }
    }
    return;
  }
  for (int64_t p = p0; p < p1; ++p) {
    for (int64_t k = 0; k < L.K; ++k) {
      float* out = dst + ((p * L.K + k) * L.nv) * W;
      for (int64_t v = 0; v < L.nv; ++v) {
        const int64_t seg = p * L.ps + v * L.vi;
        for (int64_t l = 0; l < W; ++l) {
          out[v * W + l] = seg + l < L.len ? src[k * sk + (v * L.vs + seg + l) * sn] : 0.f;
        }
      }
    }
  }
}

}  // namespace

extern const PackedGemmKernels packed_gemm_kernels;
#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
const PackedGemmKernels packed_gemm_kernels = {W, pack, packed_gemm};
#else
// No SIMD registers to tile over: the layers keep their ATen GEMM path.
const PackedGemmKernels packed_gemm_kernels = {0, pack, packed_gemm};
#endif

}  // namespace CPU_CAPABILITY
}  // namespace s2s_fused::cpu
