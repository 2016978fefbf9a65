"""Plain-torch implementations of every op: the ground truth of every test (run them in float64).

Each function here has exactly the semantics of its public op (shapes, masking, tie rules) and is written for
clarity, not speed. Autograd flows through ordinary torch ops.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

# ----------------------------------------------------------------------------------------------- rnn_cell


def lstm_cell(input, hx, w_ih, w_hh, b_ih=None, b_hh=None):
    """One LSTM step, torch's gate order (i, f, g, o). input (B, I), hx = (h (B, H), c (B, H)) -> (h1, c1)."""
    h, c = hx
    gates = F.linear(input, w_ih, b_ih) + F.linear(h, w_hh, b_hh)
    i, f, g, o = gates.chunk(4, dim=-1)
    i, f, g, o = i.sigmoid(), f.sigmoid(), g.tanh(), o.sigmoid()
    c1 = f * c + i * g
    h1 = o * c1.tanh()
    return h1, c1


def gru_cell(input, hx, w_ih, w_hh, b_ih=None, b_hh=None, reset_after=True):
    """One GRU step, gate order (r, z, n). reset_after=True is torch/cuDNN's form (r multiplies W_hn h + b_hn);
    reset_after=False is Cho et al. / d2l's (r multiplies h before W_hn). input (B, I), hx (B, H) -> h1."""
    H = hx.shape[-1]
    gi = F.linear(input, w_ih, b_ih)
    i_r, i_z, i_n = gi.chunk(3, dim=-1)
    if reset_after:
        gh = F.linear(hx, w_hh, b_hh)
        h_r, h_z, h_n = gh.chunk(3, dim=-1)
        r = (i_r + h_r).sigmoid()
        z = (i_z + h_z).sigmoid()
        n = (i_n + r * h_n).tanh()
    else:
        b_rz = b_hh[: 2 * H] if b_hh is not None else None
        h_r, h_z = F.linear(hx, w_hh[: 2 * H], b_rz).chunk(2, dim=-1)
        r = (i_r + h_r).sigmoid()
        z = (i_z + h_z).sigmoid()
        b_n = b_hh[2 * H:] if b_hh is not None else None
        n = (i_n + F.linear(r * hx, w_hh[2 * H:], b_n)).tanh()
    return (1 - z) * n + z * hx


# ---------------------------------------------------------------------------------------------- rnn_layer


def _layer_loop(step, input, state, lengths, reverse):
    """Run ``step(x_t, state) -> state`` over time (t = T-1..0 when reverse); step t of row b runs only when
    t < lengths[b]; other rows keep their state and output zeros. Returns (output (T, B, H), final state)."""
    T = input.shape[0]
    outs = [None] * T
    for t in (range(T - 1, -1, -1) if reverse else range(T)):
        new = step(input[t], state)
        if lengths is not None:
            keep = (lengths.to(input.device) > t).unsqueeze(1)
            new = tuple(torch.where(keep, n, s) for n, s in zip(new, state))
            outs[t] = torch.where(keep, new[0], torch.zeros_like(new[0]))
        else:
            outs[t] = new[0]
        state = new
    out = torch.stack(outs) if T else input.new_zeros(0, input.shape[1], state[0].shape[-1])
    return out, state


def lstm_layer(input, hx, w_ih, w_hh, b_ih=None, b_hh=None, lengths=None, reverse=False, w_hr=None):
    """One LSTM layer, one direction, over a whole sequence. input (T, B, I); hx = (h0, c0), each (B, H); lengths
    (B,) or None (all T). Returns (output (T, B, H), (h_n, c_n)), h_n/c_n at each row's own last step.
    w_hr (P, H): torch's projections (proj_size), h = W_hr (o * tanh c); h0, h_n and output are then P wide and
    w_hh is (4H, P)."""
    def step(x, s):
        h, c = lstm_cell(x, s, w_ih, w_hh, b_ih, b_hh)
        return (h if w_hr is None else F.linear(h, w_hr)), c

    out, (h, c) = _layer_loop(step, input, tuple(hx), lengths, reverse)
    return out, (h, c)


