"""Masked softmax cross-entropy (and linear + cross-entropy): every backend against the float64 reference, which is
itself checked against torch.nn.functional.cross_entropy with the mask applied by hand."""
from __future__ import annotations


import pytest
import torch
import torch.nn.functional as F

import s2s_fused
from s2s_fused import reference
from tests.helpers import (ALL_DTYPES, CPU_CAPABILITIES, VALUE_TOL, assert_close, assert_raises, backend_params,
                           check_dtypes_on_cpu_capability, device_for)

REDUCTIONS = ("none", "sum", "mean", "per_sequence")
# Gradient tolerance (vs the float64 reference, relative to the largest gradient): fp32 and fp64 as the value
# tolerance of ARCHITECTURE.md; half precision: the gradient is rounded once to the dtype (rel. 2^-8 bf16, 2^-11
# fp16), and the reference runs on the same rounded logits.
GRAD_TOL = {torch.float64: 1e-10, torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 2e-3}


def _inputs(B, T, V, dtype, device, *, seed=0, mask_some=True, valid=True, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(B, T, V, generator=g, dtype=torch.float64) * scale).to(dtype).to(device)
    target = torch.randint(0, V, (B, T), generator=g).to(device)
    if mask_some and B * T > 1:
        target.view(-1)[1] = -100
    valid_len = None
    if valid:
        valid_len = torch.randint(0, T + 1, (B,), generator=g)
        valid_len[0] = T
        if B > 2:
            valid_len[-1] = 0
        valid_len = valid_len.to(device)
    return logits, target, valid_len


