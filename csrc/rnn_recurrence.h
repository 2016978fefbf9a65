// The recurrence of one LSTM / GRU layer over a whole sequence, D in {1, 2} directions, forward (training, or
// inference keeping nothing for backward) and backward, written once for every device through the interface of
// csrc/rnn_device.h. Shapes and the time layout: csrc/rnn_core.h.
//
// Structure (haste's): the input projections of all T steps are one GEMM per direction before the loop; per step
// one recurrent GEMM for all directions (batched over them when D = 2) into the gate rows and one pointwise pass;
// backward per step one pointwise pass and one dh GEMM, then the weight gradients as GEMMs over all T·B rows and the
// bias gradients as column sums (no atomics: deterministic). A device that can run the whole loop itself
// (run_sequence: CPU fp32 with packed weights, CUDA's persistent kernel at small batch) does so instead, on the
// same buffers, so both paths give the same layouts.
//
// Variable lengths: an inactive step of a row keeps its state and writes zeros to the output, so the forward
// direction's final state is each sequence's state at its own last step and the reverse direction starts there.
#pragma once

#include <ATen/ATen.h>

#include <array>
#include <optional>
#include <string>
#include <vector>

#include "checks.h"
#include "rnn_device.h"

namespace s2s_fused {

// ------------------------------------------------------------------------------------------------ arguments

struct LayerArgs {  // one direction's checked arguments
  at::Tensor input, h0, w_ih, w_hh, b_ih, b_hh, active;  // input (T, B, I) contiguous; active (T, B) uint8 or undefined
  int64_t T, B, I, H;
  at::Tensor w_hr;  // LSTM projection (P, H) contiguous, or undefined
  int64_t P;        // the state h's width: h0.size(1); H = P without a projection
};

// (T, B) uint8 mask of the active steps, on the input's device (no host sync).
inline at::Tensor active_mask(const std::optional<at::Tensor>& lengths, const at::Tensor& input, int64_t T,
                              int64_t B) {
  if (!lengths.has_value() || !lengths->defined()) return at::Tensor();
  const at::Tensor& len = *lengths;
  TORCH_CHECK(len.dim() == 1 && len.size(0) == B, "lengths: expected shape (", B, ",), got ", len.sizes());
  TORCH_CHECK(at::isIntegralType(len.scalar_type(), /*includeBool=*/false), "lengths: expected an integer tensor, got ",
              len.scalar_type());
  // Read where it lies or copied from the CPU (the public functions accept CPU lengths for device input).
  TORCH_CHECK(len.device().is_cpu() || len.device() == input.device(), "lengths: expected device cpu or ",
              input.device(), " (as input), got ", len.device());
  const at::Tensor l = len.to(input.device(), at::kLong, /*non_blocking=*/true);
  const at::Tensor steps = at::arange(T, l.options());
  return steps.unsqueeze(1).lt(l.unsqueeze(0)).to(at::kByte).contiguous();
}

// w_hr: an LSTM's projection (P, H), P = h0.size(1) (the hidden size H is then w_hr's second dim, and w_hh is
// (G·H, P)); none: H = h0.size(1).
inline LayerArgs check_layer_args(const at::Tensor& input, const at::Tensor& h0, const at::Tensor& w_ih,
                                  const at::Tensor& w_hh, const std::optional<at::Tensor>& b_ih,
                                  const std::optional<at::Tensor>& b_hh, const std::optional<at::Tensor>& lengths,
                                  int64_t gates, const std::string& suffix = "",
                                  const std::optional<at::Tensor>& w_hr = std::nullopt) {
  check_dim(input, 3, "input");
  check_dim(h0, 2, "h0");
  check_floating(input, "input");
  check_same(h0, input, "h0", "input");
  const int64_t T = input.size(0), B = input.size(1), I = input.size(2), P = h0.size(1);
  check_size(h0, 0, B, "h0");
  const at::Tensor wr = contiguous_or_undefined(w_hr);
  if (wr.defined()) check_projection(input, wr, P, suffix);
  const int64_t H = wr.defined() ? wr.size(1) : P;
  LayerArgs a{input.contiguous(), h0.contiguous(), w_ih, w_hh, contiguous_or_undefined(b_ih),
              contiguous_or_undefined(b_hh), active_mask(lengths, input, T, B), T, B, I, H, wr, P};
  check_rnn_weights(input, w_ih, w_hh, a.b_ih, a.b_hh, gates, I, H, suffix, P);
  return a;
}

// A backward op's saved state history hs (D, T+1, B, H) (one direction: (T+1, B, H)): checked first, under its own
// name, since the other arguments are then checked against the hidden size it carries.
inline void check_state_history(const at::Tensor& hs, const at::Tensor& input, int64_t D) {
  check_dim(input, 3, "input");
  check_floating(input, "input");
  check_dim(hs, 2 + D, "hs");
  const int64_t T = input.size(0), B = input.size(1), H = hs.size(-1);
  check_saved(hs, D == 2 ? std::vector<int64_t>{2, T + 1, B, H} : std::vector<int64_t>{T + 1, B, H}, input, "hs");
}

// One layer, D directions over the same input (the two directions of a bidirectional layer run reversed = d == 1).
struct Layer {
  CellKind kind;
  int64_t D;
  std::array<bool, 2> reverse;
  std::array<LayerArgs, 2> dir;  // dir[0] carries the shared input and lengths mask

