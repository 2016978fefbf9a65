"""Additive (Bahdanau) and dot (Luong) attention: every backend against the float64 reference, which is itself checked
against a plain loop over the formula and against the d2l masked softmax (-1e6 fill) the seq2seq model used before.
Most tests run both kinds: an input list of five tensors is the additive op's, of three the dot op's."""
from __future__ import annotations

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import s2s_fused
from s2s_fused import reference
from s2s_fused.backend import is_available, triton_interpret
from tests.helpers import (CPU_CAPABILITIES, VALUE_TOL, assert_close, assert_raises, backend_params,
                           check_dtypes_on_cpu_capability, device_for, poison_heap)

ops = torch.ops.s2s_fused
# The Triton twins' checks on CPU tensors, under the interpreter only: on a GPU machine (no interpreter) they are the
# same device-agnostic Python functions, covered by the CPU runs (as in tests/test_op_checks.py).
TRITON_ON_CPU = pytest.mark.skipif(not (is_available("triton") and triton_interpret()),
                                   reason="Triton on CPU tensors needs TRITON_INTERPRET=1")
# Gradients vs the float64 reference run on the same rounded inputs (relative to the largest gradient): fp32/fp64
# as the value tolerance; half precision: each gradient is rounded once to the dtype after an fp32 accumulation.
GRAD_TOL = {torch.float64: 1e-10, torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 2e-3}
NAMES = ("query", "keys", "values", "w_q", "v")
KINDS = ("additive", "dot")