def _run(backend, logits, target, valid_len, reduction, ls=0.0, grad=None, ignore_index=-100):
    x = logits.detach().clone().requires_grad_()
    out = s2s_fused.masked_softmax_cross_entropy(x, target, valid_len, ignore_index=ignore_index,
                                                 label_smoothing=ls, reduction=reduction, backend=backend)
    if grad is None:
        grad = torch.randn(out.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    out.backward(grad.to(out.dtype).to(out.device))
    return out, x.grad


def _ref(logits, target, valid_len, reduction, ls=0.0, grad=None, ignore_index=-100):
    x = logits.detach().cpu().double().requires_grad_()
    out = reference.masked_softmax_cross_entropy(x, target.cpu(), None if valid_len is None else valid_len.cpu(),
                                                 ignore_index, ls, reduction)
    if grad is None:
        grad = torch.randn(out.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    out.backward(grad)
    return out, x.grad


# ---------------------------------------------------------------------------------------------- reference


@pytest.mark.parametrize("ls", [0.0, 0.2])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_reference_matches_torch_cross_entropy_with_mask(reduction, ls):
    logits, target, valid_len = _inputs(4, 6, 11, torch.float64, "cpu")
    mask = (torch.arange(6) < valid_len[:, None]) & (target != -100)
    per_tok = F.cross_entropy(logits.permute(0, 2, 1), target, reduction="none", label_smoothing=ls) * mask
    want = {"none": per_tok, "sum": per_tok.sum(), "mean": per_tok.sum() / mask.sum(),
            "per_sequence": per_tok.mean(1)}[reduction]
    got = reference.masked_softmax_cross_entropy(logits, target, valid_len, -100, ls, reduction)
    assert_close(got, want, 1e-12, reduction)


# ----------------------------------------------------------------------------------------- every backend


def _v_list(backend):
    # The Triton interpreter is slow: keep its rows short.
    return (1, 7, 130) if backend == "triton" else (1, 2, 7, 1000, 32003)


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=str)
def test_forward_backward_matches_reference(backend, dtype):
    dev = device_for(backend)
    for V in _v_list(backend):
        B, T = (3, 5) if V < 30000 else (2, 3)
        logits, target, valid_len = _inputs(B, T, V, dtype, dev, seed=V)
        # The reductions are O(N) torch ops around one kernel pair: every reduction once, the mask and smoothing
        # variants on "none" (whose incoming gradient is non-uniform).
        cases = [(r, 0.1, valid_len) for r in REDUCTIONS] + [("none", 0.0, valid_len), ("none", 0.0, None),
                                                             ("mean", 0.1, None)]
        if backend == "triton":  # the interpreter is slow
            cases = cases[:1] + cases[3:5]
        for reduction, ls, vl in cases:
            what = f"V={V} {reduction} ls={ls} valid_len={vl is not None}"
            out, g = _run(backend, logits, target, vl, reduction, ls)
            ref, ref_g = _ref(logits, target, vl, reduction, ls)
            assert out.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
            assert g.dtype == dtype and g.shape == logits.shape
            assert_close(out, ref, VALUE_TOL[dtype], what + " loss")
            assert_close(g, ref_g, GRAD_TOL[dtype], what + " grad")


@pytest.mark.parametrize("backend", backend_params())
def test_two_dim_logits_and_ignore_index(backend):
    dev = device_for(backend)
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(17, 33, generator=g, dtype=torch.float64).to(dev)
    target = torch.randint(0, 33, (17,), generator=g).to(dev)
    target[3] = 5
    for ignore_index in (-100, 5, 0):
        for reduction in ("none", "sum", "mean"):
            out, grad = _run(backend, logits, target, None, reduction, 0.1, ignore_index=ignore_index)
            ref, ref_g = _ref(logits, target, None, reduction, 0.1, ignore_index=ignore_index)
            assert_close(out, ref, 1e-10, f"{ignore_index} {reduction}")
            assert_close(grad, ref_g, 1e-10, f"{ignore_index} {reduction} grad")
            masked = (target == ignore_index).cpu()
            assert (grad.cpu()[masked] == 0).all()


@pytest.mark.parametrize("backend", backend_params())
def test_non_contiguous_logits_and_stride0_grad(backend):
    dev = device_for(backend)
    base = torch.randn(5, 9, 2 * 21, dtype=torch.float64).to(dev)
    # (B, T, V) views: every other class (class stride 2), and time-major storage transposed to batch-first.
    views = {"class-strided": base[:, :, ::2], "transposed": base[:, :, :21].transpose(0, 1).contiguous()
             .transpose(0, 1), "sliced-rows": base[:, 1:8, 3:24]}
    target = torch.randint(0, 21, (5, 9)).to(dev)
    valid_len = torch.tensor([9, 4, 0, 1, 7]).to(dev)
    for name, logits in views.items():
        T = logits.shape[1]
        tg, vl = target[:, :T].clone(), valid_len.clamp(max=T)
        # stride-0 incoming gradient, as from .sum().backward()
        x = logits.detach().requires_grad_()  # the strided view itself
        out = s2s_fused.masked_softmax_cross_entropy(x, tg, vl, reduction="none", backend=backend)
        grad = torch.ones((), dtype=out.dtype, device=dev).expand(out.shape)
        assert grad.stride() == (0, 0)
        out.backward(grad)
        ref, ref_g = _ref(logits, tg, vl, "none", grad=grad.cpu().double())
        assert_close(out, ref, 1e-10, name)
        assert_close(x.grad, ref_g, 1e-10, name + " grad")
        # an expanded per-sequence gradient (strides (1, 0))
        x.grad = None
        out = s2s_fused.masked_softmax_cross_entropy(x, tg, vl, reduction="none", backend=backend)
        gseq = torch.arange(1.0, 6.0, dtype=out.dtype, device=dev)[:, None].expand(out.shape)
        out.backward(gseq)
        _, ref_g = _ref(logits, tg, vl, "none", grad=gseq.cpu().double())
        assert_close(x.grad, ref_g, 1e-10, name + " per-sequence grad")


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_all_masked_gives_zero_not_nan(backend, reduction):
    dev = device_for(backend)
    # Masked rows hold NaN: they must never be read.
    logits = torch.full((3, 4, 7), float("nan"), dtype=torch.float32, device=dev)
    target = torch.randint(0, 7, (3, 4), device=dev)
    x = logits.clone().requires_grad_()
    out = s2s_fused.masked_softmax_cross_entropy(x, target, torch.zeros(3, dtype=torch.long, device=dev),
                                                 reduction=reduction, backend=backend)
    assert torch.equal(out.cpu(), torch.zeros(out.shape))
    out.sum().backward()
    assert torch.equal(x.grad.cpu(), torch.zeros(3, 4, 7))


@pytest.mark.parametrize("backend", backend_params())
def test_masked_rows_are_never_read_and_outputs_fully_written(backend):
    dev = device_for(backend)
    logits, target, valid_len = _inputs(4, 6, 13, torch.float32, dev, seed=3)
    mask = reference.ce_mask(target, valid_len)
    # NaN in every masked position and an out-of-range target there too: neither may leak.
    poisoned = logits.masked_fill(~mask.unsqueeze(-1), float("nan"))
    target = target.masked_fill(~mask & (target != -100), 10**6)
    out, grad = _run(backend, poisoned, target, valid_len, "none")
    ref, ref_g = _ref(logits, target.masked_fill(target == 10**6, 0), valid_len, "none")
    assert torch.isfinite(out).all() and torch.isfinite(grad).all()
    assert_close(out, ref, 1e-5, "loss")
    assert_close(grad, ref_g, 1e-5, "grad")


@pytest.mark.parametrize("backend", backend_params())
def test_valid_len_zero_and_full_and_empty_batch(backend):
    dev = device_for(backend)
    logits, target, _ = _inputs(3, 4, 9, torch.float64, dev, mask_some=False, valid=False)
    for vl in ([0, 0, 0], [4, 4, 4], [0, 4, 2]):
        vl = torch.tensor(vl, device=dev)
        for reduction in REDUCTIONS:
            out, g = _run(backend, logits, target, vl, reduction)
            ref, ref_g = _ref(logits, target, vl, reduction)
            assert_close(out, ref, 1e-10, f"{vl.tolist()} {reduction}")
            assert_close(g, ref_g, 1e-10, f"{vl.tolist()} {reduction} grad")
    empty = torch.randn(0, 4, 9, dtype=torch.float64, device=dev, requires_grad=True)
    out = s2s_fused.masked_softmax_cross_entropy(empty, target[:0], torch.zeros(0, dtype=torch.long, device=dev),
                                                 backend=backend)
    assert out.item() == 0.0
    out.backward()
    assert empty.grad.shape == empty.shape


# -------------------------------------------------------------------------------------------- d2l module


def test_d2l_module_on_d2ls_example():
    # d2l's own check (chapter seq2seq): 3 sequences of 4 steps over 10 classes, valid lengths 4, 2, 0.
    from s2s_fused.nn import MaskedSoftmaxCELoss
    loss = MaskedSoftmaxCELoss()
    assert isinstance(loss, torch.nn.CrossEntropyLoss)
    out = loss(torch.ones(3, 4, 10), torch.ones((3, 4), dtype=torch.long), torch.tensor([4, 2, 0]))
    assert torch.allclose(out, torch.tensor([2.3026, 1.1513, 0.0]), atol=1e-4)


def test_d2l_module_matches_d2l_formula_and_training_backward():
    from s2s_fused.nn import MaskedSoftmaxCELoss

    pred, label, valid_len = _inputs(4, 9, 50, torch.float32, "cpu", mask_some=False)
    x1 = pred.clone().requires_grad_()
    x2 = pred.clone().requires_grad_()
    # d2l: weights = sequence_mask(ones_like(label), valid_len); CE(pred.permute(0, 2, 1), label) * weights
    weights = (torch.arange(9) < valid_len[:, None]).float()
    d2l = (F.cross_entropy(x2.permute(0, 2, 1), label, reduction="none") * weights).mean(dim=1)
    ours = MaskedSoftmaxCELoss()(x1, label, valid_len)
    assert_close(ours, d2l, 1e-5, "loss")
    ours.sum().backward()
    d2l.sum().backward()
    assert_close(x1.grad, x2.grad, 1e-5, "grad")


# ------------------------------------------------------------------------------------ gradcheck / opcheck


@pytest.mark.parametrize("backend", backend_params())
def test_gradcheck_fp64(backend):
    dev = device_for(backend)
    logits, target, valid_len = _inputs(2, 3, 5, torch.float64, dev, seed=7)
    cases = (("none", 0.0), ("mean", 0.3), ("per_sequence", 0.1))
    for reduction, ls in (cases if backend != "triton" else cases[1:2]):
        x = logits.clone().requires_grad_()

        def f(z):
            return s2s_fused.masked_softmax_cross_entropy(z, target, valid_len, label_smoothing=ls,
                                                          reduction=reduction, backend=backend)

        assert torch.autograd.gradcheck(f, (x,))
        assert torch.autograd.gradgradcheck(f, (x,))


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("reduction", ["none", "sum", "mean", "per_sequence"])
def test_linear_gradcheck_and_gradgradcheck_fp64(backend, reduction):
    """Every reduction: "sum"/"mean" with gradients take the forward-computes-the-gradients op, the others the
    chunked recompute op; both differentiable twice."""
    dev = device_for(backend)
    g = torch.Generator().manual_seed(8)
    h, w, b = (torch.randn(*s, generator=g, dtype=torch.float64).to(dev).requires_grad_()
               for s in ((2, 3, 4), (5, 4), (5,)))
    t = torch.tensor([[1, 2, -100], [0, 4, 3]], device=dev)
    vl = torch.tensor([3, 2], device=dev)

    def f(h, w, b):
        return s2s_fused.linear_masked_cross_entropy(h, w, t, vl, bias=b, label_smoothing=0.1, reduction=reduction,
                                                     chunk_size=2, backend=backend)

    fast = backend == "triton" and not torch.cuda.is_available()
    assert torch.autograd.gradcheck(f, (h, w, b), fast_mode=fast)
    assert torch.autograd.gradgradcheck(f, (h, w, b), fast_mode=fast)


def _sample_ops_args(dev):
    logits, target, valid_len = _inputs(2, 3, 6, torch.float32, dev, seed=11)
    two_d = torch.randn(5, 4, device=dev)
    return [(logits, target, valid_len, -100, 0.0), (logits, target.clamp_min(0), None, 2, 0.25),
            (two_d, torch.tensor([0, 3, -100, 1, 2], device=dev), None, -100, 0.1)]


@pytest.mark.parametrize("backend", backend_params())
def test_opcheck(backend):
    dev = device_for(backend)
    suffix = "_triton" if backend == "triton" else ""
    fwd = getattr(torch.ops.s2s_fused, "masked_ce_forward" + suffix)
    bwd = getattr(torch.ops.s2s_fused, "masked_ce_backward" + suffix)
    for args in _sample_ops_args(dev):
        for rg in (False, True):
            a = (args[0].clone().requires_grad_(rg),) + args[1:]
            torch.library.opcheck(fwd, a)
        loss, lse = fwd(*args)
        torch.library.opcheck(bwd, (torch.randn_like(loss), args[0], args[1], args[2], lse, args[3], args[4]))


def test_opcheck_linear_ops():
    from s2s_fused.ops import linear_cross_entropy as ce

    h = torch.randn(7, 4)
    w = torch.randn(9, 4)
    b = torch.randn(9)
    t = torch.tensor([0, 8, -100, 3, 3, 1, 2])
    for bias in (b, None):
        for rg in (False, True):
            args = (h.clone().requires_grad_(rg), w.clone().requires_grad_(rg), bias, t, -100, 0.1, 3, "cpu")
            torch.library.opcheck(ce.linear_masked_ce_forward, args)
        loss, lse = ce.linear_masked_ce_forward(h, w, bias, t, -100, 0.1, 3, "cpu")
        torch.library.opcheck(ce.linear_masked_ce_backward,
                              (torch.randn(7), h, w, bias, t, lse, -100, 0.1, 3, "cpu"))
        for rg in (False, True):
            args = (h.clone().requires_grad_(rg), w.clone().requires_grad_(rg), bias, t, torch.tensor(0.25), -100,
                    0.1, 3, "cpu")
            torch.library.opcheck(ce.linear_masked_ce_forward_with_grad, args)


@pytest.mark.parametrize("backend", backend_params())
def test_torch_compile_fullgraph(backend):
    dev = device_for(backend)
    logits, target, valid_len = _inputs(3, 4, 10, torch.float32, dev, seed=2)

    def f(x, t, v):
        return s2s_fused.masked_softmax_cross_entropy(x, t, v, label_smoothing=0.1, reduction="mean",
                                                      backend=backend)

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    x1 = logits.clone().requires_grad_()
    x2 = logits.clone().requires_grad_()
    out = compiled(x1, target, valid_len)
    ref = f(x2, target, valid_len)
    assert_close(out, ref, 1e-6, "compiled loss")
    out.backward()
    ref.backward()
    assert_close(x1.grad, x2.grad, 1e-6, "compiled grad")


@pytest.mark.parametrize("reduction", ["per_sequence", "mean"])
def test_torch_compile_fullgraph_linear(reduction):
    h, w, b = torch.randn(3, 4, 8), torch.randn(11, 8), torch.randn(11)
    t = torch.randint(0, 11, (3, 4))
    vl = torch.tensor([4, 1, 2])

    def f(h, w, b):
        return s2s_fused.linear_masked_cross_entropy(h, w, t, vl, bias=b, reduction=reduction, chunk_size=5,
                                                    backend="cpu")

    args1 = [a.clone().requires_grad_() for a in (h, w, b)]
    args2 = [a.clone().requires_grad_() for a in (h, w, b)]
    out = torch.compile(f, fullgraph=True, backend="aot_eager")(*args1)
    ref = f(*args2)
    assert_close(out, ref, 1e-6, "loss")
    out.sum().backward()
    ref.sum().backward()
    for a, r in zip(args1, args2):
        assert_close(a.grad, r.grad, 1e-6, "grad")


# ----------------------------------------------------------------------------------- every CPU capability


@pytest.mark.parametrize("cap", CPU_CAPABILITIES)
def test_each_cpu_capability(cap):
    check_dtypes_on_cpu_capability(cap, """
        for V in (1, 7, 17, 130, 257, 3001):
            x = (torch.randn(3, 5, V) * 3).to(dt).requires_grad_(); t = torch.randint(0, V, (3, 5))
            vl = torch.tensor([5, 2, 0])
            out = s2s_fused.masked_softmax_cross_entropy(x, t, vl, label_smoothing=0.1, reduction='none',
                                                         backend='cpu')
            g = torch.randn(3, 5); out.backward(g.to(out.dtype))
            xr = x.detach().double().requires_grad_()
            ref = R.masked_softmax_cross_entropy(xr, t, vl, -100, 0.1, 'none'); ref.backward(g.double())
            assert_close(out, ref, tol, f"{dt} V={V} loss")
            assert_close(x.grad, xr.grad, tol, f"{dt} V={V} grad")
    """)


# --------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_bad_input(backend):
    ce = s2s_fused.masked_softmax_cross_entropy
    x = torch.randn(2, 3, 5)
    t = torch.randint(0, 5, (2, 3))
    vl = torch.tensor([3, 1])
    kw = dict(backend=backend)
    assert_raises(lambda: ce(x, t.float(), **kw), TypeError, "target", "integer")
    assert_raises(lambda: ce(x, t[:, :2], **kw), ValueError, "target", "shape")
    assert_raises(lambda: ce(x.long(), t, **kw), TypeError, "logits")
    assert_raises(lambda: ce(x[0, 0], t[0, 0], **kw), ValueError, "logits", "2-D or 3-D")
    assert_raises(lambda: ce(x[0], t[0], torch.tensor([1]), **kw), ValueError, "valid_len", "3-D")
    assert_raises(lambda: ce(x, t, torch.tensor([3]), **kw), ValueError, "valid_len", "shape")
    assert_raises(lambda: ce(x, t, vl.float(), **kw), TypeError, "valid_len")
    assert_raises(lambda: ce(x, t, reduction="avg", **kw), ValueError, "reduction", "avg")
    assert_raises(lambda: ce(x[0], t[0], reduction="per_sequence", **kw), ValueError, "per_sequence")
    assert_raises(lambda: ce(x, t, label_smoothing=1.5, **kw), ValueError, "label_smoothing")
    assert_raises(lambda: ce(x, t, label_smoothing=-0.1, **kw), ValueError, "label_smoothing")
    assert_raises(lambda: ce(x, t, ignore_index=1.0, **kw), TypeError, "ignore_index")
    assert_raises(lambda: ce(torch.randn(2, 3, 0), t, **kw), ValueError, "class")
    exc = RuntimeError if backend == "cpu" else ValueError
    for bad_t in (5, -1, 10**12):
        tt = t.clone()
        tt[1, 0] = bad_t
        assert_raises(lambda: ce(x, tt, vl, **kw), exc, "target", str(bad_t))
    tt = t.clone()
    tt[1, 2] = 99  # beyond valid_len[1] = 1: masked, never read, no error
    ce(x, tt, vl, **kw)
    assert_raises(lambda: ce(x, t, torch.tensor([3, -1]), **kw), exc, "valid_len", "-1")
    assert_raises(lambda: ce(x, t, torch.tensor([4, 1]), **kw), exc, "valid_len", "4")


def test_bad_input_direct_op_calls():
    ops = torch.ops.s2s_fused
    x = torch.randn(2, 3, 5)
    t = torch.randint(0, 5, (2, 3))
    assert_raises(lambda: ops.masked_ce_forward(x, t.int(), None, -100, 0.0), RuntimeError, "target", "int64")
    assert_raises(lambda: ops.masked_ce_forward(x, t[:, :1], None, -100, 0.0), RuntimeError, "target", "shape")
    assert_raises(lambda: ops.masked_ce_forward(x[0], t[0], torch.tensor([1]), -100, 0.0), RuntimeError, "valid_len")
    assert_raises(lambda: ops.masked_ce_forward(x, t, None, -100, 2.0), RuntimeError, "label_smoothing")
    loss, lse = ops.masked_ce_forward(x, t, None, -100, 0.0)
    assert_raises(lambda: ops.masked_ce_backward(loss.double(), x, t, None, lse, -100, 0.0), RuntimeError, "grad_loss")
    assert_raises(lambda: ops.masked_ce_backward(loss, x, t, None, lse[:1], -100, 0.0), RuntimeError, "lse")


def test_linear_bad_input():
    f = s2s_fused.linear_masked_cross_entropy
    h, w, t = torch.randn(4, 3), torch.randn(6, 3), torch.randint(0, 6, (4,))
    assert_raises(lambda: f(h, torch.randn(6, 2), t), ValueError, "weight")
    assert_raises(lambda: f(h, w.double(), t), TypeError, "weight")
    assert_raises(lambda: f(h, w, t, bias=torch.randn(5)), ValueError, "bias")
    assert_raises(lambda: f(h, w, t, chunk_size=0), ValueError, "chunk_size")
    tt = t.clone()
    tt[2] = 6
    assert_raises(lambda: f(h, w, tt), RuntimeError, "target", "6")


# --------------------------------------------------------------------------------------- linear variant


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=str)
def test_linear_matches_reference(backend, dtype):
    dev = device_for(backend)
    B, T, H, V = 3, 5, 8, 37
    g = torch.Generator().manual_seed(4)
    h = torch.randn(B, T, H, generator=g, dtype=torch.float64).to(dtype).to(dev)
    w = (torch.randn(V, H, generator=g, dtype=torch.float64) / 2).to(dtype).to(dev)
    b = torch.randn(V, generator=g, dtype=torch.float64).to(dtype).to(dev)
    t = torch.randint(0, V, (B, T), generator=g).to(dev)
    t[1, 1] = -100
    vl = torch.tensor([5, 3, 0], device=dev)
    tol = {torch.float64: 1e-10, torch.float32: 1e-5, torch.bfloat16: 2e-2}[dtype]
    for bias in (b, None):
        # "sum" / "mean" with gradients take the gradients-in-forward path; the others recompute in backward.
        for reduction, ls, chunk in (("mean", 0.0, 4), ("per_sequence", 0.1, 1), ("none", 0.0, None),
                                     ("sum", 0.2, 100), ("mean", 0.1, None)):
            args = [a.detach().clone().requires_grad_() for a in (h, w)] + \
                [bias.detach().clone().requires_grad_() if bias is not None else None]
            out = s2s_fused.linear_masked_cross_entropy(args[0], args[1], t, vl, bias=args[2], label_smoothing=ls,
                                                        reduction=reduction, chunk_size=chunk, backend=backend)
            gout = torch.randn(out.shape, generator=g, dtype=torch.float64)
            out.backward(gout.to(out.dtype).to(dev))
            refs = [a.detach().cpu().double().requires_grad_() for a in (h, w)] + \
                [bias.detach().cpu().double().requires_grad_() if bias is not None else None]
            ref = reference.linear_masked_cross_entropy(refs[0], refs[1], t.cpu(), vl.cpu(), refs[2], -100, ls,
                                                        reduction)
            ref.backward(gout)
            what = f"bias={bias is not None} {reduction} ls={ls} chunk={chunk}"
            assert_close(out, ref, tol, what)
            for name, a, r in zip(("hidden", "weight", "bias"), args, refs):
                if a is not None:
                    assert a.grad.dtype == dtype
                    assert_close(a.grad, r.grad, tol, f"{what} grad {name}")


