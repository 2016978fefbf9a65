"""Triton beam-search top-k (same design as the CPU and CUDA kernels; semantics in s2s_fused/ops/beam.py).

Three launches, no host synchronisation:
  1. ``_beam_chunk_kernel``, grid (B*K, P): one pass over a chunk of one beam row, tile by tile, keeps the chunk's
     (max, sum-exp) and its top KP raw logits as packed int64 keys (order-preserving float bits in the high half,
     ``~index`` in the low half, so one max returns value and index with the lower index winning ties). Finished
     and empty (-inf) beams select by a substituted value instead (eos first, then index order). A chunk holding
     a NaN or +inf logit stores a NaN max: the row is poisoned (csrc/beam_topk.h).
  2. ``_beam_merge_kernel``, grid (B,): combines the chunks' (max, sum-exp) per beam, turns the candidates into
     scores and takes the top k of the batch row with the same packed-key trick, a group of beams at a time.
     Each chunk kept one logit more than it offers: if that dropped logit rounds to the same score as the last
     offered one, a dropped logit could win a tie on index, so the row is flagged; so is a row with a beam that
     does not rank by logit (poisoned, or a NaN / +inf beam score).
  3. ``_beam_exact_kernel``, grid (B,): flagged rows only (others return at once) recompute every score of the
     row and select exactly, tile by tile.
k > 64 and float64 logits take the exact torch path (reference.beam_search_topk on the device).

Compile time: every selection is a loop of "max, then remove it" rounds over a tile of keys. The rounds run as
a loop (code size independent of k) and no tile exceeds TILE_KEYS keys: ptxas time grows much faster than the
tile (64 unrolled rounds over a 16K-key merge tile take 6-9 minutes to build for sm_90, the loop over a 4K-key
tile 5 s; tests/gpu_compile.py times every configuration against a limit).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import triton
import triton.language as tl

from .. import _op_checks, reference

FAST_MAX_K = 64
# Most keys any selection (tile) holds: 32 int64 per thread at 4 warps.
TILE_KEYS = 4096
# A constexpr: the GPU compiler rejects plain Python globals in @triton.jit code (the interpreter reads them).
_INT64_MIN = tl.constexpr(-(2**63))


@triton.jit
def _key(x, index):
    """(float32 x desc, index asc) as one int64, larger is better: x's bits mapped to an int32 with torch.sort's
    order in the high half (-0.0 first made +0.0 so equal values give equal keys; every NaN the largest, above
    +inf), ``0xFFFFFFFF - index`` in the low half. (One function: each nested call costs the interpreter ~3 ms.)"""
    bits = (x + 0.0).to(tl.int32, bitcast=True)
    key32 = tl.where(x != x, 0x7FFFFFFF, tl.where(bits < 0, bits ^ 0x7FFFFFFF, bits))
    low = tl.full((), 0xFFFFFFFF, tl.int64)
    return (key32.to(tl.int64) << 32) | (low - index.to(tl.int64))


@triton.jit
def _unordered_f32(key):
    bits = tl.where(key < 0, key ^ 0x7FFFFFFF, key)
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def _unpack_index(packed):
    low = tl.full((), 0xFFFFFFFF, tl.int64)
    return low - (packed & low)


@triton.jit
def _topk_packed(x, KSEL: tl.constexpr):
    """The KSEL largest of the 1-D int64 keys x, descending. Keys are unique (they hold the index), so KSEL rounds
    of max-and-remove are exact: FasterTransformer / TensorRT-LLM's iterative argmax for small beams. (tl.topk's
    default order differs between Triton versions, and the interpreter's is very slow: 0.9 s for 1024 keys.) A
    loop, not static_range: unrolled, the code grows with KSEL x the tile and so does ptxas time."""
    o = tl.arange(0, KSEL)
    out = tl.full((KSEL,), _INT64_MIN, tl.int64)
    for j in range(KSEL):
        mx = tl.max(x, axis=0)
        out = tl.where(o == j, mx, out)
        x = tl.where(x == mx, _INT64_MIN, x)
    return out


@triton.jit
def _beam_chunk_kernel(logits_ptr, s_ptr, fin_ptr, part_key_ptr, part_m_ptr, part_d_ptr,
                       stride_b, stride_k, stride_v, K, V, P, eos_id,
                       HAS_FIN: tl.constexpr, CHUNK: tl.constexpr, TILE: tl.constexpr, KP: tl.constexpr):
    r = tl.program_id(0)
    c = tl.program_id(1)
    b = r // K
    i = r % K
    row = logits_ptr + b.to(tl.int64) * stride_b + i.to(tl.int64) * stride_k
    s = tl.load(s_ptr + r)
    if HAS_FIN:
        fin = tl.load(fin_ptr + r) != 0
    m = tl.full((), float("-inf"), tl.float32)
    d = tl.full((), 0.0, tl.float32)
    poisoned = tl.full((), 0, tl.int32)
    top = tl.full((KP,), _INT64_MIN, tl.int64)
    for t0 in range(0, CHUNK, TILE):
        offs = c * CHUNK + t0 + tl.arange(0, TILE)
        valid = offs < V
        x = tl.load(row + offs.to(tl.int64) * stride_v, mask=valid, other=float("-inf")).to(tl.float32)
        # NaN / +inf poison the row (csrc/beam_topk.h); kept out of (max, sum) so those stay well defined.
        bad = (x != x) | (x == float("inf"))
        poisoned = tl.maximum(poisoned, tl.max(bad.to(tl.int32), axis=0))
        xf = tl.where(bad, float("-inf"), x)
        m_new = tl.maximum(m, tl.max(xf, axis=0))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # all -inf so far: sums stay 0, not NaN
        d = d * tl.exp(m - m_safe) + tl.sum(tl.exp(xf - m_safe), axis=0)
        m = m_new
        sel = tl.where(s == float("-inf"), float("-inf"), x)
        if HAS_FIN:
            sel = tl.where(fin, tl.where(offs == eos_id, float("inf"), float("-inf")), sel)
        tile_top = _topk_packed(tl.where(valid, _key(sel, offs), _INT64_MIN), KP)
        if CHUNK == TILE:
            top = tile_top
        else:
            top = _topk_packed(tl.reshape(tl.join(top, tile_top), (2 * KP,)), KP)
    base = (r * P + c).to(tl.int64)
    tl.store(part_key_ptr + base * KP + tl.arange(0, KP), top)
    tl.store(part_m_ptr + base, tl.where(poisoned != 0, float("nan"), m))
    tl.store(part_d_ptr + base, d)


@triton.jit
def _beam_merge_kernel(s_ptr, fin_ptr, part_key_ptr, part_m_ptr, part_d_ptr, lse_ptr, flag_ptr,
                       out_s_ptr, out_b_ptr, out_t_ptr, K, V, P, k, eos_id,
                       HAS_FIN: tl.constexpr, KT: tl.constexpr, PPAD: tl.constexpr, KP: tl.constexpr,
                       KO: tl.constexpr):
    """KT beams (KT * PPAD * KP <= TILE_KEYS keys) at a time; the batch row's top KO runs across the groups."""
    b = tl.program_id(0)
    pp = tl.arange(0, PPAD)
    jj = tl.arange(0, KP)
    run = tl.full((KO,), _INT64_MIN, tl.int64)
    flag = tl.full((), 0, tl.int32)
    for i0 in range(0, K, KT):
        ii = i0 + tl.arange(0, KT)
        beam_ok = ii < K
        rows = b.to(tl.int64) * K + ii
        mp = rows[:, None] * P + pp[None, :]
        part_ok = beam_ok[:, None] & (pp[None, :] < P)
        pm = tl.load(part_m_ptr + mp, mask=part_ok, other=float("-inf"))
        pd = tl.load(part_d_ptr + mp, mask=part_ok, other=0.0)
        # A NaN chunk max marks a NaN / +inf logit; a row of only -inf logits is poisoned too (x - max is NaN).
        poisoned = tl.max((pm != pm).to(tl.int32), axis=1) > 0
        pm = tl.where(pm != pm, float("-inf"), pm)
        M = tl.max(pm, axis=1)
        D = tl.sum(tl.where(pm != float("-inf"), pd * tl.exp(pm - M[:, None]), 0.0), axis=1)
        poisoned = poisoned | (M == float("-inf"))
        log_d = tl.where(poisoned, float("nan"), tl.log(D))  # every score of a poisoned row is NaN
        tl.store(lse_ptr + rows * 2, M, mask=beam_ok)
        tl.store(lse_ptr + rows * 2 + 1, log_d, mask=beam_ok)
        s = tl.load(s_ptr + rows, mask=beam_ok, other=float("-inf"))
        normal = s != float("-inf")
        if HAS_FIN:
            fin_i = tl.load(fin_ptr + rows, mask=beam_ok, other=0)
            fin = fin_i != 0
            normal = normal & (fin_i == 0)
        else:
            fin = ii < 0
        # Rows that do not rank by logit go to the exact kernel: poisoned, or a NaN / +inf beam score.
        unordered = normal & (poisoned | (s != s) | (s == float("inf")))

        kp3 = mp[:, :, None] * KP + jj[None, None, :]
        ok3 = part_ok[:, :, None]
        packed = tl.load(part_key_ptr + kp3, mask=ok3, other=_INT64_MIN)
        v = _unpack_index(packed)
        x = _unordered_f32((packed >> 32).to(tl.int32))
        s3 = s[:, None, None]
        score = s3 + ((x - M[:, None, None]) - log_d[:, None, None])
        score = tl.where(normal[:, None, None], score, float("-inf"))
        score = tl.where(fin[:, None, None] & (v == eos_id), s3, score)
        live = ok3 & (packed != _INT64_MIN)
        # The last of each chunk's KP entries is the best dropped logit: checked, never offered.
        last = jj[None, None, :] == KP - 1
        prev = tl.sum(tl.where(jj[None, None, :] == KP - 2, score, 0.0), axis=2)
        dropped = tl.sum(tl.where(last & live, score, 0.0), axis=2)
        has_drop = tl.sum(tl.where(last & live, 1, 0), axis=2) > 0
        collide = has_drop & normal[:, None] & (dropped == prev)
        flag = tl.maximum(flag, tl.max(tl.max(collide.to(tl.int32), axis=1), axis=0))
        flag = tl.maximum(flag, tl.max((unordered & beam_ok).to(tl.int32), axis=0))

        flat = ii[:, None, None].to(tl.int64) * V + v
        cand = tl.where(live & (jj[None, None, :] < KP - 1), _key(score, flat), _INT64_MIN)
        top = _topk_packed(tl.reshape(cand, (KT * PPAD * KP,)), KO)
        run = _topk_packed(tl.reshape(tl.join(run, top), (2 * KO,)), KO)
    tl.store(flag_ptr + b, flag)
    _store_top(run, out_s_ptr, out_b_ptr, out_t_ptr, b, V, k, KO)