def gru_layer(input, hx, w_ih, w_hh, b_ih=None, b_hh=None, lengths=None, reverse=False, reset_after=True):
    """One GRU layer, one direction (see :func:`gru_cell` for ``reset_after``). input (T, B, I); hx (B, H).
    Returns (output (T, B, H), h_n)."""
    out, (h,) = _layer_loop(lambda x, s: (gru_cell(x, s[0], w_ih, w_hh, b_ih, b_hh, reset_after),), input,
                            (hx,), lengths, reverse)
    return out, h


def lstm_layer_bidir(input, hx, weights, weights_reverse, lengths=None):
    """Both directions of a bidirectional LSTM layer: hx = (h0, c0) each (2, B, H), weights / weights_reverse =
    (w_ih, w_hh, b_ih, b_hh). Returns (output (T, B, 2H), (h_n, c_n) each (2, B, H))."""
    h0, c0 = hx
    fwd, (hf, cf) = lstm_layer(input, (h0[0], c0[0]), *weights, lengths=lengths)
    rev, (hr, cr) = lstm_layer(input, (h0[1], c0[1]), *weights_reverse, lengths=lengths, reverse=True)
    return torch.cat([fwd, rev], dim=-1), (torch.stack([hf, hr]), torch.stack([cf, cr]))


def gru_layer_bidir(input, hx, weights, weights_reverse, lengths=None, reset_after=True):
    """Both directions of a bidirectional GRU layer: hx (2, B, H). Returns (output (T, B, 2H), h_n (2, B, H))."""
    fwd, hf = gru_layer(input, hx[0], *weights, lengths=lengths, reset_after=reset_after)
    rev, hr = gru_layer(input, hx[1], *weights_reverse, lengths=lengths, reverse=True, reset_after=reset_after)
    return torch.cat([fwd, rev], dim=-1), torch.stack([hf, hr])


# ------------------------------------------------------------------------------------------ cross_entropy
CE_REDUCTIONS = ("none", "sum", "mean", "per_sequence")


def ce_mask(target, valid_len=None, ignore_index=-100):
    """Which positions count: target != ignore_index and, with valid_len (B,), t < valid_len[b]. Shaped as
    target."""
    mask = target != ignore_index
    if valid_len is not None:
        T = target.shape[-1]
        mask = mask & (torch.arange(T, device=target.device) < valid_len.unsqueeze(-1))
    return mask


def ce_reduce(loss, mask, reduction):
    """Reduce a per-position loss (0 at masked positions). "mean" divides by the number of unmasked positions and
    gives 0, not NaN, when there are none; "per_sequence" is d2l's sum over valid steps / T, shape (B,)."""
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    if reduction == "mean":
        return loss.sum() / mask.sum().clamp_min(1).to(loss.dtype)
    if reduction == "per_sequence":
        return loss.sum(-1) / loss.shape[-1]
    raise ValueError(f"reduction: expected one of {CE_REDUCTIONS}, got {reduction!r}")


def masked_softmax_cross_entropy(logits, target, valid_len=None, ignore_index=-100, label_smoothing=0.0,
                                 reduction="mean"):
    """Masked softmax cross-entropy. logits (N, V) or (B, T, V); target shaped as logits without V; valid_len (B,)
    (3-D only). Computed in float32 (float64 for float64 logits); masked positions contribute 0 (and no gradient).
    label_smoothing as torch.nn.functional.cross_entropy."""
    acc = torch.float64 if logits.dtype == torch.float64 else torch.float32
    mask = ce_mask(target, valid_len, ignore_index)
    safe = torch.where(mask, target, torch.zeros_like(target)).long()
    logp = torch.log_softmax(logits.to(acc), dim=-1)
    loss = -logp.gather(-1, safe.unsqueeze(-1)).squeeze(-1)
    if label_smoothing:
        loss = (1 - label_smoothing) * loss - label_smoothing * logp.mean(-1)
    loss = torch.where(mask, loss, torch.zeros((), dtype=acc, device=loss.device))
    return ce_reduce(loss, mask, reduction)


def linear_masked_cross_entropy(hidden, weight, target, valid_len=None, bias=None, ignore_index=-100,
                                label_smoothing=0.0, reduction="mean"):
    """masked_softmax_cross_entropy(F.linear(hidden, weight, bias), ...): hidden (N, H) or (B, T, H), weight (V, H),
    bias (V,)."""
    return masked_softmax_cross_entropy(F.linear(hidden, weight, bias), target, valid_len, ignore_index,
                                        label_smoothing, reduction)


