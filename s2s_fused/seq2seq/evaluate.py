"""Held-out evaluation: teacher-forced cross-entropy (perplexity) and sacrebleu BLEU of greedy and beam-search
translations against every reference of each held-out source."""
from __future__ import annotations

import math
import re
import time

import torch

from .data import Vocab, tokenize
from .translate import translate_ids


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


def evaluate(model, loss_fn, corpus, device, beam: int) -> dict:
    """Evaluates on ``corpus``'s held-out sources and prints the results with a few example translations. Returns
    the report's entries: ``heldout_loss``, ``perplexity``, ``bleu_greedy``, ``bleu_beam`` (None, and the losses
    NaN, without held-out sources), ``bleu_signature``, ``heldout_decode_seconds``."""
    if not corpus.heldout:
        return {"heldout_loss": float("nan"), "perplexity": float("nan"), "bleu_greedy": None, "bleu_beam": None}
    ho_loss = heldout_loss(model, loss_fn, corpus.heldout_pairs, device)
    ppl = math.exp(min(ho_loss, 50.0)) if ho_loss == ho_loss else float("nan")
    # Hypotheses are d2l-tokenised lower-case text, so the references are put in the same form.
    refs = [[" ".join(tokenize(t)) for t in refs_] for _, refs_ in corpus.heldout]
    src, src_len = corpus.heldout_src.to(device), corpus.heldout_src_len.to(device)
    t0 = time.perf_counter()
    greedy = translate_ids(model, src, src_len, beam=1)
    t_greedy = time.perf_counter() - t0
    t0 = time.perf_counter()
    beamed = translate_ids(model, src, src_len, beam=beam) if beam > 1 else greedy
    t_beam = time.perf_counter() - t0
    g_txt = [" ".join(corpus.tgt_vocab.decode(r[0][0])) for r in greedy]
    b_txt = [" ".join(corpus.tgt_vocab.decode(r[0][0])) for r in beamed]
    bg, sig = corpus_bleu(g_txt, refs)
    bb, _ = corpus_bleu(b_txt, refs)
    print(f"held-out ({len(corpus.heldout)} unseen English sources, all their French translations as "
          f"references): perplexity {ppl:.2f} (loss {ho_loss:.3f}/token)")
    print(f"  BLEU greedy {bg.score:.1f}   BLEU beam-{beam} {bb.score:.1f}   [sacrebleu {sig}]")
    print("examples (source => greedy | beam; one reference):")
    for i in range(min(6, len(corpus.heldout))):
        j = (i * 37) % len(corpus.heldout)
        print(f"  {corpus.heldout[j][0]!s:28s} => {g_txt[j]:28s} | {b_txt[j]:28s} (ref: {refs[j][0]})")
    return {"heldout_loss": ho_loss, "perplexity": ppl, "bleu_greedy": bg.score, "bleu_beam": bb.score,
            "bleu_signature": str(sig), "heldout_decode_seconds": {"greedy": t_greedy, "beam": t_beam}}
