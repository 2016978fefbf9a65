"""Greedy and beam-search decoding over a one-step decoder, parametrised by its top-k step.

The top-k step (``topk=``) does one step's selection: ``topk(logits (B, K, V), beam_scores (B, K), k, *,
finished (B, K), eos_id) -> (scores, beam_index, token)``, each (B, k). The default is the fused op
:func:`s2s_fused.beam_search_topk` (on ``backend=``); :func:`eager_beam_topk` is the same selection in eager torch,
the ``"torch"`` backend's decoder and the baseline of the side-by-side comparisons.

The model is seen only through ``step_fn(tokens, state) -> (logits, state)``: tokens (N,) int64 of the previous
step, logits (N, V) of the next token, N = batch * beams. ``state`` is any pytree of tensors (a tensor, or nested
tuples / lists / dicts of tensors, None leaves allowed) whose tensors have the N rows first; ``reorder_state(state,
index)`` picks rows ``index`` (N,) of it (default: ``index_select`` on dim 0 of every tensor). Beam search first
expands the initial state from B to B*beam rows with the same function (index = arange(B).repeat_interleave(beam)).
With ``live_rows=True`` the decoders call ``step_fn(tokens, state, live)`` instead: ``live`` (N,) bool marks the
rows whose logits the search reads (a beam that is neither finished nor empty, of a row not done yet); the step
may return any finite logits in the other rows, so it can skip their output layer (``Seq2Seq.step``'s ``live``).

Both decoders return, per input, a list of :class:`Hypothesis` sorted by ``score`` (best first): ``list[list[
Hypothesis]]`` of length B. Token lists hold neither BOS nor EOS.

How the search works (FasterTransformer's scheme, the one the op is built for): each of the B rows keeps
``beam_size`` beams; a beam that emitted EOS stays in the beam, finished, offering exactly one candidate (itself,
score unchanged), so the whole step is one top-k call with k = beam_size, fixed shapes and no host round-trip.
Beams are ranked by their log-probability during the search; the length penalty ranks the final beams. A row
stops (its beams are frozen) as soon as its ``n_best`` best hypotheses are finished beams that no live beam can
overtake in the beam nor beat after the length penalty (a bound at ``max_len``): from then on its result is exactly
what running to ``max_len`` would give, so stopping never changes a result and a row's result does not depend on
the other rows of the batch. The host looks at the "all rows done" flag without waiting for the device
(an asynchronous copy read when it has landed), so early stopping costs no synchronisation per step.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple

import torch

from ..ops.beam import beam_search_topk

__all__ = ["Hypothesis", "greedy_decode", "beam_search", "default_reorder_state", "eager_beam_topk",
           "length_penalty_factor", "check_live_rows"]

NEG_INF = float("-inf")
LENGTH_PENALTIES = (None, "avg", "gnmt")


class Hypothesis(NamedTuple):
    tokens: list[int]   # generated token ids, without BOS and EOS
    score: float        # the ranking score: log_prob, divided by the length penalty when one is set
    log_prob: float     # sum of the generated tokens' log-probabilities (EOS included when finished)
    finished: bool      # True if it ended with EOS, False if cut at max_len


def default_reorder_state(state: Any, index: torch.Tensor) -> Any:
    """Rows ``index`` of every tensor in the pytree ``state`` (tensor / tuple / list / dict / None), dim 0."""
    if state is None:
        return None
    if isinstance(state, torch.Tensor):
        return state.index_select(0, index)
    if isinstance(state, tuple) and hasattr(state, "_fields"):  # namedtuple
        return type(state)(*(default_reorder_state(s, index) for s in state))
    if isinstance(state, (tuple, list)):
        return type(state)(default_reorder_state(s, index) for s in state)
    if isinstance(state, dict):
        return {key: default_reorder_state(value, index) for key, value in state.items()}
    raise TypeError(f"state: expected a tensor or a tuple / list / dict of tensors (or pass reorder_state=), got "
                    f"{type(state).__name__}")


def _first_tensor(state):
    if isinstance(state, torch.Tensor):
        return state
    items = state.values() if isinstance(state, dict) else state if isinstance(state, (tuple, list)) else ()
    for s in items:
        t = _first_tensor(s)
        if t is not None:
            return t
    return None


def length_penalty_factor(lengths: torch.Tensor, length_penalty, alpha: float,
                          max_length: int | None = None) -> torch.Tensor:
    """lp(L) the log-probability is divided by: 1 (None), L^alpha ("avg", d2l's 1/L^alpha log P) or
    ((5 + L) / 6)^alpha ("gnmt", Wu et al. 2016). L = generated tokens, EOS included, at least 1 (float32).
    ``max_length``: a bound on ``lengths`` known to the caller (else read from them, a device sync on a GPU).

    Each factor is looked up in a table computed once in double precision by Python, not by a tensor ``pow``:
    that one's vectorised body and scalar tail round differently (AVX2's vector pow is 1 ulp off in places), so a
    sentence's penalised score, and so its ranking among ties, depended on how many beams were in the batch."""
    if lengths.numel() == 0 or length_penalty is None:
        return torch.ones(lengths.shape, dtype=torch.float32, device=lengths.device)
    n = int(lengths.max()) if max_length is None else max_length
    table = _length_penalty_table(length_penalty, float(alpha), max(n, 1) + 1, lengths.device)
    return table[lengths.clamp(0, table.shape[0] - 1)]


