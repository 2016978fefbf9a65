"""The cell math of the Triton LSTM / GRU kernels, one source for the cells (rnn_cell.py), the layers' per-step
kernels and their persistent programs (rnn_layer.py): :func:`forward_tile` and :func:`backward_tile` compute one
step of one (batch rows x hidden units) tile, and :func:`step_slots` is the layers' time layout. Shapes in the
notation of s2s_fused.ops.
"""
from __future__ import annotations

import enum

import torch
import triton
import triton.language as tl

from ..backend import triton_interpret


class CellKind(enum.IntEnum):
    """The cell a kernel computes (the KIND constexpr): the same names and values as csrc's ``enum class
    CellKind``. GRU_RESET_BEFORE runs in two stages (the STAGE constexpr), as its W_hn product needs r * h of
    every unit first: stage 1 r, z and rh = r * h, stage 2 n and h; the other kinds run as STAGE 0."""
    LSTM = 0
    GRU_RESET_AFTER = 1
    GRU_RESET_BEFORE = 2


def gru_kind(reset_after: bool) -> CellKind:
    return CellKind.GRU_RESET_AFTER if reset_after else CellKind.GRU_RESET_BEFORE


# The kinds inside @triton.jit code (which reads only constexpr globals).
LSTM = tl.constexpr(int(CellKind.LSTM))
GRU_RESET_AFTER = tl.constexpr(int(CellKind.GRU_RESET_AFTER))
GRU_RESET_BEFORE = tl.constexpr(int(CellKind.GRU_RESET_BEFORE))


@triton.jit
def sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def tanh(x):
    # sign(x) (1 - e) / (1 + e), e = exp(-2|x|) <= 1: no overflow for any x.
    e = tl.exp(-2.0 * tl.abs(x))
    t = (1.0 - e) / (1.0 + e)
    return tl.where(x < 0, -t, t)


@triton.jit
def gate_dot(acc, a_ptr, s_ab, s_ak, w_ptr, s_wn, s_wk, row0, offs_b, offs_h, B, H, K,
              BLOCK_K: tl.constexpr, PREC: tl.constexpr):
    """acc += a[offs_b, :] @ w[row0 + offs_h, :]^T over k, masked at the edges. PREC "f32" upcasts the tiles
    first (the Triton interpreter's bf16 dot is wrong); otherwise it is tl.dot's input_precision."""
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        a = tl.load(a_ptr + offs_b[:, None].to(tl.int64) * s_ab + offs_k[None, :] * s_ak,
                    mask=(offs_b[:, None] < B) & (offs_k[None, :] < K), other=0.0)
        w = tl.load(w_ptr + (row0 + offs_h)[None, :].to(tl.int64) * s_wn + offs_k[:, None] * s_wk,
                    mask=(offs_h[None, :] < H) & (offs_k[:, None] < K), other=0.0)
        # out_dtype names the accumulator's dtype: Triton 3.6 defaults it to fp32 whatever acc is (an fp64 acc
        # then fails its assertion), Triton 3.9 to acc's dtype.
        if PREC == "f32":
            acc = tl.dot(a.to(tl.float32), w.to(tl.float32), acc, input_precision="ieee", out_dtype=acc.dtype)
        else:
            acc = tl.dot(a, w, acc, input_precision=PREC, out_dtype=acc.dtype)
    return acc


def acc_dtype(dtype):
    """fp64 accumulates in fp64, everything else in fp32."""
    return tl.float64 if dtype == torch.float64 else tl.float32


def dot_precision(dtype):
    """tl.dot's input_precision. fp32/fp64: full-precision products ("ieee"), so results match the reference at
    fp32 tolerance (TF32 would cost ~1e-3 relative error). fp16/bf16: the tensor-core default, except bf16
    under the interpreter, whose bf16 tl.dot returns garbage (Triton 3.9): "f32" makes the kernels upcast."""
    if dtype == torch.bfloat16 and triton_interpret():
        return "f32"
    return "ieee" if dtype in (torch.float32, torch.float64) else "tf32"


def tile_sizes(B, H):
    """(BLOCK_B, BLOCK_H, BLOCK_K) for a (B, H) tile grid."""
    return (16 if B <= 16 else 32), (32 if H <= 32 else 64), 32


def step_slots(s, T, reverse):
    """(t, read, write) of step s: the time t it runs and the slots of the (T+1, B, H) state history it reads and
    writes (forward t = s reads slot t, writes t+1; reversed t = T-1-s reads slot t+1, writes t)."""
    t = T - 1 - s if reverse else s
    return (t, t + 1, t) if reverse else (t, t, t + 1)


