"""The seq2seq model, its data pipeline, decoders, checkpoints and CLI (python -m s2s_fused train/translate).

Everything runs on tiny models and a few hundred sentence pairs, so the file takes well under a minute or two."""
from __future__ import annotations

import itertools
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import s2s_fused
from s2s_fused.cli import main as cli_main
from s2s_fused.seq2seq.checkpoint import FILENAME, LAST, load_checkpoint, read_checkpoint, save_checkpoint
from s2s_fused.seq2seq.data import (SPECIALS, Vocab, load_corpus, preprocess, read_pairs, shard_batches,
                                    split_by_source, to_tensors, tokenize)
from s2s_fused.seq2seq.decode import beam_search, eager_beam_topk, greedy_decode
from s2s_fused.seq2seq.errors import UserError
from s2s_fused.seq2seq.evaluate import corpus_bleu
from s2s_fused.seq2seq.model import EagerMaskedSoftmaxCELoss, Seq2Seq, make_loss
from s2s_fused.seq2seq.train import train_step, trim_target
from s2s_fused.seq2seq.translate import translate, translate_ids

from tests.helpers import assert_close

ROOT = Path(__file__).resolve().parent.parent
TINY = dict(embed_size=8, hidden_size=16, num_layers=1, dropout=0.0, num_steps=8)
CONFIGS = [
    dict(cell="gru", attention="none"),
    dict(cell="lstm", attention="none", num_layers=2),
    dict(cell="gru", attention="bahdanau", bidirectional=True),
    dict(cell="lstm", attention="bahdanau"),
    dict(cell="gru", attention="luong", score="dot", num_layers=2),
    dict(cell="lstm", attention="luong", score="general", bidirectional=True),
    dict(cell="gru", attention="luong", score="dot", bidirectional=True),
]


def cfg_id(c):
    return "-".join(f"{v}" if not isinstance(v, bool) else ("bi" if v else "") for v in c.values()).replace("--", "-")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The tiny models here are all per-step overhead: one intra-op thread is fastest, and on a shared 2-core
    machine more threads spin against each other (as the train command does, see its --threads)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def corpus():
    return load_corpus(num_steps=8, max_pairs=400, min_freq=1)


def model_for(corpus, backend="fused", **over):
    cfg = dict(TINY, src_vocab_size=len(corpus.src_vocab), tgt_vocab_size=len(corpus.tgt_vocab))
    cfg.update(over)
    return Seq2Seq(cfg, backend=backend)


def batch_of(corpus, n=24, start=0):
    idx = torch.arange(start, start + n)
    return tuple(t[idx] for t in (corpus.src, corpus.src_len, corpus.tgt, corpus.tgt_len))


# ------------------------------------------------------------------------------------------------ data
def test_preprocess_and_tokenize():
    assert preprocess("Go.") == "go ."
    assert preprocess("Hi,\u202fyou!") == "hi , you !"
    assert preprocess("Wait !") == "wait !"  # no double space when one is there
    assert tokenize("I'm OK.") == ["i'm", "ok", "."]


def test_vocab_and_padding():
    v = Vocab.build([["a", "b", "a"], ["a", "c"]], min_freq=2)
    assert v.idx_to_token[:4] == list(SPECIALS)
    assert (v.pad, v.bos, v.eos, v.unk) == (0, 1, 2, 3)
    assert v.idx_to_token[4:] == ["a"]
    assert v.encode(["a", "b"]) == [4, v.unk]
    x, n = to_tensors([["a"], ["a", "b", "a", "a"]], v, 3)
    assert x.tolist() == [[4, v.eos, v.pad], [4, v.unk, 4]]  # padded / truncated (EOS cut off)
    assert n.tolist() == [2, 3]
    assert v.decode([v.bos, 4, v.unk, v.eos, 4]) == ["a", "<unk>"]


def test_split_by_source_is_deterministic_and_disjoint():
    pairs = [(f"S{i % 50}.", f"t{i}") for i in range(200)]
    train, held = split_by_source(pairs, heldout_fraction=0.1, seed=3)
    assert split_by_source(pairs, heldout_fraction=0.1, seed=3) == (train, held)
    assert len(held) == 5
    held_src = {s for s, _ in held}
    assert not held_src & {preprocess(s) for s, _ in train}
    for s, refs in held:  # every translation of a held-out source is one of its references
        assert sorted(refs) == sorted(t for ps, t in pairs if preprocess(ps) == s)
    assert len(train) + sum(len(r) for _, r in held) == len(pairs)


def test_shard_batches_cover_epoch_equally():
    shards = [shard_batches(103, 10, epoch=2, seed=0, rank=r, world_size=2) for r in range(2)]
    assert len(shards[0]) == len(shards[1])
    seen = torch.cat([torch.cat(s) for s in shards]).tolist()
    assert set(seen) == set(range(103)) and len(seen) == 104  # one example wraps round to even the shards
    assert shard_batches(103, 10, epoch=2, seed=0)[0].tolist() != shard_batches(103, 10, epoch=3, seed=0)[0].tolist()


def test_bucketed_batches_and_trimmed_target_are_exact(corpus):
    lengths = corpus.tgt_len
    shards = [shard_batches(len(lengths), 16, epoch=0, seed=1, rank=r, world_size=2, lengths=lengths)
              for r in range(2)]
    assert len(shards[0]) == len(shards[1])
    assert set(torch.cat([torch.cat(s) for s in shards]).tolist()) == set(range(len(lengths)))
    spread = sum(int(lengths[b].max() - lengths[b].min()) for b in shards[0]) / len(shards[0])
    assert spread <= 1.5  # bucketed: similar lengths in a batch
    # Trimming the all-padding target columns changes neither the loss token sum nor its gradients.
    m = model_for(corpus, attention="bahdanau").double()
    idx = torch.argsort(lengths)[100:116]  # short targets, not all the same length
    b = tuple(t[idx] for t in (corpus.src, corpus.src_len, corpus.tgt, corpus.tgt_len))
    full, trimmed = {}, {}
    for out, batch in ((full, b), (trimmed, trim_target(b))):
        m.zero_grad()
        dec_in = torch.cat([torch.full_like(batch[2][:, :1], Vocab.bos), batch[2][:, :-1]], 1)
        s = make_loss("fused")(m(batch[0], batch[1], dec_in), batch[2], batch[3]).sum() * batch[2].shape[1]
        s.backward()
        out["loss"], out["grad"] = s.detach(), m.decoder.dense.weight.grad.clone()
    assert trim_target(b)[2].shape[1] < b[2].shape[1]
    assert_close(trimmed["loss"], full["loss"], 1e-12, "loss")
    assert_close(trimmed["grad"], full["grad"], 1e-10, "grad")


def test_bad_lines_reported_with_line_numbers(tmp_path):
    f = tmp_path / "d.txt"
    f.write_text("Go.\tVa !\tattr\nno tab here\nHi.\tSalut.\n\t\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"line 2: .*found no tab.*line 4: empty source"):
        read_pairs(f)
    pairs, bad = read_pairs(f, bad_lines="skip")
    assert pairs == [("Go.", "Va !"), ("Hi.", "Salut.")]
    assert [b.lineno for b in bad] == [2, 4]
    (tmp_path / "empty.txt").write_text("\n")
    with pytest.raises(UserError, match="empty"):
        read_pairs(tmp_path / "empty.txt")
    with pytest.raises(UserError, match="not found"):
        read_pairs(tmp_path / "missing.txt")


def test_shipped_corpus_keeps_attribution():
    lines = (ROOT / "s2s_fused" / "data" / "tatoeba-eng-fra-5k.txt").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 5000
    assert all(line.split("\t")[2].startswith("CC-BY 2.0 (France) Attribution: tatoeba.org") for line in lines)


def test_bleu_multi_reference():
    refs = [["je suis très fatigué .", "je suis si fatiguée !"], ["il est parti tôt ce matin ."]]
    hyps = ["je suis si fatiguée !", "il est parti tôt ce matin ."]
    assert corpus_bleu(hyps, refs)[0].score == pytest.approx(100.0)  # each hypothesis matches one reference
    assert corpus_bleu(hyps, [refs[0][:1], refs[1]])[0].score < 100.0


# ------------------------------------------------------------------------------------------------ model
def test_eager_loss_is_d2l_masked_ce():
    torch.manual_seed(0)
    pred, label = torch.randn(3, 4, 7, dtype=torch.float64), torch.randint(0, 7, (3, 4))
    valid = torch.tensor([4, 2, 0])
    got = EagerMaskedSoftmaxCELoss()(pred, label, valid)
    lp = torch.log_softmax(pred, -1).gather(-1, label[..., None])[..., 0]
    want = torch.stack([-lp[b, :valid[b]].sum() / 4 for b in range(3)])
    assert_close(got, want, 1e-12, "masked CE")


@pytest.mark.parametrize("cfg", CONFIGS, ids=cfg_id)
def test_state_dict_loads_across_backends(corpus, cfg):
    fused, eager = model_for(corpus, "fused", **cfg), model_for(corpus, "torch", **cfg)
    assert list(fused.state_dict()) == list(eager.state_dict())
    for (k, a), b in zip(fused.state_dict().items(), eager.state_dict().values()):
        assert torch.equal(a, b), k  # the initialisation does not depend on the backend's classes
    eager.load_state_dict(fused.state_dict(), strict=True)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-9), (torch.float32, 2e-5)])
