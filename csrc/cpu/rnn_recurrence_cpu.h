// The CPU layers' time loop for fp32 with packed recurrent weights: the `persistent` / `persistent_backward`
// hooks of rnn_layer_impl.h on CPU (CpuPointwise).
//
// Batch rows are independent through the recurrence (row b's h_t depends only on row b's h_{t-1}), so the rows are
// split once among the threads and every thread runs the whole time loop over its own rows: no barrier, no
// fork/join per step. Per step a thread runs the input projection (fused, PersistentParams::fuse_input) and the
// recurrent product of its rows against W_ih / W_hh, packed once per call into register-tile panels
// (csrc/cpu/kernels/packed_gemm.cpp), then the pointwise kernel of its rows while they are in cache. A forward
// batch too small to share (split_units) splits the hidden units instead, with an OpenMP barrier a step. The
// forward packs W^T with the gates of each hidden unit side by side; the backward packs W_hh as the plain (G*H, H)
// right operand of dh = dgates @ W_hh. Inference (keep_workspace = false) keeps two state slots and one step of
// gates instead of the saved tensors. Everything else (buffers, layouts, finished-row rules) is the per-step
// path's, so both give the same results up to fp32 summation order.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdlib>
#if defined(_OPENMP)
#include <omp.h>
#endif

#include "cpu/memory.h"
#include "cpu/rnn_kernel_tables.h"

