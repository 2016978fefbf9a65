"""Triton LSTM / GRU cells: the kernels of the ops torch.ops.s2s_fused.{lstm,gru}_cell_{forward,backward}_triton
(defined, with their fake kernels and autograd, in s2s_fused/ops/rnn_cell.py).

Forward: one kernel computes, for a (BLOCK_B x BLOCK_H) tile of (batch rows x hidden units), the pre-activations
of *all* gates of those units (x W_ih^T + h W_hh^T, fp32 accumulate) and applies the cell update in registers
(rnn_common.forward_tile, the layers' code too): the gate pre-activations never reach memory. Only the activated gates (the workspace) are stored for backward.
GRU reset_before (Cho et al.) needs r * h before its W_hn product, so it runs as two such kernels.
Backward: one pointwise kernel (rnn_common.backward_tile) writes the pre-activation gate gradients, then the five
GEMMs run on cuBLAS/BLAS through torch.
Shapes as in s2s_fused.ops.rnn_cell.
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from .rnn_common import CellKind, backward_tile, forward_tile, gru_kind
from .rnn_common import acc_dtype as _acc
from .rnn_common import dot_precision as _prec
from .rnn_common import tile_sizes as _blocks
from .. import _op_checks as _check

Tensor = torch.Tensor


@triton.jit
def _cell_forward_kernel(
    x_ptr, s_xb, s_xk, h_ptr, s_hb, s_hk, c_ptr, s_cb,
    wi_ptr, s_win, s_wik, wh_ptr, s_whn, s_whk, bi_ptr, bh_ptr,
    h1_ptr, c1_ptr, ws_ptr, rh_ptr, B, I, H,
    KIND: tl.constexpr, STAGE: tl.constexpr, HAS_BI: tl.constexpr, HAS_BH: tl.constexpr, ACC: tl.constexpr,
    PREC: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """Program (i, j): the tile of batch rows block i and hidden units block j (rnn_common.forward_tile, with the
    input product computed here)."""
    offs_b = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    offs_h = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    forward_tile(x_ptr, s_xb, s_xk, wi_ptr, s_win, s_wik, x_ptr, h_ptr, s_hb, s_hk, c_ptr, s_cb, wh_ptr, s_whn,
                 s_whk, bi_ptr, bh_ptr, h1_ptr, h1_ptr, c1_ptr, h1_ptr, ws_ptr, rh_ptr, offs_b, offs_h, B, I, H,
                 KIND, STAGE, True, HAS_BI, HAS_BH, False, False, ACC, PREC, BLOCK_B, BLOCK_H, BLOCK_K)


@triton.jit
def _cell_backward_kernel(dh_ptr, s_dhb, dc_ptr, s_dcb, ws_ptr, hx_ptr, cx_ptr, c1_ptr, drh_ptr, dg_ptr, dgh_ptr,
                          dcx_ptr, dhx_ptr, rh_ptr, B, H, KIND: tl.constexpr, STAGE: tl.constexpr,
                          HAS_DH: tl.constexpr, HAS_DC: tl.constexpr, ACC: tl.constexpr, BLOCK_B: tl.constexpr,
                          BLOCK_H: tl.constexpr):
    """Program (i, j): the pointwise backward of one tile (rnn_common.backward_tile)."""
    offs_b = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    offs_h = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    backward_tile(dh_ptr, dh_ptr, s_dhb, dc_ptr, s_dcb, ws_ptr, hx_ptr, cx_ptr, c1_ptr, dh_ptr, drh_ptr, dg_ptr,
                  dgh_ptr, dcx_ptr, dhx_ptr, rh_ptr, offs_b, offs_h, B, H, KIND, STAGE, HAS_DH, False, HAS_DC,
                  False, False, ACC, BLOCK_B, BLOCK_H)


# ------------------------------------------------------------------------------------------------ launchers


def _masked_grads(mask, thunks, like):
    """Compute only the wanted gradients; the others are empty (0-element) tensors, as the C++ ops return."""
    return tuple(f() if want else like.new_empty(0) for want, f in zip(mask, thunks))



def _forward(kind, stage, x, h, c, w_ih, w_hh, b_ih, b_hh, h1, c1, ws, rh):
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
        h1, c1 if c1 is not None else dummy, ws, rh if rh is not None else dummy,
        B, I, H,
        KIND=int(kind), STAGE=stage, HAS_BI=b_ih is not None, HAS_BH=b_hh is not None, ACC=_acc(x.dtype),
        PREC=_prec(x.dtype), BLOCK_B=bb, BLOCK_H=bh, BLOCK_K=bk,
    )


def _backward(kind, stage, dh, dc, ws, hx, cx, c1, drh, dg, dgh, dcx, dhx, rh):
    B, H = hx.shape
    bb, bh, _ = _blocks(B, H)
    d = lambda t: t if t is not None else dg  # noqa: E731  (absent operands: never read)
    _cell_backward_kernel[(triton.cdiv(B, bb), triton.cdiv(H, bh))](
        d(dh), dh.stride(0) if dh is not None else 0, d(dc), dc.stride(0) if dc is not None else 0, ws, hx, d(cx),
        d(c1), d(drh), dg, d(dgh), d(dcx), d(dhx), d(rh), B, H,
        KIND=int(kind), STAGE=stage, HAS_DH=dh is not None, HAS_DC=dc is not None, ACC=_acc(hx.dtype),
        BLOCK_B=bb, BLOCK_H=bh)


def lstm_cell_forward(input: Tensor, hx: Tensor, cx: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Optional[Tensor],
                      b_hh: Optional[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
    B, _, H = _check.lstm_cell_forward(input, hx, cx, w_ih, w_hh, b_ih, b_hh)
    h1, c1 = hx.new_empty(B, H), hx.new_empty(B, H)
    ws = hx.new_empty(B, 4 * H)
    bias = [b.contiguous() if b is not None else None for b in (b_ih, b_hh)]
    _forward(CellKind.LSTM, 0, input, hx, cx.contiguous(), w_ih, w_hh, *bias, h1, c1, ws, None)
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
        _backward(CellKind.LSTM, 0, dh, dc, workspace.contiguous(), hx, cx.contiguous(), c1.contiguous(), None,
                  dgates, None, dcx, None, None)
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
    ws = hx.new_empty(B, (4 if reset_after else 3) * H)
    kind = gru_kind(reset_after)
    rh = None if reset_after else hx.new_empty(B, H)
    for stage in (0,) if reset_after else (1, 2):
        _forward(kind, stage, input, hx, None, w_ih, w_hh, *bias, h1, None, ws, rh)
    return h1, ws


def gru_cell_backward(grad_h1: Tensor, input: Tensor, hx: Tensor, w_ih: Tensor, w_hh: Tensor, workspace: Tensor,
                      reset_after: bool, grad_mask: list[bool]) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    B, _, H = _check.gru_cell_backward(grad_h1, input, hx, w_ih, w_hh, workspace, reset_after, grad_mask)
    dgi = hx.new_zeros(B, 3 * H) if B * H == 0 else hx.new_empty(B, 3 * H)
    dhx = hx.new_zeros(B, H) if B * H == 0 else hx.new_empty(B, H)
    dh, ws, h = grad_h1.contiguous(), workspace.contiguous(), hx.contiguous()
    run = B > 0 and H > 0
    kind = gru_kind(reset_after)
    if reset_after:
        dgh = hx.new_zeros(B, 3 * H) if not run else hx.new_empty(B, 3 * H)
        if run:
            _backward(kind, 0, dh, None, ws, h, None, None, None, dgi, dgh, None, dhx, None)
        grad_hx = lambda: dhx + dgh @ w_hh  # noqa: E731
        grad_w_hh = lambda: dgh.t() @ h  # noqa: E731
        grad_b_hh = lambda: dgh.sum(0)  # noqa: E731
    else:
        rh = hx.new_zeros(B, H) if not run else hx.new_empty(B, H)
        if run:
            _backward(kind, 1, dh, None, ws, h, None, None, None, dgi, None, None, dhx, rh)
        drh = dgi[:, 2 * H:] @ w_hh[2 * H:]
        if run:
            _backward(kind, 2, dh, None, ws, h, None, None, drh.contiguous(), dgi, None, None, dhx, rh)
        grad_hx = lambda: dhx + dgi[:, : 2 * H] @ w_hh[: 2 * H]  # noqa: E731
        grad_w_hh = lambda: torch.cat([dgi[:, : 2 * H].t() @ h, dgi[:, 2 * H:].t() @ rh])  # noqa: E731
        grad_b_hh = lambda: dgi.sum(0)  # noqa: E731
    grads = (lambda: dgi @ w_ih, grad_hx, lambda: dgi.t() @ input, grad_w_hh, lambda: dgi.sum(0), grad_b_hh)
    return _masked_grads(grad_mask, grads, hx)
