"""Triton attention, additive (Bahdanau) and dot (Luong): one program per query row (csrc/attention.h has the
formulas and layout; DOT selects the score).

The kernels of the ops torch.ops.s2s_fused.{additive,dot}_attention_{forward,backward}_triton (defined, with their
fake kernels and autograd, in s2s_fused/ops/attention.py):
  additive_attention_forward(query, keys, values, w_q, v, valid_len) -> (context, weights, query_proj)
  additive_attention_backward(grad_context, grad_weights, query, keys, values, w_q, v, valid_len, query_proj)
      -> (grad_query, grad_keys, grad_values, grad_w_q, grad_v)
  dot_attention_forward(query, keys, values, valid_len) -> (context, weights)
  dot_attention_backward(grad_context, grad_weights, query, keys, values, valid_len)
      -> (grad_query, grad_keys, grad_values)

The query projection and the weight gradients are GEMMs in torch around the kernels; a program holds its row's
S scores in one tile and walks H and Dv in chunks. Query row n attends source row n // R (N = R*B); with R > 1 the
backward writes each query row's share of grad_keys / grad_values in fp32 (fp64 for fp64), summed in torch.
Positions s >= valid_len are never read. A valid_len outside [0, S] cannot raise on a GPU without a device sync:
its row's outputs are NaN instead, and nothing is read out of bounds; on CPU tensors (the interpreter) it raises before any launch, as the CPU op does. Argument checks:
s2s_fused/_op_checks.py (the C++ ops' messages).
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from .. import _op_checks as _check
from .rnn_common import tanh


@triton.jit
def _row_weights(keys_ptr, qp_ptr, v_ptr, n, b, L, S, H, offs_s, DOT: tl.constexpr, ACC: tl.constexpr,
                 BLOCK_H: tl.constexpr):
    """Query row n's attention weights (BLOCK_S,) over source row b: softmax of the scores over s < L, 0
    elsewhere, 1/S everywhere when L = 0. DOT: qp . k_s scores (v_ptr unused), else v . tanh(qp + k_s)."""
    live = offs_s < L
    sc = tl.zeros(offs_s.shape, ACC)
    for h0 in range(0, H, BLOCK_H):
        offs_h = h0 + tl.arange(0, BLOCK_H)
        hm = offs_h < H
        k = tl.load(keys_ptr + (b * S + offs_s[:, None]) * H + offs_h[None, :], mask=live[:, None] & hm[None, :],
                    other=0.0).to(ACC)
        q = tl.load(qp_ptr + n * H + offs_h, mask=hm, other=0.0).to(ACC)
        if DOT:
            sc += tl.sum(k * q[None, :], axis=1)
        else:
            vv = tl.load(v_ptr + offs_h, mask=hm, other=0.0).to(ACC)
            sc += tl.sum(tanh(k + q[None, :]) * vv[None, :], axis=1)
    sc = tl.where(live, sc, float("-inf"))
    m = tl.where(L == 0, 0.0, tl.max(sc, axis=0))  # (no -inf - -inf for an empty row)
    e = tl.where(live, tl.exp(sc - m), 0.0)
    w = e / tl.where(L == 0, 1.0, tl.sum(e, axis=0))
    uniform = tl.where(offs_s < S, tl.full(offs_s.shape, 1.0, ACC) / S, 0.0)
    return tl.where(L == 0, uniform, w)


@triton.jit
def additive_attention_forward_kernel(keys_ptr, values_ptr, v_ptr, qp_ptr, valid_len_ptr, context_ptr,
                                      weights_ptr, R, S, H, Dv, DOT: tl.constexpr, ACC: tl.constexpr,
                                      BLOCK_S: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr):
    n = tl.program_id(0).to(tl.int64)
    b = n // R
    L = tl.load(valid_len_ptr + b)
    bad = (L < 0) | (L > S)
    L = tl.where(bad, 0, L)
    offs_s = tl.arange(0, BLOCK_S)
    w = _row_weights(keys_ptr, qp_ptr, v_ptr, n, b, L, S, H, offs_s, DOT, ACC, BLOCK_H)
    w = tl.where(bad, float("nan"), w)
    tl.store(weights_ptr + n * S + offs_s, w.to(weights_ptr.dtype.element_ty), mask=offs_s < S)
    used = tl.where(L == 0, S, L)
    for d0 in range(0, Dv, BLOCK_D):
        offs_d = d0 + tl.arange(0, BLOCK_D)
        dm = offs_d < Dv
        vals = tl.load(values_ptr + (b * S + offs_s[:, None]) * Dv + offs_d[None, :],
                       mask=(offs_s[:, None] < used) & dm[None, :], other=0.0).to(ACC)
        ctx = tl.sum(w[:, None] * vals, axis=0)
        tl.store(context_ptr + n * Dv + offs_d, ctx.to(context_ptr.dtype.element_ty), mask=dm)


@triton.jit
def additive_attention_backward_kernel(grad_context_ptr, grad_weights_ptr, keys_ptr, values_ptr, v_ptr, qp_ptr,
                                       valid_len_ptr, grad_keys_ptr, grad_values_ptr, grad_qp_ptr, grad_v_rows_ptr,
                                       R, S, H, Dv, HAS_GRAD_WEIGHTS: tl.constexpr, DOT: tl.constexpr,
                                       ACC: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_H: tl.constexpr,
                                       BLOCK_D: tl.constexpr):
    """Query row n's gradients; grad_keys / grad_values rows are per query row (the caller sums them for R > 1).
    DOT: no grad_v_rows (its pointer unused)."""
    n = tl.program_id(0).to(tl.int64)
    b = n // R
    L = tl.load(valid_len_ptr + b)
    bad = (L < 0) | (L > S)
    L = tl.where(bad, 0, L)
    nan_if_bad = tl.where(bad, float("nan"), 0.0)
    offs_s = tl.arange(0, BLOCK_S)
    sm = offs_s < S
    w = _row_weights(keys_ptr, qp_ptr, v_ptr, n, b, L, S, H, offs_s, DOT, ACC, BLOCK_H)
    used = tl.where(L == 0, S, L)
    # d loss / d weights_s = g . values_s (+ grad_weights_s); grad_values_s = weights_s g
    dw = tl.zeros([BLOCK_S], ACC)
    for d0 in range(0, Dv, BLOCK_D):
        offs_d = d0 + tl.arange(0, BLOCK_D)
        dm = offs_d < Dv
        g = tl.load(grad_context_ptr + n * Dv + offs_d, mask=dm, other=0.0).to(ACC)
        vals = tl.load(values_ptr + (b * S + offs_s[:, None]) * Dv + offs_d[None, :],
                       mask=(offs_s[:, None] < used) & dm[None, :], other=0.0).to(ACC)
        dw += tl.sum(vals * g[None, :], axis=1)
        gv = w[:, None] * g[None, :] + nan_if_bad
        tl.store(grad_values_ptr + (n * S + offs_s[:, None]) * Dv + offs_d[None, :],
                 gv.to(grad_values_ptr.dtype.element_ty), mask=sm[:, None] & dm[None, :])
    if HAS_GRAD_WEIGHTS:
        dw += tl.load(grad_weights_ptr + n * S + offs_s, mask=offs_s < L, other=0.0).to(ACC)
    sigma = tl.sum(w * dw, axis=0)
    ds = tl.where(offs_s < L, w * (dw - sigma), 0.0)  # d loss / d score_s; none when L = 0 (constant weights)
    for h0 in range(0, H, BLOCK_H):
        offs_h = h0 + tl.arange(0, BLOCK_H)
        hm = offs_h < H
        k = tl.load(keys_ptr + (b * S + offs_s[:, None]) * H + offs_h[None, :],
                    mask=(offs_s[:, None] < L) & hm[None, :], other=0.0).to(ACC)
        q = tl.load(qp_ptr + n * H + offs_h, mask=hm, other=0.0).to(ACC)
        if DOT:
            # d loss / d k_s = ds_s qp; d loss / d qp = sum_s ds_s k_s
            dk = ds[:, None] * q[None, :] + nan_if_bad
            tl.store(grad_keys_ptr + (n * S + offs_s[:, None]) * H + offs_h[None, :],
                     dk.to(grad_keys_ptr.dtype.element_ty), mask=sm[:, None] & hm[None, :])
            tl.store(grad_qp_ptr + n * H + offs_h, tl.sum(ds[:, None] * k, axis=0) + nan_if_bad, mask=hm)
        else:
            vv = tl.load(v_ptr + offs_h, mask=hm, other=0.0).to(ACC)
            t = tanh(k + q[None, :])
            dpre = ds[:, None] * vv[None, :] * (1.0 - t * t) + nan_if_bad
            tl.store(grad_keys_ptr + (n * S + offs_s[:, None]) * H + offs_h[None, :],
                     dpre.to(grad_keys_ptr.dtype.element_ty), mask=sm[:, None] & hm[None, :])
            tl.store(grad_qp_ptr + n * H + offs_h, tl.sum(dpre, axis=0), mask=hm)
            tl.store(grad_v_rows_ptr + n * H + offs_h, tl.sum(ds[:, None] * t, axis=0) + nan_if_bad, mask=hm)


def _acc(dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _blocks(S: int, H: int, Dv: int) -> dict:
    """The row's S scores in one tile; H and Dv in chunks that keep a (BLOCK_S, chunk) tile near 4K elements."""
    bs = triton.next_power_of_2(max(S, 1))
    chunk = max(16, 4096 // bs)
    return dict(BLOCK_S=bs, BLOCK_H=min(triton.next_power_of_2(max(H, 1)), chunk),
                BLOCK_D=min(triton.next_power_of_2(max(Dv, 1)), chunk))


def _check_values(keys, valid_len):
    """valid_len's values, checked where reading them is free (CPU tensors), before anything runs."""
    if valid_len.device.type == "cpu":
        _check.attn_valid_len_values(valid_len, keys.shape[1])


def _prepare(keys, values, v, valid_len):
    """Contiguous operands (v None for dot scores: keys stand in for its unused pointer)."""
    keys = keys.contiguous()
    return keys, values.contiguous(), keys if v is None else v.contiguous(), valid_len.contiguous()


def _grouping(query, keys):
    """(N, B, R): N = R*B query rows over B source rows (checked before)."""
    N, B = query.shape[0], keys.shape[0]
    return N, B, N // B if B else 1


def additive_attention_forward(query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, w_q: torch.Tensor,
                               v: torch.Tensor, valid_len: torch.Tensor):
    _check.additive_attention_forward(query, keys, values, w_q, v, valid_len)
    _check_values(keys, valid_len)
    acc = _check.attn_acc_dtype(query.dtype)
    qp = (query.to(acc) @ w_q.to(acc).t()).contiguous()
    return _forward(query, keys, values, v, valid_len, qp) + (qp,)


def _forward(query, keys, values, v, valid_len, qp):
    """(context, weights) of either score (v None: dot)."""
    dot = v is None
    keys, values, v, valid_len = _prepare(keys, values, v, valid_len)
    N, _, R = _grouping(query, keys)
    S, H, Dv = keys.shape[1], keys.shape[2], values.shape[2]
    context = query.new_empty(N, Dv)
    weights = query.new_empty(N, S)
    if N > 0:
        additive_attention_forward_kernel[(N,)](keys, values, v, qp, valid_len, context, weights, R, S, H, Dv,
                                                DOT=dot, ACC=_acc(query.dtype), **_blocks(S, H, Dv))
    return context, weights


def additive_attention_backward(grad_context: torch.Tensor, grad_weights: Optional[torch.Tensor],
                                query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, w_q: torch.Tensor,
                                v: torch.Tensor, valid_len: torch.Tensor, query_proj: torch.Tensor):
    _check.additive_attention_backward(grad_context, grad_weights, query, keys, values, w_q, v, valid_len,
                                       query_proj)
    _check_values(keys, valid_len)
    acc = _check.attn_acc_dtype(query.dtype)
    grad_qp, grad_keys, grad_values, grad_v_rows = _backward(grad_context, grad_weights, query, keys, values, v,
                                                             valid_len, query_proj.contiguous())
    dtype = query.dtype
    return (grad_qp.mm(w_q.to(acc)).to(dtype), grad_keys, grad_values, grad_qp.t().mm(query.to(acc)).to(dtype),
            grad_v_rows.sum(0).to(dtype))


def _backward(grad_context, grad_weights, query, keys, values, v, valid_len, qp):
    """(grad_qp, grad_keys, grad_values, grad_v_rows or None) of either score (v None: dot)."""
    dot = v is None
    keys, values, v, valid_len = _prepare(keys, values, v, valid_len)
    acc = _check.attn_acc_dtype(query.dtype)
    N, B, R = _grouping(query, keys)
    S, H, Dv = keys.shape[1], keys.shape[2], values.shape[2]
    # R > 1: each query row's share, in the accumulate type, summed over the R rows below (one rounding)
    grad_dtype = query.dtype if R == 1 else acc
    grad_keys = keys.new_empty(N, S, H, dtype=grad_dtype)
    grad_values = values.new_empty(N, S, Dv, dtype=grad_dtype)
    grad_qp = query.new_empty(N, H, dtype=acc)
    grad_v_rows = None if dot else query.new_empty(N, H, dtype=acc)
    if N > 0:
        gw = grad_weights.contiguous() if grad_weights is not None else grad_context
        additive_attention_backward_kernel[(N,)](
            grad_context.contiguous(), gw, keys, values, v, qp, valid_len, grad_keys, grad_values, grad_qp,
            grad_qp if dot else grad_v_rows, R, S, H, Dv, HAS_GRAD_WEIGHTS=grad_weights is not None, DOT=dot,
            ACC=_acc(query.dtype), **_blocks(S, H, Dv))
    if R > 1:
        grad_keys = grad_keys.view(B, R, S, H).sum(1).to(query.dtype)
        grad_values = grad_values.view(B, R, S, Dv).sum(1).to(query.dtype)
    return grad_qp, grad_keys, grad_values, grad_v_rows


def dot_attention_forward(query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, valid_len: torch.Tensor):
    _check.dot_attention_forward(query, keys, values, valid_len)
    _check_values(keys, valid_len)
    qp = query.to(_check.attn_acc_dtype(query.dtype)).contiguous()
    return _forward(query, keys, values, None, valid_len, qp)


def dot_attention_backward(grad_context: torch.Tensor, grad_weights: Optional[torch.Tensor], query: torch.Tensor,
                           keys: torch.Tensor, values: torch.Tensor, valid_len: torch.Tensor):
    _check.dot_attention_backward(grad_context, grad_weights, query, keys, values, valid_len)
    _check_values(keys, valid_len)
    qp = query.to(_check.attn_acc_dtype(query.dtype)).contiguous()
    grad_qp, grad_keys, grad_values, _ = _backward(grad_context, grad_weights, query, keys, values, None,
                                                   valid_len, qp)
    return grad_qp.to(query.dtype), grad_keys, grad_values
