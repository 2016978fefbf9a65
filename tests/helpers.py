"""Shared test helpers: the error measure and tolerances of ARCHITECTURE.md, poisoning, backend lists."""
from __future__ import annotations

import contextlib
import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import s2s_fused
from s2s_fused import backend as _backend

# Tolerances for single-op values (cell / loss / log-prob) against the float64 reference.
VALUE_TOL = {torch.float64: 1e-10, torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 2e-3}
ALL_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """max |out - ref| / max(max |ref|, 1e-6), computed in float64; NaN/inf anywhere gives inf."""
    out = out.detach().to(torch.float64).cpu()
    ref = ref.detach().to(torch.float64).cpu()
    assert out.shape == ref.shape, f"shape {tuple(out.shape)} != reference {tuple(ref.shape)}"
    if out.numel() == 0:
        return 0.0
    if not torch.isfinite(out).all() and not torch.equal(torch.isfinite(out), torch.isfinite(ref)):
        return math.inf
    finite = torch.isfinite(ref)
    if not torch.equal(out[~finite], ref[~finite]):
        return math.inf
    diff = (out[finite] - ref[finite]).abs().max().item() if finite.any() else 0.0
    scale = max(ref[finite].abs().max().item() if finite.any() else 0.0, 1e-6)
    return diff / scale


def assert_close(out, ref, tol, what=""):
    e = rel_err(out, ref)
    assert e <= tol, f"{what}: relative error {e:.3g} > {tol:.3g}"


def assert_raises(fn, exc, *words):
    """``fn()`` raises ``exc`` with each of ``words`` in its message."""
    with pytest.raises(exc) as e:
        fn()
    for w in words:
        assert w in str(e.value), str(e.value)


def poison_(t: torch.Tensor) -> torch.Tensor:
    """Fill a tensor a kernel is about to overwrite with NaN, so a missed write cannot pass."""
    if t.is_floating_point():
        return t.fill_(float("nan"))
    return t.fill_(-7777)


def cpu_backends():
    """Backends that run CPU tensors here: reference, cpu and (under TRITON_INTERPRET=1) triton."""
    return [b for b in ("cpu", "triton") if _backend.is_available(b)]


def backend_params(include_triton=True):
    out = [pytest.param("cpu", id="cpu")]
    if include_triton:
        out.append(pytest.param("triton", id="triton", marks=pytest.mark.skipif(
            not _backend.is_available("triton"), reason="triton not available")))
    out.append(pytest.param("cuda", id="cuda", marks=pytest.mark.gpu))
    return out


def device_for(backend: str) -> torch.device:
    """The device a test gives `backend`'s tensors: CUDA for cuda, and for triton wherever a GPU exists (without
    one, Triton runs CPU tensors under TRITON_INTERPRET=1); CPU otherwise. Every test that runs the cuda or
    triton backend takes its device from here (tests/test_device_awareness.py checks it)."""
    if backend == "cuda" or (backend == "triton" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


__all__ = ["VALUE_TOL", "ALL_DTYPES", "rel_err", "assert_close", "assert_raises", "poison_", "cpu_backends", "backend_params",
           "device_for", "s2s_fused", "run_python", "cpu_path", "run_on_cpu_capability", "check_dtypes_on_cpu_capability",
           "CPU_CAPABILITIES"]


def poison_heap(numel: int, dtype=torch.float32, device="cpu", copies: int = 4) -> None:
    """Leave NaN-filled blocks of `numel` elements in the allocator's free lists, so the next allocations an op
    makes for its outputs start out as NaN rather than as zeros: a kernel that skips a write then fails."""
    blocks = [torch.full((numel,), float("nan"), dtype=dtype, device=device) for _ in range(copies)]
    del blocks


def make_cell_params(kind: str, I: int, H: int, *, dtype=torch.float64, bias=True, device="cpu", scale=0.5):
    """Random (w_ih, w_hh, b_ih, b_hh) for an LSTM (kind="lstm") or GRU cell, scaled to keep gates unsaturated."""
    G = 4 if kind == "lstm" else 3
    g = lambda *s: (torch.randn(*s, dtype=torch.float64) * scale).to(dtype=dtype, device=device)
    w_ih, w_hh = g(G * H, I) / max(1, I) ** 0.5 * 2, g(G * H, H) / max(1, H) ** 0.5 * 2
    b_ih, b_hh = (g(G * H), g(G * H)) if bias else (None, None)
    return w_ih, w_hh, b_ih, b_hh


@contextlib.contextmanager
def compiled_switch(name: str, on: bool = True):
    """A switch of the compiled library (build_info()["switches"], csrc/config.h: read from the environment once per
    process) set to `on` for the duration."""
    ext = _backend._extension()
    previous = ext._set_switch(name, on)
    try:
        yield
    finally:
        ext._set_switch(name, previous)


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CPU_CAPABILITIES = ("default", "avx2", "avx512")  # ATen's names; csrc/cpu/kernels is compiled once for each
# The CPU flags ATen requires of each (aten/src/ATen/native/DispatchStub.cpp). A forced capability is not checked
# against the CPU: ATEN_CPU_CAPABILITY=avx512 on an AVX2-only machine (an AMD EPYC Zen 3) dies of SIGILL.
CAPABILITY_FLAGS = {"default": (), "avx2": ("avx2", "fma"), "avx512": ("avx512f", "avx512bw", "avx512vl", "avx512dq")}


def cpu_lacks(cap: str) -> bool:
    """True when /proc/cpuinfo lists flags and they miss one that capability `cap` needs."""
    from s2s_fused._cpu_path_cache import cpu_info

    flags = set(cpu_info().get("flags", "").split())
    return bool(flags) and not set(CAPABILITY_FLAGS[cap]) <= flags


@contextlib.contextmanager
def cpu_path(name: str):
    """S2S_FUSED_CPU_PATH set to `name` for the block, with no GEMM path choices (the C++ ops' and the seq2seq
    decoder's linear layers', s2s_fused/_cpu_linear.py) or packed weights left from before."""
    from s2s_fused import _cpu_linear

    ext = _backend._extension()
    ext._clear_cpu_path_state()
    _cpu_linear.clear()
    previous = ext._set_cpu_path(name)
    try:
        yield
    finally:
        ext._set_cpu_path(previous)
        ext._clear_cpu_path_state()
        _cpu_linear.clear()


def run_python(code: str, *, timeout: float = 300, **env: str) -> str:
    """Runs `code` in a fresh interpreter (this checkout first on its path, `env` added to the environment) and
    returns what it printed; a non-zero exit fails the test with the end of its output."""
    full = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), **env)
    r = subprocess.run([sys.executable, "-c", code], env=full, cwd=ROOT, capture_output=True, text=True,
                       timeout=timeout)
    assert r.returncode == 0, f"exit {r.returncode}\n{r.stdout[-1500:]}\n{r.stderr[-3000:]}"
    return r.stdout


