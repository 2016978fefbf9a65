// One LSTM / GRU layer in one direction over a whole (T, B, I) sequence, forward and backward, written once for
// every device (as rnn_cell_impl.h is for one step), through the same device policy `PW` (GEMMs and pointwise
// kernels: csrc/cpu/rnn_pointwise_cpu.h on CPU, csrc/cuda/rnn_policy.h on CUDA). A GEMM's `out` may be a
// contiguous slice of a larger buffer.
//
// Structure (haste's): the input projection of all T steps is one GEMM; per step one recurrent GEMM into the gate
// buffer and one pointwise pass; backward per step one pointwise pass and one dh GEMM, then the weight
// gradients as GEMMs over all T*B rows and bias gradients as column sums (no atomics: deterministic).
//
// Variable lengths: `lengths` (B,) gives each sequence's length; step t of row b is active when t < lengths[b].
// Inactive rows keep their state and write zeros to the output, so the forward direction's final state is each
// sequence's state at its own last step and the reverse direction starts there (its steps t >= length are no-ops).
//
// State buffers in time layout: hs, cs are (T+1, B, H). Forward direction: hs[0] = h0, hs[t+1] = state after
// time t. Reverse: hs[T] = h0, hs[t] = state after time t. So the state a time step t reads is hs[t] (forward) or
// hs[t+1] (reverse), and those T slices are one contiguous (T*B, H) block for the dW_hh GEMM.
#pragma once

#include <ATen/ATen.h>

#include <tuple>

#include "checks.h"
#include "rnn_cell_impl.h"  // mm(pw, a, b), the shared GEMM helper
#include "rnn_step_loop.h"  // StepLoopKey, run_steps: the per-step loops as CUDA graphs (opt-in)

