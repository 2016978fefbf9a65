"""``python -m s2s_fused train`` end to end: set-up (or ``--resume``), training with validation every epoch
(:mod:`.train`), the test report of the best checkpoint (:mod:`.evaluate`), the fused vs ``"torch"`` speed
comparison (:mod:`.speed`), then ``report.json`` and ``loss.png`` in ``--out``. Under ``torchrun`` rank 0 alone
reports and writes."""
from __future__ import annotations

import argparse
import contextlib
import gc
import json
import sys
import time
from pathlib import Path

import torch

from .args import RESUMABLE_OVERRIDES
from .checkpoint import LAST, read_checkpoint, save_checkpoint, segmenters_of
from .data import load_corpus
from .errors import UserError
from .evaluate import evaluate, make_validator
from .model import Seq2Seq, make_loss
from .speed import compare_speed
from .train import Dist, Trainer


def _device(args, dist: Dist) -> torch.device:
    if args.device == "cuda":
        return torch.device("cuda", dist.local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def check_backend(backend: str, device) -> None:
    """A named op backend that cannot run here is a UserError now, not a RuntimeError at the first op."""
    if backend in ("fused", "torch", "auto"):
        return
    from ..backend import resolve

    try:
        resolve("rnn_cell", backend, torch.device(device))
    except RuntimeError as e:
        raise UserError(f"--backend {backend}: {e}") from None


def _plot_losses(path, epochs, best_epoch):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(6, 4))
    if epochs:
        xs = [e["epoch"] for e in epochs]
        ax.plot(xs, [e["train_loss"] for e in epochs], "o-", label="train")
        dev = [(e["epoch"], e["dev_loss"]) for e in epochs if e.get("dev_loss") is not None]
        if dev:
            ax.plot([x for x, _ in dev], [v for _, v in dev], "s-", color="tab:red", label="dev")
        if best_epoch is not None:
            ax.axvline(best_epoch, color="gray", ls="--", label=f"best dev BLEU (epoch {best_epoch})")
    ax.set_xlabel("epoch")
    ax.set_ylabel("cross-entropy per target token")
    ax.set_title("s2s_fused seq2seq: train and dev loss")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def resume_args(args, explicit: set[str]):
    """The options of the run saved in ``args.resume``/last.pt, with the ones a resumed run may change taken from
    the command line; any other option given with another value than the run's is an error. Returns
    ``(args, train_state, segmenters)``."""
    obj, path = read_checkpoint(args.resume, default_name=LAST)
    st = obj.get("train_state")
    if not isinstance(st, dict) or not isinstance(st.get("args"), dict):
        raise UserError(f"{path}: no training state to resume from (a best-model checkpoint.pt? resume from the "
                        "folder's last.pt)")
    saved = dict(st["args"])
    for key in sorted(explicit - set(RESUMABLE_OVERRIDES)):
        mine, theirs = getattr(args, key), saved.get(key)
        if (str(mine) if isinstance(mine, Path) else mine) != theirs:
            raise UserError(f"--{key.replace('_', '-')} {mine}: the resumed run used {theirs!r}; only "
                            f"{', '.join('--' + k.replace('_', '-') for k in RESUMABLE_OVERRIDES[:-2])} may change "
                            "on --resume")
    new = argparse.Namespace(**saved)
    for key in RESUMABLE_OVERRIDES:
        setattr(new, key, getattr(args, key))
    new.out = args.out if "out" in explicit else Path(args.resume if Path(args.resume).is_dir() else
                                                      Path(args.resume).parent)
    for key in ("data", "out", "resume"):
        if getattr(new, key) is not None:
            setattr(new, key, Path(getattr(new, key)))
    new.func = args.func
    return new, obj, segmenters_of(obj, path)


