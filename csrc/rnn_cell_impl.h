// One LSTM / GRU step (the rnn_cell ops), forward and backward, written once for every device through the
// interface of csrc/rnn_device.h: the GEMMs and one pointwise pass (csrc/cpu/rnn_cell.cpp,
// csrc/cuda/rnn_cell_binding.cpp). Shapes: csrc/rnn_core.h with T = 1 and no time dimension.
#pragma once

#include <ATen/ATen.h>

#include <array>
#include <tuple>

#include "checks.h"
#include "rnn_device.h"

namespace s2s_fused {

struct CellArgs {
  at::Tensor input, hx, w_ih, w_hh, b_ih, b_hh;  // contiguous; biases possibly undefined
  int64_t B, I, H;
};

// The parameters every pointwise kernel takes, for a cell of input's dtype.
template <class P>
P step_params(const at::Tensor& input, int64_t H) {
  P p;
  p.dtype = to_dtype(input.scalar_type());
  p.H = H;
  return p;
}

// ... and for a backward kernel, with the incoming state gradient dh (B, H) (undefined: none).
template <class P>
P backward_params(const at::Tensor& input, int64_t H, const at::Tensor& dh) {
  P p = step_params<P>(input, H);
  p.dh1 = cmat(dh);
  return p;
}

// Checks shared by both cells; gates = 4 (LSTM) or 3 (GRU).
inline CellArgs check_cell_args(const at::Tensor& input, const at::Tensor& hx, const at::Tensor& w_ih,
                                const at::Tensor& w_hh, const std::optional<at::Tensor>& b_ih,
                                const std::optional<at::Tensor>& b_hh, int64_t gates) {
  check_dim(input, 2, "input");
  check_dim(hx, 2, "hx");
  check_floating(input, "input");
  check_same(hx, input, "hx", "input");
  const int64_t B = input.size(0), I = input.size(1), H = hx.size(1);
  check_size(hx, 0, B, "hx");
  CellArgs a{input.contiguous(), hx.contiguous(), w_ih, w_hh, contiguous_or_undefined(b_ih),
             contiguous_or_undefined(b_hh), B, I, H};
  check_rnn_weights(input, w_ih, w_hh, a.b_ih, a.b_hh, gates, I, H);
  return a;
}

template <class PW>
std::tuple<at::Tensor, at::Tensor, at::Tensor> lstm_cell_forward_impl(
    const PW& pw, const at::Tensor& input, const at::Tensor& hx, const at::Tensor& cx, const at::Tensor& w_ih,
    const at::Tensor& w_hh, const std::optional<at::Tensor>& b_ih, const std::optional<at::Tensor>& b_hh) {
  const CellArgs a = check_cell_args(input, hx, w_ih, w_hh, b_ih, b_hh, 4);
  check_saved(cx, hx.sizes(), input, "cx", " (as hx)");
  const at::Tensor c0 = cx.contiguous();
  // One buffer takes both GEMMs (the second accumulates in place) and then, activated in place, becomes the
  // workspace backward reads: no separate pre-activation tensor is ever written.
  at::Tensor gates = weight_mm(pw, a.input, a.w_ih.t());
  weight_gemm(pw, gates, a.hx, a.w_hh.t(), true);
  at::Tensor h1 = pw.buffer(a.hx.sizes(), a.hx.options()), c1 = pw.buffer(a.hx.sizes(), a.hx.options());
  auto p = step_params<LstmForwardParams>(input, a.H);
  p.g1 = cmat(gates);
  p.b_ih = ptr_or_null(a.b_ih);
  p.b_hh = ptr_or_null(a.b_hh);
  p.cx = cmat(c0);
  p.h1 = mat(h1);
  p.c1 = mat(c1);
  p.ws = mat(gates);
  pw.lstm_forward(one(p), a.B);
  return {h1, c1, gates};
}

template <class PW>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> lstm_cell_backward_impl(
    const PW& pw, const std::optional<at::Tensor>& grad_h1, const std::optional<at::Tensor>& grad_c1,
    const at::Tensor& input, const at::Tensor& hx, const at::Tensor& cx, const at::Tensor& w_ih,
    const at::Tensor& w_hh, const at::Tensor& workspace, const at::Tensor& c1, std::array<bool, 6> mask) {
  const CellArgs a = check_cell_args(input, hx, w_ih, w_hh, std::nullopt, std::nullopt, 4);
  const int64_t B = a.B, H = a.H;
  // Every tensor the pointwise kernel reads is (B, H) or (B, 4H) of input's dtype: it reads them by those sizes.
  for (auto [t, name] : {std::pair{&grad_h1, "grad_h1"}, std::pair{&grad_c1, "grad_c1"}}) {
    if (t->has_value() && (*t)->defined()) check_saved(**t, hx.sizes(), input, name, " (as hx)");
  }
  check_saved(cx, hx.sizes(), input, "cx", " (as hx)");
  check_saved(workspace, {B, 4 * H}, input, "workspace");
  check_saved(c1, hx.sizes(), input, "c1", " (as hx)");
  const at::Tensor dh = contiguous_or_undefined(grad_h1), dc = contiguous_or_undefined(grad_c1);
  const at::Tensor ws = workspace.contiguous(), c0 = cx.contiguous(), cn = c1.contiguous();
  at::Tensor dgates = pw.buffer({B, 4 * H}, input.options());
  at::Tensor dcx = pw.buffer(a.hx.sizes(), a.hx.options());
  auto p = backward_params<LstmBackwardParams>(input, H, dh);
  p.dc1 = cmat(dc);
  p.ws = cmat(ws);
  p.cx = cmat(c0);
  p.c1 = cmat(cn);
  p.dgates = mat(dgates);
  p.dcx = mat(dcx);
  pw.lstm_backward(one(p), B);
  const auto none = [&] { return at::empty({0}, input.options()); };
  return {mask[0] ? weight_mm(pw, dgates, a.w_ih) : none(),
          mask[1] ? weight_mm(pw, dgates, a.w_hh) : none(),
          mask[2] ? dcx : none(),
          mask[3] ? mm(pw, dgates.t(), a.input) : none(),
          mask[4] ? grad_w_hh(pw, CellKind::LSTM, dgates, a.hx, at::Tensor()) : none(),
          mask[5] ? dgates.sum(0) : none()};
}

template <class PW>
std::tuple<at::Tensor, at::Tensor> gru_cell_forward_impl(const PW& pw, const at::Tensor& input,
                                                         const at::Tensor& hx, const at::Tensor& w_ih,
                                                         const at::Tensor& w_hh,
                                                         const std::optional<at::Tensor>& b_ih,
                                                         const std::optional<at::Tensor>& b_hh, bool reset_after) {
  const CellArgs a = check_cell_args(input, hx, w_ih, w_hh, b_ih, b_hh, 3);
  const int64_t B = a.B, H = a.H;
  at::Tensor h1 = pw.buffer(a.hx.sizes(), a.hx.options());
  auto p = step_params<GruForwardParams>(input, H);
  p.kind = gru_kind(reset_after);
  p.b_ih = ptr_or_null(a.b_ih);
  p.b_hh = ptr_or_null(a.b_hh);
  p.hx = cmat(a.hx);
  p.h1 = mat(h1);
  const at::Tensor gi = weight_mm(pw, a.input, a.w_ih.t());
  p.gi = cmat(gi);
  if (p.kind == CellKind::GRU_RESET_AFTER) {
    const at::Tensor gh = weight_mm(pw, a.hx, a.w_hh.t());
    at::Tensor ws = pw.buffer({B, 4 * H}, input.options());
    p.gh = cmat(gh);
    p.ws = mat(ws);
    pw.gru_forward(one(p), B);
    return {h1, ws};
  }
  // Cho et al.: the reset gate scales h before the W_hn product, so the n columns need a second GEMM.
  const at::Tensor gh_rz = weight_mm(pw, a.hx, a.w_hh.narrow(0, 0, 2 * H).t());
  at::Tensor ws = pw.buffer({B, 3 * H}, input.options());
  at::Tensor rh = pw.buffer(a.hx.sizes(), a.hx.options());
  p.gh = cmat(gh_rz);
  p.ws = mat(ws);
  p.rh = mat(rh);
  pw.gru_forward(one(p), B);
  const at::Tensor ghn = weight_mm(pw, rh, a.w_hh.narrow(0, 2 * H, H).t());
  p.ghn = cmat(ghn);
  pw.gru_forward_stage2(one(p), B);
  return {h1, ws};
}

template <class PW>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> gru_cell_backward_impl(
    const PW& pw, const at::Tensor& grad_h1, const at::Tensor& input, const at::Tensor& hx,
    const at::Tensor& w_ih, const at::Tensor& w_hh, const at::Tensor& workspace, bool reset_after,
    std::array<bool, 6> mask) {
  const CellArgs a = check_cell_args(input, hx, w_ih, w_hh, std::nullopt, std::nullopt, 3);
  const int64_t B = a.B, H = a.H;
  const CellKind kind = gru_kind(reset_after);
  check_saved(grad_h1, hx.sizes(), input, "grad_h1", " (as hx)");
  check_saved(workspace, {B, workspace_gates(kind) * H}, input, "workspace");
  const at::Tensor dh = grad_h1.contiguous(), ws = workspace.contiguous();
  at::Tensor dgi = pw.buffer({B, 3 * H}, input.options());
  at::Tensor dhx = pw.buffer(a.hx.sizes(), a.hx.options());
  auto p = backward_params<GruBackwardParams>(input, H, dh);
  p.kind = kind;
  p.ws = cmat(ws);
  p.hx = cmat(a.hx);
  p.dgi = mat(dgi);
  p.dhx = mat(dhx);
  const auto none = [&] { return at::empty({0}, input.options()); };
  at::Tensor dgh = dgi, rh;  // reset_before: gh_n = (r h) W_hn has gradient dn, the same as gi_n's
  if (kind == CellKind::GRU_RESET_AFTER) {
    dgh = pw.buffer({B, 3 * H}, input.options());
    p.dgh = mat(dgh);
    pw.gru_backward(one(p), B);
  } else {
    p.dgh = p.dgi;
    pw.gru_backward(one(p), B);
    const at::Tensor drh = weight_mm(pw, dgi.narrow(1, 2 * H, H), a.w_hh.narrow(0, 2 * H, H));
    rh = pw.buffer(a.hx.sizes(), a.hx.options());
    p.drh = cmat(drh);
    p.rh = mat(rh);
    pw.gru_backward_stage2(one(p), B);  // also the r columns of dgi, needed by every other gradient
  }
  at::Tensor grad_hx = none();
  if (mask[1]) {
    const int64_t Gh = hidden_gates(kind) * H;
    weight_gemm(pw, dhx, dgh.narrow(1, 0, Gh), a.w_hh.narrow(0, 0, Gh), true);
    grad_hx = dhx;
  }
  return {mask[0] ? weight_mm(pw, dgi, a.w_ih) : none(), grad_hx, mask[2] ? mm(pw, dgi.t(), a.input) : none(),
          mask[3] ? grad_w_hh(pw, kind, dgh, a.hx, rh) : none(), mask[4] ? dgi.sum(0) : none(),
          mask[5] ? dgh.sum(0) : none()};
}

}  // namespace s2s_fused