@functools.lru_cache(maxsize=32)
def _length_penalty_table(length_penalty, alpha: float, n: int, device: torch.device) -> torch.Tensor:
    """lp(max(L, 1)) for L = 0 .. n - 1, float32 on ``device``."""
    def lp(L):
        return float(L) ** alpha if length_penalty == "avg" else ((5.0 + L) / 6.0) ** alpha
    return torch.tensor([lp(max(L, 1)) for L in range(n)], dtype=torch.float32).to(device)


def eager_beam_topk(logits: torch.Tensor, beam_scores: torch.Tensor, k: int, *, finished=None, eos_id=None):
    """:func:`s2s_fused.beam_search_topk`'s selection in eager torch: ``log_softmax`` + running score + ``topk``
    over the K*V candidates, then ``//`` and ``%``; a finished beam offers only (its score, ``eos_id``). Ties go
    wherever ``torch.topk`` puts them (the op sends them to the lower index)."""
    B, K, V = logits.shape
    cand = torch.log_softmax(logits.float(), dim=-1) + beam_scores[..., None]
    if finished is not None:
        only_eos = torch.full_like(cand, NEG_INF)
        only_eos[..., eos_id] = beam_scores
        cand = torch.where(finished[..., None], only_eos, cand)
    scores, idx = cand.view(B, K * V).topk(k, dim=-1)
    return scores, idx // V, idx % V


def _topk_step(topk, backend):
    """The top-k step a decoder runs: ``topk``, or the fused op on ``backend``."""
    if topk is None:
        return functools.partial(beam_search_topk, backend=backend)
    if not callable(topk):
        raise TypeError(f"topk: expected a callable (logits, beam_scores, k, *, finished, eos_id) -> (scores, "
                        f"beam_index, token), got {type(topk).__name__}")
    if backend is not None:
        raise ValueError(f"backend: picks the backend of the default top-k op, so it cannot go with topk=; got "
                         f"backend={backend!r}")
    return topk


def _int(value, name, lo, hi=None):
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name}: expected an int, got {type(value).__name__}")
    if value < lo or (hi is not None and value > hi):
        rng = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise ValueError(f"{name}: expected an int {rng}, got {value}")
    return value


def _setup(step_fn, init_state, bos_id, eos_id, max_len, batch_size):
    if not callable(step_fn):
        raise TypeError(f"step_fn: expected a callable (tokens, state) -> (logits, state), got "
                        f"{type(step_fn).__name__}")
    _int(bos_id, "bos_id", 0)
    _int(eos_id, "eos_id", 0)
    _int(max_len, "max_len", 1)
    first = _first_tensor(init_state)
    if batch_size is None:
        if first is None or first.dim() == 0:
            raise ValueError("batch_size: init_state holds no tensor with a batch dimension; pass batch_size=")
        batch_size = first.shape[0]
    _int(batch_size, "batch_size", 0)
    device = first.device if first is not None else torch.device("cpu")
    return batch_size, device


def _check_live_rows(live_rows):
    if not isinstance(live_rows, bool):
        raise TypeError(f"live_rows: expected a bool, got {type(live_rows).__name__}")
    return live_rows


