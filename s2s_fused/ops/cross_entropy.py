"""Fused masked softmax cross-entropy.

Public: :func:`masked_softmax_cross_entropy` (and, in ops/linear_cross_entropy.py, the linear + cross-entropy built
on the same ops). The ops ``torch.ops.s2s_fused.masked_ce_{forward,backward}`` (schemas and CPU / CUDA kernels in
csrc/) and their Triton twins ``..._triton`` (kernels in s2s_fused/triton/cross_entropy.py) get their fake kernels
and autograd here; the ``reference`` backend is plain torch (s2s_fused.reference).

Shapes: logits (N, V) or (B, T, V); target shaped as logits without V; valid_len (B,) (3-D only).

Traffic per unmasked row of V logits: forward 1 read (online max / sum-exp; writes the fp32 loss and
log-sum-exp), backward 1 read + 1 write (the incoming gradient, mask, reduction scale and label smoothing folded
in). Masked rows: no logits read. The reduction is O(N) torch ops on the per-position loss, so its scale reaches
the backward kernel as the per-position incoming gradient (a stride-0 tensor for "sum", "mean" and
"per_sequence").

Out-of-range targets (not in [0, V) and not ignore_index) and valid_len outside [0, T]: the CPU ops (C++, and
Triton's under the interpreter) raise RuntimeError naming the value; on a GPU the CUDA and Triton kernels cannot
raise without a device sync, so they never read out of bounds and write NaN instead (loss, log-sum-exp and
gradient of an out-of-range target's row; every row of a sequence whose valid_len is out of range), which poisons
a "sum"/"mean" loss visibly.
"""
from __future__ import annotations

import torch

from .. import _checks, _op_checks, reference
from ..backend import resolve
from . import _library
from ._autograd import recording_backward, reference_vjp

for _name in ("masked_ce_forward", "masked_ce_backward"):
    _library.define_triton_twin("cross_entropy", _name)

# --------------------------------------------------------------------------------------------- fake kernels


def acc_dtype(dtype):
    """The loss's dtype: float64 for float64 logits, float32 for the others."""
    return torch.float64 if dtype == torch.float64 else torch.float32


@_library.register_fake("masked_ce_forward")
def _forward_fake(logits, target, valid_len, ignore_index, label_smoothing):
    _op_checks.masked_ce_forward(logits, target, valid_len, ignore_index, label_smoothing)
    acc = acc_dtype(logits.dtype)
    return target.new_empty(target.shape, dtype=acc), target.new_empty(target.shape, dtype=acc)


@_library.register_fake("masked_ce_backward")
def _backward_fake(grad_loss, logits, target, valid_len, lse, ignore_index, label_smoothing):
    _op_checks.masked_ce_backward(grad_loss, logits, target, valid_len, lse, ignore_index, label_smoothing)
    return logits.new_empty(logits.shape)


# ------------------------------------------------------------------------------------------------ autograd


def _setup_context(ctx, inputs, output):
    logits, target, valid_len, ignore_index, label_smoothing = inputs
    _, lse = output
    ctx.save_for_backward(logits, target, valid_len, lse)
    ctx.args = (ignore_index, label_smoothing)
    ctx.mark_non_differentiable(lse)


def _backward(backward_op, ctx, grad_loss, _grad_lse):
    logits, target, valid_len, lse = ctx.saved_tensors
    if grad_loss is None:  # an undefined output gradient (autograd.grad with one; gradcheck checks it)
        return (None,) * 5
    if recording_backward():
        return reference_vjp(lambda x: reference.masked_softmax_cross_entropy(
            x, target, valid_len, *ctx.args, reduction="none"), (logits,), (grad_loss,), (True,)) + (None,) * 4
    grad = backward_op(grad_loss, logits, target, valid_len, lse, *ctx.args)
    return grad, None, None, None, None


_library.register_autograd("masked_ce_forward", "masked_ce_backward", _backward, _setup_context)

# ---------------------------------------------------------------------------------------- public functions


def check_common(logits_like, name, target, valid_len, ignore_index, label_smoothing, reduction):
    """Checks shared by the public functions of both cross-entropy modules (none reads tensor values). Returns
    (target, valid_len) as int64."""
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


def check_valid_len_eagerly(valid_len, T):
    """valid_len in [0, T], where reading it costs no device sync (CPU tensors outside torch.compile)."""
    if valid_len is None or valid_len.device.type != "cpu" or torch.compiler.is_compiling():
        return
    vbad = (valid_len < 0) | (valid_len > T)
    if vbad.any():
        i = int(vbad.nonzero()[0, 0])
        raise ValueError(f"valid_len: expected values in [0, T={T}], got {int(valid_len[i])} at index {i}")


def check_values_eagerly(target, valid_len, V, T, ignore_index):
    """The reference backend's value checks (plain torch has no out-of-bounds guard of its own for gather's
    targets). Only on CPU tensors outside torch.compile, where reading values costs no device sync."""
    if target.device.type != "cpu" or torch.compiler.is_compiling():
        return
    bad = (target != ignore_index) & ((target < 0) | (target >= V))
    if valid_len is not None:
        check_valid_len_eagerly(valid_len, T)
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
    target, valid_len = check_common(logits, "logits", target, valid_len, ignore_index, label_smoothing,
                                     reduction)
    V = logits.shape[-1]
    if V < 1:
        raise ValueError(f"logits: expected at least one class, got shape {tuple(logits.shape)}")
    label_smoothing = float(label_smoothing)
    be = resolve("cross_entropy", backend, logits.device)
    if be == "reference":
        check_values_eagerly(target, valid_len, V, logits.shape[1] if logits.dim() == 3 else 0, ignore_index)
        return reference.masked_softmax_cross_entropy(logits, target, valid_len, ignore_index, label_smoothing,
                                                      reduction)
    loss, _ = _library.op("masked_ce_forward", be)(logits, target, valid_len, ignore_index, label_smoothing)
    if reduction == "none" or reduction == "sum" or reduction == "per_sequence":
        return reference.ce_reduce(loss, None, reduction)
    return reference.ce_reduce(loss, reference.ce_mask(target, valid_len, ignore_index), reduction)
