"""The LSTM / GRU layers on a GPU (skipped without one): the cuda and triton backends against cuDNN in float64,
the persistent small-batch paths (CUDA kernel, Triton program) within 2x cuDNN's own error, the two-direction op
and the per-step loop, and the layers inside a user's CUDA-graph capture."""
from __future__ import annotations

import pytest
import torch

import s2s_fused
from s2s_fused import nn as snn
from s2s_fused.ops.rnn_layer import gru_layer_bidir, lstm_layer_bidir
from tests.helpers import assert_close, compiled_switch, rel_err
from tests.rnn_layer_helpers import (assert_modules_agree, bidir_args, lengths_for, make_hx, make_input, module_pair,
                                     persistent_spy, run_module)


@pytest.mark.gpu
@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_cuda_matches_torch(kind, backend):
    ref, ours = module_pair(kind, 9, 33, 2, True, False, True, torch.float64, backend=backend)
    ref, ours = ref.cuda(), ours.cuda()
    x = make_input(13, 5, 9, False, torch.float64).cuda()
    hx = make_hx(kind, 2, 2, 5, 33, torch.float64)
    hx = tuple(h.cuda() for h in hx) if kind == "LSTM" else hx.cuda()
    lens = lengths_for(13, 5)
    assert_modules_agree(ours, ref, x, hx, packed_lengths=lens, tol=1e-9, what=f"{backend} {kind}")


def _persistent_and_per_step(kind, dtype, B, backend, per_step, after_default=lambda: None):
    """A 2-layer bidirectional module of `backend` (T = 23, H = 130) against float64 torch within 2x cuDNN's own
    error in `dtype`, outputs, states and every gradient: as it runs by default (the persistent path at these
    shapes; `after_default` then checks that it did) and inside the context `per_step()` (the per-step path)."""
    T, I, H = 23, 17, 130
    ref64, _ = module_pair(kind, I, H, 2, True, False, True, torch.float64)
    ref, ours = module_pair(kind, I, H, 2, True, False, True, dtype, backend=backend)
    ref, ours, ref64 = ref.cuda(), ours.cuda(), ref64.cuda()
    x = make_input(T, B, I, False, torch.float64).cuda()
    lens = lengths_for(T, B)
    o64, g64 = run_module(ref64, x, None, packed_lengths=lens)
    o_ref, g_ref = run_module(ref, x.to(dtype), None, packed_lengths=lens)
    o_new, g_new = run_module(ours, x.to(dtype), None, packed_lengths=lens)
    after_default()
    with per_step():
        o_step, g_step = run_module(ours, x.to(dtype), None, packed_lengths=lens)
    floor = 1e-5 if dtype == torch.float32 else 1e-2
    for exact, theirs, new, step in zip(o64 + g64, o_ref + g_ref, o_new + g_new, o_step + g_step):
        tol = max(2 * rel_err(theirs, exact), floor)
        assert rel_err(new, exact) <= tol, f"{backend} persistent {kind} {dtype} B={B}"
        assert rel_err(step, exact) <= tol, f"{backend} per-step {kind} {dtype} B={B}"


@pytest.mark.gpu
@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("B", [1, 5, 8])
def test_cuda_persistent_small_batch(kind, dtype, B):
    """B <= 8 takes the CUDA persistent kernel (weights on chip for the whole sequence), and agrees with the
    per-step path."""
    _persistent_and_per_step(kind, dtype, B, "cuda", lambda: compiled_switch("S2S_FUSED_NO_PERSISTENT"))


@pytest.mark.gpu
@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("B", [1, 5, 17])
def test_cuda_triton_persistent(kind, dtype, B, monkeypatch):
    """The Triton persistent program (H = 130: three unit tiles a step, block barrier between steps), and the
    per-step Triton path likewise."""
    from s2s_fused.triton import rnn_layer as tri
    assert tri.use_persistent(B, 130)
    calls = persistent_spy(monkeypatch, tri)

    def ran_persistent():
        assert len(calls) == 4  # 2 layers x 2 directions

    _persistent_and_per_step(kind, dtype, B, "triton", lambda: s2s_fused.config.override(TRITON_NO_PERSISTENT=True),
                             ran_persistent)
    assert len(calls) == 4


@pytest.mark.gpu
@pytest.mark.parametrize("kind", ["lstm", "gru", "gru_rb"])
@pytest.mark.parametrize("B", [3, 40])  # 3: persistent kernel per direction (fp32); 40: the per-step bidir path
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_cuda_bidir_op_matches_per_direction(kind, B, dtype):
    base = kind.split("_")[0]
    x, h0, c0, w, lens = bidir_args(base, 11, B, 5, 33, dtype=dtype, requires_grad=True)
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
    ref, ours = module_pair(kind, 9, 33, 2, True, False, True, torch.float64, backend="cuda")
    ref, ours = ref.cuda(), ours.cuda()
    with compiled_switch("S2S_FUSED_NO_PERSISTENT"):
        for seed in range(4):
            x = make_input(13, 17, 9, False, torch.float64, seed=seed).cuda()
            lens = lengths_for(13, 17)
            assert_modules_agree(ours, ref, x, None, packed_lengths=lens, tol=1e-9, what=f"{kind} call {seed}")


@pytest.mark.gpu
@pytest.mark.parametrize("kind", ["LSTM", "GRU", "GRU_rb"])
def test_cuda_single_direction_per_step(kind):
    """Single-direction layers through the per-step loop: every output and gradient against float64 torch
    (reset_before: against the reference backend), 4 calls."""
    base, kw = kind.split("_")[0], ({"reset_after": False} if kind.endswith("rb") else {})
    ref, ours = module_pair(base, 9, 33, 2, True, False, False, torch.float64, backend="cuda", **kw)
    ref, ours = ref.cuda(), ours.cuda()
    if kw:
        ref = getattr(snn, base)(9, 33, 2, dtype=torch.float64, backend="reference", **kw).cuda()
        ref.load_state_dict(ours.state_dict())
    with compiled_switch("S2S_FUSED_NO_PERSISTENT"):
        for seed in range(4):
            x = make_input(13, 17, 9, False, torch.float64, seed=seed).cuda()
            lens = lengths_for(13, 17) if seed % 2 else None
            assert_modules_agree(ours, ref, x, None, packed_lengths=lens, tol=1e-9, what=f"{kind} call {seed}")


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
