"""LSTM with projections (torch's proj_size: h = W_hr (o * tanh c)) on every backend: s2s_fused.nn.LSTM against
torch.nn.LSTM with the same weights (outputs, h_n, c_n, every gradient incl. weight_hr) over layers, directions,
batch_first, packed input and given / None states; the layer op against the float64 reference, gradcheck and
gradgradcheck; on a NaN-poisoned heap; bf16 / fp16; parameters and state_dict as torch's; torch's errors for a
bad proj_size. The ops' argument checks with w_hr are in tests/test_op_checks.py."""
from __future__ import annotations

import pytest
import torch

import s2s_fused
import s2s_fused.nn.rnn as _snn_rnn
from s2s_fused import nn as snn
from s2s_fused.backend import is_available
from tests.helpers import assert_close, device_for, poison_heap, rel_err
from tests.rnn_layer_helpers import lengths_for, make_input, run_module

BACKENDS = ["reference", "cpu", pytest.param("triton", marks=pytest.mark.skipif(
    not is_available("triton"), reason="triton not available"))]


def proj_pair(I, H, P, L, bias, batch_first, bidirectional, dtype, backend, dropout=0.0):
    """torch.nn.LSTM(proj_size=P) and ours with the same weights (loaded with strict=True)."""
    torch.manual_seed(0)
    ref = torch.nn.LSTM(I, H, L, bias=bias, batch_first=batch_first, bidirectional=bidirectional, proj_size=P,
                        dropout=dropout, dtype=dtype)
    ours = snn.LSTM(I, H, L, bias=bias, batch_first=batch_first, bidirectional=bidirectional, proj_size=P,
                    dropout=dropout, dtype=dtype, backend=backend).to(device_for(backend))
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ref, ours


def proj_hx(L, D, B, H, P, dtype, seed=3):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(L * D, B, P, generator=g, dtype=torch.float64).to(dtype),
            torch.randn(L * D, B, H, generator=g, dtype=torch.float64).to(dtype))


# (num_layers, bidirectional, batch_first, bias, packed, given hx, T, B, I, H, P): odd sizes, P = 1 and P = H - 1,
# 1-3 layers, packed ones with unsorted uneven lengths including 1.
CONFIGS = [
    (1, False, False, True, False, True, 5, 3, 17, 7, 1),
    (2, True, True, True, True, False, 6, 4, 3, 5, 4),
    (3, False, False, False, True, True, 3, 1, 1, 3, 2),
    (3, True, False, True, True, True, 4, 3, 5, 6, 1),
    (1, True, True, True, False, False, 1, 17, 4, 3, 2),
    (2, False, True, True, True, True, 17, 5, 3, 9, 8),
]


def _cfg_id(c):
    L, bi, bf, bias, packed, hx, T, B, I, H, P = c
    return (f"L{L}-{'bi' if bi else 'uni'}-{'bf' if bf else 'tf'}-{'bias' if bias else 'nobias'}-"
            f"{'packed' if packed else 'dense'}-{'hx' if hx else 'nohx'}-T{T}-B{B}-I{I}-H{H}-P{P}")


def _run_both(ref, ours, x, hx, lengths, bf, device):
    want = run_module(ref, x, hx, packed_lengths=lengths, batch_first=bf)
    to = (lambda t: t.to(device))
    got = run_module(ours, to(x), tuple(to(h) for h in hx) if hx is not None else None,
                     packed_lengths=lengths, batch_first=bf)
    return want, got


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cfg", CONFIGS, ids=[_cfg_id(c) for c in CONFIGS])
def test_matches_torch_float64(cfg, backend):
    L, bi, bf, bias, packed, given, T, B, I, H, P = cfg
    if backend == "triton" and T * L * (2 if bi else 1) > 20:
        pytest.skip("interpreter: tiny shapes only")
    D = 2 if bi else 1
    x = make_input(T, B, I, bf, torch.float64)
    hx = proj_hx(L, D, B, H, P, torch.float64) if given else None
    lengths = lengths_for(T, B) if packed else None
    ref, ours = proj_pair(I, H, P, L, bias, bf, bi, torch.float64, backend)
    (w_out, w_grads), (g_out, g_grads) = _run_both(ref, ours, x, hx, lengths, bf, device_for(backend))
    out_names = ["output", "h_n", "c_n"]
    grad_names = ["grad input"] + (["grad h0", "grad c0"] if given else [])
    grad_names += [f"grad {n}" for n, _ in ref.named_parameters()]
    assert tuple(g_out[1].shape) == (L * D, B, P) and tuple(g_out[2].shape) == (L * D, B, H)
    assert g_out[0].shape[-1] == D * P
    for n, o, t in zip(out_names + grad_names, g_out + g_grads, w_out + w_grads):
        assert_close(o, t, 1e-9, n)


