"""Triton LSTM / GRU layers, one layer in one direction over a whole sequence: the kernels of the ops
torch.ops.s2s_fused.{lstm,gru}_layer_{forward,backward}_triton (defined, with their fake kernels and autograd, in
s2s_fused/ops/rnn_layer.py).

Forward: the input projection of all T steps is one GEMM (torch); then per step one kernel computes, for a
(BLOCK_B x BLOCK_H) tile of (batch rows x hidden units), the recurrent product h W_hh^T for *all* gates of those
units, adds the precomputed input projection and the biases, and applies the cell update in registers
(rnn_common.forward_tile, the cells' code; the gate pre-activations never reach memory, only the activated gates,
the workspace, are stored for backward).
GRU reset_before (Cho et al.) needs r * h before its W_hn product, so it runs as two such kernels per step.
Where the hidden size allows (:func:`use_persistent`), one persistent launch runs the whole time loop instead:
a program owns a block of batch rows and all their hidden units, loops over steps and, within a step, over the
unit tiles with the same tile code, with a block-level barrier between steps (batch rows are independent, so no
grid-wide sync). Both paths write the same buffers, so the backward is shared.
Backward: per step one pointwise kernel (pre-activation gate gradients, state pass-through of finished rows) and
the dh GEMM (torch); after the loop the weight gradients as GEMMs over all T*B rows and bias gradients as sums.

Projected LSTMs (w_hr (P, H), torch's proj_size) run a per-step path: the recurrent product h W_hh^T (K = P, not
the tile code's H) and the projection o * tanh(c) W_hr^T are torch GEMMs around one pointwise kernel per step
(_proj_step_forward_kernel); backward the same pointwise backward as the other layers, between two GEMMs.

Variable lengths through a (T, B) `active` mask, as the C++ ops; the state history hs / cs (T+1, B, H) in the
time layout of s2s_fused.ops (rnn_common.step_slots).
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from .rnn_common import GRU_RESET_BEFORE, LSTM, CellKind, backward_tile, forward_tile, gru_kind, sigmoid, tanh
from .rnn_common import _bias, _tile_masks
from .rnn_common import step_slots, step_slots_jit
from .rnn_common import acc_dtype as _acc
from .rnn_common import dot_precision as _prec
from .rnn_common import tile_sizes as _blocks
from .. import _op_checks as _check
from .. import config

Tensor = torch.Tensor


@triton.jit
def _step_forward_tile(gx_ptr, h_ptr, c_ptr, w_ptr, b1_ptr, b2_ptr, act_ptr, h1_ptr, c1_ptr, out_ptr, ws_ptr, rh_ptr,
                       offs_b, offs_h, B, H, KIND: tl.constexpr, STAGE: tl.constexpr, HAS_B1: tl.constexpr,
                       HAS_B2: tl.constexpr, HAS_ACT: tl.constexpr, ACC: tl.constexpr, PREC: tl.constexpr,
                       BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr):
    """rnn_common.forward_tile for a layer's step: gx (B, G*H) precomputed, every (B, .) slice contiguous."""
    forward_tile(gx_ptr, 0, 0, w_ptr, 0, 0, gx_ptr, h_ptr, H, 1, c_ptr, H, w_ptr, H, 1, b1_ptr, b2_ptr, act_ptr,
                 h1_ptr, c1_ptr, out_ptr, ws_ptr, rh_ptr, offs_b, offs_h, B, 0, H, KIND, STAGE, False, HAS_B1,
                 HAS_B2, HAS_ACT, True, ACC, PREC, BLOCK_B, BLOCK_H, BLOCK_K)


