"""Batched beam-search top-k: the selection of one beam-search step in one pass over the logits.

Public: :func:`beam_search_topk`. The op ``torch.ops.s2s_fused.beam_search_topk`` (schema and CPU / CUDA kernels in
csrc/) and its Triton twin ``beam_search_topk_triton`` (kernels in s2s_fused/triton/beam.py) get their fake kernel
here; the ``reference`` backend is plain torch (s2s_fused.reference.beam_search_topk). The outputs are indices and
scores of a discrete choice: no autograd.
"""
from __future__ import annotations

import torch

from .. import _checks, _op_checks, reference
from ..backend import resolve
from . import _library

_library.define_triton_twin("beam", "beam_search_topk")

# Largest k of the single-pass kernels (csrc/beam_topk.h kBeamFastMaxK); larger k takes an exact, slower path.
FAST_MAX_K = 64


def _fake_impl(logits, beam_scores, k, finished=None, eos_id=None):
    _op_checks.beam_search_topk(logits, beam_scores, k, finished, eos_id)  # the kernels' own checks and messages
    B, K, V = logits.shape
    return (beam_scores.new_empty(B, k), beam_scores.new_empty(B, k, dtype=torch.int64),
            beam_scores.new_empty(B, k, dtype=torch.int64))


_library.register_fake("beam_search_topk")(_fake_impl)


def check_args(logits, beam_scores, k, finished, eos_id) -> None:
    """The op's input checks (names the argument, what was expected, what came); reads no tensor values."""
    _checks.tensor(logits, "logits", dims=3, floating=True)
    _checks.tensor(beam_scores, "beam_scores", dims=2)
    if beam_scores.dtype != torch.float32:
        raise TypeError(f"beam_scores: expected a float32 tensor, got {beam_scores.dtype}")
    B, K, V = logits.shape
    _checks.shape(beam_scores, "beam_scores", (B, K))
    if finished is not None:
        _checks.tensor(finished, "finished", dims=2)  # a tensor before its device is read
    _checks.same_device(logits, "logits", beam_scores=beam_scores, finished=finished)
    if isinstance(k, bool) or not isinstance(k, int):
        raise TypeError(f"k: expected an int, got {type(k).__name__}")
    if not 1 <= k <= K * V:
        raise ValueError(f"k: expected 1 <= k <= K*V = {K * V}, got {k}")
    if eos_id is not None and (isinstance(eos_id, bool) or not isinstance(eos_id, int)):
        raise TypeError(f"eos_id: expected an int or None, got {type(eos_id).__name__}")
    if finished is not None:
        if finished.dtype != torch.bool:
            raise TypeError(f"finished: expected a bool tensor, got {finished.dtype}")
        _checks.shape(finished, "finished", (B, K))
        if eos_id is None:
            raise ValueError("eos_id: required when finished is given, got None")
    if eos_id is not None and not 0 <= eos_id < V:
        raise ValueError(f"eos_id: expected 0 <= eos_id < V = {V}, got {eos_id}")


def beam_search_topk(logits, beam_scores, k, *, finished=None, eos_id=None, backend=None):
    """One beam-search step: the best ``k`` of the ``K*V`` candidates of each batch row.

    logits (B, K, V) raw decoder logits (fp32/fp64/fp16/bf16, any strides); beam_scores (B, K) float32 running
    log-probabilities (K = 1 on the first step; ``-inf`` marks an empty beam). Candidate (i, v) of row b scores
    ``beam_scores[b, i] + log_softmax(logits[b, i])[v]``, computed in fp32 (fp64 for fp64 logits).

    Returns ``(scores, beam_index, token)``, each (B, k): scores float32 in descending order, beam_index and token
    int64. Ties go to the lower flat index ``i*V + v``, so results do not depend on the batch size. A finished beam
    (``finished`` (B, K) bool, with ``eos_id``) offers exactly one candidate, (its score unchanged, ``eos_id``);
    an empty (-inf) beam offers only -inf candidates, which rank after every finite one (by index). ``1 <= k <=
    K*V``; k <= 64 runs the single-pass kernels, larger k an exact slower path. No host synchronisation.

    NaN and inf follow torch (``log_softmax`` then a stable descending ``sort``/``topk``), on every backend: a
    beam whose logits hold a NaN or +inf, or are all -inf, scores NaN for every token (log_softmax is NaN there);
    a NaN beam score gives NaN candidates, a +inf one +inf (NaN where the logit is -inf); NaN ranks above +inf, and
    equal scores (NaN with NaN) go to the lower flat index. So a NaN anywhere in a beam's logits surfaces as NaN
    scores in the top of its row instead of being dropped silently.
    """
    check_args(logits, beam_scores, k, finished, eos_id)
    be = resolve("beam_search_topk", backend, logits.device)
    if be == "reference":
        return reference.beam_search_topk(logits, beam_scores, k, finished, eos_id)
    return _library.op("beam_search_topk", be)(logits, beam_scores, k, finished, eos_id)
