// The RNN core's shared vocabulary, for every C++/CUDA file of the LSTM/GRU ops: notation, cell kinds, the time
// layout of the state buffers, the parameters of the pointwise kernels, and the description of a whole sequence
// that a device may run in one call. Plain C++ (no torch headers): nvcc and the per-capability CPU builds include
// it too.
//
// Notation (every shape in the RNN core is written in it):
//   D  directions of a layer (1, or 2 for both directions of a bidirectional layer; direction 1 runs reversed)
//   T  time steps, B batch rows, I input features, H hidden units
//   G  gates: 4 for LSTM (i, f, g, o), 3 for GRU (r, z, n), in torch's order; a gate matrix (.., G·H) holds the G
//      gates of a row side by side, each H wide
//   A  activations per hidden unit a forward keeps for backward (the workspace, A·H wide): 4 for LSTM (the
//      activated i, f, g, o) and GRU reset_after (r, z, n and W_hn h + b_hn), 3 for GRU reset_before (r, z, n)
//   P  width of the state h: H, or for an LSTM with projections (torch's proj_size) P of the (P, H) projection
//      W_hr, h = W_hr (o ⊙ tanh c); then h0, h_n, hs and the output carry P columns, c0, c_n, cs keep H, and
//      W_hh is (G·H, P)
// Tensors of a layer: input (T, B, I); h0, c0, h_n, c_n (D, B, H) (one direction: (B, H)); output (T, B, D·H),
// direction d in columns [d·H, (d+1)·H); w_ih (G·H, I), w_hh (G·H, H), b_ih, b_hh (G·H,) per direction; lengths
// (B,): step t of row b is active when t < lengths[b] (an inactive step keeps the state and outputs zeros).
// Saved for backward: hs, cs (D, T+1, B, H) (TimeLayout), workspace (D, T, B, A·H); one direction drops the D.
#pragma once

#include <cstdint>

#include "dtype.h"  // Dtype, S2S_HD

namespace s2s_fused {

// The three cells. The integer values are shared with the Triton kernels (s2s_fused/triton).
enum class CellKind : int32_t {
  LSTM = 0,
  GRU_RESET_AFTER = 1,   // torch, cuDNN: n = tanh(W_in x + b_in + r * (W_hn h + b_hn))
  GRU_RESET_BEFORE = 2,  // Cho et al. 2014, d2l: n = tanh(W_in x + b_in + W_hn (r * h) + b_hn)
};

S2S_HD constexpr int64_t gate_count(CellKind k) { return k == CellKind::LSTM ? 4 : 3; }
S2S_HD constexpr int64_t workspace_gates(CellKind k) { return k == CellKind::GRU_RESET_BEFORE ? 3 : 4; }
// The gate columns of W_hh that act on h itself (reset_before: the n rows act on r * h, a second product).
S2S_HD constexpr int64_t hidden_gates(CellKind k) { return k == CellKind::GRU_RESET_BEFORE ? 2 : gate_count(k); }
constexpr CellKind gru_kind(bool reset_after) {
  return reset_after ? CellKind::GRU_RESET_AFTER : CellKind::GRU_RESET_BEFORE;
}

// Where one direction's states live. With `history` (training) the state buffer has T+1 slots in time order:
// forward, slot 0 = h0 and slot t+1 = the state after time t; reversed, slot T = h0 and slot t = the state after
// time t. So step s (at time t = time(s)) reads slot t (forward) or t+1 (reversed) and writes the other neighbour,
// and the T slots the steps read are one contiguous block in time order (the dW_hh GEMM's operand). Without
// history (inference) two slots alternate: step s reads slot s % 2 and writes the other.
struct TimeLayout {
  int64_t T = 0;
  bool reverse = false;
  bool history = true;

