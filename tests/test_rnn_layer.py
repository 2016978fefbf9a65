"""The rnn_layer ops (lstm_layer / gru_layer, one direction and both): each backend against the float64
reference, gradcheck and gradgradcheck, opcheck, odd strides and empty batches, argument errors, every CPU
capability's kernels, the Triton persistent program against its per-step kernels, and the two-direction ops
against two single-direction ones."""
from __future__ import annotations

import pytest
import torch

import s2s_fused
from s2s_fused import nn as snn
from s2s_fused.backend import is_available
from s2s_fused.ops.rnn_layer import gru_layer_bidir, lstm_layer_bidir
from tests.gpu_compile import check_families
from tests.helpers import (CPU_CAPABILITIES, assert_close, backend_params, device_for, make_cell_params, poison_heap,
                           rel_err, run_on_cpu_capability)
from tests.rnn_layer_helpers import bidir_args, bidir_both_ways, layer_call, op_args, persistent_spy


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=["bf16", "fp16", "fp32"])
@pytest.mark.parametrize("kind", ["lstm", "gru", "gru_rb"])
def test_repeated_on_poisoned_heap(kind, dtype):
    """A layer's buffers left unwritten show up as NaN only when the allocator hands back NaN-filled blocks, now
    and then (bf16 GRU reset_before gradients in 10-30 % of fresh runs on Intel AMX machines): 40 fresh calls of
    forward + backward, each after NaN blocks of every size the op allocates were freed, against the reference
    (in the same dtype for the tolerance, in fp64 for the truth)."""
    T, B, I, H = 6, 40, 19, 70
    G = 4 if kind == "lstm" else 3
    params = make_cell_params("lstm" if kind == "lstm" else "gru", I, H)
    g = torch.Generator().manual_seed(5)
    x = torch.randn(T, B, I, generator=g, dtype=torch.float64)
    h0 = torch.randn(B, H, generator=g, dtype=torch.float64)
    c0 = torch.randn(B, H, generator=g, dtype=torch.float64)
    gout = torch.randn(T, B, H, generator=g, dtype=torch.float64)

    def run(backend, dt):
        ts = [t.to(dt).requires_grad_() for t in (x, h0, c0, *params)]
        xx, hh, cc, w_ih, w_hh, b_ih, b_hh = ts
        if kind == "lstm":
            out, (h_n, c_n) = s2s_fused.lstm_layer(xx, (hh, cc), w_ih, w_hh, b_ih, b_hh, backend=backend)
            ts.pop(2)
        else:
            out, h_n = s2s_fused.gru_layer(xx, hh, w_ih, w_hh, b_ih, b_hh, reset_after=kind == "gru",
                                           backend=backend)
            del ts[2]
        loss = (out * gout.to(dt)).sum() + h_n.sum()
        return [out, h_n] + list(torch.autograd.grad(loss, ts))

    truth = run("reference", torch.float64)
    own_error = [rel_err(r, t) for r, t in zip(run("reference", dtype), truth)]
    for rep in range(40):
        for n in (B * H, B * G * H, T * B * H, (T + 1) * B * H, T * B * G * H, T * B * (G + 1) * H, G * H * H):
            poison_heap(n, dtype)
            poison_heap(n, torch.float32)
        for i, (o, t, e) in enumerate(zip(run("cpu", dtype), truth, own_error)):
            assert_close(o, t, max(2 * e, 1e-2 if dtype != torch.float32 else 1e-5), f"call {rep} result {i}")


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("lengths", [False, True])
@pytest.mark.parametrize("kind", ["lstm", "gru", "gru_rb"])
def test_gradcheck(kind, lengths, reverse):
    args = op_args(kind.split("_")[0], lengths=lengths, requires_grad=True)
    if kind == "lstm":
        def f(x, h, c, wi, wh, bi, bh):
            out, (hn, cn) = s2s_fused.lstm_layer(x, (h, c), wi, wh, bi, bh, lengths=args[-1], reverse=reverse,
                                                 backend="cpu")
            return out, hn, cn
    else:
        def f(x, h, wi, wh, bi, bh):
            return s2s_fused.gru_layer(x, h, wi, wh, bi, bh, lengths=args[-1], reverse=reverse,
                                       reset_after=kind == "gru", backend="cpu")
    assert torch.autograd.gradcheck(f, tuple(args[:-1]))
    assert torch.autograd.gradgradcheck(f, tuple(args[:-1]))


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_opcheck(kind):
    op = getattr(torch.ops.s2s_fused, f"{kind}_layer_forward")
    samples = []
    for rg in (False, True):
        for bias, lengths, reverse in ((True, True, False), (False, False, True)):
            args = op_args(kind, bias=bias, lengths=lengths, requires_grad=rg, dtype=torch.float32)
            extra = [reverse] if kind == "lstm" else [reverse, not reverse]
            samples.append(args + extra)
    for s in samples:
        torch.library.opcheck(op, tuple(s))
    for s in samples[:2]:  # the inference op: no autograd, no saved tensors
        torch.library.opcheck(getattr(torch.ops.s2s_fused, f"{kind}_layer_inference"), tuple(s))
    # the backward ops on their own
    args = op_args(kind, dtype=torch.float32)
    if kind == "lstm":
        out, hn, cn, hs, cs, ws = op(*args, False)
        torch.library.opcheck(torch.ops.s2s_fused.lstm_layer_backward,
                              (torch.randn_like(out), torch.randn_like(hn), None, args[0], args[3], args[4], hs, cs,
                               ws, args[-1], False))
    else:
        out, hn, hs, ws = op(*args, False, True)
        torch.library.opcheck(torch.ops.s2s_fused.gru_layer_backward,
                              (torch.randn_like(out), None, args[0], args[2], args[3], hs, ws, args[-1], False, True))