@triton.jit
def _store_top(top, out_s_ptr, out_b_ptr, out_t_ptr, b, V, k, KO: tl.constexpr):
    o = tl.arange(0, KO)
    flat = _unpack_index(top)
    sc = _unordered_f32((top >> 32).to(tl.int32))
    keep = o < k
    base = b.to(tl.int64) * k
    tl.store(out_s_ptr + base + o, sc, mask=keep)
    tl.store(out_b_ptr + base + o, flat // V, mask=keep)
    tl.store(out_t_ptr + base + o, flat % V, mask=keep)


@triton.jit
def _beam_exact_kernel(logits_ptr, s_ptr, fin_ptr, lse_ptr, flag_ptr, out_s_ptr, out_b_ptr, out_t_ptr,
                       stride_b, stride_k, stride_v, K, V, k, eos_id,
                       HAS_FIN: tl.constexpr, TILE: tl.constexpr, KO: tl.constexpr):
    b = tl.program_id(0)
    if tl.load(flag_ptr + b) != 0:
        run = tl.full((KO,), _INT64_MIN, tl.int64)
        for i in range(0, K):
            r = b * K + i
            M = tl.load(lse_ptr + r * 2)
            log_d = tl.load(lse_ptr + r * 2 + 1)
            s = tl.load(s_ptr + r)
            fin = i < 0  # False (a tensor, so both branches below type-check; s != s would be True for NaN)
            if HAS_FIN:
                fin = tl.load(fin_ptr + r) != 0
            row = logits_ptr + b.to(tl.int64) * stride_b + i * stride_k
            for v0 in range(0, V, TILE):
                offs = v0 + tl.arange(0, TILE)
                valid = offs < V
                x = tl.load(row + offs.to(tl.int64) * stride_v, mask=valid, other=0.0).to(tl.float32)
                score = s + ((x - M) - log_d)
                score = tl.where(s == float("-inf"), float("-inf"), score)
                score = tl.where(fin, tl.where(offs == eos_id, s, float("-inf")), score)
                flat = offs.to(tl.int64) + i * V
                top = _topk_packed(tl.where(valid, _key(score, flat), _INT64_MIN), KO)
                run = _topk_packed(tl.reshape(tl.join(run, top), (2 * KO,)), KO)
        _store_top(run, out_s_ptr, out_b_ptr, out_t_ptr, b, V, k, KO)


def _launch(logits, beam_scores, k, finished, eos_id):
    B, K, V = logits.shape
    dev = logits.device
    scores = torch.empty(B, k, device=dev, dtype=torch.float32)
    beam_index = torch.empty(B, k, device=dev, dtype=torch.int64)
    token = torch.empty(B, k, device=dev, dtype=torch.int64)
    if B == 0:
        return scores, beam_index, token
    kk = min(k, V)
    KP = triton.next_power_of_2(kk + 1)
    KO = triton.next_power_of_2(k)
    # Chunks: enough programs to fill a GPU for small B*K, but few enough that one beam's chunk lists
    # (PPAD * KP keys) fit a merge tile; a chunk longer than a tile is read tile by tile.
    P = max(1, min(triton.cdiv(V, 1024), TILE_KEYS // KP))
    CHUNK = max(16, triton.next_power_of_2(triton.cdiv(V, P)))
    P = triton.cdiv(V, CHUNK)
    PPAD = triton.next_power_of_2(P)
    TILE = min(CHUNK, TILE_KEYS)
    KT = max(1, min(triton.next_power_of_2(K), TILE_KEYS // (PPAD * KP)))  # beams per merge tile
    s = beam_scores.contiguous()
    has_fin = finished is not None
    fin = finished.contiguous().view(torch.uint8) if has_fin else s  # dummy pointer when absent
    eos = -1 if eos_id is None else int(eos_id)
    part_key = torch.empty(B * K * P * KP, device=dev, dtype=torch.int64)
    part_m = torch.empty(B * K * P, device=dev, dtype=torch.float32)
    part_d = torch.empty(B * K * P, device=dev, dtype=torch.float32)
    lse = torch.empty(B * K * 2, device=dev, dtype=torch.float32)
    flag = torch.empty(B, device=dev, dtype=torch.int32)
    sb, sk, sv = logits.stride()
    _beam_chunk_kernel[(B * K, P)](logits, s, fin, part_key, part_m, part_d, sb, sk, sv, K, V, P, eos,
                                   HAS_FIN=has_fin, CHUNK=CHUNK, TILE=TILE, KP=KP)
    _beam_merge_kernel[(B,)](s, fin, part_key, part_m, part_d, lse, flag, scores, beam_index, token,
                             K, V, P, k, eos, HAS_FIN=has_fin, KT=KT, PPAD=PPAD, KP=KP, KO=KO)
    EXACT_TILE = max(16, KO, min(2048, triton.next_power_of_2(V)))
    _beam_exact_kernel[(B,)](logits, s, fin, lse, flag, scores, beam_index, token, sb, sk, sv, K, V, k, eos,
                             HAS_FIN=has_fin, TILE=EXACT_TILE, KO=KO)
    return scores, beam_index, token


def beam_search_topk(logits: torch.Tensor, beam_scores: torch.Tensor, k: int,
                     finished: Optional[torch.Tensor] = None,
                     eos_id: Optional[int] = None) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    _op_checks.beam_search_topk(logits, beam_scores, k, finished, eos_id)
    B, K, V = logits.shape
    if logits.dtype == torch.float64 or k > FAST_MAX_K or K * V >= 2**31:
        # The packed keys hold fp32 values and 31-bit flat indices; the rest is the exact torch path.
        return tuple(t.clone() for t in reference.beam_search_topk(logits, beam_scores, k, finished, eos_id))
    return _launch(logits, beam_scores, k, finished, eos_id)
