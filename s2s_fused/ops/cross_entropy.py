"""Fused masked softmax cross-entropy, and linear + cross-entropy without the full logits.

Public: :func:`masked_softmax_cross_entropy`, :func:`linear_masked_cross_entropy`. The compiled ops
``torch.ops.s2s_fused.masked_ce_forward`` / ``masked_ce_backward`` (CPU and CUDA kernels) and their Triton twins
``..._triton`` get their fake kernels and autograd here; the chunked linear variant is a pair of Python custom ops
(``linear_masked_ce_forward`` / ``_backward``) built on them. The ``reference`` backend is plain torch
(s2s_fused.reference).

Shapes: logits (N, V) or (B, T, V); target shaped as logits without V; valid_len (B,) (3-D only); hidden (N, H) or
(B, T, H); weight (V, H); bias (V,).

Traffic per unmasked row of V logits: forward 1 read (online max / sum-exp; writes the fp32 loss and
log-sum-exp), backward 1 read + 1 write (the incoming gradient, mask, reduction scale and label smoothing folded
in). Masked rows: no logits read. The reduction is O(N) torch ops on the per-position loss, so its scale reaches
the backward kernel as the per-position incoming gradient (a stride-0 tensor for "sum", "mean" and
"per_sequence").

Out-of-range targets (not in [0, V) and not ignore_index) and valid_len outside [0, T]: the CPU ops (C++, and
Triton's under the interpreter) raise RuntimeError naming the value; on a GPU the CUDA and Triton kernels cannot
raise without a device sync, so they never read out of bounds and write NaN instead (loss, log-sum-exp and
gradient of an out-of-range target's row; every row of a sequence whose valid_len is out of range), which poisons
a "sum"/"mean" loss visibly. linear_masked_cross_entropy raises the reference's ValueError for a CPU valid_len on
every backend; on a GPU the rows of such a sequence come out NaN in the same way.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from .. import _checks, _op_checks, reference
from ..backend import _extension, resolve
from ._autograd import recording_backward, reference_vjp

_extension()  # the schemas live in the extension; register fakes/autograd only once it is loaded
_ops = torch.ops.s2s_fused

# --------------------------------------------------------------------------------------------- fake kernels


def _acc_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def ce_forward_fake(logits, target, valid_len, ignore_index, label_smoothing):
    _op_checks.masked_ce_forward(logits, target, valid_len, ignore_index, label_smoothing)
    acc = _acc_dtype(logits.dtype)
    return target.new_empty(target.shape, dtype=acc), target.new_empty(target.shape, dtype=acc)


def ce_backward_fake(grad_loss, logits, target, valid_len, lse, ignore_index, label_smoothing):
    _op_checks.masked_ce_backward(grad_loss, logits, target, valid_len, lse, ignore_index, label_smoothing)
    return logits.new_empty(logits.shape)


torch.library.register_fake("s2s_fused::masked_ce_forward")(ce_forward_fake)
torch.library.register_fake("s2s_fused::masked_ce_backward")(ce_backward_fake)

# ------------------------------------------------------------------------------------------------ autograd
# The same glue serves the compiled ops and their Triton twins: `suffix` picks the backward op.


def register_ce_autograd(suffix: str):
    backward_op = getattr(_ops, "masked_ce_backward" + suffix)

    def setup_context(ctx, inputs, output):
        logits, target, valid_len, ignore_index, label_smoothing = inputs
        _, lse = output
        ctx.save_for_backward(logits, target, valid_len, lse)
        ctx.args = (ignore_index, label_smoothing)
        ctx.mark_non_differentiable(lse)

    def backward(ctx, grad_loss, _grad_lse):
        logits, target, valid_len, lse = ctx.saved_tensors
        if recording_backward():
            return reference_vjp(lambda x: reference.masked_softmax_cross_entropy(
                x, target, valid_len, *ctx.args, reduction="none"), (logits,), (grad_loss,), (True,)) + (None,) * 4
        grad = backward_op(grad_loss, logits, target, valid_len, lse, *ctx.args)
        return grad, None, None, None, None

    torch.library.register_autograd("s2s_fused::masked_ce_forward" + suffix, backward, setup_context=setup_context)


register_ce_autograd("")


def _triton_module():
    """The Triton kernels, imported on first use (their module registers its ops' autograd when it loads; a plain
    import, so torch.compile traces through it)."""
    from ..triton import cross_entropy as tri

    return tri


def _forward_op(backend: str):
    if backend == "triton":
        _triton_module()
        return _ops.masked_ce_forward_triton
    return _ops.masked_ce_forward


def _backward_op(backend: str):
    if backend == "triton":
        _triton_module()
        return _ops.masked_ce_backward_triton
    return _ops.masked_ce_backward


# ------------------------------------------------------------------------------------ linear + cross-entropy
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
    acc = _acc_dtype(hidden.dtype)
    loss = hidden.new_empty(N, dtype=acc)
    lse = hidden.new_empty(N, dtype=acc)
    fwd = _forward_op(backend)
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
    acc = _acc_dtype(hidden.dtype)
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
    bwd = _backward_op(backend)
    grads = _new_grads(hidden, weight, bias)
    for r0, r1 in _chunks(N, chunk_size):
        logits = F.linear(hidden[r0:r1], weight, bias)
        g = bwd(grad_loss[r0:r1], logits, target[r0:r1], None, lse[r0:r1], ignore_index, label_smoothing)
        del logits
        _accumulate_chunk_grads(g, hidden, weight, bias, r0, r1, grads)
        del g  # at most one chunk's logits or gradient alive at a time, plus the new one
    return _finish_grads(grads, weight)


def _new_grads(hidden, weight, bias):
    acc = _acc_dtype(hidden.dtype)
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
    hidden, weight, bias, target, lse = ctx.saved_tensors
    if recording_backward():
        ignore_index, label_smoothing = ctx.args[:2]
        return reference_vjp(lambda h, w, b: reference.linear_masked_cross_entropy(
            h, w, target, None, b, ignore_index, label_smoothing, "none"), (hidden, weight, bias), (grad_loss,),
            ctx.needs_input_grad[:3]) + (None,) * 5
    gh, gw, gb = linear_masked_ce_backward(grad_loss, hidden, weight, bias, target, lse, *ctx.args)
    return gh, gw, (gb if bias is not None else None), None, None, None, None, None


linear_masked_ce_forward.register_autograd(_linear_backward, setup_context=_linear_setup_context)

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
    fwd, bwd = _forward_op(backend), _backward_op(backend)
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
    gh, gw, gb, hidden, weight, bias, target, scale = ctx.saved_tensors
    if recording_backward():
        return reference_vjp(lambda h, w, b: scale * reference.linear_masked_cross_entropy(
            h, w, target, None, b, *ctx.args, "sum").to(scale.dtype), (hidden, weight, bias), (grad_total,),
            ctx.needs_input_grad[:3]) + (None,) * 6
    g = grad_total
    return (gh * g.to(gh.dtype), gw * g.to(gw.dtype), (gb * g.to(gb.dtype)) if ctx.has_bias else None,
            None, None, None, None, None, None)


linear_masked_ce_forward_with_grad.register_autograd(_linear_grad_backward,
                                                     setup_context=_linear_grad_setup_context)

# ---------------------------------------------------------------------------------------- public functions


def _check_common(logits_like, name, target, valid_len, ignore_index, label_smoothing, reduction):
    """Checks shared by both public functions (none reads tensor values). Returns (target, valid_len) as int64."""
    _checks.tensor(logits_like, name, dims=(2, 3), floating=True)
    _checks.tensor(target, "target", integer=True)
    if target.dtype.is_floating_point or target.dtype == torch.bool:
        raise TypeError(f"target: expected an integer tensor, got {target.dtype}")
    _checks.shape(target, "target", logits_like.shape[:-1])
    _checks.same_device(logits_like, name, target=target, valid_len=valid_len)
    if valid_len is not None:
        if logits_like.dim() != 3:
            raise ValueError(f"valid_len: only allowed with 3-D (B, T, ...) {name}, got {name} of shape "
                             f"{tuple(logits_like.shape)}")
        _checks.tensor(valid_len, "valid_len", dims=1, integer=True)
        _checks.shape(valid_len, "valid_len", (logits_like.shape[0],))
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
        raise TypeError(f"ignore_index: expected an int, got {type(ignore_index).__name__}")
    if isinstance(label_smoothing, bool) or not isinstance(label_smoothing, (int, float)):
        raise TypeError(f"label_smoothing: expected a float, got {type(label_smoothing).__name__}")
    if not 0.0 <= float(label_smoothing) <= 1.0:
        raise ValueError(f"label_smoothing: expected a value in [0, 1], got {label_smoothing}")
    _checks.choice(reduction, "reduction", reference.CE_REDUCTIONS)
    if reduction == "per_sequence" and logits_like.dim() != 3:
        raise ValueError(f"reduction: 'per_sequence' needs 3-D (B, T, ...) {name}, got shape "
                         f"{tuple(logits_like.shape)}")
    target = target if target.dtype == torch.int64 else target.long()
    if valid_len is not None and valid_len.dtype != torch.int64:
        valid_len = valid_len.long()
    return target, valid_len


def _check_valid_len_eagerly(valid_len, T):
    """valid_len in [0, T], where reading it costs no device sync (CPU tensors outside torch.compile)."""
    if valid_len is None or valid_len.device.type != "cpu" or torch.compiler.is_compiling():
        return
    vbad = (valid_len < 0) | (valid_len > T)
    if vbad.any():
        i = int(vbad.nonzero()[0, 0])
        raise ValueError(f"valid_len: expected values in [0, T={T}], got {int(valid_len[i])} at index {i}")


def _check_values_eagerly(target, valid_len, V, T, ignore_index):
    """The reference backend's value checks (plain torch has no out-of-bounds guard of its own for gather's
    targets). Only on CPU tensors outside torch.compile, where reading values costs no device sync."""
    if target.device.type != "cpu" or torch.compiler.is_compiling():
        return
    bad = (target != ignore_index) & ((target < 0) | (target >= V))
    if valid_len is not None:
        _check_valid_len_eagerly(valid_len, T)
        bad = bad & reference.ce_mask(target, valid_len, ignore_index)
    if bad.any():
        pos = tuple(int(i) for i in bad.nonzero()[0])
        raise ValueError(f"target: expected class indices in [0, {V}) or ignore_index={ignore_index}, got "
                         f"{int(target[pos])} at position {pos}")


def masked_softmax_cross_entropy(logits, target, valid_len=None, *, ignore_index=-100, label_smoothing=0.0,
                                 reduction="mean", backend=None):
    """Fused masked softmax cross-entropy, forward and backward.

    logits (N, V) or (B, T, V), any strides, fp32/fp64/fp16/bf16; target integer, shaped as logits without V;
    valid_len (B,) integer, only with 3-D logits: positions t >= valid_len[b] are masked, as are targets equal to
    ``ignore_index``. Masked positions are never read for anything but their mask.

    reduction: "none" (shaped as target, 0 where masked), "sum", "mean" (over unmasked positions; 0, not NaN,
    when every position is masked), "per_sequence" ((B,): sum over valid steps / T, d2l's MaskedSoftmaxCELoss).
    label_smoothing as torch.nn.functional.cross_entropy. The loss is float32 (float64 for float64 logits); the
    gradient has the logits' dtype. See the module docstring for how out-of-range targets are reported.
    """
    target, valid_len = _check_common(logits, "logits", target, valid_len, ignore_index, label_smoothing,
                                      reduction)
    V = logits.shape[-1]
    if V < 1:
        raise ValueError(f"logits: expected at least one class, got shape {tuple(logits.shape)}")
    label_smoothing = float(label_smoothing)
    be = resolve("cross_entropy", backend, logits.device)
    if be == "reference":
        _check_values_eagerly(target, valid_len, V, logits.shape[1] if logits.dim() == 3 else 0, ignore_index)
        return reference.masked_softmax_cross_entropy(logits, target, valid_len, ignore_index, label_smoothing,
                                                      reduction)
    loss, _ = _forward_op(be)(logits, target, valid_len, ignore_index, label_smoothing)
    if reduction == "none" or reduction == "sum" or reduction == "per_sequence":
        return reference.ce_reduce(loss, None, reduction)
    return reference.ce_reduce(loss, reference.ce_mask(target, valid_len, ignore_index), reduction)


def linear_masked_cross_entropy(hidden, weight, target, valid_len=None, *, bias=None, ignore_index=-100,
                                label_smoothing=0.0, reduction="mean", chunk_size=None, backend=None):
    """masked_softmax_cross_entropy(hidden @ weight.T + bias, target, valid_len, ...) without ever holding the full
    (N, V) logits: rows go through in chunks of ``chunk_size`` (default: a quarter of the rows, at least 128
    rows and 1M logits), and backward recomputes each chunk's logits. Gradients for hidden, weight and bias.

    hidden (N, H) or (B, T, H); weight (V, H); bias (V,) or None; the rest as masked_softmax_cross_entropy.
    """
    target, valid_len = _check_common(hidden, "hidden", target, valid_len, ignore_index, label_smoothing,
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
        _check_values_eagerly(target, valid_len, V, hidden.shape[1] if hidden.dim() == 3 else 0, ignore_index)
        return reference.linear_masked_cross_entropy(hidden, weight, target, valid_len, bias, ignore_index,
                                                     label_smoothing, reduction)
    _check_valid_len_eagerly(valid_len, hidden.shape[1] if hidden.dim() == 3 else 0)
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
        acc = _acc_dtype(hidden.dtype)
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
