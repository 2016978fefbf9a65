"""Triton LSTM / GRU layers, one layer in one direction over a whole sequence: the kernels of the ops
torch.ops.s2s_fused.{lstm,gru}_layer_{forward,backward}_triton (defined, with their fake kernels and autograd, in
s2s_fused/ops/rnn_layer.py).

Forward: the input projection of all T steps is one GEMM (torch); then per step one kernel computes, for a
(BLOCK_B x BLOCK_H) tile of (batch rows x hidden units), the recurrent product h W_hh^T for *all* gates of those
units, adds the precomputed input projection and the biases, and applies the cell update in registers (the
gate pre-activations never reach memory; only the activated gates, the workspace, are stored for backward).
GRU reset_before (Cho et al.) needs r * h before its W_hn product, so it runs as two such kernels per step.
Where the hidden size allows (:func:`use_persistent`), one persistent launch runs the whole time loop instead:
a program owns a block of batch rows and all their hidden units, loops over steps and, within a step, over the
unit tiles with the same tile code, with a block-level barrier between steps (batch rows are independent, so no
grid-wide sync). Both paths write the same buffers, so the backward is shared.
Backward: per step one pointwise kernel (pre-activation gate gradients, state pass-through of finished rows) and
the dh GEMM (torch); after the loop the weight gradients as GEMMs over all T*B rows and bias gradients as sums.

Variable lengths through an (T, B) `active` mask, as the C++ ops (csrc/rnn_layer_impl.h); the state buffers use
the same time layout, hs / cs (T+1, B, H).
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
from .. import config

Tensor = torch.Tensor


@triton.jit
def _recurrent_tile(acc, a_ptr, w_ptr, row0, offs_b, offs_h, B, H,
                    BLOCK_K: tl.constexpr, PREC: tl.constexpr):
    """acc += a[offs_b, :] @ w[row0 + offs_h, :]^T; a (B, H) and w (G*H, H) contiguous, masked at the edges."""
    return _gate_dot(acc, a_ptr, H, 1, w_ptr, H, 1, row0, offs_b, offs_h, B, H, H, BLOCK_K, PREC)


@triton.jit
def _gate_in(gx_ptr, b1_ptr, b2_ptr, gate, offs_b, offs_h, mask, B, H, G: tl.constexpr,
             HAS_B1: tl.constexpr, HAS_B2: tl.constexpr, ACC: tl.constexpr):
    """The precomputed input projection of one gate plus its biases (both, as torch adds b_ih + b_hh)."""
    col = gate * H + offs_h
    v = tl.load(gx_ptr + offs_b[:, None].to(tl.int64) * (G * H) + col[None, :], mask=mask, other=0.0).to(ACC)
    if HAS_B1:
        v += tl.load(b1_ptr + col, mask=offs_h < H, other=0.0).to(ACC)[None, :]
    if HAS_B2:
        v += tl.load(b2_ptr + col, mask=offs_h < H, other=0.0).to(ACC)[None, :]
    return v


@triton.jit
def _bias_n(b_ptr, offs_h, H, HAS: tl.constexpr, ACC: tl.constexpr):
    # One return of one type: the compiler rejects a tensor return and a scalar one in the same function, even
    # behind a constexpr branch (the interpreter accepts it, so only a GPU compile shows it).
    b = tl.zeros((1, offs_h.shape[0]), dtype=ACC)
    if HAS:
        b += tl.load(b_ptr + 2 * H + offs_h, mask=offs_h < H, other=0.0).to(ACC)[None, :]
    return b


@triton.jit
def _forward_tile(
    gx_ptr, h_ptr, c_ptr, w_ptr, b1_ptr, b2_ptr, act_ptr, h1_ptr, c1_ptr, out_ptr, ws_ptr, rh_ptr, offs_b, offs_h,
    B, H, MODE: tl.constexpr, HAS_B1: tl.constexpr, HAS_B2: tl.constexpr, HAS_ACT: tl.constexpr,
    ACC: tl.constexpr, PREC: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """One step of one (batch rows offs_b x hidden units offs_h) tile; the pointers are that step's (B, .) slices.
    Shared by the per-step kernel (one tile per program) and the persistent one (every tile of a row block, for
    every step, in one program)."""
    mask = (offs_b[:, None] < B) & (offs_h[None, :] < H)
    bh = offs_b[:, None].to(tl.int64) * H + offs_h[None, :]
    keep = mask
    if HAS_ACT:  # finished rows keep their state and output zeros
        act = tl.load(act_ptr + offs_b, mask=offs_b < B, other=0)
        keep = (act != 0)[:, None] & mask
    hprev = tl.load(h_ptr + bh, mask=mask, other=0.0).to(ACC)
    z0 = tl.zeros((BLOCK_B, BLOCK_H), dtype=ACC)
    ty = h1_ptr.dtype.element_ty
    if MODE == 0:  # LSTM, gates i, f, g, o
        WSW: tl.constexpr = 4
        ws = offs_b[:, None].to(tl.int64) * (WSW * H) + offs_h[None, :]
        i = _sigmoid(_recurrent_tile(z0, h_ptr, w_ptr, 0 * H, offs_b, offs_h, B, H, BLOCK_K, PREC)
                     + _gate_in(gx_ptr, b1_ptr, b2_ptr, 0, offs_b, offs_h, mask, B, H, 4, HAS_B1, HAS_B2, ACC))
        f = _sigmoid(_recurrent_tile(z0, h_ptr, w_ptr, 1 * H, offs_b, offs_h, B, H, BLOCK_K, PREC)
                     + _gate_in(gx_ptr, b1_ptr, b2_ptr, 1, offs_b, offs_h, mask, B, H, 4, HAS_B1, HAS_B2, ACC))
        g = _tanh(_recurrent_tile(z0, h_ptr, w_ptr, 2 * H, offs_b, offs_h, B, H, BLOCK_K, PREC)
                  + _gate_in(gx_ptr, b1_ptr, b2_ptr, 2, offs_b, offs_h, mask, B, H, 4, HAS_B1, HAS_B2, ACC))
        o = _sigmoid(_recurrent_tile(z0, h_ptr, w_ptr, 3 * H, offs_b, offs_h, B, H, BLOCK_K, PREC)
                     + _gate_in(gx_ptr, b1_ptr, b2_ptr, 3, offs_b, offs_h, mask, B, H, 4, HAS_B1, HAS_B2, ACC))
        cprev = tl.load(c_ptr + bh, mask=mask, other=0.0).to(ACC)
        c = f * cprev + i * g
        h = o * _tanh(c)
        tl.store(ws_ptr + ws, i.to(ty), mask=mask)
        tl.store(ws_ptr + ws + H, f.to(ty), mask=mask)
        tl.store(ws_ptr + ws + 2 * H, g.to(ty), mask=mask)
        tl.store(ws_ptr + ws + 3 * H, o.to(ty), mask=mask)
        tl.store(c1_ptr + bh, tl.where(keep, c, cprev).to(ty), mask=mask)
        tl.store(h1_ptr + bh, tl.where(keep, h, hprev).to(ty), mask=mask)
        tl.store(out_ptr + bh, tl.where(keep, h, 0.0).to(ty), mask=mask)
    elif MODE == 3:  # GRU reset_before stage 2: n = tanh(gx_n + b_in + (r h) W_hn^T + b_hn)
        ws = offs_b[:, None].to(tl.int64) * (3 * H) + offs_h[None, :]
        gn = _recurrent_tile(z0, rh_ptr, w_ptr, 2 * H, offs_b, offs_h, B, H, BLOCK_K, PREC)
        gn += _gate_in(gx_ptr, b1_ptr, b2_ptr, 2, offs_b, offs_h, mask, B, H, 3, HAS_B1, HAS_B2, ACC)
        n = _tanh(gn)
        z = tl.load(ws_ptr + ws + H, mask=mask, other=0.0).to(ACC)
        h = n + z * (hprev - n)
        tl.store(ws_ptr + ws + 2 * H, n.to(ty), mask=mask)
        tl.store(h1_ptr + bh, tl.where(keep, h, hprev).to(ty), mask=mask)
        tl.store(out_ptr + bh, tl.where(keep, h, 0.0).to(ty), mask=mask)
    else:  # GRU: r, z
        WSW2: tl.constexpr = 4 if MODE == 1 else 3
        ws = offs_b[:, None].to(tl.int64) * (WSW2 * H) + offs_h[None, :]
        r = _sigmoid(_recurrent_tile(z0, h_ptr, w_ptr, 0 * H, offs_b, offs_h, B, H, BLOCK_K, PREC)
                     + _gate_in(gx_ptr, b1_ptr, b2_ptr, 0, offs_b, offs_h, mask, B, H, 3, HAS_B1, HAS_B2, ACC))
        z = _sigmoid(_recurrent_tile(z0, h_ptr, w_ptr, 1 * H, offs_b, offs_h, B, H, BLOCK_K, PREC)
                     + _gate_in(gx_ptr, b1_ptr, b2_ptr, 1, offs_b, offs_h, mask, B, H, 3, HAS_B1, HAS_B2, ACC))
        tl.store(ws_ptr + ws, r.to(ty), mask=mask)
        tl.store(ws_ptr + ws + H, z.to(ty), mask=mask)
        if MODE == 1:  # reset_after (torch / cuDNN): n = tanh(gx_n + b_in + r (h W_hn^T + b_hn))
            hn = _recurrent_tile(z0, h_ptr, w_ptr, 2 * H, offs_b, offs_h, B, H, BLOCK_K, PREC)
            hn += _bias_n(b2_ptr, offs_h, H, HAS_B2, ACC)
            xn = _gate_in(gx_ptr, b1_ptr, b2_ptr, 2, offs_b, offs_h, mask, B, H, 3, HAS_B1, False, ACC)
            n = _tanh(xn + r * hn)
            h = n + z * (hprev - n)
            tl.store(ws_ptr + ws + 2 * H, n.to(ty), mask=mask)
            tl.store(ws_ptr + ws + 3 * H, hn.to(ty), mask=mask)
            tl.store(h1_ptr + bh, tl.where(keep, h, hprev).to(ty), mask=mask)
            tl.store(out_ptr + bh, tl.where(keep, h, 0.0).to(ty), mask=mask)
        else:  # reset_before stage 1: rh = r * h for stage 2's W_hn product
            tl.store(rh_ptr + bh, (r * hprev).to(ty), mask=mask)


@triton.jit
def _layer_step_forward_kernel(
    gx_ptr, h_ptr, c_ptr, w_ptr, b1_ptr, b2_ptr, act_ptr, h1_ptr, c1_ptr, out_ptr, ws_ptr, rh_ptr, B, H,
    MODE: tl.constexpr, HAS_B1: tl.constexpr, HAS_B2: tl.constexpr, HAS_ACT: tl.constexpr, ACC: tl.constexpr,
    PREC: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """One step: program (i, j) computes the tile of batch rows block i and hidden units block j."""
    offs_b = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    offs_h = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    _forward_tile(gx_ptr, h_ptr, c_ptr, w_ptr, b1_ptr, b2_ptr, act_ptr, h1_ptr, c1_ptr, out_ptr, ws_ptr, rh_ptr,
                  offs_b, offs_h, B, H, MODE, HAS_B1, HAS_B2, HAS_ACT, ACC, PREC, BLOCK_B, BLOCK_H, BLOCK_K)


@triton.jit
def _layer_persistent_forward_kernel(
    gx_ptr, hs_ptr, cs_ptr, w_ptr, b1_ptr, b2_ptr, act_ptr, out_ptr, ws_ptr, rh_ptr, T, B, H,
    MODE: tl.constexpr, REVERSE: tl.constexpr, HAS_B1: tl.constexpr, HAS_B2: tl.constexpr,
    HAS_ACT: tl.constexpr, ACC: tl.constexpr, PREC: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """The whole time loop of one layer-direction in one launch. Program i owns batch rows block i and *all* H
    units of them. Rows are independent in the recurrence, so no other program ever reads what this one writes:
    the only sync needed is a block-level barrier after each step, as step t+1's product reads h_t of every unit
    (written by other threads of this program). No grid-wide sync, so any grid size runs (and the interpreter,
    which runs programs one after another, too).

    MODE: LSTM, GRU_AFTER, or GRU_BEFORE_1 for both reset_before stages with a barrier between them (stage 2's
    W_hn product reads r * h of every unit). Buffers and time layout as the per-step path: gx (T, B, G*H), hs / cs
    (T+1, B, H) with h0 already in place, out (T, B, H), ws (T, B, {4,3}*H), act (T, B), rh (B, H) scratch."""
    G: tl.constexpr = 4 if MODE == 0 else 3  # gates: LSTM (0) 4, GRU 3
    WSW: tl.constexpr = 3 if MODE == 2 else 4  # workspace width / H: reset_before (r, z, n) 3, else 4
    offs_b = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    for s in range(T):
        if REVERSE:  # step s runs time t = T-1-s, reads hs[t+1], writes hs[t]
            t = T - 1 - s
            t_read = t + 1
            t_write = t
        else:  # reads hs[t], writes hs[t+1]
            t = s
            t_read = s
            t_write = s + 1
        # 64-bit slice offsets; the step index is converted, not B or H, which the launcher turns into
        # constexprs when they equal 1.
        rows = t.to(tl.int64) * B  # first (t, b) row of step t in gx / out / ws / act
        rows_read = t_read.to(tl.int64) * B
        rows_write = t_write.to(tl.int64) * B
        h_ptr, h1_ptr = hs_ptr + rows_read * H, hs_ptr + rows_write * H
        c_ptr, c1_ptr = cs_ptr + rows_read * H, cs_ptr + rows_write * H
        gx_t = gx_ptr + rows * (G * H)
        ws_t = ws_ptr + rows * (WSW * H)
        out_t = out_ptr + rows * H
        act_t = act_ptr + rows
        for j0 in range(0, H, BLOCK_H):
            _forward_tile(gx_t, h_ptr, c_ptr, w_ptr, b1_ptr, b2_ptr, act_t, h1_ptr, c1_ptr, out_t, ws_t, rh_ptr,
                          offs_b, j0 + tl.arange(0, BLOCK_H), B, H, MODE, HAS_B1, HAS_B2, HAS_ACT, ACC, PREC,
                          BLOCK_B, BLOCK_H, BLOCK_K)
        if MODE == 2:  # GRU_BEFORE_1 above; now stage 2 (mode 3, GRU_BEFORE_2) of every unit tile
            tl.debug_barrier()  # rh of every unit written before any W_hn product reads it
            for j0 in range(0, H, BLOCK_H):
                _forward_tile(gx_t, h_ptr, c_ptr, w_ptr, b1_ptr, b2_ptr, act_t, h1_ptr, c1_ptr, out_t, ws_t,
                              rh_ptr, offs_b, j0 + tl.arange(0, BLOCK_H), B, H, 3, HAS_B1, HAS_B2, HAS_ACT, ACC,
                              PREC, BLOCK_B, BLOCK_H, BLOCK_K)
        tl.debug_barrier()  # h_t (and c_t) of every unit written before step s+1 reads them


@triton.jit
def _layer_step_backward_kernel(
    go_ptr, dh_ptr, dc_ptr, ws_ptr, hx_ptr, cx_ptr, c1_ptr, act_ptr, drh_ptr,
    dg_ptr, dgh_ptr, dcx_ptr, dhx_ptr, rh_ptr, B, H,
    MODE: tl.constexpr, HAS_GO: tl.constexpr, HAS_ACT: tl.constexpr, ACC: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr,
):
    """Pointwise backward of one step. dh = grad_output[t] + the carried state gradient. Writes the
    pre-activation gate gradients (zero for finished rows) and dhx: the part of the previous state's gradient
    that does not go through W_hh (finished rows: all of dh). LSTM also dcx; GRU reset_before runs two stages
    around the caller's drh = dn W_hn GEMM (stage 2 also writes rh = r * h for the W_hn gradient)."""
    offs_b = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    offs_h = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    mask = (offs_b[:, None] < B) & (offs_h[None, :] < H)
    bh = offs_b[:, None].to(tl.int64) * H + offs_h[None, :]
    keep = mask
    if HAS_ACT:
        act = tl.load(act_ptr + offs_b, mask=offs_b < B, other=0)
        keep = (act != 0)[:, None] & mask
    dh = tl.load(dh_ptr + bh, mask=mask, other=0.0).to(ACC)
    if HAS_GO:
        dh += tl.load(go_ptr + bh, mask=mask, other=0.0).to(ACC)
    ty = dg_ptr.dtype.element_ty
    if MODE == 0:
        ws = offs_b[:, None].to(tl.int64) * (4 * H) + offs_h[None, :]
        i = tl.load(ws_ptr + ws, mask=mask, other=0.0).to(ACC)
        f = tl.load(ws_ptr + ws + H, mask=mask, other=0.0).to(ACC)
        g = tl.load(ws_ptr + ws + 2 * H, mask=mask, other=0.0).to(ACC)
        o = tl.load(ws_ptr + ws + 3 * H, mask=mask, other=0.0).to(ACC)
        tc = _tanh(tl.load(c1_ptr + bh, mask=mask, other=0.0).to(ACC))
        dc_in = tl.load(dc_ptr + bh, mask=mask, other=0.0).to(ACC)
        dc = dc_in + dh * o * (1.0 - tc * tc)
        cx = tl.load(cx_ptr + bh, mask=mask, other=0.0).to(ACC)
        tl.store(dg_ptr + ws, tl.where(keep, dc * g * i * (1.0 - i), 0.0).to(ty), mask=mask)
        tl.store(dg_ptr + ws + H, tl.where(keep, dc * cx * f * (1.0 - f), 0.0).to(ty), mask=mask)
        tl.store(dg_ptr + ws + 2 * H, tl.where(keep, dc * i * (1.0 - g * g), 0.0).to(ty), mask=mask)
        tl.store(dg_ptr + ws + 3 * H, tl.where(keep, dh * tc * o * (1.0 - o), 0.0).to(ty), mask=mask)
        tl.store(dcx_ptr + bh, tl.where(keep, dc * f, dc_in).to(ty), mask=mask)
        tl.store(dhx_ptr + bh, tl.where(keep, 0.0, dh).to(ty), mask=mask)
    else:
        WSW: tl.constexpr = 4 if MODE == 1 else 3
        ws = offs_b[:, None].to(tl.int64) * (WSW * H) + offs_h[None, :]
        g3 = offs_b[:, None].to(tl.int64) * (3 * H) + offs_h[None, :]
        r = tl.load(ws_ptr + ws, mask=mask, other=0.0).to(ACC)
        z = tl.load(ws_ptr + ws + H, mask=mask, other=0.0).to(ACC)
        h = tl.load(hx_ptr + bh, mask=mask, other=0.0).to(ACC)
        if MODE == 3:  # reset_before stage 2: dr and dhx of the running rows, rh
            drh = tl.load(drh_ptr + bh, mask=mask, other=0.0).to(ACC)
            tl.store(dg_ptr + g3, tl.where(keep, drh * h * r * (1.0 - r), 0.0).to(ty), mask=mask)
            tl.store(dhx_ptr + bh, (dh * z + drh * r).to(ty), mask=keep)
            tl.store(rh_ptr + bh, tl.where(keep, r * h, 0.0).to(ty), mask=mask)
        else:
            n = tl.load(ws_ptr + ws + 2 * H, mask=mask, other=0.0).to(ACC)
            dn = tl.where(keep, dh * (1.0 - z) * (1.0 - n * n), 0.0)
            dz = tl.where(keep, dh * (h - n) * z * (1.0 - z), 0.0)
            tl.store(dg_ptr + g3 + H, dz.to(ty), mask=mask)
            tl.store(dg_ptr + g3 + 2 * H, dn.to(ty), mask=mask)
            if MODE == 1:
                hn = tl.load(ws_ptr + ws + 3 * H, mask=mask, other=0.0).to(ACC)
                dr = dn * hn * r * (1.0 - r)
                tl.store(dg_ptr + g3, dr.to(ty), mask=mask)
                tl.store(dgh_ptr + g3, dr.to(ty), mask=mask)
                tl.store(dgh_ptr + g3 + H, dz.to(ty), mask=mask)
                tl.store(dgh_ptr + g3 + 2 * H, (dn * r).to(ty), mask=mask)
                tl.store(dhx_ptr + bh, tl.where(keep, dh * z, dh).to(ty), mask=mask)
            else:  # stage 1: finished rows pass dh through; running rows get dhx in stage 2
                tl.store(dhx_ptr + bh, dh.to(ty), mask=mask & ~keep)


