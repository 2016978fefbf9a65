"""Beam-search top-k step and a whole beam-search decode, fused vs eager torch, side by side in one run.

Op rows: ``s2s_fused.beam_search_topk`` (cpu / cuda / triton) vs torch eager
(log_softmax + add + view + topk, then // and %), on GPU at B=32 also that chain torch.compile'd. Decode rows:
``s2s_fused.seq2seq.decode.beam_search`` on a small random GRU decoder, with the fused op vs the same decoder whose
top-k step is the eager chain above (``decode.eager_beam_topk``).

    PYTHONPATH=. python benchmarks/bench_beam.py [--smoke] [--device cuda] [--out DIR]
"""
from __future__ import annotations

import sys

import torch

from common import base_parser, parse_args, fill_ratios, markdown_table, measure, write_results

import s2s_fused
from s2s_fused.backend import is_available
from s2s_fused.seq2seq import decode
from s2s_fused.seq2seq.decode import eager_beam_topk


def op_rows(device, shapes, dtypes, repeats):
    rows = []
    providers = {"torch-eager": lambda x, s, k: eager_beam_topk(x, s, k)}
    if device.type == "cpu":
        providers["s2s_fused-cpu"] = lambda x, s, k: s2s_fused.beam_search_topk(x, s, k, backend="cpu")
    else:
        if is_available("cuda"):
            providers["s2s_fused-cuda"] = lambda x, s, k: s2s_fused.beam_search_topk(x, s, k, backend="cuda")
        if is_available("triton"):
            providers["s2s_fused-triton"] = lambda x, s, k: s2s_fused.beam_search_topk(x, s, k, backend="triton")
        providers["torch-compile"] = torch.compile(eager_beam_topk)
    for B, K, V in shapes:
        for dtype in dtypes:
            x = torch.randn(B, K, V, device=device, dtype=dtype)
            s = -torch.rand(B, K, device=device)
            k = 2 * K
            nbytes = x.numel() * x.element_size()
            for name, fn in providers.items():
                if name == "torch-compile" and B != 32:  # B=32 only: each compile costs the time box
                    continue
                rows.append(measure("beam_search_topk", name, f"B={B} K={K} V={V} k={k}", dtype, "fwd",
                                    lambda fn=fn: fn(x, s, k), device, repeats=repeats,
                                    throughput_fn=lambda ms: f"{nbytes / ms / 1e6:.1f} GB/s"))
    return rows


class GRUDecoder(torch.nn.Module):
    """A small random GRU decoder step: embedding -> GRUCell -> output projection."""

    def __init__(self, V, E, H):
        super().__init__()
        self.emb = torch.nn.Embedding(V, E)
        self.cell = torch.nn.GRUCell(E, H)
        self.out = torch.nn.Linear(H, V)
        with torch.no_grad():
            self.out.weight.mul_(4.0)  # peaky enough that beams finish

    def step(self, tokens, h):
        h = self.cell(self.emb(tokens), h)
        return self.out(h), h


def decode_rows(device, B, V, beam, max_len, repeats):
    torch.manual_seed(0)
    model = GRUDecoder(V, 64, 256).to(device).eval()
    h0 = torch.randn(B, 256, device=device)
    backend = "cpu" if device.type == "cpu" else ("cuda" if is_available("cuda") else "triton")

    def fused():
        with torch.no_grad():
            return decode.beam_search(model.step, h0, 1, 2, beam, max_len, n_best=1, backend=backend)

    def eager():
        with torch.no_grad():
            return decode.beam_search(model.step, h0, 1, 2, beam, max_len, n_best=1, topk=eager_beam_topk)

    tokens = sum(len(h[0].tokens) + 1 for h in fused())
    shape = f"GRU B={B} V={V} H=256 beam={beam} max_len={max_len}"
    rows = []
    for name, fn in ((f"s2s_fused-{backend}", fused), ("torch-eager", eager)):
        rows.append(measure("beam_search decode", name, shape, torch.float32, "decode", fn, device,
                            repeats=repeats, warmup=1,
                            throughput_fn=lambda ms: f"{tokens / ms * 1e3:.0f} tok/s"))
    return rows


def main(argv=None):
    parser = base_parser(__doc__)
    args = parse_args(parser, argv)
    device = torch.device(args.device)
    if args.smoke:
        shapes, dtypes, repeats = [(2, 3, 500)], [torch.float32], args.repeats or 3
        dec = dict(B=2, V=50, beam=2, max_len=4)
    elif device.type == "cpu":
        shapes = [(32, 5, 32000), (1, 4, 32000), (8, 8, 32000), (32, 4, 8000)]
        dtypes, repeats = [torch.float32, torch.bfloat16], args.repeats or 30
        dec = dict(B=16, V=8000, beam=4, max_len=20)
    else:
        shapes = [(B, K, 32000) for B in (1, 32, 128) for K in (4, 8)]
        dtypes, repeats = [torch.float32, torch.bfloat16], args.repeats or 50
        dec = dict(B=64, V=8000, beam=4, max_len=30)
    rows = op_rows(device, shapes, dtypes, repeats)
    rows += decode_rows(device, repeats=max(3, repeats // 5), **dec)
    rows = fill_ratios(rows, "torch-eager")
    print(markdown_table(rows))
    write_results(rows, "beam", args.out, plot=not args.no_plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
