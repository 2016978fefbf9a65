"""The fused model's speed against the same model on the ``"torch"`` backend (torch.nn, eager loss and beam
search), same weights and inputs, measured in the same run with the two backends interleaved so both see the same
machine load. The trained model is not modified."""
from __future__ import annotations

import time

import torch

from .data import shard_batches
from .model import Seq2Seq, make_loss
from .train import Adam, train_step, trim_target
from .translate import translate_ids


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


def _copies(trained, args, device):
    """{"fused": the trained model on ``args.backend_fused``, "torch": on the "torch" backend}, same weights."""
    state = {k: v.detach().clone() for k, v in trained.state_dict().items()}
    models = {}
    for name in ("fused", "torch"):
        m = Seq2Seq(trained.config, backend="torch" if name == "torch" else args.backend_fused).to(device)
        m.load_state_dict(state)
        models[name] = m
    return models


def compare_training_speed(trained, corpus, args, device, rounds=3):
    """Target tokens/s of ``args.compare_steps`` training steps on each backend, in ``rounds`` rounds."""
    n_per = max(1, args.compare_steps // rounds)
    batches = _batches_for_timing(corpus, args.batch_size, n_per, device, args.seed)
    runs = {}
    for name, m in _copies(trained, args, device).items():
        m.train()
        opt = Adam(m.parameters(), lr=args.lr)
        loss_fn = make_loss("torch" if name == "torch" else "fused")
        for b in batches:  # warm-up: first-call costs, and the CPU GEMM path measured per shape (cpu_path.h)
            train_step(m, loss_fn, opt, b, args.clip)
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


def compare_decoding_speed(trained, corpus, args, device, n_sent=128, rounds=3):
    """Beam-search sentences/s on each backend over the first ``n_sent`` test sources."""
    src = corpus.test.src[:n_sent].to(device)
    src_len = corpus.test.src_len[:n_sent].to(device)
    if len(src) == 0:
        return {}
    models = {}
    for name, m in _copies(trained, args, device).items():
        m.eval()
        # Warm-up on the very batch timed below: the first call of an op at a new shape measures the CPU GEMM
        # paths (csrc/cpu/cpu_path.h), which must not land in a timed round.
        translate_ids(m, src, src_len, beam=args.beam)
        models[name] = [m, 0.0]
    for _ in range(rounds):
        for name, acc in models.items():
            _sync(device)
            t0 = time.perf_counter()
            translate_ids(acc[0], src, src_len, beam=args.beam)
            _sync(device)
            acc[1] += time.perf_counter() - t0
    return {name: rounds * len(src) / acc[1] for name, acc in models.items()}


def compare_speed(trained, corpus, args, device) -> dict:
    """Both comparisons, printed; returns the report's entries ``compare_train_tokens_per_s`` and (with test
    sources and a beam) ``compare_beam_sentences_per_s``."""
    print(f"speed, same weights and batches, measured now "
          f"({args.compare_steps} training steps per backend, interleaved):")
    sp = compare_training_speed(trained, corpus, args, device)
    out = {"compare_train_tokens_per_s": sp}
    print(f"  training: fused ({args.backend_fused}) {sp['fused']:,.0f} tok/s, torch {sp['torch']:,.0f} tok/s "
          f"-> {sp['fused'] / sp['torch']:.2f}x")
    if len(corpus.test) and args.beam > 1:
        ds = compare_decoding_speed(trained, corpus, args, device)
        out["compare_beam_sentences_per_s"] = ds
        print(f"  beam-{args.beam} decoding: fused {ds['fused']:,.1f} sent/s, torch {ds['torch']:,.1f} sent/s "
              f"-> {ds['fused'] / ds['torch']:.2f}x")
    return out