@pytest.mark.parametrize("cfg", [(2, True, False, True, True, True, 17, 5, 17, 33, 7),
                                 (1, False, True, True, False, False, 130, 3, 5, 16, 15),
                                 (3, True, True, False, False, True, 3, 257, 4, 5, 1)],
                         ids=["L2-bi-packed-H33-P7", "L1-T130-P15", "L3-bi-B257-P1"])
def test_matches_torch_float32_cpu(cfg):
    """fp32: within 2x torch's own fp32 error against fp64 (floor 1e-5), per ARCHITECTURE.md."""
    L, bi, bf, bias, packed, given, T, B, I, H, P = cfg
    D = 2 if bi else 1
    x64 = make_input(T, B, I, bf, torch.float64)
    hx64 = proj_hx(L, D, B, H, P, torch.float64) if given else None
    lengths = lengths_for(T, B) if packed else None
    ref64, _ = proj_pair(I, H, P, L, bias, bf, bi, torch.float64, "cpu")
    truth = run_module(ref64, x64, hx64, packed_lengths=lengths, batch_first=bf)
    ref32, ours32 = proj_pair(I, H, P, L, bias, bf, bi, torch.float32, "cpu")
    x, hx = x64.float(), (tuple(h.float() for h in hx64) if given else None)
    t32 = run_module(ref32, x, hx, packed_lengths=lengths, batch_first=bf)
    got = run_module(ours32, x, hx, packed_lengths=lengths, batch_first=bf)
    for i, (o, t, e) in enumerate(zip(got[0] + got[1], truth[0] + truth[1], t32[0] + t32[1])):
        assert_close(o, t, max(2 * rel_err(e, t), 1e-5), f"result {i}")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_low_precision_cpu(dtype):
    """bf16/fp16 (fp32 math inside): every result within 2x torch's own error in that dtype (floor 1e-2)."""
    ref64, _ = proj_pair(8, 16, 5, 2, True, False, True, torch.float64, "cpu")
    ref_lp, ours = proj_pair(8, 16, 5, 2, True, False, True, dtype, "cpu")
    x = make_input(7, 3, 8, False, torch.float64)
    truth = run_module(ref64, x, None)
    theirs = run_module(ref_lp, x.to(dtype), None)
    got = run_module(ours, x.to(dtype), None)
    for i, (o, t, e) in enumerate(zip(got[0] + got[1], truth[0] + truth[1], theirs[0] + theirs[1])):
        assert_close(o, t, max(2 * rel_err(e, t), 1e-2), f"result {i}")


def _layer_args(T=3, B=2, I=2, H=3, P=2, seed=0, requires_grad=True):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: (torch.randn(*s, generator=g, dtype=torch.float64) * 0.7).requires_grad_(requires_grad)  # noqa
    return [r(T, B, I), r(B, P), r(B, H), r(4 * H, I), r(4 * H, P), r(4 * H), r(4 * H), r(P, H)]


_TRITON = pytest.mark.skipif(not is_available("triton"), reason="triton not available")
# Triton under the interpreter: two of the four (lengths, reverse) combinations, on the smallest shapes.
GRADCHECK_CASES = [(be, lengths, reverse) for be in ("cpu", "triton") for lengths in (False, True)
                   for reverse in (False, True) if be == "cpu" or lengths == reverse]


@pytest.mark.parametrize("backend,lengths,reverse", [pytest.param(*c, marks=[_TRITON] if c[0] == "triton" else [])
                                                     for c in GRADCHECK_CASES])