def run(args) -> int:
    t_start = time.perf_counter()
    resumed, segmenters = None, None
    if args.resume is not None:
        args, resumed, segmenters = resume_args(args, getattr(args, "_explicit", set()))
    if args.device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is available here (use --device cpu)")
    import importlib.util

    if importlib.util.find_spec("sacrebleu") is None:  # checked before training, not after it
        raise UserError("train reports BLEU with sacrebleu, which is not installed: pip install sacrebleu tqdm "
                        "matplotlib (or the package's [train] extra)")
    if args.subword == "sentencepiece" and importlib.util.find_spec("sentencepiece") is None:
        raise UserError("--subword sentencepiece needs sentencepiece, which is not installed: pip install "
                        "sentencepiece (or the package's [subword] extra)")
    if args.tie_embeddings and args.embed_size != args.hidden_size:
        raise UserError(f"--tie-embeddings: needs --embed-size equal to --hidden-size, got {args.embed_size} and "
                        f"{args.hidden_size}")
    dist = Dist(args.device)
    try:
        return _run(args, dist, t_start, resumed, segmenters)
    finally:
        dist.close()


@contextlib.contextmanager
def loaded_objects_frozen():
    """Inside: every object alive on entry (the corpus's token lists, vocabularies, the model) is out of the cyclic
    garbage collector's reach. They outlive the loop anyway, but each full collection the loop's allocations
    trigger would walk all of them again: on the shipped corpus (~300,000 tracked objects) that was 5 % of the
    fused backend's training step (AMD EPYC, 1 thread, perf). On exit they are handed back to the collector, so
    a caller that goes on (a test session, a notebook) can still reclaim them."""
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def _run(args, dist: Dist, t_start: float, resumed, segmenters) -> int:
    device = _device(args, dist)
    check_backend(args.backend, device)
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
                         test_share=args.test_share, seed=args.seed, bad_lines=args.bad_lines,
                         max_pairs=args.max_pairs, subword=args.subword, vocab_size=args.vocab_size,
                         shared_vocab=args.shared_vocab, segmenters=segmenters)
    if resumed is not None:
        st = resumed["train_state"]
        if st.get("data_fingerprint") != corpus.fingerprint or resumed["src_vocab"] != corpus.src_vocab.idx_to_token \
                or resumed["tgt_vocab"] != corpus.tgt_vocab.idx_to_token:
            data = args.data or "the shipped corpus"
            raise UserError(f"--resume {args.resume}: the data differ from the run's ({data} changed since it was "
                            "saved)")
    for b in corpus.bad_lines[:10]:
        say(f"warning: skipped line {b.lineno}: {b.reason}: {b.text!r}", file=sys.stderr)
    if len(corpus.bad_lines) > 10:
        say(f"warning: skipped {len(corpus.bad_lines) - 10} more malformed lines", file=sys.stderr)

    config = dict(cell=args.cell, attention=args.attention, score=args.score, bidirectional=args.bidirectional,
                  embed_size=args.embed_size, hidden_size=args.hidden_size, num_layers=args.num_layers,
                  dropout=args.dropout, num_steps=args.num_steps, src_vocab_size=len(corpus.src_vocab),
                  tgt_vocab_size=len(corpus.tgt_vocab), tie_embeddings=args.tie_embeddings)
    model = Seq2Seq(config, backend=args.backend).to(device)
    loss_fn = make_loss(args.backend, args.label_smoothing)
    eval_loss = make_loss(args.backend) if args.label_smoothing else loss_fn  # dev/test loss: plain CE
    n_params = sum(p.numel() for p in model.parameters())
    test_note = "" if corpus.test is corpus.dev else f", {len(corpus.test)} test"
    say(f"data: {len(corpus.src)} training pairs, {len(corpus.dev)} dev sources ({len(corpus.dev.pairs[0])} "
        f"references){test_note}; {args.subword} vocab src {len(corpus.src_vocab)} / tgt {len(corpus.tgt_vocab)}")
    parts = "" if args.backend == "torch" else " (layers s2s_fused.nn, cells s2s_fused.nn, loss s2s_fused)"
    say(f"model: {args.cell} {args.attention}{'/' + args.score if args.attention == 'luong' else ''}"
        f"{' bidirectional' if args.bidirectional else ''}, {args.num_layers} layer(s), embed {args.embed_size}, "
        f"hidden {args.hidden_size}, {n_params:,} parameters; backend {args.backend}{parts}; device {device}"
        f"{f', {dist.world} processes (DDP)' if dist.enabled else ''}, {torch.get_num_threads()} thread(s)")

    if dist.main:  # the held-out pairs, for `evaluate --data`
        for name, part in (("dev", corpus.dev), ("test", corpus.test)):
            (args.out / f"{name}.tsv").write_text("".join(f"{s}\t{r}\n" for s, refs in part.items for r in refs),
                                                 encoding="utf-8")
    trainer = Trainer(model, loss_fn, corpus, args, device, dist, make_validator(eval_loss, corpus, device))
    if resumed is not None:
        model.load_state_dict(resumed["model"])
        trainer.load_state_dict(resumed["train_state"])
        # --patience may change on resume: a run that stopped early goes on when the new patience allows it
        trainer.stopped_early = bool(args.patience) and trainer.bad_epochs >= args.patience
        say(f"resumed from {args.resume}: {trainer.epoch} epoch(s) and {trainer.batch} batch(es) done")
    with loaded_objects_frozen():  # training, the test decode and the speed comparison
        log = trainer.fit()
        train_wall = time.perf_counter() - t_start

        if not dist.main:
            dist.barrier()
            return 0
        if trainer.best_model is not None:
            model.load_state_dict(trainer.best_model)  # report and keep the best epoch's weights, not the last
        report = _report(args, model, eval_loss, corpus, device, log, train_wall, dist)
    info = {k: report[k] for k in ("best_epoch", "bleu_greedy", "bleu_beam", "perplexity")}
    info["data"] = str(args.data or "tatoeba-eng-fra-5k")
    ckpt = save_checkpoint(args.out, model, corpus.src_vocab, corpus.tgt_vocab, info,
                           segmenters=(corpus.src_seg, corpus.tgt_seg))
    plotted = _plot_losses(args.out / "loss.png", log.epochs, log.best_epoch)
    (args.out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {ckpt} (best epoch {log.best_epoch}), {args.out / LAST}, {args.out / 'report.json'}"
          + (f", {args.out / 'loss.png'}" if plotted else "")
          + f"\ntotal time {time.perf_counter() - t_start:.0f} s. Translate with:\n"
          f"  python -m s2s_fused translate --checkpoint {args.out} --beam {args.beam} \"go .\"")
    dist.barrier()
    return 0