# ------------------------------------------------------------------------------------------------ launchers


def _active(lengths, T, B, device):
    if lengths is None:
        return None
    steps = torch.arange(T, device=device)
    return (steps.unsqueeze(1) < lengths.to(device).unsqueeze(0)).to(torch.uint8)


def _time_of_step(s, T, reverse):
    return T - 1 - s if reverse else s


def _prev(buf, t, reverse):  # the state a step reads, in the (T+1, B, H) time layout (csrc/rnn_layer_impl.h)
    return buf[t + 1] if reverse else buf[t]


def _next(buf, t, reverse):
    return buf[t] if reverse else buf[t + 1]


def _states_read(buf, T, reverse):
    return (buf[1:] if reverse else buf[:T]).reshape(T * buf.shape[1], buf.shape[2])  # not (-1, H): H may be 0


def _masked_grad_output(grad_output, active):
    if grad_output is None:
        return None
    if active is not None:
        return (grad_output * active.unsqueeze(2).to(grad_output.dtype)).contiguous()
    return grad_output.contiguous()


def _step_forward(mode, gx, h, c, w, b1, b2, act, h1, c1, out, ws, rh, B, H):
    bb, bh, bk = _blocks(B, H)
    dummy = ws
    _layer_step_forward_kernel[(triton.cdiv(B, bb), triton.cdiv(H, bh))](
        gx, h, c if c is not None else dummy, w, b1 if b1 is not None else dummy, b2 if b2 is not None else dummy,
        act if act is not None else dummy, h1, c1 if c1 is not None else dummy, out, ws,
        rh if rh is not None else dummy, B, H,
        MODE=mode, HAS_B1=b1 is not None, HAS_B2=b2 is not None, HAS_ACT=act is not None, ACC=_acc(h.dtype),
        PREC=_prec(h.dtype), BLOCK_B=bb, BLOCK_H=bh, BLOCK_K=bk)


