// One LSTM / GRU step, forward and backward, written once for every device. A device policy `PW` runs the GEMMs
//   gemm(at::Tensor& out, const at::Tensor& a, const at::Tensor& b, bool accumulate)   (out = a @ b (+ out))
// (oneDNN or BLAS on CPU, cuBLAS on CUDA) and the pointwise work through its members
//   lstm_forward(const LstmForwardParams&, int64_t B)      lstm_backward(const LstmBackwardParams&, int64_t B)
//   gru_forward / gru_forward_stage2(const GruForwardParams&, int64_t B)
//   gru_backward / gru_backward_stage2(const GruBackwardParams&, int64_t B)
// (csrc/cpu/rnn_cell.cpp: vectorized, parallel over rows; csrc/cuda/rnn_cell_binding.cpp: CUDA kernels).
#pragma once

#include <ATen/ATen.h>

#include <array>
#include <tuple>

#include "checks.h"

namespace s2s_fused {

struct CellArgs {
  at::Tensor input, hx, w_ih, w_hh, b_ih, b_hh;  // contiguous; biases possibly undefined
  int64_t B, I, H;
};

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

// a @ b into a new tensor, through the policy's GEMM.
template <class PW>
at::Tensor mm(const PW& pw, const at::Tensor& a, const at::Tensor& b) {
  at::Tensor out = at::empty({a.size(0), b.size(1)}, a.options());
  pw.gemm(out, a, b, false);
  return out;
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
  at::Tensor gates = mm(pw, a.input, a.w_ih.t());
  pw.gemm(gates, a.hx, a.w_hh.t(), true);
  at::Tensor h1 = at::empty_like(a.hx), c1 = at::empty_like(a.hx);
  LstmForwardParams p;
  p.dtype = to_dtype(input.scalar_type());
  p.H = a.H;
  p.g1 = cmat(gates);
  p.b1 = ptr_or_null(a.b_ih);
  p.b2 = ptr_or_null(a.b_hh);
  p.cx = cmat(c0);
  p.h1 = mat(h1);
  p.c1 = mat(c1);
  p.ws = mat(gates);
  pw.lstm_forward(p, a.B);
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
  at::Tensor dgates = at::empty({B, 4 * H}, input.options());
  at::Tensor dcx = at::empty_like(a.hx);
  LstmBackwardParams p;
  p.dtype = to_dtype(input.scalar_type());
  p.H = H;
  p.dh1 = cmat(dh);
  p.dc1 = cmat(dc);
  p.ws = cmat(ws);
  p.cx = cmat(c0);
  p.c1 = cmat(cn);
  p.dgates = mat(dgates);
  p.dcx = mat(dcx);
  pw.lstm_backward(p, B);
  const auto none = [&] { return at::empty({0}, input.options()); };
  return {mask[0] ? mm(pw, dgates, a.w_ih) : none(),        mask[1] ? mm(pw, dgates, a.w_hh) : none(),
          mask[2] ? dcx : none(),                               mask[3] ? mm(pw, dgates.t(), a.input) : none(),
          mask[4] ? mm(pw, dgates.t(), a.hx) : none(),          mask[5] ? dgates.sum(0) : none()};
}

template <class PW>
std::tuple<at::Tensor, at::Tensor> gru_cell_forward_impl(const PW& pw, const at::Tensor& input,
                                                         const at::Tensor& hx, const at::Tensor& w_ih,
                                                         const at::Tensor& w_hh,
                                                         const std::optional<at::Tensor>& b_ih,
                                                         const std::optional<at::Tensor>& b_hh, bool reset_after) {
  const CellArgs a = check_cell_args(input, hx, w_ih, w_hh, b_ih, b_hh, 3);
  const int64_t B = a.B, H = a.H;
  at::Tensor h1 = at::empty_like(a.hx);
  GruForwardParams p;
  p.dtype = to_dtype(input.scalar_type());
  p.H = H;
  p.reset_after = reset_after;
  p.b_ih = ptr_or_null(a.b_ih);
  p.b_hh = ptr_or_null(a.b_hh);
  p.hx = cmat(a.hx);
  p.h1 = mat(h1);
  const at::Tensor gi = mm(pw, a.input, a.w_ih.t());
  p.gi = cmat(gi);
  if (reset_after) {
    const at::Tensor gh = mm(pw, a.hx, a.w_hh.t());
    at::Tensor ws = at::empty({B, 4 * H}, input.options());
    p.gh = cmat(gh);
    p.ws = mat(ws);
    pw.gru_forward(p, B);
    return {h1, ws};
  }
  // Cho et al.: the reset gate scales h before the W_hn product, so the n columns need a second GEMM.
  const at::Tensor gh_rz = mm(pw, a.hx, a.w_hh.narrow(0, 0, 2 * H).t());
  at::Tensor ws = at::empty({B, 3 * H}, input.options());
  at::Tensor rh = at::empty_like(a.hx);
  p.gh = cmat(gh_rz);
  p.ws = mat(ws);
  p.rh = mat(rh);
  pw.gru_forward(p, B);
  const at::Tensor ghn = mm(pw, rh, a.w_hh.narrow(0, 2 * H, H).t());
  p.ghn = cmat(ghn);
  pw.gru_forward_stage2(p, B);
  return {h1, ws};
}

template <class PW>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> gru_cell_backward_impl(
    const PW& pw, const at::Tensor& grad_h1, const at::Tensor& input, const at::Tensor& hx,
    const at::Tensor& w_ih, const at::Tensor& w_hh, const at::Tensor& workspace, bool reset_after,
    std::array<bool, 6> mask) {
  const CellArgs a = check_cell_args(input, hx, w_ih, w_hh, std::nullopt, std::nullopt, 3);
  const int64_t B = a.B, H = a.H;
  check_saved(grad_h1, hx.sizes(), input, "grad_h1", " (as hx)");
  check_saved(workspace, {B, reset_after ? 4 * H : 3 * H}, input, "workspace");
  const at::Tensor dh = grad_h1.contiguous(), ws = workspace.contiguous();
  at::Tensor dgi = at::empty({B, 3 * H}, input.options());
  at::Tensor dhx = at::empty_like(a.hx);
  GruBackwardParams p;
  p.dtype = to_dtype(input.scalar_type());
  p.H = H;
  p.reset_after = reset_after;
  p.dh1 = cmat(dh);
  p.ws = cmat(ws);
  p.hx = cmat(a.hx);
  p.dgi = mat(dgi);
  p.dhx = mat(dhx);
  const auto none = [&] { return at::empty({0}, input.options()); };
  at::Tensor grad_hx = none(), grad_w_hh = none(), grad_b_hh = none();
  if (reset_after) {
    at::Tensor dgh = at::empty({B, 3 * H}, input.options());
    p.dgh = mat(dgh);
    pw.gru_backward(p, B);
    if (mask[1]) {
      pw.gemm(dhx, dgh, a.w_hh, true);
      grad_hx = dhx;
    }
    if (mask[3]) grad_w_hh = mm(pw, dgh.t(), a.hx);
    if (mask[5]) grad_b_hh = dgh.sum(0);
  } else {
    p.dgh = p.dgi;  // gh_n = (r h) W_hn: its gradient is dn, the same as gi_n's
    pw.gru_backward(p, B);
    const at::Tensor dn = dgi.narrow(1, 2 * H, H);
    const at::Tensor drh = mm(pw, dn, a.w_hh.narrow(0, 2 * H, H));
    at::Tensor rh = at::empty_like(a.hx);
    p.drh = cmat(drh);
    p.rh = mat(rh);
    pw.gru_backward_stage2(p, B);  // also the r columns of dgi, needed by every other gradient
    const at::Tensor drz = dgi.narrow(1, 0, 2 * H);
    if (mask[1]) {
      pw.gemm(dhx, drz, a.w_hh.narrow(0, 0, 2 * H), true);
      grad_hx = dhx;
    }
    if (mask[3]) {
      grad_w_hh = at::empty_like(a.w_hh, at::MemoryFormat::Contiguous);
      at::Tensor g_rz = grad_w_hh.narrow(0, 0, 2 * H), g_n = grad_w_hh.narrow(0, 2 * H, H);
      pw.gemm(g_rz, drz.t(), a.hx, false);
      pw.gemm(g_n, dn.t(), rh, false);
    }
    if (mask[5]) grad_b_hh = dgi.sum(0);
  }
  return {mask[0] ? mm(pw, dgi, a.w_ih) : none(), grad_hx, mask[2] ? mm(pw, dgi.t(), a.input) : none(),
          grad_w_hh, mask[4] ? dgi.sum(0) : none(), grad_b_hh};
}

}  // namespace s2s_fused
