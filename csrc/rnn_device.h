// What a device provides to the RNN ops (csrc/rnn_cell_impl.h, csrc/rnn_recurrence.h), which are written once for
// every device against this interface. Implementations: csrc/cpu/rnn_policy.h, csrc/cuda/rnn_policy.h.
//
//   buffer(sizes, options)          a sequence-sized buffer (CPU: huge-page backed)
//   gemm(out, a, b, accumulate)     out = a @ b (+ out): 2-D operands, or 3-D ones batched over the directions
//                                   (the two directions' step GEMMs as one call; any direction stride)
//   lstm_forward(params, B) ...     the pointwise kernels of csrc/rnn_core.h for one or both directions (params:
//                                   one set per direction) over B rows; a device may run both in one launch
//   projects_input(dtype)           whether run_sequence computes each step's input projection itself (so none is
//                                   computed up front); when true, run_sequence must accept every such sequence
//   run_sequence(seq)               the whole forward time loop in one call, where the device has one for this
//   run_sequence_backward(seq, g)   sequence (its own limits inside); false: the caller runs the per-step loop
#pragma once

#include <ATen/ATen.h>

#include <concepts>
#include <span>

#include "rnn_core.h"

namespace s2s_fused {

template <class PW>
concept RnnDevice = requires(const PW& pw, at::Tensor& out, const at::Tensor& a, at::IntArrayRef sizes,
                             const at::TensorOptions& options, bool accumulate, int64_t B, Dtype dtype,
                             const Sequence& seq, const SequenceGrads& grads,
                             std::span<const LstmForwardParams> lf, std::span<const LstmBackwardParams> lb,
                             std::span<const GruForwardParams> gf, std::span<const GruBackwardParams> gb) {
  { pw.buffer(sizes, options) } -> std::same_as<at::Tensor>;
  pw.gemm(out, a, a, accumulate);
  pw.lstm_forward(lf, B);
  pw.lstm_backward(lb, B);
  pw.gru_forward(gf, B);
  pw.gru_forward_stage2(gf, B);
  pw.gru_backward(gb, B);
  pw.gru_backward_stage2(gb, B);
  { pw.projects_input(dtype) } -> std::same_as<bool>;
  { pw.run_sequence(seq) } -> std::same_as<bool>;
  { pw.run_sequence_backward(seq, grads) } -> std::same_as<bool>;
};

// a @ b into a new tensor, through the device's GEMM.
template <class PW>
at::Tensor mm(const PW& pw, const at::Tensor& a, const at::Tensor& b) {
  at::Tensor out = pw.buffer({a.size(0), b.size(1)}, a.options());
  pw.gemm(out, a, b, false);
  return out;
}

// out (+)= a @ w for a weight w (or a view of one) that stays the same across calls: a device may keep a prepared
// copy of it (the CPU's packed path, csrc/cpu/rnn_policy.h); otherwise its gemm.
template <class PW>
void weight_gemm(const PW& pw, at::Tensor& out, const at::Tensor& a, const at::Tensor& w, bool accumulate) {
  if constexpr (requires { pw.weight_gemm(out, a, w, accumulate); }) {
    pw.weight_gemm(out, a, w, accumulate);
  } else {
    pw.gemm(out, a, w, accumulate);
  }
}

// a @ w into a new tensor, for a weight w as above.
template <class PW>
at::Tensor weight_mm(const PW& pw, const at::Tensor& a, const at::Tensor& w) {
  at::Tensor out = pw.buffer({a.size(0), w.size(1)}, a.options());
  weight_gemm(pw, out, a, w, false);
  return out;
}

// One parameter set as the one-direction span the pointwise kernels take.
template <class P>
std::span<const P> one(const P& p) {
  return {&p, 1};
}

// The gradient of W_hh (G·H, H) from the hidden-side gate gradients dgh (N, G·H) and the states h (N, H) the steps
// read; reset_before: its n rows act on r * h, so rh (N, H) replaces h there.
template <class PW>
at::Tensor grad_w_hh(const PW& pw, CellKind kind, const at::Tensor& dgh, const at::Tensor& h, const at::Tensor& rh) {
  if (kind != CellKind::GRU_RESET_BEFORE) return mm(pw, dgh.t(), h);
  const int64_t H = h.size(1);
  at::Tensor g = pw.buffer({3 * H, H}, h.options());
  at::Tensor g_rz = g.narrow(0, 0, 2 * H), g_n = g.narrow(0, 2 * H, H);
  pw.gemm(g_rz, dgh.narrow(1, 0, 2 * H).t(), h, false);
  pw.gemm(g_n, dgh.narrow(1, 2 * H, H).t(), rh, false);
  return g;
}

}  // namespace s2s_fused