def test_non_contiguous_empty_and_stride0():
    args = op_args("lstm", T=5, B=3, I=4, H=5, lengths=False)
    x, h, c, wi, wh, bi, bh, _ = args
    xs = x.transpose(0, 1).contiguous().transpose(0, 1)  # same values, non-contiguous
    wis = wi.t().contiguous().t()
    out, (hn, cn) = s2s_fused.lstm_layer(xs, (h, c), wis, wh, bi, bh, backend="cpu")
    ref, (rh, rc) = s2s_fused.lstm_layer(x, (h, c), wi, wh, bi, bh, backend="reference")
    assert_close(out, ref, 1e-12, "non-contiguous")
    # empty batch
    e = s2s_fused.gru_layer(torch.zeros(4, 0, 3, dtype=torch.float64), torch.zeros(0, 2, dtype=torch.float64),
                            torch.randn(6, 3, dtype=torch.float64), torch.randn(6, 2, dtype=torch.float64),
                            backend="cpu")
    assert e[0].shape == (4, 0, 2) and e[1].shape == (0, 2)
    # stride-0 incoming gradient (out.sum()) through the module
    m = snn.GRU(4, 5, dtype=torch.float64)
    xg = x.clone().requires_grad_()
    m(xg)[0].sum().backward()
    assert torch.isfinite(xg.grad).all()


def test_bad_lengths_and_devices():
    x, h, wi, wh, bi, bh, _ = op_args("gru", T=4, B=3, lengths=False)
    for lens, msg in ((torch.tensor([4, 5, 1]), r"\[1, 4\]"), (torch.tensor([4, 0, 1]), r"\[1, 4\]"),
                      (torch.tensor([4, 1]), r"shape \(3,\)"), (torch.tensor([4.0, 1.0, 2.0]), "integer")):
        with pytest.raises((ValueError, TypeError), match=msg):
            s2s_fused.gru_layer(x, h, wi, wh, bi, bh, lengths=lens, backend="cpu")
    with pytest.raises(RuntimeError, match="device"):
        s2s_fused.gru_layer(x, h.to("meta"), wi, wh, bi, bh, backend="cpu")
    with pytest.raises(ValueError, match="w_hh"):
        s2s_fused.gru_layer(x, h, wi, wh[:, :2], bi, bh, backend="cpu")
    # direct op callers get the C++ checks
    with pytest.raises(RuntimeError, match="w_ih: expected shape"):
        torch.ops.s2s_fused.gru_layer_forward(x, h, wi[:, :1], wh, bi, bh, None, False, True)


