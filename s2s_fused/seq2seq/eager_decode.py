"""Greedy and beam-search decoding in plain eager torch: the ``"torch"`` backend's decoders (the baseline of the
side-by-side comparison) and the fallback when ``s2s_fused.seq2seq.decode`` is not there.

Same call signatures as :mod:`s2s_fused.seq2seq.decode`:
``step_fn(tokens (N,), state) -> (logits (N, V), state)``; ``state`` is a pytree of tensors whose first dimension
is the batch, ``reorder_state(state, index (N,)) -> state`` (default: ``index_select(0, index)`` on every tensor).
Results: one list per input of ``(token ids without BOS/EOS, score)`` pairs, best first.

Beam search uses the same scheme as the fused one (see :func:`beam_search`), so the side-by-side comparison
times the same algorithm. Scores: the sum of token log-probabilities (EOS included), divided by ``len ** alpha``
(``length_penalty="avg"``) or ``((5 + len) / 6) ** alpha`` (``"gnmt"``, Wu et al. 2016), where ``len`` counts
the generated tokens including EOS.
"""
from __future__ import annotations

import torch

from torch.utils._pytree import tree_map


def default_reorder_state(state, index):
    return tree_map(lambda t: t.index_select(0, index) if isinstance(t, torch.Tensor) else t, state)


def _batch_size(state):
    leaves = []
    tree_map(lambda t: leaves.append(t) if isinstance(t, torch.Tensor) else None, state)
    if not leaves:
        raise ValueError("init_state: expected a pytree holding at least one tensor (batch first)")
    return leaves[0].shape[0], leaves[0].device


def length_norm(length, length_penalty, alpha):
    if length_penalty is None or length_penalty == "none":
        return 1.0
    if length_penalty == "avg":
        return float(length) ** alpha
    if length_penalty == "gnmt":
        return ((5.0 + length) / 6.0) ** alpha
    raise ValueError(f"length_penalty: expected None, 'avg' or 'gnmt', got {length_penalty!r}")


@torch.no_grad()
def greedy_decode(step_fn, init_state, bos_id, eos_id, max_len, *, batch_size=None, reorder_state=None,
                  backend=None):
    """Arg-max decoding of at most ``max_len`` tokens per input (EOS included)."""
    del reorder_state, backend  # finished rows keep running (masked), so the state is never reordered
    n, device = _batch_size(init_state) if batch_size is None else (batch_size, _batch_size(init_state)[1])
    tokens = torch.full((n,), bos_id, dtype=torch.long, device=device)
    state, done = init_state, torch.zeros(n, dtype=torch.bool, device=device)
    score = torch.zeros(n, device=device, dtype=torch.float64)
    out = []
    for _ in range(max_len):
        logits, state = step_fn(tokens, state)
        logp = torch.log_softmax(logits.float(), -1)
        best_lp, tokens = logp.max(-1)
        score += torch.where(done, torch.zeros_like(best_lp), best_lp).double()
        out.append(torch.where(done, torch.full_like(tokens, eos_id), tokens))
        done = done | (tokens == eos_id)
        if bool(done.all()):
            break
    ids = torch.stack(out, 1).tolist() if out else [[] for _ in range(n)]
    results = []
    for row, s in zip(ids, score.tolist()):
        hyp = row[:row.index(eos_id)] if eos_id in row else row
        results.append([(hyp, s)])
    return results


def _blocked_ngrams(hyp, n):
    """Tokens that would repeat an n-gram already in ``hyp`` (the prefix's last n-1 tokens + the token)."""
    if n <= 0 or len(hyp) < n - 1:
        return set()
    prefix = tuple(hyp[len(hyp) - (n - 1):]) if n > 1 else ()
    return {hyp[i + n - 1] for i in range(len(hyp) - n + 1) if tuple(hyp[i:i + n - 1]) == prefix}