@triton.jit
def step_slots_jit(s, T, REVERSE: tl.constexpr):
    """:func:`step_slots` inside a kernel."""
    if REVERSE:
        t = T - 1 - s
        read = t + 1
        write = t
    else:
        t = s
        read = s
        write = s + 1
    return t, read, write


@triton.jit
def _bias(b_ptr, gate, offs_h, H, HAS: tl.constexpr, ACC: tl.constexpr):
    """b[gate*H + offs_h] as a (1, BLOCK_H) row, zeros without a bias. One return of one type: the GPU compiler
    rejects a tensor return and a scalar one in the same function, even behind a constexpr branch (the
    interpreter accepts it)."""
    b = tl.zeros((1, offs_h.shape[0]), dtype=ACC)
    if HAS:
        b += tl.load(b_ptr + gate * H + offs_h, mask=offs_h < H, other=0.0).to(ACC)[None, :]
    return b


@triton.jit
def _input_part(gate, x_ptr, s_xb, s_xk, wi_ptr, s_win, s_wik, gx_ptr, bi_ptr, offs_b, offs_h, mask, B, I, H,
                G: tl.constexpr, HAS_X: tl.constexpr, HAS_BI: tl.constexpr, ACC: tl.constexpr, PREC: tl.constexpr,
                BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr):
    """x W_i^T + b_i of one gate: the product here (HAS_X, a cell) or read from gx (B, G*H) (a layer's step)."""
    if HAS_X:
        v = gate_dot(tl.zeros((BLOCK_B, BLOCK_H), dtype=ACC), x_ptr, s_xb, s_xk, wi_ptr, s_win, s_wik, gate * H,
                     offs_b, offs_h, B, H, I, BLOCK_K, PREC)
    else:
        v = tl.load(gx_ptr + offs_b[:, None].to(tl.int64) * (G * H) + (gate * H + offs_h)[None, :], mask=mask,
                    other=0.0).to(ACC)
    return v + _bias(bi_ptr, gate, offs_h, H, HAS_BI, ACC)


@triton.jit
def _preact(gate, x_ptr, s_xb, s_xk, wi_ptr, s_win, s_wik, gx_ptr, a_ptr, s_ab, s_ak, wh_ptr, s_whn, s_whk,
            bi_ptr, bh_ptr, offs_b, offs_h, mask, B, I, H, G: tl.constexpr, HAS_X: tl.constexpr,
            HAS_BI: tl.constexpr, HAS_BH: tl.constexpr, ACC: tl.constexpr, PREC: tl.constexpr,
            BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr):
    """x W_i^T + b_i + a W_h^T + b_h of one gate (rows gate*H + offs_h of the weights), a (B, H) the state the
    recurrent product reads (h, or r * h for GRU reset_before's n)."""
    if HAS_X:  # both products into one accumulator, then the biases
        acc = gate_dot(tl.zeros((BLOCK_B, BLOCK_H), dtype=ACC), x_ptr, s_xb, s_xk, wi_ptr, s_win, s_wik, gate * H,
                       offs_b, offs_h, B, H, I, BLOCK_K, PREC)
        acc = gate_dot(acc, a_ptr, s_ab, s_ak, wh_ptr, s_whn, s_whk, gate * H, offs_b, offs_h, B, H, H, BLOCK_K,
                       PREC)
        acc = acc + _bias(bi_ptr, gate, offs_h, H, HAS_BI, ACC) + _bias(bh_ptr, gate, offs_h, H, HAS_BH, ACC)
    else:  # the recurrent product plus the precomputed input projection and both biases
        acc = gate_dot(tl.zeros((BLOCK_B, BLOCK_H), dtype=ACC), a_ptr, s_ab, s_ak, wh_ptr, s_whn, s_whk, gate * H,
                       offs_b, offs_h, B, H, H, BLOCK_K, PREC)
        gi = _input_part(gate, x_ptr, s_xb, s_xk, wi_ptr, s_win, s_wik, gx_ptr, bi_ptr, offs_b, offs_h, mask, B,
                         I, H, G, HAS_X, HAS_BI, ACC, PREC, BLOCK_B, BLOCK_H, BLOCK_K)
        acc = acc + (gi + _bias(bh_ptr, gate, offs_h, H, HAS_BH, ACC))
    return acc