def run_on_cpu_capability(cap: str, code: str, *, timeout: float = 300, **env: str) -> str:
    """`code` run by run_python with ATen's CPU capability forced to `cap` (and so our kernels' copy for it: ours
    follow ATen's choice, which is checked); skips when the extension is not built or this CPU lacks `cap`."""
    if not _backend.is_available("cpu"):
        pytest.skip("needs the compiled CPU extension")
    if cpu_lacks(cap):
        pytest.skip(f"this CPU lacks {cap} (flags {', '.join(CAPABILITY_FLAGS[cap])})")
    probe = ("\nimport torch as _t, s2s_fused.backend as _b\n"
             "print('s2s-capability', _t.backends.cpu.get_cpu_capability(), _b.build_info()['cpu_capability'])\n")
    out = run_python(code + probe, timeout=timeout, ATEN_CPU_CAPABILITY=cap, **env)
    aten, ours = out.split("s2s-capability")[-1].split()
    assert ours == aten, f"our kernels ran the {ours} copy under ATen's {aten}"
    if aten.lower() != cap:
        pytest.skip(f"this CPU lacks {cap} (ATen chose {aten})")
    return out


def check_dtypes_on_cpu_capability(cap: str, body: str, tols: dict | None = None, **env: str) -> str:
    """Runs `body` by run_on_cpu_capability (capability `cap`) once per dtype, in a child that seeds torch once and
    binds `torch`, `s2s_fused`, `R` (s2s_fused.reference), `assert_close` (this file's), `dt` (the dtype) and `tol`
    (its tolerance). `tols`: dtype -> tolerance, in the order run; by default VALUE_TOL's for float32, bfloat16 and
    float64."""
    tols = tols or {dt: VALUE_TOL[dt] for dt in (torch.float32, torch.bfloat16, torch.float64)}
    code = ("import torch, s2s_fused\n"
            "from s2s_fused import reference as R\n"
            "from tests.helpers import assert_close\n"
            "torch.manual_seed(0)\n"
            f"for dt, tol in ({', '.join(f'({dt}, {tol!r})' for dt, tol in tols.items())},):\n"
            + textwrap.indent(textwrap.dedent(body), "    "))
    return run_on_cpu_capability(cap, code, **env)


def torch_and_ours(kind: str, *args, backend=None, dtype=torch.float64, seed: int = 0, **kw):
    """torch.nn's ``kind`` module ("LSTM", "GRU", "LSTMCell", "GRUCell") and s2s_fused.nn's, built with the same
    arguments and holding the same weights (loaded with strict=True)."""
    from s2s_fused import nn as snn

    torch.manual_seed(seed)
    theirs = getattr(torch.nn, kind)(*args, dtype=dtype, **kw)
    ours = getattr(snn, kind)(*args, backend=backend, dtype=dtype, **kw)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    return theirs, ours
