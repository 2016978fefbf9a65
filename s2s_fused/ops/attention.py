"""Fused attention of one decoder step: additive (Bahdanau) and dot (Luong's dot and general scores).

Public: :func:`additive_attention`, :func:`dot_attention`. The ops
``torch.ops.s2s_fused.{additive,dot}_attention_{forward,backward}`` (schemas and CPU / CUDA kernels in csrc/, one
kernel per backend for both score kinds) and their Triton twins ``..._triton`` (kernels in
s2s_fused/triton/attention.py) get their fake kernels and autograd here; the ``reference`` backend is plain torch
(s2s_fused.reference).

Per query row, the fused kernel reads its source row's keys[:valid_len] once (tanh and the v-dot together) and
values[:valid_len] once; the query projection (N, Hq) x (Hq, H) is one GEMM before it, the weight gradients two
GEMMs after the backward kernel. Forward saves only query W_q^T (N, H): backward recomputes the tanh scores from it
rather than keeping an (N, S, H) activation. The source tensors may have fewer rows than the query (B with
N = R*B: R beams of one sentence share its keys and values, one copy of them in memory).

valid_len outside [0, S]: the CPU ops (C++, and Triton's under the interpreter) raise RuntimeError naming the
value; on a GPU the CUDA and Triton kernels cannot raise without a device sync, so they never read out of bounds
and write NaN for that row's outputs instead.
"""
from __future__ import annotations

import torch

from .. import _checks, _op_checks, reference
from ..backend import resolve
from . import _library
from ._autograd import recording_backward, reference_vjp

for _name in ("additive_attention_forward", "additive_attention_backward", "dot_attention_forward",
              "dot_attention_backward"):
    _library.define_triton_twin("attention", _name)


@_library.register_fake("additive_attention_forward")
def _forward_fake(query, keys, values, w_q, v, valid_len):
    _op_checks.additive_attention_forward(query, keys, values, w_q, v, valid_len)
    N, (_, S, H) = query.shape[0], keys.shape
    return (query.new_empty(N, values.shape[2]), query.new_empty(N, S),
            query.new_empty(N, H, dtype=_op_checks.attn_acc_dtype(query.dtype)))


@_library.register_fake("additive_attention_backward")
def _backward_fake(grad_context, grad_weights, query, keys, values, w_q, v, valid_len, query_proj):
    _op_checks.additive_attention_backward(grad_context, grad_weights, query, keys, values, w_q, v, valid_len,
                                           query_proj)
    return (query.new_empty(query.shape), keys.new_empty(keys.shape), values.new_empty(values.shape),
            w_q.new_empty(w_q.shape), v.new_empty(v.shape))


def _setup_context(ctx, inputs, output):
    query, keys, values, w_q, v, valid_len = inputs
    ctx.save_for_backward(query, keys, values, w_q, v, valid_len, output[2])
    ctx.mark_non_differentiable(output[2])


def _backward(backward_op, ctx, grad_context, grad_weights, _grad_qp):
    query, keys, values, w_q, v, valid_len, qp = ctx.saved_tensors
    if grad_context is None and grad_weights is None:
        return (None,) * 6
    if recording_backward():
        return reference_vjp(lambda *x: reference.additive_attention(*x, valid_len), (query, keys, values, w_q, v),
                             (grad_context, grad_weights), ctx.needs_input_grad[:5]) + (None,)
    if grad_context is None:
        grad_context = torch.zeros(query.shape[0], values.shape[2], dtype=query.dtype, device=query.device)
    grads = backward_op(grad_context, grad_weights, query, keys, values, w_q, v, valid_len, qp)
    return tuple(g if need else None for g, need in zip(grads, ctx.needs_input_grad[:5])) + (None,)


_library.register_autograd("additive_attention_forward", "additive_attention_backward", _backward, _setup_context)


@_library.register_fake("dot_attention_forward")
def _dot_forward_fake(query, keys, values, valid_len):
    _op_checks.dot_attention_forward(query, keys, values, valid_len)
    return query.new_empty(query.shape[0], values.shape[2]), query.new_empty(query.shape[0], keys.shape[1])


@_library.register_fake("dot_attention_backward")
def _dot_backward_fake(grad_context, grad_weights, query, keys, values, valid_len):
    _op_checks.dot_attention_backward(grad_context, grad_weights, query, keys, values, valid_len)
    return query.new_empty(query.shape), keys.new_empty(keys.shape), values.new_empty(values.shape)


def _dot_setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _dot_backward(backward_op, ctx, grad_context, grad_weights):
    query, keys, values, valid_len = ctx.saved_tensors
    if grad_context is None and grad_weights is None:
        return (None,) * 4
    if recording_backward():
        return reference_vjp(lambda *x: reference.dot_attention(*x, valid_len), (query, keys, values),
                             (grad_context, grad_weights), ctx.needs_input_grad[:3]) + (None,)
    if grad_context is None:
        grad_context = torch.zeros(query.shape[0], values.shape[2], dtype=query.dtype, device=query.device)
    grads = backward_op(grad_context, grad_weights, query, keys, values, valid_len)
    return tuple(g if need else None for g, need in zip(grads, ctx.needs_input_grad[:3])) + (None,)


_library.register_autograd("dot_attention_forward", "dot_attention_backward", _dot_backward, _dot_setup_context)