namespace s2s_fused {

struct LayerArgs {
  at::Tensor input, h0, w_ih, w_hh, b_ih, b_hh, active;  // input (T, B, I) contiguous; active (T, B) uint8 or undefined
  int64_t T, B, I, H;
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

inline LayerArgs check_layer_args(const at::Tensor& input, const at::Tensor& h0, const at::Tensor& w_ih,
                                  const at::Tensor& w_hh, const std::optional<at::Tensor>& b_ih,
                                  const std::optional<at::Tensor>& b_hh, const std::optional<at::Tensor>& lengths,
                                  int64_t gates, const std::string& suffix = "") {
  check_dim(input, 3, "input");
  check_dim(h0, 2, "h0");
  check_floating(input, "input");
  check_same(h0, input, "h0", "input");
  const int64_t T = input.size(0), B = input.size(1), I = input.size(2), H = h0.size(1);
  check_size(h0, 0, B, "h0");
  LayerArgs a{input.contiguous(), h0.contiguous(), w_ih, w_hh, contiguous_or_undefined(b_ih),
              contiguous_or_undefined(b_hh), active_mask(lengths, input, T, B), T, B, I, H};
  check_rnn_weights(input, w_ih, w_hh, a.b_ih, a.b_hh, gates, I, H, suffix);
  return a;
}

// A backward op's saved state history hs, (T+1, B, H) or (directions = 2) (2, T+1, B, H): checked first, under its
// own name, since the other arguments are then checked against the hidden size it carries.
inline void check_state_history(const at::Tensor& hs, const at::Tensor& input, int64_t directions) {
  check_dim(input, 3, "input");
  check_floating(input, "input");
  check_dim(hs, 2 + directions, "hs");
  const int64_t T = input.size(0), B = input.size(1), H = hs.size(-1);
  if (directions == 2) {
    check_saved(hs, {2, T + 1, B, H}, input, "hs");
  } else {
    check_saved(hs, {T + 1, B, H}, input, "hs");
  }
}

inline const uint8_t* active_row(const at::Tensor& active, int64_t t) {
  return active.defined() ? active.const_data_ptr<uint8_t>() + t * active.size(1) : nullptr;
}

// The slice of a (T+1, B, H) state buffer that time step t reads (prev) and writes (next).
inline at::Tensor state_prev(const at::Tensor& s, int64_t t, bool reverse) { return s.select(0, reverse ? t + 1 : t); }
inline at::Tensor state_next(const at::Tensor& s, int64_t t, bool reverse) { return s.select(0, reverse ? t : t + 1); }
// The (T*B, H) block of the states read by the T steps, in time order.
inline at::Tensor states_read(const at::Tensor& s, int64_t T, bool reverse) {
  return s.narrow(0, reverse ? 1 : 0, T).flatten(0, 1);
}
inline int64_t time_of_step(int64_t s, int64_t T, bool reverse) { return reverse ? T - 1 - s : s; }

// Incoming gradient of the output: zero at inactive steps (the output there is a constant zero, and the pointwise
// backward passes whatever it is given straight into the state gradient of a finished row).
inline at::Tensor masked_grad_output(const std::optional<at::Tensor>& grad_output, const LayerArgs& a) {
  if (!grad_output.has_value() || !grad_output->defined()) return at::Tensor();
  const at::Tensor& g = *grad_output;
  check_saved(g, {a.T, a.B, a.H}, a.input, "grad_output");
  if (a.active.defined()) return g.mul(a.active.unsqueeze(2).to(g.scalar_type()));
  return g.contiguous();
}

inline at::Tensor grad_state_init(const std::optional<at::Tensor>& g, const LayerArgs& a, const char* name) {
  if (!g.has_value() || !g->defined()) return at::zeros({a.B, a.H}, a.input.options());
  check_saved(*g, {a.B, a.H}, a.input, name);
  return g->contiguous().clone();
}


// w_hh must be contiguous and outlive the call that reads q.
inline void set_recurrence_shape(RecurrenceShape& q, const LayerArgs& a, const at::Tensor& w_hh, bool gru,
                                 bool reverse, bool reset_after) {
  q.dtype = to_dtype(a.input.scalar_type());
  q.T = a.T;
  q.B = a.B;
  q.H = a.H;
  q.gru = gru;
  q.reverse = reverse;
  q.reset_after = reset_after;
  q.w_hh = w_hh.const_data_ptr();
}

// The whole recurrence in one call where the device policy has a persistent kernel for it (CUDA, small batch);
// false: the caller runs its per-step loop. All buffers are the per-step path's, already initialised.
template <class PW>
bool run_persistent(const PW& pw, const LayerArgs& a, bool gru, bool reverse, bool reset_after, bool fuse_input,
                    const at::Tensor& gates, const at::Tensor& gi, const at::Tensor& ws, const at::Tensor& hs,
                    const at::Tensor& cs, const at::Tensor& output, bool keep_workspace = true) {
  PersistentParams q;
  const at::Tensor w_hh = a.w_hh.contiguous();
  set_recurrence_shape(q, a, w_hh, gru, reverse, reset_after);
  q.b1 = ptr_or_null(a.b_ih);
  q.b2 = ptr_or_null(a.b_hh);
  q.gates = gates.defined() ? gates.mutable_data_ptr() : nullptr;
  q.gi = gi.defined() ? gi.const_data_ptr() : nullptr;
  q.ws = ws.defined() ? ws.mutable_data_ptr() : nullptr;
  q.hs = hs.mutable_data_ptr();
  q.cs = cs.defined() ? cs.mutable_data_ptr() : nullptr;
  q.out = output.mutable_data_ptr();
  q.active = a.active.defined() ? a.active.const_data_ptr<uint8_t>() : nullptr;
  q.keep_workspace = keep_workspace;
  const at::Tensor w_ih = fuse_input ? a.w_ih.contiguous() : at::Tensor();
  q.fuse_input = fuse_input;
  if (fuse_input) {
    q.x = a.input.const_data_ptr();
    q.w_ih = w_ih.const_data_ptr();
    q.I = a.I;
  }
  const bool done = a.T > 0 && a.B > 0 && pw.persistent(q);
  TORCH_CHECK(done || !fuse_input, "s2s_fused: internal error: the fused input projection was not computed");
  return done;
}

// Whether the policy's persistent path will compute the input projections itself (so none is computed up front).
template <class PW>
bool fuse_input_projection(const PW& pw, const LayerArgs& a) {
  return a.T > 0 && a.B > 0 && a.H > 0 && pw.fuses_input_projection(to_dtype(a.input.scalar_type()));
}

// The same decision from the raw arguments, before they are checked (the inference ops route everything else to
// the training forward, which checks them itself): false for anything malformed.
template <class PW>
bool fuse_input_projection(const PW& pw, const at::Tensor& input, const at::Tensor& h0) {
  const at::ScalarType st = input.scalar_type();
  const bool supported = st == at::kFloat || st == at::kDouble || st == at::kHalf || st == at::kBFloat16;
  return supported && input.dim() == 3 && h0.dim() == 2 && input.size(0) > 0 && input.size(1) > 0 &&
         h0.size(1) > 0 && pw.fuses_input_projection(to_dtype(st));
}

// The whole backward time loop in one call where the device policy has one (CPU, fp32: packed weights); false:
// the caller runs its per-step loop. dh / dh_next are the two halves of the caller's (2, B, H) parity buffer; as
// in the per-step loop, the gradient of h0 ends in half T % 2.
template <class PW>
bool run_persistent_backward(const PW& pw, const LayerArgs& a, bool gru, bool reverse, bool reset_after,
                             const at::Tensor& go, const at::Tensor& dh, const at::Tensor& dh_next,
                             const at::Tensor& dc,
                             const at::Tensor& ws, const at::Tensor& hs, const at::Tensor& cs,
                             const at::Tensor& dgates, const at::Tensor& dgi, const at::Tensor& dgh,
                             const at::Tensor& rh) {
  if (a.T == 0 || a.B == 0) return false;
  PersistentBackwardParams q;
  const at::Tensor w_hh = a.w_hh.contiguous();
  set_recurrence_shape(q, a, w_hh, gru, reverse, reset_after);
  q.go = go.defined() ? go.const_data_ptr() : nullptr;
  q.dh = dh.mutable_data_ptr();
  q.dh_next = dh_next.mutable_data_ptr();
  q.dc = dc.defined() ? dc.mutable_data_ptr() : nullptr;
  q.ws = ws.const_data_ptr();
  q.hs = hs.const_data_ptr();
  q.cs = cs.defined() ? cs.const_data_ptr() : nullptr;
  q.dgates = dgates.defined() ? dgates.mutable_data_ptr() : nullptr;
  q.dgi = dgi.defined() ? dgi.mutable_data_ptr() : nullptr;
  q.dgh = dgh.defined() ? dgh.mutable_data_ptr() : nullptr;
  q.rh = rh.defined() ? rh.mutable_data_ptr() : nullptr;
  q.active = a.active.defined() ? a.active.const_data_ptr<uint8_t>() : nullptr;
  return pw.persistent_backward(q);
}

// What a layer-direction's per-step loop depends on besides its buffers (the CUDA graph cache key).
inline StepLoopKey loop_key(int64_t op, const LayerArgs& a, bool reverse, int64_t flag) {
  StepLoopKey k;
  k.add_all(op, static_cast<int64_t>(a.input.scalar_type()), static_cast<int64_t>(a.input.device().type()),
            static_cast<int64_t>(a.input.device().index()), a.T, a.B, a.I, a.H, static_cast<int64_t>(reverse), flag);
  k.add_all(a.w_hh, a.b_ih, a.b_hh, a.active);
  return k;
}

// The gradient state alternates between the two halves of a (2, B, H) buffer, step k reading half k % 2: which half
// holds the result depends on T only, not on host state the loop changes (a replayed CUDA graph runs no host code).
inline at::Tensor grad_state_pair(const std::optional<at::Tensor>& g, const LayerArgs& a, const char* name) {
  at::Tensor buf = at::empty({2, a.B, a.H}, a.input.options());
  buf.select(0, 0).copy_(grad_state_init(g, a, name));
  return buf;
}

// ------------------------------------------------------------------------------------------------ LSTM

// Returns (output (T, B, H), h_n, c_n, hs (T+1, B, H), cs (T+1, B, H), workspace (T, B, 4H) = activated gates).
template <class PW>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> lstm_layer_forward_impl(
    const PW& pw, const at::Tensor& input, const at::Tensor& h0, const at::Tensor& c0, const at::Tensor& w_ih,
    const at::Tensor& w_hh, const std::optional<at::Tensor>& b_ih, const std::optional<at::Tensor>& b_hh,
    const std::optional<at::Tensor>& lengths, bool reverse) {
  const LayerArgs a = check_layer_args(input, h0, w_ih, w_hh, b_ih, b_hh, lengths, 4);
  check_saved(c0, h0.sizes(), input, "c0", " (as h0)");
  const int64_t T = a.T, B = a.B, H = a.H;
  const auto opts = a.input.options();
  // The gate buffer starts as the input projection of all steps (one GEMM), takes each step's recurrent GEMM in
  // place and is then activated in place: it is also the workspace backward reads.
  const bool fuse_in = fuse_input_projection(pw, a);
  at::Tensor gates = fuse_in ? pw.buffer({T, B, 4 * H}, opts)
                             : mm(pw, a.input.view({T * B, a.I}), a.w_ih.t()).view({T, B, 4 * H});
  at::Tensor hs = pw.buffer({T + 1, B, H}, opts), cs = pw.buffer({T + 1, B, H}, opts);
  at::Tensor output = pw.buffer({T, B, H}, opts);
  state_prev(hs, reverse ? T - 1 : 0, reverse).copy_(a.h0);
  state_prev(cs, reverse ? T - 1 : 0, reverse).copy_(c0);
  const at::Tensor w_hh_t = a.w_hh.t();
  LstmForwardParams p;
  p.dtype = to_dtype(input.scalar_type());
  p.H = H;
  p.b1 = ptr_or_null(a.b_ih);
  p.b2 = ptr_or_null(a.b_hh);
  const int64_t last = reverse ? 0 : T;
  if (run_persistent(pw, a, /*gru=*/false, reverse, /*reset_after=*/true, fuse_in, gates, at::Tensor(), at::Tensor(),
                     hs, cs, output)) {
    return {output, hs.select(0, last).clone(), cs.select(0, last).clone(), hs, cs, gates};
  }
  StepLoopKey key = loop_key(/*op=*/11, a, reverse, 0);
  key.add_all(gates, hs, cs, output);
  run_steps(pw, key, [&] {
    for (int64_t s = 0; s < T; ++s) {
      const int64_t t = time_of_step(s, T, reverse);
      at::Tensor g = gates.select(0, t);
      const at::Tensor hprev = state_prev(hs, t, reverse);
      pw.gemm(g, hprev, w_hh_t, /*accumulate=*/true);
      p.g1 = cmat(g);
      p.ws = mat(g);
      p.cx = cmat(state_prev(cs, t, reverse));
      p.hx = cmat(hprev);
      p.h1 = mat(state_next(hs, t, reverse));
      p.c1 = mat(state_next(cs, t, reverse));
      p.out = mat(output.select(0, t));
      p.active = active_row(a.active, t);
      pw.lstm_forward(p, B);
    }
  });
  return {output, hs.select(0, last).clone(), cs.select(0, last).clone(), hs, cs, gates};
}

// Returns (grad_input, grad_h0, grad_c0, grad_w_ih, grad_w_hh, grad_bias).
template <class PW>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> lstm_layer_backward_impl(
    const PW& pw, const std::optional<at::Tensor>& grad_output, const std::optional<at::Tensor>& grad_h_n,
    const std::optional<at::Tensor>& grad_c_n, const at::Tensor& input, const at::Tensor& w_ih,
    const at::Tensor& w_hh, const at::Tensor& hs, const at::Tensor& cs, const at::Tensor& workspace,
    const std::optional<at::Tensor>& lengths, bool reverse) {
  check_state_history(hs, input, 1);
  const LayerArgs a = check_layer_args(input, hs.select(0, 0), w_ih, w_hh, std::nullopt, std::nullopt, lengths, 4);
  const int64_t T = a.T, B = a.B, H = a.H;
  check_saved(cs, {T + 1, B, H}, input, "cs");
  check_saved(workspace, {T, B, 4 * H}, input, "workspace");
  const at::Tensor go = masked_grad_output(grad_output, a);
  const at::Tensor ws = workspace.contiguous(), hsc = hs.contiguous(), csc = cs.contiguous();
  const at::Tensor dh_buf = grad_state_pair(grad_h_n, a, "grad_h_n");
  at::Tensor dc = grad_state_init(grad_c_n, a, "grad_c_n");
  at::Tensor dgates = pw.buffer({T, B, 4 * H}, a.input.options());
  const bool done = run_persistent_backward(pw, a, /*gru=*/false, reverse, /*reset_after=*/true, go,
                                            dh_buf.select(0, 0), dh_buf.select(0, 1), dc, ws, hsc, csc, dgates,
                                            at::Tensor(), at::Tensor(), at::Tensor());
  LstmBackwardParams p;
  p.dtype = to_dtype(input.scalar_type());
  p.H = H;
  StepLoopKey key = loop_key(/*op=*/12, a, reverse, 0);
  key.add_all(go, ws, hsc, csc, dh_buf, dc, dgates);
  if (!done && T > 0) run_steps(pw, key, [&] {
    for (int64_t k = 0; k < T; ++k) {
      const int64_t t = time_of_step(T - 1 - k, T, reverse);
      at::Tensor dh = dh_buf.select(0, k % 2), dh_next = dh_buf.select(0, (k + 1) % 2);
      at::Tensor dg = dgates.select(0, t);
      p.dh1 = go.defined() ? cmat(go.select(0, t)) : CMat{};
      p.dh2 = cmat(dh);
      p.dc1 = cmat(dc);
      p.ws = cmat(ws.select(0, t));
      p.cx = cmat(state_prev(csc, t, reverse));
      p.c1 = cmat(state_next(csc, t, reverse));
      p.dgates = mat(dg);
      p.dcx = mat(dc);  // in place: each element of dc is read before it is overwritten
      p.active = active_row(a.active, t);
      p.dhx = mat(dh_next);
      if (p.active) dh_next.zero_();  // finished rows get dh passed through by the kernel, the others dg @ W_hh
      pw.lstm_backward(p, B);
      pw.gemm(dh_next, dg, a.w_hh, /*accumulate=*/p.active != nullptr);
    }
  });
  const at::Tensor dh = dh_buf.select(0, T % 2).clone();
  const at::Tensor dg2 = dgates.view({T * B, 4 * H});
  at::Tensor grad_input = mm(pw, dg2, a.w_ih).view({T, B, a.I});
  at::Tensor grad_w_ih = mm(pw, dg2.t(), a.input.view({T * B, a.I}));
  at::Tensor grad_w_hh = mm(pw, dg2.t(), states_read(hsc, T, reverse));
  at::Tensor grad_bias = dg2.sum(0);
  return {grad_input, dh, dc, grad_w_ih, grad_w_hh, grad_bias};
}

// ------------------------------------------------------------------------------------------------- GRU

// Returns (output (T, B, H), h_n, hs (T+1, B, H), workspace (T, B, 4H) reset_after / (T, B, 3H) reset_before).
template <class PW>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> gru_layer_forward_impl(
    const PW& pw, const at::Tensor& input, const at::Tensor& h0, const at::Tensor& w_ih, const at::Tensor& w_hh,
    const std::optional<at::Tensor>& b_ih, const std::optional<at::Tensor>& b_hh,
    const std::optional<at::Tensor>& lengths, bool reverse, bool reset_after) {
  const LayerArgs a = check_layer_args(input, h0, w_ih, w_hh, b_ih, b_hh, lengths, 3);
  const int64_t T = a.T, B = a.B, H = a.H;
  const auto opts = a.input.options();
  const bool fuse_in = fuse_input_projection(pw, a);
  const at::Tensor gi = fuse_in ? at::Tensor() : mm(pw, a.input.view({T * B, a.I}), a.w_ih.t()).view({T, B, 3 * H});
  at::Tensor hs = pw.buffer({T + 1, B, H}, opts), output = pw.buffer({T, B, H}, opts);
  state_prev(hs, reverse ? T - 1 : 0, reverse).copy_(a.h0);
  // Rows of finished steps are never written by the kernels; zeros keep the returned workspace deterministic.
  const int64_t ws_cols = reset_after ? 4 * H : 3 * H;
  at::Tensor ws = a.active.defined() ? at::zeros({T, B, ws_cols}, opts) : pw.buffer({T, B, ws_cols}, opts);
  GruForwardParams p;
  p.dtype = to_dtype(input.scalar_type());
  p.H = H;
  p.reset_after = reset_after;
  p.b_ih = ptr_or_null(a.b_ih);
  p.b_hh = ptr_or_null(a.b_hh);
  // reset_before: the r, z columns of W_hh act on h, the n columns on r * h (a second GEMM per step).
  const at::Tensor w_rz_t = reset_after ? a.w_hh.t() : a.w_hh.narrow(0, 0, 2 * H).t();
  const at::Tensor w_hn_t = a.w_hh.narrow(0, 2 * H, H).t();
  at::Tensor gh = at::empty({B, (reset_after ? 3 : 2) * H}, opts);
  at::Tensor rh, ghn;
  if (!reset_after) {
    rh = at::empty({B, H}, opts);
    ghn = at::empty({B, H}, opts);
  }
  const int64_t last = reverse ? 0 : T;
  if (run_persistent(pw, a, /*gru=*/true, reverse, reset_after, fuse_in, at::Tensor(), gi, ws, hs, at::Tensor(),
                     output)) {
    return {output, hs.select(0, last).clone(), hs, ws};
  }
  StepLoopKey key = loop_key(/*op=*/13, a, reverse, reset_after);
  key.add_all(gi, hs, ws, output, gh, rh, ghn);
  run_steps(pw, key, [&] {
    for (int64_t s = 0; s < T; ++s) {
      const int64_t t = time_of_step(s, T, reverse);
      const at::Tensor hprev = state_prev(hs, t, reverse);
      pw.gemm(gh, hprev, w_rz_t, false);
      p.gi = cmat(gi.select(0, t));
      p.gh = cmat(gh);
      p.hx = cmat(hprev);
      p.h1 = mat(state_next(hs, t, reverse));
      p.ws = mat(ws.select(0, t));
      p.out = mat(output.select(0, t));
      p.active = active_row(a.active, t);
      if (reset_after) {
        pw.gru_forward(p, B);
      } else {
        p.rh = mat(rh);
        pw.gru_forward(p, B);
        pw.gemm(ghn, rh, w_hn_t, false);
        p.ghn = cmat(ghn);
        pw.gru_forward_stage2(p, B);
      }
    }
  });
  return {output, hs.select(0, last).clone(), hs, ws};
}

// Returns (grad_input, grad_h0, grad_w_ih, grad_w_hh, grad_b_ih, grad_b_hh).
template <class PW>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> gru_layer_backward_impl(
    const PW& pw, const std::optional<at::Tensor>& grad_output, const std::optional<at::Tensor>& grad_h_n,
    const at::Tensor& input, const at::Tensor& w_ih, const at::Tensor& w_hh, const at::Tensor& hs,
    const at::Tensor& workspace, const std::optional<at::Tensor>& lengths, bool reverse, bool reset_after) {
  check_state_history(hs, input, 1);
  const LayerArgs a = check_layer_args(input, hs.select(0, 0), w_ih, w_hh, std::nullopt, std::nullopt, lengths, 3);
  const int64_t T = a.T, B = a.B, H = a.H;
  const auto opts = a.input.options();
  check_saved(workspace, {T, B, (reset_after ? 4 : 3) * H}, input, "workspace");
  const at::Tensor go = masked_grad_output(grad_output, a);
  const at::Tensor ws = workspace.contiguous(), hsc = hs.contiguous();
  const at::Tensor dh_buf = grad_state_pair(grad_h_n, a, "grad_h_n");
  at::Tensor dgi = pw.buffer({T, B, 3 * H}, opts);
  // reset_after: dgh differs from dgi in its n columns (dn * r); reset_before: gh_n = (r h) W_hn has gradient dn,
  // the same as gi_n, so dgi serves both and rh = r * h is kept per step for the W_hn gradient.
  at::Tensor dgh = reset_after ? pw.buffer({T, B, 3 * H}, opts) : dgi;
  at::Tensor rh_all, drh;
  if (!reset_after) {
    rh_all = pw.buffer({T, B, H}, opts);
    drh = at::empty({B, H}, opts);
  }
  const at::Tensor w_rz = reset_after ? a.w_hh : a.w_hh.narrow(0, 0, 2 * H);
  const at::Tensor w_hn = a.w_hh.narrow(0, 2 * H, H);
  const bool done = run_persistent_backward(pw, a, /*gru=*/true, reverse, reset_after, go, dh_buf.select(0, 0),
                                            dh_buf.select(0, 1), at::Tensor(), ws, hsc, at::Tensor(), at::Tensor(),
                                            dgi, dgh, rh_all);
  GruBackwardParams p;
  p.dtype = to_dtype(input.scalar_type());
  p.H = H;
  p.reset_after = reset_after;
  StepLoopKey key = loop_key(/*op=*/14, a, reverse, reset_after);
  key.add_all(go, ws, hsc, dh_buf, dgi, dgh, rh_all, drh);
  if (!done && T > 0) run_steps(pw, key, [&] {
    for (int64_t k = 0; k < T; ++k) {
      const int64_t t = time_of_step(T - 1 - k, T, reverse);
      at::Tensor dh = dh_buf.select(0, k % 2), dh_next = dh_buf.select(0, (k + 1) % 2);
      at::Tensor dgi_t = dgi.select(0, t), dgh_t = dgh.select(0, t);
      p.dh1 = go.defined() ? cmat(go.select(0, t)) : CMat{};
      p.dh2 = cmat(dh);
      p.ws = cmat(ws.select(0, t));
      p.hx = cmat(state_prev(hsc, t, reverse));
      p.dgi = mat(dgi_t);
      p.dgh = mat(dgh_t);
      p.dhx = mat(dh_next);
      p.active = active_row(a.active, t);
      pw.gru_backward(p, B);
      if (reset_after) {
        pw.gemm(dh_next, dgh_t, w_rz, true);
      } else {
        pw.gemm(drh, dgi_t.narrow(1, 2 * H, H), w_hn, false);
        p.drh = cmat(drh);
        p.rh = mat(rh_all.select(0, t));
        pw.gru_backward_stage2(p, B);
        pw.gemm(dh_next, dgi_t.narrow(1, 0, 2 * H), w_rz, true);
      }
    }
  });
  const at::Tensor dh = dh_buf.select(0, T % 2).clone();
  const at::Tensor dgi2 = dgi.view({T * B, 3 * H}), dgh2 = dgh.view({T * B, 3 * H});
  const at::Tensor h_read = states_read(hsc, T, reverse);
  at::Tensor grad_input = mm(pw, dgi2, a.w_ih).view({T, B, a.I});
  at::Tensor grad_w_ih = mm(pw, dgi2.t(), a.input.view({T * B, a.I}));
  at::Tensor grad_w_hh;
  if (reset_after) {
    grad_w_hh = mm(pw, dgh2.t(), h_read);
  } else {
    grad_w_hh = at::empty({3 * H, H}, opts);
    at::Tensor g_rz = grad_w_hh.narrow(0, 0, 2 * H), g_n = grad_w_hh.narrow(0, 2 * H, H);
    pw.gemm(g_rz, dgi2.narrow(1, 0, 2 * H).t(), h_read, false);
    pw.gemm(g_n, dgi2.narrow(1, 2 * H, H).t(), rh_all.view({T * B, H}), false);
  }
  at::Tensor grad_b_ih = dgi2.sum(0);
  at::Tensor grad_b_hh = reset_after ? dgh2.sum(0) : grad_b_ih.clone();
  return {grad_input, dh, grad_w_ih, grad_w_hh, grad_b_ih, grad_b_hh};
}

// ------------------------------------------------------------------------------------------- inference
// Forward with nothing kept for backward: (output, h_n[, c_n]). Where the policy's persistent path can run it
// (CPU fp32: PersistentParams::keep_workspace = false), the states alternate between two (B, H) slots and the
// gates live one step at a time, so no (T, B, G*H) workspace or (T+1, B, H) state history is written (nor
// page-faulted in); elsewhere the training forward runs and its saved tensors are dropped.

template <class PW>
std::tuple<at::Tensor, at::Tensor, at::Tensor> lstm_layer_inference_impl(
    const PW& pw, const at::Tensor& input, const at::Tensor& h0, const at::Tensor& c0, const at::Tensor& w_ih,
    const at::Tensor& w_hh, const std::optional<at::Tensor>& b_ih, const std::optional<at::Tensor>& b_hh,
    const std::optional<at::Tensor>& lengths, bool reverse) {
  if (!fuse_input_projection(pw, input, h0)) {
    auto r = lstm_layer_forward_impl(pw, input, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths, reverse);
    return {std::get<0>(r), std::get<1>(r), std::get<2>(r)};
  }
  const LayerArgs a = check_layer_args(input, h0, w_ih, w_hh, b_ih, b_hh, lengths, 4);
  check_saved(c0, h0.sizes(), input, "c0", " (as h0)");
  const int64_t T = a.T, B = a.B, H = a.H;
  const auto opts = a.input.options();
  const at::Tensor states = at::empty({2, 2, B, H}, opts);  // (h | c, slot)
  const at::Tensor hs = states.select(0, 0), cs = states.select(0, 1);
  hs.select(0, 0).copy_(a.h0);
  cs.select(0, 0).copy_(c0);
  const at::Tensor gates = at::empty({B, 4 * H}, opts);
  const at::Tensor output = pw.buffer({T, B, H}, opts);
  run_persistent(pw, a, /*gru=*/false, reverse, /*reset_after=*/true, /*fuse_input=*/true, gates, at::Tensor(),
                 at::Tensor(), hs, cs, output, /*keep_workspace=*/false);
  return {output, hs.select(0, T % 2).clone(), cs.select(0, T % 2).clone()};
}

template <class PW>
std::tuple<at::Tensor, at::Tensor> gru_layer_inference_impl(
    const PW& pw, const at::Tensor& input, const at::Tensor& h0, const at::Tensor& w_ih, const at::Tensor& w_hh,
    const std::optional<at::Tensor>& b_ih, const std::optional<at::Tensor>& b_hh,
    const std::optional<at::Tensor>& lengths, bool reverse, bool reset_after) {
  if (!fuse_input_projection(pw, input, h0)) {
    auto r = gru_layer_forward_impl(pw, input, h0, w_ih, w_hh, b_ih, b_hh, lengths, reverse, reset_after);
    return {std::get<0>(r), std::get<1>(r)};
  }
  const LayerArgs a = check_layer_args(input, h0, w_ih, w_hh, b_ih, b_hh, lengths, 3);
  const int64_t T = a.T, B = a.B, H = a.H;
  const auto opts = a.input.options();
  const at::Tensor hs = at::empty({2, B, H}, opts);
  hs.select(0, 0).copy_(a.h0);
  // reset_before keeps r, z between its two stages in a one-step workspace; reset_after needs none.
  const at::Tensor ws = reset_after ? at::Tensor() : at::empty({B, 3 * H}, opts);
  const at::Tensor output = pw.buffer({T, B, H}, opts);
  run_persistent(pw, a, /*gru=*/true, reverse, reset_after, /*fuse_input=*/true, at::Tensor(), at::Tensor(), ws, hs,
                 at::Tensor(), output, /*keep_workspace=*/false);
  return {output, hs.select(0, T % 2).clone()};
}

}  // namespace s2s_fused