  S2S_HD int64_t time(int64_t s) const { return reverse ? T - 1 - s : s; }
  S2S_HD int64_t read(int64_t s) const { return history ? time(s) + (reverse ? 1 : 0) : s % 2; }
  S2S_HD int64_t write(int64_t s) const { return history ? time(s) + (reverse ? 0 : 1) : (s + 1) % 2; }
  S2S_HD int64_t slots() const { return history ? T + 1 : 2; }
  S2S_HD int64_t first() const { return read(0); }  // the initial state's slot
  S2S_HD int64_t last() const { return history ? (reverse ? 0 : T) : T % 2; }  // the final state's slot
  S2S_HD int64_t read_block() const { return reverse ? 1 : 0; }  // history: first of the T slots read, in time order
};

struct Mat {  // a row-major matrix view: element (b, j) at data + b * ld + j
  void* data = nullptr;
  int64_t ld = 0;
};
struct CMat {
  const void* data = nullptr;
  int64_t ld = 0;
};

// ------------------------------------------------------------------------------------- pointwise kernels
// Everything between the GEMMs of one step, one pass over memory each way (CPU: csrc/cpu/kernels/rnn_pointwise.cpp,
// CUDA: csrc/cuda/rnn_pointwise.cu). A kernel works on rows [row_begin, row_end) of the batch; pointers are raw and
// typed by `dtype`; each 2-D operand has its own row stride (columns contiguous), so the layers pass blocks of
// larger buffers. Optional operands are null. Values are computed in float (double for double), rounded once on
// store.

// What every pointwise kernel takes. Rows with active[b] == 0 (finished sequences; active optional) pass their
// state through, as each kernel says.
struct PointwiseStep {
  Dtype dtype;
  int64_t H;
  const uint8_t* active = nullptr;
};

// A forward kernel reads hx and writes h1, and h1 again to `out` (optional: the layer's output at this step). A
// finished row keeps its state (h1 = hx) and writes zeros to `out`.
struct ForwardStep : PointwiseStep {
  CMat hx;                     // (B, H)
  Mat h1, out;                 // (B, H)
  const void* b_ih = nullptr;  // (G·H,) optional
  const void* b_hh = nullptr;  // (G·H,) optional
  int64_t j0 = 0, j1 = -1;     // CPU kernels: only hidden units [j0, j1) of each row (j1 < 0: all H)
};

// A backward kernel reads dh = dh1 + dh2 (each optional: null reads as zero) and writes dhx. A finished row
// passes dh straight through (dhx = dh) and writes zero gate gradients.
struct BackwardStep : PointwiseStep {
  CMat dh1, dh2;
  Mat dhx;  // (B, H)
};

// LSTM forward: pre = g1 (+ g2) (+ b_ih) (+ b_hh); i,f,o = sigmoid, g = tanh; c1 = f*cx + i*g; h1 = o*tanh(c1).
// ws (optional) receives the activated gates (i, f, g, o), the only thing backward needs besides cx and c1;
// it may alias g1 (in-place activation). A finished row also keeps c1 = cx.
struct LstmForwardParams : ForwardStep {
  CMat g1, g2;               // (B, 4·H) pre-activations; g2 optional
  CMat cx;                   // (B, H)
  Mat c1;                    // (B, H)
  Mat ws;                    // (B, 4·H) optional
};

// LSTM backward: dc = dc1 (+ dh * o * (1 - tanh(c1)^2)); writes the pre-activation gate gradients dgates (B, 4·H)
// and dcx (B, H); dc1 optional. dhx is written for finished rows only (dcx = dc there too): the others' dhx is
// the caller's dgates @ W_hh.
struct LstmBackwardParams : BackwardStep {
  CMat dc1;
  CMat ws, cx, c1;
  Mat dgates, dcx;
};

// GRU forward.
// reset_after: r = s(gi_r + gh_r + b), z = s(gi_z + gh_z + b), hn = gh_n + b_hn, n = tanh(gi_n + b_in + r * hn),
//   h1 = (1 - z) * n + z * hx.   ws = (r, z, n, hn): (B, 4·H).
// reset_before: stage 1 computes r, z from gi, gh (gh holds only the r, z columns) and writes rh = r * hx; the
//   caller multiplies rh by W_hn^T into ghn; stage 2 computes n = tanh(gi_n + b_in + ghn + b_hn) and h1 (and
//   handles finished rows). ws = (r, z, n): (B, 3·H).
struct GruForwardParams : ForwardStep {
  CellKind kind = CellKind::GRU_RESET_AFTER;
  CMat gi, gh;                 // (B, 3·H) input / hidden projections (reset_before: gh is (B, 2·H))
  Mat ws;                      // (B, A·H); optional with reset_after
  Mat rh;                      // reset_before stage 1 output (B, H)
  CMat ghn;                    // reset_before stage 2 input (B, H): rh @ W_hn^T
};

// GRU backward.
// reset_after: writes dgi = (dr, dz, dn) and dgh = (dr, dz, dn * r) pre-activation gradients and dhx = dh * z
//   (the caller adds dgh @ W_hh).
// reset_before stage 1: writes dz, dn into dgi (dgh is dgi: gh_n = rh W_hn^T has gradient dn, as gi_n) and zeros
//   in its r columns; the caller computes drh = dn @ W_hn; stage 2 writes dr into dgi and dhx = dh * z + drh * r,
//   and rh = r * hx for the W_hn gradient.
struct GruBackwardParams : BackwardStep {
  CellKind kind = CellKind::GRU_RESET_AFTER;
  CMat ws, hx;
  Mat dgi, dgh;  // (B, 3·H)
  CMat drh;      // reset_before stage 2 input (B, H)
  Mat rh;        // reset_before stage 2 output (B, H), optional
};

// ---------------------------------------------------------------------------------------- whole sequences
// A layer's buffers as the devices see them. A Blocks buffer is (D, N, B, width), contiguous: per direction N
// blocks of B rows. N is T (one block a step), T+1 or 2 (state slots, TimeLayout), or 1: one block every step
// reuses (step scratch, or a device's one-step buffer).
struct Blocks {
  void* data = nullptr;
  int64_t n = 0, rows = 0, width = 0;

