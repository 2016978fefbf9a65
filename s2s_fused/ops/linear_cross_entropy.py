"""Linear + masked softmax cross-entropy without the full (N, V) logits.

Public: :func:`linear_masked_cross_entropy`. Python-only ops (``torch.ops.s2s_fused.linear_masked_ce_forward``,
``_backward``, ``_forward_with_grad``), defined here with their fake kernels and autograd, run chunks of rows
through the masked cross-entropy ops of ops/cross_entropy.py on the chosen backend; the ``reference`` backend is
plain torch (s2s_fused.reference).

Shapes: hidden (N, H) or (B, T, H); weight (V, H); bias (V,); target shaped as hidden without H; valid_len (B,)
(3-D only). Out-of-range targets are reported as ops/cross_entropy.py says; a valid_len outside [0, T] raises the
reference's ValueError for a CPU valid_len on every backend, and on a GPU the rows of such a sequence come out NaN.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from .. import _checks, _op_checks, reference
from ..backend import resolve
from . import _library
from ._autograd import recording_backward, reference_vjp
from .cross_entropy import acc_dtype, check_common, check_valid_len_eagerly, check_values_eagerly

# Chunks of rows: logits_c = hidden_c @ weight.T + bias, (chunk, V), never the whole (N, V). Forward keeps only
# the per-row loss and log-sum-exp; backward recomputes each chunk's logits (one more GEMM), turns them into the
# chunk's logit gradient with the CE backward kernel, and accumulates grad_hidden, grad_weight, grad_bias.
# Masked rows get target = ignore_index, so the 2-D CE kernels need no valid_len.


def default_chunk_size(N: int, V: int) -> int:
    """Rows per chunk: at least a quarter of the rows, 128 rows and 1M logits. GEMM efficiency falls fast with
    fewer rows (CPU, H=256, V=8000: 16 chunks of 131 rows took 3.2x the time of one 2048-row GEMM, 4 chunks of 512
    1.6x), and a quarter bounds the chunk's logits + gradient at about half the full logits."""
    return max(1, min(N, max(128, (1 << 20) // max(V, 1), -(-N // 4))))


def _chunks(N, chunk_size):
    return [(r0, min(N, r0 + chunk_size)) for r0 in range(0, N, chunk_size)]


@torch.library.custom_op("s2s_fused::linear_masked_ce_forward", mutates_args=())
def linear_masked_ce_forward(hidden: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                             target: torch.Tensor, ignore_index: int, label_smoothing: float, chunk_size: int,
                             backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    """hidden (N, H), weight (V, H), bias (V,) or None, target (N,) int64 (masked rows = ignore_index) ->
    (loss (N,), lse (N,)), float32 (float64 for float64 hidden)."""
    _op_checks.linear_masked_ce_forward(hidden, weight, bias, target, ignore_index, label_smoothing, chunk_size,
                                        backend)
    _op_checks.linear_ce_target_values(hidden, weight, target, ignore_index)
    N = hidden.shape[0]
    acc = acc_dtype(hidden.dtype)
    loss = hidden.new_empty(N, dtype=acc)
    lse = hidden.new_empty(N, dtype=acc)
    fwd = _library.op("masked_ce_forward", backend)
    for r0, r1 in _chunks(N, chunk_size):
        logits = F.linear(hidden[r0:r1], weight, bias)
        loss_c, lse_c = fwd(logits, target[r0:r1], None, ignore_index, label_smoothing)
        loss[r0:r1] = loss_c
        lse[r0:r1] = lse_c
        del logits  # free this chunk's logits before the next chunk allocates its own
    return loss, lse


@linear_masked_ce_forward.register_fake
def _linear_fwd_fake(hidden, weight, bias, target, ignore_index, label_smoothing, chunk_size, backend):
    _op_checks.linear_masked_ce_forward(hidden, weight, bias, target, ignore_index, label_smoothing, chunk_size,
                                        backend)
    acc = acc_dtype(hidden.dtype)
    N = hidden.shape[0]
    return hidden.new_empty(N, dtype=acc), hidden.new_empty(N, dtype=acc)


@torch.library.custom_op("s2s_fused::linear_masked_ce_backward", mutates_args=())
def linear_masked_ce_backward(grad_loss: torch.Tensor, hidden: torch.Tensor, weight: torch.Tensor,
                              bias: Optional[torch.Tensor], target: torch.Tensor, lse: torch.Tensor,
                              ignore_index: int, label_smoothing: float, chunk_size: int,
                              backend: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """-> (grad_hidden (N, H), grad_weight (V, H), grad_bias (V,), the last empty (0,) when bias is None).
    grad_weight and grad_bias accumulate in float32 (float64 for float64) and are rounded once."""
    _op_checks.linear_masked_ce_backward(grad_loss, hidden, weight, bias, target, lse, ignore_index, label_smoothing,
                                         chunk_size, backend)
    _op_checks.linear_ce_target_values(hidden, weight, target, ignore_index)
    N = hidden.shape[0]
    bwd = _library.op("masked_ce_backward", backend)
    grads = _new_grads(hidden, weight, bias)
    for r0, r1 in _chunks(N, chunk_size):
        logits = F.linear(hidden[r0:r1], weight, bias)
        g = bwd(grad_loss[r0:r1], logits, target[r0:r1], None, lse[r0:r1], ignore_index, label_smoothing)
        del logits
        _accumulate_chunk_grads(g, hidden, weight, bias, r0, r1, grads)
        del g  # at most one chunk's logits or gradient alive at a time, plus the new one
    return _finish_grads(grads, weight)


def _new_grads(hidden, weight, bias):
    acc = acc_dtype(hidden.dtype)
    V = weight.shape[0]
    return (torch.empty_like(hidden, memory_format=torch.contiguous_format),
            torch.zeros(weight.shape, dtype=acc, device=weight.device),
            torch.zeros(V if bias is not None else 0, dtype=acc, device=weight.device))


def _accumulate_chunk_grads(g, hidden, weight, bias, r0, r1, grads):
    """g: the (r1 - r0, V) logit gradient of rows [r0, r1) -> grad_hidden rows, += grad_weight, += grad_bias."""
    grad_hidden, grad_weight, grad_bias = grads
    h = hidden[r0:r1]
    torch.mm(g, weight, out=grad_hidden[r0:r1])
    if grad_weight.dtype == g.dtype:
        grad_weight.addmm_(g.t(), h)
    else:  # low precision: accumulate the weight gradient over chunks in fp32
        grad_weight.addmm_(g.t().to(grad_weight.dtype), h.to(grad_weight.dtype))
    if bias is not None:
        grad_bias += g.sum(0, dtype=grad_bias.dtype)


def _finish_grads(grads, weight):
    grad_hidden, grad_weight, grad_bias = grads
    return grad_hidden, grad_weight.to(weight.dtype), grad_bias.to(weight.dtype)


@linear_masked_ce_backward.register_fake
def _linear_bwd_fake(grad_loss, hidden, weight, bias, target, lse, ignore_index, label_smoothing, chunk_size,
                     backend):
    _op_checks.linear_masked_ce_backward(grad_loss, hidden, weight, bias, target, lse, ignore_index, label_smoothing,
                                         chunk_size, backend)
    V = weight.shape[0]
    return (hidden.new_empty(hidden.shape), weight.new_empty(weight.shape),
            weight.new_empty(V if bias is not None else 0))


def _linear_setup_context(ctx, inputs, output):
    hidden, weight, bias, target, ignore_index, label_smoothing, chunk_size, backend = inputs
    _, lse = output
    ctx.save_for_backward(hidden, weight, bias, target, lse)
    ctx.args = (ignore_index, label_smoothing, chunk_size, backend)
    ctx.mark_non_differentiable(lse)


def _linear_backward(ctx, grad_loss, _grad_lse):
    if grad_loss is None:  # gradcheck's undefined-gradient check (lse is non-differentiable)
        return (None,) * 8
    hidden, weight, bias, target, lse = ctx.saved_tensors
    if recording_backward():
        ignore_index, label_smoothing = ctx.args[:2]
        return reference_vjp(lambda h, w, b: reference.linear_masked_cross_entropy(
            h, w, target, None, b, ignore_index, label_smoothing, "none"), (hidden, weight, bias), (grad_loss,),
            ctx.needs_input_grad[:3]) + (None,) * 5
    gh, gw, gb = linear_masked_ce_backward(grad_loss, hidden, weight, bias, target, lse, *ctx.args)
    return gh, gw, (gb if bias is not None else None), None, None, None, None, None


linear_masked_ce_forward.register_autograd(_linear_backward,
                                           setup_context=_library.unmaterialized(_linear_setup_context))

# Scalar reductions ("sum", "mean") with gradients wanted: the incoming per-token gradient is known up to one
# scalar (scale = 1, or 1 / the number of unmasked tokens), so forward computes the gradients too, while each
# chunk's logits are at hand, and backward only multiplies by the incoming scalar. 3 GEMMs instead of 4 (no
# recompute), the same memory.


@torch.library.custom_op("s2s_fused::linear_masked_ce_forward_with_grad", mutates_args=())
def linear_masked_ce_forward_with_grad(hidden: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                                       target: torch.Tensor, scale: torch.Tensor, ignore_index: int,
                                       label_smoothing: float, chunk_size: int, backend: str
                                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """-> (total = scale * sum of the per-token losses (0-d), and its gradients w.r.t. hidden, weight, bias (the
    last (0,) when bias is None)). scale: 0-d tensor of the loss dtype."""
    _op_checks.linear_masked_ce_forward_with_grad(hidden, weight, bias, target, scale, ignore_index, label_smoothing,
                                                  chunk_size, backend)
    _op_checks.linear_ce_target_values(hidden, weight, target, ignore_index)
    N = hidden.shape[0]
    fwd, bwd = _library.op("masked_ce_forward", backend), _library.op("masked_ce_backward", backend)
    total = torch.zeros((), dtype=scale.dtype, device=hidden.device)
    grads = _new_grads(hidden, weight, bias)
    for r0, r1 in _chunks(N, chunk_size):
        logits = F.linear(hidden[r0:r1], weight, bias)
        loss_c, lse_c = fwd(logits, target[r0:r1], None, ignore_index, label_smoothing)
        total += loss_c.sum()
        # a stride-0 per-token incoming gradient: the CE backward kernel reads it as is
        g = bwd(scale.expand(r1 - r0), logits, target[r0:r1], None, lse_c, ignore_index, label_smoothing)
        del logits
        _accumulate_chunk_grads(g, hidden, weight, bias, r0, r1, grads)
        del g
    return (total * scale,) + _finish_grads(grads, weight)


@linear_masked_ce_forward_with_grad.register_fake
def _linear_fwd_grad_fake(hidden, weight, bias, target, scale, ignore_index, label_smoothing, chunk_size, backend):
    _op_checks.linear_masked_ce_forward_with_grad(hidden, weight, bias, target, scale, ignore_index, label_smoothing,
                                                  chunk_size, backend)
    V = weight.shape[0]
    return (scale.new_empty(()), hidden.new_empty(hidden.shape), weight.new_empty(weight.shape),
            weight.new_empty(V if bias is not None else 0))


def _linear_grad_setup_context(ctx, inputs, output):
    hidden, weight, bias, target, scale, ignore_index, label_smoothing, _, _ = inputs
    _, gh, gw, gb = output
    ctx.save_for_backward(gh, gw, gb, hidden, weight, bias, target, scale)
    ctx.has_bias = bias is not None
    ctx.args = (ignore_index, label_smoothing)
    ctx.mark_non_differentiable(gh, gw, gb)


def _linear_grad_backward(ctx, grad_total, *_unused):
    if grad_total is None:  # gradcheck's undefined-gradient check (the gradients are non-differentiable)
        return (None,) * 9
    gh, gw, gb, hidden, weight, bias, target, scale = ctx.saved_tensors
    if recording_backward():
        return reference_vjp(lambda h, w, b: scale * reference.linear_masked_cross_entropy(
            h, w, target, None, b, *ctx.args, "sum").to(scale.dtype), (hidden, weight, bias), (grad_total,),
            ctx.needs_input_grad[:3]) + (None,) * 6
    g = grad_total
    return (gh * g.to(gh.dtype), gw * g.to(gw.dtype), (gb * g.to(gb.dtype)) if ctx.has_bias else None,
            None, None, None, None, None, None)


linear_masked_ce_forward_with_grad.register_autograd(
    _linear_grad_backward, setup_context=_library.unmaterialized(_linear_grad_setup_context))

# ---------------------------------------------------------------------------------------- public function


def linear_masked_cross_entropy(hidden, weight, target, valid_len=None, *, bias=None, ignore_index=-100,
                                label_smoothing=0.0, reduction="mean", chunk_size=None, backend=None):
    """masked_softmax_cross_entropy(hidden @ weight.T + bias, target, valid_len, ...) without ever holding the full
    (N, V) logits: rows go through in chunks of ``chunk_size`` (default: a quarter of the rows, at least 128
    rows and 1M logits), and backward recomputes each chunk's logits. Gradients for hidden, weight and bias.

    hidden (N, H) or (B, T, H); weight (V, H); bias (V,) or None; the rest as masked_softmax_cross_entropy.
    """
    target, valid_len = check_common(hidden, "hidden", target, valid_len, ignore_index, label_smoothing,
                                     reduction)
    _checks.tensor(weight, "weight", dims=2, floating=True)
    if bias is not None:
        _checks.tensor(bias, "bias", dims=1, floating=True)
    _checks.same_dtype_device(hidden, "hidden", weight=weight, bias=bias)
    H = hidden.shape[-1]
    if weight.shape[1] != H or weight.shape[0] < 1:
        raise ValueError(f"weight: expected shape (V, {H}) with V >= 1 (H as hidden), got {tuple(weight.shape)}")
    V = weight.shape[0]
    if bias is not None:
        _checks.shape(bias, "bias", (V,))
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int)
                                   or chunk_size < 1):
        raise ValueError(f"chunk_size: expected a positive int or None, got {chunk_size!r}")
    label_smoothing = float(label_smoothing)
    be = resolve("cross_entropy", backend, hidden.device)
    if be == "reference":
        check_values_eagerly(target, valid_len, V, hidden.shape[1] if hidden.dim() == 3 else 0, ignore_index)
        return reference.linear_masked_cross_entropy(hidden, weight, target, valid_len, bias, ignore_index,
                                                     label_smoothing, reduction)
    check_valid_len_eagerly(valid_len, hidden.shape[1] if hidden.dim() == 3 else 0)
    mask = reference.ce_mask(target, valid_len, ignore_index)
    # Masked rows become ignore_index, so the chunks need no valid_len (and never read a masked target).
    flat_target = torch.where(mask, target, torch.full_like(target, ignore_index))
    if valid_len is not None:
        # Where valid_len was not checked (device tensors, torch.compile), every row of a sequence whose valid_len
        # is out of [0, T] gets a target out of [0, V) that is not ignore_index: the CE ops then report it (NaN
        # rows on a GPU, an error on the CPU), as masked_softmax_cross_entropy's ops do for the valid_len itself.
        seq_bad = (valid_len < 0) | (valid_len > hidden.shape[1])
        flat_target = torch.where(seq_bad.unsqueeze(1), V + int(ignore_index == V), flat_target)
    flat_target = flat_target.reshape(-1)
    flat_hidden = hidden.reshape(flat_target.shape[0], H)  # not (-1, H): H may be 0
    N = flat_hidden.shape[0]
    chunk = chunk_size if chunk_size is not None else default_chunk_size(N, V)
    wants_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (hidden, weight, bias))
    if reduction in ("sum", "mean") and wants_grad:
        acc = acc_dtype(hidden.dtype)
        if reduction == "sum":
            scale = torch.ones((), dtype=acc, device=hidden.device)
        else:  # on device: 1 / max(count, 1), so an all-masked batch gives 0
            scale = 1.0 / mask.sum().clamp_min(1).to(acc)
        total, _, _, _ = linear_masked_ce_forward_with_grad(flat_hidden, weight, bias, flat_target, scale,
                                                            ignore_index, label_smoothing, chunk, be)
        return total
    loss, _ = linear_masked_ce_forward(flat_hidden, weight, bias, flat_target, ignore_index, label_smoothing,
                                       chunk, be)
    loss = loss.view(target.shape)
    return reference.ce_reduce(loss, mask, reduction)
