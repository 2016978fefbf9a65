"""How every op family registers its ops: one idiom, used by each ops/<family>.py.

- A compiled op ``s2s_fused::<name>`` has its schema in csrc/ops.cpp and its CPU and CUDA kernels in csrc/.
- Its Triton twin ``s2s_fused::<name>_triton`` has the same schema (copied from the compiled op by
  :func:`define_triton_twin`) and runs ``s2s_fused.triton.<family>.<name>``. That module is imported when the twin
  first runs, never before: ``import s2s_fused`` does not import Triton, and TRITON_INTERPRET can be set until a
  Triton op first runs. The triton modules implement kernels only; they import nothing from here.
- Python-only ops (the chunked linear + cross-entropy) are ``torch.library.custom_op``s in their family module,
  their autograd set up through :func:`unmaterialized` like every other op's.
- An op and its twin share one fake kernel (:func:`register_fake`) and one autograd formula
  (:func:`register_autograd`), registered here for both; :func:`op` is the one a backend runs.
"""
from __future__ import annotations

import functools
import importlib
from typing import Callable

import torch

from ..backend import _extension

# The compiled ops' schemas live in the extension, so it is loaded before anything registers. Without it (a broken
# build) nothing is registered: the package still imports, runs the reference backend and `info` says what failed.
AVAILABLE = _extension() is not None
_ops = torch.ops.s2s_fused
TWIN_SUFFIX = "_triton"
TRITON_TWINS: dict[str, str] = {}  # compiled op name -> the family whose triton module implements its twin


def define_triton_twin(family: str, name: str) -> None:
    """Define ``s2s_fused::<name>_triton`` with ``s2s_fused::<name>``'s schema, its kernel the function ``name`` of
    s2s_fused/triton/<family>.py."""
    if not AVAILABLE:
        return
    schema = str(getattr(_ops, name).default._schema)

    def kernel(*args):
        return getattr(importlib.import_module(f"s2s_fused.triton.{family}"), name)(*args)

    kernel.__name__ = name + TWIN_SUFFIX
    torch.library.custom_op(f"s2s_fused::{name}{TWIN_SUFFIX}", kernel, mutates_args=(),
                            schema=schema[schema.index("("):])
    TRITON_TWINS[name] = family


def _names(name: str) -> tuple[str, ...]:
    return (name, name + TWIN_SUFFIX) if name in TRITON_TWINS else (name,)


def register_fake(name: str) -> Callable:
    """Decorator: the fake kernel of ``s2s_fused::<name>`` and of its Triton twin, if it has one."""
    def register(fake):
        if not AVAILABLE:
            return fake
        for n in _names(name):
            torch.library.register_fake(f"s2s_fused::{n}", fake)
        return fake
    return register


def unmaterialized(setup_context: Callable) -> Callable:
    """``setup_context`` for an op whose backward takes a missing output gradient as None, never as a zero tensor.

    Every op registers its autograd through this: the saved buffers (workspaces, hidden-state histories, the
    linear + cross-entropy's precomputed gradients) are outputs that never get a gradient, and an unused h_n or
    attention weights often get none; autograd would otherwise allocate and fill a zero tensor for each on every call
    (12 MB for an LSTM layer at T=32 B=64 H=256: ~0.4 ms, 1 % of its forward+backward; V x H for the linear +
    cross-entropy's weight gradient). Every backward takes a missing gradient as zero."""
    def setup(ctx, inputs, output):
        ctx.set_materialize_grads(False)
        setup_context(ctx, inputs, output)
    return setup


def register_autograd(name: str, backward_name: str, backward: Callable, setup_context: Callable) -> None:
    """The autograd formula of ``s2s_fused::<name>`` and of its Triton twin: ``backward(backward_op, ctx, *grads)``,
    where ``backward_op`` is ``<backward_name>`` (the twin's for the twin); missing gradients arrive as None
    (:func:`unmaterialized`)."""
    if not AVAILABLE:
        return
    setup = unmaterialized(setup_context)
    for n, suffix in zip(_names(name), ("", TWIN_SUFFIX)):
        torch.library.register_autograd(f"s2s_fused::{n}",
                                        functools.partial(backward, getattr(_ops, backward_name + suffix)),
                                        setup_context=setup)


def op(name: str, backend: str):
    """The op ``backend`` runs: the Triton twin for "triton", else the compiled op (whose kernel, CPU or CUDA, the
    tensors' device picks)."""
    return getattr(_ops, name + TWIN_SUFFIX if backend == "triton" else name)