_CAP_SCRIPT = """
import torch, s2s_fused
torch.set_num_threads(2)  # two threads: each runs the time loop of its own rows (packed path)
torch.manual_seed(0)
# H = 19: a partial panel at every SIMD width; H = 40: full and partial panels; B = 9: 4-, 2- and 1-row tiles;
# I = 0: an empty input projection; T = B = 1; B = 3 (and 1) with H = 70: the forward splits hidden units between
# the two threads (>= 4 panels, a partial last one) and they meet every step.
for kind, ra in (("lstm", True), ("gru", True), ("gru", False)):
    for (T, B, I, H) in ((7, 5, 3, 19), (4, 9, 6, 40), (5, 3, 0, 16), (1, 1, 2, 3), (6, 3, 5, 70), (3, 1, 4, 70)):
        G = 4 if kind == "lstm" else 3
        x = torch.randn(T, B, I, dtype=torch.float64)
        hx = [torch.randn(B, H, dtype=torch.float64) for _ in range(2 if kind == "lstm" else 1)]
        w = [torch.randn(G * H, I), torch.randn(G * H, H), torch.randn(G * H), torch.randn(G * H)]
        w = [(v * 0.3).double() for v in w]
        lens = torch.randint(1, T + 1, (B,))
        lens[0] = T
        f = getattr(s2s_fused, kind + "_layer")
        kw = dict(lengths=lens, reverse=True) | ({} if kind == "lstm" else dict(reset_after=ra))
        results = []
        for dtype, backend in ((torch.float32, "cpu"), (torch.float64, "reference")):
            leaves = [t.to(dtype).requires_grad_() for t in [x] + hx + w]
            hin = tuple(leaves[1:3]) if kind == "lstm" else leaves[1]
            out = f(leaves[0], hin, *leaves[-4:], backend=backend, **kw)
            flat = [out[0]] + (list(out[1]) if kind == "lstm" else [out[1]])
            sum(o.double().sin().sum() for o in flat).backward()
            results.append([o.detach().double() for o in flat] + [t.grad.double() for t in leaves])
        for i, (a, b) in enumerate(zip(*results)):
            assert a.shape == b.shape, (kind, ra, T, B, I, H, i)
            if b.numel() == 0:
                continue
            err = ((a - b).abs().max() / b.abs().max().clamp_min(1e-6)).item()
            assert err < 1e-4, (kind, ra, T, B, I, H, i, err)
        # inference (nothing kept for backward) gives the training forward's numbers exactly
        with torch.no_grad():
            leaves = [t.float() for t in [x] + hx + w]
            hin = tuple(leaves[1:3]) if kind == "lstm" else leaves[1]
            inf = f(leaves[0], hin, *leaves[-4:], backend="cpu", **kw)
        for a, b in zip([inf[0]] + (list(inf[1]) if kind == "lstm" else [inf[1]]), results[0]):
            assert torch.equal(a.double(), b), (kind, ra, T, B, I, H, "inference")
"""


