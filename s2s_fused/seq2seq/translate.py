"""Translation with a trained model: greedy or beam search through :mod:`s2s_fused.seq2seq.decode`, whose top-k
step is the fused op, or its eager twin for the ``"torch"`` backend."""
from __future__ import annotations

import functools
import weakref

import torch

from .data import Vocab, WordSegmenter, to_tensors
from .decode import beam_search, eager_beam_topk, greedy_decode
from .model import op_backend


def decoder_options(backend: str) -> dict:
    """The decoders' keywords for a model backend: the eager top-k step for ``"torch"``, else the fused op; on
    every backend the output layer only over the rows the search reads (``live_rows``), so that ``--backend
    torch`` runs the same decoding algorithm and compares kernels only."""
    if backend == "torch":
        return {"topk": eager_beam_topk, "live_rows": True}
    return {"backend": op_backend(backend), "live_rows": True}


# Per model, the step buffers of its last decode, handed to the next one. A decode's (N, V) logits buffers are
# written at every step; fresh ones are mapped and page-faulted anew at every decode under glibc's default
# settings (beam-4 over 128 sentences of the default model: 10 MB, 59.0 vs 64.0 ms a decode, AMD EPYC, 1 thread).
# A decode takes the dict out while it runs, so a concurrent decode of the same model (another thread) gets its
# own; buffers above _KEEP_BYTES in all are not kept (a large vocabulary's would hold that much memory for the
# model's lifetime).
_KEPT_BUFFERS: "weakref.WeakKeyDictionary[torch.nn.Module, dict]" = weakref.WeakKeyDictionary()
_KEEP_BYTES = 64 << 20


def _take_buffers(model) -> dict:
    return _KEPT_BUFFERS.pop(model, None) or {}


def _give_back_buffers(model, buffers: dict) -> None:
    size = sum(t.numel() * t.element_size() for t in buffers.values())
    if size <= _KEEP_BYTES:
        _KEPT_BUFFERS.setdefault(model, buffers)


@torch.no_grad()
def translate_ids(model, src, src_len, *, beam: int = 1, max_len: int | None = None, length_penalty=None,
                  alpha: float = 0.75, n_best: int = 1, backend: str | None = None):
    """Decode source ids ``(B, S)`` with valid lengths ``(B,)`` with a :class:`~.model.Seq2Seq`; returns per input
    ``[(token ids without BOS / EOS, score), ...]``, best first. ``backend``: the model's own by default."""
    kw = decoder_options(backend or model.backend)
    was_training = model.training
    model.eval()
    buffers = _take_buffers(model)
    try:
        state = model.encode(src, src_len)
        max_len = max_len or model.config["num_steps"] + 2
        # The search reads each step's logits before the next step: one output buffer serves every step.
        step = functools.partial(model.step, buffers=buffers)
        if beam <= 1:
            res = greedy_decode(step, state, Vocab.bos, Vocab.eos, max_len, **kw)
        else:
            res = beam_search(step, state, Vocab.bos, Vocab.eos, beam, max_len,
                              length_penalty=length_penalty, alpha=alpha, n_best=n_best,
                              reorder_state=model.reorder_state, **kw)
    finally:
        model.train(was_training)
        _give_back_buffers(model, buffers)
    return [[(h.tokens, h.score) for h in hyps] for hyps in res]


def translate(model, src_vocab: Vocab, tgt_vocab: Vocab, sentences: list[str], *, beam: int = 1,
              batch_size: int = 256, device=None, segmenters=None, **kw) -> list[str]:
    """Translate raw sentences in batches of ``batch_size``; returns the best hypothesis of each as preprocessed
    text (lower case, a space before ``,.!?``). ``segmenters``: the checkpoint's ``(source, target)`` ones
    (:func:`~.checkpoint.segmenters_of`; default: words)."""
    src_seg, tgt_seg = segmenters or (WordSegmenter(), WordSegmenter())
    device = device or next(model.parameters()).device
    out = []
    for i in range(0, len(sentences), batch_size):
        chunk = sentences[i:i + batch_size]
        src, src_len = to_tensors([src_seg.split(s) for s in chunk], src_vocab, model.config["num_steps"])
        res = translate_ids(model, src.to(device), src_len.to(device), beam=beam, **kw)
        out += [tgt_seg.join(tgt_vocab.decode(r[0][0])) if r else "" for r in res]
    return out
