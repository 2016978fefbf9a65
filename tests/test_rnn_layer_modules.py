"""s2s_fused.nn.LSTM / GRU as drop-ins for torch.nn.LSTM / GRU (same weights): outputs, final states and every
gradient across layers, directions, batch_first, bias, packed input and dtypes; hx=None, unbatched input,
state_dict, dropout, torch.compile, errors; and the modules' two-direction path."""
from __future__ import annotations

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import s2s_fused
import s2s_fused.nn.rnn as _snn_rnn
from s2s_fused import nn as snn
from s2s_fused.backend import is_available
from tests.helpers import assert_close, device_for, rel_err
from tests.rnn_layer_helpers import lengths_for, make_hx, make_input, module_pair, run_module


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
    x64 = make_input(T, B, I, bf, torch.float64)
    hx64 = make_hx(kind, L, D, B, H, torch.float64)
    lengths = lengths_for(T, B) if packed else None
    ref64, ours64 = module_pair(kind, I, H, L, bias, bf, bi, torch.float64, backend="cpu")
    truth_out, truth_grads = run_module(ref64, x64, hx64, packed_lengths=lengths, batch_first=bf)
    names = ["output", "h_n"] + (["c_n"] if kind == "LSTM" else [])
    gnames = ["grad input"] + (["grad h0", "grad c0"] if kind == "LSTM" else ["grad h0"])
    gnames += [f"grad {n}" for n, _ in ref64.named_parameters()]
    if dtype == torch.float64:
        outs, grads = run_module(ours64, x64, hx64, packed_lengths=lengths, batch_first=bf)
        for n, o, t in zip(names + gnames, outs + grads, truth_out + truth_grads):
            assert_close(o, t, 1e-9, n)
        return
    # fp32: within 2x torch's own fp32 error against fp64 (floor 1e-5), per ARCHITECTURE.md.
    ref32, ours32 = module_pair(kind, I, H, L, bias, bf, bi, dtype, backend="cpu")
    x, hx = x64.to(dtype), (tuple(h.to(dtype) for h in hx64) if kind == "LSTM" else hx64.to(dtype))
    t_out, t_grads = run_module(ref32, x, hx, packed_lengths=lengths, batch_first=bf)
    outs, grads = run_module(ours32, x, hx, packed_lengths=lengths, batch_first=bf)
    for n, o, t32, t in zip(names + gnames, outs + grads, t_out + t_grads, truth_out + truth_grads):
        tol = max(2 * rel_err(t32, t), 1e-5)
        assert_close(o, t, tol, n)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_low_precision(kind, dtype):
    """bf16/fp16 (fp32 math inside): outputs and input gradients within 2x torch's own error in that dtype
    (floor 1e-2) against fp64, per ARCHITECTURE.md."""
    ref64, _ = module_pair(kind, 8, 16, 2, True, False, True, torch.float64)
    ref_lp, ours = module_pair(kind, 8, 16, 2, True, False, True, dtype, backend="cpu")
    x = make_input(7, 3, 8, False, torch.float64)
    hx = make_hx(kind, 2, 2, 3, 16, torch.float64)
    lens = lengths_for(7, 3)
    t_out, t_grads = run_module(ref64, x, hx, packed_lengths=lens)
    hx_lp = tuple(h.to(dtype) for h in hx) if kind == "LSTM" else hx.to(dtype)
    r_out, r_grads = run_module(ref_lp, x.to(dtype), hx_lp, packed_lengths=lens)
    o_out, o_grads = run_module(ours, x.to(dtype), hx_lp, packed_lengths=lens)
    for name, o, r, t in zip(["output", "h_n", "grad input"], o_out[:2] + o_grads[:1], r_out[:2] + r_grads[:1],
                             t_out[:2] + t_grads[:1]):
        assert_close(o, t, max(2 * rel_err(r, t), 1e-2), f"{dtype} {name}")


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_hx_none_unbatched_and_sorted_packing(kind):
    ref, ours = module_pair(kind, 4, 6, 2, True, False, True, torch.float64)
    x = make_input(9, 3, 4, False, torch.float64)
    for a, b in zip(run_module(ref, x, None)[0], run_module(ours, x, None)[0]):
        assert_close(b, a, 1e-9, "hx=None")
    # unbatched (T, I) with hx (L*D, H)
    x1 = x[:, 0]
    hx = make_hx(kind, 2, 2, 1, 6, torch.float64)
    hx1 = tuple(h[:, 0] for h in hx) if kind == "LSTM" else hx[:, 0]
    (o_ref, *s_ref), g_ref = run_module(ref, x1, hx1)
    (o, *s), g = run_module(ours, x1, hx1)
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


