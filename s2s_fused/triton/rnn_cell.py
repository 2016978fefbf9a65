"""Triton LSTM / GRU cells: the kernels of the ops torch.ops.s2s_fused.{lstm,gru}_cell_{forward,backward}_triton
(defined, with their fake kernels and autograd, in s2s_fused/ops/rnn_cell.py).

Forward: one kernel computes, for a (BLOCK_B x BLOCK_H) tile of (batch rows x hidden units), the pre-activations
of *all* gates of those units (x W_ih^T + h W_hh^T, fp32 accumulate) and applies the cell update in registers:
the gate pre-activations never reach memory. Only the activated gates (the workspace) are stored for backward.
GRU reset_before (Cho et al.) needs r * h before its W_hn product, so it runs as two such kernels.
Backward: one pointwise kernel writes the pre-activation gate gradients, then the five GEMMs run on cuBLAS/BLAS
through torch.
Shapes as in s2s_fused.ops.rnn_cell.
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from .rnn_common import GRU_AFTER, GRU_BEFORE_1, GRU_BEFORE_2, LSTM  # noqa: F401
from .rnn_common import acc_dtype as _acc
from .rnn_common import gate_dot as _gate_dot
from .rnn_common import dot_precision as _prec
from .rnn_common import sigmoid as _sigmoid
from .rnn_common import tanh as _tanh
from .rnn_common import tile_sizes as _blocks
from .. import _op_checks as _check

Tensor = torch.Tensor





@triton.jit
def _bias(b_ptr, col0, offs_h, H, HAS: tl.constexpr):
    # One return of one type: the GPU compiler rejects a tensor return and a scalar one in the same function, even
    # behind a constexpr branch (the interpreter accepts it). Without a bias: a zero row, folded away.
    ACC: tl.constexpr = tl.float64 if b_ptr.dtype.element_ty == tl.float64 else tl.float32
    b = tl.zeros((1, offs_h.shape[0]), dtype=ACC)
    if HAS:
        b += tl.load(b_ptr + col0 + offs_h, mask=offs_h < H, other=0.0).to(ACC)[None, :]
    return b


@triton.jit
def _cell_forward_kernel(
    x_ptr, s_xb, s_xk, h_ptr, s_hb, s_hk, c_ptr, s_cb,
    wi_ptr, s_win, s_wik, wh_ptr, s_whn, s_whk, bi_ptr, bh_ptr,
    h1_ptr, c1_ptr, ws_ptr, s_wsb, aux_ptr,  # aux: GRU reset_before — rh (stage 1 out) / (stage 2 in)
    B, I, H,
    MODE: tl.constexpr, HAS_BI: tl.constexpr, HAS_BH: tl.constexpr, ACC: tl.constexpr, PREC: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid_b = tl.program_id(0)
    pid_h = tl.program_id(1)
    offs_b = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
    offs_h = pid_h * BLOCK_H + tl.arange(0, BLOCK_H)
    mask = (offs_b[:, None] < B) & (offs_h[None, :] < H)
    bh_off = offs_b[:, None].to(tl.int64) * H + offs_h[None, :]      # (B, H) contiguous outputs
    ws_off = offs_b[:, None].to(tl.int64) * s_wsb + offs_h[None, :]
    hprev = tl.load(h_ptr + offs_b[:, None] * s_hb + offs_h[None, :] * s_hk, mask=mask, other=0.0).to(ACC)
    if MODE == 0:  # LSTM: gates i, f, g, o, each x W_ih^T + h W_hh^T
        z0 = tl.zeros((BLOCK_B, BLOCK_H), dtype=ACC)
        gi = _gate_dot(z0, x_ptr, s_xb, s_xk, wi_ptr, s_win, s_wik, 0 * H, offs_b, offs_h, B, H, I, BLOCK_K, PREC)
        gi = _gate_dot(gi, h_ptr, s_hb, s_hk, wh_ptr, s_whn, s_whk, 0 * H, offs_b, offs_h, B, H, H, BLOCK_K, PREC)
        gf = _gate_dot(z0, x_ptr, s_xb, s_xk, wi_ptr, s_win, s_wik, 1 * H, offs_b, offs_h, B, H, I, BLOCK_K, PREC)
        gf = _gate_dot(gf, h_ptr, s_hb, s_hk, wh_ptr, s_whn, s_whk, 1 * H, offs_b, offs_h, B, H, H, BLOCK_K, PREC)
        gg = _gate_dot(z0, x_ptr, s_xb, s_xk, wi_ptr, s_win, s_wik, 2 * H, offs_b, offs_h, B, H, I, BLOCK_K, PREC)
        gg = _gate_dot(gg, h_ptr, s_hb, s_hk, wh_ptr, s_whn, s_whk, 2 * H, offs_b, offs_h, B, H, H, BLOCK_K, PREC)
        go = _gate_dot(z0, x_ptr, s_xb, s_xk, wi_ptr, s_win, s_wik, 3 * H, offs_b, offs_h, B, H, I, BLOCK_K, PREC)
        go = _gate_dot(go, h_ptr, s_hb, s_hk, wh_ptr, s_whn, s_whk, 3 * H, offs_b, offs_h, B, H, H, BLOCK_K, PREC)
        i = _sigmoid(gi + _bias(bi_ptr, 0 * H, offs_h, H, HAS_BI) + _bias(bh_ptr, 0 * H, offs_h, H, HAS_BH))
        f = _sigmoid(gf + _bias(bi_ptr, 1 * H, offs_h, H, HAS_BI) + _bias(bh_ptr, 1 * H, offs_h, H, HAS_BH))
        g = _tanh(gg + _bias(bi_ptr, 2 * H, offs_h, H, HAS_BI) + _bias(bh_ptr, 2 * H, offs_h, H, HAS_BH))
        o = _sigmoid(go + _bias(bi_ptr, 3 * H, offs_h, H, HAS_BI) + _bias(bh_ptr, 3 * H, offs_h, H, HAS_BH))
        cprev = tl.load(c_ptr + offs_b[:, None] * s_cb + offs_h[None, :], mask=mask, other=0.0).to(ACC)
        c = f * cprev + i * g
        h = o * _tanh(c)
        tl.store(ws_ptr + ws_off, i.to(ws_ptr.dtype.element_ty), mask=mask)
        tl.store(ws_ptr + ws_off + H, f.to(ws_ptr.dtype.element_ty), mask=mask)
        tl.store(ws_ptr + ws_off + 2 * H, g.to(ws_ptr.dtype.element_ty), mask=mask)
        tl.store(ws_ptr + ws_off + 3 * H, o.to(ws_ptr.dtype.element_ty), mask=mask)
        tl.store(c1_ptr + bh_off, c.to(c1_ptr.dtype.element_ty), mask=mask)
        tl.store(h1_ptr + bh_off, h.to(h1_ptr.dtype.element_ty), mask=mask)
    elif MODE == 3:  # GRU reset_before, stage 2: n = tanh(x W_in^T + b_in + (r h) W_hn^T + b_hn)
        z0 = tl.zeros((BLOCK_B, BLOCK_H), dtype=ACC)
        gn = _gate_dot(z0, x_ptr, s_xb, s_xk, wi_ptr, s_win, s_wik, 2 * H, offs_b, offs_h, B, H, I, BLOCK_K, PREC)
        gn = _gate_dot(gn, aux_ptr, H, 1, wh_ptr, s_whn, s_whk, 2 * H, offs_b, offs_h, B, H, H, BLOCK_K, PREC)
        n = _tanh(gn + _bias(bi_ptr, 2 * H, offs_h, H, HAS_BI) + _bias(bh_ptr, 2 * H, offs_h, H, HAS_BH))
        z = tl.load(ws_ptr + ws_off + H, mask=mask, other=0.0).to(ACC)
        tl.store(ws_ptr + ws_off + 2 * H, n.to(ws_ptr.dtype.element_ty), mask=mask)
        tl.store(h1_ptr + bh_off, (n + z * (hprev - n)).to(h1_ptr.dtype.element_ty), mask=mask)
    else:  # GRU: r and z from x W_ih^T + h W_hh^T
        z0 = tl.zeros((BLOCK_B, BLOCK_H), dtype=ACC)
        gr = _gate_dot(z0, x_ptr, s_xb, s_xk, wi_ptr, s_win, s_wik, 0 * H, offs_b, offs_h, B, H, I, BLOCK_K, PREC)
        gr = _gate_dot(gr, h_ptr, s_hb, s_hk, wh_ptr, s_whn, s_whk, 0 * H, offs_b, offs_h, B, H, H, BLOCK_K, PREC)
        gz = _gate_dot(z0, x_ptr, s_xb, s_xk, wi_ptr, s_win, s_wik, 1 * H, offs_b, offs_h, B, H, I, BLOCK_K, PREC)
        gz = _gate_dot(gz, h_ptr, s_hb, s_hk, wh_ptr, s_whn, s_whk, 1 * H, offs_b, offs_h, B, H, H, BLOCK_K, PREC)
        r = _sigmoid(gr + _bias(bi_ptr, 0 * H, offs_h, H, HAS_BI) + _bias(bh_ptr, 0 * H, offs_h, H, HAS_BH))
        z = _sigmoid(gz + _bias(bi_ptr, 1 * H, offs_h, H, HAS_BI) + _bias(bh_ptr, 1 * H, offs_h, H, HAS_BH))
        tl.store(ws_ptr + ws_off, r.to(ws_ptr.dtype.element_ty), mask=mask)
        tl.store(ws_ptr + ws_off + H, z.to(ws_ptr.dtype.element_ty), mask=mask)
        if MODE == 1:  # reset_after: n = tanh(x W_in^T + b_in + r (h W_hn^T + b_hn))
            gxn = _gate_dot(z0, x_ptr, s_xb, s_xk, wi_ptr, s_win, s_wik, 2 * H, offs_b, offs_h, B, H, I,
                            BLOCK_K, PREC)
            ghn = _gate_dot(z0, h_ptr, s_hb, s_hk, wh_ptr, s_whn, s_whk, 2 * H, offs_b, offs_h, B, H, H,
                            BLOCK_K, PREC)
            hn = ghn + _bias(bh_ptr, 2 * H, offs_h, H, HAS_BH)
            n = _tanh(gxn + _bias(bi_ptr, 2 * H, offs_h, H, HAS_BI) + r * hn)
            tl.store(ws_ptr + ws_off + 2 * H, n.to(ws_ptr.dtype.element_ty), mask=mask)
            tl.store(ws_ptr + ws_off + 3 * H, hn.to(ws_ptr.dtype.element_ty), mask=mask)
            tl.store(h1_ptr + bh_off, (n + z * (hprev - n)).to(h1_ptr.dtype.element_ty), mask=mask)
        else:  # reset_before stage 1: rh = r * h for stage 2's W_hn product
            tl.store(aux_ptr + bh_off, (r * hprev).to(aux_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _lstm_backward_kernel(dh_ptr, s_dhb, dc_ptr, s_dcb, ws_ptr, cx_ptr, c1_ptr, dg_ptr, dcx_ptr, B, H,
                          HAS_DH: tl.constexpr, HAS_DC: tl.constexpr, ACC: tl.constexpr,
                          BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr):
    offs_b = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    offs_h = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    mask = (offs_b[:, None] < B) & (offs_h[None, :] < H)
    bh = offs_b[:, None].to(tl.int64) * H + offs_h[None, :]
    ws = offs_b[:, None].to(tl.int64) * (4 * H) + offs_h[None, :]
    dh = tl.zeros((BLOCK_B, BLOCK_H), dtype=ACC)
    dc = tl.zeros((BLOCK_B, BLOCK_H), dtype=ACC)
    if HAS_DH:
        dh = tl.load(dh_ptr + offs_b[:, None] * s_dhb + offs_h[None, :], mask=mask, other=0.0).to(ACC)
    if HAS_DC:
        dc = tl.load(dc_ptr + offs_b[:, None] * s_dcb + offs_h[None, :], mask=mask, other=0.0).to(ACC)
    i = tl.load(ws_ptr + ws, mask=mask, other=0.0).to(ACC)
    f = tl.load(ws_ptr + ws + H, mask=mask, other=0.0).to(ACC)
    g = tl.load(ws_ptr + ws + 2 * H, mask=mask, other=0.0).to(ACC)
    o = tl.load(ws_ptr + ws + 3 * H, mask=mask, other=0.0).to(ACC)
    tc = _tanh(tl.load(c1_ptr + bh, mask=mask, other=0.0).to(ACC))
    dc = dc + dh * o * (1.0 - tc * tc)
    cx = tl.load(cx_ptr + bh, mask=mask, other=0.0).to(ACC)
    ty = dg_ptr.dtype.element_ty
    tl.store(dg_ptr + ws, (dc * g * i * (1.0 - i)).to(ty), mask=mask)
    tl.store(dg_ptr + ws + H, (dc * cx * f * (1.0 - f)).to(ty), mask=mask)
    tl.store(dg_ptr + ws + 2 * H, (dc * i * (1.0 - g * g)).to(ty), mask=mask)
    tl.store(dg_ptr + ws + 3 * H, (dh * tc * o * (1.0 - o)).to(ty), mask=mask)
    tl.store(dcx_ptr + bh, (dc * f).to(ty), mask=mask)


@triton.jit
def _gru_backward_kernel(dh_ptr, s_dhb, ws_ptr, hx_ptr, dgi_ptr, dgh_ptr, dhx_ptr, drh_ptr, rh_ptr, B, H,
                         STAGE: tl.constexpr, RESET_AFTER: tl.constexpr, ACC: tl.constexpr,
                         BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr):
    """STAGE 1: dz, dn (+ dr and dhx = dh z when RESET_AFTER). STAGE 2 (reset_before): dr, dhx, rh."""
    offs_b = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    offs_h = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    mask = (offs_b[:, None] < B) & (offs_h[None, :] < H)
    bh = offs_b[:, None].to(tl.int64) * H + offs_h[None, :]
    WSW: tl.constexpr = 4 if RESET_AFTER else 3
    ws = offs_b[:, None].to(tl.int64) * (WSW * H) + offs_h[None, :]
    g3 = offs_b[:, None].to(tl.int64) * (3 * H) + offs_h[None, :]
    dh = tl.load(dh_ptr + offs_b[:, None] * s_dhb + offs_h[None, :], mask=mask, other=0.0).to(ACC)
    r = tl.load(ws_ptr + ws, mask=mask, other=0.0).to(ACC)
    z = tl.load(ws_ptr + ws + H, mask=mask, other=0.0).to(ACC)
    h = tl.load(hx_ptr + bh, mask=mask, other=0.0).to(ACC)
    ty = dgi_ptr.dtype.element_ty
    if STAGE == 1:
        n = tl.load(ws_ptr + ws + 2 * H, mask=mask, other=0.0).to(ACC)
        dn = dh * (1.0 - z) * (1.0 - n * n)
        dz = dh * (h - n) * z * (1.0 - z)
        tl.store(dgi_ptr + g3 + H, dz.to(ty), mask=mask)
        tl.store(dgi_ptr + g3 + 2 * H, dn.to(ty), mask=mask)
        if RESET_AFTER:
            hn = tl.load(ws_ptr + ws + 3 * H, mask=mask, other=0.0).to(ACC)
            dr = dn * hn * r * (1.0 - r)
            tl.store(dgi_ptr + g3, dr.to(ty), mask=mask)
            tl.store(dgh_ptr + g3, dr.to(ty), mask=mask)
            tl.store(dgh_ptr + g3 + H, dz.to(ty), mask=mask)
            tl.store(dgh_ptr + g3 + 2 * H, (dn * r).to(ty), mask=mask)
            tl.store(dhx_ptr + bh, (dh * z).to(ty), mask=mask)
        else:
            # dr comes in stage 2; until then zeros, as the CPU kernel writes them: the caller's drh GEMM reads
            # past the end of each dn row into these columns on oneDNN's AMX path (see rnn_pointwise.cpp).
            tl.store(dgi_ptr + g3, tl.zeros_like(dn).to(ty), mask=mask)
    else:
        drh = tl.load(drh_ptr + bh, mask=mask, other=0.0).to(ACC)
        tl.store(dgi_ptr + g3, (drh * h * r * (1.0 - r)).to(ty), mask=mask)
        tl.store(dhx_ptr + bh, (dh * z + drh * r).to(ty), mask=mask)
        tl.store(rh_ptr + bh, (r * h).to(ty), mask=mask)


# ------------------------------------------------------------------------------------------------ launchers




def _masked_grads(mask, thunks, like):
    """Compute only the wanted gradients; the others are empty (0-element) tensors, as the C++ ops return."""
    return tuple(f() if want else like.new_empty(0) for want, f in zip(mask, thunks))



def _forward(mode, x, h, c, w_ih, w_hh, b_ih, b_hh, h1, c1, ws, aux):
    B, I = x.shape
    H = h.shape[1]
    if B == 0 or H == 0:
        return
    bb, bh, bk = _blocks(B, H)
    grid = (triton.cdiv(B, bb), triton.cdiv(H, bh))
    dummy = ws  # stands in for absent optional pointers (never read: the HAS_* flags are False)
    _cell_forward_kernel[grid](
        x, x.stride(0), x.stride(1), h, h.stride(0), h.stride(1),
        c if c is not None else dummy, c.stride(0) if c is not None else 0,
        w_ih, w_ih.stride(0), w_ih.stride(1), w_hh, w_hh.stride(0), w_hh.stride(1),
        b_ih if b_ih is not None else dummy, b_hh if b_hh is not None else dummy,
        h1, c1 if c1 is not None else dummy, ws, ws.stride(0), aux if aux is not None else dummy,
        B, I, H,
        MODE=mode, HAS_BI=b_ih is not None, HAS_BH=b_hh is not None, ACC=_acc(x.dtype), PREC=_prec(x.dtype),
        BLOCK_B=bb, BLOCK_H=bh, BLOCK_K=bk,
    )


def lstm_cell_forward(input: Tensor, hx: Tensor, cx: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Optional[Tensor],
                      b_hh: Optional[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
    B, _, H = _check.lstm_cell_forward(input, hx, cx, w_ih, w_hh, b_ih, b_hh)
    h1, c1 = hx.new_empty(B, H), hx.new_empty(B, H)
    ws = hx.new_empty(B, 4 * H)
    bias = [b.contiguous() if b is not None else None for b in (b_ih, b_hh)]
    _forward(LSTM, input, hx, cx.contiguous(), w_ih, w_hh, *bias, h1, c1, ws, None)
    return h1, c1, ws


def lstm_cell_backward(grad_h1: Optional[Tensor], grad_c1: Optional[Tensor], input: Tensor, hx: Tensor, cx: Tensor,
                       w_ih: Tensor, w_hh: Tensor, workspace: Tensor, c1: Tensor, grad_mask: list[bool]
                       ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    B, _, H = _check.lstm_cell_backward(grad_h1, grad_c1, input, hx, cx, w_ih, w_hh, workspace, c1, grad_mask)
    dgates = hx.new_empty(B, 4 * H)
    dcx = hx.new_empty(B, H)
    if B > 0 and H > 0:
        dh = grad_h1.contiguous() if grad_h1 is not None else None
        dc = grad_c1.contiguous() if grad_c1 is not None else None
        bb, bh, _ = _blocks(B, H)
        _lstm_backward_kernel[(triton.cdiv(B, bb), triton.cdiv(H, bh))](
            dh if dh is not None else dgates, dh.stride(0) if dh is not None else 0,
            dc if dc is not None else dgates, dc.stride(0) if dc is not None else 0,
            workspace.contiguous(), cx.contiguous(), c1.contiguous(), dgates, dcx, B, H,
            HAS_DH=dh is not None, HAS_DC=dc is not None, ACC=_acc(hx.dtype), BLOCK_B=bb, BLOCK_H=bh)
    else:
        dgates.zero_()
        dcx.zero_()
    grads = (lambda: dgates @ w_ih, lambda: dgates @ w_hh, lambda: dcx, lambda: dgates.t() @ input,
             lambda: dgates.t() @ hx, lambda: dgates.sum(0))
    return _masked_grads(grad_mask, grads, hx)


def gru_cell_forward(input: Tensor, hx: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Optional[Tensor],
                     b_hh: Optional[Tensor], reset_after: bool) -> tuple[Tensor, Tensor]:
    B, _, H = _check.gru_cell_forward(input, hx, w_ih, w_hh, b_ih, b_hh, reset_after)
    h1 = hx.new_empty(B, H)
    bias = [b.contiguous() if b is not None else None for b in (b_ih, b_hh)]
    if reset_after:
        ws = hx.new_empty(B, 4 * H)
        _forward(GRU_AFTER, input, hx, None, w_ih, w_hh, *bias, h1, None, ws, None)
    else:
        ws = hx.new_empty(B, 3 * H)
        rh = hx.new_empty(B, H)
        _forward(GRU_BEFORE_1, input, hx, None, w_ih, w_hh, *bias, h1, None, ws, rh)
        _forward(GRU_BEFORE_2, input, hx, None, w_ih, w_hh, *bias, h1, None, ws, rh)
    return h1, ws


def gru_cell_backward(grad_h1: Tensor, input: Tensor, hx: Tensor, w_ih: Tensor, w_hh: Tensor, workspace: Tensor,
                      reset_after: bool, grad_mask: list[bool]) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    B, _, H = _check.gru_cell_backward(grad_h1, input, hx, w_ih, w_hh, workspace, reset_after, grad_mask)
    dgi = hx.new_zeros(B, 3 * H) if B * H == 0 else hx.new_empty(B, 3 * H)
    dhx = hx.new_zeros(B, H) if B * H == 0 else hx.new_empty(B, H)
    dh, ws, h = grad_h1.contiguous(), workspace.contiguous(), hx.contiguous()
    bb, bh, _ = _blocks(B, H)
    grid = (triton.cdiv(B, bb), triton.cdiv(H, bh))
    run = B > 0 and H > 0
    if reset_after:
        dgh = hx.new_zeros(B, 3 * H) if not run else hx.new_empty(B, 3 * H)
        if run:
            _gru_backward_kernel[grid](dh, dh.stride(0), ws, h, dgi, dgh, dhx, dhx, dhx, B, H, STAGE=1,
                                       RESET_AFTER=True, ACC=_acc(hx.dtype), BLOCK_B=bb, BLOCK_H=bh)
        grad_hx = lambda: dhx + dgh @ w_hh  # noqa: E731
        grad_w_hh = lambda: dgh.t() @ h  # noqa: E731
        grad_b_hh = lambda: dgh.sum(0)  # noqa: E731
    else:
        rh = hx.new_zeros(B, H) if not run else hx.new_empty(B, H)
        if run:
            _gru_backward_kernel[grid](dh, dh.stride(0), ws, h, dgi, dgi, dhx, dhx, rh, B, H, STAGE=1,
                                       RESET_AFTER=False, ACC=_acc(hx.dtype), BLOCK_B=bb, BLOCK_H=bh)
        drh = dgi[:, 2 * H:] @ w_hh[2 * H:]
        if run:
            _gru_backward_kernel[grid](dh, dh.stride(0), ws, h, dgi, dgi, dhx, drh.contiguous(), rh, B, H,
                                       STAGE=2, RESET_AFTER=False, ACC=_acc(hx.dtype), BLOCK_B=bb, BLOCK_H=bh)
        grad_hx = lambda: dhx + dgi[:, : 2 * H] @ w_hh[: 2 * H]  # noqa: E731
        grad_w_hh = lambda: torch.cat([dgi[:, : 2 * H].t() @ h, dgi[:, 2 * H:].t() @ rh])  # noqa: E731
        grad_b_hh = lambda: dgi.sum(0)  # noqa: E731
    grads = (lambda: dgi @ w_ih, grad_hx, lambda: dgi.t() @ input, grad_w_hh, lambda: dgi.sum(0), grad_b_hh)
    return _masked_grads(grad_mask, grads, hx)