  const LayerArgs& a() const { return dir[0]; }
  bool projected() const { return dir[0].w_hr.defined(); }
  // A (D, ...) tensor as the ops return it: one direction drops the D.
  at::Tensor per_op(const at::Tensor& t) const { return D == 1 ? t.select(0, 0) : t; }
  // The shape of a (D, ...) tensor as the ops take it.
  std::vector<int64_t> op_shape(std::vector<int64_t> s) const {
    if (D == 2) s.insert(s.begin(), 2);
    return s;
  }
};

inline Layer one_direction(CellKind kind, const LayerArgs& a, bool reverse) {
  return {kind, 1, {reverse, true}, {a, a}};
}

// Both directions' arguments (h0 (2, B, H)): the shared input and lengths mask, direction d's state and weights
// (the reverse direction's named with "_r").
inline Layer both_directions(CellKind kind, const at::Tensor& input, const at::Tensor& h0, const at::Tensor& w_ih,
                             const at::Tensor& w_hh, const std::optional<at::Tensor>& b_ih,
                             const std::optional<at::Tensor>& b_hh, const at::Tensor& w_ih_r, const at::Tensor& w_hh_r,
                             const std::optional<at::Tensor>& b_ih_r, const std::optional<at::Tensor>& b_hh_r,
                             const std::optional<at::Tensor>& lengths) {
  const int64_t G = gate_count(kind);
  check_dim(input, 3, "input");
  check_dim(h0, 3, "h0");
  check_size(h0, 0, 2, "h0");
  check_size(h0, 1, input.size(1), "h0");
  const LayerArgs a0 = check_layer_args(input, h0.select(0, 0), w_ih, w_hh, b_ih, b_hh, lengths, G);
  LayerArgs a1 = check_layer_args(a0.input, h0.select(0, 1), w_ih_r, w_hh_r, b_ih_r, b_hh_r, std::nullopt, G, "_r");
  a1.active = a0.active;
  return {kind, 2, {false, true}, {a0, a1}};
}

// --------------------------------------------------------------------------------------------- buffers

// A (D, n, B, width) buffer from the device, and its Blocks view.
template <class PW>
at::Tensor blocks(const PW& pw, Blocks& view, int64_t D, int64_t n, int64_t B, int64_t width,
                  const at::TensorOptions& options, bool zeros = false) {
  at::Tensor t = zeros ? at::zeros({D, n, B, width}, options) : pw.buffer({D, n, B, width}, options);
  view = {t.data_ptr(), n, B, width};
  return t;
}

inline Blocks blocks_of(const at::Tensor& t) {  // t: a contiguous (D, n, B, width) tensor
  return {t.data_ptr(), t.size(1), t.size(2), t.size(3)};
}

// The step operand of a (D, n, B, C) buffer: block i0 of direction 0 as a (B, C) matrix when D = 1, else a
// (2, B, C) view of direction 0's block i0 and direction 1's block i1, whose direction stride is the blocks'
// distance, so one batched GEMM covers both directions.
inline at::Tensor step_blocks(const at::Tensor& buf, int64_t i0, int64_t i1) {
  const int64_t n = buf.size(1);
  if (n == 1) i0 = i1 = 0;
  if (buf.size(0) == 1) return buf.select(0, 0).select(0, i0);
  const int64_t R = buf.size(2), C = buf.size(3), slab = R * C;
  return buf.as_strided({2, R, C}, {(n + i1 - i0) * slab, C, 1}, buf.storage_offset() + i0 * slab);
}

// Rows [r0, r0 + n) of every direction's W_hh, transposed or not: a matrix when D = 1, stacked (2, ...) when D = 2.
inline at::Tensor step_weight(const Layer& L, int64_t r0, int64_t n, bool transpose) {
  if (L.D == 1) {
    const at::Tensor w = L.dir[0].w_hh.narrow(0, r0, n);
    return transpose ? w.t() : w;
  }
  const at::Tensor w = at::stack({L.dir[0].w_hh.narrow(0, r0, n), L.dir[1].w_hh.narrow(0, r0, n)});
  return transpose ? w.transpose(1, 2) : w;
}

// Every direction's projection W_hr^T: (H, P) when D = 1, stacked (2, H, P) when D = 2.
inline at::Tensor projection_weight(const Layer& L) {
  if (L.D == 1) return L.dir[0].w_hr.t();
  return at::stack({L.dir[0].w_hr, L.dir[1].w_hr}).transpose(1, 2);
}

// The Sequence fields every pass shares: sizes, directions, weights (kept contiguous in `keep`), lengths mask.
inline Sequence sequence_of(const Layer& L, bool history, std::vector<at::Tensor>& keep) {
  const LayerArgs& a = L.a();
  Sequence q;
  q.kind = L.kind;
  q.dtype = to_dtype(a.input.scalar_type());
  q.D = L.D;
  q.T = a.T;
  q.B = a.B;
  q.I = a.I;
  q.H = a.H;
  q.P = a.P;
  q.reverse[0] = L.reverse[0];
  q.reverse[1] = L.reverse[1];
  q.history = history;
  q.active = a.active.defined() ? a.active.const_data_ptr<uint8_t>() : nullptr;
  for (int64_t d = 0; d < L.D; ++d) {
    keep.push_back(L.dir[d].w_hh.contiguous());
    q.w[d].w_hh = keep.back().const_data_ptr();
    q.w[d].b_ih = ptr_or_null(L.dir[d].b_ih);
    q.w[d].b_hh = ptr_or_null(L.dir[d].b_hh);
  }
  return q;
}

inline bool nonempty(const Sequence& q) { return q.T > 0 && q.B > 0 && q.H > 0; }

// ------------------------------------------------------------------------------------------------ forward

// One forward pass's tensors; `seq` views them. gates (LSTM) or gi + ws (GRU), hs, cs: as in Sequence.
struct Forward {
  Sequence seq;
  at::Tensor gates, gi, ws, hs, cs, gh, rh, ghn, output;
  at::Tensor raw;  // projected LSTM (D, 2, B, H): block 0 the step's o ⊙ tanh c, block 1 zeros (below)
  std::vector<at::Tensor> keep;