@triton.jit
def _layer_step_forward_kernel(
    gx_ptr, h_ptr, c_ptr, w_ptr, b1_ptr, b2_ptr, act_ptr, h1_ptr, c1_ptr, out_ptr, ws_ptr, rh_ptr, B, H,
    KIND: tl.constexpr, STAGE: tl.constexpr, HAS_B1: tl.constexpr, HAS_B2: tl.constexpr, HAS_ACT: tl.constexpr,
    ACC: tl.constexpr, PREC: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """One step: program (i, j) computes the tile of batch rows block i and hidden units block j."""
    offs_b = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    offs_h = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    _step_forward_tile(gx_ptr, h_ptr, c_ptr, w_ptr, b1_ptr, b2_ptr, act_ptr, h1_ptr, c1_ptr, out_ptr, ws_ptr,
                       rh_ptr, offs_b, offs_h, B, H, KIND, STAGE, HAS_B1, HAS_B2, HAS_ACT, ACC, PREC, BLOCK_B,
                       BLOCK_H, BLOCK_K)


@triton.jit
def _layer_persistent_forward_kernel(
    gx_ptr, hs_ptr, cs_ptr, w_ptr, b1_ptr, b2_ptr, act_ptr, out_ptr, ws_ptr, rh_ptr, T, B, H,
    KIND: tl.constexpr, REVERSE: tl.constexpr, HAS_B1: tl.constexpr, HAS_B2: tl.constexpr,
    HAS_ACT: tl.constexpr, ACC: tl.constexpr, PREC: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """The whole time loop of one layer-direction in one launch. Program i owns batch rows block i and *all* H
    units of them. Rows are independent in the recurrence, so no other program ever reads what this one writes:
    the only sync needed is a block-level barrier after each step, as step t+1's product reads h_t of every unit
    (written by other threads of this program). No grid-wide sync, so any grid size runs (and the interpreter,
    which runs programs one after another, too). GRU_RESET_BEFORE runs both stages with a barrier between them
    (stage 2's W_hn product reads r * h of every unit). Buffers as the per-step path: gx (T, B, G*H), hs / cs
    (T+1, B, H) with h0 already in place, out (T, B, H), ws (T, B, A*H), act (T, B), rh (B, H) scratch."""
    G: tl.constexpr = 4 if KIND == LSTM else 3
    A: tl.constexpr = 3 if KIND == GRU_RESET_BEFORE else 4
    FIRST_STAGE: tl.constexpr = 1 if KIND == GRU_RESET_BEFORE else 0
    offs_b = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    for s in range(T):
        t, t_read, t_write = step_slots_jit(s, T, REVERSE)
        # 64-bit slice offsets; the step index is converted, not B or H, which the launcher turns into
        # constexprs when they equal 1.
        rows = t.to(tl.int64) * B  # first (t, b) row of step t in gx / out / ws / act
        rows_read = t_read.to(tl.int64) * B
        rows_write = t_write.to(tl.int64) * B
        h_ptr, h1_ptr = hs_ptr + rows_read * H, hs_ptr + rows_write * H
        c_ptr, c1_ptr = cs_ptr + rows_read * H, cs_ptr + rows_write * H
        gx_t = gx_ptr + rows * (G * H)
        ws_t = ws_ptr + rows * (A * H)
        out_t = out_ptr + rows * H
        act_t = act_ptr + rows
        for j0 in range(0, H, BLOCK_H):
            _step_forward_tile(gx_t, h_ptr, c_ptr, w_ptr, b1_ptr, b2_ptr, act_t, h1_ptr, c1_ptr, out_t, ws_t,
                               rh_ptr, offs_b, j0 + tl.arange(0, BLOCK_H), B, H, KIND, FIRST_STAGE, HAS_B1, HAS_B2,
                               HAS_ACT, ACC, PREC, BLOCK_B, BLOCK_H, BLOCK_K)
        if FIRST_STAGE == 1:  # GRU_RESET_BEFORE: stage 2 of every unit tile
            tl.debug_barrier()  # rh of every unit written before any W_hn product reads it
            for j0 in range(0, H, BLOCK_H):
                _step_forward_tile(gx_t, h_ptr, c_ptr, w_ptr, b1_ptr, b2_ptr, act_t, h1_ptr, c1_ptr, out_t, ws_t,
                                   rh_ptr, offs_b, j0 + tl.arange(0, BLOCK_H), B, H, KIND, 2, HAS_B1, HAS_B2,
                                   HAS_ACT, ACC, PREC, BLOCK_B, BLOCK_H, BLOCK_K)
        tl.debug_barrier()  # h_t (and c_t) of every unit written before step s+1 reads them


@triton.jit
def _layer_step_backward_kernel(
    go_ptr, dh_ptr, dc_ptr, ws_ptr, hx_ptr, cx_ptr, c1_ptr, act_ptr, drh_ptr,
    dg_ptr, dgh_ptr, dcx_ptr, dhx_ptr, rh_ptr, B, H,
    KIND: tl.constexpr, STAGE: tl.constexpr, HAS_GO: tl.constexpr, HAS_ACT: tl.constexpr, ACC: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr,
):
    """Pointwise backward of one step (rnn_common.backward_tile), dh = grad_output[t] + the carried state
    gradient: the gate gradients, and dhx, the part of the previous state's gradient that does not go through
    W_hh (finished rows: all of dh)."""
    offs_b = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    offs_h = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    backward_tile(go_ptr, dh_ptr, H, dc_ptr, H, ws_ptr, hx_ptr, cx_ptr, c1_ptr, act_ptr, drh_ptr, dg_ptr, dgh_ptr,
                  dcx_ptr, dhx_ptr, rh_ptr, offs_b, offs_h, B, H, KIND, STAGE, True, HAS_GO, True, HAS_ACT, True,
                  ACC, BLOCK_B, BLOCK_H)


@triton.jit
def _proj_step_forward_kernel(pre_ptr, b1_ptr, b2_ptr, c_ptr, act_ptr, c1_ptr, ws_ptr, raw_ptr, B, H,
                              HAS_B1: tl.constexpr, HAS_B2: tl.constexpr, HAS_ACT: tl.constexpr, ACC: tl.constexpr,
                              BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr):
    """A projected LSTM's pointwise step: pre (B, 4H) = x W_ih^T + h W_hh^T (without biases); writes the activated
    gates to ws (B, 4H), c1 (B, H) (finished rows keep c) and raw = o * tanh(c1) (B, H), which the caller
    projects."""
    offs_b = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    offs_h = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    mask, bh, keep = _tile_masks(offs_b, offs_h, act_ptr, B, H, HAS_ACT)
    row = offs_b[:, None].to(tl.int64) * (4 * H) + offs_h[None, :]
    ty = c1_ptr.dtype.element_ty
    for gate in tl.static_range(4):  # unrolled: the four values stay in registers
        p = tl.load(pre_ptr + row + gate * H, mask=mask, other=0.0).to(ACC)
        p += _bias(b1_ptr, gate, offs_h, H, HAS_B1, ACC) + _bias(b2_ptr, gate, offs_h, H, HAS_B2, ACC)
        if gate == 2:
            a = tanh(p)
        else:
            a = sigmoid(p)
        tl.store(ws_ptr + row + gate * H, a.to(ty), mask=mask)
        if gate == 0:
            i = a
        elif gate == 1:
            f = a
        elif gate == 2:
            g = a
        else:
            o = a
    cprev = tl.load(c_ptr + bh, mask=mask, other=0.0).to(ACC)
    c = f * cprev + i * g
    tl.store(c1_ptr + bh, tl.where(keep, c, cprev).to(ty), mask=mask)
    tl.store(raw_ptr + bh, (o * tanh(c)).to(ty), mask=mask)


# ------------------------------------------------------------------------------------------------ launchers


def _active(lengths, T, B, device):
    if lengths is None:
        return None
    steps = torch.arange(T, device=device)
    return (steps.unsqueeze(1) < lengths.to(device).unsqueeze(0)).to(torch.uint8)


def _first_read(buf, T, reverse):
    """The slot of the (T+1, B, H) state history that holds h0 / c0 (rnn_common.step_slots)."""
    return buf[step_slots(0, T, reverse)[1]]


def _states_read(buf, T, reverse):
    return (buf[1:] if reverse else buf[:T]).reshape(T * buf.shape[1], buf.shape[2])  # not (-1, H): H may be 0


def _masked_grad_output(grad_output, active):
    if grad_output is None:
        return None
    if active is not None:
        return (grad_output * active.unsqueeze(2).to(grad_output.dtype)).contiguous()
    return grad_output.contiguous()


def _step_forward(kind, stage, gx, h, c, w, b1, b2, act, h1, c1, out, ws, rh, B, H):
    bb, bh, bk = _blocks(B, H)
    dummy = ws
    _layer_step_forward_kernel[(triton.cdiv(B, bb), triton.cdiv(H, bh))](
        gx, h, c if c is not None else dummy, w, b1 if b1 is not None else dummy, b2 if b2 is not None else dummy,
        act if act is not None else dummy, h1, c1 if c1 is not None else dummy, out, ws,
        rh if rh is not None else dummy, B, H,
        KIND=int(kind), STAGE=stage, HAS_B1=b1 is not None, HAS_B2=b2 is not None, HAS_ACT=act is not None,
        ACC=_acc(h.dtype), PREC=_prec(h.dtype), BLOCK_B=bb, BLOCK_H=bh, BLOCK_K=bk)


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


def _persistent_forward(kind, gx, hs, cs, w, b1, b2, act, out, ws, rh, reverse):
    T, B, H = out.shape
    _, bh, bk = _blocks(B, H)
    dummy = ws
    d = lambda t: t if t is not None else dummy  # noqa: E731  (absent operands: never read)
    _layer_persistent_forward_kernel[(triton.cdiv(B, PERSISTENT_BLOCK_B),)](
        gx, hs, d(cs), w, d(b1), d(b2), d(act), out, ws, d(rh), T, B, H,
        KIND=int(kind), REVERSE=reverse, HAS_B1=b1 is not None, HAS_B2=b2 is not None, HAS_ACT=act is not None,
        ACC=_acc(hs.dtype), PREC=_prec(hs.dtype), BLOCK_B=PERSISTENT_BLOCK_B, BLOCK_H=bh, BLOCK_K=bk,
        num_warps=PERSISTENT_NUM_WARPS)


def _forward_sequence(kind, gx, hs, cs, w, b1, b2, act, out, ws, reverse):
    """All T steps of one layer-direction (B, H > 0): one persistent launch, or per step one kernel (two for GRU
    reset_before). hs / cs (T+1, B, H) hold h0 / c0 at the first step's read slot."""
    T, B, H = out.shape
    rh = hs.new_empty(B, H) if kind == CellKind.GRU_RESET_BEFORE else None
    if use_persistent(B, H):
        _persistent_forward(kind, gx, hs, cs, w, b1, b2, act, out, ws, rh, reverse)
        return
    for s in range(T):
        t, read, write = step_slots(s, T, reverse)
        c, c1 = (cs[read], cs[write]) if cs is not None else (None, None)
        args = (gx[t], hs[read], c, w, b1, b2, act[t] if act is not None else None, hs[write], c1, out[t], ws[t],
                rh, B, H)
        for stage in (1, 2) if kind == CellKind.GRU_RESET_BEFORE else (0,):
            _step_forward(kind, stage, *args)


def _step_backward(kind, stage, go, dh, dc, ws, hx, cx, c1, act, drh, dg, dgh, dcx, dhx, rh, B, H):
    bb, bh, _ = _blocks(B, H)
    dummy = dg
    d = lambda t: t if t is not None else dummy  # noqa: E731  (absent operands: never read)
    _layer_step_backward_kernel[(triton.cdiv(B, bb), triton.cdiv(H, bh))](
        d(go), dh, d(dc), ws, d(hx), d(cx), d(c1), d(act), d(drh), dg, d(dgh), d(dcx), dhx, d(rh), B, H,
        KIND=int(kind), STAGE=stage, HAS_GO=go is not None, HAS_ACT=act is not None, ACC=_acc(dh.dtype),
        BLOCK_B=bb, BLOCK_H=bh)


def _contig(t):
    return t.contiguous() if t is not None else None


def _projected_forward(gx, hs, cs, w_hh, w_hr, b1, b2, act, out, ws, reverse):
    """All T steps of a projected LSTM layer-direction (B, H > 0): per step h W_hh^T (torch), the pointwise kernel,
    then h1 = raw W_hr^T (torch); a finished row keeps h and outputs zeros. hs (T+1, B, P), cs (T+1, B, H)."""
    T, B, _ = out.shape
    H = cs.shape[-1]
    bb, bh, _ = _blocks(B, H)
    raw = cs.new_empty(B, H)
    pre = cs.new_empty(B, 4 * H)
    dummy = ws
    d = lambda t: t if t is not None else dummy  # noqa: E731  (absent operands: never read)
    for s in range(T):
        t, read, write = step_slots(s, T, reverse)
        torch.addmm(gx[t], hs[read], w_hh.t(), out=pre)
        a = act[t] if act is not None else None
        _proj_step_forward_kernel[(triton.cdiv(B, bb), triton.cdiv(H, bh))](
            pre, d(b1), d(b2), cs[read], d(a), cs[write], ws[t], raw, B, H, HAS_B1=b1 is not None,
            HAS_B2=b2 is not None, HAS_ACT=a is not None, ACC=_acc(cs.dtype), BLOCK_B=bb, BLOCK_H=bh)
        h1 = raw @ w_hr.t()
        if a is not None:
            keep = a.bool().unsqueeze(1)
            h1 = torch.where(keep, h1, hs[read])
            out[t] = torch.where(keep, h1, torch.zeros((), dtype=h1.dtype, device=h1.device))
        else:
            out[t] = h1
        hs[write] = h1


def lstm_layer_forward(input: Tensor, h0: Tensor, c0: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Optional[Tensor],
                       b_hh: Optional[Tensor], lengths: Optional[Tensor], reverse: bool, w_hr: Optional[Tensor] = None
                       ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    T, B, I, H = _check.lstm_layer_forward(input, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths, reverse, w_hr)
    P = h0.shape[1]  # the state's width: H, or the projection's
    gx = (input.reshape(T * B, I) @ w_ih.t()).view(T, B, 4 * H).contiguous()
    hs, cs = input.new_empty(T + 1, B, P), input.new_empty(T + 1, B, H)
    out, ws = input.new_zeros(T, B, P), input.new_zeros(T, B, 4 * H)
    _first_read(hs, T, reverse).copy_(h0)
    _first_read(cs, T, reverse).copy_(c0)
    act = _active(lengths, T, B, input.device)
    w, b1, b2 = w_hh.contiguous(), _contig(b_ih), _contig(b_hh)
    if B > 0 and H > 0 and w_hr is not None:
        _projected_forward(gx, hs, cs, w, w_hr, b1, b2, act, out, ws, reverse)
    elif B > 0 and H > 0:
        _forward_sequence(CellKind.LSTM, gx, hs, cs, w, b1, b2, act, out, ws, reverse)
    else:
        hs.copy_(_first_read(hs, T, reverse).expand_as(hs))
        cs.copy_(_first_read(cs, T, reverse).expand_as(cs))
    last = 0 if reverse else T
    return out, hs[last].clone(), cs[last].clone(), hs, cs, ws


def _lstm_projected_backward(grad_output, grad_h_n, grad_c_n, input, w_ih, w_hh, hs, cs, workspace, lengths,
                             reverse, w_hr):
    """Per step: dh = grad_output[t] + the carried state gradient (P wide; kept, zero on finished rows, as dhp for
    the W_hr gradient), draw = dh W_hr, the pointwise backward with draw as its dh, then the next state gradient
    dgates W_hh plus, for finished rows, dh itself."""
    T, B, I = input.shape
    P, H = w_hr.shape
    act = _active(lengths, T, B, input.device)
    go = _masked_grad_output(grad_output, act)
    dh = grad_h_n.contiguous().clone() if grad_h_n is not None else input.new_zeros(B, P)
    dc = grad_c_n.contiguous().clone() if grad_c_n is not None else input.new_zeros(B, H)
    dgates = input.new_zeros(T, B, 4 * H)
    dhp = input.new_zeros(T, B, P)
    ws, hs, cs = workspace.contiguous(), hs.contiguous(), cs.contiguous()
    if B > 0 and H > 0:
        dhx = input.new_empty(B, H)  # the kernel's pass-through of finished rows (H wide): unused here
        for s in range(T - 1, -1, -1):
            t, read, write = step_slots(s, T, reverse)
            total = dh + go[t] if go is not None else dh
            a = act[t] if act is not None else None
            dhp[t] = total * a.unsqueeze(1).to(total.dtype) if a is not None else total
            draw = (dhp[t] @ w_hr).contiguous()
            _step_backward(CellKind.LSTM, 0, None, draw, dc, ws[t], None, cs[read], cs[write], a, None, dgates[t],
                           None, dc, dhx, None, B, H)
            dh = dgates[t] @ w_hh
            if a is not None:
                dh = dh + total * (a == 0).unsqueeze(1).to(total.dtype)
    dg2 = dgates.view(T * B, 4 * H)
    x2 = input.reshape(T * B, I)
    c1 = cs[:T] if reverse else cs[1:]
    raw = (ws[..., 3 * H:] * c1.tanh()).reshape(T * B, H)
    if act is not None:
        raw = torch.where(act.reshape(T * B, 1).bool(), raw, torch.zeros((), dtype=raw.dtype, device=raw.device))
    return (dg2.mm(w_ih).view(T, B, I), dh, dc, dg2.t().mm(x2), dg2.t().mm(_states_read(hs, T, reverse)),
            dg2.sum(0), dhp.view(T * B, P).t().mm(raw))


def lstm_layer_backward(grad_output: Optional[Tensor], grad_h_n: Optional[Tensor], grad_c_n: Optional[Tensor],
                        input: Tensor, w_ih: Tensor, w_hh: Tensor, hs: Tensor, cs: Tensor, workspace: Tensor,
                        lengths: Optional[Tensor], reverse: bool, w_hr: Optional[Tensor] = None
                        ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    T, B, I, H = _check.lstm_layer_backward(grad_output, grad_h_n, grad_c_n, input, w_ih, w_hh, hs, cs, workspace,
                                            lengths, reverse, w_hr)
    if w_hr is not None:
        return _lstm_projected_backward(grad_output, grad_h_n, grad_c_n, input, w_ih, w_hh, hs, cs, workspace,
                                        lengths, reverse, w_hr)
    act = _active(lengths, T, B, input.device)
    go = _masked_grad_output(grad_output, act)
    dh = grad_h_n.contiguous().clone() if grad_h_n is not None else input.new_zeros(B, H)
    dc = grad_c_n.contiguous().clone() if grad_c_n is not None else input.new_zeros(B, H)
    dgates = input.new_zeros(T, B, 4 * H)
    ws, hs, cs, w = workspace.contiguous(), hs.contiguous(), cs.contiguous(), w_hh.contiguous()
    if B > 0 and H > 0:
        dhx = input.new_empty(B, H)
        for s in range(T - 1, -1, -1):
            t, read, write = step_slots(s, T, reverse)
            _step_backward(CellKind.LSTM, 0, go[t] if go is not None else None, dh, dc, ws[t], None, cs[read],
                           cs[write], act[t] if act is not None else None, None, dgates[t], None, dc,
                           dhx, None, B, H)
            dh = torch.addmm(dhx, dgates[t], w)
    dg2 = dgates.view(T * B, 4 * H)
    x2 = input.reshape(T * B, I)
    return (dg2.mm(w_ih).view(T, B, I), dh, dc, dg2.t().mm(x2), dg2.t().mm(_states_read(hs, T, reverse)),
            dg2.sum(0), input.new_empty(0))


def gru_layer_forward(input: Tensor, h0: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Optional[Tensor],
                      b_hh: Optional[Tensor], lengths: Optional[Tensor], reverse: bool, reset_after: bool
                      ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    T, B, I, H = _check.gru_layer_forward(input, h0, w_ih, w_hh, b_ih, b_hh, lengths, reverse, reset_after)
    gx = (input.reshape(T * B, I) @ w_ih.t()).view(T, B, 3 * H).contiguous()
    hs = input.new_empty(T + 1, B, H)
    out = input.new_zeros(T, B, H)
    ws = input.new_zeros(T, B, (4 if reset_after else 3) * H)
    _first_read(hs, T, reverse).copy_(h0)
    act = _active(lengths, T, B, input.device)
    w, b1, b2 = w_hh.contiguous(), _contig(b_ih), _contig(b_hh)
    if B > 0 and H > 0:
        _forward_sequence(gru_kind(reset_after), gx, hs, None, w, b1, b2, act, out, ws, reverse)
    else:
        hs.copy_(_first_read(hs, T, reverse).expand_as(hs))
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
    kind = gru_kind(reset_after)
    if B > 0 and H > 0:
        dhx = input.new_empty(B, H)
        for s in range(T - 1, -1, -1):
            t, read, _ = step_slots(s, T, reverse)
            a = act[t] if act is not None else None
            g = go[t] if go is not None else None
            if reset_after:
                _step_backward(kind, 0, g, dh, None, ws[t], hs[read], None, None, a, None, dgi[t], dgh[t], None,
                               dhx, None, B, H)
                dh = torch.addmm(dhx, dgh[t], w)
            else:
                _step_backward(kind, 1, g, dh, None, ws[t], hs[read], None, None, a, None, dgi[t], None, None,
                               dhx, None, B, H)
                drh = dgi[t, :, 2 * H:] @ w[2 * H:]
                _step_backward(kind, 2, g, dh, None, ws[t], hs[read], None, None, a, drh, dgi[t], None, None,
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