@pytest.mark.skipif(not hasattr(F, "linear_cross_entropy"), reason="torch has no F.linear_cross_entropy")
def test_linear_matches_torch_linear_cross_entropy():
    h, w = torch.randn(40, 16, dtype=torch.float64), torch.randn(300, 16, dtype=torch.float64)
    t = torch.randint(0, 300, (40,))
    t[5] = -100
    ours = s2s_fused.linear_masked_cross_entropy(h, w, t, label_smoothing=0.1, chunk_size=7, backend="cpu")
    theirs = F.linear_cross_entropy(h, w, t, label_smoothing=0.1)
    assert_close(ours, theirs, 1e-10, "vs F.linear_cross_entropy")


# ------------------------------------------------------------------------------------------- GPU-only


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_gpu_out_of_range_target_writes_nan_without_crashing(backend):
    x = torch.randn(2, 3, 5, device="cuda", requires_grad=True)
    t = torch.randint(0, 5, (2, 3), device="cuda")
    t[1, 0] = 7
    out = s2s_fused.masked_softmax_cross_entropy(x, t, reduction="none", backend=backend)
    out.sum().backward()
    torch.cuda.synchronize()
    assert torch.isnan(out[1, 0]) and torch.isfinite(out[0]).all()
    assert torch.isnan(x.grad[1, 0]).all() and torch.isfinite(x.grad[0]).all()
    out = s2s_fused.masked_softmax_cross_entropy(x.detach(), torch.randint(0, 5, (2, 3), device="cuda"),
                                                 torch.tensor([4, 1], device="cuda"), reduction="none",
                                                 backend=backend)
    assert torch.isnan(out[0]).all() and torch.isfinite(out[1]).all()


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_gpu_large_shapes(backend):
    for dtype in (torch.float32, torch.bfloat16):
        logits, target, valid_len = _inputs(8, 64, 32000, dtype, "cuda", seed=9)
        out, g = _run(backend, logits, target, valid_len, "mean", 0.1)
        ref, ref_g = _ref(logits, target, valid_len, "mean", 0.1)
        assert_close(out, ref, VALUE_TOL[dtype], f"{dtype} loss")
        assert_close(g, ref_g, GRAD_TOL[dtype], f"{dtype} grad")


