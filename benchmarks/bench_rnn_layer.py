"""Benchmark: s2s_fused.nn.LSTM / GRU (whole sequences) vs torch.nn.LSTM / GRU, forward and forward+backward.

CPU shapes (issue 3): the fastrnns shape scaled down (T=32, B=64, I=H=256) and (T=64, B=16, I=H=512), 1 layer.
GPU shapes (when --device cuda): fastrnns (T=100, B=64, I=H=512), FlashRNN's (T=1024, B=16, H=768), d2l (T=10,
B=64, H=256), small-batch inference (B in 1, 4, 8; T=100, H=512), bidirectional and 2-layer variants.

  PYTHONPATH=. python benchmarks/bench_rnn_layer.py [--smoke] [--device cpu|cuda] [--out DIR]

"fwd" runs under torch.no_grad() (inference); "fwd+bwd" runs forward then backward of output.sum() + h_n.sum().
The ratio column is torch's time / ours, measured in the same run (> 1: faster than torch); providers are timed
in alternation, one call each per round, so load from other processes on a shared machine hits them alike.
"""
from __future__ import annotations

import contextlib
import os

import torch

try:
    from common import fill_ratios, interleaved_rows, layer_bench_main
except ImportError:  # run as a module from the repository root
    from benchmarks.common import fill_ratios, interleaved_rows, layer_bench_main

from s2s_fused import nn as snn
from s2s_fused.backend import is_available

CPU_SHAPES = [  # (T, B, I, H, layers, bidirectional)
    (32, 64, 256, 256, 1, False),
    (64, 16, 512, 512, 1, False),
]
GPU_SHAPES = [
    (100, 64, 512, 512, 1, False),
    (100, 64, 512, 512, 2, True),
    (1024, 16, 768, 768, 1, False),
    (10, 64, 256, 256, 1, False),
    (100, 1, 512, 512, 1, False),
    (100, 4, 512, 512, 1, False),
    (100, 8, 512, 512, 1, False),
    (100, 8, 256, 256, 1, False),  # small batch, H within the Triton persistent program's limit
]
SMOKE_SHAPES = [(4, 3, 8, 8, 1, False)]


def _providers(device):
    base = "torch-cudnn" if device.type == "cuda" else "torch-eager"
    out = [(base, None)]
    if device.type == "cpu":
        out.append(("s2s_fused-cpu", "cpu"))
    else:
        if is_available("cuda"):
            out.append(("s2s_fused-cuda", "cuda"))
        if is_available("triton"):
            out.append(("s2s_fused-triton", "triton"))
            # the per-step Triton kernels where the default picks the persistent program: its A/B
            out.append(("s2s_fused-triton-perstep", "triton"))
    return base, out


@contextlib.contextmanager
def _env(name, value):
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            del os.environ[name]
        else:
            os.environ[name] = old


def bench(device, shapes, dtype, repeats):
    base, providers = _providers(device)
    rows = []
    for kind in ("LSTM", "GRU"):
        for T, B, I, H, L, bi in shapes:
            torch.manual_seed(0)
            ref = getattr(torch.nn, kind)(I, H, L, bidirectional=bi, device=device, dtype=dtype)
            x = torch.randn(T, B, I, device=device, dtype=dtype)
            xg = x.clone().requires_grad_()
            shape = f"T={T} B={B} I={I} H={H}" + (f" L={L}" if L > 1 else "") + (" bi" if bi else "")
            fwd, fwd_bwd = {}, {}
            for name, backend in providers:
                perstep = name.endswith("-perstep")
                if perstep:
                    from s2s_fused.triton.rnn_layer import use_persistent
                    if not use_persistent(B, H):
                        continue  # the same kernels as s2s_fused-triton
                if backend is None:
                    mod = ref
                else:
                    mod = getattr(snn, kind)(I, H, L, bidirectional=bi, device=device, dtype=dtype,
                                             backend=backend)
                    mod.load_state_dict(ref.state_dict())

                def path(perstep=perstep):
                    return _env("S2S_FUSED_TRITON_NO_PERSISTENT", "1") if perstep else contextlib.nullcontext()

                def run_fwd(mod=mod, path=path):
                    with torch.no_grad(), path():
                        mod(x)

                def run_fwd_bwd(mod=mod, path=path):
                    with path():
                        out, h = mod(xg)
                        h_n = h[0] if isinstance(h, tuple) else h
                        (out.sum() + h_n.sum()).backward()

                fwd[name], fwd_bwd[name] = run_fwd, run_fwd_bwd
            rows += interleaved_rows(f"{kind.lower()}_layer", shape, dtype, {"fwd": fwd, "fwd+bwd": fwd_bwd}, device,
                                     repeats=repeats, label=kind, width=18)
    return fill_ratios(rows, base)


def main(argv=None):
    shapes = {"smoke": SMOKE_SHAPES, "cpu": CPU_SHAPES, "cuda": GPU_SHAPES}
    layer_bench_main(__doc__, "rnn_layer", bench, shapes, argv)


if __name__ == "__main__":
    main()
