// Both directions of one bidirectional LSTM / GRU layer in one op, forward and backward, written once for every
// device through the same device policy `PW` as rnn_layer_impl.h (whose helpers this reuses). Step s runs the
// forward direction at time s and the reverse direction at time T-1-s together:
//  - the two input projections are GEMMs before the loop;
//  - per step the two recurrent GEMMs are one batched GEMM over a (2, ...) view when the policy has
//    `gemm_batched` (CUDA: one strided-batched cuBLAS call), else two GEMMs;
//  - per step one pointwise launch covers both directions when the policy has `<kernel>_bidir` (CUDA:
//    gridDim.z = 2), else the single-direction kernel runs twice (CPU: the policy of csrc/cpu/rnn_pointwise_cpu.h,
//    which is how this template is tested without a GPU);
//  - the whole per-step loop goes through `pw.run_steps(key, fn)` when the policy has it (CUDA: replayed as a CUDA
//    graph when S2S_FUSED_CUDA_GRAPH=1, csrc/cuda/rnn_graph.h; rnn_step_loop.h), else it just runs.
//
// Buffers are direction-stacked and in time layout, so direction d's slice is exactly what the single-direction op
// returns for that direction (reverse = d == 1): hs, cs (2, T+1, B, H); workspace (2, T, B, G'H). At step s the
// two directions' slices (time s of direction 0, time T-1-s of direction 1) form one strided (2, rows, cols) view
// whose direction stride changes with s (pair_view). output (T, B, 2H) is the two directions' outputs
// concatenated (as the modules feed the next layer); h0, c0, h_n, c_n (2, B, H), direction-major as torch's hx.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <functional>
#include <optional>
#include <tuple>
#include <vector>

#include "rnn_layer_impl.h"
#include "rnn_step_loop.h"  // StepLoopKey, run_steps (CUDA graph hook)