def check_args(query, keys, values, w_q, v, valid_len):
    """The public functions' checks (torch's exception types, the argument's name); reads no tensor values.
    w_q and v None: :func:`dot_attention`'s (keys as wide as the query). Returns valid_len as int64."""
    additive = w_q is not None
    _checks.tensor(query, "query", dims=2, floating=True)
    _checks.tensor(keys, "keys", dims=3)
    _checks.tensor(values, "values", dims=3)
    params = dict(w_q=w_q, v=v) if additive else {}
    if additive:
        _checks.tensor(w_q, "w_q", dims=2)
        _checks.tensor(v, "v", dims=1)
    _checks.tensor(valid_len, "valid_len", dims=1, integer=True)
    _checks.same_dtype_device(query, "query", keys=keys, values=values, **params)
    _checks.same_device(query, "query", valid_len=valid_len)
    N, Hq = query.shape
    B, S, H = keys.shape
    rows_error = _op_checks.attn_rows_error(N, keys)
    if rows_error:
        raise ValueError(rows_error)
    if S < 1:
        raise ValueError(f"keys: expected at least one position (S >= 1), got shape {tuple(keys.shape)}")
    if not additive and H != Hq:
        raise ValueError(f"keys: expected size {Hq} in dim 2 (query's Hq), got shape {tuple(keys.shape)}")
    _checks.shape(values, "values", (B, S, values.shape[2]))
    if additive:
        _checks.shape(w_q, "w_q", (H, Hq))
        _checks.shape(v, "v", (H,))
    _checks.shape(valid_len, "valid_len", (B,))
    return valid_len if valid_len.dtype == torch.int64 else valid_len.long()


def check_valid_len_eagerly(valid_len, S):
    """valid_len in [0, S], where reading it costs no device sync (CPU tensors outside torch.compile)."""
    if valid_len.device.type != "cpu" or torch.compiler.is_compiling():
        return
    bad = (valid_len < 0) | (valid_len > S)
    if bad.any():
        i = int(bad.nonzero()[0, 0])
        raise ValueError(f"valid_len: expected values in [0, S={S}], got {int(valid_len[i])} at index {i}")


def additive_attention(query, keys, values, w_q, v, valid_len, *, backend=None):
    """Additive (Bahdanau) attention of one decoder step, forward and backward.

    query (N, Hq); keys (B, S, H) already projected (W_k k_s, computed once per source sentence); values
    (B, S, Dv); w_q (H, Hq); v (H,); valid_len (B,) integer in [0, S], S >= 1. N = R*B, R >= 1: query row n
    attends source row n // R, so the R consecutive query rows of a source row (batch-major beams: row b*K + i is
    beam i of sentence b) share one copy of its keys, values and valid_len; R = 1 is one source row per query row
    (B = 0 needs N = 0). All floating tensors one dtype (fp32/fp64/fp16/bf16; fp32 accumulation for the half
    types) on one device, any strides.

    score_s = v . tanh(W_q q + k_s); weights = softmax over s < valid_len, 0 at s >= valid_len; context =
    sum_s weights_s values_s. valid_len = 0 gives uniform weights 1/S over all S positions, as d2l's masked
    softmax (fill -1e6) does; they then carry no gradient to query, keys, w_q or v.

    Returns ``(context (N, Dv), weights (N, S))`` in the inputs' dtype. Gradients flow to query, keys, values,
    w_q and v (keys' and values' summed over the R query rows sharing a source row); second order goes through
    the reference (s2s_fused/ops/_autograd.py).
    """
    valid_len = check_args(query, keys, values, w_q, v, valid_len)
    be = resolve("attention", backend, query.device)
    check_valid_len_eagerly(valid_len, keys.shape[1])
    if be == "reference":
        return reference.additive_attention(query, keys, values, w_q, v, valid_len)
    context, weights, _ = _library.op("additive_attention_forward", be)(query, keys, values, w_q, v, valid_len)
    return context, weights


def dot_attention(query, keys, values, valid_len, *, backend=None):
    """Dot-product (Luong) attention of one decoder step, forward and backward.

    query (N, H); keys (B, S, H); values (B, S, Dv); valid_len (B,) integer in [0, S], S >= 1; N = R*B as in
    :func:`additive_attention` (query row n attends source row n // R). score_s = query . keys_s, then the same
    masked softmax and context as :func:`additive_attention`. Luong's ``dot`` score passes the encoder's outputs
    as keys; his ``general`` score h . W_a m_s passes keys projected once per source sentence (W_a m_s), so a step
    never multiplies by W_a; a scaled dot product passes a query scaled by 1/sqrt(H) (the score is linear in it).

    Returns ``(context (N, Dv), weights (N, S))`` in the inputs' dtype (fp32 accumulation for the half types).
    Gradients flow to query, keys and values (keys' and values' summed over the R query rows sharing a source
    row); second order goes through the reference.
    """
    valid_len = check_args(query, keys, values, None, None, valid_len)
    be = resolve("attention", backend, query.device)
    check_valid_len_eagerly(valid_len, keys.shape[1])
    if be == "reference":
        return reference.dot_attention(query, keys, values, valid_len)
    return _library.op("dot_attention_forward", be)(query, keys, values, valid_len)
