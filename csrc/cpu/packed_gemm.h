// A pre-packed right-hand GEMM operand for the CPU recurrences (csrc/cpu/kernels/packed_gemm.cpp), and the
// table of its per-capability kernels. Plain C++ (no torch headers): the capability builds include it.
//
// B (K x N) is stored as `panels` panels, each K rows of nv vectors of W floats, contiguous (panel-major, then k,
// then vector, then lane), so the micro-kernel reads nv aligned-in-sequence vectors per k. Output columns are in
// `segments` of length `len`: lane l of vector v in panel p is column
//     v * vs + (p * ps + v * vi + l)        valid when p * ps + v * vi + l < len.
// Two layouts use it:
//   gated(G, H): the G gates of W consecutive hidden units per panel (nv = G, ps = W, vi = 0, vs = H, len = H),
//     so a row tile's accumulators hold every gate of the same units: C is a (M, G·H) gate matrix in torch's
//     gate order.
//   plain(N):    4 consecutive vectors per panel (nv = 4, ps = 4W, vi = W, vs = 0, len = N).
#pragma once

#include <cstdint>

namespace s2s_fused::cpu {

struct PackedLayout {
  int64_t K = 0, nv = 1, ps = 0, vi = 0, vs = 0, len = 0, panels = 0, width = 0;

  int64_t numel() const { return panels * K * nv * width; }

  static PackedLayout gated(int64_t K, int64_t gates, int64_t H, int64_t width) {
    PackedLayout L;
    L.K = K;
    L.nv = gates;
    L.ps = width;
    L.vi = 0;
    L.vs = H;
    L.len = H;
    L.panels = (H + width - 1) / width;
    L.width = width;
    return L;
  }
  static PackedLayout plain(int64_t K, int64_t N, int64_t width) {
    PackedLayout L;
    L.K = K;
    L.nv = 4;
    L.ps = 4 * width;
    L.vi = width;
    L.vs = 0;
    L.len = N;
    L.panels = (N + 4 * width - 1) / (4 * width);
    L.width = width;
    return L;
  }
};

// One capability's copy. width == 0: this capability has no packed kernel (callers use ATen's GEMMs).
struct PackedGemmKernels {
  int64_t width;
  // Panels [p0, p1) of dst (layout.numel() floats) = B packed, B[k][n] = src[k * sk + n * sn].
  void (*pack)(const PackedLayout& layout, const float* src, int64_t sk, int64_t sn, float* dst, int64_t p0,
               int64_t p1);
  // C[0:M, columns] = (beta ? C : 0) + A[0:M, 0:K] @ B; A row-major with row stride lda, C with row stride ldc.
  void (*gemm)(const PackedLayout& layout, const float* packed, const float* a, int64_t lda, int64_t M, float* c,
               int64_t ldc, bool beta);
};

}  // namespace s2s_fused::cpu