# The persistent program (one launch for all T steps) where the hidden size allows; the per-step kernels above it.
# Its program runs the cdiv(H, BLOCK_H) unit tiles of a step one after another and streams all of W_hh (G*H*H
# elements: 1 MiB for an fp32 LSTM at H = 256) through one SM per step, where the per-step grid spreads that over
# cdiv(H, BLOCK_H) programs but pays a launch per step (several microseconds from Python). Up to H = 256 (at most
# 4 tiles in a row; W_hh of an fp32 LSTM up to H = 128, bf16 up to ~H = 180, even fits an H100 SM's 256 KiB L1 and
# can stay there across steps) the launches saved should outweigh the lost parallelism; above, the per-step grid
# wins. Batch: the persistent grid is cdiv(B, 16) programs, the per-step one cdiv(B, BLOCK_B) * cdiv(H, BLOCK_H);
# persistent only while the per-step grid stays within half a wave of a 108-132 SM GPU (<= 64 programs), i.e.
# while a per-step launch is latency-bound rather than filling the GPU. Both limits are first guesses, not yet
# measured on a GPU (see benchmarks/NOTES.md, rnn_layer). S2S_FUSED_TRITON_NO_PERSISTENT=1 forces the per-step path.
PERSISTENT_MAX_H = 256
PERSISTENT_MAX_STEP_PROGRAMS = 64
PERSISTENT_BLOCK_B = 16  # the smallest tl.dot tile: the most programs for a given B
# 8 warps: a persistent program usually has its SM to itself, so more warps hide more latency; and ptxas (sm_90,
# fp32 LSTM, 16 x 64 tiles) reports 255 registers + 136 B of spills at 4 warps, 255 + 36 B at 8.
PERSISTENT_NUM_WARPS = 8


