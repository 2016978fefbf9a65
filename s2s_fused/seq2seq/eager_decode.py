"""Greedy and beam-search decoding in plain eager torch: the ``"torch"`` backend's decoders (the baseline of the
side-by-side comparison) and the fallback when ``s2s_fused.seq2seq.decode`` is not there.

Same call signatures as :mod:`s2s_fused.seq2seq.decode`:
``step_fn(tokens (N,), state) -> (logits (N, V), state)``; ``state`` is a pytree of tensors whose first dimension
is the batch, ``reorder_state(state, index (N,)) -> state`` (default: ``index_select(0, index)`` on every tensor).
Results: one list per input of ``(token ids without BOS/EOS, score)`` pairs, best first.

Beam search follows fairseq's scheme: each step ranks the ``2K`` best extensions of the ``K`` live hypotheses; those
ending in EOS are finished (scored with the length penalty), the best ``K`` others stay live. An input is done when
it has ``K`` finished hypotheses and no live one can beat the worst of them, or at ``max_len``, where the live ones
are finished as they are. Scores: the sum of token log-probabilities (EOS included), divided by
``len ** alpha`` (``length_penalty="avg"``) or ``((5 + len) / 6) ** alpha`` (``"gnmt"``, Wu et al. 2016), where
``len`` counts the generated tokens including EOS.
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
    """Beam search over a batch; returns per input the ``n_best`` ``(tokens, score)`` pairs, best first."""
    del backend
    if beam_size < 1 or not 1 <= n_best <= beam_size:
        raise ValueError(f"beam_size/n_best: expected 1 <= n_best <= beam_size, got {n_best}, {beam_size}")
    reorder = reorder_state or default_reorder_state
    B, device = _batch_size(init_state)
    K = beam_size
    state = reorder(init_state, torch.arange(B, device=device).repeat_interleave(K))
    tokens = torch.full((B * K,), bos_id, dtype=torch.long, device=device)
    # Only beam 0 is live at the start (all K beams are the same BOS prefix).
    scores = torch.full((B, K), float("-inf"), device=device, dtype=torch.float32)
    scores[:, 0] = 0.0
    hyps = [[[] for _ in range(K)] for _ in range(B)]
    finished = [[] for _ in range(B)]  # (normalised score, tokens)
    done = [False] * B
    for step in range(max_len):
        logits, state = step_fn(tokens, state)
        logp = torch.log_softmax(logits.float(), -1).view(B, K, -1)
        V = logp.shape[-1]
        if step < min_len:
            logp[..., eos_id] = float("-inf")
        if no_repeat_ngram_size > 0:
            for b in range(B):
                for k in range(K):
                    for tok in _blocked_ngrams(hyps[b][k], no_repeat_ngram_size):
                        logp[b, k, tok] = float("-inf")
        cand = (scores[:, :, None] + logp).view(B, K * V)
        top_s, top_i = cand.topk(min(2 * K, K * V), dim=-1)
        top_beam, top_tok = (top_i // V).tolist(), (top_i % V).tolist()
        top_s_l = top_s.tolist()
        last = step == max_len - 1
        new_scores = torch.full((B, K), float("-inf"), device=device)
        src_index = torch.zeros(B, K, dtype=torch.long)
        new_tokens = torch.full((B, K), eos_id, dtype=torch.long)
        new_hyps = [[[] for _ in range(K)] for _ in range(B)]
        for b in range(B):
            if done[b]:
                continue
            live = 0
            for s, k, tok in zip(top_s_l[b], top_beam[b], top_tok[b]):
                if s == float("-inf"):
                    break
                seq = hyps[b][k]
                if tok == eos_id:
                    finished[b].append((s / length_norm(len(seq) + 1, length_penalty, alpha), seq))
                    continue
                if live < K:
                    if last:
                        finished[b].append((s / length_norm(len(seq) + 1, length_penalty, alpha), seq + [tok]))
                    new_scores[b, live] = s
                    src_index[b, live] = k
                    new_tokens[b, live] = tok
                    new_hyps[b][live] = seq + [tok]
                    live += 1
            if last or live == 0:
                done[b] = True
            elif len(finished[b]) >= K:
                # Scores only fall as hypotheses grow; with no length penalty, a live hypothesis cannot beat the
                # K-th finished one. With a penalty, keep going until max_len (the simple, exact rule).
                worst = sorted((f[0] for f in finished[b]), reverse=True)[K - 1]
                best_live = new_scores[b, 0].item()
                if length_penalty in (None, "none") and best_live <= worst:
                    done[b] = True
        if all(done):
            break
        scores, hyps = new_scores, new_hyps
        flat = (src_index + torch.arange(B)[:, None] * K).view(-1).to(device)
        state = reorder(state, flat)
        tokens = new_tokens.view(-1).to(device)
    results = []
    for b in range(B):
        best = sorted(finished[b], key=lambda f: -f[0])[:n_best]
        results.append([(seq, score) for score, seq in best])
    return results
