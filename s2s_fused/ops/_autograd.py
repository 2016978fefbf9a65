"""Second and higher-order gradients of the fused ops.

The fused backward kernels compute first-order gradients only: their outputs carry no graph. When autograd records
the backward itself (``torch.autograd.grad(..., create_graph=True)``: gradient penalties, MAML, Hessian-vector
products), each op's backward instead differentiates its plain-torch reference (s2s_fused.reference) with
``create_graph=True``, so the gradients it returns are themselves differentiable, to any order, in every input and
in the incoming gradients. The first-order path (no graph recorded, the usual training step) keeps the fused
kernels: the choice is made per call from the grad mode autograd runs the backward in.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch


def recording_backward() -> bool:
    """Whether autograd is recording the backward being run (it runs a backward with grad mode on exactly when
    ``create_graph=True``)."""
    return torch.is_grad_enabled()


def _flatten(out) -> list:
    if isinstance(out, torch.Tensor) or out is None:
        return [out]
    flat = []
    for o in out:
        flat += _flatten(o)
    return flat


def reference_vjp(fn: Callable, inputs: Sequence, grad_outputs: Sequence, needs: Sequence[bool]) -> tuple:
    """The gradients of ``fn(*inputs)`` (its tensors flattened in order, matched with ``grad_outputs``; None = no
    gradient for that output) for each input with ``needs[i]``, None for the others, built with
    ``create_graph=True`` so they are differentiable in the inputs and in ``grad_outputs``. ``inputs`` are the
    op's own saved tensors (they still carry their history inside a recorded backward)."""
    wrt = [i for i, (t, n) in enumerate(zip(inputs, needs)) if n and isinstance(t, torch.Tensor)]
    result = [None] * len(inputs)
    with torch.enable_grad():
        outs = _flatten(fn(*inputs))
    pairs = [(o, g) for o, g in zip(outs, grad_outputs) if g is not None and o is not None and o.requires_grad]
    if not wrt or not pairs:
        return tuple(result)
    grads = torch.autograd.grad([o for o, _ in pairs], [inputs[i] for i in wrt], [g for _, g in pairs],
                                create_graph=True, allow_unused=True)
    for i, g in zip(wrt, grads):
        result[i] = g
    return tuple(result)