def test_gradcheck(backend, lengths, reverse):
    dev = device_for(backend)
    T, B, I, H, P = (3, 2, 2, 3, 2) if backend == "cpu" else (2, 2, 1, 2, 1)
    args = [a.detach().to(dev).requires_grad_() for a in _layer_args(T, B, I, H, P)]
    lens = torch.tensor([T, 1]) if lengths else None

    def f(x, h, c, wi, wh, bi, bh, wr):
        out, (hn, cn) = s2s_fused.lstm_layer(x, (h, c), wi, wh, bi, bh, lengths=lens, reverse=reverse, w_hr=wr,
                                             backend=backend)
        return out, hn, cn
    # the interpreter: fast mode (a random projection per input), as tests/test_rnn_layer.py's Triton checks
    fast = backend == "triton" and dev.type == "cpu"
    assert torch.autograd.gradcheck(f, tuple(args), fast_mode=fast)
    assert torch.autograd.gradgradcheck(f, tuple(args), fast_mode=fast)


@pytest.mark.parametrize("backend", ["cpu", pytest.param("triton", marks=pytest.mark.skipif(
    not is_available("triton"), reason="triton not available"))])
@pytest.mark.parametrize("reverse", [False, True])
def test_layer_matches_reference(backend, reverse):
    """The layer op (forward and first-order backward) against the float64 reference, packed lengths."""
    dev = device_for(backend)
    T, B, I, H, P = 5, 4, 3, 6, 5
    args = _layer_args(T, B, I, H, P, seed=2)
    lens = torch.tensor([5, 1, 3, 2])
    g = torch.Generator().manual_seed(9)
    gout = [torch.randn(T, B, P, generator=g, dtype=torch.float64), torch.randn(B, P, generator=g,
            dtype=torch.float64), torch.randn(B, H, generator=g, dtype=torch.float64)]

    def run(be, d):
        a = [t.detach().to(d).requires_grad_() for t in args]
        out, (hn, cn) = s2s_fused.lstm_layer(a[0], (a[1], a[2]), *a[3:7], lengths=lens, reverse=reverse,
                                             w_hr=a[7], backend=be)
        loss = sum((o * go.to(d)).sum() for o, go in zip((out, hn, cn), gout))
        return [out, hn, cn] + list(torch.autograd.grad(loss, a))
    for i, (o, t) in enumerate(zip(run(backend, dev), run("reference", "cpu"))):
        assert_close(o, t, 1e-10, f"result {i}")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
def test_repeated_on_poisoned_heap(dtype):
    """Buffers left unwritten show as NaN when the allocator hands back NaN-filled blocks: 10 fresh calls of
    forward + backward of a packed projected layer, each after NaN blocks of every size the op allocates."""
    T, B, I, H, P = 6, 40, 19, 70, 33
    args = _layer_args(T, B, I, H, P, seed=5)
    lens = lengths_for(T, B)
    g = torch.Generator().manual_seed(6)
    gout = torch.randn(T, B, P, generator=g, dtype=torch.float64)

    def run(be, dt):
        a = [t.detach().to(dt).requires_grad_() for t in args]
        out, (hn, cn) = s2s_fused.lstm_layer(a[0], (a[1], a[2]), *a[3:7], lengths=lens, w_hr=a[7], backend=be)
        loss = (out * gout.to(dt)).sum() + hn.sum() + cn.sum()
        return [out, hn, cn] + list(torch.autograd.grad(loss, a))

    truth = run("reference", torch.float64)
    own = [rel_err(r, t) for r, t in zip(run("reference", dtype), truth)]
    for rep in range(10):
        for n in (B * H, B * P, 2 * B * H, 4 * B * H, T * B * P, (T + 1) * B * P, (T + 1) * B * H, T * B * 4 * H,
                  P * H):
            poison_heap(n, dtype)
            poison_heap(n, torch.float32)
        for i, (o, t, e) in enumerate(zip(run("cpu", dtype), truth, own)):
            assert_close(o, t, max(2 * e, 1e-2 if dtype != torch.float32 else 1e-5), f"call {rep} result {i}")


def test_parameters_and_state_dict_as_torch():
    ref, ours = proj_pair(3, 5, 2, 2, True, False, True, torch.float32, "cpu")
    assert ours._flat_weights_names == ref._flat_weights_names
    assert list(ours.state_dict()) == list(ref.state_dict())
    assert [[tuple(w.shape) for w in ws] for ws in ours.all_weights] == \
        [[tuple(w.shape) for w in ws] for ws in ref.all_weights]
    assert tuple(ours.weight_hr_l1_reverse.shape) == (2, 5)
    assert tuple(ours.weight_ih_l1.shape) == (20, 4) and tuple(ours.weight_hh_l0.shape) == (20, 2)


