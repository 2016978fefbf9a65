"""Benchmark: bidirectional s2s_fused.nn.LSTM / GRU with both directions in one op per layer (rnn_layer_bidir) vs
one op per direction vs torch.nn, forward and forward+backward; on CUDA also with the step loop replayed as a
CUDA graph (S2S_FUSED_CUDA_GRAPH=1, opt-in).

Providers (the environment switches are read at every call, so one process times them all in alternation):
  torch-cudnn / torch-eager     torch.nn.LSTM / GRU (the baseline of the ratio column)
  s2s_fused-cuda-bidir          both directions per step in one batched GEMM + one pointwise launch (the default)
  s2s_fused-cuda-perdir         S2S_FUSED_NO_BIDIR_FUSED=1: one op per direction
  s2s_fused-cuda-bidir-graph    the bidir op with S2S_FUSED_CUDA_GRAPH=1
  s2s_fused-cpu-perdir          CPU: the modules' default (one op per direction)
  s2s_fused-cpu-bidir           CPU: the bidir op forced on (it runs the per-direction kernels twice per step,
                                so this only shows its overhead; the modules do not use it on CPU)

  PYTHONPATH=. python benchmarks/bench_rnn_bidir.py [--smoke] [--device cpu|cuda] [--out DIR]

Not measured on a GPU yet (written on a CPU-only machine); the GPU campaign (issue 7) runs it.
"""
from __future__ import annotations

import os

import torch

try:
    from common import fill_ratios, interleaved_rows, layer_bench_main
except ImportError:  # run as a module from the repository root
    from benchmarks.common import fill_ratios, interleaved_rows, layer_bench_main

import s2s_fused.nn.rnn as snn_rnn
from s2s_fused import nn as snn
from s2s_fused.backend import is_available

CPU_SHAPES = [(32, 64, 256, 256, 1)]  # (T, B, I, H, layers), all bidirectional
GPU_SHAPES = [
    (100, 64, 512, 512, 1),
    (100, 64, 512, 512, 2),
    (10, 64, 256, 256, 1),
    (100, 32, 256, 256, 1),
    (1024, 16, 768, 768, 1),
]
SMOKE_SHAPES = [(4, 3, 8, 8, 1)]
_ENV = ("S2S_FUSED_NO_BIDIR_FUSED", "S2S_FUSED_CUDA_GRAPH")


def _providers(device):
    """(baseline name, [(name, backend or None, env settings, force the bidir op on CPU)])."""
    if device.type == "cuda":
        out = [("torch-cudnn", None, {}, False)]
        if is_available("cuda"):
            out += [("s2s_fused-cuda-bidir", "cuda", {}, False),
                    ("s2s_fused-cuda-perdir", "cuda", {"S2S_FUSED_NO_BIDIR_FUSED": "1"}, False),
                    ("s2s_fused-cuda-bidir-graph", "cuda", {"S2S_FUSED_CUDA_GRAPH": "1"}, False)]
        return "torch-cudnn", out
    return "torch-eager", [("torch-eager", None, {}, False), ("s2s_fused-cpu-perdir", "cpu", {}, False),
                           ("s2s_fused-cpu-bidir", "cpu", {}, True)]


def _with_env(fn, env, force_cpu_bidir):
    def run():
        saved = {k: os.environ.get(k) for k in _ENV}
        for k in _ENV:
            os.environ.pop(k, None)
        os.environ.update(env)
        snn_rnn._BIDIR_FUSED_ON_CPU = force_cpu_bidir
        try:
            fn()
        finally:
            snn_rnn._BIDIR_FUSED_ON_CPU = False
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
    return run


def bench(device, shapes, dtype, repeats):
    base, providers = _providers(device)
    rows = []
    for kind in ("LSTM", "GRU"):
        for T, B, I, H, L in shapes:
            torch.manual_seed(0)
            ref = getattr(torch.nn, kind)(I, H, L, bidirectional=True, device=device, dtype=dtype)
            x = torch.randn(T, B, I, device=device, dtype=dtype)
            xg = x.clone().requires_grad_()
            shape = f"T={T} B={B} I={I} H={H}" + (f" L={L}" if L > 1 else "") + " bi"
            fwd, fwd_bwd = {}, {}
            for name, backend, env, force in providers:
                if backend is None:
                    mod = ref
                else:
                    mod = getattr(snn, kind)(I, H, L, bidirectional=True, device=device, dtype=dtype,
                                             backend=backend)
                    mod.load_state_dict(ref.state_dict())

                def run_fwd(mod=mod):
                    with torch.no_grad():
                        mod(x)

                def run_fwd_bwd(mod=mod):
                    out, h = mod(xg)
                    h_n = h[0] if isinstance(h, tuple) else h
                    (out.sum() + h_n.sum()).backward()

                fwd[name] = _with_env(run_fwd, env, force)
                fwd_bwd[name] = _with_env(run_fwd_bwd, env, force)
            rows += interleaved_rows(f"{kind.lower()}_layer_bidir", shape, dtype, {"fwd": fwd, "fwd+bwd": fwd_bwd}, device,
                                     repeats=repeats, label=kind, width=28)
    return fill_ratios(rows, base)


def main(argv=None):
    shapes = {"smoke": SMOKE_SHAPES, "cpu": CPU_SHAPES, "cuda": GPU_SHAPES}
    layer_bench_main(__doc__, "rnn_bidir", bench, shapes, argv)


if __name__ == "__main__":
    main()
