"""Swapping torch.nn's recurrent modules for ours and back, anywhere in a model, without touching its code.

The swap changes each module's class in place (after a deepcopy of the model unless ``inplace=True``): torch's
classes and ours hold the same attributes, parameters and buffers (ours add ``backend``, and ``reset_after`` for
the GRUs), so the Parameter objects (an optimizer's references stay valid), parametrizations, forward/backward
hooks, training mode, device and dtype all stay as they were.
"""
from __future__ import annotations

import copy

import torch
from torch.nn.utils import parametrize

from .rnn import GRU, LSTM, GRUCell, LSTMCell, check_backend_arg

TORCH_TO_OURS = {torch.nn.LSTM: LSTM, torch.nn.GRU: GRU, torch.nn.LSTMCell: LSTMCell, torch.nn.GRUCell: GRUCell}
OURS_TO_TORCH = {ours: theirs for theirs, ours in TORCH_TO_OURS.items()}


def _plain_class(m: torch.nn.Module) -> type:
    """The module's class without parametrize's generated subclass (``Parametrized<Class>``)."""
    cls = type(m)
    return cls.__bases__[0] if parametrize.is_parametrized(m) else cls


def _set_class(m: torch.nn.Module, target: type) -> None:
    cls = type(m)
    if parametrize.is_parametrized(m):
        # parametrize keeps each parametrized tensor as a property of a class generated per module instance,
        # whose base is the module's own class (remove_parametrizations goes back to that base): rebuild it on
        # the new base with the same properties.
        body = {k: v for k, v in cls.__dict__.items() if k not in ("__dict__", "__weakref__")}
        target = type(f"Parametrized{target.__name__}", (target,), body)
    m.__class__ = target


def _swap(module: torch.nn.Module, mapping: dict, prepare, inplace: bool) -> torch.nn.Module:
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"module: expected a torch.nn.Module, got {type(module).__name__}")
    if not inplace:
        module = copy.deepcopy(module)
    # Checks first, so that a refused module leaves an inplace swap undone rather than half done.
    found = [(m, mapping[_plain_class(m)]) for m in module.modules() if _plain_class(m) in mapping]
    for m, target in found:
        prepare(m, target, check_only=True)
    for m, target in found:
        _set_class(m, target)
        prepare(m, target, check_only=False)
    return module


def convert(module: torch.nn.Module, *, backend=None, inplace: bool = False) -> torch.nn.Module:
    """Returns ``module`` with every ``torch.nn.LSTM`` / ``GRU`` / ``LSTMCell`` / ``GRUCell`` in it (at any depth,
    the module itself included; not their subclasses, whose forward may differ) turned into s2s_fused.nn's with
    the same weights, parametrizations, hooks and mode. ``backend``: the converted modules' backend (None = the
    process default). ``inplace=False`` converts a deep copy and leaves ``module`` untouched."""
    check_backend_arg(backend)

    def prepare(m, target, check_only):
        if check_only:
            return
        m.backend = backend
        if target in (GRU, GRUCell):
            m.reset_after = True

    return _swap(module, TORCH_TO_OURS, prepare, inplace)


def to_torch(module: torch.nn.Module, *, inplace: bool = False) -> torch.nn.Module:
    """The reverse of :func:`convert`: every s2s_fused.nn ``LSTM`` / ``GRU`` / ``LSTMCell`` / ``GRUCell`` in
    ``module`` becomes torch.nn's, for tools that want torch's classes (quantization, TorchScript, exporters).
    A GRU with ``reset_after=False`` has no torch.nn counterpart: ValueError."""

    def prepare(m, target, check_only):
        if check_only:
            if not getattr(m, "reset_after", True):
                raise ValueError(f"to_torch: {type(m).__name__} with reset_after=False has no torch.nn counterpart "
                                 "(torch's GRU applies the reset gate after W_hn)")
            return
        for name in ("backend", "reset_after"):
            m.__dict__.pop(name, None)

    return _swap(module, OURS_TO_TORCH, prepare, inplace)
