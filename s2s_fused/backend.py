"""Backend names, availability and the one place that decides which implementation an op call runs.

Backends: ``reference`` (plain torch, the ground truth), ``cpu`` (C++), ``cuda`` (CUDA C++), ``triton``.
``backend=None`` in an op call means the process default, set with :func:`set_backend` or :func:`use_backend`,
which starts as ``"auto"``: CUDA tensors get the fastest GPU implementation of that op (``AUTO_CUDA`` below),
CPU tensors get ``cpu``.
"""
from __future__ import annotations

import atexit
import contextlib
import importlib.util
import os

import torch

BACKENDS = ("reference", "cpu", "cuda", "triton")
_CHOICES = BACKENDS + ("auto",)

# "auto" on CUDA tensors, per op family. Not measured on GPU yet: until a GPU run decides (benchmarks/results/),
# the CUDA C++ kernels are the default where compiled, as they need no JIT warm-up.
AUTO_CUDA: dict[str, str] = {}

# The process default: a plain module global, so torch.compile reads it while tracing and guards on its value
# (a compiled graph is re-traced after set_backend changes it). A ContextVar would be invisible to Dynamo.
_default_backend = "auto"


def _load_extension():
    """Import the compiled extension (registers torch.ops.s2s_fused.*); returns (module or None, error text)."""
    try:
        from s2s_fused import _C

        return _C, ""
    except ImportError as e:  # pragma: no cover - exercised only on broken installs
        return None, str(e)


# Everything below is decided once, at import: backend resolution then reads plain module globals, which
# torch.compile traces without graph breaks (no C calls, no caches inside a traced region).
_C, _EXTENSION_ERROR = _load_extension()
_BUILD_INFO: dict = _C.build_info() if _C is not None else {}
if _C is not None and hasattr(_C, "_load_cpu_path_choices"):
    from . import _cpu_path_cache

    _cpu_path_cache.load(_C)
    atexit.register(_cpu_path_cache.save, _C)
_TRITON_INSTALLED: bool = importlib.util.find_spec("triton") is not None


def _extension():
    return _C


def extension_error() -> str:
    return _EXTENSION_ERROR


def build_info() -> dict:
    """Facts about the compiled extension: with_cuda, cuda_arch_list (the archs compiled), torch_version (the torch
    it was compiled against), cpu_capabilities_compiled, cpu_capability, parallel_for_chunks (how many chunks our
    CPU loops split into at import: > 1 when torch runs > 1 thread)."""
    return dict(_BUILD_INFO)


def empty_cpu_cache() -> None:
    """Return the free blocks of the CPU buffer cache to the system (as ``torch.cuda.empty_cache`` does for CUDA).

    The CPU ops take their large buffers and outputs (weight gradients, RNN workspaces, CE gradients) from a cache
    that keeps up to 256 MiB of freed blocks for the next call, so repeated calls skip the page faults of fresh
    memory (csrc/cpu/memory.h). ``S2S_FUSED_NO_BUFFER_CACHE=1`` turns it off. Nothing to do without the extension.
    """
    ext = _extension()
    if ext is not None and hasattr(ext, "_empty_cpu_buffer_cache"):
        ext._empty_cpu_buffer_cache()


def triton_interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def triton_installed() -> bool:
    return _TRITON_INSTALLED


def _cuda_compiled() -> bool:
    return bool(_BUILD_INFO.get("with_cuda", False))


def is_available(name: str) -> bool:
    if name == "reference":
        return True
    if name == "cpu":
        return _extension() is not None
    if name == "cuda":
        return _cuda_compiled() and torch.cuda.is_available()
    if name == "triton":  # its ops take their schemas from the extension's
        return _extension() is not None and triton_installed() and (torch.cuda.is_available() or triton_interpret())
    return False


def available_backends() -> list[str]:
    """The backends that can run in this process, in the order of ``BACKENDS``."""
    return [b for b in BACKENDS if is_available(b)]


def _validate_name(name, what="backend") -> str:
    if not isinstance(name, str) or name not in _CHOICES:
        raise ValueError(f"{what}: expected one of {', '.join(map(repr, _CHOICES))}, got {name!r}")
    return name


def set_backend(name: str) -> None:
    """Set the process-wide default backend (``"auto"`` restores the automatic choice)."""
    global _default_backend
    _default_backend = _validate_name(name)


def get_backend() -> str:
    return _default_backend


@contextlib.contextmanager
def use_backend(name: str):
    """``with s2s_fused.use_backend("triton"): ...`` runs the block's op calls on that backend."""
    global _default_backend
    previous, _default_backend = _default_backend, _validate_name(name)
    try:
        yield
    finally:
        _default_backend = previous


def resolve(op: str, backend: str | None, device: torch.device) -> str:
    """The backend that runs ``op`` for tensors on ``device``; raises a clear error if it cannot."""
    name = _validate_name(backend if backend is not None else get_backend())
    if name == "auto":
        if device.type == "cuda":
            for cand in (AUTO_CUDA.get(op), "cuda", "triton"):
                if cand and is_available(cand):
                    return cand
            return "reference"
        if device.type == "cpu" and is_available("cpu"):
            return "cpu"
        return "reference"
    if not is_available(name):
        no_ext = f"the C++ extension s2s_fused._C did not import ({extension_error()})"
        why = {
            "cpu": f"{no_ext}; build it with `pip install --no-build-isolation -e .`",
            "cuda": "it needs a CUDA device and an extension built with CUDA"
                    if _cuda_compiled() else "this build of the extension has no CUDA kernels",
            "triton": "triton is not installed" if not triton_installed()
                      else no_ext if _extension() is None
                      else "Triton needs a CUDA device, or TRITON_INTERPRET=1 to run on CPU tensors",
        }[name]
        raise RuntimeError(f"backend {name!r} is not available: {why}. Available: {available_backends()}")
    if name == "cpu" and device.type != "cpu":
        raise RuntimeError(f"backend 'cpu' runs on CPU tensors, got tensors on {device}")
    if name == "cuda" and device.type != "cuda":
        raise RuntimeError(f"backend 'cuda' runs on CUDA tensors, got tensors on {device}")
    if name == "triton" and device.type == "cpu" and not triton_interpret():
        raise RuntimeError("backend 'triton' on CPU tensors needs TRITON_INTERPRET=1 (set before importing "
                           "s2s_fused); use CUDA tensors or another backend")
    return name
