"""``python -m s2s_fused train``: train the encoder-decoder, report held-out BLEU / perplexity, translations, and the
training (and beam-decoding) speed of the fused model against the ``"torch"`` backend, measured in the same run.

Distributed: under ``torchrun --nproc_per_node=N`` every rank trains on its shard of each epoch with
DistributedDataParallel (gloo on CPU, nccl on CUDA); rank 0 alone evaluates and writes the checkpoint and report.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import time
from pathlib import Path

import torch

from .checkpoint import save_checkpoint
from .data import Vocab, load_corpus, shard_batches, tokenize
from .errors import UserError
from .model import ATTENTIONS, BACKENDS, CELLS, SCORES, DEFAULT_CONFIG, Seq2Seq, make_loss

DEFAULTS = dict(epochs=20, batch_size=64, lr=0.005, clip=1.0, min_freq=1, heldout=0.1, seed=0, beam=4,
                compare_steps=20)


def add_arguments(p) -> None:
    c = DEFAULT_CONFIG
    p.add_argument("--cell", choices=CELLS, default=c["cell"], help="recurrent cell (default: %(default)s)")
    p.add_argument("--attention", choices=ATTENTIONS, default=c["attention"],
                   help="none: d2l context concatenation; bahdanau: additive; luong: dot/general "
                        "(default: %(default)s)")
    p.add_argument("--score", choices=SCORES, default=c["score"], help="Luong score (default: %(default)s)")
    p.add_argument("--bidirectional", action=argparse.BooleanOptionalAction, default=c["bidirectional"],
                   help="bidirectional encoder, final states joined by a linear layer into the decoder's "
                        "(default: %(default)s)")
    p.add_argument("--backend", choices=BACKENDS, default="fused",
                   help="fused: s2s_fused modules (op backend chosen automatically; or name one: cpu, cuda, "
                        "triton, reference); torch: torch.nn + eager loss and beam search (default: %(default)s)")
    p.add_argument("--epochs", type=int, default=DEFAULTS["epochs"])
    p.add_argument("--batch-size", type=int, default=DEFAULTS["batch_size"])
    p.add_argument("--lr", type=float, default=DEFAULTS["lr"])
    p.add_argument("--clip", type=float, default=DEFAULTS["clip"], help="gradient-norm clipping (0: off)")
    p.add_argument("--embed-size", type=int, default=c["embed_size"])
    p.add_argument("--hidden-size", type=int, default=c["hidden_size"])
    p.add_argument("--num-layers", type=int, default=c["num_layers"])
    p.add_argument("--dropout", type=float, default=c["dropout"])
    p.add_argument("--num-steps", type=int, default=c["num_steps"], help="truncate/pad length in tokens")
    p.add_argument("--min-freq", type=int, default=DEFAULTS["min_freq"],
                   help="keep tokens seen at least this often in training (default: %(default)s; 2, d2l's, turns "
                        "many of this small corpus's words into <unk>: ~8 BLEU lower here)")
    p.add_argument("--heldout", type=float, default=DEFAULTS["heldout"],
                   help="fraction of distinct English sources held out (default: %(default)s)")
    p.add_argument("--seed", type=int, default=DEFAULTS["seed"])
    p.add_argument("--beam", type=int, default=DEFAULTS["beam"], help="beam size for the beam-search report")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--data", type=Path, default=None,
                   help="tab-separated source<TAB>target[<TAB>...] file (default: the shipped Tatoeba eng-fra 5k)")
    p.add_argument("--bad-lines", choices=("error", "skip"), default="error",
                   help="malformed data lines: reject the file (error) or skip them with a warning")
    p.add_argument("--max-pairs", type=int, default=None, help="use only the first N pairs")
    p.add_argument("--out", type=Path, default=Path("runs/latest"), help="checkpoint/report folder")
    p.add_argument("--compare-steps", type=int, default=DEFAULTS["compare_steps"],
                   help="timed training steps per backend for the fused vs torch comparison (0: skip)")
    p.add_argument("--threads", type=int, default=0,
                   help="CPU threads for torch (default 0: 1 on CPU, as the per-step ops of this model are too "
                        "small to gain from intra-op threads and a shared machine makes them spin)")
    p.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")


# ------------------------------------------------------------------------------------------------ distributed
class Dist:
    def __init__(self, device_kind: str):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.enabled = self.world > 1
        if self.enabled:
            import torch.distributed as dist

            if device_kind == "cuda":
                torch.cuda.set_device(self.local_rank % torch.cuda.device_count())  # NCCL uses the current one
            dist.init_process_group("nccl" if device_kind == "cuda" else "gloo")

    @property
    def main(self):
        return self.rank == 0

    def barrier(self):
        if self.enabled:
            import torch.distributed as dist

            dist.barrier()

    def close(self):
        if self.enabled:
            import torch.distributed as dist

            dist.destroy_process_group()


def _device(args, dist: Dist) -> torch.device:
    if args.device == "cuda":
        if not torch.cuda.is_available():
            raise UserError("--device cuda: no CUDA device is available here (use --device cpu)")
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


# ------------------------------------------------------------------------------------------------ steps
def train_step(model, loss_fn, optimizer, batch, clip: float, bos: int = Vocab.bos):
    """One teacher-forced step; returns (summed token CE as a tensor, number of target tokens)."""
    src, src_len, tgt, tgt_len = batch
    dec_in = torch.cat([torch.full_like(tgt[:, :1], bos), tgt[:, :-1]], 1)
    logits = model(src, src_len, dec_in)
    per_seq = loss_fn(logits, tgt, tgt_len)                  # (B,): masked CE summed over steps / T
    n_tok = tgt_len.sum()
    token_sum = per_seq.sum() * tgt.shape[1]
    optimizer.zero_grad(set_to_none=True)
    (token_sum / n_tok.clamp(min=1)).backward()                # mean CE per target token
    if clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    optimizer.step()
    return token_sum.detach(), n_tok


def trim_target(batch):
    """Drop the target columns that are padding in every row: the decoder then runs max(tgt_len) steps, not
    num_steps. Exact: outputs at step t never depend on later steps, and the token sum of the loss is the same.
    (The source is not trimmed: the encoder's final state would then depend on the batch's padding.)"""
    src, src_len, tgt, tgt_len = batch
    t = max(int(tgt_len.max()), 1) if len(tgt_len) else tgt.shape[1]
    return src, src_len, tgt[:, :t], tgt_len


@torch.no_grad()
def heldout_loss(model, loss_fn, tensors, device, batch_size=512) -> float:
    """Mean per-token cross-entropy (teacher forced) over every held-out (source, reference) pair."""
    model.eval()
    src, src_len, tgt, tgt_len = tensors
    total, n = 0.0, 0
    for i in range(0, len(src), batch_size):
        b = [t[i:i + batch_size].to(device) for t in (src, src_len, tgt, tgt_len)]
        dec_in = torch.cat([torch.full_like(b[2][:, :1], Vocab.bos), b[2][:, :-1]], 1)
        per_seq = loss_fn(model(b[0], b[1], dec_in), b[2], b[3])
        total += float(per_seq.sum()) * b[2].shape[1]
        n += int(b[3].sum())
    model.train()
    return total / max(n, 1)


def detokenize(text: str) -> str:
    """Undo d2l's "space before ,.!?" (sacrebleu's 13a tokenizer splits the punctuation again)."""
    return re.sub(r" ([,.!?])", r"\1", text)


def corpus_bleu(hyps: list[str], refs: list[list[str]]):
    """sacrebleu corpus BLEU (default 13a tokenizer) against every reference of each hypothesis. Inputs are
    d2l-preprocessed (lower-case, tokenised) text; both sides are detokenised the same way first."""
    import sacrebleu

    hyps = [detokenize(h) for h in hyps]
    refs = [[detokenize(r) for r in rs] for rs in refs]
    n = max(len(r) for r in refs)
    streams = [[r[i] if i < len(r) else None for r in refs] for i in range(n)]
    # sacrebleu takes reference *streams* parallel to the hypotheses; a missing reference is None.
    bleu = sacrebleu.metrics.BLEU()
    score = bleu.corpus_score(hyps, streams)
    return score, bleu.get_signature()


# ------------------------------------------------------------------------------------------------ speed
def _batches_for_timing(corpus, batch_size, n, device, seed):
    batches = shard_batches(len(corpus.src), batch_size, epoch=10_000, seed=seed, lengths=corpus.tgt_len)
    out = []
    for idx in (batches * (n // max(len(batches), 1) + 1))[:n]:
        b = trim_target(tuple(t[idx] for t in (corpus.src, corpus.src_len, corpus.tgt, corpus.tgt_len)))
        out.append(tuple(t.to(device) for t in b))
    return out


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def compare_training_speed(trained, corpus, args, device, rounds=3):
    """Tokens/s of training steps on the fused and the torch backend, same weights, same batches, interleaved in
    ``rounds`` so both see the same machine load. The trained model is not modified."""
    n_per = max(1, args.compare_steps // rounds)
    batches = _batches_for_timing(corpus, args.batch_size, n_per, device, args.seed)
    state = {k: v.detach().clone() for k, v in trained.state_dict().items()}
    runs = {}
    for name in ("fused", "torch"):
        m = Seq2Seq(trained.config, backend="torch" if name == "torch" else args.backend_fused).to(device)
        m.load_state_dict(state)
        m.train()
        opt = torch.optim.Adam(m.parameters(), lr=args.lr)
        loss_fn = make_loss("torch" if name == "torch" else "fused")
        train_step(m, loss_fn, opt, batches[0], args.clip)  # warm-up (first-call costs)
        runs[name] = (m, opt, loss_fn, [0.0, 0])
    for _ in range(rounds):
        for name, (m, opt, loss_fn, acc) in runs.items():
            _sync(device)
            t0 = time.perf_counter()
            ntok = 0
            for b in batches:
                _, n = train_step(m, loss_fn, opt, b, args.clip)
                ntok += int(n)
            _sync(device)
            acc[0] += time.perf_counter() - t0
            acc[1] += ntok
    return {name: acc[1] / acc[0] for name, (_, _, _, acc) in runs.items()}


def compare_decoding_speed(trained, corpus, args, device, n_sent=128, rounds=2):
    """Beam-search sentences/s on both backends (same weights, same held-out sources)."""
    from .translate import translate_ids

    src = corpus.heldout_src[:n_sent].to(device)
    src_len = corpus.heldout_src_len[:n_sent].to(device)
    if len(src) == 0:
        return {}
    state = {k: v.detach().clone() for k, v in trained.state_dict().items()}
    models = {}
    for name in ("fused", "torch"):
        m = Seq2Seq(trained.config, backend="torch" if name == "torch" else args.backend_fused).to(device)
        m.load_state_dict(state)
        m.eval()
        translate_ids(m, src[:4], src_len[:4], beam=args.beam)  # warm-up
        models[name] = [m, 0.0]
    for _ in range(rounds):
        for name, acc in models.items():
            _sync(device)
            t0 = time.perf_counter()
            translate_ids(acc[0], src, src_len, beam=args.beam)
            _sync(device)
            acc[1] += time.perf_counter() - t0
    return {name: rounds * len(src) / acc[1] for name, acc in models.items()}


# ------------------------------------------------------------------------------------------------ main
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

    train_model = model
    if dist.enabled:
        from torch.nn.parallel import DistributedDataParallel as DDP

        train_model = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    data = (corpus.src, corpus.src_len, corpus.tgt, corpus.tgt_len)

    step_losses, epoch_losses = [], []
    step, tok_total, train_time = 0, 0, 0.0
    pbar = None
    n_batches = len(shard_batches(len(corpus.src), args.batch_size, epoch=0, seed=args.seed, rank=dist.rank,
                                  world_size=dist.world, lengths=corpus.tgt_len))
    if dist.main and not args.no_progress:
        try:
            from tqdm import tqdm

            pbar = tqdm(total=args.epochs * n_batches, desc="train", unit="batch", dynamic_ncols=True,
                        file=sys.stderr)
        except ImportError:
            pbar = None
    model.train()
    for epoch in range(args.epochs):
        ep_sum, ep_tok = 0.0, 0
        batches = shard_batches(len(corpus.src), args.batch_size, epoch=epoch, seed=args.seed, rank=dist.rank,
                                world_size=dist.world, lengths=corpus.tgt_len)
        for idx in batches:
            t0 = time.perf_counter()
            batch = trim_target(tuple(t[idx] for t in data))
            batch = tuple(t.to(device, non_blocking=True) for t in batch)
            token_sum, n_tok = train_step(train_model, loss_fn, optimizer, batch, args.clip)
            ls, nt = float(token_sum), int(n_tok)  # host sync once per step, for the progress report
            train_time += time.perf_counter() - t0
            step += 1
            ep_sum += ls
            ep_tok += nt
            tok_total += nt
            step_losses.append((step, ls / max(nt, 1)))
            if pbar is not None:
                pbar.update(1)
                pbar.set_postfix(epoch=f"{epoch + 1}/{args.epochs}", loss=f"{ls / max(nt, 1):.3f}",
                                 tok_s=f"{tok_total / max(train_time, 1e-9):,.0f}", refresh=False)
        epoch_losses.append((step, ep_sum / max(ep_tok, 1)))
    if pbar is not None:
        pbar.close()
    tok_s = tok_total / max(train_time, 1e-9)
    train_wall = time.perf_counter() - t_start

    if not dist.main:
        dist.barrier()
        return 0
    report = _report(args, model, loss_fn, corpus, device, epoch_losses, tok_s, train_wall, step, dist)
    args.out.mkdir(parents=True, exist_ok=True)
    ckpt = save_checkpoint(args.out, model, corpus.src_vocab, corpus.tgt_vocab,
                           info={"bleu_greedy": report["bleu_greedy"], "perplexity": report["perplexity"],
                                 "epochs": args.epochs, "data": str(args.data or "tatoeba-eng-fra-5k")})
    plotted = _plot_losses(args.out / "loss.png", step_losses, epoch_losses, report.get("heldout_loss"))
    (args.out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {ckpt}, {args.out / 'report.json'}" + (f", {args.out / 'loss.png'}" if plotted else "")
          + f"\ntotal time {time.perf_counter() - t_start:.0f} s. Translate with:\n"
          f"  python -m s2s_fused translate --checkpoint {args.out} --beam {args.beam} \"go .\"")
    dist.barrier()
    return 0


def _report(args, model, loss_fn, corpus, device, epoch_losses, tok_s, train_wall, steps, dist) -> dict:
    from .translate import translate_ids

    model.eval()
    ho_loss = heldout_loss(model, loss_fn, corpus.heldout_pairs, device) if corpus.heldout else float("nan")
    ppl = math.exp(min(ho_loss, 50.0)) if ho_loss == ho_loss else float("nan")
    report = {"config": dict(model.config), "backend": args.backend, "epochs": args.epochs, "steps": steps,
              "train_pairs": len(corpus.src), "heldout_sources": len(corpus.heldout),
              "train_loss_last_epoch": epoch_losses[-1][1] if epoch_losses else None,
              "heldout_loss": ho_loss, "perplexity": ppl, "train_tokens_per_s": tok_s,
              "train_seconds": train_wall, "world_size": dist.world,
              "bleu_greedy": None, "bleu_beam": None}
    print(f"\ntrained {args.epochs} epochs ({steps} steps) in {train_wall:.0f} s, {tok_s:,.0f} target tokens/s"
          f"{' per process' if dist.enabled else ''}; last epoch loss "
          f"{report['train_loss_last_epoch'] if epoch_losses else float('nan'):.3f}")
    if corpus.heldout:
        # Hypotheses are d2l-tokenised lower-case text, so the references are put in the same form.
        refs = [[" ".join(tokenize(t)) for t in refs_] for _, refs_ in corpus.heldout]
        src, src_len = corpus.heldout_src.to(device), corpus.heldout_src_len.to(device)
        t0 = time.perf_counter()
        greedy = translate_ids(model, src, src_len, beam=1)
        t_greedy = time.perf_counter() - t0
        t0 = time.perf_counter()
        beam = translate_ids(model, src, src_len, beam=args.beam) if args.beam > 1 else greedy
        t_beam = time.perf_counter() - t0
        g_txt = [" ".join(corpus.tgt_vocab.decode(r[0][0])) for r in greedy]
        b_txt = [" ".join(corpus.tgt_vocab.decode(r[0][0])) for r in beam]
        bg, sig = corpus_bleu(g_txt, refs)
        bb, _ = corpus_bleu(b_txt, refs)
        report.update(bleu_greedy=bg.score, bleu_beam=bb.score, bleu_signature=str(sig),
                      heldout_decode_seconds={"greedy": t_greedy, "beam": t_beam})
        print(f"held-out ({len(corpus.heldout)} unseen English sources, all their French translations as "
              f"references): perplexity {ppl:.2f} (loss {ho_loss:.3f}/token)")
        print(f"  BLEU greedy {bg.score:.1f}   BLEU beam-{args.beam} {bb.score:.1f}   [sacrebleu {sig}]")
        print("examples (source => greedy | beam; one reference):")
        for i in range(min(6, len(corpus.heldout))):
            j = (i * 37) % len(corpus.heldout)
            print(f"  {corpus.heldout[j][0]!s:28s} => {g_txt[j]:28s} | {b_txt[j]:28s} (ref: {refs[j][0]})")
    if args.compare_steps > 0:
        print(f"speed, same weights and batches, measured now "
              f"({args.compare_steps} training steps per backend, interleaved):")
        sp = compare_training_speed(model, corpus, args, device)
        report["compare_train_tokens_per_s"] = sp
        print(f"  training: fused ({args.backend_fused}) {sp['fused']:,.0f} tok/s, torch {sp['torch']:,.0f} tok/s "
              f"-> {sp['fused'] / sp['torch']:.2f}x")
        if corpus.heldout and args.beam > 1:
            ds = compare_decoding_speed(model, corpus, args, device)
            report["compare_beam_sentences_per_s"] = ds
            print(f"  beam-{args.beam} decoding: fused {ds['fused']:,.1f} sent/s, torch {ds['torch']:,.1f} sent/s "
                  f"-> {ds['fused'] / ds['torch']:.2f}x")
    model.train()
    return report