def _inputs(B, S, H, Hq, Dv, dtype=torch.float64, device="cpu", *, seed=0, valid_len=None, R=1, kind="additive"):
    """query (R*B, Hq) over B source rows (keys, values, valid_len), w_q and v; for the dot kind query (R*B, H)
    (scaled by 1/sqrt(H), as a scaled dot product), keys and values only."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype).to(device)

    if kind == "dot":
        tensors = [r(R * B, H, scale=max(H, 1) ** -0.5), r(B, S, H), r(B, S, Dv)]
    else:
        tensors = [r(R * B, Hq), r(B, S, H), r(B, S, Dv), r(H, Hq, scale=0.5), r(H)]
    if valid_len is None:
        valid_len = torch.randint(0, S + 1, (B,), generator=g)
        valid_len[0] = S
        if B > 1:
            valid_len[1] = 0
        if B > 2:
            valid_len[2] = 1
    return tensors, torch.as_tensor(valid_len, dtype=torch.int64).to(device)


def _attention(tensors):
    """The public function of the kind the inputs are for (five tensors: additive, three: dot)."""
    return s2s_fused.additive_attention if len(tensors) == 5 else s2s_fused.dot_attention


def _run(backend, tensors, valid_len, seed=5):
    xs = [t.detach().clone().requires_grad_() for t in tensors]
    poison_heap(4096, dtype=tensors[0].dtype, device=tensors[0].device)
    ctx, w = _attention(tensors)(*xs, valid_len, backend=backend)
    g = torch.Generator().manual_seed(seed)
    gc = torch.randn(ctx.shape, generator=g, dtype=torch.float64)
    gw = torch.randn(w.shape, generator=g, dtype=torch.float64)
    loss = (ctx * gc.to(ctx.dtype).to(ctx.device)).sum() + (w * gw.to(w.dtype).to(w.device)).sum()
    loss.backward()
    return ctx, w, [x.grad for x in xs]


def _ref(tensors, valid_len, seed=5):
    return _run("reference", [t.detach().cpu().double() for t in tensors], valid_len.cpu(), seed)


# ---------------------------------------------------------------------------------------------- reference


def _loop_formula(query, keys, values, w_q, v, valid_len):
    B, S, _ = keys.shape
    ctx = torch.zeros(B, values.shape[2], dtype=torch.float64)
    weights = torch.zeros(B, S, dtype=torch.float64)
    for b in range(B):
        L = int(valid_len[b])
        if L == 0:
            weights[b] = 1.0 / S
        else:
            qp = w_q @ query[b]
            scores = torch.stack([v @ torch.tanh(qp + keys[b, s]) for s in range(L)])
            e = torch.exp(scores - scores.max())
            weights[b, :L] = e / e.sum()
        ctx[b] = sum(weights[b, s] * values[b, s] for s in range(S))
    return ctx, weights


@pytest.mark.parametrize("shape", [(1, 1, 1, 1, 1), (4, 5, 3, 6, 7), (3, 17, 8, 2, 5)])
def test_reference_matches_the_formula_and_d2l(shape):
    from s2s_fused.seq2seq.model import masked_softmax

    tensors, vl = _inputs(*shape)
    ctx, w = reference.additive_attention(*tensors, vl)
    c2, w2 = _loop_formula(*tensors, vl)
    assert_close(ctx, c2, 1e-12, "context")
    assert_close(w, w2, 1e-12, "weights")
    # d2l's masked softmax (-1e6 fill) gives the same weights, valid_len = 0 included (uniform 1/S)
    q, k, _, w_q, v = tensors
    scores = torch.tanh(k + (q @ w_q.t())[:, None, :]) @ v
    assert_close(w, masked_softmax(scores, vl), 1e-12, "d2l weights")


def _dot_loop_formula(query, keys, values, valid_len):
    B, S, _ = keys.shape
    R = query.shape[0] // B
    ctx = torch.zeros(query.shape[0], values.shape[2], dtype=torch.float64)
    weights = torch.zeros(query.shape[0], S, dtype=torch.float64)
    for n in range(query.shape[0]):
        b, L = n // R, int(valid_len[n // R])
        if L == 0:
            weights[n] = 1.0 / S
        else:
            scores = torch.stack([query[n] @ keys[b, s] for s in range(L)])
            e = torch.exp(scores - scores.max())
            weights[n, :L] = e / e.sum()
        ctx[n] = sum(weights[n, s] * values[b, s] for s in range(S))
    return ctx, weights


@pytest.mark.parametrize("R", [1, 3])
@pytest.mark.parametrize("shape", [(1, 1, 1, 1, 1), (4, 5, 3, 6, 7), (3, 17, 8, 2, 5)])
def test_dot_reference_matches_the_formula_and_d2l(shape, R):
    from s2s_fused.seq2seq.model import masked_softmax

    tensors, vl = _inputs(*shape, R=R, kind="dot")
    ctx, w = reference.dot_attention(*tensors, vl)
    c2, w2 = _dot_loop_formula(*tensors, vl)
    assert_close(ctx, c2, 1e-12, "context")
    assert_close(w, w2, 1e-12, "weights")
    q, k, _ = tensors
    scores = (q[:, None, :] * k.repeat_interleave(R, 0)).sum(-1)
    assert_close(w, masked_softmax(scores, vl.repeat_interleave(R)), 1e-12, "d2l weights")


# ---------------------------------------------------------------------------------------- against reference

SHAPES = [(1, 1, 1, 1, 1), (3, 17, 3, 5, 7), (17, 1, 130, 3, 17), (130, 3, 17, 17, 3), (3, 130, 17, 1, 130)]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_forward_backward_matches_reference(backend, dtype, shape, kind):
    dev = device_for(backend)
    if backend == "triton" and dev.type == "cpu" and shape[0] > 100 and dtype != torch.float32:
        pytest.skip("the interpreter runs one program at a time: B = 130 in float32 only (15 s a dtype)")
    tensors, vl = _inputs(*shape, dtype=dtype, device=dev, seed=sum(shape), kind=kind)
    ctx, w, grads = _run(backend, tensors, vl)
    rctx, rw, rgrads = _ref(tensors, vl)
    assert ctx.dtype == dtype and w.dtype == dtype
    assert_close(ctx, rctx, VALUE_TOL[dtype], "context")
    assert_close(w, rw, VALUE_TOL[dtype], "weights")
    for name, g, r in zip(NAMES, grads, rgrads):
        assert g.dtype == dtype
        assert_close(g, r, GRAD_TOL[dtype], f"grad {name}")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("backend", backend_params())
def test_valid_len_zero_one_and_full(backend, kind):
    """valid_len = 0: uniform weights 1/S, context = mean of the values, no gradient to query/keys/w_q/v; 1: all
    weight on position 0; S: every position. Positions past valid_len are never read (NaN there changes
    nothing)."""
    dev = device_for(backend)
    S = 6
    tensors, vl = _inputs(3, S, 4, 5, 3, dtype=torch.float32, device=dev, valid_len=[0, 1, S], kind=kind)
    ctx, w, grads = _run(backend, tensors, vl)
    values = tensors[2]
    torch.testing.assert_close(w[0], torch.full((S,), 1.0 / S, device=dev))
    torch.testing.assert_close(ctx[0], values[0].mean(0))
    torch.testing.assert_close(w[1], torch.eye(S, device=dev)[0])
    torch.testing.assert_close(ctx[1], values[1, 0])
    assert torch.equal(grads[0][0], torch.zeros_like(grads[0][0]))  # query of the empty row
    assert torch.equal(grads[1][0], torch.zeros_like(grads[1][0]))  # keys of the empty row
    assert torch.equal(grads[1][1, 1:], torch.zeros_like(grads[1][1, 1:]))
    # NaN past valid_len: never read
    k2, v2 = tensors[1].clone(), values.clone()
    k2[1, 1:] = float("nan")
    v2[1, 1:] = float("nan")
    ctx2, w2, _ = _run(backend, [tensors[0], k2, v2, *tensors[3:]], torch.tensor([1, 1, 1], device=dev))
    assert torch.isfinite(ctx2[1]).all() and torch.isfinite(w2[1]).all()


# ------------------------------------------------------------------------------ grouped source rows (N = R*B)
# Beam search: R = K beams of a sentence share its keys, values and valid_len (query row n attends source row
# n // R); the source tensors' gradients are the sums over the R query rows.

GROUPED_SHAPES = [(1, 1, 1, 1, 1), (3, 17, 3, 5, 7), (17, 3, 17, 1, 3), (3, 1, 5, 3, 1)]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("R", [1, 2, 4, 5])
@pytest.mark.parametrize("shape", GROUPED_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_grouped_rows_match_reference(backend, dtype, R, shape, kind):
    dev = device_for(backend)
    if backend == "triton" and dev.type == "cpu" and R * shape[0] > 20 and dtype != torch.float32:
        pytest.skip("the interpreter runs one program at a time: N > 20 in float32 only")
    tensors, vl = _inputs(*shape, dtype=dtype, device=dev, seed=sum(shape) + R, R=R, kind=kind)
    assert int(vl.min()) == (0 if shape[0] > 1 else shape[1]) and int(vl.max()) == shape[1]
    ctx, w, grads = _run(backend, tensors, vl)
    rctx, rw, rgrads = _ref(tensors, vl)
    assert ctx.shape == (R * shape[0], shape[4]) and w.shape == (R * shape[0], shape[1])
    assert_close(ctx, rctx, VALUE_TOL[dtype], "context")
    assert_close(w, rw, VALUE_TOL[dtype], "weights")
    for name, g, r in zip(NAMES, grads, rgrads):
        assert g.dtype == dtype and g.shape == r.shape
        assert_close(g, r, GRAD_TOL[dtype], f"grad {name}")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("R", [1, 2, 4, 5])
@pytest.mark.parametrize("shape", GROUPED_SHAPES + [(4, 6, 3, 2, 5)], ids=lambda s: "x".join(map(str, s)))
def test_grouped_reference_is_the_op_on_repeated_source_rows(R, shape, kind):
    """The reference's grouped result is the ungrouped one on keys, values and valid_len repeated R times per row
    (repeat_interleave); its keys' and values' gradients are the repeated rows' gradients summed over each group."""
    tensors, vl = _inputs(*shape, seed=R, R=R, kind=kind)
    B = shape[0]
    ctx, w, grads = _run("reference", tensors, vl)
    q, k, vals, *params = tensors
    rep = [q, k.repeat_interleave(R, 0), vals.repeat_interleave(R, 0), *params]
    ctx1, w1, grads1 = _run("reference", rep, vl.repeat_interleave(R))
    assert_close(ctx, ctx1, 1e-12, "context")
    assert_close(w, w1, 1e-12, "weights")
    for i, (name, g, g1) in enumerate(zip(NAMES, grads, grads1)):
        if i in (1, 2):
            g1 = g1.view(B, R, *g1.shape[1:]).sum(1)
        assert_close(g, g1, 1e-12, f"grad {name}")