@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_gru_reset_before_matches_reference(packed, bidirectional):
    torch.manual_seed(0)
    ours = snn.GRU(5, 6, 2, bidirectional=bidirectional, dtype=torch.float64, reset_after=False, backend="cpu")
    ref = snn.GRU(5, 6, 2, bidirectional=bidirectional, dtype=torch.float64, reset_after=False,
                  backend="reference")
    ref.load_state_dict(ours.state_dict())
    x = make_input(11, 4, 5, False, torch.float64)
    hx = make_hx("GRU", 2, 2 if bidirectional else 1, 4, 6, torch.float64)
    lens = lengths_for(11, 4) if packed else None
    o_ref, g_ref = run_module(ref, x, hx, packed_lengths=lens)
    o, g = run_module(ours, x, hx, packed_lengths=lens)
    for a, b in zip(o_ref + g_ref, o + g):
        assert_close(b, a, 1e-9, "reset_before")
    # and it is a different function from torch's GRU with the same weights (so the test above can fail)
    torch_gru = torch.nn.GRU(5, 6, 2, bidirectional=bidirectional, dtype=torch.float64)
    torch_gru.load_state_dict(ours.state_dict())
    assert rel_err(o[0], run_module(torch_gru, x, hx, packed_lengths=lens)[0][0]) > 1e-3


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


@pytest.mark.skipif(not is_available("triton"), reason="triton not available")
def test_triton_module():
    torch.manual_seed(0)
    ref = torch.nn.LSTM(3, 4, 1, bidirectional=True)
    ours = snn.LSTM(3, 4, 1, bidirectional=True, backend="triton")
    ours.load_state_dict(ref.state_dict())
    x, dev = torch.randn(3, 2, 3), device_for("triton")
    with torch.no_grad():
        assert_close(ours.to(dev)(x.to(dev))[0], ref(x)[0], 1e-5, "triton module")


# The modules' two-direction path driven on CPU too (the library takes it on CUDA only).
_BIDIR_FUSED_ON_CPU = frozenset({"cuda", "cpu"})


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
    ref, ours = module_pair(kind, I, H, L, bias, bf, True, torch.float64, backend="cpu")
    x = make_input(T, B, I, bf, torch.float64)
    hx = make_hx(kind, L, 2, B, H, torch.float64)
    lens = lengths_for(T, B) if packed else None
    o_ref, g_ref = run_module(ref, x, hx, packed_lengths=lens, batch_first=bf)
    o, g = run_module(ours, x, hx, packed_lengths=lens, batch_first=bf)
    assert len(calls) == L, "the module did not take the two-direction op"
    for i, (a, b) in enumerate(zip(o + g, o_ref + g_ref)):
        assert_close(a, b, 1e-9, f"{kind} bidir module #{i}")
    # S2S_FUSED_NO_BIDIR_FUSED=1: back to one op per direction, same numbers
    calls.clear()
    monkeypatch.setattr(s2s_fused.config, "NO_BIDIR_FUSED", True)
    o2, g2 = run_module(ours, x, hx, packed_lengths=lens, batch_first=bf)
    assert not calls
    for a, b in zip(o + g, o2 + g2):
        assert_close(a, b, 1e-12, "per-direction fallback")


def test_bidir_module_gru_reset_before_and_compile(monkeypatch):
    """reset_after=False through the two-direction op equals the per-direction path; torch.compile(fullgraph)
    traces the module's two-direction path."""
    m = snn.GRU(3, 4, 2, bidirectional=True, dtype=torch.float64, reset_after=False, backend="cpu")
    x = make_input(6, 3, 3, False, torch.float64)
    lens = lengths_for(6, 3)
    o_per, g_per = run_module(m, x, None, packed_lengths=lens)
    monkeypatch.setattr(_snn_rnn, "BIDIR_FUSED_BACKENDS", _BIDIR_FUSED_ON_CPU)
    o, g = run_module(m, x, None, packed_lengths=lens)
    for a, b in zip(o + g, o_per + g_per):
        assert_close(a, b, 1e-12, "reset_before bidir")
    lstm = snn.LSTM(3, 4, bidirectional=True, backend="cpu")
    xs = torch.randn(5, 2, 3)
    compiled = torch.compile(lstm, fullgraph=True, backend="aot_eager")
    assert_close(compiled(xs)[0], lstm(xs)[0], 1e-6, "compiled bidir LSTM")