# --------------------------------------------------------------------------------------------------- beam


def beam_candidate_scores(logits, beam_scores, finished=None, eos_id=None):
    """The (B, K, V) candidate scores of one beam-search step, in float32 (float64 for float64 logits):
    beam_scores[b, i] + log_softmax(logits[b, i])[v]. A beam whose score is -inf offers only -inf; a finished beam
    offers (its score, eos_id) and -inf everywhere else."""
    acc = torch.float64 if logits.dtype == torch.float64 else torch.float32
    s = beam_scores.to(acc)[..., None]
    cand = s + torch.log_softmax(logits.to(acc), dim=-1)
    cand = torch.where(s == float("-inf"), torch.full_like(cand, float("-inf")), cand)
    if finished is not None:
        only_eos = torch.full_like(cand, float("-inf"))
        only_eos[..., eos_id] = s[..., 0]
        cand = torch.where(finished[..., None], only_eos, cand)
    return cand


def beam_search_topk(logits, beam_scores, k, finished=None, eos_id=None):
    """logits (B, K, V), beam_scores (B, K) -> (scores (B, k) float32, beam_index (B, k), token (B, k) int64):
    the best k of the K*V candidates per batch row (see :func:`beam_candidate_scores`), in descending order, ties
    to the lower flat index i*V + v (a stable descending sort)."""
    B, K, V = logits.shape
    flat = beam_candidate_scores(logits, beam_scores, finished, eos_id).reshape(B, K * V)
    vals, idx = torch.sort(flat, dim=-1, descending=True, stable=True)
    vals, idx = vals[:, :k], idx[:, :k]
    return vals.to(torch.float32), idx // V, idx % V


# ---------------------------------------------------------------------------------------------------- end


# ---------------------------------------------------------------------------------------------- attention


def additive_attention(query, keys, values, w_q, v, valid_len):
    """Bahdanau (additive) attention of one decoder step. query (N, Hq), keys (B, S, H) already projected
    (W_k k_s, once per source), values (B, S, Dv), w_q (H, Hq), v (H,), valid_len (B,) integer in [0, S], with
    N = R*B: query row n attends source row n // R (the R query rows of a source row are consecutive, as
    batch-major beams are; R = 1 is one source row per query row).

    score_s = v . tanh(W_q q + k_s); weights = softmax over s < valid_len (0 elsewhere); context = sum_s weights_s
    values_s. valid_len = 0 gives uniform weights 1/S over every position, as d2l's -1e6 masking does (its scores
    are then all equal); they do not depend on query, keys, w_q or v. Returns (context (N, Dv), weights (N, S))."""
    B, S, H = keys.shape
    R = query.shape[0] // B if B else 1
    qp = (query @ w_q.t()).view(B, R, 1, H)
    return _masked_attention(torch.tanh(keys[:, None] + qp) @ v, values, valid_len)      # scores (B, R, S)


def dot_attention(query, keys, values, valid_len):
    """Dot (Luong) attention of one decoder step: query (N, H), keys (B, S, H) (Luong's "general" score: keys
    projected once per source, W_a m_s), values (B, S, Dv), valid_len (B,), N = R*B as
    :func:`additive_attention`. score_s = query . keys_s; the same masking, weights and context."""
    B, S, H = keys.shape
    R = query.shape[0] // B if B else 1
    return _masked_attention((query.view(B, R, H) @ keys.transpose(1, 2)), values, valid_len)


def _masked_attention(scores, values, valid_len):
    """(context (N, Dv), weights (N, S)) from scores (B, R, S): softmax over s < valid_len, uniform 1/S for an
    empty row; context = weights @ values."""
    B, R, S = scores.shape
    pos = torch.arange(S, device=scores.device)
    vl = valid_len.to(scores.device)[:, None, None]
    mask = pos < vl                                                                      # (B, 1, S)
    # an empty row's scores all become 0, so its softmax is uniform and carries no gradient to the scores
    weights = torch.softmax(scores.masked_fill(~mask, float("-inf")).masked_fill(vl == 0, 0.0), dim=-1)
    context = weights @ values                                                           # (B, R, Dv)
    return context.reshape(B * R, values.shape[2]), weights.reshape(B * R, S)