# ------------------------------------------------------------------------------------ gradcheck / opcheck


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("R", [1, 3])
def test_gradcheck_and_gradgradcheck_fp64(backend, R, kind):
    dev = device_for(backend)
    tensors, vl = _inputs(3, 4, 3, 2, 5, device=dev, seed=3, R=R, kind=kind)
    xs = [t.clone().requires_grad_() for t in tensors]

    def f(*x):
        return _attention(tensors)(*x, vl, backend=backend)

    assert torch.autograd.gradcheck(f, xs)
    assert torch.autograd.gradgradcheck(f, xs)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("backend", backend_params())
def test_opcheck(backend, kind):
    dev = device_for(backend)
    suffix = "_triton" if backend == "triton" else ""
    fwd = getattr(ops, f"{kind}_attention_forward" + suffix)
    bwd = getattr(ops, f"{kind}_attention_backward" + suffix)
    for shape, R in (((3, 4, 3, 2, 5), 1), ((1, 1, 2, 1, 1), 1), ((3, 4, 3, 2, 5), 4), ((2, 3, 5, 1, 3), 3)):
        tensors, vl = _inputs(*shape, dtype=torch.float32, device=dev, R=R, kind=kind)
        for rg in (False, True):
            torch.library.opcheck(fwd, [t.clone().requires_grad_(rg) for t in tensors] + [vl])
        ctx, w, *qp = fwd(*tensors, vl)  # the additive op also returns query W_q^T, which its backward takes
        for gw in (torch.randn_like(w), None):
            torch.library.opcheck(bwd, [torch.randn_like(ctx), gw, *tensors, vl, *qp])


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("R", [1, 4])
def test_torch_compile_fullgraph(backend, R, kind):
    dev = device_for(backend)
    tensors, vl = _inputs(3, 5, 4, 6, 7, dtype=torch.float32, device=dev, seed=4, R=R, kind=kind)

    def f(*x):
        ctx, w = _attention(tensors)(*x, vl, backend=backend)
        return ctx.sum() + (w * w).sum()

    a1 = [t.clone().requires_grad_() for t in tensors]
    a2 = [t.clone().requires_grad_() for t in tensors]
    out = torch.compile(f, fullgraph=True, backend="aot_eager")(*a1)
    ref = f(*a2)
    assert_close(out, ref, 1e-6, "compiled")
    out.backward()
    ref.backward()
    for name, x, y in zip(NAMES, a1, a2):
        assert_close(x.grad, y.grad, 1e-6, f"compiled grad {name}")


