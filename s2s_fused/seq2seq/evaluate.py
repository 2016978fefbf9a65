"""Scoring: teacher-forced cross-entropy (perplexity), and sacrebleu corpus BLEU and chrF of greedy or beam-search
translations against every reference of each source, on the dev set (every epoch), the test set (the final report)
or a tab-separated file (``python -m s2s_fused evaluate``)."""
from __future__ import annotations

import math
import re
import time

import torch

from .data import Vocab
from .translate import translate_ids


@torch.no_grad()
def heldout_loss(model, loss_fn, tensors, device, batch_size=512) -> float:
    """Mean per-token cross-entropy (teacher forced) over every (source, reference) pair of ``tensors``."""
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


def _streams(refs: list[list[str]]):
    """sacrebleu takes reference *streams* parallel to the hypotheses; a missing reference is None."""
    refs = [[detokenize(r) for r in rs] for rs in refs]
    n = max(len(r) for r in refs)
    return [[r[i] if i < len(r) else None for r in refs] for i in range(n)]


def corpus_bleu(hyps: list[str], refs: list[list[str]]):
    """sacrebleu corpus BLEU (default 13a tokenizer) against every reference of each hypothesis. Inputs are
    d2l-preprocessed (lower-case, tokenised) text; both sides are detokenised the same way first."""
    import sacrebleu

    bleu = sacrebleu.metrics.BLEU()
    return bleu.corpus_score([detokenize(h) for h in hyps], _streams(refs)), bleu.get_signature()


def corpus_chrf(hyps: list[str], refs: list[list[str]]):
    """sacrebleu corpus chrF (character 6-grams, beta 2), inputs as :func:`corpus_bleu`'s."""
    import sacrebleu

    chrf = sacrebleu.metrics.CHRF()
    return chrf.corpus_score([detokenize(h) for h in hyps], _streams(refs)), chrf.get_signature()


def decode_texts(model, heldout, tgt_seg, tgt_vocab, device, beam: int, batch_size: int = 512) -> list[str]:
    """The best translation of each of ``heldout``'s sources, as preprocessed plain text."""
    out = []
    for i in range(0, len(heldout), batch_size):
        src, src_len = heldout.src[i:i + batch_size].to(device), heldout.src_len[i:i + batch_size].to(device)
        out += [tgt_seg.join(tgt_vocab.decode(r[0][0])) if r else "" for r in translate_ids(model, src, src_len,
                                                                                               beam=beam)]
    return out


def references(heldout) -> list[list[str]]:
    """Each source's references in the hypotheses' form (preprocessed text: ``WordSegmenter.join`` of the tokens,
    which :class:`~.data.SentencePieceSegmenter` output also is)."""
    from .data import tokenize

    return [[" ".join(tokenize(t)) for t in refs] for _, refs in heldout.items]


def score(model, loss_fn, heldout, tgt_seg, tgt_vocab, device, beam: int) -> dict:
    """Loss, BLEU and chrF of ``model`` on ``heldout`` with beam size ``beam`` (1: greedy), and the hypotheses."""
    loss = heldout_loss(model, loss_fn, heldout.pairs, device)
    t0 = time.perf_counter()
    hyps = decode_texts(model, heldout, tgt_seg, tgt_vocab, device, beam)
    seconds = time.perf_counter() - t0
    refs = references(heldout)
    bleu, bleu_sig = corpus_bleu(hyps, refs)
    chrf, chrf_sig = corpus_chrf(hyps, refs)
    return {"loss": loss, "bleu": bleu.score, "chrf": chrf.score, "bleu_signature": str(bleu_sig),
            "chrf_signature": str(chrf_sig), "hyps": hyps, "refs": refs, "seconds": seconds}


def make_validator(loss_fn, corpus, device):
    """The per-epoch validation: dev loss, and greedy dev BLEU and chrF (greedy keeps it to seconds an epoch)."""
    def validate(model) -> dict:
        if not len(corpus.dev):
            return {"dev_loss": None, "dev_bleu": None, "dev_chrf": None}
        s = score(model, loss_fn, corpus.dev, corpus.tgt_seg, corpus.tgt_vocab, device, beam=1)
        return {"dev_loss": s["loss"], "dev_bleu": s["bleu"], "dev_chrf": s["chrf"]}
    return validate


def evaluate(model, loss_fn, corpus, device, beam: int) -> dict:
    """Evaluates on ``corpus``'s test sources and prints the results with a few example translations. Returns the
    report's entries: ``test_loss``, ``perplexity``, ``bleu_greedy``, ``bleu_beam``, ``chrf_greedy``,
    ``chrf_beam`` (None, and the losses NaN, without test sources), ``bleu_signature``, ``chrf_signature``,
    ``test_decode_seconds``."""
    test = corpus.test
    if not len(test):
        return {"test_loss": float("nan"), "perplexity": float("nan"), "bleu_greedy": None, "bleu_beam": None}
    g = score(model, loss_fn, test, corpus.tgt_seg, corpus.tgt_vocab, device, beam=1)
    b = score(model, loss_fn, test, corpus.tgt_seg, corpus.tgt_vocab, device, beam=beam) if beam > 1 else g
    ppl = math.exp(min(g["loss"], 50.0)) if g["loss"] == g["loss"] else float("nan")
    which = "test" if corpus.test is not corpus.dev else "dev (no separate test set)"
    print(f"{which} ({len(test)} unseen English sources, all their French translations as references): "
          f"perplexity {ppl:.2f} (loss {g['loss']:.3f}/token)")
    print(f"  BLEU greedy {g['bleu']:.1f}   BLEU beam-{beam} {b['bleu']:.1f}   [sacrebleu {g['bleu_signature']}]")
    print(f"  chrF greedy {g['chrf']:.1f}   chrF beam-{beam} {b['chrf']:.1f}   [sacrebleu {g['chrf_signature']}]")
    print("examples (source => greedy | beam; one reference):")
    for i in range(min(6, len(test))):
        j = (i * 37) % len(test)
        print(f"  {test.items[j][0]!s:28s} => {g['hyps'][j]:28s} | {b['hyps'][j]:28s} (ref: {g['refs'][j][0]})")
    return {"test_loss": g["loss"], "perplexity": ppl, "bleu_greedy": g["bleu"], "bleu_beam": b["bleu"],
            "chrf_greedy": g["chrf"], "chrf_beam": b["chrf"], "bleu_signature": g["bleu_signature"],
            "chrf_signature": g["chrf_signature"],
            "test_decode_seconds": {"greedy": g["seconds"], "beam": b["seconds"]}}