def use_persistent(B: int, H: int) -> bool:
    """Whether a (B, H) layer runs its time loop as one persistent launch (see the rule above)."""
    if config.TRITON_NO_PERSISTENT:
        return False
    bb, bh, _ = _blocks(B, H)
    return H <= PERSISTENT_MAX_H and triton.cdiv(B, bb) * triton.cdiv(H, bh) <= PERSISTENT_MAX_STEP_PROGRAMS


def _persistent_forward(mode, gx, hs, cs, w, b1, b2, act, out, ws, rh, reverse):
    T, B, H = out.shape
    _, bh, bk = _blocks(B, H)
    dummy = ws
    d = lambda t: t if t is not None else dummy  # noqa: E731  (absent operands: never read)
    _layer_persistent_forward_kernel[(triton.cdiv(B, PERSISTENT_BLOCK_B),)](
        gx, hs, d(cs), w, d(b1), d(b2), d(act), out, ws, d(rh), T, B, H,
        MODE=mode, REVERSE=reverse, HAS_B1=b1 is not None, HAS_B2=b2 is not None, HAS_ACT=act is not None,
        ACC=_acc(hs.dtype), PREC=_prec(hs.dtype), BLOCK_B=PERSISTENT_BLOCK_B, BLOCK_H=bh, BLOCK_K=bk,
        num_warps=PERSISTENT_NUM_WARPS)