# ----------------------------------------------------------------------------------- every CPU capability


@pytest.mark.parametrize("cap", CPU_CAPABILITIES)
def test_each_cpu_capability(cap):
    check_dtypes_on_cpu_capability(cap, """
        for S, H, Dv, G in ((1, 1, 1, 1), (3, 17, 33, 1), (17, 130, 7, 1), (3, 17, 33, 3), (17, 130, 7, 2)):
            shapes = ((4 * G, 5), (4, S, H), (4, S, Dv), (H, 5), (H,))  # G query rows per source row
            xs = [torch.randn(*s, dtype=torch.float64).to(dt) for s in shapes]
            vl = torch.tensor([S, 0, 1, max(S - 1, 0)])
            a = [x.clone().requires_grad_() for x in xs]; r = [x.double().requires_grad_() for x in xs]
            c, w = s2s_fused.additive_attention(*a, vl, backend='cpu')
            rc, rw = R.additive_attention(*r, vl)
            gc = torch.randn(rc.shape, dtype=torch.float64)
            (c * gc.to(dt)).sum().backward(); (rc * gc).sum().backward()
            names = ["context", "weights", "grad query", "grad keys", "grad values", "grad w_q", "grad v"]
            for name, o, ref in zip(names, [c, w] + [x.grad for x in a], [rc, rw] + [y.grad for y in r]):
                assert_close(o, ref, tol, f"{dt} S={S} H={H} Dv={Dv} G={G} {name}")
            # the dot score from the same kernels: query (4 G, H), keys, values
            xs = [torch.randn(4 * G, H, dtype=torch.float64).to(dt) / H ** 0.5] + [x.detach() for x in xs[1:3]]
            a = [x.clone().requires_grad_() for x in xs]; r = [x.double().clone().requires_grad_() for x in xs]
            c, w = s2s_fused.dot_attention(*a, vl, backend='cpu')
            rc, rw = R.dot_attention(*r, vl)
            (c * gc.to(dt)).sum().backward(); (rc * gc).sum().backward()
            for name, o, ref in zip(names, [c, w] + [x.grad for x in a], [rc, rw] + [y.grad for y in r]):
                assert_close(o, ref, tol, f"dot {dt} S={S} H={H} Dv={Dv} G={G} {name}")
    """)