def test_linear_all_masked_and_no_grad_paths():
    h = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    w = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    t = torch.randint(0, 6, (2, 3))
    out = s2s_fused.linear_masked_cross_entropy(h, w, t, torch.zeros(2, dtype=torch.long), backend="cpu")
    assert out.item() == 0.0
    out.backward()
    assert torch.equal(h.grad, torch.zeros_like(h)) and torch.equal(w.grad, torch.zeros_like(w))
    vl = torch.tensor([3, 1])
    with_grad = s2s_fused.linear_masked_cross_entropy(h, w, t, vl, backend="cpu")
    with torch.no_grad():
        without = s2s_fused.linear_masked_cross_entropy(h, w, t, vl, backend="cpu")
    ref = reference.linear_masked_cross_entropy(h, w, t, vl)
    assert_close(with_grad, ref, 1e-12, "grad path")
    assert_close(without, ref, 1e-12, "no-grad path")


@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_linear_backward_fills_no_zero_gradients(reduction):
    """The linear + cross-entropy ops' outputs that get no gradient (lse; the precomputed gradients of the scalar
    reductions, V x H for the weight) reach backward as None, not as zero tensors autograd allocated and filled on
    every call; the gradients still match the reference."""
    from torch.utils._python_dispatch import TorchDispatchMode

    h = torch.randn(7, 5, dtype=torch.float64, requires_grad=True)
    w = torch.randn(13, 5, dtype=torch.float64, requires_grad=True)
    b = torch.randn(13, dtype=torch.float64, requires_grad=True)
    t = torch.randint(0, 13, (7,))
    fills = []

    class Spy(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, a=(), kw=None):
            if any(s in func.__name__ for s in ("zeros", "zero_", "fill_", "full")):
                fills.append(func.__name__)
            return func(*a, **(kw or {}))

    out = s2s_fused.linear_masked_cross_entropy(h, w, t, bias=b, reduction=reduction, backend="cpu")
    with Spy():
        got = torch.autograd.grad(out.sum(), (h, w, b))
    assert not fills, f"zero gradients materialized in backward: {fills}"
    ref = reference.linear_masked_cross_entropy(h, w, t, None, b, reduction=reduction)
    for g, r, name in zip(got, torch.autograd.grad(ref.sum(), (h, w, b)), ("hidden", "weight", "bias")):
        assert_close(g, r, 1e-12, name)


def test_triton_ce_kernels_compile_for_gpu():
    """The Triton cross-entropy forward / backward kernels, in the configurations their launchers use (dtypes,
    valid_len and label smoothing on and off, 2-D / 3-D logits, sizes of 1 as constexprs), compiled for sm_90 down
    to cubin without a GPU: the interpreter accepts code the compiler rejects (tests/gpu_compile.py)."""
    from tests.gpu_compile import check_families
    check_families("cross_entropy")