@pytest.mark.parametrize("cfg", [CONFIGS[0], CONFIGS[2], CONFIGS[5]], ids=cfg_id)
def test_torch_and_fused_backends_same_loss(corpus, cfg, dtype, tol):
    """Same weights, same batches: the first training steps give the same losses on both backends."""
    losses = {}
    for backend in ("fused", "torch"):
        m = model_for(corpus, backend, **cfg).to(dtype)
        opt = torch.optim.SGD(m.parameters(), lr=0.5)
        out = []
        for step in range(3):
            s, n = train_step(m, make_loss(backend), opt, batch_of(corpus, 16, 16 * step), clip=1.0)
            out.append(s / n)
        losses[backend] = torch.stack(out)
    assert_close(losses["fused"], losses["torch"], tol, f"losses {losses}")


@pytest.mark.parametrize("steps", [1, 3, 8, 11])
def test_fused_attention_decoder_any_target_length(corpus, steps):
    """The fused Bahdanau decoder attends over the projected values (targets at least as long as the source) or
    projects each step's context (shorter targets): logits and every gradient equal the torch backend's in float64,
    on both sides of the switch (source: 8 steps)."""
    cfg = dict(cell="gru", attention="bahdanau", bidirectional=True)
    src, src_len, tgt, _ = batch_of(corpus, 5)
    dec_in = torch.cat([tgt, tgt], 1)[:, :steps]
    grads = {}
    for backend in ("fused", "torch"):
        m = model_for(corpus, backend, **cfg).double()
        logits = m(src, src_len, dec_in)
        assert logits.shape == (5, steps, m.config["tgt_vocab_size"])
        (logits * torch.randn(logits.shape, generator=torch.Generator().manual_seed(1), dtype=logits.dtype)).sum() \
            .backward()
        grads[backend] = [logits.detach()] + [p.grad for p in m.parameters()]
    names = ["logits"] + [n for n, _ in model_for(corpus, "torch", **cfg).named_parameters()]
    for name, a, b in zip(names, grads["fused"], grads["torch"]):
        assert_close(a, b, 1e-10, name)


@pytest.mark.parametrize("cfg", CONFIGS[4:7], ids=cfg_id)
def test_luong_decoder_on_the_dot_attention_op_matches_torch_backend(corpus, cfg):
    """The fused backend's Luong decoder attends through the dot_attention op (dot score; general: over the keys
    projected once per source): logits and every gradient equal the torch backend's (two bmm and d2l's masked
    softmax) in float64, and beam search, which hands the op one copy of the source side per sentence, finds the
    same hypotheses."""
    from s2s_fused.ops import attention as attention_ops

    src, src_len, tgt, _ = batch_of(corpus, 5)
    grads, models = {}, {}
    calls = []
    for backend in ("fused", "torch"):
        m = model_for(corpus, backend, **cfg).double()
        assert m.decoder.dot_op == (backend == "fused") and m.decoder.grouped_source == (backend == "fused")
        spy = attention_ops._library.op
        try:
            attention_ops._library.op = lambda name, be: calls.append(name) or spy(name, be)
            logits = m(src, src_len, tgt)
        finally:
            attention_ops._library.op = spy
        (logits * torch.randn(logits.shape, generator=torch.Generator().manual_seed(1), dtype=logits.dtype)).sum() \
            .backward()
        grads[backend] = [logits.detach()] + [p.grad for p in m.parameters()]
        models[backend] = m.eval()
    # the fused backend's attention: one dot_attention call a step; none on the torch backend
    assert [c for c in calls if "attention" in c] == ["dot_attention_forward"] * tgt.shape[1]
    names = ["logits"] + [n for n, _ in models["torch"].named_parameters()]
    for name, a, b in zip(names, grads["fused"], grads["torch"]):
        assert_close(a, b, 1e-10, name)
    src, src_len = corpus.dev.src[:8], corpus.dev.src_len[:8]
    for beam in (1, 4):
        a, b = (translate_ids(models[k], src, src_len, beam=beam) for k in ("fused", "torch"))
        assert [h[0][0] for h in a] == [h[0][0] for h in b]
        assert [h[0][1] for h in a] == pytest.approx([h[0][1] for h in b], rel=1e-6)  # (float32 scores)


def test_train_optimizer_is_adam_and_moves_version_counters():
    """The train command's Adam (torch's fused kernel) updates as torch's default Adam does, and moves the version
    counter of every parameter it updates (the fused kernel alone does not: caches keyed on versions would go
    stale); a parameter without a gradient is left as it is."""
    from s2s_fused.seq2seq.train import Adam

    g = torch.Generator().manual_seed(0)
    init = [torch.randn(5, 3, generator=g), torch.randn(7, generator=g), torch.randn(2, generator=g)]
    ours = [torch.nn.Parameter(t.clone()) for t in init]
    ref = [torch.nn.Parameter(t.clone()) for t in init]
    opt, ref_opt = Adam(ours, lr=0.01), torch.optim.Adam(ref, lr=0.01)
    for step in range(3):
        for a, b in zip(ours[:2], ref[:2]):
            a.grad = torch.randn(a.shape, generator=g)
            b.grad = a.grad.clone()
        before = [p._version for p in ours]
        opt.step()
        ref_opt.step()
        assert [p._version > v for p, v in zip(ours, before)] == [True, True, False], step
        for a, b in zip(ours, ref):
            assert_close(a.detach(), b.detach(), 1e-6, f"step {step}")
    assert torch.equal(ours[2].detach(), init[2])


@pytest.mark.parametrize("cfg", CONFIGS[:6], ids=cfg_id)
def test_tiny_training_lowers_loss(corpus, cfg):
    torch.manual_seed(0)
    m = model_for(corpus, **cfg)
    opt = torch.optim.Adam(m.parameters(), lr=0.02)
    b = batch_of(corpus, 32)
    loss_fn = make_loss("fused")
    first = [float(s / n) for s, n in [train_step(m, loss_fn, opt, b, 1.0)]][0]
    for _ in range(25):
        s, n = train_step(m, loss_fn, opt, b, 1.0)
    assert math.isfinite(first) and float(s / n) < 0.6 * first