# --------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("backend", ["cpu", "reference", pytest.param("triton", marks=TRITON_ON_CPU)])
def test_bad_input(backend):
    """Each argument of the public function: torch's exception type for the mistake, a message naming it."""
    (q, k, vals, w_q, v), vl = _inputs(2, 3, 4, 5, 6, dtype=torch.float32)

    def f(*a, **kw):
        return s2s_fused.additive_attention(*a, backend=backend, **kw)

    assert_raises(lambda: f(q.long(), k, vals, w_q, v, vl), TypeError, "query")
    assert_raises(lambda: f(q[0], k, vals, w_q, v, vl), ValueError, "query", "2-D")
    assert_raises(lambda: f([1.0], k, vals, w_q, v, vl), TypeError, "query", "torch.Tensor")
    assert_raises(lambda: f(q, k[0], vals, w_q, v, vl), ValueError, "keys", "3-D")
    assert_raises(lambda: f(q, k.double(), vals, w_q, v, vl), TypeError, "keys", "dtype")
    k3 = torch.cat([k, k[:1]])
    assert_raises(lambda: f(q, k3, vals, w_q, v, vl), ValueError, "keys", "N = R*B", "N = 2)", "[3, 3, 4]")
    assert_raises(lambda: f(q, k[:1], vals, w_q, v, vl), ValueError, "values", "(1, 3, 6)")  # keys: R = 2
    assert_raises(lambda: f(q, k[:, :0], vals[:, :0], w_q, v, vl), ValueError, "keys", "S >= 1")
    assert_raises(lambda: f(q, k, vals[:, :2], w_q, v, vl), ValueError, "values", "shape")
    assert_raises(lambda: f(q, k, vals.double(), w_q, v, vl), TypeError, "values", "dtype")
    assert_raises(lambda: f(q, k, vals, w_q[:, :2], v, vl), ValueError, "w_q", "shape")
    assert_raises(lambda: f(q, k, vals, w_q.t(), v, vl), ValueError, "w_q", "shape")
    assert_raises(lambda: f(q, k, vals, w_q, v[:2], vl), ValueError, "v", "shape")
    assert_raises(lambda: f(q, k, vals, w_q, v.half(), vl), TypeError, "v", "dtype")
    assert_raises(lambda: f(q, k, vals, w_q, v, vl.float()), TypeError, "valid_len", "integer")
    assert_raises(lambda: f(q, k, vals, w_q, v, vl[:1]), ValueError, "valid_len", "shape")
    assert_raises(lambda: f(q, k, vals, w_q, v, torch.tensor([4, 0])), ValueError, "valid_len", "[0, S=3]", "4")
    assert_raises(lambda: f(q, k, vals, w_q, v, torch.tensor([1, -1])), ValueError, "valid_len", "-1")
    f(q, k, vals, w_q, v, vl.int())  # any integer dtype