def _forward_sequence(mode, gx, hs, cs, w, b1, b2, act, out, ws, reverse):
    """All T steps of one layer-direction (B, H > 0): one persistent launch, or per step one kernel (two for GRU
    reset_before, mode GRU_BEFORE_1). hs / cs (T+1, B, H) hold h0 / c0 at the first step's read slot."""
    T, B, H = out.shape
    rh = hs.new_empty(B, H) if mode == GRU_BEFORE_1 else None
    if use_persistent(B, H):
        _persistent_forward(mode, gx, hs, cs, w, b1, b2, act, out, ws, rh, reverse)
        return
    for s in range(T):
        t = _time_of_step(s, T, reverse)
        c, c1 = (_prev(cs, t, reverse), _next(cs, t, reverse)) if cs is not None else (None, None)
        args = (gx[t], _prev(hs, t, reverse), c, w, b1, b2, act[t] if act is not None else None,
                _next(hs, t, reverse), c1, out[t], ws[t], rh, B, H)
        _step_forward(mode, *args)
        if mode == GRU_BEFORE_1:
            _step_forward(GRU_BEFORE_2, *args)


def _step_backward(mode, go, dh, dc, ws, hx, cx, c1, act, drh, dg, dgh, dcx, dhx, rh, B, H):
    bb, bh, _ = _blocks(B, H)
    dummy = dg
    d = lambda t: t if t is not None else dummy  # noqa: E731  (absent operands: never read)
    _layer_step_backward_kernel[(triton.cdiv(B, bb), triton.cdiv(H, bh))](
        d(go), dh, d(dc), ws, d(hx), d(cx), d(c1), d(act), d(drh), dg, d(dgh), d(dcx), dhx, d(rh), B, H,
        MODE=mode, HAS_GO=go is not None, HAS_ACT=act is not None, ACC=_acc(dh.dtype), BLOCK_B=bb, BLOCK_H=bh)


