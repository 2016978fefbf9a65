"""s2s_fused.nn.LSTM / GRU and the rnn_layer ops: against torch.nn.LSTM / GRU (same weights) for outputs, final
states and every gradient; reset_after=False against the reference; gradcheck; opcheck; torch.compile; errors."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import s2s_fused
from s2s_fused import nn as snn
from s2s_fused.backend import is_available
from tests.gpu_compile import check_families
from tests.helpers import assert_close, compiled_switch, device_for, make_cell_params, poison_heap, rel_err

# ------------------------------------------------------------------------------------------------ helpers


def _make_input(T, B, I, batch_first, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    shape = (B, T, I) if batch_first else (T, B, I)
    return torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)


def _lengths(T, B):
    """Uneven lengths in [1, T] with T and 1 present (when B allows), not sorted."""
    if B == 1:
        return torch.tensor([T])
    lens = [T, 1] + [1 + (7 * k + 3) % T for k in range(B - 2)]
    return torch.tensor(lens[:B])


def _run(module, x, hx, *, packed_lengths=None, batch_first=False, grad_seed=1):
    """Forward + backward of a random linear function of (output, h_n[, c_n]); returns the outputs and the
    gradients of (input, hx..., parameters...) in that order, all detached."""
    x = x.clone().requires_grad_()
    hx_leaf = None
    if hx is not None:
        hx_leaf = tuple(h.clone().requires_grad_() for h in hx) if isinstance(hx, tuple) else \
            hx.clone().requires_grad_()
    inp = x
    if packed_lengths is not None:
        inp = pack_padded_sequence(x, packed_lengths, batch_first=batch_first, enforce_sorted=False)
    out, state = module(inp, hx_leaf)
    if packed_lengths is not None:
        out = pad_packed_sequence(out, batch_first=batch_first)[0]
    states = list(state) if isinstance(state, tuple) else [state]
    outs = [out] + states
    g = torch.Generator().manual_seed(grad_seed)
    loss = sum((o * torch.randn(o.shape, generator=g, dtype=torch.float64).to(o.dtype)).sum() for o in outs)
    leaves = [x] + (list(hx_leaf) if isinstance(hx_leaf, tuple) else ([hx_leaf] if hx_leaf is not None else []))
    leaves += list(module.parameters())
    grads = torch.autograd.grad(loss, leaves)
    return [o.detach() for o in outs], list(grads)


def _pair(kind, I, H, L, bias, batch_first, bidirectional, dtype, **kw):
    """A torch module and ours with the same weights (loaded with strict=True)."""
    torch.manual_seed(0)
    ref = getattr(torch.nn, kind)(I, H, L, bias=bias, batch_first=batch_first, bidirectional=bidirectional,
                                  dtype=dtype)
    ours = getattr(snn, kind)(I, H, L, bias=bias, batch_first=batch_first, bidirectional=bidirectional,
                              dtype=dtype, **kw)
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ref, ours


def _hx(kind, L, D, B, H, dtype, seed=3):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(L * D, B, H, generator=g, dtype=torch.float64).to(dtype)
    if kind == "LSTM":
        return h, torch.randn(L * D, B, H, generator=g, dtype=torch.float64).to(dtype)
    return h


# --------------------------------------------------------------------------- against torch.nn.LSTM / GRU
# (kind, num_layers, bidirectional, batch_first, bias, packed, T, B, I, H, dtype): 28 configurations crossing
# every axis the modules take; packed ones have uneven lengths including 1 (and a batch of 1).
CONFIGS = []
for kind in ("LSTM", "GRU"):
    CONFIGS += [
        (kind, 1, False, False, True, False, 37, 3, 5, 7, torch.float64),
        (kind, 1, True, True, True, False, 2, 4, 1, 17, torch.float64),
        (kind, 3, False, False, False, False, 2, 2, 6, 5, torch.float64),
        (kind, 3, True, True, True, True, 37, 5, 3, 7, torch.float64),
        (kind, 1, False, True, False, True, 37, 4, 9, 3, torch.float64),
        (kind, 3, True, False, True, True, 2, 3, 4, 6, torch.float64),
        (kind, 1, True, False, True, True, 1, 1, 3, 5, torch.float64),
        (kind, 1, False, False, True, False, 1, 3, 5, 7, torch.float32),
        (kind, 1, True, False, True, True, 37, 6, 17, 13, torch.float32),
        (kind, 3, False, True, True, False, 37, 3, 8, 16, torch.float32),
        (kind, 3, True, True, False, True, 2, 1, 7, 9, torch.float32),
        (kind, 1, False, True, True, True, 37, 1, 5, 11, torch.float32),
        (kind, 3, True, False, True, False, 1, 2, 130, 3, torch.float32),
        (kind, 1, True, True, False, False, 37, 17, 3, 5, torch.float32),
    ]


def _cfg_id(c):
    kind, L, bi, bf, bias, packed, T, B, I, H, dt = c
    return (f"{kind}-L{L}-{'bi' if bi else 'uni'}-{'bf' if bf else 'tf'}-{'bias' if bias else 'nobias'}-"
            f"{'packed' if packed else 'dense'}-T{T}-B{B}-I{I}-H{H}-{str(dt)[6:]}")


@pytest.mark.parametrize("cfg", CONFIGS, ids=[_cfg_id(c) for c in CONFIGS])
def test_matches_torch(cfg):
    kind, L, bi, bf, bias, packed, T, B, I, H, dtype = cfg
    D = 2 if bi else 1
    x64 = _make_input(T, B, I, bf, torch.float64)
    hx64 = _hx(kind, L, D, B, H, torch.float64)
    lengths = _lengths(T, B) if packed else None
    ref64, ours64 = _pair(kind, I, H, L, bias, bf, bi, torch.float64, backend="cpu")
    truth_out, truth_grads = _run(ref64, x64, hx64, packed_lengths=lengths, batch_first=bf)
    names = ["output", "h_n"] + (["c_n"] if kind == "LSTM" else [])
    gnames = ["grad input"] + (["grad h0", "grad c0"] if kind == "LSTM" else ["grad h0"])
    gnames += [f"grad {n}" for n, _ in ref64.named_parameters()]
    if dtype == torch.float64:
        outs, grads = _run(ours64, x64, hx64, packed_lengths=lengths, batch_first=bf)
        for n, o, t in zip(names + gnames, outs + grads, truth_out + truth_grads):
            assert_close(o, t, 1e-9, n)
        return
    # fp32: within 2x torch's own fp32 error against fp64 (floor 1e-5), per ARCHITECTURE.md.
    ref32, ours32 = _pair(kind, I, H, L, bias, bf, bi, dtype, backend="cpu")
    x, hx = x64.to(dtype), (tuple(h.to(dtype) for h in hx64) if kind == "LSTM" else hx64.to(dtype))
    t_out, t_grads = _run(ref32, x, hx, packed_lengths=lengths, batch_first=bf)
    outs, grads = _run(ours32, x, hx, packed_lengths=lengths, batch_first=bf)
    for n, o, t32, t in zip(names + gnames, outs + grads, t_out + t_grads, truth_out + truth_grads):
        tol = max(2 * rel_err(t32, t), 1e-5)
        assert_close(o, t, tol, n)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_low_precision(kind, dtype):
    """bf16/fp16 (fp32 math inside): outputs and input gradients within 2x torch's own error in that dtype
    (floor 1e-2) against fp64, per ARCHITECTURE.md."""
    ref64, _ = _pair(kind, 8, 16, 2, True, False, True, torch.float64)
    ref_lp, ours = _pair(kind, 8, 16, 2, True, False, True, dtype, backend="cpu")
    x = _make_input(7, 3, 8, False, torch.float64)
    hx = _hx(kind, 2, 2, 3, 16, torch.float64)
    lens = _lengths(7, 3)
    t_out, t_grads = _run(ref64, x, hx, packed_lengths=lens)
    hx_lp = tuple(h.to(dtype) for h in hx) if kind == "LSTM" else hx.to(dtype)
    r_out, r_grads = _run(ref_lp, x.to(dtype), hx_lp, packed_lengths=lens)
    o_out, o_grads = _run(ours, x.to(dtype), hx_lp, packed_lengths=lens)
    for name, o, r, t in zip(["output", "h_n", "grad input"], o_out[:2] + o_grads[:1], r_out[:2] + r_grads[:1],
                             t_out[:2] + t_grads[:1]):
        assert_close(o, t, max(2 * rel_err(r, t), 1e-2), f"{dtype} {name}")


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


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_hx_none_unbatched_and_sorted_packing(kind):
    ref, ours = _pair(kind, 4, 6, 2, True, False, True, torch.float64)
    x = _make_input(9, 3, 4, False, torch.float64)
    for a, b in zip(_run(ref, x, None)[0], _run(ours, x, None)[0]):
        assert_close(b, a, 1e-9, "hx=None")
    # unbatched (T, I) with hx (L*D, H)
    x1 = x[:, 0]
    hx = _hx(kind, 2, 2, 1, 6, torch.float64)
    hx1 = tuple(h[:, 0] for h in hx) if kind == "LSTM" else hx[:, 0]
    (o_ref, *s_ref), g_ref = _run(ref, x1, hx1)
    (o, *s), g = _run(ours, x1, hx1)
    assert o.shape == o_ref.shape == (9, 12)
    for a, b in zip([o_ref] + s_ref + g_ref, [o] + s + g):
        assert_close(b, a, 1e-9, "unbatched")
    # enforce_sorted=True packing (lengths sorted descending)
    lens = torch.tensor([9, 5, 2])
    with torch.no_grad():
        p_ref = ref(pack_padded_sequence(x, lens), None)
        p = ours(pack_padded_sequence(x, lens), None)
    assert torch.equal(p[0].batch_sizes, p_ref[0].batch_sizes)
    assert p[0].sorted_indices is None
    assert_close(p[0].data, p_ref[0].data, 1e-9, "packed data")


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_state_dict_dropout_and_drop_in(kind):
    ref = getattr(torch.nn, kind)(5, 7, 3, dropout=0.5, bidirectional=True)
    ours = getattr(snn, kind)(5, 7, 3, dropout=0.5, bidirectional=True)
    # RNNBase, as torch's modules (not nn.LSTM/GRU themselves, which Dynamo refuses to trace)
    assert isinstance(ours, torch.nn.RNNBase) and ours.mode == kind
    assert list(ours.state_dict()) == list(ref.state_dict())
    ref.load_state_dict(ours.state_dict(), strict=True)
    ours.flatten_parameters()
    x = torch.randn(6, 2, 5)
    ours.eval()
    ref.eval()
    with torch.no_grad():
        assert_close(ours(x)[0], ref(x)[0], 1e-5, "eval: no dropout")
        ours.train()
        a, b = ours(x)[0], ours(x)[0]
    assert not torch.equal(a, b), "training mode must apply inter-layer dropout"


def test_proj_size_not_implemented():
    with pytest.raises(NotImplementedError, match="proj_size"):
        snn.LSTM(4, 8, proj_size=3)


@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_gru_reset_before_matches_reference(packed, bidirectional):
    torch.manual_seed(0)
    ours = snn.GRU(5, 6, 2, bidirectional=bidirectional, dtype=torch.float64, reset_after=False, backend="cpu")
    ref = snn.GRU(5, 6, 2, bidirectional=bidirectional, dtype=torch.float64, reset_after=False,
                  backend="reference")
    ref.load_state_dict(ours.state_dict())
    x = _make_input(11, 4, 5, False, torch.float64)
    hx = _hx("GRU", 2, 2 if bidirectional else 1, 4, 6, torch.float64)
    lens = _lengths(11, 4) if packed else None
    o_ref, g_ref = _run(ref, x, hx, packed_lengths=lens)
    o, g = _run(ours, x, hx, packed_lengths=lens)
    for a, b in zip(o_ref + g_ref, o + g):
        assert_close(b, a, 1e-9, "reset_before")
    # and it is a different function from torch's GRU with the same weights (so the test above can fail)
    torch_gru = torch.nn.GRU(5, 6, 2, bidirectional=bidirectional, dtype=torch.float64)
    torch_gru.load_state_dict(ours.state_dict())
    assert rel_err(o[0], _run(torch_gru, x, hx, packed_lengths=lens)[0][0]) > 1e-3


# ------------------------------------------------------------------------------------ the ops themselves


def _op_args(kind, T=4, B=3, I=2, H=3, bias=True, lengths=True, dtype=torch.float64, requires_grad=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    G = 4 if kind == "lstm" else 3

    def r(*s):
        return torch.randn(*s, generator=g, dtype=torch.float64).to(dtype).requires_grad_(requires_grad)

    args = [r(T, B, I), r(B, H)] + ([r(B, H)] if kind == "lstm" else []) + [r(G * H, I), r(G * H, H)]
    args += [r(G * H), r(G * H)] if bias else [None, None]
    args.append(torch.tensor([T, 1, 2][:B]) if lengths else None)
    return args


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("lengths", [False, True])
@pytest.mark.parametrize("kind", ["lstm", "gru", "gru_rb"])
def test_gradcheck(kind, lengths, reverse):
    args = _op_args(kind.split("_")[0], lengths=lengths, requires_grad=True)
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
            args = _op_args(kind, bias=bias, lengths=lengths, requires_grad=rg, dtype=torch.float32)
            extra = [reverse] if kind == "lstm" else [reverse, not reverse]
            samples.append(args + extra)
    for s in samples:
        torch.library.opcheck(op, tuple(s))
    for s in samples[:2]:  # the inference op: no autograd, no saved tensors
        torch.library.opcheck(getattr(torch.ops.s2s_fused, f"{kind}_layer_inference"), tuple(s))
    # the backward ops on their own
    args = _op_args(kind, dtype=torch.float32)
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
    args = _op_args("lstm", T=5, B=3, I=4, H=5, lengths=False)
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


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_torch_compile_fullgraph(kind):
    torch.manual_seed(0)
    m = getattr(snn, kind)(3, 5, 2, bidirectional=True, batch_first=True)
    x = torch.randn(2, 6, 3, requires_grad=True)
    eager = m(x)[0]
    compiled = torch.compile(m, fullgraph=True, backend="aot_eager")
    out = compiled(x)[0]
    assert_close(out, eager, 1e-6, "compiled")
    out.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    # PackedSequence input (unsorted lengths) through the compiled module
    p = pack_padded_sequence(x.detach(), torch.tensor([6, 2]), batch_first=True, enforce_sorted=False)
    assert_close(compiled(p)[0].data, m(p)[0].data, 1e-6, "compiled packed")
    with torch.no_grad():  # inference: the ops that keep nothing for backward, traced too
        assert_close(compiled(x)[0], eager, 1e-6, "compiled no_grad")


# ------------------------------------------------------------------------------------------------ errors


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_bad_input(kind):
    m = getattr(snn, kind)(4, 5, 2)
    with pytest.raises(ValueError, match="2-D .*or 3-D"):
        m(torch.randn(2, 3, 4, 5))
    with pytest.raises(ValueError, match="input_size 4"):
        m(torch.randn(6, 2, 3))
    h_bad = torch.zeros(2, 3, 5)  # batch 3, input batch 2
    with pytest.raises(ValueError, match=r"hx.*expected shape \(2, 2, 5\)"):
        m(torch.randn(6, 2, 4), (h_bad, h_bad) if kind == "LSTM" else h_bad)
    with pytest.raises(TypeError, match="dtype"):
        m(torch.randn(6, 2, 4, dtype=torch.float64))
    h64 = torch.zeros(2, 2, 5, dtype=torch.float64)
    with pytest.raises(TypeError, match="dtype"):
        m(torch.randn(6, 2, 4), (h64, h64) if kind == "LSTM" else h64)
    if kind == "LSTM":
        with pytest.raises(TypeError, match="tuple"):
            m(torch.randn(6, 2, 4), torch.zeros(2, 2, 5))


def test_bad_lengths_and_devices():
    x, h, wi, wh, bi, bh, _ = _op_args("gru", T=4, B=3, lengths=False)
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


# ------------------------------------------------------------------------------- every CPU capability copy

_CAP_SCRIPT = """
import torch, s2s_fused
from s2s_fused.backend import build_info
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
print(build_info()["cpu_capability"])
"""


@pytest.mark.parametrize("cap", ["default", "avx2", "avx512", "avx512-blas", "avx512-nopacked"])
def test_each_cpu_capability(cap):
    """Each capability's kernels (pointwise, and the packed-weight recurrence of AVX2/AVX-512) against the fp64
    reference, outputs and every gradient. "blas": fp32 GEMMs through ATen's BLAS instead of oneDNN;
    "nopacked": the per-step ATen-GEMM loop instead of the packed recurrence."""
    env = dict(os.environ, ATEN_CPU_CAPABILITY=cap.split("-")[0], PYTHONPATH=os.getcwd())
    if cap.endswith("blas"):
        env["S2S_FUSED_NO_ONEDNN"] = "1"
        env["S2S_FUSED_NO_PACKED"] = "1"
    if cap.endswith("nopacked"):
        env["S2S_FUSED_NO_PACKED"] = "1"
    r = subprocess.run([sys.executable, "-c", _CAP_SCRIPT], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]


# ---------------------------------------------------------------------------------------- triton backend


@pytest.mark.skipif(not is_available("triton"), reason="triton not available")
@pytest.mark.parametrize("kind", ["lstm", "gru", "gru_rb"])
def test_triton_backend_tiny(kind):
    base = kind.split("_")[0]
    args = _op_args(base, T=3, B=2, I=3, H=5, lengths=True, requires_grad=True)
    lens = torch.tensor([3, 1])
    dev = device_for("triton")
    res = []
    for be in ("triton", "reference"):
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
            assert_close(a, b, 1e-9, f"triton {kind}")


@pytest.mark.skipif(not is_available("triton"), reason="triton not available")
@pytest.mark.parametrize("kind", ["lstm", "gru", "gru_rb"])
def test_triton_gradgradcheck(kind):
    base = kind.split("_")[0]
    dev = device_for("triton")
    args = [a.detach().to(dev).requires_grad_() if a is not None else None
            for a in _op_args(base, T=2, B=2, I=2, H=2, lengths=True)[:-1]]
    lens = torch.tensor([2, 1])
    if base == "lstm":
        def f(x, h, c, *w):
            out, (hn, cn) = s2s_fused.lstm_layer(x, (h, c), *w, lengths=lens, reverse=True, backend="triton")
            return out, hn, cn
    else:
        def f(x, h, *w):
            return s2s_fused.gru_layer(x, h, *w, lengths=lens, reset_after=kind == "gru", backend="triton")
    assert torch.autograd.gradgradcheck(f, tuple(args), fast_mode=not torch.cuda.is_available())


@pytest.mark.skipif(not is_available("triton"), reason="triton not available")
def test_triton_module():
    torch.manual_seed(0)
    ref = torch.nn.LSTM(3, 4, 1, bidirectional=True)
    ours = snn.LSTM(3, 4, 1, bidirectional=True, backend="triton")
    ours.load_state_dict(ref.state_dict())
    x, dev = torch.randn(3, 2, 3), device_for("triton")
    with torch.no_grad():
        assert_close(ours.to(dev)(x.to(dev))[0], ref(x)[0], 1e-5, "triton module")


# ------------------------------------------------------------------------------------------------ CUDA


@pytest.mark.gpu
@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_cuda_matches_torch(kind, backend):
    ref, ours = _pair(kind, 9, 33, 2, True, False, True, torch.float64, backend=backend)
    ref, ours = ref.cuda(), ours.cuda()
    x = _make_input(13, 5, 9, False, torch.float64).cuda()
    hx = _hx(kind, 2, 2, 5, 33, torch.float64)
    hx = tuple(h.cuda() for h in hx) if kind == "LSTM" else hx.cuda()
    lens = _lengths(13, 5)
    o_ref, g_ref = _run(ref, x, hx, packed_lengths=lens)
    o, g = _run(ours, x, hx, packed_lengths=lens)
    for a, b in zip(o_ref + g_ref, o + g):
        assert_close(b, a, 1e-9, f"{backend} {kind}")


@pytest.mark.skipif(not is_available("triton"), reason="triton not available")
@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_triton_opcheck_and_compile(kind):
    op = getattr(torch.ops.s2s_fused, f"{kind}_layer_forward_triton")
    dev = device_for("triton")
    args = _op_args(kind, T=2, B=2, I=2, H=3, lengths=True, requires_grad=True, dtype=torch.float32)
    args = [a.detach().to(dev).requires_grad_(a.requires_grad) for a in args[:-1]] + args[-1:]
    extra = [True] if kind == "lstm" else [True, False]
    torch.library.opcheck(op, tuple(args + extra))
    m = getattr(snn, kind.upper())(2, 3, backend="triton").to(dev)
    x = torch.randn(3, 2, 2, device=dev)
    assert_close(torch.compile(m, fullgraph=True, backend="aot_eager")(x)[0], m(x)[0], 1e-6, "compiled triton")


@pytest.mark.gpu
@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("B", [1, 5, 8])
def test_cuda_persistent_small_batch(kind, dtype, B, monkeypatch):
    """B <= 8 takes the persistent kernel (weights on chip for the whole sequence): outputs, states and every
    gradient within 2x cuDNN's own error against float64, and the same as the per-step path."""
    T, I, H = 23, 17, 130
    ref64, _ = _pair(kind, I, H, 2, True, False, True, torch.float64)
    ref, ours = _pair(kind, I, H, 2, True, False, True, dtype, backend="cuda")
    ref, ours, ref64 = ref.cuda(), ours.cuda(), ref64.cuda()
    x = _make_input(T, B, I, False, torch.float64).cuda()
    lens = _lengths(T, B)
    o64, g64 = _run(ref64, x, None, packed_lengths=lens)
    o_ref, g_ref = _run(ref, x.to(dtype), None, packed_lengths=lens)
    o_new, g_new = _run(ours, x.to(dtype), None, packed_lengths=lens)
    with compiled_switch("S2S_FUSED_NO_PERSISTENT"):
        o_step, g_step = _run(ours, x.to(dtype), None, packed_lengths=lens)
    floor = 1e-5 if dtype == torch.float32 else 1e-2
    for exact, theirs, new, step in zip(o64 + g64, o_ref + g_ref, o_new + g_new, o_step + g_step):
        tol = max(2 * rel_err(theirs, exact), floor)
        assert rel_err(new, exact) <= tol, f"persistent {kind} {dtype} B={B}"
        assert rel_err(step, exact) <= tol, f"per-step {kind} {dtype} B={B}"