@pytest.mark.parametrize("cap", [*CPU_CAPABILITIES, "avx512-blas", "avx512-nopacked"])
def test_each_cpu_capability(cap):
    """Each capability's kernels (pointwise, and the packed-weight recurrence of AVX2/AVX-512) against the fp64
    reference, outputs and every gradient. "blas": fp32 GEMMs through ATen's BLAS instead of oneDNN;
    "nopacked": the per-step ATen-GEMM loop instead of the packed recurrence."""
    switches = {"S2S_FUSED_NO_ONEDNN": "1", "S2S_FUSED_NO_PACKED": "1"} if cap.endswith("blas") else \
        {"S2S_FUSED_NO_PACKED": "1"} if cap.endswith("nopacked") else {}
    run_on_cpu_capability(cap.split("-")[0], _CAP_SCRIPT, **switches)


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("kind", ["lstm", "gru", "gru_rb"])
def test_matches_reference(kind, backend):
    """Outputs, final states and every gradient of a tiny layer, both directions, against the float64 reference."""
    base = kind.split("_")[0]
    args = op_args(base, T=3, B=2, I=3, H=5, lengths=True, requires_grad=True)
    lens = torch.tensor([3, 1])
    dev = device_for(backend)
    res = []
    for be in (backend, "reference"):
        leaves = [a.detach().to(dev, copy=True).requires_grad_() for a in args[:-1]]
        for reverse in (False, True):
            if base == "lstm":
                out, (hn, cn) = s2s_fused.lstm_layer(leaves[0], (leaves[1], leaves[2]), *leaves[3:], lengths=lens,
                                                     reverse=reverse, backend=be)
                outs = [out, hn, cn]
            else:
                out, hn = s2s_fused.gru_layer(leaves[0], leaves[1], *leaves[2:], lengths=lens, reverse=reverse,
                                              reset_after=kind == "gru", backend=be)
                outs = [out, hn]
            g = torch.Generator().manual_seed(int(reverse))
            loss = sum((o * torch.randn(o.shape, generator=g, dtype=o.dtype).to(dev)).sum() for o in outs)
            res.append([o.detach() for o in outs] + list(torch.autograd.grad(loss, leaves)))
    n = len(res) // 2
    for a_list, b_list in zip(res[:n], res[n:]):
        for a, b in zip(a_list, b_list):
            assert_close(a, b, 1e-9, f"{backend} {kind}")


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("kind", ["lstm", "gru", "gru_rb"])
def test_gradgradcheck(kind, backend):
    """Second-order gradients of a tiny layer in float64 (fast mode: a random projection, under the interpreter)."""
    base = kind.split("_")[0]
    dev = device_for(backend)
    args = [a.detach().to(dev).requires_grad_() if a is not None else None
            for a in op_args(base, T=2, B=2, I=2, H=2, lengths=True)[:-1]]
    lens = torch.tensor([2, 1])
    if base == "lstm":
        def f(x, h, c, *w):
            out, (hn, cn) = s2s_fused.lstm_layer(x, (h, c), *w, lengths=lens, reverse=True, backend=backend)
            return out, hn, cn
    else:
        def f(x, h, *w):
            return s2s_fused.gru_layer(x, h, *w, lengths=lens, reset_after=kind == "gru", backend=backend)
    assert torch.autograd.gradgradcheck(f, tuple(args), fast_mode=backend == "triton" and dev.type == "cpu")


@pytest.mark.skipif(not is_available("triton"), reason="triton not available")
@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_triton_opcheck_and_compile(kind):
    op = getattr(torch.ops.s2s_fused, f"{kind}_layer_forward_triton")
    dev = device_for("triton")
    args = op_args(kind, T=2, B=2, I=2, H=3, lengths=True, requires_grad=True, dtype=torch.float32)
    args = [a.detach().to(dev).requires_grad_(a.requires_grad) for a in args[:-1]] + args[-1:]
    extra = [True] if kind == "lstm" else [True, False]
    torch.library.opcheck(op, tuple(args + extra))
    m = getattr(snn, kind.upper())(2, 3, backend="triton").to(dev)
    x = torch.randn(3, 2, 2, device=dev)
    assert_close(torch.compile(m, fullgraph=True, backend="aot_eager")(x)[0], m(x)[0], 1e-6, "compiled triton")


# Triton's persistent program (one launch for a layer-direction's whole time loop, where use_persistent(B, H)
# allows) against its per-step kernels: each path is selected explicitly, and a spy on the persistent launcher
# checks which one ran.
_NO_PERSISTENT = "TRITON_NO_PERSISTENT"


# (T, B, I, H, lengths, reverse, bias, dtype): H = 1, 7 (one unit tile), 70 and 130 (2 and 3 tiles: a step reads
# h of units other threads wrote), B = 1, 3, 17 (17: two row blocks), lengths with 1 and T present.
PERSISTENT_CONFIGS = [
    (5, 3, 2, 7, [5, 1, 3], False, True, torch.float64),
    (4, 1, 3, 1, None, True, False, torch.float64),
    (3, 3, 2, 70, [1, 3, 2], True, True, torch.float64),
    (2, 17, 3, 130, [2, 1] + [1 + k % 2 for k in range(15)], True, True, torch.float32),
    (4, 3, 4, 70, [4, 2, 1], False, True, torch.bfloat16),
    (3, 2, 3, 40, None, True, True, torch.float16),
]


def _triton_op_call(tri, kind, args, lengths, reverse):
    """Every output of the Triton forward op, buffers included: LSTM (out, h_n, c_n, hs, cs, ws), GRU (out, h_n,
    hs, ws)."""
    if kind == "lstm":
        return list(tri.lstm_layer_forward(*args, lengths, reverse))
    return list(tri.gru_layer_forward(*args, lengths, reverse, kind == "gru"))