def _report(args, model, loss_fn, corpus, device, log, train_wall, dist) -> dict:
    model.eval()
    ran = log.epochs[-1]["epoch"] if log.epochs else 0
    best = next((e for e in log.epochs if e["epoch"] == log.best_epoch), None)
    stop = f"stopped early after {ran}" if log.stopped_early else f"trained {ran}"
    print(f"\n{stop} epochs ({log.steps} steps) in {train_wall:.0f} s, {log.tokens_per_s:,.0f} target tokens/s"
          f"{' per process' if dist.enabled else ''}; best epoch {log.best_epoch}"
          + (f": dev BLEU {best['dev_bleu']:.1f}, chrF {best['dev_chrf']:.1f} (greedy)"
             if best and best.get("dev_bleu") is not None else ""))
    ev = evaluate(model, loss_fn, corpus, device, args.beam)
    report = {"config": dict(model.config), "backend": args.backend, "subword": args.subword,
              "epochs_run": ran, "best_epoch": log.best_epoch, "stopped_early": log.stopped_early,
              "steps": log.steps, "train_pairs": len(corpus.src), "dev_sources": len(corpus.dev),
              "test_sources": len(corpus.test), "test_is_dev": corpus.test is corpus.dev,
              "dev_bleu": best.get("dev_bleu") if best else None, "dev_chrf": best.get("dev_chrf") if best else None,
              "dev_loss": best.get("dev_loss") if best else None, "train_tokens_per_s": log.tokens_per_s,
              "train_seconds": train_wall, "world_size": dist.world, "bleu_greedy": None, "bleu_beam": None,
              "epochs": log.epochs}
    report.update(ev)
    if args.compare_steps > 0:
        report.update(compare_speed(model, corpus, args, device))
    model.train()
    return report
