// Pointwise parts of the LSTM and GRU cells, shared by the cell ops (rnn_cell) and the sequence layers
// (rnn_layer), on CPU (csrc/cpu/kernels/rnn_pointwise.cpp) and CUDA (csrc/cuda/rnn_pointwise.cu): everything
// between the GEMMs, one pass over memory each way. Plain C++ (no torch headers) so nvcc and the CPU
// capability builds share it.
//
// Every kernel works on rows [row_begin, row_end) of the batch; a row of an (B, G*H) gate matrix holds the G
// gates of one sample, each H wide, in torch's gate order (LSTM i,f,g,o; GRU r,z,n). Pointers are raw and typed
// by `dtype`; each 2-D operand has its own row stride (in elements, columns contiguous) so the layers can pass
// time slices of larger buffers. Optional operands are nullptr. Values are computed in float (double for
// double) and rounded once on store.
#pragma once

#include <cstdint>

namespace s2s_fused {

enum class Dtype : int { Float32 = 0, Float64 = 1, Float16 = 2, BFloat16 = 3 };

struct Mat {  // a row-major matrix view: element (b, j) at data + b * ld + j
  void* data = nullptr;
  int64_t ld = 0;
};
struct CMat {
  const void* data = nullptr;
  int64_t ld = 0;
};

// LSTM forward: pre = g1 (+ g2) (+ b1) (+ b2); i,f,o = sigmoid, g = tanh; c1 = f*cx + i*g; h1 = o*tanh(c1).
// ws (optional) receives the activated gates (i, f, g, o), the only thing backward needs besides cx and c1.
// ws may alias g1 (in-place activation).
struct LstmForwardParams {
  Dtype dtype;
  int64_t H;
  CMat g1, g2;              // (B, 4H) pre-activations; g2 optional
  const void* b1 = nullptr;  // (4H,) optional
  const void* b2 = nullptr;  // (4H,) optional
  CMat cx;                  // (B, H)
  Mat h1, c1;               // (B, H)
  Mat ws;                   // (B, 4H) optional
  // Finished rows (layer with packed input): rows with mask == 0 keep their state (h1 = hx, c1 = cx) and write
  // zeros to `out`. Optional.
  const uint8_t* active = nullptr;
  CMat hx;                  // (B, H) required when active != nullptr
  Mat out;                  // (B, H) optional second copy of h1 (the layer's output at this step)
  int64_t j0 = 0, j1 = -1;  // CPU kernels: only hidden units [j0, j1) of each row (j1 < 0: all H)
};

// LSTM backward: dh = dh1 (+ dh2), dc = dc1 (+ dh * o * (1 - tanh(c1)^2)); writes the pre-activation gate
// gradients dgates (B, 4H) and dcx (B, H). dh1/dh2/dc1 optional (nullptr reads as zero).
struct LstmBackwardParams {
  Dtype dtype;
  int64_t H;
  CMat dh1, dh2, dc1;
  CMat ws, cx, c1;
  Mat dgates, dcx;
  // Rows with active == 0 (finished sequences of a packed batch): gradients pass straight through to the
  // previous state (dhx = dh, dcx = dc) and dgates is zero. Optional; dhx required with it.
  const uint8_t* active = nullptr;
  Mat dhx;
};

// GRU forward.
// reset_after (torch, cuDNN): r = s(gi_r + gh_r + b), z = s(gi_z + gh_z + b), hn = gh_n + b_hn,
//   n = tanh(gi_n + b_in + r * hn), h1 = (1 - z) * n + z * hx.   ws = (r, z, n, hn): (B, 4H).
// reset_before (Cho et al. 2014, d2l): stage 1 computes r, z from gi, gh (gh holds only the r,z columns) and
//   writes rh = r * hx; the caller multiplies rh by W_hn into ghn; stage 2 computes n = tanh(gi_n + b_in + ghn +
//   b_hn) and h1.   ws = (r, z, n): (B, 3H).
struct GruForwardParams {
  Dtype dtype;
  int64_t H;
  bool reset_after = true;
  CMat gi, gh;              // (B, 3H) input / hidden projections (reset_before: gh is (B, 2H), r and z only)
  const void* b_ih = nullptr;  // (3H,) optional
  const void* b_hh = nullptr;  // (3H,) optional
  CMat hx;                  // (B, H)
  Mat h1;                   // (B, H)
  Mat ws;                   // (B, 4H) reset_after, (B, 3H) reset_before; required for reset_before
  Mat rh;                   // reset_before stage 1 output (B, H)
  CMat ghn;                 // reset_before stage 2 input (B, H): rh @ W_hn^T
  const uint8_t* active = nullptr;
  Mat out;
  int64_t j0 = 0, j1 = -1;  // CPU kernels: only hidden units [j0, j1) of each row (j1 < 0: all H)
};

// GRU backward.
// reset_after: writes dgi = (dr, dz, dn) and dgh = (dr, dz, dn * r) pre-activation gradients and dhx = dh * z
//   (the caller adds dgh @ W_hh).
// reset_before stage 1: writes dz, dn into dgi (n and z columns; dgh's n columns get dn too, as gh_n = rh W_hn)
//   — the caller computes drh = dn @ W_hn; stage 2 writes dr into dgi/dgh and dhx = dh * z + drh * r, and
//   rh = r * hx for the W_hn gradient.
struct GruBackwardParams {
  Dtype dtype;
  int64_t H;
  bool reset_after = true;
  CMat dh1, dh2;            // optional; dh = dh1 + dh2
  CMat ws, hx;
  Mat dgi, dgh;             // (B, 3H)
  Mat dhx;                  // (B, H)
  CMat drh;                 // reset_before stage 2 input (B, H)
  Mat rh;                   // reset_before stage 2 output (B, H), optional
  const uint8_t* active = nullptr;
};

// A whole layer-direction's recurrence in one call (the CUDA persistent kernel, csrc/cuda/rnn_persistent.cu, and
// the CPU packed-weight loop, csrc/cpu/rnn_recurrence_cpu.h): for LSTM, `gates` (T, B, 4H) holds the input
// projections and is activated in place (the workspace); for GRU, `gi` (T, B, 3H) holds them and `ws` receives
// (r, z, n, W_hn h + b_hn) (T, B, 4H) with reset_after, (r, z, n) (T, B, 3H) without. hs (and cs) are
// (T+1, B, H) with the initial state already in place (index 0, or T when reverse); out is (T, B, H).
// Every buffer is contiguous; active (T, B) is optional. Outputs match the per-step path exactly in layout.
// What both whole-recurrence calls (forward and backward) are about.
struct RecurrenceShape {
  Dtype dtype;
  int64_t T = 0, B = 0, H = 0;
  bool gru = false, reverse = false, reset_after = true;
  const void* w_hh = nullptr;  // (G*H, H)
};

struct PersistentParams : RecurrenceShape {
  // With fuse_input, the callee computes the input projections itself, step by step (gates / gi hold nothing on entry;
  // gi may be nullptr): x (T, B, I) contiguous, w_ih (G*H, I). CPU packed path only (see fuses_input_projection).
  bool fuse_input = false;  // x / w_ih may be nullptr with it when I = 0
  const void* x = nullptr;
  const void* w_ih = nullptr;
  int64_t I = 0;
  const void* b1 = nullptr;    // b_ih (G*H,) or nullptr
  const void* b2 = nullptr;    // b_hh (G*H,) or nullptr
  void* gates = nullptr;       // LSTM
  const void* gi = nullptr;    // GRU
  void* ws = nullptr;          // GRU
  void* hs = nullptr;
  void* cs = nullptr;          // LSTM
  void* out = nullptr;
  const uint8_t* active = nullptr;
  // Inference (CPU packed path): nothing is kept for backward. hs and cs are then (2, B, H), step s reading slot
  // s % 2 and writing the other (the final state ends in slot T % 2); gates is one (B, 4H) step buffer (LSTM); ws
  // is a (B, 3H) step buffer for GRU reset_before and unused (nullptr) with reset_after.
  bool keep_workspace = true;
};

// The backward time loop of a layer-direction in one call (CPU packed-weight loop): the per-step pointwise
// backward and dh GEMM of rnn_layer_impl.h, with the same buffers. dh (B, H) holds grad_h_n on entry and dh_next
// (B, H) is scratch; on return the gradient of h0 is in dh when T is even and in dh_next when T is odd (the two
// swap every step). dc (LSTM, (B, H)) holds grad_c_n on entry and the gradient of c0 on return. go (T, B, H) is
// the masked output gradient or nullptr. LSTM writes dgates (T, B, 4H); GRU writes dgi and dgh (T, B, 3H; the
// same buffer without reset_after) and, without reset_after, rh (T, B, H) = r * h for the W_hn gradient.
struct PersistentBackwardParams : RecurrenceShape {
  const void* go = nullptr;
  void* dh = nullptr;
  void* dh_next = nullptr;
  void* dc = nullptr;
  const void* ws = nullptr;
  const void* hs = nullptr;
  const void* cs = nullptr;
  void* dgates = nullptr;
  void* dgi = nullptr;
  void* dgh = nullptr;
  void* rh = nullptr;
  const uint8_t* active = nullptr;
};

}  // namespace s2s_fused

namespace s2s_fused::cpu {

// One capability's copy of the CPU kernels, each over rows [row_begin, row_end).
struct RnnPointwiseKernels {
  void (*lstm_forward)(const LstmForwardParams&, int64_t row_begin, int64_t row_end);
  void (*lstm_backward)(const LstmBackwardParams&, int64_t row_begin, int64_t row_end);
  void (*gru_forward)(const GruForwardParams&, int64_t row_begin, int64_t row_end);
  void (*gru_forward_stage2)(const GruForwardParams&, int64_t row_begin, int64_t row_end);   // reset_before
  void (*gru_backward)(const GruBackwardParams&, int64_t row_begin, int64_t row_end);
  void (*gru_backward_stage2)(const GruBackwardParams&, int64_t row_begin, int64_t row_end);  // reset_before
};

}  // namespace s2s_fused::cpu