@pytest.mark.skipif(not is_available("triton"), reason="triton not available")
@pytest.mark.parametrize("config", PERSISTENT_CONFIGS, ids=lambda c: f"T{c[0]}B{c[1]}H{c[3]}-{str(c[7])[6:]}")
@pytest.mark.parametrize("kind", ["lstm", "gru", "gru_rb"])
def test_triton_persistent_matches_per_step_and_reference(kind, config, monkeypatch):
    from s2s_fused.triton import rnn_layer as tri
    from tests.helpers import poison_
    T, B, I, H, lens, reverse, bias, dtype = config
    base = kind.split("_")[0]
    lengths = torch.tensor(lens) if lens is not None else None
    args = op_args(base, T=T, B=B, I=I, H=H, bias=bias, lengths=False, dtype=dtype)[:-1]
    w = 3 if base == "lstm" else 2  # weights at torch's init scale: unsaturated gates, errors that show
    args[w], args[w + 1] = args[w] * I ** -0.5, args[w + 1] * H ** -0.5
    args = [a.to(device_for("triton")) if a is not None else None for a in args]
    assert tri.use_persistent(B, H), "the rule must pick the persistent program for this shape"
    calls = persistent_spy(monkeypatch, tri)

    # the per-step path, forced by the switch
    monkeypatch.setattr(s2s_fused.config, _NO_PERSISTENT, True)
    step = _triton_op_call(tri, kind, args, lengths, reverse)
    assert not calls and not tri.use_persistent(B, H)
    monkeypatch.setattr(s2s_fused.config, _NO_PERSISTENT, False)

    # the persistent launcher on its own, every buffer it writes poisoned (NaN) except h0 / c0 in place
    G, lstm = (4 if base == "lstm" else 3), base == "lstm"
    x, w_ih, w_hh = args[0], args[3 if lstm else 2], args[4 if lstm else 3]
    b1, b2 = args[-2:]
    gx = (x.reshape(T * B, I) @ w_ih.t()).view(T, B, G * H).contiguous()
    hs_step, ws_step = step[3 if lstm else 2], step[-1]
    first = T if reverse else 0  # the first step's read slot (csrc/rnn_core.h's TimeLayout)
    hs, ws, out = (poison_(torch.empty_like(t)) for t in (hs_step, ws_step, step[0]))
    hs[first] = args[1]
    cs = None
    if lstm:
        cs = poison_(torch.empty_like(step[4]))
        cs[first] = args[2]
    mode = {"lstm": tri.CellKind.LSTM, "gru": tri.CellKind.GRU_RESET_AFTER,
            "gru_rb": tri.CellKind.GRU_RESET_BEFORE}[kind]
    act = tri._active(lengths, T, B, x.device)
    tri._forward_sequence(mode, gx, hs, cs, w_hh, b1, b2, act, out, ws, reverse)
    assert len(calls) == 1
    same_tol = {torch.float64: 1e-12, torch.float32: 1e-6}.get(dtype, 1e-2)
    for name, a, b in (("out", out, step[0]), ("hs", hs, hs_step), ("ws", ws, ws_step)) + \
            ((("cs", cs, step[4]),) if lstm else ()):
        assert_close(a, b, same_tol, f"persistent vs per-step {kind} {name}")

    # the public function through the persistent path: outputs (and gradients, fp32/fp64) against the reference
    def outputs_and_grads(leaves, backend):
        outs = layer_call(kind, leaves if bias else leaves + [None, None], lengths, reverse, backend)
        if dtype not in (torch.float64, torch.float32):
            return outs
        g = torch.Generator().manual_seed(5)
        loss = sum((o * torch.randn(o.shape, generator=g, dtype=torch.float64).to(o)).sum() for o in outs)
        return outs + list(torch.autograd.grad(loss, leaves))

    leaves = [a for a in args if a is not None]
    ours = outputs_and_grads([a.detach().clone().requires_grad_() for a in leaves], "triton")
    assert len(calls) == 2
    # the float64 truth, and torch's own error in this dtype (ARCHITECTURE.md's tolerances)
    ref64, own = (outputs_and_grads([a.detach().to(d).requires_grad_() for a in leaves], "reference")
                  for d in (torch.float64, dtype))
    floor = {torch.float64: 1e-9, torch.float32: 1e-5}.get(dtype, 1e-2)
    for i, (a, b, c) in enumerate(zip(ours, ref64, own)):
        tol = floor if dtype == torch.float64 else max(2 * rel_err(c, b), floor)
        assert_close(a, b, tol, f"persistent {kind} vs reference, output/grad {i}")


