"""beam_search_topk (every backend vs the reference, exactly) and the greedy / beam-search decoders."""
from __future__ import annotations

import itertools
import math
import re

import pytest
import torch

import s2s_fused
from s2s_fused import reference
from s2s_fused.backend import is_available
from s2s_fused.seq2seq.decode import Hypothesis, beam_search, greedy_decode

from s2s_fused.ops.beam import FAST_MAX_K
from tests.helpers import (ALL_DTYPES, CPU_CAPABILITIES, backend_params, device_for, poison_heap,
                           run_on_cpu_capability, run_python)

NEG_INF = float("-inf")
TRITON = pytest.mark.skipif(not is_available("triton"), reason="triton not available")


# ----------------------------------------------------------------------------------------------- test data


def make_case(B, K, V, dtype, seed, *, ties=True, special=True, device="cpu"):
    """Random logits with exact ties (repeated values in a row, a beam duplicated with an equal score), -inf
    logits, an empty (-inf) beam and a row of huge values."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, K, V, generator=g, dtype=torch.float64) * 3
    s = -torch.rand(B, K, generator=g, dtype=torch.float64) * 4
    if ties and V >= 4:
        x[:, :, 1::4] = x[:, :, 0::4][:, :, : x[:, :, 1::4].shape[2]]  # equal logits inside a row
    if ties and K >= 2:
        x[:, 1] = x[:, 0]
        s[:, 1] = s[:, 0]                                              # equal candidates across beams
    if special:
        if V >= 3:
            x[0, -1, 2] = NEG_INF
        if K >= 3:
            s[-1, 2] = NEG_INF
        huge = torch.finfo(dtype).max / 8
        x[-1, 0] = torch.randn(V, generator=g, dtype=torch.float64).sign() * huge * torch.rand(V, generator=g)
        x[-1, 0, 0] = huge
    return x.to(dtype).to(device), s.float().to(device)


def assert_topk_equal(out, ref, what="", inputs=None):
    """Exactly equal indices; scores within fp32 rounding of the reference's. Candidates whose reference scores
    differ by less than that rounding (not exact ties: those are exact here) may come in either order.
    ``inputs``: the call's (logits, beam_scores, finished, eos_id), to also accept such a near tie where one of
    the two candidates lies just outside the top k (without them only neighbours in the output may swap)."""
    s, b, t = (o.cpu() for o in out)
    rs, rb, rt = (r.cpu() for r in ref)
    assert s.dtype == torch.float32 and b.dtype == torch.int64 and t.dtype == torch.int64, what
    assert s.shape == rs.shape and b.shape == rb.shape and t.shape == rt.shape, what
    fin = torch.isfinite(rs)
    assert torch.equal(torch.isfinite(s), fin), f"{what}: finite pattern differs"
    assert torch.equal(s[~fin], rs[~fin]), f"{what}: non-finite scores differ"
    tol = 4e-6 * rs[fin].abs().clamp(min=1.0)
    assert ((s[fin] - rs[fin]).abs() <= tol).all(), f"{what}: scores differ beyond fp32 rounding"
    same = (b == rb) & (t == rt)
    if same.all():
        return
    # Mismatches are allowed only inside groups of reference scores closer than the rounding.
    near = torch.zeros_like(same)
    gap = (rs[:, 1:] - rs[:, :-1]).abs() <= 8e-6 * rs[:, 1:].abs().clamp(min=1.0)
    near[:, 1:] |= gap
    near[:, :-1] |= gap
    bad = ~same & ~near
    if inputs is not None and bad.any():
        # The reference's score of each candidate we returned, from its full ranking: a returned candidate that
        # is not the expected one must score within the rounding of the expected one, and none may repeat.
        x, bs, fin_, eos = inputs
        K, V = x.shape[1], x.shape[2]
        all_s, all_b, all_t = (r.cpu() for r in reference.beam_search_topk(x, bs, K * V, fin_, eos))
        full = torch.empty(all_s.shape, dtype=all_s.dtype).scatter_(1, all_b * V + all_t, all_s)
        ours = full.gather(1, b * V + t)
        close = (ours - rs).abs() <= 8e-6 * rs.abs().clamp(min=1.0)
        flat = b * V + t
        assert all(len(set(row.tolist())) == len(row) for row in flat), f"{what}: a candidate repeats"
        bad &= ~(close & torch.isfinite(rs))
    assert not bad.any(), f"{what}: indices differ at {bad.nonzero().tolist()[:5]}: got {b[bad][:5].tolist()}/" \
                          f"{t[bad][:5].tolist()}, expected {rb[bad][:5].tolist()}/{rt[bad][:5].tolist()}"


def run(backend, x, s, k, finished=None, eos_id=None):
    return s2s_fused.beam_search_topk(x, s, k, finished=finished, eos_id=eos_id, backend=backend)


# ------------------------------------------------------------------------------------------- the reference


def test_reference_semantics_by_hand():
    # Beam 0: log_softmax([0, 0]) = [-ln 2, -ln 2]; beam 1 has score -inf; k covers all four candidates.
    x = torch.zeros(1, 2, 2)
    s = torch.tensor([[0.0, NEG_INF]])
    sc, b, t = reference.beam_search_topk(x, s, 4)
    assert torch.allclose(sc[0, :2], torch.tensor([-math.log(2)] * 2))
    assert b.tolist() == [[0, 0, 1, 1]] and t.tolist() == [[0, 1, 0, 1]]  # ties by flat index, -inf last
    fin = torch.tensor([[True, False]])
    sc, b, t = reference.beam_search_topk(x, torch.tensor([[-1.0, -2.0]]), 4, fin, 1)
    assert sc[0, 0] == -1.0 and (b[0, 0], t[0, 0]) == (0, 1)  # the finished beam's only candidate
    assert b[0, 1:3].tolist() == [1, 1] and sc[0, 3] == NEG_INF and (b[0, 3], t[0, 3]) == (0, 0)


# ------------------------------------------------------------------------------------------------ CPU grid

GRID = [(K, V, k) for K in (1, 2, 5, 8) for V in (1, 5, 7, 1000, 32003) for k in sorted({1, K, 2 * K, 64})
        if k <= K * V]


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=lambda d: str(d).replace("torch.", ""))
@pytest.mark.parametrize("K,V,k", GRID, ids=lambda p: str(p))
def test_cpu_matches_reference(K, V, k, dtype):
    B = 3 if V < 32003 else 2
    x, s = make_case(B, K, V, dtype, seed=K * 1000 + V + k)
    assert_topk_equal(run("cpu", x, s, k), reference.beam_search_topk(x, s, k), f"K={K} V={V} k={k} {dtype}",
                      (x, s, None, None))
    fin = torch.rand(B, K, generator=torch.Generator().manual_seed(k)) < 0.4
    eos = V // 2
    assert_topk_equal(run("cpu", x, s, k, fin, eos), reference.beam_search_topk(x, s, k, fin, eos),
                      f"finished K={K} V={V} k={k} {dtype}", (x, s, fin, eos))


@pytest.mark.parametrize("k", [65, 100, 999, 5000])
def test_cpu_exact_path_large_k(k):
    x, s = make_case(3, 5, 1000, torch.float32, seed=k)
    fin = torch.tensor([[False, True, False, False, True]] * 3)
    assert_topk_equal(run("cpu", x, s, k), reference.beam_search_topk(x, s, k))
    assert_topk_equal(run("cpu", x, s, k, fin, 3), reference.beam_search_topk(x, s, k, fin, 3))


def test_cpu_exact_path_memory_is_bounded():
    """The exact path (k > 64) and the single-pass path's rescan (when logits tie at the top-k cut) keep O(k)
    candidates a row, not O(V) a thread. Every logit of two 2^23-long rows ties, so k = 2 rescans both rows, on
    two threads at once, and k = 100 takes the exact path; the peak RSS of a subprocess over what it held before the calls
    (16 bytes x V per row took 256 MiB here) must stay small."""
    code = (
        "import resource, torch, s2s_fused\n"
        "torch.set_num_threads(2)\n"
        "V = 1 << 23\n"
        "x, s = torch.full((1, 2, V), 0.5), torch.zeros(1, 2)\n"
        "s2s_fused.beam_search_topk(x[:, :, :300], s, 100, backend='cpu')  # everything loaded first\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "for k in (2, 100):\n"
        "    sc, b, t = s2s_fused.beam_search_topk(x, s, k, backend='cpu')\n"
        "    assert b.tolist() == [[0] * k] and t.tolist() == [list(range(k))], (b, t)  # ties: index order\n"
        "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024)  # ru_maxrss: KiB\n"
    )
    extra = int(run_python(code, OMP_NUM_THREADS="2").split()[-1])
    assert extra < 32 * 2**20, f"the exact path grew the peak RSS by {extra / 2**20:.0f} MiB"


def test_cpu_rounding_collisions_are_exact():
    # Tiny logits next to a huge one all score -huge: ties that only the index can break.
    x = torch.randn(2, 3, 300, generator=torch.Generator().manual_seed(0))
    x[:, :, 7] = 1e30
    x[0, 1, 200:] = 1e30  # equal maxima late in a row
    s = torch.zeros(2, 3)
    for k in (1, 4, 9, 64):
        assert_topk_equal(run("cpu", x, s, k), reference.beam_search_topk(x, s, k), f"k={k}")
    # Neighbouring floats: distinct logits whose scores round together.
    base = torch.full((1, 2, 64), -5.0)
    base[0, :, 10] = 3.0
    base[0, :, 20:40] = torch.nextafter(torch.tensor(2.0), torch.tensor(3.0))
    base[0, :, 5:15] = 2.0
    assert_topk_equal(run("cpu", base, torch.zeros(1, 2), 12), reference.beam_search_topk(base, torch.zeros(1, 2), 12))


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=lambda d: str(d).replace("torch.", ""))
def test_cpu_equal_logit_rows_rank_by_index(dtype):
    """Rows of equal logits (a decoder zeroes the logits of rows it does not read) on the single-pass kernel
    (k <= 64): every candidate of such a row scores the same, so index order decides, and a smaller logit at a
    lower index whose score rounds to the same value comes first."""
    B, K, V = 3, 4, 1000
    x = torch.randn(B, K, V, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    x[0] = 0.0                     # a whole sentence of zeroed rows
    x[1, 2] = 7.5                  # one constant row among random ones
    x[2, 1] = 0.0
    x[2, 1, :3] = -1e-18 if dtype == torch.float64 else -1e-30  # rounds into the same score as the zeros
    x = x.to(dtype)
    s = torch.tensor([[0.0, -1.0, -2.0, -3.0], [-0.5, -0.25, -1.0, -2.0], [-1.0, -0.1, -3.0, NEG_INF]])
    for k in (1, 4, 5, 64):
        out = run("cpu", x, s, k)
        assert_topk_equal(out, reference.beam_search_topk(x, s, k), f"k={k}", (x, s, None, None))
    out = run("cpu", x[2:, 1:2], s[2:, 1:2], 5)
    assert out[2].tolist() == [[0, 1, 2, 3, 4]], out[2]
    fin = torch.tensor([[False, True, False, False]] * 3)
    assert_topk_equal(run("cpu", x, s, 8, fin, 5), reference.beam_search_topk(x, s, 8, fin, 5), "finished",
                      (x, s, fin, 5))


def test_cpu_non_contiguous_logits():
    x, s = make_case(4, 5, 301, torch.float32, seed=3)
    big = torch.randn(4, 10, 301 * 2)
    big[:, ::2, ::2] = x
    strided_k = big[:, ::2, ::2].clone()[:, :, :]  # contiguous vocab
    views = {
        "vocab stride 2": big[:, ::2, ::2],
        "beam stride 2": torch.cat([x, x], dim=2)[:, :, :301],
        "transposed": x.transpose(0, 2).contiguous().transpose(0, 2),
        "expanded": x[:1].expand(4, 5, 301),
    }
    for name, v in views.items():
        for k in (1, 10, 64):
            assert_topk_equal(run("cpu", v, s, k), reference.beam_search_topk(v, s, k), name)
    assert_topk_equal(run("cpu", strided_k, s, 7), reference.beam_search_topk(strided_k, s, 7))
    s_nc = torch.randn(5, 4).t()
    assert_topk_equal(run("cpu", x, s_nc, 7), reference.beam_search_topk(x, s_nc, 7), "non-contiguous scores")


def test_cpu_finished_and_empty_beams():
    x, s = make_case(3, 4, 50, torch.float32, seed=5, special=False)
    s[1] = NEG_INF
    fin = torch.tensor([[True, True, True, True], [True, False, False, True], [False, True, False, False]])
    s[2, 1] = NEG_INF  # a finished beam with score -inf
    for k in (1, 4, 8, 64, 200):
        out = run("cpu", x, s, k, fin, 0)
        assert_topk_equal(out, reference.beam_search_topk(x, s, k, fin, 0), f"k={k}")
    out = run("cpu", x, s, 4, fin, 0)
    # Row 0: all beams finished -> exactly the four (score, eos) candidates, best first.
    assert out[2][0].tolist() == [0, 0, 0, 0]
    assert sorted(out[1][0].tolist()) == [0, 1, 2, 3]


def test_cpu_batch_size_independence():
    x, s = make_case(6, 5, 1000, torch.float32, seed=9)
    full = run("cpu", x, s, 10)
    for b in range(6):
        one = run("cpu", x[b:b + 1], s[b:b + 1], 10)
        assert all(torch.equal(f[b:b + 1], o) for f, o in zip(full, one))


def test_cpu_empty_batch():
    out = run("cpu", torch.randn(0, 3, 10), torch.zeros(0, 3), 4)
    assert [tuple(o.shape) for o in out] == [(0, 4)] * 3


@pytest.mark.parametrize("cap", CPU_CAPABILITIES)
def test_cpu_capability_copies(cap):
    code = (
        "import torch, s2s_fused\n"
        "from s2s_fused import reference\n"
        "from tests.test_beam import make_case, assert_topk_equal, test_cpu_equal_logit_rows_rank_by_index\n"
        "for dt in (torch.float32, torch.float64, torch.bfloat16):\n"
        "    for K, V, k in ((5, 1000, 10), (2, 37, 64), (8, 3001, 16)):\n"
        "        x, s = make_case(3, K, V, dt, seed=V)\n"
        "        assert_topk_equal(s2s_fused.beam_search_topk(x, s, k, backend='cpu'),\n"
        "                          reference.beam_search_topk(x, s, k), '', (x, s, None, None))\n"
        "    test_cpu_equal_logit_rows_rank_by_index(dt)  # the rescan of tied rows\n"
    )
    run_on_cpu_capability(cap, code)


# ---------------------------------------------------------------------------- Triton (interpreter) and CUDA

SMALL_GRID = [(1, 5, 1), (2, 7, 4), (5, 7, 10), (5, 130, 64), (8, 5, 40), (2, 1, 2), (5, 40, 5)]


@pytest.mark.parametrize("backend", [p for p in backend_params() if p.id != "cpu"])
@pytest.mark.parametrize("K,V,k", SMALL_GRID, ids=str)
def test_gpu_backends_match_reference(backend, K, V, k):
    dev = device_for(backend)
    dtypes = ALL_DTYPES if dev.type == "cuda" else (torch.float32, torch.bfloat16, torch.float16)
    for dtype in dtypes:
        x, s = make_case(2, K, V, dtype, seed=K + V + k, device=dev)
        assert_topk_equal(run(backend, x, s, k), reference.beam_search_topk(x, s, k), f"{dtype}")
        fin = (torch.rand(2, K, generator=torch.Generator().manual_seed(V)) < 0.4).to(dev)
        assert_topk_equal(run(backend, x, s, k, fin, V - 1), reference.beam_search_topk(x, s, k, fin, V - 1),
                          f"finished {dtype}")


@pytest.mark.parametrize("backend", [p for p in backend_params() if p.id != "cpu"])
def test_gpu_backends_collisions_strides_large_k(backend):
    dev = device_for(backend)
    x = torch.randn(2, 3, 100, generator=torch.Generator().manual_seed(0)).to(dev)
    x[:, :, 7] = 1e30
    s = torch.zeros(2, 3, device=dev)
    for k in (1, 4, 9):
        assert_topk_equal(run(backend, x, s, k), reference.beam_search_topk(x, s, k), f"collision k={k}")
    xt = torch.randn(50, 3, 2, device=dev).transpose(0, 2)  # vocabulary stride 6
    assert_topk_equal(run(backend, xt, s, 5), reference.beam_search_topk(xt, s, 5), "strided")
    assert_topk_equal(run(backend, x, s, 100), reference.beam_search_topk(x, s, 100), "k > 64")
    xd = x.double()
    assert_topk_equal(run(backend, xd, s, 5), reference.beam_search_topk(xd, s, 5), "float64")
    out = run(backend, torch.randn(0, 3, 10, device=dev), torch.zeros(0, 3, device=dev), 4)
    assert [tuple(o.shape) for o in out] == [(0, 4)] * 3


@pytest.mark.gpu
def test_cuda_large_vocab():
    for K, V, k, dtype in ((4, 32000, 8, torch.float32), (8, 32003, 16, torch.bfloat16), (5, 50257, 64,
                                                                                         torch.float16)):
        x, s = make_case(33, K, V, dtype, seed=V, device="cuda")
        fin = torch.rand(33, K, device="cuda") < 0.2
        for backend in ("cuda", "triton"):
            assert_topk_equal(run(backend, x, s, k), reference.beam_search_topk(x, s, k), backend)
            assert_topk_equal(run(backend, x, s, k, fin, 2), reference.beam_search_topk(x, s, k, fin, 2), backend)


# ------------------------------------------------------------------------------------------ NaN / inf rule
# One rule on every backend, torch's (the reference): a candidate scores beam_scores + log_softmax(logits), so a
# beam row holding a NaN or +inf logit, or only -inf logits, scores NaN everywhere; a NaN beam score gives NaN
# candidates, a +inf one +inf (NaN where the logit is -inf); the ranking is torch.sort's, NaN above +inf, equal
# scores by flat index. A finished beam still offers only (its score, eos_id), an empty (-inf) beam only -inf.

NAN, INF = float("nan"), float("inf")


def exact_lse_case(B, K, V, g):
    """Logits whose log-sum-exp is exact in any summation order, so every backend must agree to the bit: each beam
    row has one maximum and the rest lie >= 200 below it (exp underflows to 0 in fp32; 1 + e^-200 rounds to 1 in
    fp64), so a finite score is s + (x - max) exactly. Values repeat inside a row (ties) and beam 1 repeats beam 0
    with its score (ties across beams)."""
    top = torch.randint(-4, 5, (B, K, 1), generator=g).double()
    x = top - 200 - torch.randint(0, 64, (B, K, V), generator=g).double() * 0.5
    x.scatter_(2, torch.randint(0, V, (B, K, 1), generator=g), top)
    s = -torch.randint(0, 16, (B, K), generator=g).double() * 0.25
    if K >= 2:
        x[:, 1], s[:, 1] = x[:, 0], s[:, 0]
    return x, s


def _v(V, g):
    return int(torch.randint(0, V, (1,), generator=g))


def _nan_in_inf_stretch(x, s, g):
    # NaN among -inf logits, the row's finite values after them (in the CPU kernel: a later chunk)
    V = x.shape[2]
    x[0, -1, : 3 * V // 4] = -INF
    x[0, -1, V // 2] = NAN
    x[0, -1, -1] = 1.0


def _some_neg_inf(x, s, g):
    x[0, 0, ::2] = -INF
    x[0, 0, 1 % x.shape[2]] = 300.0  # a maximum again, far above the rest (which may have lost theirs)


def _plus_inf_beam(x, s, g):
    s[2, 0] = INF
    x[2, 0, _v(x.shape[2], g)] = -INF  # +inf + -inf: NaN


def _mixed(x, s, g):
    x[0, 0, _v(x.shape[2], g)] = NAN
    x[1, -1, _v(x.shape[2], g)] = INF
    s[2, -1] = NAN
    s[1, 0] = -INF
    x[2, 0] = -INF


# name -> mutation of (x (B=3, K, V) float64, s (3, K) float64, g); the unmutated rows stay as controls
NAN_INF_SCENARIOS = {
    "none": lambda x, s, g: None,
    "nan logit in one beam": lambda x, s, g: x[0, -1].__setitem__(_v(x.shape[2], g), NAN),
    "nan logit at index 0": lambda x, s, g: x[1, 0].__setitem__(0, NAN),
    "nan logit at one token, every beam": lambda x, s, g: x[1, :].__setitem__((slice(None), _v(x.shape[2], g)), NAN),
    "nan row": lambda x, s, g: x[2, 0].fill_(NAN),
    "nan among -inf": _nan_in_inf_stretch,
    "+inf logit": lambda x, s, g: x[0, 0].__setitem__(_v(x.shape[2], g), INF),
    "+inf logits twice": lambda x, s, g: x[2, -1].__setitem__(slice(0, None, max(1, x.shape[2] // 2)), INF),
    "+inf and nan logits": lambda x, s, g: (x[1, 0].__setitem__(0, INF), x[1, 0].__setitem__(-1, NAN)),
    "some -inf logits": _some_neg_inf,
    "-inf row": lambda x, s, g: x[1, -1].fill_(-INF),
    "-inf beam score": lambda x, s, g: s[0].__setitem__(-1, -INF),
    "every beam score -inf": lambda x, s, g: s[1].fill_(-INF),
    "nan beam score": lambda x, s, g: s[2].__setitem__(0, NAN),
    "+inf beam score": _plus_inf_beam,
    "mixed": _mixed,
}


def nan_inf_batches(K, V, seed):
    """Every scenario, 3 batch rows each, stacked into one batch: ``(names (one a row), x float64, s float32,
    finished, eos_id)``, once without ``finished`` and once with about a third of the beams finished (beam 0 of
    rows 0 and 2 always, over the special values: NaN logits, NaN / -inf / +inf scores)."""
    g = torch.Generator().manual_seed(seed)
    xs, ss, fins, names = [], [], [], []
    for name, mutate in NAN_INF_SCENARIOS.items():
        x, s = exact_lse_case(3, K, V, g)
        mutate(x, s, g)
        fin = torch.rand(3, K, generator=g) < 0.35
        fin[:, 0] = torch.tensor([True, False, True])
        xs.append(x)
        ss.append(s.float())
        fins.append(fin)
        names += [name] * 3
    x, s = torch.cat(xs), torch.cat(ss)
    return [(names, x, s, None, None), ([n + ", finished" for n in names], x, s, torch.cat(fins), _v(V, g))]


def topk_mismatch(out, ref):
    """{row: what differs} for the batch rows where out is not exactly ref: the same indices, the same scores
    (NaN where ref has NaN)."""
    s, b, t = (o.cpu() for o in out)
    rs, rb, rt = (r.cpu() for r in ref)
    if s.dtype != torch.float32 or s.shape != rs.shape or b.shape != rb.shape or t.shape != rt.shape:
        return {-1: f"got scores {s.dtype} {tuple(s.shape)}, expected float32 {tuple(rs.shape)}"}
    nan = torch.isnan(rs)
    same = (b == rb) & (t == rt) & (torch.isnan(s) == nan) & ((s == rs) | nan)
    bad = {}
    for r, j in (~same).nonzero().tolist():
        if r not in bad:
            bad[r] = (f"row {r}, position {j}: got ({s[r, j].item()}, beam {b[r, j].item()}, token "
                      f"{t[r, j].item()}), expected ({rs[r, j].item()}, beam {rb[r, j].item()}, token "
                      f"{rt[r, j].item()})")
    return bad


NAN_INF_SHAPES = [(1, 1), (3, 17), (5, 130), (2, 4099)]


def nan_inf_probe(backend, dtypes, shapes, ks):
    """Every scenario x shape x dtype x k (``ks(K*V)``, those <= K*V) on ``backend`` against the reference;
    returns (the failures, one line per scenario and call, and the number of scenario cases run)."""
    dev = device_for(backend)
    failures, n = [], 0
    for K, V in shapes:
        for names, x64, s, fin, eos in nan_inf_batches(K, V, seed=K * 7 + V):
            for dtype in dtypes:
                x = x64.to(dtype)
                for k in sorted(k for k in ks(K * V) if k <= K * V):
                    args = (x.to(dev), s.to(dev), k, None if fin is None else fin.to(dev), eos)
                    ref = reference.beam_search_topk(*args)
                    poison_heap(3 * x.shape[0] * k)
                    bad = topk_mismatch(run(backend, *args), ref)
                    n += len(NAN_INF_SCENARIOS)
                    for name in dict.fromkeys(names[r] if r >= 0 else "all" for r in bad):
                        first = next(d for r, d in bad.items() if r < 0 or names[r] == name)
                        failures.append(f"{name} K={K} V={V} k={k} {dtype}: {first}")
    return failures, n


@pytest.mark.parametrize("path", ["single-pass", "exact"])
@pytest.mark.parametrize("backend", backend_params())
def test_nan_inf_rule_matches_reference_exactly(backend, path):
    """The probe of the rule above: NaN in one beam / one token, +inf logits, -inf rows, empty (-inf) beams,
    -inf / NaN / +inf beam scores, finished beams mixed in, ties; indices and scores exactly equal to torch's,
    on the single-pass kernels (k <= 64) and on the exact path (k > 64)."""
    if path == "single-pass":
        ks = lambda n: [k for k in (1, 2, 7, FAST_MAX_K, n) if k <= FAST_MAX_K]
    else:
        ks = lambda n: [k for k in (FAST_MAX_K + 1, 100, n) if k > FAST_MAX_K]
    plan = [((K, V), dtype, ks) for K, V in NAN_INF_SHAPES for dtype in ALL_DTYPES]
    if backend == "triton" and device_for(backend).type == "cpu" and path == "single-pass":
        # The interpreter runs every selection round of every program in Python (one call at k = 7, K = 5 costs
        # ~7 s of CPU here): a subset here, the whole probe on a GPU.
        plan = [((1, 1), torch.float32, lambda n: [1]), ((3, 17), torch.float32, lambda n: [1, 7]),
                ((3, 17), torch.bfloat16, lambda n: [7]), ((5, 130), torch.float32, lambda n: [7])]
    failures, n = [], 0
    for shape, dtype, ks in plan:
        more, m = nan_inf_probe(backend, (dtype,), [shape], ks)
        failures, n = failures + more, n + m
    assert n and not failures, f"{len(failures)} of {n} cases differ from the reference:\n" + "\n".join(failures[:20])


# ------------------------------------------------------------------------------------ opcheck / compile


def _opcheck_samples(device="cpu"):
    x, s = make_case(2, 3, 17, torch.float32, seed=1, device=device)
    fin = torch.tensor([[True, False, False], [False, False, True]], device=device)
    xh = make_case(2, 3, 17, torch.float16, seed=1, device=device)[0]  # (x.half() would overflow to +inf: NaN)
    return [(x, s, 4, None, None), (x, s, 1, fin, 3), (xh, s, 6, None, 0), (x, s, 51, fin, 16)]


def test_opcheck_cpu():
    for args in _opcheck_samples():
        torch.library.opcheck(torch.ops.s2s_fused.beam_search_topk.default, args)
    x, s = make_case(2, 3, 17, torch.float32, seed=1)
    args = (x.requires_grad_(), s, 4, None, None)
    torch.library.opcheck(torch.ops.s2s_fused.beam_search_topk.default, args)
    out = s2s_fused.beam_search_topk(x, s, 4, backend="cpu")
    assert not any(o.requires_grad for o in out)  # a discrete selection: no gradient flows through it


@TRITON
def test_opcheck_triton():
    dev = device_for("triton")
    for args in _opcheck_samples(dev)[:2]:
        torch.library.opcheck(torch.ops.s2s_fused.beam_search_topk_triton.default, args)


@pytest.mark.parametrize("backend", ["cpu", pytest.param("triton", marks=TRITON), "reference"])
def test_torch_compile_fullgraph(backend):
    dev = device_for(backend)
    x, s = make_case(2, 3, 17, torch.float32, seed=2, device=dev)
    fin = torch.tensor([[True, False, False], [False, False, True]], device=dev)

    def step(x, s, fin):
        sc, b, t = s2s_fused.beam_search_topk(x * 1.0, s, 6, finished=fin, eos_id=3, backend=backend)
        return sc + 0, b, t

    torch._dynamo.reset()
    got = torch.compile(step, fullgraph=True, backend="aot_eager")(x, s, fin)
    assert_topk_equal(got, reference.beam_search_topk(x, s, 6, fin, 3))


# ------------------------------------------------------------------------------------------------ errors


def test_bad_inputs_raise_clear_errors():
    x, s = torch.randn(2, 3, 5), torch.zeros(2, 3)
    fin = torch.zeros(2, 3, dtype=torch.bool)
    cases = [
        (dict(k=0), ValueError, "k: expected 1 <= k <= K*V = 15, got 0"),
        (dict(k=16), ValueError, "k: expected 1 <= k <= K*V = 15, got 16"),
        (dict(k=True), TypeError, "k: expected an int"),
        (dict(logits=x[0]), ValueError, "logits: expected a 3-D tensor"),
        (dict(logits=x.long()), TypeError, "logits: expected a float32"),
        (dict(beam_scores=torch.zeros(2, 4)), ValueError, "beam_scores: expected shape (2, 3)"),
        (dict(beam_scores=torch.zeros(2, 3, dtype=torch.float64)), TypeError, "beam_scores: expected a float32"),
        (dict(finished=fin), ValueError, "eos_id: required when finished is given"),
        (dict(finished=fin.int(), eos_id=1), TypeError, "finished: expected a bool tensor"),
        (dict(finished=fin.tolist(), eos_id=1), TypeError, "finished: expected a torch.Tensor, got list"),
        (dict(finished=True, eos_id=1), TypeError, "finished: expected a torch.Tensor, got bool"),
        (dict(finished=fin[:, :2], eos_id=1), ValueError, "finished: expected shape (2, 3)"),
        (dict(eos_id=5), ValueError, "eos_id: expected 0 <= eos_id < V = 5, got 5"),
        (dict(eos_id=-1), ValueError, "eos_id: expected 0 <= eos_id < V = 5, got -1"),
    ]
    for kw, exc, msg in cases:
        args = dict(logits=x, beam_scores=s, k=2, finished=None, eos_id=None)
        args.update(kw)
        with pytest.raises(exc, match=msg.replace("(", r"\(").replace(")", r"\)").replace("*", r"\*")):
            s2s_fused.beam_search_topk(args["logits"], args["beam_scores"], args["k"], finished=args["finished"],
                                       eos_id=args["eos_id"], backend="cpu")
    # The compiled op checks again for direct callers.
    op = torch.ops.s2s_fused.beam_search_topk
    with pytest.raises(RuntimeError, match="k: expected 1 <= k <= K\\*V"):
        op(x, s, 16)
    with pytest.raises(RuntimeError, match="eos_id: required"):
        op(x, s, 2, fin)
    with pytest.raises(RuntimeError, match="eos_id: expected 0 <= eos_id < V"):
        op(x, s, 2, fin, 7)
    with pytest.raises(RuntimeError, match="beam_scores: expected shape"):
        op(x, s[:1], 2)


def _bad_op_args():
    """(what, args) of direct op calls with one wrong argument each, for the C++ op's checks (beam_checks.h)."""
    x, s = torch.randn(2, 3, 5), torch.zeros(2, 3)
    fin = torch.zeros(2, 3, dtype=torch.bool)
    return [
        ("logits 2-D", (x[0], s, 2, None, None)),
        ("logits 4-D", (x[None], s, 2, None, None)),
        ("logits int64", (x.long(), s, 2, None, None)),
        ("beam_scores float64", (x, s.double(), 2, None, None)),
        ("beam_scores float16", (x, s.half(), 2, None, None)),
        ("beam_scores (2, 4)", (x, torch.zeros(2, 4), 2, None, None)),
        ("beam_scores 1-D", (x, torch.zeros(6), 2, None, None)),
        ("beam_scores 0-D", (x, torch.zeros(()), 2, None, None)),
        ("k = 0", (x, s, 0, None, None)),
        ("k = -3", (x, s, -3, None, None)),
        ("k > K*V", (x, s, 16, None, None)),
        ("V = 0", (torch.randn(2, 3, 0), s, 1, None, None)),
        ("K = 0", (torch.randn(2, 0, 5), torch.zeros(2, 0), 1, None, None)),
        ("finished int32", (x, s, 2, fin.int(), 1)),
        ("finished (2, 2)", (x, s, 2, fin[:, :2], 1)),
        ("finished 3-D", (x, s, 2, fin[..., None], 1)),
        ("finished without eos_id", (x, s, 2, fin, None)),
        ("eos_id = V", (x, s, 2, None, 5)),
        ("eos_id = -1 with finished", (x, s, 2, fin, -1)),
        ("eos_id huge", (x, s, 2, None, 2**40)),
    ]