@pytest.mark.parametrize("backend", ["cpu", "reference", pytest.param("triton", marks=TRITON_ON_CPU)])
def test_dot_bad_input(backend):
    """Each argument of dot_attention: torch's exception type for the mistake, a message naming it."""
    (q, k, vals), vl = _inputs(2, 3, 4, 5, 6, dtype=torch.float32, kind="dot")

    def f(*a, **kw):
        return s2s_fused.dot_attention(*a, backend=backend, **kw)

    assert_raises(lambda: f(q.long(), k, vals, vl), TypeError, "query")
    assert_raises(lambda: f(q[0], k, vals, vl), ValueError, "query", "2-D")
    assert_raises(lambda: f(q, k[0], vals, vl), ValueError, "keys", "3-D")
    assert_raises(lambda: f(q, k.double(), vals, vl), TypeError, "keys", "dtype")
    assert_raises(lambda: f(q, k[..., :3], vals, vl), ValueError, "keys", "size 4 in dim 2", "(2, 3, 3)")
    assert_raises(lambda: f(q[:, :3], k, vals, vl), ValueError, "keys", "size 3 in dim 2", "(2, 3, 4)")
    assert_raises(lambda: f(q, torch.cat([k, k[:1]]), vals, vl), ValueError, "keys", "N = R*B", "N = 2)")
    assert_raises(lambda: f(q, k[:, :0], vals[:, :0], vl), ValueError, "keys", "S >= 1")
    assert_raises(lambda: f(q, k, vals[:, :2], vl), ValueError, "values", "shape")
    assert_raises(lambda: f(q, k, vals.double(), vl), TypeError, "values", "dtype")
    assert_raises(lambda: f(q, k, vals, vl.float()), TypeError, "valid_len", "integer")
    assert_raises(lambda: f(q, k, vals, vl[:1]), ValueError, "valid_len", "shape")
    assert_raises(lambda: f(q, k, vals, torch.tensor([4, 0])), ValueError, "valid_len", "[0, S=3]", "4")
    assert_raises(lambda: f(q, k, vals, torch.tensor([1, -1])), ValueError, "valid_len", "-1")
    f(q, k, vals, vl.int())  # any integer dtype


def _grouped_bad_rows(kind):
    """(case, args, argument blamed, words of the public function's message, of the ops'): query rows that are not
    R*B (R >= 1) for keys' B rows, and a valid_len with a row per query row instead of per source row."""
    (q, k, vals, *params), vl = _inputs(2, 3, 4, 5, 6, dtype=torch.float32, R=3, kind=kind)  # N = 6, B = 2
    empty = (k[:0], vals[:0], vl[:0])
    rows = ("N = R*B", "R >= 1")
    return [
        ("N%B", [q[:5], k, vals, *params, vl], "keys", rows + ("N = 5)", "[2, 3, 4]"), ()),
        ("N<B", [q[:1], k, vals, *params, vl], "keys", rows + ("N = 1)", "[2, 3, 4]"), ()),
        ("N=0<B", [q[:0], k, vals, *params, vl], "keys", rows + ("N = 0)", "[2, 3, 4]"), ()),
        ("B=0<N", [q, empty[0], empty[1], *params, empty[2]], "keys", rows + ("N = 6)", "[0, 3, 4]"), ()),
        ("valid_len-N-rows", [q, k, vals, *params, vl.repeat_interleave(3)], "valid_len", ("(2,)", "(6,)"),
         ("size 2", "[6]")),
        ("values-N-rows", [q, k, vals.repeat_interleave(3, 0), *params, vl], "values", ("(2, 3, 6)", "(6, 3, 6)"),
         ("size 2", "[6, 3, 6]")),
    ]


GROUPED_BAD = [(kind, *case) for kind in KINDS for case in _grouped_bad_rows(kind)]


