"""Benchmark: one decoder step of the fused LSTM/GRU cells vs torch.nn.LSTMCell / GRUCell (same weights),
forward and forward+backward, measured side by side in one run.

CPU: B=64 and B=8 at I=H=512 (a decoder step), B=64 at I=H=256; providers torch-eager, s2s_fused-cpu (the CPU
GEMM path measured fastest here, csrc/cpu/cpu_path.h) and s2s_fused-cpu-<path> (each path forced), timed in
alternation (one call each per round) so that load from other processes hits them alike. GPU: B in {1, 8, 64, 256}, H in {256, 512, 1024}, fp32 and bf16,
providers s2s_fused-cuda, s2s_fused-triton, torch-eager (torch.nn cells: three launches per step) and, at H=512,
torch-compile (dynamic shapes: one compiled graph per kind, dtype and mode serves every B); each also inside a CUDA
graph (how a decode loop runs them).

    python benchmarks/bench_rnn_cell.py [--device cuda] [--smoke] [--out DIR]
"""
from __future__ import annotations

import itertools

import torch

from common import (Row, base_parser, cpu_paths, parse_args, fill_ratios, interleaved_rows, markdown_table, measure,
                    switches, write_results)

from s2s_fused.backend import is_available
from s2s_fused.nn import GRUCell, LSTMCell

COMPILE_H = 512  # torch-compile rows at this H only: inductor compiles cost the GPU round's time box
# Every compiled config must really run compiled: past the recompile limit Dynamo silently falls back to eager.
torch._dynamo.config.recompile_limit = 64


def make(kind, I, H, dtype, device, provider):
    torch.manual_seed(0)
    base = (torch.nn.LSTMCell if kind == "lstm" else torch.nn.GRUCell)(I, H).to(device=device, dtype=dtype)
    if provider.startswith("torch"):
        return base
    backend = provider.split("-")[1]
    ours = (LSTMCell if kind == "lstm" else GRUCell)(I, H, backend=backend).to(device=device, dtype=dtype)
    ours.load_state_dict(base.state_dict())
    return ours


def step_fns(kind, cell, B, I, H, dtype, device, compile_=False):
    x = torch.randn(B, I, device=device, dtype=dtype)
    h = torch.randn(B, H, device=device, dtype=dtype)
    hx = (h, torch.randn(B, H, device=device, dtype=dtype)) if kind == "lstm" else h
    xg = x.clone().requires_grad_()
    fn = torch.compile(cell, dynamic=True) if compile_ else cell

    def fwd():
        with torch.no_grad():
            return fn(x, hx)

    def fwd_bwd():
        out = fn(xg, hx)
        out = out[0] + out[1] if isinstance(out, tuple) else out
        out.sum().backward()

    return fwd, fwd_bwd


def graphed(fn, device):
    """The step captured in a CUDA graph (replayed per call), as a decode loop would run it."""
    s = torch.cuda.Stream(device)
    s.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(s):
        for _ in range(3):
            fn()
    torch.cuda.current_stream(device).wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    return g.replay


def providers(device, H):
    if device.type == "cpu":
        # packed-units splits a layer's sequence loop: a cell runs it as packed
        return ["torch-eager", "s2s_fused-cpu"] + [f"s2s_fused-cpu-{p}" for p in cpu_paths() if p != "packed-units"]
    out = ["torch-eager"] + (["torch-compile"] if H == COMPILE_H else [])
    out += [p for p, b in (("s2s_fused-cuda", "cuda"), ("s2s_fused-triton", "triton")) if is_available(b)]
    return out


def cpu_rows(kind, B, I, H, dtype, device, repeats):
    """Every CPU provider's fwd and fwd+bwd, timed in alternation."""
    by_mode = {"fwd": {}, "fwd+bwd": {}}
    for prov in providers(device, H):
        cell = make(kind, I, H, dtype, device, prov)
        fwd, fwd_bwd = step_fns(kind, cell, B, I, H, dtype, device)
        env = {"S2S_FUSED_CPU_PATH": prov.rsplit("-", 1)[1]} if prov.count("-") == 2 else {}

        def run(fn=None, env=env):
            with switches(**env):
                fn()

        by_mode["fwd"][prov] = lambda fn=fwd, r=run: r(fn)
        by_mode["fwd+bwd"][prov] = lambda fn=fwd_bwd, r=run: r(fn)
    return interleaved_rows(f"{kind}_cell", f"B={B} I={I} H={H}", dtype, by_mode, device, repeats=repeats,
                            label=kind, width=22)


def main(argv=None):
    p = base_parser(__doc__)
    args = parse_args(p, argv)
    device = torch.device(args.device)
    if device.type == "cpu":
        shapes = [(2, 8, 8)] if args.smoke else [(64, 512, 512), (8, 512, 512), (64, 256, 256)]
        dtypes = [torch.float32]
    else:
        shapes = [(2, 8, 8)] if args.smoke else [(b, h, h) for b, h in itertools.product((1, 8, 64, 256),
                                                                                          (256, 512, 1024))]
        dtypes = [torch.float32] if args.smoke else [torch.float32, torch.bfloat16]
    repeats = args.repeats or (3 if args.smoke else (30 if device.type == "cpu" else 100))
    rows: list[Row] = []
    for kind, (B, I, H), dtype in itertools.product(("lstm", "gru"), shapes, dtypes):
        shape = f"B={B} I={I} H={H}"
        if device.type == "cpu":
            rows += cpu_rows(kind, B, I, H, dtype, device, repeats)
            continue
        for prov in providers(device, H):
            cell = make(kind, I, H, dtype, device, prov)
            fwd, fwd_bwd = step_fns(kind, cell, B, I, H, dtype, device, compile_=prov == "torch-compile")
            for mode, fn in (("fwd", fwd), ("fwd+bwd", fwd_bwd)):
                rows.append(measure(f"{kind}_cell", prov, shape, dtype, mode, fn, device, repeats=repeats))
                if device.type == "cuda" and mode == "fwd" and prov != "torch-compile":
                    try:
                        rows.append(measure(f"{kind}_cell", prov + "+graph", shape, dtype, mode,
                                            graphed(fwd, device), device, repeats=repeats))
                    except RuntimeError as e:  # capture can fail for a provider: report, keep going
                        print(f"CUDA graph capture failed for {prov}: {e}")
    fill_ratios(rows, "torch-eager")
    print(markdown_table(rows))
    write_results(rows, "rnn_cell", args.out, plot=not args.no_plot)


if __name__ == "__main__":
    main()