  // Element offset of direction d's block i.
  S2S_HD int64_t offset(int64_t d, int64_t i) const { return (d * n + (n == 1 ? 0 : i)) * rows * width; }
};

struct DirectionWeights {
  const void* w_ih = nullptr;  // (G·H, I) contiguous
  const void* w_hh = nullptr;  // (G·H, H) contiguous
  const void* b_ih = nullptr;  // (G·H,) or null
  const void* b_hh = nullptr;
};

// One layer's forward, D directions over the same input. Direction d runs with layout(d).
struct Sequence {
  CellKind kind = CellKind::LSTM;
  Dtype dtype = Dtype::Float32;
  int64_t D = 1, T = 0, B = 0, I = 0, H = 0;
  int64_t P = 0;  // the state h's width: H, or the projection's (the devices' own loops run only when P == H)
  bool reverse[2] = {false, true};
  bool history = true;       // keep hs, cs and the workspace of every step (training)
  bool fuse_input = false;   // the device computes each step's input projection from x (gates / gi hold none)
  const void* x = nullptr;   // (T, B, I), with fuse_input
  DirectionWeights w[2];
  const uint8_t* active = nullptr;  // (T, B) or null
  Blocks gates;  // LSTM (D, T|1, B, 4·H): the input projections (unless fuse_input), the step's recurrent product
                 // is added in place and the activated gates overwrite them: the workspace
  Blocks gi;     // GRU (D, T|1, B, 3·H): the input projections, or (fuse_input) the device's one-step buffer
  Blocks ws;     // GRU (D, T|1, B, A·H): the workspace; none without history for reset_after
  Blocks hs, cs; // (D, slots, B, P) and (D, slots, B, H); cs LSTM only
  Blocks gh;     // GRU step scratch (D, 1, B, hidden_gates·H): h W_hh^T (the columns acting on h)
  Blocks rh, ghn;  // GRU reset_before step scratch (D, 1, B, H): r * h and (r * h) W_hn^T
  void* out = nullptr;  // (T, B, D·P)

  S2S_HD TimeLayout layout(int64_t d) const { return {T, reverse[d], history}; }
  S2S_HD int64_t out_ld() const { return D * P; }
  S2S_HD int64_t out_offset(int64_t d, int64_t t) const { return t * B * D * P + d * P; }
  S2S_HD const uint8_t* active_row(int64_t t) const { return active ? active + t * B : nullptr; }

