"""Translation with a trained model: greedy or beam search, through ``s2s_fused.seq2seq.decode`` (the fused
decoders) or, for ``backend="torch"`` and when that module is not there, the eager ones of :mod:`.eager_decode`."""
from __future__ import annotations

import importlib

import torch

from . import eager_decode
from .data import Vocab, to_tensors, tokenize
from .model import op_backend


def decoders(backend: str):
    """``(greedy_decode, beam_search, fused)`` for a model backend."""
    if backend != "torch":
        try:
            mod = importlib.import_module("s2s_fused.seq2seq.decode")
        except ModuleNotFoundError as e:
            if e.name != "s2s_fused.seq2seq.decode":
                raise
        else:
            return mod.greedy_decode, mod.beam_search, True
    return eager_decode.greedy_decode, eager_decode.beam_search, False


def _as_list(x):
    return x.tolist() if isinstance(x, torch.Tensor) else list(x)


def _hyp(h):
    """One hypothesis as ``(token ids, score)``, whatever container the decoder returned."""
    if isinstance(h, dict):
        return _as_list(h["tokens"]), float(h.get("score", 0.0))
    if hasattr(h, "tokens"):
        return _as_list(h.tokens), float(getattr(h, "score", 0.0))
    if isinstance(h, (tuple, list)) and len(h) == 2 and not isinstance(h[0], int):
        return _as_list(h[0]), float(h[1])
    return _as_list(h), 0.0


def normalize_results(results) -> list[list[tuple[list[int], float]]]:
    """Per input, the hypotheses as ``[(token ids, score), ...]`` best first."""
    out = []
    for r in results:
        if isinstance(r, dict) or hasattr(r, "tokens") or (
                isinstance(r, (tuple, list)) and len(r) == 2 and isinstance(r[1], (float, int))
                and not isinstance(r[0], int)):
            out.append([_hyp(r)])
        else:
            out.append([_hyp(h) for h in r])
    return out


def _strip(ids, eos, bos):
    ids = [int(i) for i in ids]
    if ids and ids[0] == bos:
        ids = ids[1:]
    return ids[:ids.index(eos)] if eos in ids else ids


@torch.no_grad()
def translate_ids(model, src, src_len, *, beam: int = 1, max_len: int | None = None, length_penalty=None,
                  alpha: float = 0.75, n_best: int = 1, backend: str | None = None):
    """Decode source ids ``(B, S)`` with valid lengths ``(B,)``; returns per input ``[(ids, score), ...]``."""
    backend = backend or getattr(model, "backend", "fused")
    was_training = model.training
    model.eval()
    try:
        greedy, beam_search, _ = decoders(backend)
        state = model.encode(src, src_len)
        max_len = max_len or model.config["num_steps"] + 2
        kw = {} if backend == "torch" else {"backend": op_backend(backend)}
        if beam <= 1:
            res = greedy(model.step, state, Vocab.bos, Vocab.eos, max_len, **kw)
        else:
            res = beam_search(model.step, state, Vocab.bos, Vocab.eos, beam, max_len,
                              length_penalty=length_penalty, alpha=alpha, n_best=n_best, **kw)
        res = normalize_results(res)
    finally:
        model.train(was_training)
    return [[(_strip(ids, Vocab.eos, Vocab.bos), s) for ids, s in r] for r in res]


def translate(model, src_vocab: Vocab, tgt_vocab: Vocab, sentences: list[str], *, beam: int = 1,
              batch_size: int = 256, device=None, **kw) -> list[str]:
    """Translate raw sentences; returns the best hypothesis of each as space-separated tokens."""
    device = device or next(model.parameters()).device
    out = []
    for i in range(0, len(sentences), batch_size):
        chunk = sentences[i:i + batch_size]
        src, src_len = to_tensors([tokenize(s) for s in chunk], src_vocab, model.config["num_steps"])
        res = translate_ids(model, src.to(device), src_len.to(device), beam=beam, **kw)
        out += [" ".join(tgt_vocab.decode(r[0][0])) if r else "" for r in res]
    return out
