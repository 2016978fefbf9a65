"""What the LSTM / GRU layer tests share: inputs, lengths, torch.nn / s2s_fused.nn module pairs with the same
weights, one forward + backward of a module, and the arguments of the rnn_layer ops (one and two directions)."""
from __future__ import annotations

import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import s2s_fused
from tests.helpers import assert_close
from s2s_fused import nn as snn
from s2s_fused.ops.rnn_layer import gru_layer_bidir, lstm_layer_bidir


def make_input(T, B, I, batch_first, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    shape = (B, T, I) if batch_first else (T, B, I)
    return torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)


def lengths_for(T, B):
    """Uneven lengths in [1, T] with T and 1 present (when B allows), not sorted."""
    if B == 1:
        return torch.tensor([T])
    lens = [T, 1] + [1 + (7 * k + 3) % T for k in range(B - 2)]
    return torch.tensor(lens[:B])


def run_module(module, x, hx, *, packed_lengths=None, batch_first=False, grad_seed=1):
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



def assert_modules_agree(ours, ref, x, hx, *, tol, what, **kw):
    """run_module on both modules with the same input: every output and gradient of ours within `tol` of ref's."""
    want, got = run_module(ref, x, hx, **kw), run_module(ours, x, hx, **kw)
    for i, (a, b) in enumerate(zip(want[0] + want[1], got[0] + got[1])):
        assert_close(b, a, tol, f"{what}: result {i}")

def module_pair(kind, I, H, L, bias, batch_first, bidirectional, dtype, **kw):
    """A torch module and ours with the same weights (loaded with strict=True)."""
    torch.manual_seed(0)
    ref = getattr(torch.nn, kind)(I, H, L, bias=bias, batch_first=batch_first, bidirectional=bidirectional,
                                  dtype=dtype)
    ours = getattr(snn, kind)(I, H, L, bias=bias, batch_first=batch_first, bidirectional=bidirectional,
                              dtype=dtype, **kw)
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ref, ours


def make_hx(kind, L, D, B, H, dtype, seed=3):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(L * D, B, H, generator=g, dtype=torch.float64).to(dtype)
    if kind == "LSTM":
        return h, torch.randn(L * D, B, H, generator=g, dtype=torch.float64).to(dtype)
    return h


def op_args(kind, T=4, B=3, I=2, H=3, bias=True, lengths=True, dtype=torch.float64, requires_grad=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    G = 4 if kind == "lstm" else 3

    def r(*s):
        return torch.randn(*s, generator=g, dtype=torch.float64).to(dtype).requires_grad_(requires_grad)

    args = [r(T, B, I), r(B, H)] + ([r(B, H)] if kind == "lstm" else []) + [r(G * H, I), r(G * H, H)]
    args += [r(G * H), r(G * H)] if bias else [None, None]
    args.append(torch.tensor([T, 1, 2][:B]) if lengths else None)
    return args


def bidir_args(kind, T, B, I, H, *, bias=True, lengths=True, dtype=torch.float64, requires_grad=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    G = 4 if kind == "lstm" else 3

    def r(*s):
        return torch.randn(*s, generator=g, dtype=torch.float64).to(dtype).requires_grad_(requires_grad)

    x, h0 = r(T, B, I), r(2, B, H)
    c0 = r(2, B, H) if kind == "lstm" else None
    w = [[r(G * H, I), r(G * H, H)] + ([r(G * H), r(G * H)] if bias else [None, None]) for _ in range(2)]
    return x, h0, c0, w, (lengths_for(T, B) if lengths else None)


def bidir_both_ways(kind, x, h0, c0, w, lens):
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


def layer_call(kind, args, lengths, reverse, backend):
    """(out, h_n[, c_n]) of the public function."""
    if kind == "lstm":
        out, (hn, cn) = s2s_fused.lstm_layer(args[0], (args[1], args[2]), *args[3:], lengths=lengths,
                                             reverse=reverse, backend=backend)
        return [out, hn, cn]
    out, hn = s2s_fused.gru_layer(args[0], args[1], *args[2:], lengths=lengths, reverse=reverse,
                                  reset_after=kind == "gru", backend=backend)
    return [out, hn]


def persistent_spy(monkeypatch, tri):
    calls = []
    real = tri._persistent_forward

    def spy(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(tri, "_persistent_forward", spy)
    return calls
