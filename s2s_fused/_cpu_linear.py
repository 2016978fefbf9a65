"""Inference-time linear layers on the CPU: ATen's GEMM (MKL or OpenBLAS: what ``torch.nn.Linear`` runs) or
oneDNN's inner product, whichever this machine runs faster for the shape.

Used where no gradient is recorded by the fused seq2seq decoder (its output layer at every decoding step, the
per-source projections of the encoder output). Which library wins depends on the CPU and the shape: on the AMD
EPYC (Zen 4) machine of benchmarks/NOTES.md, where MKL takes a generic path, the output layer's (512, 128) x
(128, 2516) product took 6.7 ms through ATen and 4.3 ms through oneDNN (1 thread), while (128, 128) x (128, 2516)
took 0.93 ms on both; on Intel, MKL's own kernels are the fast ones. So, as the CPU RNN ops choose their GEMM path
(csrc/cpu/cpu_path.h), the first call of a key (M bucket, K, N, bias, dtype, threads) times both, interleaved, and
keeps the faster; the choice joins the C++ ops' choices (``python -m s2s_fused info``, the choices file of
s2s_fused/_cpu_path_cache.py), and ``S2S_FUSED_CPU_PATH`` forces it (``blas``: ATen; any other path:
oneDNN). Both compute the same product up to fp32 summation order.
"""
from __future__ import annotations

import time

import torch
import torch.nn.functional as F

# oneDNN's fused linear (+ bias) on dense tensors, the op torch.compile's CPU backend emits; None where this torch
# has no oneDNN.
try:
    _ONEDNN = torch.ops.mkldnn._linear_pointwise.default
except (AttributeError, RuntimeError):
    _ONEDNN = None

_MIN_MACS = 1 << 18  # below 64^3 multiply-adds per call the library's call overhead decides: ATen
_MAX_ROUNDS, _BUDGET_S = 12, 0.3
_memo: dict[str, str] = {}


def _ext():
    """The compiled extension, or None (none importable, or an older build): then nothing keeps choices, and ATen
    runs every product."""
    from .backend import _extension

    ext = _extension()
    return ext if hasattr(ext, "_record_cpu_path_choice") else None


def _bucket(n: int) -> int:
    b = 1
    while b < n:
        b *= 2
    return b


def _aten(x, weight, bias, out):
    if out is None:
        return F.linear(x, weight, bias)
    if bias is None:
        return torch.mm(x, weight.t(), out=out)
    return torch.addmm(bias, x, weight.t(), out=out)


def _onednn(x, weight, bias, out):
    return _ONEDNN(x, weight, bias, "none", [], "")


_PATHS = {"onednn": _onednn, "blas": _aten}


def _eligible(x, weight, bias) -> bool:
    # A strided weight (a slice of a wider matrix) takes a path in oneDNN thousands of times slower (3.8 s for a
    # (2048, 256) x (256, 384) product whose weight was a column slice): contiguous operands only. While
    # torch.compile traces, the tensors are fake: nothing to time, and ATen's op is what the graph should hold.
    return (_ONEDNN is not None and not torch.compiler.is_compiling() and x.device.type == "cpu"
            and x.dtype == torch.float32 and x.dim() == 2
            and x.is_contiguous() and weight.is_contiguous() and (bias is None or bias.is_contiguous())
            and weight.dtype == torch.float32 and weight.dim() == 2 and (bias is None or bias.dtype == torch.float32)
            and x.shape[0] * x.shape[1] * weight.shape[0] >= _MIN_MACS and torch.backends.mkldnn.is_available()
            and torch.backends.mkldnn.enabled and not (torch.is_grad_enabled() and
                                                       (x.requires_grad or weight.requires_grad
                                                        or (bias is not None and bias.requires_grad))))


def _measure(key, x, weight, bias, out) -> str:
    """Times both paths (the cpu_path.h procedure): rounds of one call each, interleaved, until every path's two
    best rounds agree within 10 % (at least 3 timed rounds), or 12 rounds, or 0.3 s; oneDNN is kept unless ATen
    is at least 5 % faster, so a near tie does not flip from one process to the next."""
    one_thread = torch.get_num_threads() == 1
    clock = time.thread_time if one_thread else time.perf_counter
    names = list(_PATHS)
    best = {n: [] for n in names}
    start = time.perf_counter()
    for rnd in range(_MAX_ROUNDS + 1):
        for n in names:
            t0 = clock()
            _PATHS[n](x, weight, bias, out)
            if rnd:
                best[n] = sorted(best[n] + [clock() - t0])[:2]
        if rnd >= 3 and all(len(v) == 2 and v[1] <= 1.1 * v[0] for v in best.values()):
            break
        if rnd >= 2 and time.perf_counter() - start > _BUDGET_S:
            break
    times = {n: v[0] * 1e6 for n, v in best.items()}
    path = "blas" if times["blas"] < 0.95 * times["onednn"] else "onednn"
    ext = _ext()
    if ext is not None:
        ext._record_cpu_path_choice(key, path, times)
    return path


def _choose(x, weight, bias, out) -> str:
    ext = _ext()
    if ext is None:
        return "blas"
    forced, onednn = ext._cpu_path()
    if not onednn:
        return "blas"
    if forced != "auto":
        return "blas" if forced == "blas" else "onednn"
    M, K = x.shape
    key = (f"linear M~{_bucket(M)} K={K} N={weight.shape[0]}{' bias' if bias is not None else ''} Float "
           f"threads={torch.get_num_threads()}")
    path = _memo.get(key)
    if path is None:
        kept = ext._cpu_path_state()["choices"].get(key)  # chosen by an earlier process (the choices file)
        path = kept["path"] if kept and kept["path"] in _PATHS else _measure(key, x, weight, bias, out)
        _memo[key] = path
    return path


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, *,
           out: torch.Tensor | None = None) -> torch.Tensor:
    """``x (M, K) @ weight.T + bias`` without autograd, through the faster library for this machine and shape.
    ``out`` (M, N): where ATen's path writes (a buffer reused across decoding steps); the oneDNN path returns a
    new tensor, so use the return value. Inputs that need a gradient, other devices, dtypes and small products
    go to ``F.linear`` / ``addmm`` as they are."""
    if not _eligible(x, weight, bias):
        return _aten(x, weight, bias, out)
    return _PATHS[_choose(x, weight, bias, out)](x, weight, bias, out)


def clear() -> None:
    """Forget this process's choices (tests; with ``_clear_cpu_path_state()`` for the C++ side)."""
    _memo.clear()