  // (D, B, H): each direction's final state in `s` (hs or cs).
  at::Tensor final_states(const at::Tensor& s) const {
    if (seq.D == 1) return s.select(0, 0).select(0, seq.layout(0).last()).clone().unsqueeze(0);
    return at::stack({s.select(0, 0).select(0, seq.layout(0).last()), s.select(0, 1).select(0, seq.layout(1).last())});
  }
};

// A projected LSTM's step s after its pointwise pass: h1 = raw W_hr^T into the state slot, and the output; a
// finished row keeps its state and outputs zeros (torch.where on the step's mask: this path is not the hot one).
template <class PW>
void project_step(const PW& pw, const Layer& L, const Forward& f, int64_t s, const at::Tensor& raw,
                  const at::Tensor& w_r) {
  const Sequence& q = f.seq;
  const int64_t P = q.P;
  at::Tensor h1 = step_blocks(f.hs, q.layout(0).write(s), q.layout(q.D - 1).write(s));
  pw.gemm(h1, raw, w_r, false);
  for (int64_t d = 0; d < q.D; ++d) {
    const TimeLayout l = q.layout(d);
    at::Tensor h1d = f.hs.select(0, d).select(0, l.write(s));
    at::Tensor out = f.output.select(0, l.time(s)).narrow(1, d * P, P);
    if (L.a().active.defined()) {
      const at::Tensor keep = L.a().active.select(0, l.time(s)).unsqueeze(1).to(at::kBool);
      h1d.copy_(at::where(keep, h1d, f.hs.select(0, d).select(0, l.read(s))));
      out.copy_(at::where(keep, h1d, at::zeros({}, h1d.options())));
    } else {
      out.copy_(h1d);
    }
  }
}

template <class PW>
void forward_steps(const PW& pw, const Layer& L, const Forward& f) {
  const Sequence& q = f.seq;
  const int64_t D = q.D, T = q.T, B = q.B, H = q.H;
  const bool lstm = q.kind == CellKind::LSTM, before = q.kind == CellKind::GRU_RESET_BEFORE;
  const at::Tensor w_h = step_weight(L, 0, hidden_gates(q.kind) * H, /*transpose=*/true);
  const at::Tensor w_hn = before ? step_weight(L, 2 * H, H, true) : at::Tensor();
  at::Tensor gh = lstm ? at::Tensor() : step_blocks(f.gh, 0, 0);
  at::Tensor ghn = before ? step_blocks(f.ghn, 0, 0) : at::Tensor();
  const at::Tensor rh = before ? step_blocks(f.rh, 0, 0) : at::Tensor();
  const TimeLayout l0 = q.layout(0), l1 = q.layout(D - 1);
  const bool projected = L.projected();
  const at::Tensor w_r = projected ? projection_weight(L) : at::Tensor();
  at::Tensor raw = projected ? step_blocks(f.raw, 0, 0) : at::Tensor();
  for (int64_t s = 0; s < T; ++s) {
    const at::Tensor hprev = step_blocks(f.hs, l0.read(s), l1.read(s));
    if (lstm) {
      at::Tensor g = step_blocks(f.gates, l0.time(s), l1.time(s));
      pw.gemm(g, hprev, w_h, /*accumulate=*/true);
      LstmForwardParams p[2];
      for (int64_t d = 0; d < D; ++d) {
        p[d] = lstm_forward_step(q, d, s);
        if (projected) {
          // The kernel's h is o ⊙ tanh c (H wide), projected below. Its hx is only read for finished rows, which
          // the projection step sets itself: a zero block distinct from h1, so no row is copied onto itself.
          p[d].hx = {f.raw.select(0, d).select(0, 1).const_data_ptr(), H};
          p[d].h1 = {f.raw.select(0, d).select(0, 0).mutable_data_ptr(), H};
          p[d].out = {};
        }
      }
      pw.lstm_forward({p, size_t(D)}, B);
      if (projected) project_step(pw, L, f, s, raw, w_r);
      continue;
    }
    pw.gemm(gh, hprev, w_h, false);
    GruForwardParams p[2];
    for (int64_t d = 0; d < D; ++d) p[d] = gru_forward_step(q, d, s);
    pw.gru_forward({p, size_t(D)}, B);
    if (before) {
      pw.gemm(ghn, rh, w_hn, false);
      pw.gru_forward_stage2({p, size_t(D)}, B);
    }
  }
}

// The device's own whole-sequence loop (run_sequence); a device that keeps prepared copies of the weights across
// calls (the CPU's packed weights) is given the layer, whose weight tensors identify them.
template <class PW>
bool sequence_loop(const PW& pw, const Layer& L, const Sequence& q) {
  if constexpr (requires { pw.run_sequence(q, L); }) {
    return pw.run_sequence(q, L);
  } else {
    return pw.run_sequence(q);
  }
}
template <class PW>
bool sequence_loop_backward(const PW& pw, const Layer& L, const Sequence& q, const SequenceGrads& g) {
  if constexpr (requires { pw.run_sequence_backward(q, g, L); }) {
    return pw.run_sequence_backward(q, g, L);
  } else {
    return pw.run_sequence_backward(q, g);
  }
}

// h0, c0: (D, B, H) (c0 LSTM only). training: everything backward needs is kept (hs, cs, workspace).
// Inference: where the device runs the whole sequence itself from the input (projects_input), the
// states alternate between two slots and the workspace lives one step at a time; elsewhere the per-step loop
// runs as in training: its GEMMs' results may depend on where their operands lie (BLAS picks kernels by
// alignment), and inference gives the training forward's numbers exactly.
template <class PW>
Forward forward(const PW& pw, const Layer& L, const at::Tensor& h0, const at::Tensor& c0, bool training) {
  const LayerArgs& a = L.a();
  const int64_t D = L.D, T = a.T, B = a.B, I = a.I, H = a.H, P = a.P;
  const auto opts = a.input.options();
  const bool lstm = L.kind == CellKind::LSTM;
  const bool projected = L.projected();
  Forward f;
  Sequence& q = f.seq;
  q = sequence_of(L, training, f.keep);
  // The device that projects the input computes each step's projection next to its recurrent product (same
  // micro-kernel, rows still in cache), so none is computed up front.
  // A projected LSTM runs the per-step loop (the devices' own loops have no projection).
  q.fuse_input = nonempty(q) && !projected && pw.projects_input(q.dtype);
  q.history = training || !q.fuse_input;
  const bool history = q.history;
  if (q.fuse_input) {
    q.x = a.input.const_data_ptr();
    for (int64_t d = 0; d < D; ++d) {
      f.keep.push_back(L.dir[d].w_ih.contiguous());
      q.w[d].w_ih = f.keep.back().const_data_ptr();
    }
  }
  const int64_t G = gate_count(L.kind);
  // LSTM: the gate buffer takes the input projections, each step's recurrent GEMM in place, and is then activated
  // in place: the workspace backward reads.
  at::Tensor& proj = lstm ? f.gates : f.gi;
  const int64_t proj_steps = !q.fuse_input || (lstm && history) ? T : 1;
  proj = blocks(pw, lstm ? q.gates : q.gi, D, proj_steps, B, G * H, opts);
  if (!q.fuse_input) {
    const at::Tensor x = a.input.view({T * B, I});
    for (int64_t d = 0; d < D; ++d) {
      at::Tensor p = proj.select(0, d).view({T * B, G * H});
      pw.gemm(p, x, L.dir[d].w_ih.t(), false);
    }
  }
  if (!lstm && (history || L.kind == CellKind::GRU_RESET_BEFORE)) {
    // Rows of finished steps are never written by the kernels; zeros keep the returned workspace deterministic.
    f.ws = blocks(pw, q.ws, D, history ? T : 1, B, workspace_gates(L.kind) * H, opts, history && q.active);
  }
  f.hs = blocks(pw, q.hs, D, q.layout(0).slots(), B, P, opts);
  if (lstm) f.cs = blocks(pw, q.cs, D, q.layout(0).slots(), B, H, opts);
  for (int64_t d = 0; d < D; ++d) {
    f.hs.select(0, d).select(0, q.layout(d).first()).copy_(h0.select(0, d));
    if (lstm) f.cs.select(0, d).select(0, q.layout(d).first()).copy_(c0.select(0, d));
  }
  if (!lstm) f.gh = blocks(pw, q.gh, D, 1, B, hidden_gates(L.kind) * H, opts);
  if (L.kind == CellKind::GRU_RESET_BEFORE) {
    f.rh = blocks(pw, q.rh, D, 1, B, H, opts);
    f.ghn = blocks(pw, q.ghn, D, 1, B, H, opts);
  }
  if (projected) f.raw = at::zeros({D, 2, B, H}, opts);
  f.output = pw.buffer({T, B, D * P}, opts);
  q.out = f.output.data_ptr();
  if (!nonempty(q) || (!projected && sequence_loop(pw, L, q))) return f;
  TORCH_CHECK(!q.fuse_input, "s2s_fused: internal error: the fused input projection was not computed");
  forward_steps(pw, L, f);
  return f;
}

// ----------------------------------------------------------------------------------------------- backward

struct WeightGrads {
  at::Tensor w_ih, w_hh, b_ih, b_hh;  // b_hh undefined for LSTM (one bias gradient)
  at::Tensor w_hr;                    // projected LSTM only
};

struct BackwardResult {
  at::Tensor grad_input, grad_h0, grad_c0;  // grad_h0, grad_c0 (D, B, H)
  std::array<WeightGrads, 2> dir;
};

// A projected LSTM's backward step k, before its pointwise pass: dh = grad_output[t] + the carried state gradient
// (P wide) into dhp (kept, zero on finished rows, for the W_hr gradient), and draw = dhp W_hr, the gradient of
// o ⊙ tanh c that the pointwise kernel takes as its dh.
template <class PW>
void unproject_step(const PW& pw, const Layer& L, const Sequence& q, const at::Tensor& go, const at::Tensor& dh,
                    const at::Tensor& dhp, const at::Tensor& draw, int64_t k) {
  const int64_t s = q.T - 1 - k, P = q.P;
  for (int64_t d = 0; d < q.D; ++d) {
    const int64_t t = q.layout(d).time(s);
    at::Tensor total = dhp.select(0, d).select(0, t);
    total.copy_(dh.select(0, d).select(0, k % 2));
    if (go.defined()) total.add_(go.select(0, t).narrow(1, d * P, P));  // zero at inactive steps
    if (L.a().active.defined()) total.mul_(L.a().active.select(0, t).unsqueeze(1).to(total.scalar_type()));
  }
  at::Tensor dr = step_blocks(draw, 0, 0);
  const at::Tensor w_r = q.D == 1 ? L.dir[0].w_hr : at::stack({L.dir[0].w_hr, L.dir[1].w_hr});
  pw.gemm(dr, step_blocks(dhp, q.layout(0).time(s), q.layout(q.D - 1).time(s)), w_r, false);
}

template <class PW>
void backward_steps(const PW& pw, const Layer& L, const Sequence& q, const SequenceGrads& g, const at::Tensor& dh,
                    const at::Tensor& dgates, const at::Tensor& dgi, const at::Tensor& dgh, const at::Tensor& drh_buf,
                    const at::Tensor& go, const at::Tensor& dhp, const at::Tensor& draw) {
  const int64_t D = q.D, T = q.T, B = q.B, H = q.H;
  const CellKind kind = q.kind;
  const at::Tensor w_h = step_weight(L, 0, hidden_gates(kind) * H, /*transpose=*/false);
  const at::Tensor w_hn = kind == CellKind::GRU_RESET_BEFORE ? step_weight(L, 2 * H, H, false) : at::Tensor();
  at::Tensor drh = drh_buf.defined() ? step_blocks(drh_buf, 0, 0) : at::Tensor();
  const TimeLayout l0 = q.layout(0), l1 = q.layout(D - 1);
  for (int64_t k = 0; k < T; ++k) {
    const int64_t s = T - 1 - k, t0 = l0.time(s), t1 = l1.time(s);
    at::Tensor dh_next = step_blocks(dh, (k + 1) % 2, (k + 1) % 2);
    if (kind == CellKind::LSTM && dhp.defined()) {
      unproject_step(pw, L, q, go, dh, dhp, draw, k);
      LstmBackwardParams p[2];
      for (int64_t d = 0; d < D; ++d) {
        p[d] = lstm_backward_step(q, g, d, k);
        // dh is draw (H wide); the H-wide pass-through of finished rows lands in draw's scratch block 1, unused:
        // their P-wide state gradient is passed through below.
        p[d].dh1 = {draw.select(0, d).select(0, 0).const_data_ptr(), H};
        p[d].dh2 = {};
        p[d].dhx = {draw.select(0, d).select(0, 1).mutable_data_ptr(), H};
      }
      pw.lstm_backward({p, size_t(D)}, B);
      pw.gemm(dh_next, step_blocks(dgates, t0, t1), w_h, /*accumulate=*/false);
      if (q.active) {
        for (int64_t d = 0; d < D; ++d) {
          const int64_t t = q.layout(d).time(s);
          const at::Tensor done = L.a().active.select(0, t).unsqueeze(1).logical_not().to(dh.scalar_type());
          dh.select(0, d).select(0, (k + 1) % 2).add_(dh.select(0, d).select(0, k % 2) * done);
        }
      }
      continue;
    }
    if (kind == CellKind::LSTM) {
      LstmBackwardParams p[2];
      for (int64_t d = 0; d < D; ++d) p[d] = lstm_backward_step(q, g, d, k);
      if (q.active) dh_next.zero_();  // finished rows get dh passed through by the kernel, the others dg @ W_hh
      pw.lstm_backward({p, size_t(D)}, B);
      pw.gemm(dh_next, step_blocks(dgates, t0, t1), w_h, /*accumulate=*/q.active != nullptr);
      continue;
    }
    GruBackwardParams p[2];
    for (int64_t d = 0; d < D; ++d) p[d] = gru_backward_step(q, g, d, k);
    pw.gru_backward({p, size_t(D)}, B);
    if (kind == CellKind::GRU_RESET_AFTER) {
      pw.gemm(dh_next, step_blocks(dgh, t0, t1), w_h, true);
    } else {
      const at::Tensor dgi_t = step_blocks(dgi, t0, t1);
      pw.gemm(drh, dgi_t.narrow(-1, 2 * H, H), w_hn, false);
      pw.gru_backward_stage2({p, size_t(D)}, B);
      pw.gemm(dh_next, dgi_t.narrow(-1, 0, 2 * H), w_h, true);
    }
  }
}

// The state gradient given for h_n / c_n ((D, B, width), one direction (B, width)), or zeros.
inline at::Tensor grad_state(const std::optional<at::Tensor>& g, const Layer& L, int64_t width, const char* name) {
  const LayerArgs& a = L.a();
  if (!g.has_value() || !g->defined()) return at::zeros({L.D, a.B, width}, a.input.options());
  check_saved(*g, L.op_shape({a.B, width}), a.input, name);
  return g->reshape({L.D, a.B, width});
}

// hs (D, T+1, B, H), cs (LSTM) and workspace (D, T, B, A·H) as the forward returned them (one direction: without
// the D). Checks what it reads (the saved tensors against the sizes hs carries, then the incoming gradients).
template <class PW>
BackwardResult backward(const PW& pw, const Layer& L, const at::Tensor& hs, const at::Tensor& cs,
                        const at::Tensor& workspace, const std::optional<at::Tensor>& grad_output,
                        const std::optional<at::Tensor>& grad_h_n, const std::optional<at::Tensor>& grad_c_n) {
  const LayerArgs& a = L.a();
  const int64_t D = L.D, T = a.T, B = a.B, I = a.I, H = a.H, P = a.P;
  const auto opts = a.input.options();
  const CellKind kind = L.kind;
  const bool lstm = kind == CellKind::LSTM;
  const bool projected = L.projected();
  if (lstm) check_saved(cs, L.op_shape({T + 1, B, H}), a.input, "cs");
  check_saved(workspace, L.op_shape({T, B, workspace_gates(kind) * H}), a.input, "workspace");
  at::Tensor go;
  if (grad_output.has_value() && grad_output->defined()) {
    // Zero at inactive steps: the output there is a constant zero, and the pointwise backward passes whatever it
    // is given straight into the state gradient of a finished row.
    check_saved(*grad_output, {T, B, D * P}, a.input, "grad_output");
    go = a.active.defined() ? grad_output->mul(a.active.unsqueeze(2).to(grad_output->scalar_type()))
                            : grad_output->contiguous();
  }
  std::vector<at::Tensor> keep;
  Sequence q = sequence_of(L, /*history=*/true, keep);
  const at::Tensor hsc = hs.contiguous().view({D, T + 1, B, P});
  const at::Tensor csc = lstm ? cs.contiguous().view({D, T + 1, B, H}) : at::Tensor();
  const at::Tensor ws = workspace.contiguous().view({D, T, B, workspace_gates(kind) * H});
  q.hs = blocks_of(hsc);
  if (lstm) {
    q.cs = blocks_of(csc);
    q.gates = blocks_of(ws);
  } else {
    q.ws = blocks_of(ws);
  }
  SequenceGrads g;
  g.go = go.defined() ? go.const_data_ptr() : nullptr;
  const at::Tensor dh = pw.buffer({D, 2, B, P}, opts);
  dh.select(1, 0).copy_(grad_state(grad_h_n, L, P, "grad_h_n"));
  g.dh = blocks_of(dh);
  at::Tensor dc, dgates, dgi, dgh, rh, drh;
  if (lstm) {
    dc = pw.buffer({D, 1, B, H}, opts);
    dc.view({D, B, H}).copy_(grad_state(grad_c_n, L, H, "grad_c_n"));
    g.dc = blocks_of(dc);
    dgates = blocks(pw, g.dgates, D, T, B, 4 * H, opts);
  } else {
    dgi = blocks(pw, g.dgi, D, T, B, 3 * H, opts);
    // reset_after: dgh differs from dgi in its n columns (dn * r); reset_before: gh_n = (r h) W_hn has gradient
    // dn, the same as gi_n, so dgi serves both and rh = r * h is kept per step for the W_hn gradient.
    if (kind == CellKind::GRU_RESET_AFTER) {
      dgh = blocks(pw, g.dgh, D, T, B, 3 * H, opts);
    } else {
      dgh = dgi;
      g.dgh = g.dgi;
      rh = blocks(pw, g.rh, D, T, B, H, opts);
      drh = blocks(pw, g.drh, D, 1, B, H, opts);
    }
  }
  // Projected: dhp (D, T, B, P) each step's total state gradient, zero on finished rows (the W_hr gradient's
  // operand, zeros where no step ran); draw (D, 2, B, H) the step's dh for the pointwise kernel and a scratch block.
  const at::Tensor dhp = projected ? at::zeros({D, T, B, P}, opts) : at::Tensor();
  const at::Tensor draw = projected ? at::zeros({D, 2, B, H}, opts) : at::Tensor();
  if (nonempty(q) && (projected || !sequence_loop_backward(pw, L, q, g))) {
    backward_steps(pw, L, q, g, dh, dgates, dgi, dgh, drh, go, dhp, draw);
  }

  BackwardResult r;
  r.grad_h0 = dh.select(1, T % 2).clone();
  r.grad_c0 = lstm ? dc.view({D, B, H}) : at::Tensor();
  const at::Tensor x = a.input.view({T * B, I});
  r.grad_input = pw.buffer({T * B, I}, opts);
  for (int64_t d = 0; d < D; ++d) {
    const at::Tensor dg = (lstm ? dgates : dgi).select(0, d).view({T * B, gate_count(kind) * H});
    const at::Tensor dg_h = (lstm ? dgates : dgh).select(0, d).view({T * B, gate_count(kind) * H});
    const at::Tensor h_read = hsc.select(0, d).narrow(0, q.layout(d).read_block(), T).view({T * B, P});
    WeightGrads& w = r.dir[d];
    pw.gemm(r.grad_input, dg, L.dir[d].w_ih, /*accumulate=*/d > 0);
    w.w_ih = mm(pw, dg.t(), x);
    w.w_hh = grad_w_hh(pw, kind, dg_h, h_read, rh.defined() ? rh.select(0, d).view({T * B, H}) : at::Tensor());
    w.b_ih = dg.sum(0);
    if (kind == CellKind::GRU_RESET_AFTER) w.b_hh = dg_h.sum(0);
    if (kind == CellKind::GRU_RESET_BEFORE) w.b_hh = w.b_ih.clone();
    if (projected) {
      // dW_hr = sum over steps of dh^T (o ⊙ tanh c1), o ⊙ tanh c1 recomputed from the workspace's o and the
      // states each step wrote (slots 1..T forward, 0..T-1 reversed); dhp is zero wherever no step ran.
      const at::Tensor o = ws.select(0, d).narrow(-1, 3 * H, H);
      const at::Tensor c1 = csc.select(0, d).narrow(0, q.reverse[d] ? 0 : 1, T);
      at::Tensor raw = (o * c1.tanh()).view({T * B, H});
      if (a.active.defined()) raw = at::where(a.active.view({T * B, 1}).to(at::kBool), raw, at::zeros({}, opts));
      w.w_hr = mm(pw, dhp.select(0, d).view({T * B, P}).t(), raw);
    }
  }
  r.grad_input = r.grad_input.view({T, B, I});
  return r;
}

}  // namespace s2s_fused
