"""Attention of one decoder step: ``s2s_fused.additive_attention`` vs the eager torch chain the seq2seq model ran
before (query projection, tanh over (B, S, H), score GEMV, masked softmax, bmm), and ``s2s_fused.dot_attention``
vs the eager Luong chain the torch backend runs (bmm scores, masked softmax, bmm), side by side in one run,
forward and forward+backward, timed interleaved.

Shapes: the default train model's decoder step (H=128 attention units, values = the bidirectional encoder's
2H = 256, or the GRU's input gates 3H = 384 as the fused decoder step attends over them) at training (B=64) and
beam-4 decoding (N=128) sizes, source length 10 (d2l) and 50; a small-batch decode (N=4); and beam-4 decoding of
128 sentences as the fused decoder runs it, N=512 query rows over keys and values kept once per sentence (R=4
rows per source row), against the eager chain over the keys and values expanded to N rows (the torch model's
decoding state). Dot (Luong) attention at the seq2seq benchmark's Luong decoder shape (H=256, values = the
bidirectional encoder's 2H = 512): training (B=64), beam-4 decoding of 32 sentences (N=128, R=4), a small
batch (B=4).

    PYTHONPATH=. python benchmarks/bench_attention.py [--smoke] [--device cuda] [--threads N] [--out DIR]
"""
from __future__ import annotations

import sys

import torch

from common import base_parser, parse_args, fill_ratios, interleaved_rows, markdown_table, threads_note, write_results

import s2s_fused
from s2s_fused.backend import is_available


def eager_attention(query, keys, values, w_q, v, valid_len):
    """The d2l / seq2seq-model chain: masked softmax with a -1e6 fill."""
    scores = torch.tanh(keys + (query @ w_q.t())[:, None, :]) @ v
    mask = torch.arange(keys.shape[1], device=keys.device)[None, :] < valid_len[:, None]
    weights = torch.softmax(scores.masked_fill(~mask, -1e6), dim=-1)
    return torch.bmm(weights[:, None, :], values)[:, 0], weights


def eager_dot_attention(query, keys, values, valid_len):
    """The seq2seq model's Luong step on the torch backend: bmm scores, masked softmax (-1e6 fill), bmm context."""
    scores = torch.bmm(keys, query[:, :, None])[..., 0]
    mask = torch.arange(keys.shape[1], device=keys.device)[None, :] < valid_len[:, None]
    weights = torch.softmax(scores.masked_fill(~mask, -1e6), dim=-1)
    return torch.bmm(weights[:, None, :], values)[:, 0], weights


def providers(device, kind):
    out = {"torch-eager": eager_attention if kind == "additive" else eager_dot_attention}
    names = ["cpu"] if device.type == "cpu" else [b for b in ("cuda", "triton") if is_available(b)]
    fn = s2s_fused.additive_attention if kind == "additive" else s2s_fused.dot_attention
    for b in names:
        out[f"s2s_fused-{b}"] = lambda *a, b=b: fn(*a, backend=b)
    return out


def rows_for(device, B, S, H, Hq, Dv, dtype, repeats, R=1, kind="additive"):
    """B source rows; R > 1: B*R query rows, R per source row (the eager chain gets the sources expanded).
    kind "dot": query (B*R, H), keys and values only (Hq unused)."""
    g = torch.Generator().manual_seed(0)
    mk = lambda *s: torch.randn(*s, generator=g).to(dtype).to(device)  # noqa: E731
    if kind == "dot":
        tensors = [mk(B * R, H) * H ** -0.5, mk(B, S, H), mk(B, S, Dv)]
    else:
        tensors = [mk(B * R, Hq), mk(B, S, H), mk(B, S, Dv), mk(H, Hq) * 0.1, mk(H)]
    valid_len = torch.randint(max(1, S // 2), S + 1, (B,), generator=g).to(device)
    gc = mk(B * R, Dv)
    expanded = [tensors[0]] + [t.repeat_interleave(R, 0) for t in tensors[1:3]] + tensors[3:]
    inputs = {"torch-eager": (expanded, valid_len.repeat_interleave(R))}

    def fwd(name, fn):
        xs, vl = inputs.get(name, (tensors, valid_len))

        def run():
            with torch.no_grad():
                return fn(*xs, vl)
        return run

    def fwd_bwd(name, fn):
        xs, vl = inputs.get(name, (tensors, valid_len))
        leaves = [t.clone().requires_grad_() for t in xs]

        def run():
            ctx, _ = fn(*leaves, vl)
            return torch.autograd.grad(ctx, leaves, gc)
        return run

    by_mode = {"fwd": {n: fwd(n, f) for n, f in providers(device, kind).items()},
               "fwd+bwd": {n: fwd_bwd(n, f) for n, f in providers(device, kind).items()}}
    dims = f"S={S} H={H} Hq={Hq} Dv={Dv}" if kind == "additive" else f"S={S} H={H} Dv={Dv}"
    shape = f"B={B} {dims}" if R == 1 else f"N={B * R} (R={R}) {dims}"
    return interleaved_rows(f"{kind}_attention", shape, dtype, by_mode, device, repeats=repeats,
                            label="attention")


def main(argv=None):
    parser = base_parser(__doc__.split("\n")[0])
    args = parse_args(parser, argv)
    device = torch.device(args.device)
    if args.smoke:
        shapes = [(3, 5, 8, 8, 6), (3, 5, 8, 8, 6, 2), (3, 5, 8, 8, 6, 1, "dot"), (3, 5, 8, 8, 6, 2, "dot")]
        dtypes, repeats = [torch.float32], args.repeats or 3
    else:
        shapes = [(64, 10, 128, 128, 256), (128, 10, 128, 128, 384), (64, 50, 128, 128, 256), (4, 10, 128, 128, 384),
                  (64, 10, 256, 256, 512), (128, 10, 128, 128, 384, 4), (64, 10, 256, 256, 512, 1, "dot"),
                  (32, 10, 256, 256, 512, 4, "dot"), (4, 10, 256, 256, 512, 1, "dot")]
        dtypes, repeats = [torch.float32], args.repeats or 50
        if device.type == "cuda":
            dtypes.append(torch.bfloat16)
    rows = []
    for B, S, H, Hq, Dv, *extra in shapes:
        for dtype in dtypes:
            rows += rows_for(device, B, S, H, Hq, Dv, dtype, repeats, *extra)
    rows = fill_ratios(rows, "torch-eager")
    print(f"# attention ({threads_note()})\n")
    print(markdown_table(rows))
    write_results(rows, "attention", args.out, plot=not args.no_plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