namespace s2s_fused::cpu {

// fp32 with a SIMD capability, unless S2S_FUSED_NO_PACKED=1 (A/B benchmarks; tests of the ATen-GEMM path).
inline bool use_packed_recurrence(Dtype dtype) {
  static const bool off = [] {
    const char* v = std::getenv("S2S_FUSED_NO_PACKED");
    return v != nullptr && v[0] == '1';
  }();
  return !off && dtype == Dtype::Float32 && packed_gemm_kernels().width > 0;
}

// A packed copy of B (K x N), B[k][n] = src[k * sk + n * sn], packed in parallel over panels.
inline at::Tensor pack_operand(const PackedLayout& L, const float* src, int64_t sk, int64_t sn) {
  at::Tensor packed = empty_huge({L.numel()}, at::TensorOptions().dtype(at::kFloat));
  float* dst = packed.data_ptr<float>();
  const auto& k = packed_gemm_kernels();
  at::parallel_for(0, L.panels, 1, [&](int64_t p0, int64_t p1) { k.pack(L, src, sk, sn, dst, p0, p1); });
  return packed;
}

// Rows [r0, r1) of the batch, each thread its own (the grain keeps MR-row tiles whole where possible).
template <class F>
inline void for_row_blocks(int64_t B, F fn) {
  at::parallel_for(0, B, 1, fn);
}

template <typename T>
inline T* at_row(void* base, int64_t row, int64_t ld) {
  return static_cast<T*>(base) + row * ld;
}
template <typename T>
inline const T* at_row(const void* base, int64_t row, int64_t ld) {
  return static_cast<const T*>(base) + row * ld;
}

// Panels [p0, p1) of a packed operand as a layout of their own (the caller offsets the packed data by p0 panels and
// the output by p0 * ps columns).
inline PackedLayout panel_range(const PackedLayout& L, int64_t p0, int64_t p1) {
  PackedLayout r = L;
  r.panels = p1 - p0;
  r.len = L.len - p0 * L.ps;
  return r;
}

// Forward with too few batch rows for every thread to own whole row tiles (kRows = 4 on AVX-512): split the hidden
// units instead, when there are enough panels to go round and no enclosing parallel region.
inline bool split_units(int64_t B, int64_t panels) {
  const int64_t nt = at::get_num_threads();
  return nt > 1 && B < 4 * nt && panels >= 2 * nt && !at::in_parallel_region();
}

inline bool packed_forward(const PersistentParams& q) {
  if (!use_packed_recurrence(q.dtype) || q.T <= 0 || q.B <= 0 || q.H <= 0) return false;
  const auto& gk = packed_gemm_kernels();
  const auto& pk = rnn_pointwise_kernels();
  const int64_t T = q.T, B = q.B, H = q.H, Wd = gk.width;
  const float* w = static_cast<const float*>(q.w_hh);
  const bool before = q.gru && !q.reset_after;
  // Forward products: gates (+)= h @ W^T, so B[k][n] = W[n][k].
  const int64_t G = q.gru ? (before ? 2 : 3) : 4;
  const PackedLayout L = PackedLayout::gated(H, G, H, Wd);
  const at::Tensor packed = pack_operand(L, w, 1, H);
  PackedLayout Ln;
  at::Tensor packed_n, gh, rh, ghn;
  if (q.gru) gh = at::empty({B, G * H}, at::kFloat);
  if (before) {
    Ln = PackedLayout::gated(H, 1, H, Wd);
    packed_n = pack_operand(Ln, w + 2 * H * H, 1, H);
    rh = at::empty({B, H}, at::kFloat);
    ghn = at::empty({B, H}, at::kFloat);
  }
  // Input projections, when fused: gates (+)= x_t @ W_ih^T with every gate of a unit side by side, as above.
  const int64_t I = q.I;
  const bool fuse_in = q.fuse_input;
  const PackedLayout Li = PackedLayout::gated(I, q.gru ? 3 : 4, H, Wd);
  at::Tensor packed_i, gi_scratch;
  if (fuse_in) {
    packed_i = pack_operand(Li, static_cast<const float*>(q.w_ih), 1, I);
    if (q.gru) gi_scratch = at::empty({B, 3 * H}, at::kFloat);
  }
  const float* pi = fuse_in ? packed_i.const_data_ptr<float>() : nullptr;
  float* gi_s = fuse_in && q.gru ? gi_scratch.data_ptr<float>() : nullptr;
  const float* pw = packed.const_data_ptr<float>();
  const float* pn = before ? packed_n.const_data_ptr<float>() : nullptr;
  float* gh_p = q.gru ? gh.data_ptr<float>() : nullptr;
  float* rh_p = before ? rh.data_ptr<float>() : nullptr;
  float* ghn_p = before ? ghn.data_ptr<float>() : nullptr;
  const int64_t wsG = q.gru ? (before ? 3 : 4) : 4;
  const bool keep = q.keep_workspace;

  // Every step of rows [r0, r1) for the hidden units of panels [p0, p1); `sync` runs where all units of a state
  // must be complete before anyone reads them (a no-op when one thread owns whole rows).
  auto steps = [&](int64_t r0, int64_t r1, int64_t p0, int64_t p1, auto&& sync) {
    const int64_t M = r1 - r0;
    const PackedLayout Ls = panel_range(L, p0, p1), Lis = panel_range(Li, p0, p1);
    const PackedLayout Lns = before ? panel_range(Ln, p0, p1) : Ln;
    const float* pws = pw + p0 * L.K * L.nv * Wd;
    const float* pis = fuse_in ? pi + p0 * Li.K * Li.nv * Wd : nullptr;
    const float* pns = before ? pn + p0 * Ln.K * Ln.nv * Wd : nullptr;
    const int64_t j0 = std::min(H, p0 * Wd), j1 = std::min(H, p1 * Wd);  // the units; also each gate's column offset
    for (int64_t s = 0; s < T; ++s) {
      const int64_t t = q.reverse ? T - 1 - s : s;
      // State slots: the time layout of the saved states, or (inference) two slots alternating by step parity.
      const int64_t prev = !keep ? s % 2 : q.reverse ? t + 1 : t;
      const int64_t next = !keep ? (s + 1) % 2 : q.reverse ? t : t + 1;
      const float* hx = at_row<float>(static_cast<const void*>(q.hs), prev * B, H);
      float* h1 = at_row<float>(q.hs, next * B, H);
      float* out = at_row<float>(q.out, t * B, H);
      const uint8_t* act = q.active ? q.active + t * B : nullptr;
      const float* xt = fuse_in ? at_row<float>(q.x, t * B + r0, I) : nullptr;
      if (!q.gru) {
        float* g = at_row<float>(q.gates, keep ? t * B : 0, 4 * H);
        if (fuse_in) gk.gemm(Lis, pis, xt, I, M, g + r0 * 4 * H + j0, 4 * H, false);
        gk.gemm(Ls, pws, hx + r0 * H, H, M, g + r0 * 4 * H + j0, 4 * H, true);
        LstmForwardParams p;
        p.j0 = j0;
        p.j1 = j1;
        p.dtype = Dtype::Float32;
        p.H = H;
        p.g1 = {g, 4 * H};
        p.ws = {g, 4 * H};
        p.b1 = q.b1;
        p.b2 = q.b2;
        p.cx = {at_row<float>(static_cast<const void*>(q.cs), prev * B, H), H};
        p.hx = {hx, H};
        p.h1 = {h1, H};
        p.c1 = {at_row<float>(q.cs, next * B, H), H};
        p.out = {out, H};
        p.active = act;
        pk.lstm_forward(p, r0, r1);
        sync();
        continue;
      }
      gk.gemm(Ls, pws, hx + r0 * H, H, M, gh_p + r0 * G * H + j0, G * H, false);
      GruForwardParams p;
      p.j0 = j0;
      p.j1 = j1;
      p.dtype = Dtype::Float32;
      p.H = H;
      p.reset_after = !before;
      p.b_ih = q.b1;
      p.b_hh = q.b2;
      if (fuse_in) {
        gk.gemm(Lis, pis, xt, I, M, gi_s + r0 * 3 * H + j0, 3 * H, false);
        p.gi = {gi_s, 3 * H};
      } else {
        p.gi = {at_row<float>(q.gi, t * B, 3 * H), 3 * H};
      }
      p.gh = {gh_p, G * H};
      p.hx = {hx, H};
      p.h1 = {h1, H};
      p.ws = !q.ws ? Mat{} : Mat{at_row<float>(q.ws, keep ? t * B : 0, wsG * H), wsG * H};
      p.out = {out, H};
      p.active = act;
      if (!before) {
        pk.gru_forward(p, r0, r1);
        sync();
        continue;
      }
      p.rh = {rh_p, H};
      pk.gru_forward(p, r0, r1);
      sync();  // W_hn's product needs r * h of every unit
      gk.gemm(Lns, pns, rh_p + r0 * H, H, M, ghn_p + r0 * H + j0, H, false);
      p.ghn = {ghn_p, H};
      pk.gru_forward_stage2(p, r0, r1);
      sync();
    }
  };
#if defined(_OPENMP)
  if (split_units(B, L.panels)) {
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
  for_row_blocks(B, [&](int64_t r0, int64_t r1) { steps(r0, r1, 0, L.panels, [] {}); });
  return true;
}

inline bool packed_backward(const PersistentBackwardParams& q) {
  if (!use_packed_recurrence(q.dtype) || q.T <= 0 || q.B <= 0 || q.H <= 0) return false;
  const auto& gk = packed_gemm_kernels();
  const auto& pk = rnn_pointwise_kernels();
  const int64_t T = q.T, B = q.B, H = q.H, Wd = gk.width;
  const float* w = static_cast<const float*>(q.w_hh);
  const bool before = q.gru && !q.reset_after;
  const int64_t G = q.gru ? 3 : 4;
  // Backward products: dh (+)= dgates @ W, so B[k][n] = W[k][n]: K = the gate columns used, N = H.
  const PackedLayout L = PackedLayout::plain(before ? 2 * H : G * H, H, Wd);
  const at::Tensor packed = pack_operand(L, w, H, 1);
  PackedLayout Ln;
  at::Tensor packed_n, drh;
  if (before) {
    Ln = PackedLayout::plain(H, H, Wd);
    packed_n = pack_operand(Ln, w + 2 * H * H, H, 1);
    drh = at::empty({B, H}, at::kFloat);
  }
  const float* pw = packed.const_data_ptr<float>();
  const float* pn = before ? packed_n.const_data_ptr<float>() : nullptr;
  float* drh_p = before ? drh.data_ptr<float>() : nullptr;
  const int64_t wsG = q.gru ? (before ? 3 : 4) : 4;

  for_row_blocks(B, [&](int64_t r0, int64_t r1) {
    const int64_t M = r1 - r0;
    float* dh = static_cast<float*>(q.dh);
    float* dh_next = static_cast<float*>(q.dh_next);
    for (int64_t s = T - 1; s >= 0; --s) {
      const int64_t t = q.reverse ? T - 1 - s : s;
      const int64_t prev = q.reverse ? t + 1 : t, next = q.reverse ? t : t + 1;
      const uint8_t* act = q.active ? q.active + t * B : nullptr;
      const CMat go = q.go ? CMat{at_row<float>(q.go, t * B, H), H} : CMat{};
      if (!q.gru) {
        // The LSTM kernel writes dhx only for finished rows (passing dh through); the others start from zero.
        // (The GRU kernels write every row of dhx themselves.)
        if (act) std::fill(dh_next + r0 * H, dh_next + r1 * H, 0.f);
        float* dg = at_row<float>(q.dgates, t * B, 4 * H);
        LstmBackwardParams p;
        p.dtype = Dtype::Float32;
        p.H = H;
        p.dh1 = go;
        p.dh2 = {dh, H};
        p.dc1 = {q.dc, H};
        p.ws = {at_row<float>(q.ws, t * B, 4 * H), 4 * H};
        p.cx = {at_row<float>(q.cs, prev * B, H), H};
        p.c1 = {at_row<float>(q.cs, next * B, H), H};
        p.dgates = {dg, 4 * H};
        p.dcx = {q.dc, H};
        p.active = act;
        p.dhx = {dh_next, H};
        pk.lstm_backward(p, r0, r1);
        gk.gemm(L, pw, dg + r0 * 4 * H, 4 * H, M, dh_next + r0 * H, H, act != nullptr);
      } else {
        float* dgi = at_row<float>(q.dgi, t * B, 3 * H);
        float* dgh = at_row<float>(q.dgh, t * B, 3 * H);
        GruBackwardParams p;
        p.dtype = Dtype::Float32;
        p.H = H;
        p.reset_after = !before;
        p.dh1 = go;
        p.dh2 = {dh, H};
        p.ws = {at_row<float>(q.ws, t * B, wsG * H), wsG * H};
        p.hx = {at_row<float>(q.hs, prev * B, H), H};
        p.dgi = {dgi, 3 * H};
        p.dgh = {dgh, 3 * H};
        p.dhx = {dh_next, H};
        p.active = act;
        pk.gru_backward(p, r0, r1);
        if (!before) {
          gk.gemm(L, pw, dgh + r0 * 3 * H, 3 * H, M, dh_next + r0 * H, H, true);
        } else {
          gk.gemm(Ln, pn, dgi + r0 * 3 * H + 2 * H, 3 * H, M, drh_p + r0 * H, H, false);
          p.drh = {drh_p, H};
          p.rh = {at_row<float>(q.rh, t * B, H), H};
          pk.gru_backward_stage2(p, r0, r1);
          gk.gemm(L, pw, dgi + r0 * 3 * H, 3 * H, M, dh_next + r0 * H, H, true);
        }
      }
      std::swap(dh, dh_next);
    }
  });
  return true;
}

}  // namespace s2s_fused::cpu