@pytest.mark.skipif(not is_available("triton"), reason="triton not available")
@pytest.mark.parametrize("kind", ["lstm", "gru", "gru_rb"])
def test_triton_persistent_gradcheck(kind, monkeypatch):
    """fp64 gradcheck (fast mode: a random projection per input) of the op whose forward is the persistent
    program; the backward is the per-step one, so this checks the workspace and states it saves."""
    from s2s_fused.triton import rnn_layer as tri
    calls = persistent_spy(monkeypatch, tri)
    base = kind.split("_")[0]
    args = op_args(base, T=3, B=2, I=2, H=3, lengths=False, requires_grad=True)[:-1]
    args = [a.detach().to(device_for("triton")).requires_grad_() for a in args]
    lengths, reverse = torch.tensor([3, 1]), kind != "gru"

    def f(*a):
        return tuple(layer_call(kind, list(a), lengths, reverse, "triton"))

    assert torch.autograd.gradcheck(f, tuple(args), fast_mode=True)
    assert calls


def test_triton_persistent_rule(monkeypatch):
    from s2s_fused.triton import rnn_layer as tri
    monkeypatch.setattr(s2s_fused.config, _NO_PERSISTENT, False)
    assert tri.use_persistent(1, 512) is False  # H above PERSISTENT_MAX_H: per-step grid spreads W_hh
    assert tri.use_persistent(8, tri.PERSISTENT_MAX_H) is True
    assert tri.use_persistent(4096, 64) is False  # the per-step grid alone fills a GPU
    assert tri.use_persistent(64, 256) is True
    monkeypatch.setattr(s2s_fused.config, _NO_PERSISTENT, True)
    assert tri.use_persistent(8, 64) is False
    monkeypatch.setattr(s2s_fused.config, _NO_PERSISTENT, False)
    assert tri.use_persistent(8, 64) is True


def test_triton_layer_kernels_compile_for_gpu():
    """The per-step and persistent forward and the step backward kernels, in the configurations their launchers
    use (modes, dtypes, optional operands, sizes of 1 as constexprs), compiled for sm_90 down to cubin without a
    GPU; the persistent program keeps its block barriers (tests/gpu_compile.py)."""
    check_families("rnn_layer")


# The two-direction ops: the one recurrence with D = 2, against two single-direction ops (values, saved tensors,
# gradients), gradcheck and opcheck.
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["per-step", "fp32-packed"])
@pytest.mark.parametrize("kind", ["lstm", "gru", "gru_rb"])
@pytest.mark.parametrize("shape", [(7, 5, 3, 4, True), (1, 1, 2, 3, True), (6, 3, 4, 5, False), (3, 4, 1, 17, True)],
                         ids=["T7-packed", "T1-B1-packed", "T6-dense-nobias", "T3-H17-packed"])