@pytest.mark.parametrize("proj_size,hidden", [(-1, 5), (5, 5), (7, 5)])
def test_bad_proj_size_raises_as_torch(proj_size, hidden):
    with pytest.raises(Exception) as theirs:
        torch.nn.LSTM(3, hidden, proj_size=proj_size)
    with pytest.raises(type(theirs.value)) as ours:
        snn.LSTM(3, hidden, proj_size=proj_size)
    assert str(ours.value) == str(theirs.value)


def test_wrong_state_shape_names_the_state():
    m = snn.LSTM(3, 5, proj_size=2, backend="cpu")
    x = torch.randn(4, 2, 3)
    with pytest.raises(ValueError, match=r"hx\[0\]: expected shape \(1, 2, 2\)"):
        m(x, (torch.zeros(1, 2, 5), torch.zeros(1, 2, 5)))
    with pytest.raises(ValueError, match=r"hx\[1\]: expected shape \(1, 2, 5\)"):
        m(x, (torch.zeros(1, 2, 2), torch.zeros(1, 2, 2)))


def test_public_function_checks_w_hr():
    a = [t.detach() for t in _layer_args()]
    with pytest.raises(ValueError, match=r"w_hr: expected shape \(2, 3\), got \(3, 3\)"):
        s2s_fused.lstm_layer(a[0], (a[1], a[2]), *a[3:7], w_hr=torch.zeros(3, 3, dtype=torch.float64))
    with pytest.raises(TypeError, match=r"w_hr: expected dtype torch.float64"):
        s2s_fused.lstm_layer(a[0], (a[1], a[2]), *a[3:7], w_hr=a[7].float())


def test_unbatched_and_eval_dropout_match_torch():
    ref, ours = proj_pair(3, 6, 4, 2, True, False, False, torch.float64, "cpu", dropout=0.3)
    ref.eval()
    ours.eval()
    x = torch.randn(5, 3, dtype=torch.float64)
    (o1, (h1, c1)), (o2, (h2, c2)) = ref(x), ours(x)
    for a, b in ((o1, o2), (h1, h2), (c1, c2)):
        assert_close(b, a, 1e-12)
    assert tuple(h2.shape) == (2, 4) and tuple(c2.shape) == (2, 6)


def test_training_dropout_between_layers():
    """Dropout between layers only, in training: the same mask stream as torch's (one F.dropout per layer
    boundary) gives torch's result."""
    ref, ours = proj_pair(3, 6, 4, 3, True, False, True, torch.float64, "cpu", dropout=0.5)
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    torch.manual_seed(11)
    o2, _ = ours(x)
    torch.manual_seed(11)
    # torch's CPU LSTM draws its dropout masks the same way between layers
    o1, _ = ref(x)
    assert_close(o2, o1, 1e-12)


def test_projected_bidirectional_runs_one_op_per_direction():
    """The two-direction ops take no projection: a projected module never picks them."""
    _, ours = proj_pair(3, 5, 2, 1, True, False, True, torch.float32, "cpu")
    assert not _snn_rnn._use_bidir_fused(ours, torch.zeros(1))


@pytest.mark.parametrize("suffix", ["", pytest.param("_triton", marks=_TRITON)])
def test_opcheck(suffix):
    """Schema, fake kernel and autograd registration of the ops with w_hr (and of their Triton twins)."""
    fwd = getattr(torch.ops.s2s_fused, "lstm_layer_forward" + suffix)
    dev = device_for("triton" if suffix else "cpu")
    for rg, lengths, reverse in ((False, True, False), (True, False, True)):
        a = [t.detach().float().to(dev).requires_grad_(rg) for t in _layer_args(seed=4)]
        lens = torch.tensor([3, 1]) if lengths else None
        torch.library.opcheck(fwd, (*a[:7], lens, reverse, a[7]))
    a = [t.detach().float().to(dev) for t in _layer_args(seed=4)]
    if not suffix:  # (the inference op has no Triton twin)
        torch.library.opcheck(torch.ops.s2s_fused.lstm_layer_inference, (*a[:7], None, False, a[7]))
    out, hn, cn, hs, cs, ws = fwd(*a[:7], torch.tensor([3, 1]), True, a[7])
    torch.library.opcheck(getattr(torch.ops.s2s_fused, "lstm_layer_backward" + suffix),
                          (torch.randn_like(out), torch.randn_like(hn), None, a[0], a[3], a[4], hs, cs, ws,
                           torch.tensor([3, 1]), True, a[7]))
