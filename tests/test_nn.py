"""The drop-in modules as users drive them beyond a plain forward: parametrized weights, torch.func.functional_call
and second-order gradients, each against torch.nn with the same weights."""
from __future__ import annotations

import pytest
import torch
from torch.nn.utils import parametrize
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from s2s_fused import nn as snn
from tests.helpers import assert_close

# ------------------------------------------------------------------------------------------------- helpers

KINDS = ["LSTM", "GRU", "LSTMCell", "GRUCell"]


def _pair(kind, I=5, H=6, dtype=torch.float64, **kw):
    """(torch's module, ours) with the same weights."""
    torch.manual_seed(0)
    theirs = getattr(torch.nn, kind)(I, H, dtype=dtype, **kw)
    ours = getattr(snn, kind)(I, H, dtype=dtype, **kw)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    return theirs, ours


def _inputs(kind, T=4, B=3, I=5, dtype=torch.float64):
    g = torch.Generator().manual_seed(1)
    shape = (B, I) if kind.endswith("Cell") else (T, B, I)
    return torch.randn(shape, generator=g, dtype=dtype)


def _outputs(out):
    """Every tensor a module returns, flattened: cells return h or (h, c); layers (output, h_n or (h_n, c_n))."""
    if isinstance(out, torch.Tensor):
        return [out]
    flat = []
    for o in out:
        flat += _outputs(o)
    return flat


def _loss(out):
    g = torch.Generator().manual_seed(2)
    return sum((o * torch.randn(o.shape, generator=g, dtype=o.dtype)).sum() for o in _outputs(out))


def _compare(theirs, ours, x, what, tol=1e-10):
    """Outputs and the gradients of every parameter (whatever their names: parametrized originals included)."""
    out_t, out_o = theirs(x), ours(x)
    for a, b in zip(_outputs(out_o), _outputs(out_t)):
        assert_close(a, b, tol, f"{what}: output")
    names_t = [n for n, _ in theirs.named_parameters()]
    names_o = [n for n, _ in ours.named_parameters()]
    assert names_o == names_t
    g_t = torch.autograd.grad(_loss(out_t), list(theirs.parameters()))
    g_o = torch.autograd.grad(_loss(out_o), list(ours.parameters()))
    for n, a, b in zip(names_t, g_o, g_t):
        assert_close(a, b, tol, f"{what}: grad {n}")


# ------------------------------------------------------------------------ the weights a module runs with


def _hh_name(kind):
    return "weight_hh" if kind.endswith("Cell") else "weight_hh_l0"


class _Scale(torch.nn.Module):
    def forward(self, w):
        return 0.5 * w


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("how", ["weight_norm", "orthogonal", "register_parametrization"])
def test_parametrized_weights(kind, how):
    """A parametrization computes the weight on access: the module must run with that weight (and send the
    gradient through the parametrization to its originals), as torch's does."""
    theirs, ours = _pair(kind)
    name = _hh_name(kind)
    for m in (theirs, ours):
        torch.manual_seed(3)
        if how == "weight_norm":
            torch.nn.utils.parametrizations.weight_norm(m, name)
        elif how == "orthogonal":
            torch.nn.utils.parametrizations.orthogonal(m, name)
        else:
            parametrize.register_parametrization(m, name, _Scale())
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = _inputs(kind)
    _compare(theirs, ours, x, how)


@pytest.mark.parametrize("kind", KINDS)
def test_functional_call(kind):
    """torch.func.functional_call swaps in other tensors for the call only."""
    theirs, ours = _pair(kind)
    g = torch.Generator().manual_seed(4)
    new = {n: torch.randn(p.shape, generator=g, dtype=p.dtype).requires_grad_()
           for n, p in theirs.named_parameters()}
    x = _inputs(kind)
    out_t = torch.func.functional_call(theirs, new, (x,))
    out_o = torch.func.functional_call(ours, new, (x,))
    for a, b in zip(_outputs(out_o), _outputs(out_t)):
        assert_close(a, b, 1e-10, "functional_call output")
    g_t = torch.autograd.grad(_loss(out_t), list(new.values()))
    g_o = torch.autograd.grad(_loss(out_o), list(new.values()))
    for n, a, b in zip(new, g_o, g_t):
        assert_close(a, b, 1e-10, f"functional_call grad {n}")
    # and the module's own weights are back afterwards
    for a, b in zip(_outputs(ours(x)), _outputs(theirs(x))):
        assert_close(a, b, 1e-10, "after functional_call")


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_replaced_parameter(kind):
    """Assigning a new Parameter to a weight attribute (as weight-drop / AWD-LSTM code does)."""
    theirs, ours = _pair(kind, num_layers=2, bidirectional=True)
    for m in (theirs, ours):
        w = getattr(m, "weight_hh_l1_reverse")
        setattr(m, "weight_hh_l1_reverse", torch.nn.Parameter(w.detach() * 1.5))
    _compare(theirs, ours, _inputs(kind), "replaced parameter")


# ------------------------------------------------------------------------------------- second-order gradients

DOUBLE_BACKWARD_CASES = [
    ("LSTM", dict(num_layers=2, bidirectional=True), True),
    ("GRU", dict(num_layers=2, bidirectional=True), True),
    ("LSTM", dict(num_layers=2, batch_first=True), False),
    ("GRU", dict(bidirectional=True), False),
    ("LSTMCell", {}, False),
    ("GRUCell", {}, False),
]


@pytest.mark.parametrize("kind,kw,packed", DOUBLE_BACKWARD_CASES,
                         ids=[f"{k}-{'-'.join(f'{a}{int(v)}' for a, v in kw.items())}-{'packed' if p else 'dense'}"
                              for k, kw, p in DOUBLE_BACKWARD_CASES])
def test_double_backward_matches_torch(kind, kw, packed):
    """A gradient penalty (the squared norm of the input and weight gradients, built with create_graph=True) and
    its own gradient, as torch.nn's: the fused backward must itself be differentiable."""
    theirs, ours = _pair(kind, **kw)
    x = _inputs(kind, T=5, B=3)
    if kw.get("batch_first"):
        x = x.transpose(0, 1).contiguous()
    lengths = torch.tensor([5, 2, 4])
    results = []
    for m in (theirs, ours):
        xx = x.clone().requires_grad_()
        inp = pack_padded_sequence(xx, lengths, enforce_sorted=False) if packed else xx
        out = m(inp)
        if packed:
            out = (pad_packed_sequence(out[0])[0], out[1])
        params = list(m.parameters())
        grads = torch.autograd.grad(_loss(out), [xx] + params, create_graph=True)
        penalty = sum((g * g).sum() for g in grads)
        second = torch.autograd.grad(penalty, [xx] + params)
        results.append([g.detach() for g in grads] + list(second))
    names = ["input"] + [n for n, _ in theirs.named_parameters()]
    for i, (a, b) in enumerate(zip(results[1], results[0])):
        order = "first" if i < len(names) else "second"
        assert_close(a, b, 1e-9, f"{order}-order grad of {names[i % len(names)]}")