def check_live_rows(live, n):
    """A step's ``live`` argument: None or a (n,) bool tensor (``live_rows=True`` in the decoders)."""
    if live is None:
        return
    if not isinstance(live, torch.Tensor) or live.dtype != torch.bool:
        got = live.dtype if isinstance(live, torch.Tensor) else type(live).__name__
        raise TypeError(f"live: expected a bool tensor of shape ({n},), got {got}")
    if live.shape != (n,):
        raise ValueError(f"live: expected a bool tensor of shape ({n},), got shape {tuple(live.shape)}")


def _check_logits(logits, n, eos_id):
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or logits.shape[0] != n:
        got = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(f"step_fn: expected logits of shape ({n}, V), got {got}")
    if not eos_id < logits.shape[1]:
        raise ValueError(f"eos_id: expected 0 <= eos_id < V = {logits.shape[1]}, got {eos_id}")


class _DoneWatcher:
    """Tells the host when every row is done without stalling the device: on CUDA the flag is copied
    asynchronously into pinned memory and read once its event has completed (a step or so later)."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.pending = None

    def all_done(self, done: torch.Tensor) -> bool:
        if not self.cuda:
            return bool(done.all())
        result = False
        if self.pending is not None and self.pending[0].query():
            result = bool(self.pending[1])
            self.pending = None
        if self.pending is None and not result:
            host = torch.empty((), dtype=torch.bool, pin_memory=True)
            host.copy_(done.all(), non_blocking=True)
            event = torch.cuda.Event()
            event.record()
            self.pending = (event, host)
        return result


def _results(scores, lengths, finished, hist, n_best, length_penalty, alpha):
    """Per row the n_best beams by penalised score (stable: ties keep beam order), -inf beams left out."""
    pen = scores / length_penalty_factor(lengths, length_penalty, alpha, hist.shape[-1])
    order = torch.sort(pen, dim=1, descending=True, stable=True).indices[:, :n_best]
    rows = zip(*(t.cpu().tolist() for t in (order, pen, scores, lengths, finished)), hist.cpu().tolist())
    out = []
    for order_b, pen_b, s_b, len_b, fin_b, hist_b in rows:
        hyps = []
        for j in order_b:
            if s_b[j] == NEG_INF:
                continue
            n_tok = len_b[j] - (1 if fin_b[j] else 0)
            hyps.append(Hypothesis(hist_b[j][:n_tok], pen_b[j], s_b[j], bool(fin_b[j])))
        out.append(hyps)
    return out


def greedy_decode(step_fn: Callable, init_state: Any, bos_id: int, eos_id: int, max_len: int, *,
                  batch_size: int | None = None, reorder_state: Callable | None = None,
                  backend: str | None = None, topk: Callable | None = None,
                  live_rows: bool = False) -> list[list[Hypothesis]]:
    """Greedy decoding: at each step the most likely next token (ties to the lower id), until EOS or max_len.

    ``step_fn(tokens (B,), state) -> (logits (B, V), state)``; ``init_state`` the decoder's initial state (batch
    first; ``batch_size=`` when it holds no tensor). Returns ``list[list[Hypothesis]]``: per input one
    hypothesis. ``reorder_state`` is accepted for symmetry with :func:`beam_search` (greedy never reorders rows).
    ``topk`` / ``backend``: the top-k step, ``live_rows``: whether ``step_fn`` takes the live rows (see the
    module's docstring). The same selection as ``beam_search(..., beam_size=1)`` without penalties, which gives the
    same result exactly.
    """
    B, device = _setup(step_fn, init_state, bos_id, eos_id, max_len, batch_size)
    select = _topk_step(topk, backend)
    live_rows = _check_live_rows(live_rows)
    del reorder_state
    tokens = torch.full((B,), bos_id, dtype=torch.long, device=device)
    scores = torch.zeros(B, 1, device=device)
    finished = torch.zeros(B, 1, dtype=torch.bool, device=device)
    lengths = torch.zeros(B, 1, dtype=torch.long, device=device)
    hist = torch.zeros(B, 1, max_len, dtype=torch.long, device=device)
    state = init_state
    watcher = _DoneWatcher(device)
    for t in range(max_len):
        if live_rows:  # a finished row offers only EOS: its logits are never read
            logits, state = step_fn(tokens, state, ~finished[:, 0])
        else:
            logits, state = step_fn(tokens, state)
        _check_logits(logits, B, eos_id)
        scores, _, tok = select(logits.unsqueeze(1), scores, 1, finished=finished, eos_id=eos_id)
        hist[:, :, t] = torch.where(finished, hist[:, :, t], tok)
        lengths = lengths + (~finished).long()
        finished = finished | (tok == eos_id)
        tokens = tok[:, 0]
        if t + 1 < max_len and watcher.all_done(finished):
            break
    return _results(scores, lengths, finished, hist, 1, None, 0.0)


def _ban_repeated_ngrams(logits, hist, t, n):
    """logits (B, W, V) with -inf on every token that would repeat an n-gram of its beam's history[:t]."""
    B, W, V = logits.shape
    if t < n:  # no complete n-gram in the history yet
        return logits
    h = hist[:, :, :t].reshape(B * W, t)
    windows = h.unfold(1, n, 1)                                   # (N, t - n + 1, n)
    prefix = h[:, t - (n - 1):]                                   # (N, n - 1)
    match = (windows[..., : n - 1] == prefix[:, None, :]).all(-1)  # (N, t - n + 1)
    ban = torch.zeros(B * W, V, dtype=torch.int32, device=logits.device)
    ban.scatter_add_(1, windows[..., n - 1], match.to(torch.int32))
    return logits.masked_fill((ban > 0).view(B, W, V), NEG_INF)


def beam_search(step_fn: Callable, init_state: Any, bos_id: int, eos_id: int, beam_size: int, max_len: int, *,
                min_len: int = 0, length_penalty: str | None = None, alpha: float = 0.75, n_best: int = 1,
                no_repeat_ngram_size: int = 0, reorder_state: Callable | None = None, batch_size: int | None = None,
                backend: str | None = None, topk: Callable | None = None,
                live_rows: bool = False) -> list[list[Hypothesis]]:
    """Batched beam search.

    ``step_fn(tokens (B*beam,), state) -> (logits (B*beam, V), state)``; rows are batch-major (row b*beam + i
    is beam i of input b). ``init_state`` has B rows; it is expanded to B*beam rows with ``reorder_state`` (default
    :func:`default_reorder_state`), which then reorders it after every step. ``min_len``: EOS is banned until that
    many tokens were generated. ``length_penalty``: None, ``"avg"`` (log P / L^alpha) or ``"gnmt"`` (log P /
    ((5 + L) / 6)^alpha), L counting EOS; it ranks the final hypotheses. ``no_repeat_ngram_size`` n > 0 bans any
    token that would repeat an n-gram already in the beam. ``topk`` / ``backend``: the top-k step, ``live_rows``:
    whether ``step_fn`` takes the live rows (see the module's docstring).

    Returns ``list[list[Hypothesis]]``: per input up to ``n_best`` (<= beam_size) hypotheses, best first; beams
    cut at ``max_len`` count, with ``finished=False``. ``beam_size=1`` without penalties gives
    :func:`greedy_decode`'s result exactly.
    """
    B, device = _setup(step_fn, init_state, bos_id, eos_id, max_len, batch_size)
    W = _int(beam_size, "beam_size", 1)
    _int(n_best, "n_best", 1, W)
    _int(min_len, "min_len", 0, max_len)
    ngram = _int(no_repeat_ngram_size, "no_repeat_ngram_size", 0)
    if length_penalty not in LENGTH_PENALTIES:
        raise ValueError(f"length_penalty: expected one of {LENGTH_PENALTIES}, got {length_penalty!r}")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not alpha >= 0:
        raise ValueError(f"alpha: expected a number >= 0, got {alpha!r}")
    select = _topk_step(topk, backend)
    live_rows = _check_live_rows(live_rows)
    reorder = reorder_state or default_reorder_state
    N = B * W
    state = reorder(init_state, torch.arange(B, device=device).repeat_interleave(W))
    tokens = torch.full((N,), bos_id, dtype=torch.long, device=device)
    scores = torch.full((B, W), NEG_INF, device=device)
    scores[:, 0] = 0.0  # step 1 expands beam 0 only; the empty beams offer -inf candidates
    finished = torch.zeros(B, W, dtype=torch.bool, device=device)
    lengths = torch.zeros(B, W, dtype=torch.long, device=device)
    hist = torch.zeros(B, W, max_len, dtype=torch.long, device=device)
    done = torch.zeros(B, dtype=torch.bool, device=device)
    same_beam = torch.arange(W, device=device).expand(B, W)
    row_base = (torch.arange(B, device=device) * W)[:, None]
    lp_max = float(length_penalty_factor(torch.tensor(max_len), length_penalty, alpha, max_len))
    watcher = _DoneWatcher(device)
    for t in range(max_len):
        if live_rows:
            # Logits the step below reads: a finished beam offers only itself with EOS, an empty beam (score -inf,
            # the first step's beams 1..W-1) only -inf candidates, and a done row's step is discarded.
            live = ~finished & (scores != NEG_INF) & ~done[:, None]
            logits, state = step_fn(tokens, state, live.reshape(N))
        else:
            logits, state = step_fn(tokens, state)
        _check_logits(logits, N, eos_id)
        logits = logits.view(B, W, -1)
        if t < min_len:
            logits = logits.index_fill(2, torch.tensor([eos_id], device=device), NEG_INF)
        live_scores = scores
        if ngram:
            logits = _ban_repeated_ngrams(logits, hist, t, ngram)
        if ngram or t < min_len:
            # A live beam whose every token is banned has no continuation: it leaves the beam (score -inf over
            # finite logits: only -inf candidates, whatever the top-k step). Left as it is, its all -inf row would
            # score NaN by the top-k rule (torch's log_softmax of it), and NaN ranks above every real candidate.
            dead = (logits == NEG_INF).all(dim=-1) & ~finished
            live_scores = scores.masked_fill(dead, NEG_INF)
            logits = logits.masked_fill(dead[..., None], 0.0)
        # A done row's selection is discarded below, so its beams go in as finished: the top-k then skips their
        # logits (for rows the step did not compute, filler that ties everywhere).
        new_scores, parent, tok = select(logits, live_scores, W, finished=finished | done[:, None], eos_id=eos_id)
        parent_fin = finished.gather(1, parent)
        new_hist = hist.gather(1, parent[..., None].expand(B, W, max_len))
        new_hist[:, :, t] = torch.where(parent_fin, new_hist[:, :, t], tok)
        new_lengths = lengths.gather(1, parent) + (~parent_fin).long()
        new_finished = parent_fin | (tok == eos_id)
        # Rows already done keep everything as it was (their result is final).
        keep = done[:, None]
        scores = torch.where(keep, scores, new_scores)
        finished = torch.where(keep, finished, new_finished)
        lengths = torch.where(keep, lengths, new_lengths)
        hist = torch.where(keep[..., None], hist, new_hist)
        parent = torch.where(keep, same_beam, parent)
        state = reorder(state, (row_base + parent).reshape(N))
        tokens = tok.reshape(N)
        done = done | _rows_done(scores, finished, lengths, n_best, length_penalty, alpha, lp_max, max_len)
        if t + 1 < max_len and watcher.all_done(done):
            break
    return _results(scores, lengths, finished, hist, n_best, length_penalty, alpha)


def _rows_done(scores, finished, lengths, n_best, length_penalty, alpha, lp_max, max_len):
    """(B,) bool: the row's n_best best hypotheses (by penalised score) are final.

    A finished beam whose score is above every live beam's can never leave the beam (live candidates only lose
    log-probability), and no live beam can end above best_live / lp(max_len) (log-probs are <= 0, lp grows with
    length). If the n_best best beams are such finished beams, at or above that bound, nothing can change them.
    With no live beam left (or only -inf ones) nothing changes at all."""
    live_best = torch.where(finished, NEG_INF, scores).amax(dim=1)
    bound = live_best / lp_max
    pen = scores / length_penalty_factor(lengths, length_penalty, alpha, max_len)
    top = torch.sort(pen, dim=1, descending=True, stable=True).indices[:, :n_best]
    permanent = finished & (scores > live_best[:, None])
    final = permanent.gather(1, top) & (pen.gather(1, top) >= bound[:, None])
    return final.all(dim=1) | (live_best == NEG_INF)