namespace s2s_fused {

namespace bidir {

// The (2, R, C) view of a direction-stacked contiguous buffer (2, N, R, C): [0] = buf[0][i0], [1] = buf[1][i1].
inline at::Tensor pair_view(const at::Tensor& buf, int64_t i0, int64_t i1) {
  const int64_t N = buf.size(1), R = buf.size(2), C = buf.size(3), slab = R * C;
  const int64_t off0 = i0 * slab, off1 = (N + i1) * slab;
  return buf.as_strided({2, R, C}, {off1 - off0, C, 1}, buf.storage_offset() + off0);
}

// Direction d's (R, C) slice of a (2, R, C) view.
inline at::Tensor dir(const at::Tensor& t, int64_t d) { return t.select(0, d); }

// Direction d's (B, H) columns of a (B, 2H) output row block.
inline at::Tensor out_cols(const at::Tensor& out_t, int64_t d, int64_t H) { return out_t.narrow(1, d * H, H); }

// What a policy offers beyond rnn_layer_impl.h's interface (each optional; the template falls back without it).
template <class PW>
constexpr bool has_bidir_pointwise =
    requires(const PW& pw, const LstmForwardParams& lf, const LstmBackwardParams& lb, const GruForwardParams& gf,
             const GruBackwardParams& gb, int64_t B) {
      pw.lstm_forward_bidir(lf, lf, B);
      pw.lstm_backward_bidir(lb, lb, B);
      pw.gru_forward_bidir(gf, gf, B);
      pw.gru_forward_stage2_bidir(gf, gf, B);
      pw.gru_backward_bidir(gb, gb, B);
      pw.gru_backward_stage2_bidir(gb, gb, B);
    };
template <class PW>
constexpr bool has_batched_gemm = requires(const PW& pw, at::Tensor& o, const at::Tensor& a, bool acc) {
  pw.gemm_batched(o, a, a, acc);
};
// Both directions' pointwise step in one call where the policy offers it, else the single-direction kernel twice.
#define S2S_BIDIR_POINTWISE(name, P)                                                      \
  template <class PW>                                                                     \
  void name(const PW& pw, const P& p0, const P& p1, int64_t B) {                          \
    if constexpr (has_bidir_pointwise<PW>) {                                       \
      pw.name##_bidir(p0, p1, B);                                                         \
    } else {                                                                              \
      pw.name(p0, B);                                                                     \
      pw.name(p1, B);                                                                     \
    }                                                                                     \
  }
S2S_BIDIR_POINTWISE(lstm_forward, LstmForwardParams)
S2S_BIDIR_POINTWISE(lstm_backward, LstmBackwardParams)
S2S_BIDIR_POINTWISE(gru_forward, GruForwardParams)
S2S_BIDIR_POINTWISE(gru_forward_stage2, GruForwardParams)
S2S_BIDIR_POINTWISE(gru_backward, GruBackwardParams)
S2S_BIDIR_POINTWISE(gru_backward_stage2, GruBackwardParams)
#undef S2S_BIDIR_POINTWISE

// out[d] = a[d] @ b[d] (+ out[d]) for d = 0, 1: one batched GEMM where the policy offers it, else two.
template <class PW>
void gemm(const PW& pw, const at::Tensor& out, const at::Tensor& a, const at::Tensor& b, bool accumulate) {
  if constexpr (has_batched_gemm<PW>) {
    at::Tensor o = out;
    pw.gemm_batched(o, a, b, accumulate);
  } else {
    for (int64_t d = 0; d < 2; ++d) {
      at::Tensor o = out.select(0, d);
      pw.gemm(o, a.select(0, d), b.select(0, d), accumulate);
    }
  }
}

// Direction d's arguments: the shared input and lengths mask, direction d's initial state and weights.
using BidirArgs = std::pair<LayerArgs, LayerArgs>;
inline BidirArgs check_bidir_args(
    const at::Tensor& input, const at::Tensor& h0, const at::Tensor& w_ih, const at::Tensor& w_hh,
    const std::optional<at::Tensor>& b_ih, const std::optional<at::Tensor>& b_hh, const at::Tensor& w_ih_r,
    const at::Tensor& w_hh_r, const std::optional<at::Tensor>& b_ih_r, const std::optional<at::Tensor>& b_hh_r,
    const std::optional<at::Tensor>& lengths, int64_t gates) {
  check_dim(input, 3, "input");
  check_dim(h0, 3, "h0");
  check_size(h0, 0, 2, "h0");
  check_size(h0, 1, input.size(1), "h0");
  LayerArgs a0 = check_layer_args(input, h0.select(0, 0), w_ih, w_hh, b_ih, b_hh, lengths, gates);
  LayerArgs a1 = check_layer_args(a0.input, h0.select(0, 1), w_ih_r, w_hh_r, b_ih_r, b_hh_r, std::nullopt, gates,
                                  "_r");
  a1.active = a0.active;
  return {a0, a1};
}

// grad_output (T, B, 2H), zero at inactive steps; undefined when absent.
inline at::Tensor masked_grad_output2(const std::optional<at::Tensor>& grad_output, const LayerArgs& a) {
  if (!grad_output.has_value() || !grad_output->defined()) return at::Tensor();
  const at::Tensor& g = *grad_output;
  check_saved(g, {a.T, a.B, 2 * a.H}, a.input, "grad_output");
  if (a.active.defined()) return g.mul(a.active.unsqueeze(2).to(g.scalar_type()));
  return g.contiguous();
}

// (2, B, H) initial state gradient: grad of h_n / c_n, or zeros.
inline at::Tensor grad_state_init2(const std::optional<at::Tensor>& g, const LayerArgs& a, const char* name) {
  if (!g.has_value() || !g->defined()) return at::zeros({2, a.B, a.H}, a.input.options());
  check_saved(*g, {2, a.B, a.H}, a.input, name);
  return g->contiguous();
}

// The persistent recurrence covers B <= 8 (csrc/cuda/rnn_pointwise.cuh); above it the per-direction (T, B, H)
// outputs it needs are not even allocated. A larger limit there only needs this raised.
constexpr int64_t kPersistentMaxBatch = 8;

inline int64_t time_of(int64_t s, int64_t T, int64_t d) { return d == 0 ? s : T - 1 - s; }

// The final states (2, B, H) of a (2, T+1, B, H) state buffer: forward direction after time T-1, reverse after
// time 0.
inline at::Tensor final_states(const at::Tensor& s, int64_t T) {
  return at::stack({s.select(0, 0).select(0, T), s.select(0, 1).select(0, 0)});
}

inline void key_header(StepLoopKey& k, int64_t op, const LayerArgs& a0, const LayerArgs& a1) {
  k.add_all(op, static_cast<int64_t>(a0.input.scalar_type()), static_cast<int64_t>(a0.input.device().type()),
            static_cast<int64_t>(a0.input.device().index()), a0.T, a0.B, a0.I, a0.H);
  k.add_all(a0.b_ih, a0.b_hh, a1.b_ih, a1.b_hh, a0.active);
}

}  // namespace bidir

// ------------------------------------------------------------------------------------------------ LSTM

// Returns (output (T, B, 2H), h_n (2, B, H), c_n (2, B, H), hs (2, T+1, B, H), cs (2, T+1, B, H),
// workspace (2, T, B, 4H)).
template <class PW>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> lstm_layer_bidir_forward_impl(
    const PW& pw, const at::Tensor& input, const at::Tensor& h0, const at::Tensor& c0, const at::Tensor& w_ih,
    const at::Tensor& w_hh, const std::optional<at::Tensor>& b_ih, const std::optional<at::Tensor>& b_hh,
    const at::Tensor& w_ih_r, const at::Tensor& w_hh_r, const std::optional<at::Tensor>& b_ih_r,
    const std::optional<at::Tensor>& b_hh_r, const std::optional<at::Tensor>& lengths) {
  using namespace bidir;
  const BidirArgs aa = check_bidir_args(input, h0, w_ih, w_hh, b_ih, b_hh, w_ih_r, w_hh_r, b_ih_r, b_hh_r,
                                       lengths, 4);
  const LayerArgs& a0 = aa.first;
  const LayerArgs& a1 = aa.second;
  check_saved(c0, h0.sizes(), input, "c0", " (as h0)");
  const int64_t T = a0.T, B = a0.B, H = a0.H, I = a0.I;
  const auto opts = a0.input.options();
  const LayerArgs* args[2] = {&a0, &a1};
  const at::Tensor x = a0.input.view({T * B, I});
  // Per direction, the gate buffer starts as the input projection (one GEMM each), takes each step's recurrent
  // GEMM in place and is activated in place: the workspace backward reads.
  at::Tensor gates = at::empty({2, T, B, 4 * H}, opts);
  at::Tensor hs = at::empty({2, T + 1, B, H}, opts), cs = at::empty({2, T + 1, B, H}, opts);
  at::Tensor output = at::empty({T, B, 2 * H}, opts);
  for (int64_t d = 0; d < 2; ++d) {
    at::Tensor g = gates.select(0, d).view({T * B, 4 * H});
    pw.gemm(g, x, args[d]->w_ih.t(), false);
    hs.select(0, d).select(0, d == 0 ? 0 : T).copy_(h0.select(0, d));
    cs.select(0, d).select(0, d == 0 ? 0 : T).copy_(c0.select(0, d));
  }
  if (T == 0 || B == 0 || H == 0) return {output, final_states(hs, T), final_states(cs, T), hs, cs, gates};
  // Small batch on CUDA: the persistent kernel per direction (one launch each for the whole sequence).
  if (B <= kPersistentMaxBatch) {
    at::Tensor out0 = at::empty({T, B, H}, opts), out1 = at::empty({T, B, H}, opts);
    if (run_persistent(pw, a0, /*gru=*/false, /*reverse=*/false, /*reset_after=*/true, /*fuse_input=*/false,
                       gates.select(0, 0), at::Tensor(), at::Tensor(),
                       hs.select(0, 0), cs.select(0, 0), out0)) {
      TORCH_CHECK(run_persistent(pw, a1, false, true, true, false, gates.select(0, 1), at::Tensor(), at::Tensor(),
                                 hs.select(0, 1), cs.select(0, 1), out1),
                  "s2s_fused: internal error: the persistent recurrence ran one direction but not the other");
      at::cat_out(output, {out0, out1}, 2);
      return {output, final_states(hs, T), final_states(cs, T), hs, cs, gates};
    }
  }
  const at::Tensor w_hh_t = at::stack({a0.w_hh, a1.w_hh}).transpose(1, 2);  // (2, H, 4H)
  LstmForwardParams p[2];
  for (int64_t d = 0; d < 2; ++d) {
    p[d].dtype = to_dtype(input.scalar_type());
    p[d].H = H;
    p[d].b1 = ptr_or_null(args[d]->b_ih);
    p[d].b2 = ptr_or_null(args[d]->b_hh);
  }
  StepLoopKey key;
  key_header(key, /*op=*/1, a0, a1);
  key.add_all(gates, hs, cs, output, w_hh_t);
  run_steps(pw, key, [&] {
    for (int64_t s = 0; s < T; ++s) {
      const at::Tensor g = pair_view(gates, s, T - 1 - s);
      const at::Tensor hprev = pair_view(hs, s, T - s);  // state_prev: hs[0][s], hs[1][(T-1-s) + 1]
      bidir::gemm(pw, g, hprev, w_hh_t, /*accumulate=*/true);
      for (int64_t d = 0; d < 2; ++d) {
        const int64_t t = time_of(s, T, d);
        const bool rev = d == 1;
        p[d].g1 = cmat(dir(g, d));
        p[d].ws = mat(dir(g, d));
        p[d].cx = cmat(state_prev(cs.select(0, d), t, rev));
        p[d].hx = cmat(dir(hprev, d));
        p[d].h1 = mat(state_next(hs.select(0, d), t, rev));
        p[d].c1 = mat(state_next(cs.select(0, d), t, rev));
        p[d].out = mat(out_cols(output.select(0, t), d, H));
        p[d].active = active_row(a0.active, t);
      }
      bidir::lstm_forward(pw, p[0], p[1], B);
    }
  });
  return {output, final_states(hs, T), final_states(cs, T), hs, cs, gates};
}

// Returns (grad_input, grad_h0 (2, B, H), grad_c0 (2, B, H), grad_w_ih, grad_w_hh, grad_bias, grad_w_ih_r,
// grad_w_hh_r, grad_bias_r).
template <class PW>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
lstm_layer_bidir_backward_impl(const PW& pw, const std::optional<at::Tensor>& grad_output,
                               const std::optional<at::Tensor>& grad_h_n, const std::optional<at::Tensor>& grad_c_n,
                               const at::Tensor& input, const at::Tensor& w_ih, const at::Tensor& w_hh,
                               const at::Tensor& w_ih_r, const at::Tensor& w_hh_r, const at::Tensor& hs,
                               const at::Tensor& cs, const at::Tensor& workspace,
                               const std::optional<at::Tensor>& lengths) {
  using namespace bidir;
  check_state_history(hs, input, 2);
  const BidirArgs aa = check_bidir_args(input, hs.select(1, 0), w_ih, w_hh, std::nullopt, std::nullopt, w_ih_r,
                                       w_hh_r, std::nullopt, std::nullopt, lengths, 4);
  const LayerArgs& a0 = aa.first;
  const LayerArgs& a1 = aa.second;
  const int64_t T = a0.T, B = a0.B, H = a0.H, I = a0.I;
  const auto opts = a0.input.options();
  check_saved(cs, {2, T + 1, B, H}, input, "cs");
  check_saved(workspace, {2, T, B, 4 * H}, input, "workspace");
  const at::Tensor go = masked_grad_output2(grad_output, a0);
  const at::Tensor ws = workspace.contiguous(), hsc = hs.contiguous(), csc = cs.contiguous();
  // dh alternates between two (2, B, H) buffers (step k reads dh_buf[k % 2], writes dh_buf[(k + 1) % 2]), so
  // which one holds the result depends on T only, not on host state the loop changes (CUDA graph replay).
  at::Tensor dh_buf = at::empty({2, 2, B, H}, opts);
  dh_buf.select(0, 0).copy_(grad_state_init2(grad_h_n, a0, "grad_h_n"));
  at::Tensor dc = grad_state_init2(grad_c_n, a0, "grad_c_n").clone();
  at::Tensor dgates = at::empty({2, T, B, 4 * H}, opts);
  if (T > 0 && B > 0 && H > 0) {
    const at::Tensor w_hh_s = at::stack({a0.w_hh, a1.w_hh});  // (2, 4H, H)
    LstmBackwardParams p[2];
    for (int64_t d = 0; d < 2; ++d) {
      p[d].dtype = to_dtype(input.scalar_type());
      p[d].H = H;
    }
    StepLoopKey key;
    key_header(key, /*op=*/2, a0, a1);
    key.add_all(go, ws, hsc, csc, dh_buf, dc, dgates, w_hh_s);
    run_steps(pw, key, [&] {
      for (int64_t k = 0; k < T; ++k) {
        const int64_t s = T - 1 - k;
        const at::Tensor dh = dh_buf.select(0, k % 2), dh_next = dh_buf.select(0, (k + 1) % 2);
        const at::Tensor dg = pair_view(dgates, s, T - 1 - s);
        for (int64_t d = 0; d < 2; ++d) {
          const int64_t t = time_of(s, T, d);
          const bool rev = d == 1;
          p[d].dh1 = go.defined() ? cmat(out_cols(go.select(0, t), d, H)) : CMat{};
          p[d].dh2 = cmat(dir(dh, d));
          p[d].dc1 = cmat(dir(dc, d));
          p[d].ws = cmat(ws.select(0, d).select(0, t));
          p[d].cx = cmat(state_prev(csc.select(0, d), t, rev));
          p[d].c1 = cmat(state_next(csc.select(0, d), t, rev));
          p[d].dgates = mat(dir(dg, d));
          p[d].dcx = mat(dir(dc, d));  // in place: each element of dc is read before it is overwritten
          p[d].active = active_row(a0.active, t);
          p[d].dhx = mat(dir(dh_next, d));
        }
        const bool masked = a0.active.defined();
        if (masked) dh_next.zero_();  // finished rows get dh passed through by the kernel, the others dg @ W_hh
        bidir::lstm_backward(pw, p[0], p[1], B);
        bidir::gemm(pw, dh_next, dg, w_hh_s, /*accumulate=*/masked);
      }
    });
  }
  const at::Tensor x = a0.input.view({T * B, I});
  const LayerArgs* args[2] = {&a0, &a1};
  at::Tensor grad_input = at::empty({T * B, I}, opts);
  at::Tensor gw_ih[2], gw_hh[2], gb[2];
  for (int64_t d = 0; d < 2; ++d) {
    const at::Tensor dg2 = dgates.select(0, d).view({T * B, 4 * H});
    pw.gemm(grad_input, dg2, args[d]->w_ih, /*accumulate=*/d == 1);
    gw_ih[d] = mm(pw, dg2.t(), x);
    gw_hh[d] = mm(pw, dg2.t(), states_read(hsc.select(0, d), T, d == 1));
    gb[d] = dg2.sum(0);
  }
  return {grad_input.view({T, B, I}), dh_buf.select(0, T % 2), dc, gw_ih[0], gw_hh[0], gb[0],
          gw_ih[1], gw_hh[1], gb[1]};
}

// ------------------------------------------------------------------------------------------------- GRU

// Returns (output (T, B, 2H), h_n (2, B, H), hs (2, T+1, B, H), workspace (2, T, B, 4H) reset_after /
// (2, T, B, 3H) reset_before).
template <class PW>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> gru_layer_bidir_forward_impl(
    const PW& pw, const at::Tensor& input, const at::Tensor& h0, const at::Tensor& w_ih, const at::Tensor& w_hh,
    const std::optional<at::Tensor>& b_ih, const std::optional<at::Tensor>& b_hh, const at::Tensor& w_ih_r,
    const at::Tensor& w_hh_r, const std::optional<at::Tensor>& b_ih_r, const std::optional<at::Tensor>& b_hh_r,
    const std::optional<at::Tensor>& lengths, bool reset_after) {
  using namespace bidir;
  const BidirArgs aa = check_bidir_args(input, h0, w_ih, w_hh, b_ih, b_hh, w_ih_r, w_hh_r, b_ih_r, b_hh_r,
                                       lengths, 3);
  const LayerArgs& a0 = aa.first;
  const LayerArgs& a1 = aa.second;
  const int64_t T = a0.T, B = a0.B, H = a0.H, I = a0.I;
  const auto opts = a0.input.options();
  const LayerArgs* args[2] = {&a0, &a1};
  const at::Tensor x = a0.input.view({T * B, I});
  at::Tensor gi = at::empty({2, T, B, 3 * H}, opts);
  at::Tensor hs = at::empty({2, T + 1, B, H}, opts), output = at::empty({T, B, 2 * H}, opts);
  for (int64_t d = 0; d < 2; ++d) {
    at::Tensor g = gi.select(0, d).view({T * B, 3 * H});
    pw.gemm(g, x, args[d]->w_ih.t(), false);
    hs.select(0, d).select(0, d == 0 ? 0 : T).copy_(h0.select(0, d));
  }
  // Rows of finished steps are never written by the kernels; zeros keep the returned workspace deterministic.
  const int64_t ws_cols = reset_after ? 4 * H : 3 * H;
  at::Tensor ws = a0.active.defined() ? at::zeros({2, T, B, ws_cols}, opts) : at::empty({2, T, B, ws_cols}, opts);
  if (T == 0 || B == 0 || H == 0) return {output, final_states(hs, T), hs, ws};
  if (reset_after && B <= kPersistentMaxBatch) {
    at::Tensor out0 = at::empty({T, B, H}, opts), out1 = at::empty({T, B, H}, opts);
    if (run_persistent(pw, a0, /*gru=*/true, /*reverse=*/false, reset_after, /*fuse_input=*/false, at::Tensor(), gi.select(0, 0), ws.select(0, 0),
                       hs.select(0, 0), at::Tensor(), out0)) {
      TORCH_CHECK(run_persistent(pw, a1, true, true, reset_after, false, at::Tensor(), gi.select(0, 1), ws.select(0, 1),
                                 hs.select(0, 1), at::Tensor(), out1),
                  "s2s_fused: internal error: the persistent recurrence ran one direction but not the other");
      at::cat_out(output, {out0, out1}, 2);
      return {output, final_states(hs, T), hs, ws};
    }
  }
  // reset_before: the r, z columns of W_hh act on h, the n columns on r * h (a second GEMM per step).
  const at::Tensor w_hh_s = at::stack({a0.w_hh, a1.w_hh});  // (2, 3H, H)
  const at::Tensor w_rz_t = (reset_after ? w_hh_s : w_hh_s.narrow(1, 0, 2 * H)).transpose(1, 2);
  const at::Tensor w_hn_t = w_hh_s.narrow(1, 2 * H, H).transpose(1, 2);
  at::Tensor gh = at::empty({2, B, (reset_after ? 3 : 2) * H}, opts);
  at::Tensor rh, ghn;
  if (!reset_after) {
    rh = at::empty({2, B, H}, opts);
    ghn = at::empty({2, B, H}, opts);
  }
  GruForwardParams p[2];
  for (int64_t d = 0; d < 2; ++d) {
    p[d].dtype = to_dtype(input.scalar_type());
    p[d].H = H;
    p[d].reset_after = reset_after;
    p[d].b_ih = ptr_or_null(args[d]->b_ih);
    p[d].b_hh = ptr_or_null(args[d]->b_hh);
    if (!reset_after) {
      p[d].rh = mat(dir(rh, d));
      p[d].ghn = cmat(dir(ghn, d));
    }
  }
  StepLoopKey key;
  key_header(key, /*op=*/3, a0, a1);
  key.add_all(static_cast<int64_t>(reset_after), gi, hs, output, ws, w_hh_s, gh, rh, ghn);
  run_steps(pw, key, [&] {
    for (int64_t s = 0; s < T; ++s) {
      const at::Tensor hprev = pair_view(hs, s, T - s);
      bidir::gemm(pw, gh, hprev, w_rz_t, false);
      for (int64_t d = 0; d < 2; ++d) {
        const int64_t t = time_of(s, T, d);
        p[d].gi = cmat(gi.select(0, d).select(0, t));
        p[d].gh = cmat(dir(gh, d));
        p[d].hx = cmat(dir(hprev, d));
        p[d].h1 = mat(state_next(hs.select(0, d), t, d == 1));
        p[d].ws = mat(ws.select(0, d).select(0, t));
        p[d].out = mat(out_cols(output.select(0, t), d, H));
        p[d].active = active_row(a0.active, t);
      }
      bidir::gru_forward(pw, p[0], p[1], B);
      if (!reset_after) {
        bidir::gemm(pw, ghn, rh, w_hn_t, false);
        bidir::gru_forward_stage2(pw, p[0], p[1], B);
      }
    }
  });
  return {output, final_states(hs, T), hs, ws};
}

// Returns (grad_input, grad_h0 (2, B, H), grad_w_ih, grad_w_hh, grad_b_ih, grad_b_hh, grad_w_ih_r, grad_w_hh_r,
// grad_b_ih_r, grad_b_hh_r).
template <class PW>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
           at::Tensor>
gru_layer_bidir_backward_impl(const PW& pw, const std::optional<at::Tensor>& grad_output,
                              const std::optional<at::Tensor>& grad_h_n, const at::Tensor& input,
                              const at::Tensor& w_ih, const at::Tensor& w_hh, const at::Tensor& w_ih_r,
                              const at::Tensor& w_hh_r, const at::Tensor& hs, const at::Tensor& workspace,
                              const std::optional<at::Tensor>& lengths, bool reset_after) {
  using namespace bidir;
  check_state_history(hs, input, 2);
  const BidirArgs aa = check_bidir_args(input, hs.select(1, 0), w_ih, w_hh, std::nullopt, std::nullopt, w_ih_r,
                                       w_hh_r, std::nullopt, std::nullopt, lengths, 3);
  const LayerArgs& a0 = aa.first;
  const LayerArgs& a1 = aa.second;
  const int64_t T = a0.T, B = a0.B, H = a0.H, I = a0.I;
  const auto opts = a0.input.options();
  check_saved(workspace, {2, T, B, (reset_after ? 4 : 3) * H}, input, "workspace");
  const at::Tensor go = masked_grad_output2(grad_output, a0);
  const at::Tensor ws = workspace.contiguous(), hsc = hs.contiguous();
  at::Tensor dh_buf = at::empty({2, 2, B, H}, opts);
  dh_buf.select(0, 0).copy_(grad_state_init2(grad_h_n, a0, "grad_h_n"));
  at::Tensor dgi = at::empty({2, T, B, 3 * H}, opts);
  // reset_after: dgh differs from dgi in its n columns (dn * r); reset_before: dgi serves both (as in
  // rnn_layer_impl.h) and rh = r * h is kept per step for the W_hn gradient.
  at::Tensor dgh = reset_after ? at::empty({2, T, B, 3 * H}, opts) : dgi;
  at::Tensor rh_all, drh;
  if (!reset_after) {
    rh_all = at::empty({2, T, B, H}, opts);
    drh = at::empty({2, B, H}, opts);
  }
  if (T > 0 && B > 0 && H > 0) {
    const at::Tensor w_hh_s = at::stack({a0.w_hh, a1.w_hh});  // (2, 3H, H)
    const at::Tensor w_rz = reset_after ? w_hh_s : w_hh_s.narrow(1, 0, 2 * H);
    const at::Tensor w_hn = w_hh_s.narrow(1, 2 * H, H);
    GruBackwardParams p[2];
    for (int64_t d = 0; d < 2; ++d) {
      p[d].dtype = to_dtype(input.scalar_type());
      p[d].H = H;
      p[d].reset_after = reset_after;
      if (!reset_after) p[d].drh = cmat(dir(drh, d));
    }
    StepLoopKey key;
    key_header(key, /*op=*/4, a0, a1);
    key.add_all(static_cast<int64_t>(reset_after), go, ws, hsc, dh_buf, dgi, dgh, rh_all, drh, w_hh_s);
    run_steps(pw, key, [&] {
      for (int64_t k = 0; k < T; ++k) {
        const int64_t s = T - 1 - k;
        const at::Tensor dh = dh_buf.select(0, k % 2), dh_next = dh_buf.select(0, (k + 1) % 2);
        const at::Tensor dgi_p = pair_view(dgi, s, T - 1 - s), dgh_p = pair_view(dgh, s, T - 1 - s);
        for (int64_t d = 0; d < 2; ++d) {
          const int64_t t = time_of(s, T, d);
          p[d].dh1 = go.defined() ? cmat(out_cols(go.select(0, t), d, H)) : CMat{};
          p[d].dh2 = cmat(dir(dh, d));
          p[d].ws = cmat(ws.select(0, d).select(0, t));
          p[d].hx = cmat(state_prev(hsc.select(0, d), t, d == 1));
          p[d].dgi = mat(dir(dgi_p, d));
          p[d].dgh = mat(dir(dgh_p, d));
          p[d].dhx = mat(dir(dh_next, d));
          p[d].active = active_row(a0.active, t);
          if (!reset_after) p[d].rh = mat(rh_all.select(0, d).select(0, t));
        }
        bidir::gru_backward(pw, p[0], p[1], B);
        if (reset_after) {
          bidir::gemm(pw, dh_next, dgh_p, w_rz, true);
        } else {
          bidir::gemm(pw, drh, dgi_p.narrow(2, 2 * H, H), w_hn, false);
          bidir::gru_backward_stage2(pw, p[0], p[1], B);
          bidir::gemm(pw, dh_next, dgi_p.narrow(2, 0, 2 * H), w_rz, true);
        }
      }
    });
  }
  const at::Tensor x = a0.input.view({T * B, I});
  const LayerArgs* args[2] = {&a0, &a1};
  at::Tensor grad_input = at::empty({T * B, I}, opts);
  at::Tensor gw_ih[2], gw_hh[2], gb_ih[2], gb_hh[2];
  for (int64_t d = 0; d < 2; ++d) {
    const at::Tensor dgi2 = dgi.select(0, d).view({T * B, 3 * H}), dgh2 = dgh.select(0, d).view({T * B, 3 * H});
    const at::Tensor h_read = states_read(hsc.select(0, d), T, d == 1);
    pw.gemm(grad_input, dgi2, args[d]->w_ih, /*accumulate=*/d == 1);
    gw_ih[d] = mm(pw, dgi2.t(), x);
    if (reset_after) {
      gw_hh[d] = mm(pw, dgh2.t(), h_read);
    } else {
      gw_hh[d] = at::empty({3 * H, H}, opts);
      at::Tensor g_rz = gw_hh[d].narrow(0, 0, 2 * H), g_n = gw_hh[d].narrow(0, 2 * H, H);
      pw.gemm(g_rz, dgi2.narrow(1, 0, 2 * H).t(), h_read, false);
      pw.gemm(g_n, dgi2.narrow(1, 2 * H, H).t(), rh_all.select(0, d).view({T * B, H}), false);
    }
    gb_ih[d] = dgi2.sum(0);
    gb_hh[d] = reset_after ? dgh2.sum(0) : gb_ih[d].clone();
  }
  return {grad_input.view({T, B, I}), dh_buf.select(0, T % 2), gw_ih[0], gw_hh[0], gb_ih[0], gb_hh[0],
          gw_ih[1], gw_hh[1], gb_ih[1], gb_hh[1]};
}

}  // namespace s2s_fused