@pytest.mark.parametrize("kind,case,args,arg,words,op_words", GROUPED_BAD, ids=[f"{c[0]}-{c[1]}" for c in GROUPED_BAD])
def test_grouped_bad_rows_every_entry_point(kind, case, args, arg, words, op_words):
    """The public function on every backend (ValueError) and each registered op, its Triton twin and its fake
    kernel (RuntimeError, one message) refuse query rows that are not R*B, R >= 1, before any kernel runs."""
    backends = ["reference", "cpu"] + (["triton"] if is_available("triton") and triton_interpret() else [])
    for be in backends:
        assert_raises(lambda: _attention(args[:-1])(*args, backend=be), ValueError, arg + ":", *words)
    suffixes = [""] + (["_triton"] if is_available("triton") and triton_interpret() else [])
    # the backward op with the bad arguments and incoming gradients shaped by the bad query (and the additive op's
    # query W_q^T)
    N = args[0].shape[0]
    bwd_args = [torch.zeros(N, 6), torch.zeros(N, 3), *args] + ([torch.zeros(N, 4)] if kind == "additive" else [])
    messages = set()
    for suffix in suffixes:
        for name, call_args in ((f"{kind}_attention_forward", args), (f"{kind}_attention_backward", bwd_args)):
            op = getattr(ops, name + suffix)
            with pytest.raises(RuntimeError) as e:
                op(*call_args)
            msg = str(e.value).split("\n")[0]
            assert msg.startswith(arg + ":") and all(word in msg for word in op_words or words), msg
            messages.add((name, msg))
            with FakeTensorMode() as mode:
                fake = [mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in call_args]
                with pytest.raises(RuntimeError) as e:
                    op(*fake)
            messages.add((name, str(e.value).split("\n")[0]))
    assert len(messages) == 2, messages  # one message per op, whichever implementation raised it


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("suffix", ["", pytest.param("_triton", marks=TRITON_ON_CPU)])
def test_direct_op_calls_check_valid_len_values(suffix, kind):
    """Value checks the table of tests/test_op_checks.py (shapes and dtypes) does not make."""
    fwd = getattr(ops, f"{kind}_attention_forward" + suffix)
    bwd = getattr(ops, f"{kind}_attention_backward" + suffix)
    tensors, vl = _inputs(2, 3, 4, 5, 6, dtype=torch.float32, kind=kind)
    ctx, w, *qp = fwd(*tensors, vl)
    for bad in (4, -1):
        vb = torch.tensor([1, bad])
        with pytest.raises(RuntimeError, match=rf"^valid_len: expected values in \[0, S=3\], got {bad} at index 1"):
            fwd(*tensors, vb)
        with pytest.raises(RuntimeError, match=rf"^valid_len: expected values in \[0, S=3\], got {bad} at index 1"):
            bwd(ctx, w, *tensors, vb, *qp)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("output", ["context", "weights", "neither"])
def test_gradient_through_one_output(backend, output, kind):
    """An unused output's gradient reaches backward as None: the gradients are those of the output used, and a
    loss that uses neither (only through a detached path) gives no gradient at all."""
    dev = device_for(backend)
    tensors, vl = _inputs(3, 4, 5, 2, 6, device=dev, seed=9, kind=kind)
    grads = {}
    for be in (backend, "reference"):
        xs = [t.clone().requires_grad_() for t in tensors]
        ctx, w = _attention(tensors)(*xs, vl, backend=be)
        loss = {"context": ctx.sin().sum(), "weights": w.square().sum(), "neither": ctx.detach().sum() * xs[0].sum()}
        grads[be] = torch.autograd.grad(loss[output], xs, allow_unused=True)
    for name, g, r in zip(NAMES, grads[backend], grads["reference"]):
        if r is None:
            assert g is None or torch.count_nonzero(g) == 0, name
        else:
            assert_close(g, r, 1e-10, f"grad {name}")


def test_triton_attention_kernels_compile_for_gpu():
    """The Triton attention kernels in the configurations their launchers use (every dtype; S, H, Dv = 1 as
    constexprs; a 256-wide score tile), compiled for sm_90 down to cubin without a GPU: the interpreter accepts code
    the compiler rejects (tests/gpu_compile.py)."""
    from tests.gpu_compile import check_families
    check_families("attention")