@TRITON
def test_op_checks_same_on_every_kernel():
    """Every wrong input to a registered op raises before any launch, the same exception and message from the C++
    op (its TORCH_CHECKs), the Triton op (s2s_fused/_op_checks.py) and both fake kernels; nothing is launched and
    the inputs are left alone."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from s2s_fused.triton import beam as tri
    from tests.gpu_compile import record_launches
    ops = {"cpu": torch.ops.s2s_fused.beam_search_topk, "triton": torch.ops.s2s_fused.beam_search_topk_triton}
    for what, args in _bad_op_args():
        copies = [a.clone() if isinstance(a, torch.Tensor) else a for a in args]
        errors = {}
        for name, op in ops.items():
            with record_launches(tri) as launched:
                with pytest.raises(Exception) as e:
                    op(*args)
            assert not launched, f"{what}: {name} launched {[l.fn.__name__ for l in launched]}"
            errors[name] = e.value
            with FakeTensorMode() as mode:
                fake = [mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args]
                with pytest.raises(Exception) as e:
                    op(*fake)
            errors[name + " fake"] = e.value
        first = errors["cpu"]
        assert type(first) is RuntimeError, f"{what}: {type(first).__name__}: {first}"
        msg = str(first).splitlines()[0]
        for name, err in errors.items():
            assert (type(err), str(err).splitlines()[0]) == (RuntimeError, msg), f"{what}: {name} raised {err!r}"
        for a, c in zip(args, copies):
            assert not isinstance(a, torch.Tensor) or torch.equal(a, c), f"{what}: an input was written"


@TRITON
def test_op_checks_under_torch_compile():
    """The fake kernels' checks surface through torch.compile with the kernels' message."""
    x, s = torch.randn(2, 3, 5), torch.zeros(2, 3)
    for op in (torch.ops.s2s_fused.beam_search_topk, torch.ops.s2s_fused.beam_search_topk_triton):
        for args, msg in (((x, s[:1], 2, None, None), "beam_scores: expected shape (2, 3) (logits' (B, K)), got [1, 3]"),
                          ((x, s, 16, None, None), "k: expected 1 <= k <= K*V = 15, got 16")):
            torch._dynamo.reset()
            with pytest.raises(Exception, match=re.escape(msg)):
                torch.compile(lambda *a: op(*a), fullgraph=True, backend="aot_eager")(*args)


# ----------------------------------------------------------------------------------------------- decoders


class TinyRNN:
    """A fixed random Elman decoder: h' = tanh(E[token] + h W), logits = h' O. State (h, {"c": h}) exercises
    the pytree reorder."""

    def __init__(self, V, H=8, seed=0, scale=2.0, device="cpu"):
        g = torch.Generator().manual_seed(seed)
        self.E = torch.randn(V, H, generator=g).to(device)
        self.W = (torch.randn(H, H, generator=g) * 0.5).to(device)
        self.O = (torch.randn(H, V, generator=g) * scale).to(device)
        self.H = H

    def init(self, B, seed=1):
        h = torch.randn(B, self.H, generator=torch.Generator().manual_seed(seed)).to(self.E.device)
        return (h, {"c": h * 2})

    def step(self, tokens, state):
        h, extra = state
        h = torch.tanh(self.E[tokens] + h @ self.W + 0.1 * extra["c"])
        return h @ self.O, (h, {"c": extra["c"]})

    def log_prob(self, state_row, seq, bos):
        state, tok, total = state_row, torch.tensor([bos]), 0.0
        for t in seq:
            logits, state = self.step(tok, state)
            total += torch.log_softmax(logits.double(), -1)[0, t].item()
            tok = torch.tensor([t])
        return total


def _row(state, b):
    h, extra = state
    return (h[b:b + 1], {"c": extra["c"][b:b + 1]})


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_greedy_equals_beam_one(backend):
    m = TinyRNN(V=11, seed=3)
    init = m.init(9)
    g = greedy_decode(m.step, init, 0, 1, 12, backend=backend)
    b1 = beam_search(m.step, init, 0, 1, 1, 12, backend=backend)
    assert g == b1
    assert all(len(h) == 1 and isinstance(h[0], Hypothesis) for h in g)
    assert any(h[0].finished for h in g) and any(not h[0].finished for h in g)  # both endings covered
    for b, (hyp,) in enumerate(g):  # greedy follows the argmax path
        state, tok = _row(init, b), torch.tensor([0])
        for t in hyp.tokens + ([1] if hyp.finished else []):
            logits, state = m.step(tok, state)
            assert t == int(torch.argmax(logits[0]))
            tok = torch.tensor([t])


def _exhaustive(m, state_row, V, eos, max_len, lp=None, alpha=0.75):
    out = []
    for L in range(1, max_len + 1):
        for seq in itertools.product(range(V), repeat=L):
            if eos in seq[:-1] or (L < max_len and seq[-1] != eos):
                continue
            fin = seq[-1] == eos
            logp = m.log_prob(state_row, seq, 0)
            Lf = torch.tensor(float(L))
            div = 1.0 if lp is None else float(Lf ** alpha if lp == "avg" else ((5 + Lf) / 6) ** alpha)
            out.append((logp / div, list(seq[:-1]) if fin else list(seq)))
    out.sort(key=lambda p: -p[0])
    return out


@pytest.mark.parametrize("lp", [None, "avg", "gnmt"])
def test_beam_search_is_exhaustive_with_full_beam(lp):
    V, T, eos = 4, 4, 1
    m = TinyRNN(V=V, seed=5, scale=1.5)
    init = m.init(3, seed=7)
    res = beam_search(m.step, init, 0, eos, V ** T, T, length_penalty=lp, n_best=3, backend="cpu")
    for b in range(3):
        best = _exhaustive(m, _row(init, b), V, eos, T, lp)
        got = res[b]
        assert [h.tokens for h in got] == [p[1] for p in best[:3]], f"row {b}"
        assert all(abs(h.score - p[0]) < 1e-5 for h, p in zip(got, best))
        assert [h.score for h in got] == sorted((h.score for h in got), reverse=True)


def test_beam_search_exhaustive_v6_len3():
    V, T, eos = 6, 3, 2
    m = TinyRNN(V=V, seed=11, scale=1.0)
    init = m.init(2, seed=3)
    res = beam_search(m.step, init, 0, eos, V ** T, T, backend="cpu")
    for b in range(2):
        assert res[b][0].tokens == _exhaustive(m, _row(init, b), V, eos, T)[0][1]


@pytest.mark.parametrize("penalty", [None, "avg", "gnmt"])
@pytest.mark.parametrize("alpha", [0.6, 1.0, 1.7])
def test_length_penalty_factor_is_the_same_for_every_batch(penalty, alpha):
    """lp(L) is one float32 per L, whatever the tensor it comes in: the double-precision value rounded once (a
    tensor pow rounded differently in its vectorised body and its tail, so a beam's penalised score depended on
    the batch around it)."""
    from s2s_fused.seq2seq.decode import length_penalty_factor

    def expected(L):
        L = max(L, 1)
        exact = 1.0 if penalty is None else L ** alpha if penalty == "avg" else ((5 + L) / 6) ** alpha
        return float(torch.tensor(exact, dtype=torch.float32))
    for n in (1, 3, 17, 130, 257):
        lengths = torch.randint(0, 60, (n,))
        got = length_penalty_factor(lengths, penalty, alpha)
        assert got.dtype == torch.float32 and got.shape == lengths.shape
        assert got.tolist() == [expected(L) for L in lengths.tolist()], (n, penalty, alpha)
        assert length_penalty_factor(lengths.view(1, -1), penalty, alpha, 59).view(-1).tolist() == got.tolist()
    assert length_penalty_factor(torch.zeros(0, 4, dtype=torch.long), penalty, alpha).shape == (0, 4)


@pytest.mark.parametrize("kw", [dict(), dict(length_penalty="gnmt", n_best=2), dict(min_len=3),
                                dict(no_repeat_ngram_size=2)])
def test_beam_search_batch_composition_independent(kw):
    m = TinyRNN(V=13, seed=2)
    init = m.init(6, seed=4)
    full = beam_search(m.step, init, 0, 1, 4, 10, backend="cpu", **kw)
    for b in range(6):
        alone = beam_search(m.step, _row(init, b), 0, 1, 4, 10, backend="cpu", **kw)
        assert alone[0] == full[b], f"row {b}"
    perm = [3, 0, 5]
    sub = (init[0][perm], {"c": init[1]["c"][perm]})
    part = beam_search(m.step, sub, 0, 1, 4, 10, backend="cpu", **kw)
    assert part == [full[p] for p in perm]


def test_beam_search_min_len_and_ngram():
    m = TinyRNN(V=7, seed=8, scale=3.0)
    init = m.init(5)
    free = beam_search(m.step, init, 0, 1, 3, 9, n_best=3, backend="cpu")
    assert any(h.finished and len(h.tokens) < 4 for hs in free for h in hs)  # min_len below changes things
    res = beam_search(m.step, init, 0, 1, 3, 9, min_len=4, n_best=3, backend="cpu")
    assert all(len(h.tokens) >= 4 for hs in res for h in hs)
    reps = beam_search(m.step, init, 0, 1, 3, 9, no_repeat_ngram_size=2, n_best=3, backend="cpu")
    for hs in reps:
        for h in hs:
            grams = list(zip(h.tokens, h.tokens[1:]))
            assert len(grams) == len(set(grams)), h.tokens
    assert any(len(set(zip(h.tokens, h.tokens[1:]))) < len(h.tokens) - 1 for hs in free for h in hs)


@pytest.mark.parametrize("kw", [dict(), dict(n_best=2), dict(length_penalty="avg", n_best=2),
                                dict(length_penalty="gnmt")])
def test_beam_search_early_stop_matches_full_run(kw, monkeypatch):
    from s2s_fused.seq2seq import decode
    m = TinyRNN(V=9, seed=4, scale=3.0)
    init = m.init(4)
    calls = []

    eos_bonus = torch.zeros(9)
    eos_bonus[1] = 1.5  # EOS likely enough that every row finishes

    def counting(tokens, state):
        calls.append(1)
        logits, state = m.step(tokens, state)
        return logits + eos_bonus, state

    res = beam_search(counting, init, 0, 1, 3, 25, backend="cpu", **kw)
    if not kw:
        assert len(calls) < 25  # stopped early
    n_early = len(calls)
    monkeypatch.setattr(decode, "_rows_done", lambda scores, *a: torch.zeros_like(scores[:, 0], dtype=torch.bool))
    calls.clear()
    full = beam_search(counting, init, 0, 1, 3, 25, backend="cpu", **kw)
    assert len(calls) == 25 >= n_early
    assert res == full


@pytest.mark.parametrize("backend", [pytest.param("triton", marks=TRITON), "reference"])
def test_decoders_other_backends(backend):
    found = []
    for be in ("cpu", backend):
        m = TinyRNN(V=6, seed=6, device=device_for(be))
        found.append(beam_search(m.step, m.init(3), 0, 1, 3, 5, n_best=2, backend=be))
    cpu, other = ([[h.tokens for h in hs] for hs in f] for f in found)
    assert cpu == other
    init = m.init(3)
    assert greedy_decode(m.step, init, 0, 1, 5, backend=backend) == beam_search(m.step, init, 0, 1, 1, 5,
                                                                              backend=backend)


def test_decoder_state_and_reorder_hook():
    m = TinyRNN(V=8, seed=1)
    init = m.init(3)
    seen = []

    def reorder(state, index):
        seen.append(index.clone())
        h, extra = state
        return (h[index], {"c": extra["c"][index]})

    a = beam_search(m.step, init, 0, 1, 4, 6, reorder_state=reorder, backend="cpu")
    assert a == beam_search(m.step, init, 0, 1, 4, 6, backend="cpu")
    assert seen[0].tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2]  # the expansion from B to B*beam
    assert all(i.shape == (12,) for i in seen)


def test_decoder_bad_inputs():
    m = TinyRNN(V=5)
    init = m.init(2)
    bad = [
        (dict(beam_size=0), ValueError, "beam_size"),
        (dict(n_best=5), ValueError, "n_best"),
        (dict(length_penalty="wu"), ValueError, "length_penalty"),
        (dict(min_len=11), ValueError, "min_len"),
        (dict(alpha=-1.0), ValueError, "alpha"),
        (dict(max_len=0), ValueError, "max_len"),
        (dict(eos_id=5), ValueError, "eos_id"),
        (dict(beam_size=2.0), TypeError, "beam_size"),
    ]
    for kw, exc, msg in bad:
        args = dict(step_fn=m.step, init_state=init, bos_id=0, eos_id=1, beam_size=4, max_len=10)
        args.update(kw)
        with pytest.raises(exc, match=msg):
            beam_search(**args, backend="cpu")
    with pytest.raises(ValueError, match="step_fn: expected logits of shape"):
        greedy_decode(lambda t, s: (torch.zeros(3, 5), s), init, 0, 1, 4)
    with pytest.raises(TypeError, match="step_fn"):
        greedy_decode(None, init, 0, 1, 4)
    with pytest.raises(ValueError, match="batch_size"):
        greedy_decode(m.step, None, 0, 1, 4)


def test_triton_beam_kernels_compile_for_gpu():
    """The Triton beam kernels (chunk, merge, exact), in the configurations their launcher uses (logit dtypes,
    with and without `finished`, strided vocabularies, B = K = V = k = 1 and eos_id = 1 as constexprs), compiled
    for sm_90 down to cubin without a GPU: the interpreter accepts code the compiler rejects (tests/gpu_compile.py)."""
    from tests.gpu_compile import check_families
    check_families("beam")