# ---------------------------------------------------------------------- triton: persistent program over time
# s2s_fused/triton/rnn_layer.py runs a layer-direction's whole time loop in one launch where use_persistent(B, H)
# allows, the per-step kernels otherwise (or with S2S_FUSED_TRITON_NO_PERSISTENT=1: s2s_fused.config's
# TRITON_NO_PERSISTENT). Both paths are selected explicitly here, and a spy on the persistent launcher checks which
# one ran.

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


def _persistent_spy(monkeypatch, tri):
    calls = []
    real = tri._persistent_forward

    def spy(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(tri, "_persistent_forward", spy)
    return calls


def _layer_call(kind, args, lengths, reverse, backend):
    """(out, h_n[, c_n]) of the public function."""
    if kind == "lstm":
        out, (hn, cn) = s2s_fused.lstm_layer(args[0], (args[1], args[2]), *args[3:], lengths=lengths,
                                             reverse=reverse, backend=backend)
        return [out, hn, cn]
    out, hn = s2s_fused.gru_layer(args[0], args[1], *args[2:], lengths=lengths, reverse=reverse,
                                  reset_after=kind == "gru", backend=backend)
    return [out, hn]


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
    args = _op_args(base, T=T, B=B, I=I, H=H, bias=bias, lengths=False, dtype=dtype)[:-1]
    w = 3 if base == "lstm" else 2  # weights at torch's init scale: unsaturated gates, errors that show
    args[w], args[w + 1] = args[w] * I ** -0.5, args[w + 1] * H ** -0.5
    args = [a.to(device_for("triton")) if a is not None else None for a in args]
    assert tri.use_persistent(B, H), "the rule must pick the persistent program for this shape"
    calls = _persistent_spy(monkeypatch, tri)

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
        outs = _layer_call(kind, leaves if bias else leaves + [None, None], lengths, reverse, backend)
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
    calls = _persistent_spy(monkeypatch, tri)
    base = kind.split("_")[0]
    args = _op_args(base, T=3, B=2, I=2, H=3, lengths=False, requires_grad=True)[:-1]
    args = [a.detach().to(device_for("triton")).requires_grad_() for a in args]
    lengths, reverse = torch.tensor([3, 1]), kind != "gru"

    def f(*a):
        return tuple(_layer_call(kind, list(a), lengths, reverse, "triton"))

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


@pytest.mark.gpu
@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("B", [1, 5, 17])
def test_cuda_triton_persistent(kind, dtype, B, monkeypatch):
    """On a GPU: the Triton persistent program (H = 130: three unit tiles a step, block barrier between steps)
    against float64 torch within 2x cuDNN's own error, and the per-step Triton path likewise."""
    from s2s_fused.triton import rnn_layer as tri
    T, I, H = 23, 17, 130
    assert tri.use_persistent(B, H)
    calls = _persistent_spy(monkeypatch, tri)
    ref64, _ = _pair(kind, I, H, 2, True, False, True, torch.float64)
    ref, ours = _pair(kind, I, H, 2, True, False, True, dtype, backend="triton")
    ref, ours, ref64 = ref.cuda(), ours.cuda(), ref64.cuda()
    x = _make_input(T, B, I, False, torch.float64).cuda()
    lens = _lengths(T, B)
    o64, g64 = _run(ref64, x, None, packed_lengths=lens)
    o_ref, g_ref = _run(ref, x.to(dtype), None, packed_lengths=lens)
    o_new, g_new = _run(ours, x.to(dtype), None, packed_lengths=lens)
    assert len(calls) == 4  # 2 layers x 2 directions
    monkeypatch.setattr(s2s_fused.config, _NO_PERSISTENT, True)
    o_step, g_step = _run(ours, x.to(dtype), None, packed_lengths=lens)
    assert len(calls) == 4
    floor = 1e-5 if dtype == torch.float32 else 1e-2
    for exact, theirs, new, step in zip(o64 + g64, o_ref + g_ref, o_new + g_new, o_step + g_step):
        tol = max(2 * rel_err(theirs, exact), floor)
        assert rel_err(new, exact) <= tol, f"triton persistent {kind} {dtype} B={B}"
        assert rel_err(step, exact) <= tol, f"triton per-step {kind} {dtype} B={B}"
# ================================================================ rnn_layer_bidir (both directions in one op)
# The two-direction ops run the one recurrence with D = 2 (csrc/rnn_recurrence.h; on CPU the per-step loop with
# both directions' GEMMs batched, or for fp32 the packed sequence loop): checked here against two single-direction
# ops (values, saved tensors, gradients), torch.nn with loaded weights (through the modules, forced onto the bidir
# path), gradcheck and opcheck.
import s2s_fused.nn.rnn as _snn_rnn  # noqa: E402
from s2s_fused.ops.rnn_layer import gru_layer_bidir, lstm_layer_bidir  # noqa: E402

# The modules' two-direction path driven on CPU too (the library takes it on CUDA only).
_BIDIR_FUSED_ON_CPU = frozenset({"cuda", "cpu"})


def _bidir_args(kind, T, B, I, H, *, bias=True, lengths=True, dtype=torch.float64, requires_grad=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    G = 4 if kind == "lstm" else 3

    def r(*s):
        return torch.randn(*s, generator=g, dtype=torch.float64).to(dtype).requires_grad_(requires_grad)

    x, h0 = r(T, B, I), r(2, B, H)
    c0 = r(2, B, H) if kind == "lstm" else None
    w = [[r(G * H, I), r(G * H, H)] + ([r(G * H), r(G * H)] if bias else [None, None]) for _ in range(2)]
    return x, h0, c0, w, (_lengths(T, B) if lengths else None)


def _bidir_both_ways(kind, x, h0, c0, w, lens):
    """(fused two-direction result, per-direction result) as flat lists [output, h_n(, c_n)]."""
    if kind == "lstm":
        o, (h, c) = lstm_layer_bidir(x, (h0, c0), w[0], w[1], lengths=lens, backend="cpu")
        per = [s2s_fused.lstm_layer(x, (h0[d], c0[d]), *w[d], lengths=lens, reverse=d == 1, backend="cpu")
               for d in range(2)]
        return [o, h, c], [torch.cat([p[0] for p in per], -1), torch.stack([p[1][0] for p in per]),
                           torch.stack([p[1][1] for p in per])]
    ra = kind == "gru"
    o, h = gru_layer_bidir(x, h0, w[0], w[1], lengths=lens, reset_after=ra, backend="cpu")
    per = [s2s_fused.gru_layer(x, h0[d], *w[d], lengths=lens, reverse=d == 1, reset_after=ra, backend="cpu")
           for d in range(2)]
    return [o, h], [torch.cat([p[0] for p in per], -1), torch.stack([p[1] for p in per])]


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
    x, h0, c0, w, lens = _bidir_args(base, T, B, I, H, bias=shape != (6, 3, 4, 5, False), lengths=packed,
                                     requires_grad=True, dtype=dtype)
    leaves = [x, h0] + ([c0] if c0 is not None else []) + [t for d in w for t in d if t is not None]
    fused, per = _bidir_both_ways(kind, x, h0, c0, w, lens)
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
    x, h0, c0, w, lens = _bidir_args("gru", T, 4, 3, 8)

    def count(fn):
        with torch.profiler.profile() as prof:
            fn()
        return {e.key: e.count for e in prof.key_averages() if "bmm" in e.key}

    def run():
        return gru_layer_bidir(x, h0, w[0], w[1], lengths=lens, reset_after=False, backend="cpu")

    assert count(run).get("aten::bmm") == 2 * T  # reset_before: the r,z product and the n product per step
    x, h0, c0, w, lens = _bidir_args("lstm", T, 4, 3, 8)
    got = count(lambda: lstm_layer_bidir(x, (h0, c0), w[0], w[1], lengths=lens, backend="cpu"))
    assert got.get("aten::baddbmm_") == T


@pytest.mark.parametrize("lengths", [False, True])
@pytest.mark.parametrize("kind", ["lstm", "gru", "gru_rb"])
def test_bidir_gradcheck(kind, lengths):
    base = kind.split("_")[0]
    x, h0, c0, w, lens = _bidir_args(base, 3, 3, 2, 2, lengths=lengths, requires_grad=True)
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
            x, h0, c0, w, lens = _bidir_args(kind, 4, 3, 2, 3, bias=bias, lengths=lengths, requires_grad=rg,
                                             dtype=torch.float32)
            args = [x, h0] + ([c0] if kind == "lstm" else []) + w[0] + w[1] + [lens]
            if kind == "gru":
                args.append(bias)  # reset_after both ways
            torch.library.opcheck(op, tuple(args))
    x, h0, c0, w, lens = _bidir_args(kind, 4, 3, 2, 3, dtype=torch.float32)
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


# (kind, num_layers, batch_first, bias, packed, T, B, I, H): the modules forced onto the two-direction op on CPU
BIDIR_MODULE_CONFIGS = [
    ("LSTM", 1, False, True, True, 9, 4, 3, 5),
    ("LSTM", 2, True, False, False, 4, 2, 5, 3),
    ("LSTM", 2, False, True, True, 1, 1, 2, 4),
    ("GRU", 1, True, True, True, 9, 4, 3, 5),
    ("GRU", 2, False, False, True, 5, 3, 2, 6),
    ("GRU", 2, True, True, False, 3, 1, 4, 3),
]


@pytest.mark.parametrize("cfg", BIDIR_MODULE_CONFIGS, ids=[
    f"{c[0]}-L{c[1]}-{'bf' if c[2] else 'tf'}-{'bias' if c[3] else 'nobias'}-{'packed' if c[4] else 'dense'}-T{c[5]}"
    f"-B{c[6]}" for c in BIDIR_MODULE_CONFIGS])
def test_bidir_module_path_matches_torch(cfg, monkeypatch):
    kind, L, bf, bias, packed, T, B, I, H = cfg
    monkeypatch.setattr(_snn_rnn, "BIDIR_FUSED_BACKENDS", _BIDIR_FUSED_ON_CPU)
    calls = []
    real = getattr(_snn_rnn, f"{kind.lower()}_layer_bidir")
    monkeypatch.setattr(_snn_rnn, f"{kind.lower()}_layer_bidir", lambda *a, **k: calls.append(1) or real(*a, **k))
    ref, ours = _pair(kind, I, H, L, bias, bf, True, torch.float64, backend="cpu")
    x = _make_input(T, B, I, bf, torch.float64)
    hx = _hx(kind, L, 2, B, H, torch.float64)
    lens = _lengths(T, B) if packed else None
    o_ref, g_ref = _run(ref, x, hx, packed_lengths=lens, batch_first=bf)
    o, g = _run(ours, x, hx, packed_lengths=lens, batch_first=bf)
    assert len(calls) == L, "the module did not take the two-direction op"
    for i, (a, b) in enumerate(zip(o + g, o_ref + g_ref)):
        assert_close(a, b, 1e-9, f"{kind} bidir module #{i}")
    # S2S_FUSED_NO_BIDIR_FUSED=1: back to one op per direction, same numbers
    calls.clear()
    monkeypatch.setattr(s2s_fused.config, "NO_BIDIR_FUSED", True)
    o2, g2 = _run(ours, x, hx, packed_lengths=lens, batch_first=bf)
    assert not calls
    for a, b in zip(o + g, o2 + g2):
        assert_close(a, b, 1e-12, "per-direction fallback")


def test_bidir_module_gru_reset_before_and_compile(monkeypatch):
    """reset_after=False through the two-direction op equals the per-direction path; torch.compile(fullgraph)
    traces the module's two-direction path."""
    m = snn.GRU(3, 4, 2, bidirectional=True, dtype=torch.float64, reset_after=False, backend="cpu")
    x = _make_input(6, 3, 3, False, torch.float64)
    lens = _lengths(6, 3)
    o_per, g_per = _run(m, x, None, packed_lengths=lens)
    monkeypatch.setattr(_snn_rnn, "BIDIR_FUSED_BACKENDS", _BIDIR_FUSED_ON_CPU)
    o, g = _run(m, x, None, packed_lengths=lens)
    for a, b in zip(o + g, o_per + g_per):
        assert_close(a, b, 1e-12, "reset_before bidir")
    lstm = snn.LSTM(3, 4, bidirectional=True, backend="cpu")
    xs = torch.randn(5, 2, 3)
    compiled = torch.compile(lstm, fullgraph=True, backend="aot_eager")
    assert_close(compiled(xs)[0], lstm(xs)[0], 1e-6, "compiled bidir LSTM")


def test_bidir_bad_input():
    x, h0, c0, w, lens = _bidir_args("lstm", 4, 3, 2, 3)
    with pytest.raises(ValueError, match=r"hx\[0\].*\(2, B, H\)"):
        lstm_layer_bidir(x, (h0[:1], c0[:1]), w[0], w[1], backend="cpu")
    with pytest.raises(TypeError, match="weights_reverse"):
        lstm_layer_bidir(x, (h0, c0), w[0], w[1][:2], backend="cpu")
    with pytest.raises(ValueError, match="w_hh"):
        lstm_layer_bidir(x, (h0, c0), w[0], [w[1][0], w[1][1][:, :2], None, None], backend="cpu")
    with pytest.raises(RuntimeError, match="h0"):
        torch.ops.s2s_fused.lstm_layer_bidir_forward(x, h0[0], c0[0], *w[0], *w[1], lens)
    xg, hg, _, wg, _ = _bidir_args("gru", 4, 3, 2, 3)
    with pytest.raises(RuntimeError, match="w_hh"):
        torch.ops.s2s_fused.gru_layer_bidir_forward(xg, hg, *wg[0], wg[1][0], wg[1][1][:3], None, None, None, True)


@pytest.mark.gpu
@pytest.mark.parametrize("kind", ["lstm", "gru", "gru_rb"])
@pytest.mark.parametrize("B", [3, 40])  # 3: persistent kernel per direction (fp32); 40: the per-step bidir path
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_cuda_bidir_op_matches_per_direction(kind, B, dtype):
    base = kind.split("_")[0]
    x, h0, c0, w, lens = _bidir_args(base, 11, B, 5, 33, dtype=dtype, requires_grad=True)
    to = lambda t: t.detach().cuda().requires_grad_() if t is not None else None  # noqa: E731
    x, h0 = to(x), to(h0)
    c0 = to(c0)
    w = [[to(t) for t in d] for d in w]
    leaves = [x, h0] + ([c0] if c0 is not None else []) + [t for d in w for t in d if t is not None]
    if base == "lstm":
        o, (h, c) = lstm_layer_bidir(x, (h0, c0), w[0], w[1], lengths=lens, backend="cuda")
        per = [s2s_fused.lstm_layer(x, (h0[d], c0[d]), *w[d], lengths=lens, reverse=d == 1, backend="cuda")
               for d in range(2)]
        fused = [o, h, c]
        ref = [torch.cat([p[0] for p in per], -1), torch.stack([p[1][0] for p in per]),
               torch.stack([p[1][1] for p in per])]
    else:
        ra = kind == "gru"
        o, h = gru_layer_bidir(x, h0, w[0], w[1], lengths=lens, reset_after=ra, backend="cuda")
        per = [s2s_fused.gru_layer(x, h0[d], *w[d], lengths=lens, reverse=d == 1, reset_after=ra, backend="cuda")
               for d in range(2)]
        fused, ref = [o, h], [torch.cat([p[0] for p in per], -1), torch.stack([p[1] for p in per])]
    cot = [torch.randn_like(r) for r in ref]
    gf = torch.autograd.grad(sum((a * c).sum() for a, c in zip(fused, cot)), leaves)
    gp = torch.autograd.grad(sum((a * c).sum() for a, c in zip(ref, cot)), leaves)
    tol = 1e-9 if dtype == torch.float64 else 1e-4  # fp32: batched vs single GEMMs may round differently
    for i, (a, b) in enumerate(zip(fused + list(gf), ref + list(gp))):
        assert_close(a, b, tol, f"cuda bidir {kind} #{i}")


@pytest.mark.gpu
@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_cuda_bidir_module_per_step(kind):
    """The module's two-direction path against cuDNN (float64, packed), the per-step loop."""
    ref, ours = _pair(kind, 9, 33, 2, True, False, True, torch.float64, backend="cuda")
    ref, ours = ref.cuda(), ours.cuda()
    with compiled_switch("S2S_FUSED_NO_PERSISTENT"):
        for seed in range(4):
            x = _make_input(13, 17, 9, False, torch.float64, seed=seed).cuda()
            lens = _lengths(13, 17)
            o_ref, g_ref = _run(ref, x, None, packed_lengths=lens)
            o, g = _run(ours, x, None, packed_lengths=lens)
            for a, b in zip(o_ref + g_ref, o + g):
                assert_close(b, a, 1e-9, f"{kind} call {seed}")


@pytest.mark.gpu
@pytest.mark.parametrize("kind", ["LSTM", "GRU", "GRU_rb"])
def test_cuda_single_direction_per_step(kind):
    """Single-direction layers through the per-step loop: every output and gradient against float64 torch
    (reset_before: against the reference backend), 4 calls."""
    base, kw = kind.split("_")[0], ({"reset_after": False} if kind.endswith("rb") else {})
    ref, ours = _pair(base, 9, 33, 2, True, False, False, torch.float64, backend="cuda", **kw)
    ref, ours = ref.cuda(), ours.cuda()
    if kw:
        ref = getattr(snn, base)(9, 33, 2, dtype=torch.float64, backend="reference", **kw).cuda()
        ref.load_state_dict(ours.state_dict())
    with compiled_switch("S2S_FUSED_NO_PERSISTENT"):
        for seed in range(4):
            x = _make_input(13, 17, 9, False, torch.float64, seed=seed).cuda()
            lens = _lengths(13, 17) if seed % 2 else None
            o_ref, g_ref = _run(ref, x, None, packed_lengths=lens)
            o, g = _run(ours, x, None, packed_lengths=lens)
            for a, b in zip(o_ref + g_ref, o + g):
                assert_close(b, a, 1e-9, f"{kind} call {seed}")


@pytest.mark.gpu
def test_cuda_layers_inside_user_capture():
    """Inside the user's own torch.cuda.graph capture the layer's launches are recorded into the user's graph (all
    on the current stream, no host sync), and replaying that graph gives the eager result."""
    m = snn.GRU(8, 16, bidirectional=True, backend="cuda").cuda()
    x = torch.randn(10, 24, 8, device="cuda")
    with torch.no_grad():
        want = m(x)[0]
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            for _ in range(2):
                m(x)
        torch.cuda.current_stream().wait_stream(s)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            out = m(x)[0]
        g.replay()
        torch.cuda.synchronize()
    assert_close(out, want, 1e-6, "user capture")
# ============================================================ end of rnn_layer_bidir