def test_bidir_op_matches_per_direction_ops(kind, shape, dtype):
    """Outputs, final states, saved tensors and every gradient equal the two single-direction ops'. per-step: the
    per-step loop with both directions' GEMMs batched over the strided step views (the calls CUDA makes); fp32:
    the packed sequence loop over both directions (where it runs: AVX2/AVX-512), the same to fp32 rounding."""
    T, B, I, H, packed = shape
    base = kind.split("_")[0]
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    x, h0, c0, w, lens = bidir_args(base, T, B, I, H, bias=shape != (6, 3, 4, 5, False), lengths=packed,
                                     requires_grad=True, dtype=dtype)
    leaves = [x, h0] + ([c0] if c0 is not None else []) + [t for d in w for t in d if t is not None]
    fused, per = bidir_both_ways(kind, x, h0, c0, w, lens)
    g = torch.Generator().manual_seed(5)
    cot = [torch.randn(o.shape, generator=g, dtype=o.dtype) for o in per]
    gf = torch.autograd.grad(sum((o * c).sum() for o, c in zip(fused, cot)), leaves)
    gp = torch.autograd.grad(sum((o * c).sum() for o, c in zip(per, cot)), leaves)
    for i, (a, b) in enumerate(zip(fused + list(gf), per + list(gp))):
        assert_close(a, b, tol, f"{kind} output/grad #{i}")
    # the saved tensors: direction d's slice is the single-direction op's
    det = [[t.detach() if t is not None else None for t in d] for d in w]
    if base == "lstm":
        out = torch.ops.s2s_fused.lstm_layer_bidir_forward(x.detach(), h0.detach(), c0.detach(), *det[0], *det[1],
                                                           lens)
        ones = [torch.ops.s2s_fused.lstm_layer_forward(x.detach(), h0[d].detach(), c0[d].detach(), *det[d], lens,
                                                       d == 1) for d in range(2)]
        saved = (3, 4, 5)
    else:
        ra = kind == "gru"
        out = torch.ops.s2s_fused.gru_layer_bidir_forward(x.detach(), h0.detach(), *det[0], *det[1], lens, ra)
        ones = [torch.ops.s2s_fused.gru_layer_forward(x.detach(), h0[d].detach(), *det[d], lens, d == 1, ra)
                for d in range(2)]
        saved = (2, 3)
    for d in range(2):
        for k in saved:
            assert_close(out[k][d], ones[d][k], tol, f"saved #{k} direction {d}")


def test_bidir_step_gemms_are_batched():
    """The per-step loop runs both directions' recurrent products as one batched GEMM per product per step
    (aten::bmm / baddbmm_ show in the profiler; single-direction GEMMs go to oneDNN or BLAS, not through them)."""
    T = 5
    x, h0, c0, w, lens = bidir_args("gru", T, 4, 3, 8)

    def count(fn):
        with torch.profiler.profile() as prof:
            fn()
        return {e.key: e.count for e in prof.key_averages() if "bmm" in e.key}

    def run():
        return gru_layer_bidir(x, h0, w[0], w[1], lengths=lens, reset_after=False, backend="cpu")

    assert count(run).get("aten::bmm") == 2 * T  # reset_before: the r,z product and the n product per step
    x, h0, c0, w, lens = bidir_args("lstm", T, 4, 3, 8)
    got = count(lambda: lstm_layer_bidir(x, (h0, c0), w[0], w[1], lengths=lens, backend="cpu"))
    assert got.get("aten::baddbmm_") == T


@pytest.mark.parametrize("lengths", [False, True])
@pytest.mark.parametrize("kind", ["lstm", "gru", "gru_rb"])
def test_bidir_gradcheck(kind, lengths):
    base = kind.split("_")[0]
    x, h0, c0, w, lens = bidir_args(base, 3, 3, 2, 2, lengths=lengths, requires_grad=True)
    if base == "lstm":
        def f(x, h0, c0, *ws):
            o, (h, c) = lstm_layer_bidir(x, (h0, c0), ws[:4], ws[4:], lengths=lens, backend="cpu")
            return o, h, c
        inputs = (x, h0, c0, *w[0], *w[1])
    else:
        def f(x, h0, *ws):
            return gru_layer_bidir(x, h0, ws[:4], ws[4:], lengths=lens, reset_after=kind == "gru", backend="cpu")
        inputs = (x, h0, *w[0], *w[1])
    assert torch.autograd.gradcheck(f, inputs)
    assert torch.autograd.gradgradcheck(f, inputs)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_bidir_opcheck(kind):
    op = getattr(torch.ops.s2s_fused, f"{kind}_layer_bidir_forward")
    for rg in (False, True):
        for bias, lengths in ((True, True), (False, False)):
            x, h0, c0, w, lens = bidir_args(kind, 4, 3, 2, 3, bias=bias, lengths=lengths, requires_grad=rg,
                                             dtype=torch.float32)
            args = [x, h0] + ([c0] if kind == "lstm" else []) + w[0] + w[1] + [lens]
            if kind == "gru":
                args.append(bias)  # reset_after both ways
            torch.library.opcheck(op, tuple(args))
    x, h0, c0, w, lens = bidir_args(kind, 4, 3, 2, 3, dtype=torch.float32)
    if kind == "lstm":
        out, hn, cn, hs, cs, ws = op(x, h0, c0, *w[0], *w[1], lens)
        torch.library.opcheck(torch.ops.s2s_fused.lstm_layer_bidir_backward,
                              (torch.randn_like(out), torch.randn_like(hn), None, x, w[0][0], w[0][1], w[1][0],
                               w[1][1], hs, cs, ws, lens))
    else:
        for ra in (True, False):
            out, hn, hs, ws = op(x, h0, *w[0], *w[1], lens, ra)
            torch.library.opcheck(torch.ops.s2s_fused.gru_layer_bidir_backward,
                                  (torch.randn_like(out), torch.randn_like(hn), x, w[0][0], w[0][1], w[1][0],
                                   w[1][1], hs, ws, lens, ra))