  Mat mat(const Blocks& b, int64_t d, int64_t i) const {
    if (!b.data) return {};
    return {static_cast<char*>(b.data) + b.offset(d, i) * element_size(dtype), b.width};
  }
  CMat cmat(const Blocks& b, int64_t d, int64_t i) const {
    const Mat m = mat(b, d, i);
    return {m.data, m.ld};
  }
  Mat out_rows(int64_t d, int64_t t) const {
    return {static_cast<char*>(out) + out_offset(d, t) * element_size(dtype), out_ld()};
  }
};

// The backward buffers of a Sequence (whose hs, cs, gates / ws it reads as the forward left them).
struct SequenceGrads {
  const void* go = nullptr;  // (T, B, D·H) output gradient, zero at inactive steps; or null
  Blocks dh;      // (D, 2, B, H): the state gradient, step k of the backward loop reading block k % 2 and writing the
                  // other; grad_h_n in block 0 on entry, so grad_h0 ends in block T % 2
  Blocks dc;      // LSTM (D, 1, B, H), in place: grad_c_n on entry, grad_c0 on return
  Blocks dgates;  // LSTM (D, T, B, 4·H)
  Blocks dgi, dgh;  // GRU (D, T, B, 3·H); reset_before: dgh is dgi
  Blocks rh;      // GRU reset_before (D, T, B, H): r * h, for the W_hn gradient
  Blocks drh;     // GRU reset_before step scratch (D, 1, B, H)
};

// One step's pointwise parameters, direction d, forward step s (the same for every device's loop).
inline void set_forward_step(ForwardStep& p, const Sequence& q, int64_t d, int64_t s) {
  const TimeLayout L = q.layout(d);
  p.dtype = q.dtype;
  p.H = q.H;
  p.active = q.active_row(L.time(s));
  p.hx = q.cmat(q.hs, d, L.read(s));
  p.h1 = q.mat(q.hs, d, L.write(s));
  p.out = q.out_rows(d, L.time(s));
  p.b_ih = q.w[d].b_ih;
  p.b_hh = q.w[d].b_hh;
}

inline LstmForwardParams lstm_forward_step(const Sequence& q, int64_t d, int64_t s) {
  const TimeLayout L = q.layout(d);
  LstmForwardParams p;
  set_forward_step(p, q, d, s);
  p.g1 = q.cmat(q.gates, d, L.time(s));
  p.ws = q.mat(q.gates, d, L.time(s));  // activated in place
  p.cx = q.cmat(q.cs, d, L.read(s));
  p.c1 = q.mat(q.cs, d, L.write(s));
  return p;
}

inline GruForwardParams gru_forward_step(const Sequence& q, int64_t d, int64_t s) {
  const int64_t t = q.layout(d).time(s);
  GruForwardParams p;
  set_forward_step(p, q, d, s);
  p.kind = q.kind;
  p.gi = q.cmat(q.gi, d, t);
  p.ws = q.mat(q.ws, d, t);
  p.gh = q.cmat(q.gh, d, 0);
  p.rh = q.mat(q.rh, d, 0);
  p.ghn = q.cmat(q.ghn, d, 0);
  return p;
}

// Backward step k of the loop (forward step s = T-1-k), direction d.
inline void set_backward_step(BackwardStep& p, const Sequence& q, const SequenceGrads& g, int64_t d, int64_t k) {
  const int64_t t = q.layout(d).time(q.T - 1 - k);
  p.dtype = q.dtype;
  p.H = q.H;
  p.active = q.active_row(t);
  if (g.go) p.dh1 = {static_cast<const char*>(g.go) + q.out_offset(d, t) * element_size(q.dtype), q.out_ld()};
  p.dh2 = q.cmat(g.dh, d, k % 2);
  p.dhx = q.mat(g.dh, d, (k + 1) % 2);
}

inline LstmBackwardParams lstm_backward_step(const Sequence& q, const SequenceGrads& g, int64_t d, int64_t k) {
  const TimeLayout L = q.layout(d);
  const int64_t s = q.T - 1 - k;
  LstmBackwardParams p;
  set_backward_step(p, q, g, d, k);
  p.ws = q.cmat(q.gates, d, L.time(s));
  p.cx = q.cmat(q.cs, d, L.read(s));
  p.c1 = q.cmat(q.cs, d, L.write(s));
  p.dgates = q.mat(g.dgates, d, L.time(s));
  p.dc1 = q.cmat(g.dc, d, 0);
  p.dcx = q.mat(g.dc, d, 0);  // in place: each element of dc is read before it is overwritten
  return p;
}

inline GruBackwardParams gru_backward_step(const Sequence& q, const SequenceGrads& g, int64_t d, int64_t k) {
  const TimeLayout L = q.layout(d);
  const int64_t s = q.T - 1 - k;
  GruBackwardParams p;
  set_backward_step(p, q, g, d, k);
  p.kind = q.kind;
  p.ws = q.cmat(q.ws, d, L.time(s));
  p.hx = q.cmat(q.hs, d, L.read(s));
  p.dgi = q.mat(g.dgi, d, L.time(s));
  p.dgh = q.mat(g.dgh, d, L.time(s));
  p.drh = q.cmat(g.drh, d, 0);
  p.rh = q.mat(g.rh, d, L.time(s));
  return p;
}

}  // namespace s2s_fused
