"""``python -m s2s_fused train`` end to end: set-up, training (:mod:`.train`), held-out evaluation
(:mod:`.evaluate`), the fused vs ``"torch"`` speed comparison (:mod:`.speed`), then the checkpoint, ``report.json``
and ``loss.png`` in ``--out``. Under ``torchrun`` rank 0 alone evaluates and writes."""
from __future__ import annotations

import json
import sys
import time

import torch

from .checkpoint import save_checkpoint
from .data import load_corpus
from .errors import UserError
from .evaluate import evaluate
from .model import Seq2Seq, make_loss
from .speed import compare_speed
from .train import Dist, train


def _device(args, dist: Dist) -> torch.device:
    if args.device == "cuda":
        return torch.device("cuda", dist.local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def _check_backend(backend: str, device: torch.device) -> None:
    if backend in ("fused", "torch", "auto"):
        return
    from ..backend import resolve

    try:
        resolve("rnn_cell", backend, device)
    except RuntimeError as e:
        raise UserError(f"--backend {backend}: {e}") from None


def _plot_losses(path, step_losses, epoch_losses, heldout):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(6, 4))
    if step_losses:
        ax.plot([s for s, _ in step_losses], [v for _, v in step_losses], lw=0.6, alpha=0.5, label="batch")
    if epoch_losses:
        ax.plot([s for s, _ in epoch_losses], [v for _, v in epoch_losses], "o-", label="epoch mean")
    if heldout is not None and epoch_losses:
        ax.axhline(heldout, color="tab:red", ls="--", label=f"held-out ({heldout:.2f})")
    ax.set_xlabel("training step")
    ax.set_ylabel("cross-entropy per target token")
    ax.set_title("s2s_fused seq2seq training loss")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def run(args) -> int:
    t_start = time.perf_counter()
    if args.epochs < 0 or args.batch_size < 1:
        raise UserError("--epochs must be >= 0 and --batch-size >= 1")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is available here (use --device cpu)")
    import importlib.util

    if importlib.util.find_spec("sacrebleu") is None:  # checked before training, not after it
        raise UserError("train reports BLEU with sacrebleu, which is not installed: pip install sacrebleu tqdm "
                        "matplotlib (or the package's [train] extra)")
    dist = Dist(args.device)
    try:
        return _run(args, dist, t_start)
    finally:
        dist.close()


def _run(args, dist: Dist, t_start: float) -> int:
    device = _device(args, dist)
    _check_backend(args.backend, device)
    if args.backend not in ("fused", "torch", "auto"):
        # An explicit op backend (cpu, cuda, triton, reference) becomes the process default, so every fused op of
        # the run (layers, cells, loss, beam search) uses it; the "torch" comparison model uses no s2s_fused op.
        from ..backend import set_backend

        set_backend(args.backend)
    if args.threads > 0 or device.type == "cpu":
        torch.set_num_threads(args.threads if args.threads > 0 else 1)
    # The fused flavour used for the comparison: the one asked for, or "fused" when training on torch.
    args.backend_fused = args.backend if args.backend != "torch" else "fused"
    torch.manual_seed(args.seed)
    say = print if dist.main else (lambda *a, **k: None)

    if dist.main:  # an unwritable --out is found now, not after training
        try:
            args.out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"--out {args.out}: cannot create the output folder ({e.strerror})") from None
    corpus = load_corpus(args.data, num_steps=args.num_steps, min_freq=args.min_freq, heldout_fraction=args.heldout,
                         seed=args.seed, bad_lines=args.bad_lines, max_pairs=args.max_pairs)
    for b in corpus.bad_lines[:10]:
        say(f"warning: skipped line {b.lineno}: {b.reason}: {b.text!r}", file=sys.stderr)
    if len(corpus.bad_lines) > 10:
        say(f"warning: skipped {len(corpus.bad_lines) - 10} more malformed lines", file=sys.stderr)

    config = dict(cell=args.cell, attention=args.attention, score=args.score, bidirectional=args.bidirectional,
                  embed_size=args.embed_size, hidden_size=args.hidden_size, num_layers=args.num_layers,
                  dropout=args.dropout, num_steps=args.num_steps, src_vocab_size=len(corpus.src_vocab),
                  tgt_vocab_size=len(corpus.tgt_vocab))
    model = Seq2Seq(config, backend=args.backend).to(device)
    loss_fn = make_loss(args.backend)
    n_params = sum(p.numel() for p in model.parameters())
    say(f"data: {len(corpus.src)} training pairs, {len(corpus.heldout)} held-out sources "
        f"({len(corpus.heldout_pairs[0])} references); vocab src {len(corpus.src_vocab)} / "
        f"tgt {len(corpus.tgt_vocab)}")
    parts = "" if args.backend == "torch" else " (layers s2s_fused.nn, cells s2s_fused.nn, loss s2s_fused)"
    say(f"model: {args.cell} {args.attention}{'/' + args.score if args.attention == 'luong' else ''}"
        f"{' bidirectional' if args.bidirectional else ''}, {args.num_layers} layer(s), embed {args.embed_size}, "
        f"hidden {args.hidden_size}, {n_params:,} parameters; backend {args.backend}{parts}; device {device}"
        f"{f', {dist.world} processes (DDP)' if dist.enabled else ''}, {torch.get_num_threads()} thread(s)")

    log = train(model, loss_fn, corpus, args, device, dist)
    train_wall = time.perf_counter() - t_start

    if not dist.main:
        dist.barrier()
        return 0
    report = _report(args, model, loss_fn, corpus, device, log, train_wall, dist)
    args.out.mkdir(parents=True, exist_ok=True)
    ckpt = save_checkpoint(args.out, model, corpus.src_vocab, corpus.tgt_vocab,
                           info={"bleu_greedy": report["bleu_greedy"], "perplexity": report["perplexity"],
                                 "epochs": args.epochs, "data": str(args.data or "tatoeba-eng-fra-5k")})
    plotted = _plot_losses(args.out / "loss.png", log.step_losses, log.epoch_losses, report.get("heldout_loss"))
    (args.out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {ckpt}, {args.out / 'report.json'}" + (f", {args.out / 'loss.png'}" if plotted else "")
          + f"\ntotal time {time.perf_counter() - t_start:.0f} s. Translate with:\n"
          f"  python -m s2s_fused translate --checkpoint {args.out} --beam {args.beam} \"go .\"")
    dist.barrier()
    return 0


def _report(args, model, loss_fn, corpus, device, log, train_wall, dist) -> dict:
    model.eval()
    last_loss = log.epoch_losses[-1][1] if log.epoch_losses else None
    print(f"\ntrained {args.epochs} epochs ({log.steps} steps) in {train_wall:.0f} s, {log.tokens_per_s:,.0f} "
          f"target tokens/s{' per process' if dist.enabled else ''}; last epoch loss "
          f"{last_loss if log.epoch_losses else float('nan'):.3f}")
    ev = evaluate(model, loss_fn, corpus, device, args.beam)
    report = {"config": dict(model.config), "backend": args.backend, "epochs": args.epochs, "steps": log.steps,
              "train_pairs": len(corpus.src), "heldout_sources": len(corpus.heldout),
              "train_loss_last_epoch": last_loss, "heldout_loss": ev["heldout_loss"],
              "perplexity": ev["perplexity"], "train_tokens_per_s": log.tokens_per_s,
              "train_seconds": train_wall, "world_size": dist.world, "bleu_greedy": None, "bleu_beam": None}
    report.update(ev)
    if args.compare_steps > 0:
        report.update(compare_speed(model, corpus, args, device))
    model.train()
    return report