def test_bidir_bad_input():
    x, h0, c0, w, lens = bidir_args("lstm", 4, 3, 2, 3)
    with pytest.raises(ValueError, match=r"hx\[0\].*\(2, B, H\)"):
        lstm_layer_bidir(x, (h0[:1], c0[:1]), w[0], w[1], backend="cpu")
    with pytest.raises(TypeError, match="weights_reverse"):
        lstm_layer_bidir(x, (h0, c0), w[0], w[1][:2], backend="cpu")
    with pytest.raises(ValueError, match="w_hh"):
        lstm_layer_bidir(x, (h0, c0), w[0], [w[1][0], w[1][1][:, :2], None, None], backend="cpu")
    with pytest.raises(RuntimeError, match="h0"):
        torch.ops.s2s_fused.lstm_layer_bidir_forward(x, h0[0], c0[0], *w[0], *w[1], lens)
    xg, hg, _, wg, _ = bidir_args("gru", 4, 3, 2, 3)
    with pytest.raises(RuntimeError, match="w_hh"):
        torch.ops.s2s_fused.gru_layer_bidir_forward(xg, hg, *wg[0], wg[1][0], wg[1][1][:3], None, None, None, True)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
@pytest.mark.parametrize("bidir", [False, True], ids=["one-direction", "bidir-op"])
def test_backward_fills_no_zero_gradients(kind, bidir):
    """The saved buffers (hs, cs, workspace) and an unused c_n get no gradient: the backward op receives None for
    them, not a zero tensor autograd filled for nothing (12 MB a call at T=32 B=64 H=256). The gradients still
    equal those computed with explicit zero cotangents."""
    from torch.utils._python_dispatch import TorchDispatchMode

    T, B, I, H = 5, 3, 4, 17
    if bidir:
        x, h0, c0, w, lens = bidir_args(kind, T, B, I, H, requires_grad=True, dtype=torch.float32)
        leaves = [x] + w[0][:2] + w[1][:2]
        op = lstm_layer_bidir if kind == "lstm" else gru_layer_bidir
        state = (h0.detach(), c0.detach()) if kind == "lstm" else h0.detach()

        def run():
            out, hn = op(x, state, w[0], w[1], lengths=lens, backend="cpu")
            return out, hn[0] if kind == "lstm" else hn
    else:
        args = op_args(kind, T, B, I, H, requires_grad=True, dtype=torch.float32)
        leaves = [args[0]] + args[(3 if kind == "lstm" else 2):][:2]

        def run():
            res = layer_call(kind, args[:-1], args[-1], False, "cpu")
            return res[0], res[1]

    big = T * B * H  # every saved buffer has at least this many elements; the states' gradients have B * H
    seen = []

    class Spy(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, a=(), kw=None):
            out = func(*a, **(kw or {}))
            name = func.__name__
            if "backward" in name and "s2s_fused" in str(func):
                seen.append(("backward_op", [t is None for t in a[:3]]))
            elif any(s in name for s in ("zeros", "zero_", "fill_", "full")) and isinstance(out, torch.Tensor):
                if out.numel() >= big:
                    seen.append((name, tuple(out.shape)))
            return out

    out, hn = run()
    with Spy():
        g = torch.autograd.grad(out.sum() + hn.sum(), leaves)
    fills = [s for s in seen if s[0] != "backward_op"]
    assert not fills, f"zero gradients materialized in backward: {fills}"
    ops = [s for s in seen if s[0] == "backward_op"]
    assert ops and (kind != "lstm" or ops[0][1][2]), f"grad_c_n should arrive as None: {ops}"
    out, hn = run()
    ref = torch.autograd.grad(out.sum() + hn.sum(), leaves)
    for a, b in zip(g, ref):
        assert torch.equal(a, b)
