"""Benchmark: s2s_fused.nn.LSTM / GRU (whole sequences, one or both directions) vs torch.nn.LSTM / GRU, forward and
forward+backward.

CPU shapes: the fastrnns shape scaled down (T=32, B=64, I=H=256) and (T=64, B=16, I=H=512), 1 layer, and the first
one bidirectional; and an LSTM with projections (proj_size P=128 on the first shape; GPU: P=256 on fastrnns'),
against torch.nn.LSTM(proj_size=P). GPU shapes (when --device cuda): fastrnns (T=100, B=64, I=H=512), FlashRNN's (T=1024, B=16,
H=768), d2l (T=10, B=64, H=256), small-batch inference (B in 1, 4, 8; T=100, H=512), bidirectional and 2-layer
variants.

Providers:
  torch-cudnn / torch-eager   torch.nn.LSTM / GRU (the baseline of the ratio column)
  s2s_fused-<backend>         s2s_fused.nn on each backend here, as the modules run by default (on CUDA a
                              bidirectional layer runs both directions in one op: one batched GEMM and one
                              pointwise launch per step)
and A/B variants, each timed only on the shapes where it runs other code than its default:
  s2s_fused-triton-perstep    S2S_FUSED_TRITON_NO_PERSISTENT=1: per-step kernels where the default picks the
                              persistent program
  s2s_fused-<dev>-perdir      bidirectional, S2S_FUSED_NO_BIDIR_FUSED=1: one op per direction
  s2s_fused-cpu-<path>        S2S_FUSED_CPU_PATH=packed|onednn|blas: each CPU GEMM path forced (s2s_fused-cpu
                              is the path measured fastest here, S2S_FUSED_CPU_PATH=auto)

  PYTHONPATH=. python benchmarks/bench_rnn_layer.py [--smoke] [--device cpu|cuda] [--out DIR]

"fwd" runs under torch.no_grad() (inference); "fwd+bwd" runs forward then backward of output.sum() + h_n.sum().
The ratio column is torch's time / ours, measured in the same run (> 1: faster than torch); providers are timed
in alternation, one call each per round, so load from other processes on a shared machine hits them alike. The
A/B switches are set around each call of a variant (common.switches).
"""
from __future__ import annotations

import torch

from common import cpu_paths, fill_ratios, interleaved_rows, layer_bench_main, switches

from s2s_fused import nn as snn
from s2s_fused.backend import is_available

CPU_SHAPES = [  # (T, B, I, H, layers, bidirectional[, proj_size: LSTM only])
    (32, 64, 256, 256, 1, False),
    (64, 16, 512, 512, 1, False),
    (32, 64, 256, 256, 1, True),
    (32, 64, 256, 256, 1, False, 128),
]
GPU_SHAPES = [
    (100, 64, 512, 512, 1, False),
    (100, 64, 512, 512, 1, False, 256),
    (100, 64, 512, 512, 1, True),
    (100, 64, 512, 512, 2, True),
    (1024, 16, 768, 768, 1, False),
    (1024, 16, 768, 768, 1, True),
    (10, 64, 256, 256, 1, False),
    (10, 64, 256, 256, 1, True),
    (100, 32, 256, 256, 1, True),
    (100, 1, 512, 512, 1, False),
    (100, 4, 512, 512, 1, False),
    (100, 8, 512, 512, 1, False),
    (100, 8, 256, 256, 1, False),  # small batch, H within the Triton persistent program's limit
]
SMOKE_SHAPES = [(4, 3, 8, 8, 1, False), (4, 3, 8, 8, 1, True), (4, 3, 8, 8, 1, False, 5)]


def _baseline(device):
    return "torch-cudnn" if device.type == "cuda" else "torch-eager"


def _providers(device, B, H, L, bi, P=0):
    """[(provider, backend or None for torch.nn, A/B switches)]."""
    out = [(_baseline(device), None, {})]
    if device.type == "cpu":
        out.append(("s2s_fused-cpu", "cpu", {}))
        # each CPU GEMM path this machine has, also timed forced, next to the measured choice (s2s_fused-cpu)
        out += [(f"s2s_fused-cpu-{p}", "cpu", {"S2S_FUSED_CPU_PATH": p}) for p in cpu_paths()]
        if bi and not P:
            out.append(("s2s_fused-cpu-perdir", "cpu", {"S2S_FUSED_NO_BIDIR_FUSED": "1"}))
        return out
    if is_available("cuda"):
        out.append(("s2s_fused-cuda", "cuda", {}))
        if bi and not P:
            out.append(("s2s_fused-cuda-perdir", "cuda", {"S2S_FUSED_NO_BIDIR_FUSED": "1"}))
    if is_available("triton"):
        out.append(("s2s_fused-triton", "triton", {}))
        from s2s_fused.triton.rnn_layer import use_persistent

        if use_persistent(B, H) and not P:
            out.append(("s2s_fused-triton-perstep", "triton", {"S2S_FUSED_TRITON_NO_PERSISTENT": "1"}))
    return out


def bench(device, shapes, dtype, repeats):
    rows = []
    for kind in ("LSTM", "GRU"):
        for T, B, I, H, L, bi, *proj in shapes:
            P = proj[0] if proj else 0
            if P and kind != "LSTM":
                continue
            torch.manual_seed(0)
            extra = {"proj_size": P} if P else {}
            ref = getattr(torch.nn, kind)(I, H, L, bidirectional=bi, device=device, dtype=dtype, **extra)
            x = torch.randn(T, B, I, device=device, dtype=dtype)
            xg = x.clone().requires_grad_()
            shape = (f"T={T} B={B} I={I} H={H}" + (f" P={P}" if P else "") + (f" L={L}" if L > 1 else "")
                     + (" bi" if bi else ""))
            fwd, fwd_bwd = {}, {}
            for name, backend, env in _providers(device, B, H, L, bi, P):
                if backend is None:
                    layer = ref
                else:
                    layer = getattr(snn, kind)(I, H, L, bidirectional=bi, device=device, dtype=dtype,
                                               backend=backend, **extra)
                    layer.load_state_dict(ref.state_dict())

                def run_fwd(layer=layer, env=env):
                    with torch.no_grad(), switches(**env):
                        layer(x)

                def run_fwd_bwd(layer=layer, env=env):
                    with switches(**env):
                        out, h = layer(xg)
                        h_n = h[0] if isinstance(h, tuple) else h
                        (out.sum() + h_n.sum()).backward()

                fwd[name], fwd_bwd[name] = run_fwd, run_fwd_bwd
            rows += interleaved_rows(f"{kind.lower()}_layer", shape, dtype, {"fwd": fwd, "fwd+bwd": fwd_bwd}, device,
                                     repeats=repeats, label=kind, width=24)
    return fill_ratios(rows, _baseline(device))


def main(argv=None):
    shapes = {"smoke": SMOKE_SHAPES, "cpu": CPU_SHAPES, "cuda": GPU_SHAPES}
    layer_bench_main(__doc__, "rnn_layer", bench, shapes, argv)


if __name__ == "__main__":
    main()