@torch.no_grad()
def beam_search(step_fn, init_state, bos_id, eos_id, beam_size, max_len, *, min_len=0, length_penalty=None,
                alpha=0.75, n_best=1, no_repeat_ngram_size=0, reorder_state=None, backend=None):
    """Batched beam search; returns per input the ``n_best`` ``(tokens, score)`` pairs, best first.

    The scheme of :mod:`s2s_fused.seq2seq.decode` (FasterTransformer's), with the selection done by eager
    ``log_softmax`` + ``topk`` over all ``beam * V`` candidates: a beam that emitted EOS stays in the beam as one
    candidate (itself, score unchanged); beams are ranked by log-probability during the search and the length
    penalty ranks the final ones; beams cut at ``max_len`` count. A row stops once its ``n_best`` best hypotheses
    are finished beams that no live beam can overtake."""
    del backend
    if beam_size < 1 or not 1 <= n_best <= beam_size:
        raise ValueError(f"beam_size/n_best: expected 1 <= n_best <= beam_size, got {n_best}, {beam_size}")
    length_norm(1, length_penalty, alpha)  # validates the name
    reorder = reorder_state or default_reorder_state
    B, device = _batch_size(init_state)
    W = beam_size
    N = B * W
    state = reorder(init_state, torch.arange(B, device=device).repeat_interleave(W))
    tokens = torch.full((N,), bos_id, dtype=torch.long, device=device)
    scores = torch.full((B, W), float("-inf"), device=device)
    scores[:, 0] = 0.0  # the first step expands beam 0 only
    finished = torch.zeros(B, W, dtype=torch.bool, device=device)
    lengths = torch.zeros(B, W, dtype=torch.long, device=device)
    hist = torch.zeros(B, W, max_len, dtype=torch.long, device=device)
    done = torch.zeros(B, dtype=torch.bool, device=device)
    same_beam = torch.arange(W, device=device).expand(B, W)
    row_base = (torch.arange(B, device=device) * W)[:, None]
    lp_max = length_norm(max_len, length_penalty, alpha)
    for t in range(max_len):
        logits, state = step_fn(tokens, state)
        logp = torch.log_softmax(logits.float(), -1).view(B, W, -1)
        V = logp.shape[-1]
        if t < min_len:
            logp[..., eos_id] = float("-inf")
        if no_repeat_ngram_size > 0:
            h = hist[:, :, :t].tolist()
            for b in range(B):
                for w in range(W):
                    for tok in _blocked_ngrams(h[b][w], no_repeat_ngram_size):
                        logp[b, w, tok] = float("-inf")
        cand = scores[:, :, None] + logp
        # A finished beam offers itself once: EOS again, score unchanged.
        only_eos = torch.full_like(cand, float("-inf"))
        only_eos[..., eos_id] = scores
        cand = torch.where(finished[:, :, None], only_eos, cand)
        new_scores, idx = cand.view(B, W * V).topk(W, dim=-1)
        parent, tok = idx // V, idx % V
        parent_fin = finished.gather(1, parent)
        new_hist = hist.gather(1, parent[..., None].expand(B, W, max_len)).clone()
        new_hist[:, :, t] = torch.where(parent_fin, new_hist[:, :, t], tok)
        new_lengths = lengths.gather(1, parent) + (~parent_fin).long()
        new_finished = parent_fin | (tok == eos_id)
        keep = done[:, None]  # rows already done keep their final result
        scores = torch.where(keep, scores, new_scores)
        finished = torch.where(keep, finished, new_finished)
        lengths = torch.where(keep, lengths, new_lengths)
        hist = torch.where(keep[..., None], hist, new_hist)
        parent = torch.where(keep, same_beam, parent)
        state = reorder(state, (row_base + parent).reshape(N))
        tokens = tok.reshape(N)
        done = done | _rows_done(scores, finished, lengths, n_best, length_penalty, alpha, lp_max)
        if bool(done.all()):
            break
    norm = _length_norm_tensor(lengths, length_penalty, alpha)
    pen = scores / norm
    order = torch.sort(pen, dim=1, descending=True, stable=True).indices[:, :n_best]
    results = []
    for order_b, pen_b, s_b, len_b, fin_b, hist_b in zip(order.tolist(), pen.tolist(), scores.tolist(),
                                                         lengths.tolist(), finished.tolist(), hist.tolist()):
        hyps = []
        for j in order_b:
            if s_b[j] == float("-inf"):
                continue
            n_tok = len_b[j] - (1 if fin_b[j] else 0)
            hyps.append((hist_b[j][:n_tok], pen_b[j]))
        results.append(hyps)
    return results


def _length_norm_tensor(lengths, length_penalty, alpha):
    L = lengths.to(torch.float32).clamp(min=1)
    if length_penalty is None or length_penalty == "none":
        return torch.ones_like(L)
    if length_penalty == "avg":
        return L.pow(alpha)
    return ((5 + L) / 6).pow(alpha)


def _rows_done(scores, finished, lengths, n_best, length_penalty, alpha, lp_max):
    """(B,) bool: the row's n_best best hypotheses are final. A finished beam scoring above every live beam never
    leaves the beam (live candidates only lose log-probability), and no live beam can end above
    best_live / lp(max_len) (log-probs <= 0, lp grows with length)."""
    live_best = torch.where(finished, float("-inf"), scores).amax(dim=1)
    bound = live_best / lp_max
    pen = scores / _length_norm_tensor(lengths, length_penalty, alpha)
    top = torch.sort(pen, dim=1, descending=True, stable=True).indices[:, :n_best]
    permanent = finished & (scores > live_best[:, None])
    final = permanent.gather(1, top) & (pen.gather(1, top) >= bound[:, None])
    return final.all(dim=1) | (live_best == float("-inf"))