# ------------------------------------------------------------------------------------------------ decoding
class ToyLM:
    """A fixed next-token table: logits depend on the last token only (state = last token, batch first)."""

    def __init__(self, V=5, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.table = torch.randn(V, V, generator=g, dtype=torch.float64) * 2

    def step(self, tokens, state):
        return self.table[tokens], {"last": tokens}

    def logp(self, seq, bos):
        lp, prev = 0.0, bos
        for t in seq:
            lp += torch.log_softmax(self.table[prev], -1)[t].item()
            prev = t
        return lp


# The one decoder with each top-k step: the fused op (default) and its eager twin (the "torch" backend's).
TOPK_STEPS = pytest.mark.parametrize("topk", [None, eager_beam_topk], ids=["fused", "eager"])


def _pairs(results):
    """Per input, the hypotheses as (tokens, score) pairs."""
    return [[(h.tokens, h.score) for h in hyps] for hyps in results]


@TOPK_STEPS
def test_beam_search_finds_best_sequence_exhaustively(topk):
    V, bos, eos, max_len = 5, 0, 1, 4
    for seed in range(4):
        lm = ToyLM(V, seed)
        init = {"last": torch.zeros(1, dtype=torch.long)}
        # Every sequence of <= max_len tokens ending in EOS, or max_len tokens without it.
        best = None
        for n in range(1, max_len + 1):
            for body in itertools.product([t for t in range(V) if t != eos], repeat=n - 1):
                ends = [[eos]] + ([[t] for t in range(V) if t != eos] if n == max_len else [])
                for seq in (list(body) + e for e in ends):
                    s = lm.logp(seq, bos)
                    if best is None or s > best[0]:
                        best = (s, seq)
        res = _pairs(beam_search(lm.step, init, bos, eos, beam_size=V * V * V, max_len=max_len, n_best=3,
                                 topk=topk))
        toks, score = res[0][0]
        want = best[1][:-1] if best[1][-1] == eos else best[1]
        assert toks == want and score == pytest.approx(best[0])
        assert [s for _, s in res[0]] == sorted((s for _, s in res[0]), reverse=True)


@TOPK_STEPS
def test_beam_of_one_is_greedy_and_batched_matches_single(topk):
    lm = ToyLM(7, seed=5)
    init = {"last": torch.tensor([0, 3, 4])}
    greedy = _pairs(greedy_decode(lm.step, init, 0, 1, 6, topk=topk))
    beam1 = _pairs(beam_search(lm.step, init, 0, 1, 1, 6, topk=topk))
    assert [g[0][0] for g in greedy] == [b[0][0] for b in beam1]
    beam3 = _pairs(beam_search(lm.step, init, 0, 1, 3, 6, n_best=2, topk=topk))
    for i in range(3):
        single = _pairs(beam_search(lm.step, {"last": init["last"][i:i + 1]}, 0, 1, 3, 6, n_best=2, topk=topk))
        assert single[0] == beam3[i]


@TOPK_STEPS
def test_beam_options(topk):
    lm = ToyLM(6, seed=1)
    init = {"last": torch.zeros(2, dtype=torch.long)}
    for toks, _ in _pairs(beam_search(lm.step, init, 0, 1, 3, 8, min_len=4, topk=topk))[0]:
        assert len(toks) >= 4
    for r in _pairs(beam_search(lm.step, init, 0, 1, 3, 8, no_repeat_ngram_size=2, length_penalty="gnmt",
                                topk=topk)):
        toks = r[0][0]
        grams = list(zip(toks, toks[1:]))
        assert len(grams) == len(set(grams))
    with pytest.raises(ValueError, match="length_penalty"):
        beam_search(lm.step, init, 0, 1, 3, 8, length_penalty="wu", topk=topk)


@TOPK_STEPS
def test_beam_with_every_token_banned_leaves_the_beam(topk):
    """min_len bans EOS and no_repeat_ngram_size=1 bans every token used: at step 3 of a 4-token vocabulary
    (bos 0, eos 1, two more) no beam has a token left. Such a beam must drop out, not score NaN (the top-k rule's
    answer for an all -inf row) and rank above every real hypothesis."""
    lm = ToyLM(4, seed=2)
    init = {"last": torch.zeros(2, dtype=torch.long)}
    for max_len, min_len in ((6, 4), (6, 3)):
        for hyps in beam_search(lm.step, init, 0, 1, 3, max_len, min_len=min_len, no_repeat_ngram_size=1,
                                n_best=3, topk=topk):
            assert all(math.isfinite(h.score) for h in hyps), [(h.tokens, h.score) for h in hyps]
            for h in hyps:
                assert len(h.tokens) == len(set(h.tokens)) and len(h.tokens) >= min_len - 1
            if min_len == 3:  # every beam can end with EOS after its three distinct tokens
                assert len(hyps) == 3 and all(h.finished for h in hyps)


def test_topk_step_arguments():
    lm = ToyLM(5)
    init = {"last": torch.zeros(2, dtype=torch.long)}
    with pytest.raises(ValueError, match="backend: .*cannot go with topk="):
        beam_search(lm.step, init, 0, 1, 2, 4, topk=eager_beam_topk, backend="cpu")
    with pytest.raises(TypeError, match="topk: expected a callable"):
        greedy_decode(lm.step, init, 0, 1, 4, topk="eager")


def test_eager_topk_step_is_the_op():
    """The eager top-k step selects what the fused op does (random logits: no ties), finished beams included."""
    torch.manual_seed(0)
    for B, K, V, k in ((1, 1, 7, 1), (3, 4, 17, 4), (2, 5, 130, 10)):
        logits = torch.randn(B, K, V, dtype=torch.float64)
        scores = -torch.rand(B, K)
        finished = torch.rand(B, K) < 0.3
        for fin in (None, finished):
            eos = None if fin is None else 2
            got = eager_beam_topk(logits, scores, k, finished=fin, eos_id=eos)
            want = s2s_fused.beam_search_topk(logits, scores, k, finished=fin, eos_id=eos, backend="reference")
            assert_close(got[0], want[0], 1e-6, "scores")
            assert torch.equal(got[1], want[1]) and torch.equal(got[2], want[2])


def test_fused_decoders_agree_with_eager(corpus):
    torch.manual_seed(0)
    m = model_for(corpus, "fused", attention="bahdanau")
    src, src_len = corpus.dev.src[:12], corpus.dev.src_len[:12]
    for beam in (1, 3):
        fused = translate_ids(m, src, src_len, beam=beam, backend="fused")
        eager = translate_ids(m, src, src_len, beam=beam, backend="torch")
        assert [f[0][0] for f in fused] == [e[0][0] for e in eager]


# ------------------------------------------------------------------------------------------------ checkpoints
def test_checkpoint_round_trip_translates_identically(corpus, tmp_path):
    torch.manual_seed(0)
    m = model_for(corpus, attention="luong", cell="lstm", bidirectional=True)
    opt = torch.optim.Adam(m.parameters(), lr=0.02)
    for i in range(5):
        train_step(m, make_loss("fused"), opt, batch_of(corpus, 32, 32 * i), 1.0)
    save_checkpoint(tmp_path, m, corpus.src_vocab, corpus.tgt_vocab, info={"note": "test"})
    raw = torch.load(tmp_path / FILENAME, weights_only=True)
    assert raw["format_version"] == 2 and raw["src_vocab"] == corpus.src_vocab.idx_to_token
    sents = ["go .", "i am cold .", "who are you ?"]
    for backend in ("fused", "torch"):
        m2, sv, tv, _ = load_checkpoint(tmp_path, backend=backend)
        for beam in (1, 3):
            assert translate(m2, sv, tv, sents, beam=beam) == translate(m, corpus.src_vocab, corpus.tgt_vocab,
                                                                         sents, beam=beam)


def test_checkpoint_errors(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_checkpoint(tmp_path)
    torch.save({"format": "s2s_fused.seq2seq", "format_version": 999, "s2s_fused_version": "9.9"},
               tmp_path / FILENAME)
    with pytest.raises(UserError, match="format version 999"):
        load_checkpoint(tmp_path)
    (tmp_path / FILENAME).write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="not a readable"):
        load_checkpoint(tmp_path)


# ------------------------------------------------------------------------------------------------ CLI
TINY_ARGS = ["--max-pairs", "300", "--epochs", "2", "--embed-size", "8", "--hidden-size", "16", "--num-steps", "8",
             "--compare-steps", "2", "--beam", "2", "--no-progress"]


def test_cli_train_then_translate(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    assert cli_main(["train", *TINY_ARGS, "--attention", "luong", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "BLEU greedy" in text and "perplexity" in text and "training: fused" in text
    assert (out / FILENAME).exists() and (out / "loss.png").exists()
    report = json.loads((out / "report.json").read_text())
    assert report["compare_train_tokens_per_s"]["torch"] > 0 and report["bleu_beam"] is not None
    assert cli_main(["translate", "--checkpoint", str(out), "--beam", "2", "go .", "hi ."]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    import io

    monkeypatch.setattr(sys, "stdin", io.StringIO("go .\n\nhi .\n"))
    assert cli_main(["translate", "--checkpoint", str(out)]) == 0  # one line out per line in, blank for blank
    go, hi = translate(*load_checkpoint(out)[:3], ["go .", "hi ."])
    assert capsys.readouterr().out.splitlines() == [go, "", hi]


def test_train_loop_runs_with_the_loaded_objects_frozen(tmp_path, monkeypatch):
    """The corpus and model are out of the cyclic collector's reach while training and reporting (a full
    collection would walk them all again), and handed back afterwards, also when the loop raises."""
    import gc

    from s2s_fused.seq2seq import command
    from s2s_fused.seq2seq.train import Trainer

    seen = {}
    fit, report = Trainer.fit, command._report

    def fit_spy(self):
        seen["fit"] = gc.get_freeze_count()
        return fit(self)

    def report_spy(*a, **k):
        seen["report"] = gc.get_freeze_count()
        return report(*a, **k)

    monkeypatch.setattr(Trainer, "fit", fit_spy)
    monkeypatch.setattr(command, "_report", report_spy)
    assert cli_main(["train", *RUN_BASE, "--embed-size", "8", "--epochs", "1", "--out", str(tmp_path / "a")]) == 0
    assert seen["fit"] > 1000 and seen["report"] > 1000  # the corpus alone is thousands of objects
    assert gc.get_freeze_count() == 0

    def fail(self):
        raise RuntimeError("stop")

    monkeypatch.setattr(Trainer, "fit", fail)
    with pytest.raises(RuntimeError, match="stop"):
        cli_main(["train", *RUN_BASE, "--embed-size", "8", "--epochs", "1", "--out", str(tmp_path / "b")])
    assert gc.get_freeze_count() == 0


@pytest.mark.parametrize("argv,msg", [
    (["train", "--data", "/nonexistent/pairs.txt"], "data file not found"),
    (["translate", "--checkpoint", "/nonexistent/ckpt", "go ."], "checkpoint not found"),
    (["train", "--backend", "triton", "--max-pairs", "50"], None),  # fine under TRITON_INTERPRET, else an error
] + ([] if torch.cuda.is_available() else [(["train", "--device", "cuda"], "no CUDA device")]))
def test_cli_user_errors_exit_2(argv, msg, capsys, monkeypatch):
    if msg is None:
        monkeypatch.delenv("TRITON_INTERPRET", raising=False)
        if torch.cuda.is_available():
            pytest.skip("triton runs on the GPU here")
        msg = "--backend triton: backend 'triton' is not available"
    assert cli_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and msg in err, err


def test_cli_usage_error_is_one_line(capsys):
    with pytest.raises(SystemExit) as e:
        cli_main(["train", "--cell", "rnn"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "invalid choice: 'rnn'" in err


def test_cli_bad_lines_flag(tmp_path, capsys):
    f = tmp_path / "pairs.txt"
    f.write_text("".join(f"Go {i}.\tVa {i} !\n" for i in range(40)) + "broken line\n", encoding="utf-8")
    assert cli_main(["train", "--data", str(f)]) == 2
    assert "line 41" in capsys.readouterr().err
    assert cli_main(["train", "--data", str(f), "--bad-lines", "skip", *TINY_ARGS, "--compare-steps", "0",
                     "--out", str(tmp_path / "o")]) == 0
    assert "skipped line 41" in capsys.readouterr().err


def _run_cli(args, **kw):
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "s2s_fused", *args], cwd=kw.pop("cwd", ROOT), env=env,
                          capture_output=True, text=True, timeout=kw.pop("timeout", 120), **kw)


def test_cli_errors_are_one_line_without_traceback(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    bad_ckpt = tmp_path / "old"
    bad_ckpt.mkdir()
    torch.save({"format": "s2s_fused.seq2seq", "format_version": 0}, bad_ckpt / FILENAME)
    # In a real process (each costs an interpreter start, so only two; the rest run in-process below).
    cases = [(["train", "--data", str(empty)], "empty"),
             (["translate", "--checkpoint", str(bad_ckpt), "go ."], "format version 0")]
    for args, msg in cases:
        r = _run_cli(args)
        assert r.returncode == 2, (args, r.stderr)
        assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert msg in r.stderr, r.stderr


def test_ddp_two_processes(tmp_path):
    out = tmp_path / "ddp"
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "s2s_fused",
           "train", *TINY_ARGS, "--compare-steps", "0", "--out", str(out)]
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("BLEU greedy") == 1  # rank 0 alone reports
    report = json.loads((out / "report.json").read_text())
    assert report["world_size"] == 2
    m, _, _, _ = load_checkpoint(out)
    assert all(torch.isfinite(p).all() for p in m.parameters())


# ------------------------------------------------------------------------------------------------ NMT toolkit
def _weights(path):
    """The model and optimizer tensors of a checkpoint file, by name."""
    obj = torch.load(path, weights_only=True)
    out = dict(obj["model"])
    if "train_state" in obj:
        for i, st in obj["train_state"]["optimizer"]["state"].items():
            out.update({f"adam.{i}.{k}": v for k, v in st.items()})
    return out


def _assert_bit_identical(a, b):
    wa, wb = _weights(a), _weights(b)
    assert list(wa) == list(wb)
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


def _flip_tensor_bytes(path, n=64):
    """Flip ``n`` bytes in the middle of the largest tensor's storage inside the checkpoint's zip file."""
    import struct
    import zipfile

    with zipfile.ZipFile(path) as z:
        entry = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    raw = bytearray(Path(path).read_bytes())
    name_len, extra_len = struct.unpack("<HH", raw[entry.header_offset + 26:entry.header_offset + 30])
    start = entry.header_offset + 30 + name_len + extra_len + entry.file_size // 2
    for i in range(n):
        raw[start + i] ^= 0xA5
    Path(path).write_bytes(bytes(raw))


# A tiny run without the speed comparison or early stopping (each test adds --epochs, and --embed-size to change it)
RUN_BASE = ["--max-pairs", "300", "--hidden-size", "16", "--num-steps", "8", "--beam", "2", "--no-progress",
            "--compare-steps", "0"]
RUN_ARGS = RUN_BASE + ["--embed-size", "8", "--patience", "0"]


def test_report_has_epochs_and_best_checkpoint(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli_main(["train", *RUN_ARGS, "--epochs", "3", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "chrF" in text and "dev BLEU" in text
    report = json.loads((out / "report.json").read_text())
    assert [e["epoch"] for e in report["epochs"]] == [1, 2, 3]
    for e in report["epochs"]:
        assert set(e) >= {"epoch", "train_loss", "dev_loss", "dev_bleu", "dev_chrf", "lr", "seconds"}
        assert all(math.isfinite(e[k]) for k in ("train_loss", "dev_loss", "dev_bleu", "dev_chrf", "lr"))
    assert "chrF2" in report["chrf_signature"] or "nc:6" in report["chrf_signature"]
    best = max(report["epochs"], key=lambda e: (e["dev_bleu"], -e["epoch"]))  # the first of the best
    assert report["best_epoch"] == best["epoch"] and report["dev_bleu"] == best["dev_bleu"]
    assert (out / "loss.png").exists() and (out / LAST).exists()
    assert cli_main(["evaluate", "--checkpoint", str(out), "--data", str(out / "test.tsv"), "--beam", "2"]) == 0
    assert f"BLEU {report['bleu_beam']:.1f} " in capsys.readouterr().out  # the report's test score, recomputed
    # checkpoint.pt holds the best epoch's weights, last.pt the last epoch's and the training state
    assert read_checkpoint(out / LAST)[0]["train_state"]["epoch"] == 3
    assert read_checkpoint(out)[0]["info"]["best_epoch"] == best["epoch"]


def test_early_stopping_stops_after_patience(tmp_path, capsys):
    """A learning rate this small cannot move greedy dev BLEU in a few epochs: patience 2 stops after 3 epochs."""
    out = tmp_path / "run"
    assert cli_main(["train", *RUN_BASE, "--embed-size", "8", "--patience", "2", "--epochs", "20", "--lr", "1e-7", "--lr-schedule", "constant",
                     "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["stopped_early"] and report["epochs_run"] == 3 and report["best_epoch"] == 1
    # resumed with more patience, the run goes on until that runs out too
    assert cli_main(["train", "--resume", str(out), "--patience", "3", "--no-progress", "--compare-steps", "0"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["stopped_early"] and report["epochs_run"] == 4 and report["best_epoch"] == 1


def test_resume_gives_bit_identical_weights(tmp_path, capsys):
    """2 epochs, then --resume to 4 == 4 epochs straight: weights and Adam moments bit for bit (dropout on, so the
    RNG state matters; the plateau schedule, so its state does)."""
    a, b = tmp_path / "a", tmp_path / "b"
    assert cli_main(["train", *RUN_ARGS, "--dropout", "0.3", "--epochs", "2", "--out", str(a)]) == 0
    assert cli_main(["train", "--resume", str(a), "--epochs", "4", "--no-progress", "--compare-steps", "0"]) == 0
    assert cli_main(["train", *RUN_ARGS, "--dropout", "0.3", "--epochs", "4", "--out", str(b)]) == 0
    capsys.readouterr()
    _assert_bit_identical(a / LAST, b / LAST)
    _assert_bit_identical(a / FILENAME, b / FILENAME)
    ra, rb = (json.loads((d / "report.json").read_text()) for d in (a, b))
    assert [e["train_loss"] for e in ra["epochs"]] == [e["train_loss"] for e in rb["epochs"]]


def test_resume_refuses_changed_options_and_plain_checkpoints(tmp_path, capsys):
    a = tmp_path / "a"
    assert cli_main(["train", *RUN_ARGS, "--epochs", "1", "--out", str(a)]) == 0
    capsys.readouterr()
    assert cli_main(["train", "--resume", str(a), "--lr", "0.1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--lr 0.1: the resumed run used 0.005" in err, err
    assert cli_main(["train", "--resume", str(a / FILENAME)]) == 2
    assert "no training state to resume from" in capsys.readouterr().err


def test_sigint_writes_last_then_resume_matches(tmp_path):
    """SIGINT during training: the step finishes, last.pt is written (mid-epoch position included), exit 130; the
    resumed run then ends with the weights of an uninterrupted one."""
    import signal
    import time

    data = ["--max-pairs", "1500", "--batch-size", "16", "--embed-size", "8", "--hidden-size", "16",
            "--num-steps", "8", "--beam", "2", "--no-progress", "--compare-steps", "0", "--patience", "0"]
    a, b = tmp_path / "a", tmp_path / "b"
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, "-m", "s2s_fused", "train", *data, "--epochs", "50", "--out", str(a)],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (a / LAST).exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert (a / LAST).exists(), proc.communicate()[1][-2000:] if proc.poll() is not None else "timeout"
        time.sleep(0.3)  # into epoch 2
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err and "interrupted at epoch" in err, err[-2000:]
    st = read_checkpoint(a / LAST)[0]["train_state"]  # valid: checksum and format checked
    done = st["epoch"] + (st["batch"] > 0)
    assert 1 <= st["epoch"] < 50
    epochs = str(done + 1)
    r = _run_cli(["train", "--resume", str(a), "--epochs", epochs, "--no-progress", "--compare-steps", "0"])
    assert r.returncode == 0, r.stderr[-2000:]
    assert "resumed from" in r.stdout
    r = _run_cli(["train", *data, "--epochs", epochs, "--out", str(b)])
    assert r.returncode == 0, r.stderr[-2000:]
    _assert_bit_identical(a / LAST, b / LAST)


def test_corrupted_checkpoint_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli_main(["train", *RUN_ARGS, "--epochs", "1", "--out", str(out)]) == 0
    capsys.readouterr()
    for name in (FILENAME, LAST):
        _flip_tensor_bytes(out / name)
        with pytest.raises(UserError, match=f"{name}: checksum mismatch"):
            read_checkpoint(out / name)
    assert cli_main(["translate", "--checkpoint", str(out), "go ."]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(out / FILENAME) in err and "checksum mismatch" in err, err
    assert cli_main(["train", "--resume", str(out)]) == 2
    assert "last.pt: checksum mismatch" in capsys.readouterr().err


def test_checkpoint_missing_parts_are_one_line_errors(corpus, tmp_path):
    m = model_for(corpus)
    path = save_checkpoint(tmp_path, m, corpus.src_vocab, corpus.tgt_vocab)
    obj = torch.load(path, weights_only=True)
    from s2s_fused.seq2seq.checkpoint import checksum

    for key in ("config", "model", "checksum"):
        broken = {k: v for k, v in obj.items() if k != key}
        if key != "checksum":
            broken["checksum"] = checksum(broken)
        torch.save(broken, path)
        with pytest.raises(UserError, match=f"missing '{key}'"):
            load_checkpoint(tmp_path)
    bad = dict(obj, config=dict(obj["config"], tgt_vocab_size=7))  # config and vocabulary disagree
    bad["checksum"] = checksum(bad)
    torch.save(bad, path)
    with pytest.raises(UserError, match="tgt_vocab_size 7 does not match"):
        load_checkpoint(tmp_path)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("trained") / "run"
    assert cli_main(["train", *RUN_ARGS, "--epochs", "2", "--keep-last", "2", "--out", str(out)]) == 0
    return out


def test_translate_file_and_stdin(trained, tmp_path, capsys, monkeypatch):
    import io

    lines = ["go .", "", "i am cold .", "who are you ?", "hi ."]
    f = tmp_path / "in.txt"
    f.write_text("\n".join(lines) + "\n", encoding="utf-8")
    want = translate(*load_checkpoint(trained)[:3], [s for s in lines if s], beam=2)
    want.insert(1, "")
    capsys.readouterr()
    assert cli_main(["translate", "--checkpoint", str(trained), "--input", str(f), "--beam", "2",
                     "--batch-size", "2"]) == 0
    assert capsys.readouterr().out.splitlines() == want
    monkeypatch.setattr(sys, "stdin", io.StringIO(f.read_text()))
    assert cli_main(["translate", "--checkpoint", str(trained), "--input", "-", "--beam", "2"]) == 0
    assert capsys.readouterr().out.splitlines() == want


def test_evaluate_file(trained, tmp_path, capsys):
    f = tmp_path / "test.tsv"
    f.write_text("Go.\tVa !\nGo.\tBouge !\nI'm cold.\tJ'ai froid.\nWho are you?\tQui êtes-vous ?\n", encoding="utf-8")
    capsys.readouterr()
    assert cli_main(["evaluate", "--checkpoint", str(trained), "--data", str(f), "--beam", "2"]) == 0
    out = capsys.readouterr().out
    assert "3 sources, 4 references, beam-2" in out
    assert "BLEU " in out and "nrefs:var" in out and "chrF " in out and "nc:6" in out
    # the score is sacrebleu's on the same hypotheses
    model, sv, tv, _ = load_checkpoint(trained)
    hyps = translate(model, sv, tv, ["Go.", "I'm cold.", "Who are you?"], beam=2)
    refs = [["va !", "bouge !"], ["j'ai froid ."], ["qui êtes-vous ?"]]
    assert f"BLEU {corpus_bleu(hyps, refs)[0].score:.1f} " in out


def test_average_checkpoints(trained, tmp_path, capsys):
    e1, e2 = trained / "epoch-1.pt", trained / "epoch-2.pt"
    assert e1.exists() and e2.exists()
    out = tmp_path / "avg"
    assert cli_main(["average", "--checkpoints", str(e1), str(e2), "--out", str(out)]) == 0
    w1, w2, avg = (torch.load(p, weights_only=True)["model"] for p in (e1, e2, out / FILENAME))
    for k in avg:
        assert_close(avg[k], ((w1[k].double() + w2[k].double()) / 2).float(), 1e-7, k)
    assert load_checkpoint(out)[0] is not None
    other = tmp_path / "other"
    assert cli_main(["train", *RUN_ARGS, "--epochs", "1", "--hidden-size", "12", "--out", str(other)]) == 0
    capsys.readouterr()
    assert cli_main(["average", "--checkpoints", str(e1), str(other), "--out", str(out)]) == 2
    assert "config differs" in capsys.readouterr().err


def test_keep_last_keeps_k_epoch_files(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli_main(["train", *RUN_ARGS, "--epochs", "3", "--keep-last", "2", "--out", str(out)]) == 0
    assert sorted(p.name for p in out.glob("epoch-*.pt")) == ["epoch-2.pt", "epoch-3.pt"]


def test_sentencepiece_tiny_corpus(tmp_path, capsys):
    pytest.importorskip("sentencepiece")
    out = tmp_path / "spm"
    assert cli_main(["train", *RUN_ARGS, "--epochs", "2", "--subword", "sentencepiece", "--vocab-size", "80",
                     "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "sentencepiece vocab src" in text
    obj = read_checkpoint(out)[0]
    assert obj["segmenter"]["kind"] == "sentencepiece" and len(obj["tgt_vocab"]) <= 80
    from s2s_fused.seq2seq.checkpoint import segmenters_of

    src_seg, _ = segmenters_of(obj)
    assert src_seg.join(src_seg.split("Who are you?")) == "who are you ?"  # detokenised back to plain text
    assert cli_main(["translate", "--checkpoint", str(out), "go .", "hi ."]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and not any("▁" in line for line in lines)
    shared = tmp_path / "shared"
    assert cli_main(["train", *RUN_ARGS, "--epochs", "1", "--subword", "sentencepiece", "--vocab-size", "80",
                     "--shared-vocab", "--out", str(shared)]) == 0
    obj = read_checkpoint(shared)[0]
    assert obj["segmenter"]["shared"] and obj["src_vocab"] == obj["tgt_vocab"]


def test_sentencepiece_missing_is_one_line(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "sentencepiece", None)  # import fails as if not installed
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "sentencepiece" else real(n, *a))
    assert cli_main(["train", "--subword", "sentencepiece", *RUN_ARGS]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "[subword] extra" in err, err


def test_training_options(tmp_path, capsys):
    """--tie-embeddings, --batch-tokens, --label-smoothing and --lr-schedule warmup-inverse-sqrt train together."""
    out = tmp_path / "run"
    assert cli_main(["train", *RUN_BASE, "--patience", "0", "--embed-size", "16",
                     "--epochs", "2", "--tie-embeddings", "--batch-tokens", "300", "--label-smoothing", "0.1",
                     "--lr-schedule", "warmup-inverse-sqrt", "--warmup-steps", "4", "--out", str(out)]) == 0
    model = load_checkpoint(out)[0]
    assert model.decoder.dense.weight is model.decoder.embedding.weight
    report = json.loads((out / "report.json").read_text())
    assert report["epochs"][1]["lr"] < report["epochs"][0]["lr"]  # decaying after 4 warm-up steps


def test_tied_model_shares_one_matrix(corpus):
    m = model_for(corpus, embed_size=16, hidden_size=16, tie_embeddings=True)
    assert m.decoder.dense.weight is m.decoder.embedding.weight
    n_untied = sum(p.numel() for p in model_for(corpus, embed_size=16, hidden_size=16).parameters())
    assert sum(p.numel() for p in m.parameters()) == n_untied - m.decoder.embedding.weight.numel()
    with pytest.raises(UserError, match="tie_embeddings: needs embed_size equal to hidden_size"):
        model_for(corpus, tie_embeddings=True)


def test_warmup_inverse_sqrt_factor():
    from types import SimpleNamespace

    from s2s_fused.seq2seq.train import make_scheduler

    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    sched = make_scheduler(opt, SimpleNamespace(lr_schedule="warmup-inverse-sqrt", warmup_steps=4))
    lrs = []
    for _ in range(16):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert lrs[15] == pytest.approx(math.sqrt(4 / 16))


def test_label_smoothing_reaches_the_loss(corpus):
    torch.manual_seed(0)
    pred = torch.randn(3, 5, 11, dtype=torch.float64)
    label, valid = torch.randint(0, 11, (3, 5)), torch.tensor([5, 2, 1])
    fused, eager = make_loss("fused", 0.2)(pred, label, valid), make_loss("torch", 0.2)(pred, label, valid)
    assert_close(fused, eager, 1e-12, "smoothed CE")
    assert not torch.allclose(fused, make_loss("fused")(pred, label, valid))


@pytest.mark.parametrize("n,lengths_seed,bt,world", [(1, 0, 5, 1), (17, 1, 40, 1), (130, 2, 64, 2), (257, 3, 33, 3)])
def test_token_batches_cover_epoch_within_budget(n, lengths_seed, bt, world):
    g = torch.Generator().manual_seed(lengths_seed)
    lengths = torch.randint(1, 17, (n,), generator=g)
    shards = [shard_batches(n, 0, epoch=1, seed=4, rank=r, world_size=world, lengths=lengths, batch_tokens=bt)
              for r in range(world)]
    assert len({len(s) for s in shards}) == 1  # equal step counts for DDP
    seen = torch.cat([torch.cat(s) for s in shards]).tolist()
    assert set(seen) == set(range(n))
    for s in shards:
        for b in s:
            assert len(b) == 1 or len(b) * int(lengths[b].max()) <= bt


@pytest.mark.parametrize("argv,msg", [
    (["train", "--max-pairs", "-1"], "--max-pairs: expected an integer >= 1, got '-1'"),
    (["train", "--max-pairs", "0"], "--max-pairs: expected an integer >= 1, got '0'"),
    (["train", "--heldout", "1.5"], "--heldout: expected a number in (0.0, 1.0), got '1.5'"),
    (["train", "--heldout", "0"], "--heldout: expected a number in (0.0, 1.0)"),
    (["train", "--lr", "nan"], "--lr: expected a finite number > 0.0, got 'nan'"),
    (["train", "--lr", "-0.1"], "--lr: expected a finite number > 0.0"),
    (["train", "--lr", "inf"], "--lr: expected a finite number > 0.0"),
    (["train", "--epochs", "0"], "--epochs: expected an integer >= 1"),
    (["train", "--epochs", "two"], "--epochs: expected an integer >= 1, got 'two'"),
    (["train", "--batch-size", "0"], "--batch-size: expected an integer >= 1"),
    (["train", "--batch-tokens", "-5"], "--batch-tokens: expected an integer >= 1"),
    (["train", "--dropout", "1"], "--dropout: expected a number in [0.0, 1.0)"),
    (["train", "--label-smoothing", "nan"], "--label-smoothing: expected a number in [0.0, 1.0)"),
    (["train", "--clip", "-1"], "--clip: expected a finite number >= 0.0"),
    (["train", "--patience", "-1"], "--patience: expected an integer >= 0"),
    (["train", "--keep-last", "-2"], "--keep-last: expected an integer >= 0"),
    (["train", "--vocab-size", "3"], "--vocab-size: expected an integer >= 8"),
    (["train", "--test-share", "1"], "--test-share: expected a number in [0.0, 1.0)"),
    (["train", "--hidden-size", "0"], "--hidden-size: expected an integer >= 1"),
    (["train", "--num-steps", "-3"], "--num-steps: expected an integer >= 1"),
    (["train", "--seed", "-1"], "--seed: expected an integer >= 0"),
    (["train", "--warmup-steps", "0"], "--warmup-steps: expected an integer >= 1"),
    (["train", "--lr-schedule", "cosine"], "invalid choice: 'cosine'"),
    (["train", "--subword", "bpe"], "invalid choice: 'bpe'"),
    (["translate", "--checkpoint", "x", "--beam", "0", "go ."], "--beam: expected an integer >= 1, got '0'"),
    (["translate", "--checkpoint", "x", "--input", "/nonexistent/in.txt"], "--input: expected a file"),
    (["evaluate", "--checkpoint", "x", "--data", "/nonexistent/t.tsv"], "--data: expected a file"),
    (["average", "--out", "x"], "the following arguments are required: --checkpoints"),
])
def test_bad_arguments_are_one_line_usage_errors(argv, msg, capsys):
    with pytest.raises(SystemExit) as e:
        cli_main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and msg in err, err


@pytest.mark.parametrize("argv,msg", [
    (["train", "--tie-embeddings"], "--tie-embeddings: needs --embed-size equal to --hidden-size, got 64 and 128"),
    (["translate", "--checkpoint", "/nonexistent/ckpt", "--input", "-"], "checkpoint not found"),
    (["evaluate", "--checkpoint", "/nonexistent/ckpt", "--data", __file__], "checkpoint not found"),
    (["average", "--checkpoints", "/nonexistent/a", "--out", "x"], "checkpoint not found"),
    (["train", "--resume", "/nonexistent/run"], "checkpoint not found: /nonexistent/run"),
])
def test_bad_files_and_combinations_exit_2(argv, msg, capsys):
    assert cli_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and msg in err, err


def test_translate_backend_triton_without_interpreter(trained, capsys, monkeypatch):
    if torch.cuda.is_available():
        pytest.skip("triton runs on the GPU here")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert cli_main(["translate", "--checkpoint", str(trained), "--backend", "triton", "go ."]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--backend triton: backend 'triton' is not available" in err, err


def test_library_entry_points_check_values(tmp_path):
    with pytest.raises(ValueError, match="batch_size: expected an integer >= 1, got 0"):
        shard_batches(10, 0, epoch=0, seed=0)
    with pytest.raises(ValueError, match="batch_tokens: expected an integer >= 1 with lengths, got 0"):
        shard_batches(10, 4, epoch=0, seed=0, lengths=torch.ones(10, dtype=torch.long), batch_tokens=0)
    with pytest.raises(ValueError, match="and no lengths"):
        shard_batches(10, 4, epoch=0, seed=0, batch_tokens=8)
    with pytest.raises(UserError, match="max_pairs: expected a positive number of pairs, got 0"):
        load_corpus(max_pairs=0)
    with pytest.raises(UserError, match=r"heldout fraction: expected a number in \[0, 1\), got 1.5"):
        split_by_source([("a", "b")], heldout_fraction=1.5)


# ------------------------------------------------------------------------------------- fused decoder step


def _pair(corpus, dtype=torch.float64, **over):
    cfg = dict(cell="gru", attention="bahdanau", bidirectional=True, dropout=0.3)
    cfg.update(over)
    fused, eager = model_for(corpus, "fused", **cfg).to(dtype), model_for(corpus, "torch", **cfg).to(dtype)
    eager.load_state_dict(fused.state_dict())
    return fused, eager


def test_default_model_runs_the_fused_decoder_step(corpus):
    fused, eager = _pair(corpus)
    assert fused.decoder.fused and not eager.decoder.fused
    assert not model_for(corpus, "fused", cell="lstm", attention="bahdanau").decoder.fused
    assert not model_for(corpus, "fused", attention="bahdanau", num_layers=2).decoder.fused


def test_fused_decoder_step_training_matches_torch_backend(corpus):
    """Teacher forcing (keys and projected values once per batch, the embedding's input gates for every step in
    one GEMM), dropout included (the same draws in the same order): logits and every parameter's gradient."""
    fused, eager = _pair(corpus)
    src, src_len, tgt, _ = batch_of(corpus, 12)
    src_len = src_len.clone()
    src_len[0] = 1
    out = {}
    for name, m in (("fused", fused), ("torch", eager)):
        torch.manual_seed(3)
        logits = m(src, src_len, tgt)
        logits.square().sum().backward()
        out[name] = (logits, {k: p.grad for k, p in m.named_parameters()})
    assert_close(out["fused"][0], out["torch"][0], 1e-9, "logits")
    for k, g in out["torch"][1].items():
        assert_close(out["fused"][1][k], g, 1e-9, f"grad {k}")


def _optimizer_step(make_optimizer):
    def update(m, corpus, fused):
        m.train()
        torch.manual_seed(4)
        train_step(m, make_loss("fused" if fused else "torch"), make_optimizer(m.parameters()),
                   batch_of(corpus, 16), clip=1.0)
    return update


_sgd_step = _optimizer_step(lambda params: torch.optim.SGD(params, lr=0.5))
# torch's fused Adam writes the parameters without moving their version counters.
_fused_adam_step = _optimizer_step(lambda params: torch.optim.Adam(params, lr=0.05, fused=True))


def _data_write(m, corpus, fused):
    """Writes through .data bypass the version counter."""
    m.decoder.embedding.weight.data.mul_(0.5)
    m.decoder.rnn.cells[0].bias_ih.data.add_(0.25)


@pytest.mark.parametrize("update_fn", [_sgd_step, _fused_adam_step, _data_write], ids=["sgd", "fused-adam", "data"])
def test_fused_decoder_step_decoding_matches_torch_backend_after_weight_updates(corpus, update_fn):
    """Decoding gathers the embedding's input gates from a table kept while the weights it was built from are
    unchanged: after an in-place update of the weights (through an optimiser, seen by version counters or not,
    or through .data) the table is rebuilt (a stale one would decode with the old embedding and input weights)."""
    fused, eager = _pair(corpus)
    src, src_len = corpus.dev.src[:10], corpus.dev.src_len[:10]
    for update in range(3):
        for m in (fused, eager):
            m.eval()
        with torch.no_grad():
            sf, se = fused.encode(src, src_len), eager.encode(src, src_len)
            tok = torch.full((10,), 1, dtype=torch.long)
            for _ in range(4):
                lf, sf = fused.step(tok, sf)
                le, se = eager.step(tok, se)
                assert_close(lf, le, 1e-9, f"step logits after {update} updates")
                tok = le.argmax(-1)
        for beam in (1, 3):
            a, b = translate_ids(fused, src, src_len, beam=beam), translate_ids(eager, src, src_len, beam=beam)
            assert [h[0][0] for h in a] == [h[0][0] for h in b]
            assert [h[0][1] for h in a] == pytest.approx([h[0][1] for h in b], rel=1e-6)  # (float32 scores)
        for m in (fused, eager):  # the same in-place update
            update_fn(m, corpus, m is fused)


@pytest.mark.parametrize("cfg", [CONFIGS[0], CONFIGS[2], CONFIGS[5]], ids=cfg_id)
def test_reorder_state_keeps_the_source_side_and_decodes_as_the_default(corpus, cfg):
    """The model's beam reorder copies the per-hypothesis entries only (the fused decoder step's attention and the
    dot attention op take the source side grouped, one row per sentence: not even expanded); beam search gives the
    same hypotheses as with decode's default reorder, which copies every entry."""
    from s2s_fused.seq2seq.decode import beam_search, default_reorder_state

    m = model_for(corpus, "fused", **cfg).eval()
    src, src_len = corpus.dev.src[:6], corpus.dev.src_len[:6]
    with torch.no_grad():
        state = m.encode(src, src_len)
        expanded = m.reorder_state(state, torch.arange(6).repeat_interleave(3))
        for key, value in default_reorder_state(state, torch.arange(6).repeat_interleave(3)).items():
            if m.decoder.grouped_source and key in m.SOURCE_SIDE:
                assert expanded[key] is state[key], key
            else:
                assert torch.equal(expanded[key], value), key
        within = torch.tensor([2, 0, 1, 3, 3, 5, 8, 6, 7, 9, 10, 11, 12, 13, 14, 15, 16, 17])
        again = m.reorder_state(expanded, within)
        for key in m.SOURCE_SIDE:
            if key in expanded:
                assert again[key] is expanded[key], key
        runs = [beam_search(m.step, state, 1, 2, 3, 8, reorder_state=r) for r in (m.reorder_state, None)]
    assert [[(h.tokens, h.score) for h in hyps] for hyps in runs[0]] == \
        [[(h.tokens, h.score) for h in hyps] for hyps in runs[1]]


def test_fused_reorder_across_sentences_gathers_the_source_side(corpus):
    """A reorder that changes the number of rows and does not keep each sentence's rows together (not beam
    search's expansion) gathers the fused decoder's source side per row: the next steps equal those of a model
    given every entry gathered."""
    from s2s_fused.seq2seq.decode import default_reorder_state

    fused, eager = _pair(corpus)
    fused.eval(), eager.eval()
    src, src_len = corpus.dev.src[:4], corpus.dev.src_len[:4]
    with torch.no_grad():
        sf, se = fused.encode(src, src_len), eager.encode(src, src_len)
        grow = torch.arange(4).repeat_interleave(2)
        sf, se = fused.reorder_state(sf, grow), default_reorder_state(se, grow)
        assert sf["keys"].shape[0] == 4  # grouped: 2 rows per sentence
        for index in (torch.tensor([7, 0, 3, 5, 1, 2]), torch.tensor([1, 5, 2]), torch.tensor([2, 0, 0, 1])):
            sf, se = fused.reorder_state(sf, index), default_reorder_state(se, index)
            tok = torch.arange(len(index)) + 4
            lf, sf = fused.step(tok, sf)
            le, se = eager.step(tok, se)
            assert_close(lf, le, 1e-9, f"logits after reorder {index.tolist()}")


# ------------------------------------------------------------------------------------------------ live rows
class GarbageOffLive:
    """``ToyLM.step`` taking decode's ``live`` rows: every row the search does not mark live gets huge random
    logits, so a row marked dead that the search still reads changes the result."""

    def __init__(self, lm, seed=0):
        self.lm, self.g, self.calls = lm, torch.Generator().manual_seed(seed), []

    def __call__(self, tokens, state, live):
        self.calls.append(live.clone())
        logits, state = self.full(tokens, state)
        noise = torch.randn(logits.shape, generator=self.g, dtype=logits.dtype) * 1e3
        return torch.where(live[:, None], logits, noise), state

    def full(self, tokens, state):
        """The step without ``live``: per input row its own bias, so that rows finish at different steps."""
        logits, _ = self.lm.step(tokens, state)
        return logits + self.lm.table[state["row"] % self.lm.table.shape[0]].flip(-1), state


@TOPK_STEPS
@pytest.mark.parametrize("opts", [dict(), dict(min_len=3), dict(no_repeat_ngram_size=1, min_len=2),
                                  dict(length_penalty="gnmt", n_best=2)], ids=["plain", "min_len", "ngram", "gnmt"])
def test_live_rows_are_every_row_the_search_reads(topk, opts):
    """Rows the search does not mark live may hold any logits: the results equal a run that computes every row,
    and the search marks rows dead (finished beams, the empty beams of the first step, done rows)."""
    lm = ToyLM(6, seed=3)
    init = {"row": torch.arange(5)}
    for beam, max_len in ((1, 7), (3, 7), (4, 9)):
        kw = dict(opts, n_best=min(beam, opts.get("n_best", 1)))
        step = GarbageOffLive(lm)
        want = _pairs(beam_search(step.full, init, 0, 1, beam, max_len, topk=topk, **kw))
        got = _pairs(beam_search(step, init, 0, 1, beam, max_len, topk=topk, live_rows=True, **kw))
        assert got == want, (beam, kw)
        assert not step.calls[0].view(5, beam)[:, 1:].any() and step.calls[0].view(5, beam)[:, 0].all()
        assert any(not c.all() for c in step.calls[1:]) or beam == 1
    step = GarbageOffLive(lm)
    got = _pairs(greedy_decode(step, init, 0, 1, 7, topk=topk, live_rows=True))
    assert got == _pairs(greedy_decode(step.full, init, 0, 1, 7, topk=topk))
    assert any(not c.all() for c in step.calls)


@pytest.mark.parametrize("cfg", [dict(attention="bahdanau", bidirectional=True), dict(attention="none"),
                                 dict(cell="lstm", attention="luong", score="general")],
                         ids=["fused", "plain", "luong"])
def test_model_step_live_rows_and_buffers(corpus, cfg):
    """Seq2Seq.step with ``live``: the live rows' logits are the full step's (float64), the others 0, with and
    without a reused (NaN-poisoned) buffer dict; the decodes of translate_ids (live rows, one buffer per decode)
    give the hypotheses and scores of the plain decoders."""
    from tests.helpers import poison_

    m = model_for(corpus, "fused", **cfg).to(torch.float64).eval()
    src, src_len = corpus.dev.src[:7], corpus.dev.src_len[:7]
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        state = m.encode(src, src_len)
        tok = torch.randint(4, len(corpus.tgt_vocab), (7,), generator=g)
        full, _ = m.step(tok, state)
        buffers = {}
        for live in (torch.tensor([1, 0, 1, 1, 0, 0, 1], dtype=torch.bool), torch.zeros(7, dtype=torch.bool),
                     torch.ones(7, dtype=torch.bool), torch.tensor([0, 0, 0, 0, 0, 0, 1], dtype=torch.bool),
                     torch.tensor([1, 1, 1, 1, 0, 1, 1], dtype=torch.bool)):
            for buf in (None, buffers):
                if buf is not None:
                    for t in buf.values():
                        poison_(t)
                got, _ = m.step(tok, state, live, buffers=buf)
                assert_close(got[live], full[live], 1e-12, "live rows")
                if live.sum() * 4 > 3 * len(live):  # few dead rows: every row computed
                    assert_close(got, full, 1e-12, "every row")
                else:
                    assert torch.equal(got[~live], torch.zeros_like(got[~live]))
        assert set(buffers) <= {"logits", "live"} and buffers["logits"].shape == full.shape
        for beam in (1, 3):
            step_plain = m.step
            want = (greedy_decode(step_plain, m.encode(src, src_len), 1, 2, 8) if beam == 1 else
                    beam_search(step_plain, m.encode(src, src_len), 1, 2, beam, 8, reorder_state=m.reorder_state))
            got = translate_ids(m, src, src_len, beam=beam, max_len=8)
            assert [h[0] for h in got] == [(h[0].tokens, pytest.approx(h[0].score, rel=1e-12)) for h in want]
    # With autograd on, the step allocates its outputs (a buffer written by an out= op records no gradient).
    m.train()
    state = m.encode(src, src_len)
    logits, _ = m.step(tok, state, torch.ones(7, dtype=torch.bool), buffers={})
    logits.sum().backward()
    assert m.decoder.dense.weight.grad is not None


def test_decodes_of_a_model_reuse_its_step_buffers(corpus, monkeypatch):
    """translate_ids hands one decode's step buffers to the model's next decode (same memory, same results, also
    when the buffers were poisoned in between); a decode running meanwhile (another thread) gets its own dict;
    buffers above the size limit are not kept."""
    from tests.helpers import poison_

    tr = sys.modules[translate_ids.__module__]  # the module (the package exports a function of the same name)
    m = model_for(corpus, "fused")
    src, src_len = corpus.dev.src[:9], corpus.dev.src_len[:9]
    first = translate_ids(m, src, src_len, beam=3)
    kept = tr._KEPT_BUFFERS[m]
    ptr = kept["logits"].data_ptr()
    for t in kept.values():
        poison_(t)
    assert translate_ids(m, src, src_len, beam=3) == first
    assert tr._KEPT_BUFFERS[m] is kept and kept["logits"].data_ptr() == ptr
    taken = tr._take_buffers(m)  # a decode under way elsewhere holds them
    assert taken is kept and tr._take_buffers(m) == {}
    assert translate_ids(m, src, src_len, beam=3) == first
    tr._give_back_buffers(m, taken)  # the first decode to finish keeps its dict, the other is dropped
    assert tr._KEPT_BUFFERS[m] is not kept
    monkeypatch.setattr(tr, "_KEEP_BYTES", kept["logits"].numel())
    tr._KEPT_BUFFERS.pop(m)
    assert translate_ids(m, src, src_len, beam=3) == first
    assert m not in tr._KEPT_BUFFERS


def test_live_rows_bad_arguments(corpus):
    m = model_for(corpus, "fused", attention="bahdanau").eval()
    src, src_len = corpus.dev.src[:3], corpus.dev.src_len[:3]
    tok = torch.ones(3, dtype=torch.long)
    with torch.no_grad():
        state = m.encode(src, src_len)
        with pytest.raises(TypeError, match=r"live: expected a bool tensor of shape \(3,\), got torch.int64"):
            m.step(tok, state, torch.ones(3, dtype=torch.long))
        with pytest.raises(ValueError, match=r"live: expected a bool tensor of shape \(3,\), got .*\(4,\)"):
            m.step(tok, state, torch.ones(4, dtype=torch.bool))
        with pytest.raises(TypeError, match="live: expected a bool tensor of shape .*got list"):
            m.step(tok, state, [True, True, True])
        with pytest.raises(TypeError, match="buffers: expected a dict or None, got list"):
            m.step(tok, state, None, buffers=[])
    lm = ToyLM(5)
    init = {"last": torch.zeros(2, dtype=torch.long)}
    for decode in (lambda **k: beam_search(lm.step, init, 0, 1, 2, 4, **k),
                   lambda **k: greedy_decode(lm.step, init, 0, 1, 4, **k)):
        with pytest.raises(TypeError, match="live_rows: expected a bool, got str"):
            decode(live_rows="yes")


def test_decoding_after_an_update_that_keeps_version_counters(corpus):
    """torch's Adam(fused=True) writes the parameters without moving their version counters: the decoder's
    input-gate table must still come from the current weights (a table cached per weight version decoded with
    the previous ones)."""
    fused, eager = _pair(corpus, torch.float32)
    src, src_len = corpus.dev.src[:10], corpus.dev.src_len[:10]
    opt = torch.optim.Adam(fused.parameters(), lr=0.05, fused=True)
    for update in range(2):
        eager.load_state_dict(fused.state_dict())
        for beam in (1, 3):
            a, b = translate_ids(fused, src, src_len, beam=beam), translate_ids(eager, src, src_len, beam=beam)
            assert [h[0][0] for h in a] == [h[0][0] for h in b], (update, beam)
            assert [h[0][1] for h in a] == pytest.approx([h[0][1] for h in b], rel=1e-5)
        versions = [p._version for p in fused.parameters()]
        fused.train()
        torch.manual_seed(4)
        train_step(fused, make_loss("fused"), opt, batch_of(corpus, 16), clip=1.0)
        if update == 0:
            assert [p._version for p in fused.parameters()] == versions  # the premise: no version moved
