// The CPU's whole-sequence loop for fp32 (run_sequence / run_sequence_backward of csrc/cpu/rnn_policy.h), with
// packed weights.
//
// Batch rows are independent through the recurrence (row b's h_t depends only on row b's h_{t-1}), so the rows are
// split once among the threads and every thread runs the whole time loop of every direction over its own rows: no
// barrier, no fork/join per step. Per step a thread computes the input projection and the recurrent product of its
// rows against W_ih / W_hh, packed once per call into register-tile panels (csrc/cpu/kernels/packed_gemm.cpp), then
// runs the pointwise kernel over its rows while they are in cache. A forward batch too small to share, or the
// packed-units path, splits the hidden units instead (split_units), with an OpenMP barrier a step. The forward packs
// W^T with the gates of each hidden unit side by side; the backward packs W_hh as the plain (G·H, H) right operand of
// dh = dgates @ W_hh. Buffers, step parameters and finished-row rules are the per-step loop's (csrc/rnn_core.h), so
// both give the same results up to fp32 summation order.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#if defined(_OPENMP)
#include <omp.h>
#endif

#include "config.h"
#include "cpu/memory.h"
#include "cpu/rnn_kernel_tables.h"
#include "rnn_core.h"

namespace s2s_fused::cpu {

// fp32 with a SIMD capability, unless S2S_FUSED_NO_PACKED is on.
inline bool use_packed_sequence(Dtype dtype) {
  return !config::on(config::Switch::NoPacked) && dtype == Dtype::Float32 && packed_gemm_kernels().width > 0;
}

// A packed copy of B (K x N), B[k][n] = src[k * sk + n * sn], packed in parallel over panels.
inline at::Tensor pack_operand(const PackedLayout& L, const void* src, int64_t sk, int64_t sn) {
  at::Tensor packed = empty_buffer({L.numel()}, at::TensorOptions().dtype(at::kFloat));
  float* dst = packed.data_ptr<float>();
  const auto& k = packed_gemm_kernels();
  at::parallel_for(0, L.panels, 1, [&](int64_t p0, int64_t p1) {
    k.pack(L, static_cast<const float*>(src), sk, sn, dst, p0, p1);
  });
  return packed;
}

// Panels [p0, p1) of a packed operand as a layout of their own, and where they start.
struct PanelRange {
  PackedLayout layout;
  const float* data;
};
inline PanelRange panel_range(const PackedLayout& L, const at::Tensor& packed, int64_t p0, int64_t p1) {
  PackedLayout r = L;
  r.panels = p1 - p0;
  r.len = L.len - p0 * L.ps;
  return {r, packed.defined() ? packed.const_data_ptr<float>() + p0 * L.K * L.nv * L.width : nullptr};
}

// Whether a forward's threads can split the hidden units (whole panels, at least two per thread) instead of the
// batch rows: more than one thread, no enclosing parallel region.
inline bool units_can_split(int64_t panels) {
  const int64_t nt = at::get_num_threads();
  return nt > 1 && panels >= 2 * nt && !at::in_parallel_region();
}
// Whether a forward of B rows splits the units: always when asked (the packed-units path), else when there are
// too few rows for every thread to own whole row tiles (kRows = 4 on AVX-512). Which split is faster for more rows
// depends on the CPU, the shape and the tile, and no size rule held (benchmarks/NOTES.md, AMD EPYC Zen 3), so the
// path chooser measures it.
inline bool split_units(int64_t B, int64_t panels, bool units) {
  return units_can_split(panels) && (units || B < 4 * at::get_num_threads());
}
// ... whether asking for the unit split changes how a forward of B rows and H units runs.
inline bool units_split_differs(int64_t B, int64_t H) {
  const int64_t width = packed_gemm_kernels().width;
  if (width <= 0) return false;
  const int64_t panels = PackedLayout::gated(H, 1, H, width).panels;  // the forward's recurrent operand's
  return units_can_split(panels) && !split_units(B, panels, false);
}

inline float* f32(const Mat& m) { return static_cast<float*>(m.data); }
inline const float* f32(const CMat& m) { return static_cast<const float*>(m.data); }

// pack(layout, src, sk, sn): the packed operand (pack_operand, or a copy kept across calls: rnn_policy.h); units:
// split the hidden units among the threads wherever they can be (split_units).
template <class Pack>
bool packed_sequence_forward(const Sequence& q, Pack&& pack, bool units) {
  if (!q.fuse_input || !use_packed_sequence(q.dtype) || q.T <= 0 || q.B <= 0 || q.H <= 0 || q.P != q.H) return false;
  const auto& gk = packed_gemm_kernels();
  const auto& pk = rnn_pointwise_kernels();
  const int64_t T = q.T, B = q.B, I = q.I, H = q.H, Wd = gk.width;
  const bool lstm = q.kind == CellKind::LSTM, before = q.kind == CellKind::GRU_RESET_BEFORE;
  const int64_t G = gate_count(q.kind), Gh = hidden_gates(q.kind);
  // Forward products: gates (+)= h @ W^T, so B[k][n] = W[n][k], every gate of a unit side by side; likewise the
  // input projections x_t @ W_ih^T and (reset_before) (r * h) @ W_hn^T.
  const PackedLayout L = PackedLayout::gated(H, Gh, H, Wd), Ln = PackedLayout::gated(H, 1, H, Wd);
  const PackedLayout Li = PackedLayout::gated(I, G, H, Wd);
  at::Tensor w[2], wn[2], wi[2];
  for (int64_t d = 0; d < q.D; ++d) {
    w[d] = pack(L, q.w[d].w_hh, 1, H);
    if (before) wn[d] = pack(Ln, static_cast<const float*>(q.w[d].w_hh) + 2 * H * H, 1, H);
    wi[d] = pack(Li, q.w[d].w_ih, 1, I);
  }

  // Every step of rows [r0, r1) for the hidden units of panels [p0, p1); `sync` runs where all units of a state
  // must be complete before anyone reads them (a no-op when one thread owns whole rows).
  auto steps = [&](int64_t r0, int64_t r1, int64_t p0, int64_t p1, auto&& sync) {
    const int64_t M = r1 - r0;
    const int64_t j0 = std::min(H, p0 * Wd), j1 = std::min(H, p1 * Wd);  // the units; also each gate's column offset
    for (int64_t d = 0; d < q.D; ++d) {
      const PanelRange pw = panel_range(L, w[d], p0, p1), pi = panel_range(Li, wi[d], p0, p1);
      const PanelRange pn = panel_range(Ln, wn[d], p0, p1);
      for (int64_t s = 0; s < T; ++s) {
        const float* xt = static_cast<const float*>(q.x) + (q.layout(d).time(s) * B + r0) * I;
        if (lstm) {
          LstmForwardParams p = lstm_forward_step(q, d, s);
          p.j0 = j0;
          p.j1 = j1;
          float* g = f32(p.ws) + r0 * 4 * H + j0;
          gk.gemm(pi.layout, pi.data, xt, I, M, g, 4 * H, false);
          gk.gemm(pw.layout, pw.data, f32(p.hx) + r0 * H, H, M, g, 4 * H, true);
          pk.lstm_forward(p, r0, r1);
          sync();
          continue;
        }
        GruForwardParams p = gru_forward_step(q, d, s);
        p.j0 = j0;
        p.j1 = j1;
        gk.gemm(pw.layout, pw.data, f32(p.hx) + r0 * H, H, M, f32(q.mat(q.gh, d, 0)) + r0 * Gh * H + j0, Gh * H,
                false);
        gk.gemm(pi.layout, pi.data, xt, I, M, f32(q.mat(q.gi, d, 0)) + r0 * 3 * H + j0, 3 * H, false);
        pk.gru_forward(p, r0, r1);
        sync();
        if (!before) continue;
        // W_hn's product needs r * h of every unit (the sync above)
        gk.gemm(pn.layout, pn.data, f32(p.rh) + r0 * H, H, M, f32(q.mat(q.ghn, d, 0)) + r0 * H + j0, H, false);
        pk.gru_forward_stage2(p, r0, r1);
        sync();
      }
    }
  };
#if defined(_OPENMP)
  if (split_units(B, L.panels, units)) {
    // Too few rows to give every thread whole row tiles: the threads split the hidden units (whole panels) and meet
    // once a step (twice for GRU reset_before). Every thread of the team runs the same steps, so the barriers
    // always match; a thread without panels still takes part in them.
#pragma omp parallel
    {
      const int64_t n = omp_get_num_threads(), tid = omp_get_thread_num();
      steps(0, B, L.panels * tid / n, L.panels * (tid + 1) / n, [] {
#pragma omp barrier
      });
    }
    return true;
  }
#endif
  at::parallel_for(0, B, 1, [&](int64_t r0, int64_t r1) { steps(r0, r1, 0, L.panels, [] {}); });
  return true;
}

template <class Pack>
bool packed_sequence_backward(const Sequence& q, const SequenceGrads& g, Pack&& pack) {
  if (!use_packed_sequence(q.dtype) || q.T <= 0 || q.B <= 0 || q.H <= 0 || q.P != q.H) return false;
  const auto& gk = packed_gemm_kernels();
  const auto& pk = rnn_pointwise_kernels();
  const int64_t T = q.T, B = q.B, H = q.H, Wd = gk.width;
  const bool lstm = q.kind == CellKind::LSTM, before = q.kind == CellKind::GRU_RESET_BEFORE;
  const int64_t G = gate_count(q.kind), Gh = hidden_gates(q.kind);
  // Backward products: dh (+)= dgates @ W, so B[k][n] = W[k][n]: K = the gate columns acting on h, N = H.
  const PackedLayout L = PackedLayout::plain(Gh * H, H, Wd), Ln = PackedLayout::plain(H, H, Wd);
  at::Tensor w[2], wn[2];
  for (int64_t d = 0; d < q.D; ++d) {
    w[d] = pack(L, q.w[d].w_hh, H, 1);
    if (before) wn[d] = pack(Ln, static_cast<const float*>(q.w[d].w_hh) + 2 * H * H, H, 1);
  }

  at::parallel_for(0, B, 1, [&](int64_t r0, int64_t r1) {
    const int64_t M = r1 - r0;
    for (int64_t d = 0; d < q.D; ++d) {
      const float* pw = w[d].const_data_ptr<float>();
      for (int64_t k = 0; k < T; ++k) {
        if (lstm) {
          const LstmBackwardParams p = lstm_backward_step(q, g, d, k);
          float* dh_next = f32(p.dhx) + r0 * H;
          // The LSTM kernel writes dhx only for finished rows (passing dh through); the others start from zero.
          // (The GRU kernels write every row of dhx themselves.)
          if (p.active) std::fill(dh_next, dh_next + M * H, 0.f);
          pk.lstm_backward(p, r0, r1);
          gk.gemm(L, pw, f32(p.dgates) + r0 * 4 * H, 4 * H, M, dh_next, H, p.active != nullptr);
          continue;
        }
        GruBackwardParams p = gru_backward_step(q, g, d, k);
        float* dh_next = f32(p.dhx) + r0 * H;
        pk.gru_backward(p, r0, r1);
        if (!before) {
          gk.gemm(L, pw, f32(p.dgh) + r0 * G * H, G * H, M, dh_next, H, true);
          continue;
        }
        float* drh = f32(q.mat(g.drh, d, 0)) + r0 * H;
        gk.gemm(Ln, wn[d].const_data_ptr<float>(), f32(p.dgi) + r0 * 3 * H + 2 * H, 3 * H, M, drh, H, false);
        pk.gru_backward_stage2(p, r0, r1);
        gk.gemm(L, pw, f32(p.dgi) + r0 * 3 * H, 3 * H, M, dh_next, H, true);
      }
    }
  });
  return true;
}

}  // namespace s2s_fused::cpu
