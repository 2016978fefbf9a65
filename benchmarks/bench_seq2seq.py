"""The whole seq2seq model: one training step (teacher-forced forward, backward, Adam) and beam-search decoding,
the fused backend against the ``"torch"`` backend (torch.nn + eager loss and beam search; cuDNN on GPU), same
weights and inputs, measured in the same run. Shape: d2l's (B=64, T=10, H=256), vocabularies of 2,000 tokens.

    python benchmarks/bench_seq2seq.py [--device cpu|cuda] [--smoke] [--out DIR]
"""
from __future__ import annotations

import torch

from common import base_parser, parse_args, fill_ratios, interleaved_rows, markdown_table, threads_note, write_results

from s2s_fused.backend import resolve
from s2s_fused.seq2seq.model import Seq2Seq, make_loss
from s2s_fused.seq2seq.train import Adam, train_step
from s2s_fused.seq2seq.translate import translate_ids


def models(cfg, device):
    fused = Seq2Seq(cfg, backend="fused").to(device)
    eager = Seq2Seq(cfg, backend="torch").to(device)
    eager.load_state_dict(fused.state_dict())
    return {"fused": fused, "torch": eager}


def main(argv=None) -> int:
    p = base_parser(__doc__.split("\n")[0])
    args = parse_args(p, argv)
    device = torch.device(args.device)
    if args.smoke:
        B, T, E, H, V, K, n_dec, repeats = 4, 5, 8, 16, 50, 2, 4, args.repeats or 3
        variants = [("gru", "bahdanau")]
    else:
        B, T, E, H, V, K, n_dec, repeats = 64, 10, 64, 256, 2000, 4, 32, args.repeats or 10
        variants = [("gru", "none"), ("gru", "bahdanau"), ("lstm", "luong")]
    fused_name = "s2s_fused-" + resolve("rnn_cell", None, device)
    base_name = "torch-cudnn" if device.type == "cuda" else "torch-eager"
    g = torch.Generator().manual_seed(0)
    src = torch.randint(4, V, (B, T), generator=g).to(device)
    tgt = torch.randint(4, V, (B, T), generator=g).to(device)
    lens = torch.randint(T // 2, T + 1, (B,), generator=g).to(device)
    rows = []
    for cell, attention in variants:
        cfg = dict(cell=cell, attention=attention, embed_size=E, hidden_size=H, num_layers=1, dropout=0.0,
                   num_steps=T, src_vocab_size=V, tgt_vocab_size=V)
        shape = f"{cell}/{attention} B={B} T={T} H={H} V={V}"
        # Both backends timed in alternation (benchmarks/common.time_interleaved), so load hits them alike.
        ms = {(fused_name if name == "fused" else base_name): m for name, m in models(cfg, device).items()}
        train = {}
        for provider, m in ms.items():
            opt = Adam(m.parameters(), lr=1e-3)
            loss_fn = make_loss("torch" if provider == base_name else "fused")
            train[provider] = lambda m=m, loss_fn=loss_fn, opt=opt: train_step(m, loss_fn, opt, (src, lens, tgt, lens),
                                                                                1.0)
        got = interleaved_rows("seq2seq train step", shape, torch.float32, {"fwd+bwd+adam": train}, device,
                               repeats=repeats, label="seq2seq")
        for r in got:
            r.throughput = f"{int(lens.sum()) / r.median_ms * 1e3:,.0f} tok/s"
        rows += got
        for m in ms.values():
            m.eval()
        decode = {provider: (lambda m=m: translate_ids(m, src[:n_dec], lens[:n_dec], beam=K, max_len=T))
                  for provider, m in ms.items()}
        got = interleaved_rows(f"seq2seq beam-{K} decode", shape.replace(f"B={B}", f"B={n_dec}"), torch.float32,
                               {"inference": decode}, device, repeats=repeats, label="seq2seq")
        for r in got:
            r.throughput = f"{n_dec / r.median_ms * 1e3:,.1f} sent/s"
        rows += got
    fill_ratios(rows, base_name)
    print(f"# seq2seq ({threads_note()})\n")
    print(markdown_table(rows))
    write_results(rows, "seq2seq", args.out, plot=not args.no_plot)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