def _contig(t):
    return t.contiguous() if t is not None else None


def lstm_layer_forward(input: Tensor, h0: Tensor, c0: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Optional[Tensor],
                       b_hh: Optional[Tensor], lengths: Optional[Tensor], reverse: bool
                       ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    T, B, I, H = _check.lstm_layer_forward(input, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths, reverse)
    gx = (input.reshape(T * B, I) @ w_ih.t()).view(T, B, 4 * H).contiguous()
    hs, cs = input.new_empty(T + 1, B, H), input.new_empty(T + 1, B, H)
    out, ws = input.new_zeros(T, B, H), input.new_zeros(T, B, 4 * H)
    _prev(hs, T - 1 if reverse else 0, reverse).copy_(h0)
    _prev(cs, T - 1 if reverse else 0, reverse).copy_(c0)
    act = _active(lengths, T, B, input.device)
    w, b1, b2 = w_hh.contiguous(), _contig(b_ih), _contig(b_hh)
    if B > 0 and H > 0:
        _forward_sequence(LSTM, gx, hs, cs, w, b1, b2, act, out, ws, reverse)
    else:
        hs.copy_(_prev(hs, T - 1 if reverse else 0, reverse).expand_as(hs))
        cs.copy_(_prev(cs, T - 1 if reverse else 0, reverse).expand_as(cs))
    last = 0 if reverse else T
    return out, hs[last].clone(), cs[last].clone(), hs, cs, ws


def lstm_layer_backward(grad_output: Optional[Tensor], grad_h_n: Optional[Tensor], grad_c_n: Optional[Tensor],
                        input: Tensor, w_ih: Tensor, w_hh: Tensor, hs: Tensor, cs: Tensor, workspace: Tensor,
                        lengths: Optional[Tensor], reverse: bool
                        ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    T, B, I, H = _check.lstm_layer_backward(grad_output, grad_h_n, grad_c_n, input, w_ih, w_hh, hs, cs, workspace,
                                            lengths, reverse)
    act = _active(lengths, T, B, input.device)
    go = _masked_grad_output(grad_output, act)
    dh = grad_h_n.contiguous().clone() if grad_h_n is not None else input.new_zeros(B, H)
    dc = grad_c_n.contiguous().clone() if grad_c_n is not None else input.new_zeros(B, H)
    dgates = input.new_zeros(T, B, 4 * H)
    ws, hs, cs, w = workspace.contiguous(), hs.contiguous(), cs.contiguous(), w_hh.contiguous()
    if B > 0 and H > 0:
        dhx = input.new_empty(B, H)
        for s in range(T - 1, -1, -1):
            t = _time_of_step(s, T, reverse)
            _step_backward(LSTM, go[t] if go is not None else None, dh, dc, ws[t], None, _prev(cs, t, reverse),
                           _next(cs, t, reverse), act[t] if act is not None else None, None, dgates[t], None, dc,
                           dhx, None, B, H)
            dh = torch.addmm(dhx, dgates[t], w)
    dg2 = dgates.view(T * B, 4 * H)
    x2 = input.reshape(T * B, I)
    return (dg2.mm(w_ih).view(T, B, I), dh, dc, dg2.t().mm(x2), dg2.t().mm(_states_read(hs, T, reverse)),
            dg2.sum(0))


def gru_layer_forward(input: Tensor, h0: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Optional[Tensor],
                      b_hh: Optional[Tensor], lengths: Optional[Tensor], reverse: bool, reset_after: bool
                      ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    T, B, I, H = _check.gru_layer_forward(input, h0, w_ih, w_hh, b_ih, b_hh, lengths, reverse, reset_after)
    gx = (input.reshape(T * B, I) @ w_ih.t()).view(T, B, 3 * H).contiguous()
    hs = input.new_empty(T + 1, B, H)
    out = input.new_zeros(T, B, H)
    ws = input.new_zeros(T, B, (4 if reset_after else 3) * H)
    _prev(hs, T - 1 if reverse else 0, reverse).copy_(h0)
    act = _active(lengths, T, B, input.device)
    w, b1, b2 = w_hh.contiguous(), _contig(b_ih), _contig(b_hh)
    if B > 0 and H > 0:
        _forward_sequence(GRU_AFTER if reset_after else GRU_BEFORE_1, gx, hs, None, w, b1, b2, act, out, ws,
                          reverse)
    else:
        hs.copy_(_prev(hs, T - 1 if reverse else 0, reverse).expand_as(hs))
    last = 0 if reverse else T
    return out, hs[last].clone(), hs, ws


def gru_layer_backward(grad_output: Optional[Tensor], grad_h_n: Optional[Tensor], input: Tensor, w_ih: Tensor,
                       w_hh: Tensor, hs: Tensor, workspace: Tensor, lengths: Optional[Tensor], reverse: bool,
                       reset_after: bool) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    T, B, I, H = _check.gru_layer_backward(grad_output, grad_h_n, input, w_ih, w_hh, hs, workspace, lengths, reverse,
                                           reset_after)
    act = _active(lengths, T, B, input.device)
    go = _masked_grad_output(grad_output, act)
    dh = grad_h_n.contiguous().clone() if grad_h_n is not None else input.new_zeros(B, H)
    ws, hs, w = workspace.contiguous(), hs.contiguous(), w_hh.contiguous()
    dgi = input.new_zeros(T, B, 3 * H)
    dgh = input.new_zeros(T, B, 3 * H) if reset_after else dgi
    rh_all = None if reset_after else input.new_zeros(T, B, H)
    if B > 0 and H > 0:
        dhx = input.new_empty(B, H)
        for s in range(T - 1, -1, -1):
            t = _time_of_step(s, T, reverse)
            a = act[t] if act is not None else None
            g = go[t] if go is not None else None
            hprev = _prev(hs, t, reverse)
            if reset_after:
                _step_backward(GRU_AFTER, g, dh, None, ws[t], hprev, None, None, a, None, dgi[t], dgh[t], None,
                               dhx, None, B, H)
                dh = torch.addmm(dhx, dgh[t], w)
            else:
                _step_backward(GRU_BEFORE_1, g, dh, None, ws[t], hprev, None, None, a, None, dgi[t], None, None,
                               dhx, None, B, H)
                drh = dgi[t, :, 2 * H:] @ w[2 * H:]
                _step_backward(GRU_BEFORE_2, g, dh, None, ws[t], hprev, None, None, a, drh, dgi[t], None, None,
                               dhx, rh_all[t], B, H)
                dh = torch.addmm(dhx, dgi[t, :, : 2 * H], w[: 2 * H])
    dgi2, dgh2 = dgi.view(T * B, 3 * H), dgh.view(T * B, 3 * H)
    x2 = input.reshape(T * B, I)
    h_read = _states_read(hs, T, reverse)
    if reset_after:
        grad_w_hh = dgh2.t().mm(h_read)
    else:
        grad_w_hh = torch.cat([dgi2[:, : 2 * H].t().mm(h_read), dgi2[:, 2 * H:].t().mm(rh_all.view(T * B, H))])
    return dgi2.mm(w_ih).view(T, B, I), dh, dgi2.t().mm(x2), grad_w_hh, dgi2.sum(0), dgh2.sum(0)

