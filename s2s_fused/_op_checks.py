"""Argument checks of the registered ops (``torch.ops.s2s_fused.*``) written in Python: the Triton ops call them
before any launch, with the messages and the exception type (RuntimeError, as TORCH_CHECK raises) of their C++
twins' checks (csrc/checks.h and the ``check_*`` functions next to each family's impl), so a direct caller gets
the same answer from every backend. Public wrappers check first with their own friendlier checks
(s2s_fused/_checks.py); these are the last line for direct op callers. Nothing here reads tensor values (no
device sync).

One function per op schema, named after it, grouped by family below.
"""
from __future__ import annotations

import torch

_FLOATS = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def fail(*parts) -> None:
    raise RuntimeError("".join(str(p) for p in parts))


def shape_str(t: torch.Tensor) -> str:
    return "[" + ", ".join(str(s) for s in t.shape) + "]"


def dtype_str(dtype: torch.dtype) -> str:
    """The name c10 prints for a dtype in a TORCH_CHECK message (Float, Double, Half, BFloat16, Long, ...)."""
    names = {torch.float32: "Float", torch.float64: "Double", torch.float16: "Half", torch.bfloat16: "BFloat16",
             torch.int64: "Long", torch.int32: "Int", torch.int16: "Short", torch.int8: "Char",
             torch.uint8: "Byte", torch.bool: "Bool"}
    return names.get(dtype, str(dtype).replace("torch.", ""))


def tensor(t, name: str) -> torch.Tensor:
    """A tensor argument (an op schema's ``Tensor``; the dispatcher already rejects other types for C++ ops)."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    return t


def dim(t: torch.Tensor, d: int, name: str) -> None:
    if t.dim() != d:
        fail(name, ": expected a ", d, "-D tensor, got ", t.dim(), "-D with shape ", shape_str(t))


def size(t: torch.Tensor, d: int, n: int, name: str) -> None:
    if t.shape[d] != n:
        fail(name, ": expected size ", n, " in dim ", d, ", got shape ", shape_str(t))


def floating(t: torch.Tensor, name: str) -> None:
    if t.dtype not in _FLOATS:
        fail(name, ": expected a float32, float64, float16 or bfloat16 tensor, got ", dtype_str(t.dtype))


def same(t: torch.Tensor, ref: torch.Tensor, name: str, ref_name: str) -> None:
    """``t`` has ``ref``'s dtype and device (csrc/checks.h check_same)."""
    if t.dtype != ref.dtype:
        fail(name, ": expected dtype ", dtype_str(ref.dtype), " (as ", ref_name, "), got ", dtype_str(t.dtype))
    if t.device != ref.device:
        fail(name, ": expected device ", ref.device, " (as ", ref_name, "), got ", t.device)


def same_device(t: torch.Tensor, ref: torch.Tensor, name: str, ref_name: str) -> None:
    if t.device != ref.device:
        fail(name, ": expected device ", ref.device, " (as ", ref_name, "), got ", t.device)


def exact_shape(t: torch.Tensor, expected, name: str, what: str = "") -> None:
    if tuple(t.shape) != tuple(expected):
        fail(name, ": expected shape (", ", ".join(str(int(s)) for s in expected), ")", what, ", got ", shape_str(t))


# ------------------------------------------------------------------------------------------------ rnn_cell


# ----------------------------------------------------------------------------------------------- rnn_layer


# ------------------------------------------------------------------------------------------- cross_entropy


# ---------------------------------------------------------------------------------------------------- beam


def beam_search_topk(logits, beam_scores, k, finished=None, eos_id=None) -> None:
    """csrc/beam_checks.h check_beam_topk_args, check for check and message for message."""
    tensor(logits, "logits")
    tensor(beam_scores, "beam_scores")
    if logits.dim() != 3:
        fail("logits: expected a 3-D tensor (B, K, V), got ", logits.dim(), "-D with shape ", shape_str(logits))
    floating(logits, "logits")
    B, K, V = logits.shape
    if beam_scores.dtype != torch.float32:
        fail("beam_scores: expected a float32 tensor, got ", dtype_str(beam_scores.dtype))
    exact_shape(beam_scores, (B, K), "beam_scores", " (logits' (B, K))")
    same_device(beam_scores, logits, "beam_scores", "logits")
    if not 1 <= k <= K * V:
        fail("k: expected 1 <= k <= K*V = ", K * V, ", got ", k)
    if finished is not None:
        tensor(finished, "finished")
        if finished.dtype != torch.bool:
            fail("finished: expected a bool tensor, got ", dtype_str(finished.dtype))
        exact_shape(finished, (B, K), "finished", " (logits' (B, K))")
        same_device(finished, logits, "finished", "logits")
        if eos_id is None:
            fail("eos_id: required when finished is given, got None")
    if eos_id is not None and not 0 <= eos_id < V:
        fail("eos_id: expected 0 <= eos_id < V = ", V, ", got ", eos_id)


# ----------------------------------------------------------------------------------------------------- end