@triton.jit
def _tile_masks(offs_b, offs_h, act_ptr, B, H, HAS_ACT: tl.constexpr):
    """(mask, bh, keep) of a tile: its in-bounds elements, their offsets in a contiguous (B, H) buffer, and the
    in-bounds elements of rows still running (act (B,) nonzero; every row without HAS_ACT)."""
    mask = (offs_b[:, None] < B) & (offs_h[None, :] < H)
    bh = offs_b[:, None].to(tl.int64) * H + offs_h[None, :]
    keep = mask
    if HAS_ACT:
        act = tl.load(act_ptr + offs_b, mask=offs_b < B, other=0)
        keep = (act != 0)[:, None] & mask
    return mask, bh, keep


@triton.jit
def forward_tile(
    x_ptr, s_xb, s_xk, wi_ptr, s_win, s_wik, gx_ptr, h_ptr, s_hb, s_hk, c_ptr, s_cb, wh_ptr, s_whn, s_whk,
    bi_ptr, bh_ptr, act_ptr, h1_ptr, c1_ptr, out_ptr, ws_ptr, rh_ptr, offs_b, offs_h, B, I, H,
    KIND: tl.constexpr, STAGE: tl.constexpr, HAS_X: tl.constexpr, HAS_BI: tl.constexpr, HAS_BH: tl.constexpr,
    HAS_ACT: tl.constexpr, HAS_OUT: tl.constexpr, ACC: tl.constexpr, PREC: tl.constexpr, BLOCK_B: tl.constexpr,
    BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """One step of one tile, rows offs_b x units offs_h. The input projection is computed here from x and W_ih
    (HAS_X: a cell) or read from gx (B, G*H) (a layer, which computed all T steps' in one GEMM). h (B, H) at strides
    (s_hb, s_hk), c (B, H) at row stride s_cb; h1, c1, out, rh (B, H) and ws (B, A*H) contiguous. act (B,): rows
    with act 0 have finished (HAS_ACT): they keep h and c and output zeros. Writes h1 (c1), the workspace
    (activated gates, and W_hn h + b_hn for reset_after) and out (HAS_OUT); GRU_RESET_BEFORE's stage 1 writes r, z
    and rh = r * h, its stage 2 n and h1 (out)."""
    mask, bh, keep = _tile_masks(offs_b, offs_h, act_ptr, B, H, HAS_ACT)
    hprev = tl.load(h_ptr + offs_b[:, None].to(tl.int64) * s_hb + offs_h[None, :] * s_hk, mask=mask,
                    other=0.0).to(ACC)
    G: tl.constexpr = 4 if KIND == LSTM else 3
    A: tl.constexpr = 3 if KIND == GRU_RESET_BEFORE else 4
    ws = offs_b[:, None].to(tl.int64) * (A * H) + offs_h[None, :]
    ty = h1_ptr.dtype.element_ty
    if KIND == LSTM:  # gates i, f, g, o
        for gate in tl.static_range(4):  # unrolled: the four values stay in registers
            p = _preact(gate, x_ptr, s_xb, s_xk, wi_ptr, s_win, s_wik, gx_ptr, h_ptr, s_hb, s_hk, wh_ptr, s_whn,
                        s_whk, bi_ptr, bh_ptr, offs_b, offs_h, mask, B, I, H, G, HAS_X, HAS_BI, HAS_BH, ACC, PREC,
                        BLOCK_B, BLOCK_H, BLOCK_K)
            if gate == 0:
                i = sigmoid(p)
            elif gate == 1:
                f = sigmoid(p)
            elif gate == 2:
                g = tanh(p)
            else:
                o = sigmoid(p)
        cprev = tl.load(c_ptr + offs_b[:, None].to(tl.int64) * s_cb + offs_h[None, :], mask=mask,
                        other=0.0).to(ACC)
        c = f * cprev + i * g
        h = o * tanh(c)
        tl.store(ws_ptr + ws, i.to(ty), mask=mask)
        tl.store(ws_ptr + ws + H, f.to(ty), mask=mask)
        tl.store(ws_ptr + ws + 2 * H, g.to(ty), mask=mask)
        tl.store(ws_ptr + ws + 3 * H, o.to(ty), mask=mask)
        tl.store(c1_ptr + bh, tl.where(keep, c, cprev).to(ty), mask=mask)
    elif STAGE == 2:  # GRU_RESET_BEFORE: n = tanh(x W_in^T + b_in + (r h) W_hn^T + b_hn)
        n = tanh(_preact(2, x_ptr, s_xb, s_xk, wi_ptr, s_win, s_wik, gx_ptr, rh_ptr, H, 1, wh_ptr, s_whn, s_whk,
                         bi_ptr, bh_ptr, offs_b, offs_h, mask, B, I, H, G, HAS_X, HAS_BI, HAS_BH, ACC, PREC,
                         BLOCK_B, BLOCK_H, BLOCK_K))
        z = tl.load(ws_ptr + ws + H, mask=mask, other=0.0).to(ACC)
        h = n + z * (hprev - n)
        tl.store(ws_ptr + ws + 2 * H, n.to(ty), mask=mask)
    else:  # GRU: r, z
        for gate in tl.static_range(2):  # unrolled, as the LSTM's
            p = _preact(gate, x_ptr, s_xb, s_xk, wi_ptr, s_win, s_wik, gx_ptr, h_ptr, s_hb, s_hk, wh_ptr, s_whn,
                        s_whk, bi_ptr, bh_ptr, offs_b, offs_h, mask, B, I, H, G, HAS_X, HAS_BI, HAS_BH, ACC, PREC,
                        BLOCK_B, BLOCK_H, BLOCK_K)
            if gate == 0:
                r = sigmoid(p)
            else:
                z = sigmoid(p)
        tl.store(ws_ptr + ws, r.to(ty), mask=mask)
        tl.store(ws_ptr + ws + H, z.to(ty), mask=mask)
        if KIND == GRU_RESET_AFTER:  # n = tanh(x W_in^T + b_in + r (h W_hn^T + b_hn))
            hn = gate_dot(tl.zeros((BLOCK_B, BLOCK_H), dtype=ACC), h_ptr, s_hb, s_hk, wh_ptr, s_whn, s_whk, 2 * H,
                          offs_b, offs_h, B, H, H, BLOCK_K, PREC) + _bias(bh_ptr, 2, offs_h, H, HAS_BH, ACC)
            xn = _input_part(2, x_ptr, s_xb, s_xk, wi_ptr, s_win, s_wik, gx_ptr, bi_ptr, offs_b, offs_h, mask, B,
                             I, H, G, HAS_X, HAS_BI, ACC, PREC, BLOCK_B, BLOCK_H, BLOCK_K)
            n = tanh(xn + r * hn)
            h = n + z * (hprev - n)
            tl.store(ws_ptr + ws + 2 * H, n.to(ty), mask=mask)
            tl.store(ws_ptr + ws + 3 * H, hn.to(ty), mask=mask)
        else:  # reset_before stage 1: rh = r * h for stage 2's W_hn product
            tl.store(rh_ptr + bh, (r * hprev).to(ty), mask=mask)
    if STAGE != 1:  # all but GRU_RESET_BEFORE's stage 1
        tl.store(h1_ptr + bh, tl.where(keep, h, hprev).to(ty), mask=mask)
        if HAS_OUT:
            tl.store(out_ptr + bh, tl.where(keep, h, 0.0).to(ty), mask=mask)


@triton.jit
def backward_tile(
    go_ptr, dh_ptr, s_dhb, dc_ptr, s_dcb, ws_ptr, hx_ptr, cx_ptr, c1_ptr, act_ptr, drh_ptr,
    dg_ptr, dgh_ptr, dcx_ptr, dhx_ptr, rh_ptr, offs_b, offs_h, B, H,
    KIND: tl.constexpr, STAGE: tl.constexpr, HAS_DH: tl.constexpr, HAS_GO: tl.constexpr, HAS_DC: tl.constexpr,
    HAS_ACT: tl.constexpr, HAS_DHX: tl.constexpr, ACC: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr,
):
    """The pointwise backward of one step of one tile: from dh = grad_h (+ grad_output, HAS_GO) (and dc), the
    pre-activation gate gradients dg (B, G*H) (zero for finished rows) and the state gradients that do not go
    through W_hh: dcx (LSTM) and dhx (finished rows: all of dh). dh at row stride s_dhb, dc at s_dcb, the others
    contiguous; a missing dh or dc (HAS_DH, HAS_DC false) is zero. LSTM writes dhx only with HAS_DHX. GRU
    reset_after also writes dgh, the gradient of the recurrent product's pre-activations (dn r for n); reset_before
    runs two stages around the caller's drh = dn W_hn GEMM: stage 1 dz, dn (and dr zero), stage 2 dr, dhx and
    rh = r * h for the W_hn gradient."""
    mask, bh, keep = _tile_masks(offs_b, offs_h, act_ptr, B, H, HAS_ACT)
    dh = tl.zeros((BLOCK_B, BLOCK_H), dtype=ACC)
    if HAS_DH:
        dh += tl.load(dh_ptr + offs_b[:, None].to(tl.int64) * s_dhb + offs_h[None, :], mask=mask,
                      other=0.0).to(ACC)
    if HAS_GO:
        dh += tl.load(go_ptr + bh, mask=mask, other=0.0).to(ACC)
    ty = dg_ptr.dtype.element_ty
    A: tl.constexpr = 3 if KIND == GRU_RESET_BEFORE else 4
    ws = offs_b[:, None].to(tl.int64) * (A * H) + offs_h[None, :]
    if KIND == LSTM:
        i = tl.load(ws_ptr + ws, mask=mask, other=0.0).to(ACC)
        f = tl.load(ws_ptr + ws + H, mask=mask, other=0.0).to(ACC)
        g = tl.load(ws_ptr + ws + 2 * H, mask=mask, other=0.0).to(ACC)
        o = tl.load(ws_ptr + ws + 3 * H, mask=mask, other=0.0).to(ACC)
        tc = tanh(tl.load(c1_ptr + bh, mask=mask, other=0.0).to(ACC))
        dc_in = tl.zeros((BLOCK_B, BLOCK_H), dtype=ACC)
        if HAS_DC:
            dc_in += tl.load(dc_ptr + offs_b[:, None].to(tl.int64) * s_dcb + offs_h[None, :], mask=mask,
                             other=0.0).to(ACC)
        dc = dc_in + dh * o * (1.0 - tc * tc)
        cx = tl.load(cx_ptr + bh, mask=mask, other=0.0).to(ACC)
        tl.store(dg_ptr + ws, tl.where(keep, dc * g * i * (1.0 - i), 0.0).to(ty), mask=mask)
        tl.store(dg_ptr + ws + H, tl.where(keep, dc * cx * f * (1.0 - f), 0.0).to(ty), mask=mask)
        tl.store(dg_ptr + ws + 2 * H, tl.where(keep, dc * i * (1.0 - g * g), 0.0).to(ty), mask=mask)
        tl.store(dg_ptr + ws + 3 * H, tl.where(keep, dh * tc * o * (1.0 - o), 0.0).to(ty), mask=mask)
        tl.store(dcx_ptr + bh, tl.where(keep, dc * f, dc_in).to(ty), mask=mask)
        if HAS_DHX:
            tl.store(dhx_ptr + bh, tl.where(keep, 0.0, dh).to(ty), mask=mask)
    else:
        g3 = offs_b[:, None].to(tl.int64) * (3 * H) + offs_h[None, :]
        r = tl.load(ws_ptr + ws, mask=mask, other=0.0).to(ACC)
        z = tl.load(ws_ptr + ws + H, mask=mask, other=0.0).to(ACC)
        h = tl.load(hx_ptr + bh, mask=mask, other=0.0).to(ACC)
        if STAGE == 2:  # GRU_RESET_BEFORE: dr and dhx of the running rows, rh
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
            if KIND == GRU_RESET_AFTER:
                hn = tl.load(ws_ptr + ws + 3 * H, mask=mask, other=0.0).to(ACC)
                dr = dn * hn * r * (1.0 - r)
                tl.store(dg_ptr + g3, dr.to(ty), mask=mask)
                tl.store(dgh_ptr + g3, dr.to(ty), mask=mask)
                tl.store(dgh_ptr + g3 + H, dz.to(ty), mask=mask)
                tl.store(dgh_ptr + g3 + 2 * H, (dn * r).to(ty), mask=mask)
                tl.store(dhx_ptr + bh, tl.where(keep, dh * z, dh).to(ty), mask=mask)
            else:
                # dr comes in stage 2; until then zeros, as the CPU kernel writes them: the caller's drh GEMM
                # reads past the end of each dn row into these columns on oneDNN's AMX path (see
                # rnn_pointwise.cpp). Finished rows pass dh through; running rows get dhx in stage 2.
                tl.store(dg_ptr + g3, tl.zeros_like(dn).to(ty), mask=mask)
                tl.store(dhx_ptr + bh, dh.to(ty), mask=mask & ~keep)
