"""Every registered RNN and cross-entropy op checks what it is given: direct callers of torch.ops.s2s_fused.* are
users too.

Table-driven: for every op (csrc/ops.cpp; their Triton twins; the Python linear + CE ops)
a valid argument set is mutated one argument at a time: one dim more or fewer, each dim one longer and one
shorter, another dtype, the meta device (a second device on a CPU-only machine: a call with a meta argument
dispatches to the fake kernel, so it tests the Python twin of the checks), and per op its non-tensor arguments.
Each mutation must raise the same exception type and message from the C++ op, from its Triton twin and from its
fake kernel (what torch.compile meets at trace time), or, where the schema allows it (VALID), succeed on all of
them with the same result. A Triton call that raises must not have launched a kernel, and its tensor arguments sit
inside NaN-guarded buffers, so a write past them shows. Valid edge cases (B = 0, T = 0, I = 0, H = 0 or 1,
V = 1) run everywhere with the heap NaN-poisoned and must agree; the issue's reproductions are tests of their own.
"""
from __future__ import annotations

import importlib
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import s2s_fused
from s2s_fused import reference
from s2s_fused.backend import is_available, triton_interpret

from helpers import poison_heap

ops = torch.ops.s2s_fused
# The Triton twins are compared on CPU tensors, so under the interpreter only: on a GPU machine (no interpreter)
# their checks are the same device-agnostic Python functions, covered by the CPU runs.
HAS_TRITON = is_available("triton") and triton_interpret()
# The modules whose kernels the Triton twins of these ops launch (the launch log below spies on them).
TRITON_MODULES = tuple(importlib.import_module(f"s2s_fused.triton.{name}")
                       for name in ("rnn_cell", "rnn_layer", "cross_entropy", "attention")) if HAS_TRITON else ()

pytestmark = pytest.mark.skipif(not is_available("cpu"), reason="extension not built")

B, T, I, H, V = 3, 4, 2, 5, 7


def _randn(*shape, dtype=torch.float32):
    return torch.randn(*shape, dtype=torch.float64).to(dtype)


def _weights(gates, I=I, H=H, bias=True):
    w = [_randn(gates * H, I) * 0.5, _randn(gates * H, H) * 0.5]
    return w + ([_randn(gates * H), _randn(gates * H)] if bias else [None, None])


def _lengths(B=B, T=T):
    return torch.tensor([T, max(T - 2, 0), max(T - 1, 0)][:B] + [T] * max(0, B - 3), dtype=torch.int64)


# ------------------------------------------------------------------------------------------ valid arguments
# Each maker returns a valid positional argument list for its op at the given sizes; the backward ops get the
# saved tensors of the matching C++ forward op.


def lstm_cell_forward(B=B, I=I, H=H):
    return [_randn(B, I), _randn(B, H), _randn(B, H), *_weights(4, I, H)]


def lstm_cell_backward(B=B, I=I, H=H):
    x, h, c, w_ih, w_hh, b_ih, b_hh = lstm_cell_forward(B, I, H)
    h1, c1, ws = ops.lstm_cell_forward(x, h, c, w_ih, w_hh, b_ih, b_hh)
    return [_randn(B, H), _randn(B, H), x, h, c, w_ih, w_hh, ws, c1, [True] * 6]


def gru_cell_forward(B=B, I=I, H=H, reset_after=True):
    return [_randn(B, I), _randn(B, H), *_weights(3, I, H), reset_after]


def gru_cell_backward(B=B, I=I, H=H, reset_after=True):
    x, h, w_ih, w_hh, b_ih, b_hh, ra = gru_cell_forward(B, I, H, reset_after)
    _, ws = ops.gru_cell_forward(x, h, w_ih, w_hh, b_ih, b_hh, ra)
    return [_randn(B, H), x, h, w_ih, w_hh, ws, ra, [True] * 6]


def lstm_layer_forward(T=T, B=B, I=I, H=H, reverse=False, P=None):
    """P: a projected LSTM's (w_hr (P, H) appended; h0 (B, P), w_hh (4H, P))."""
    if P is None:
        return [_randn(T, B, I), _randn(B, H), _randn(B, H), *_weights(4, I, H), _lengths(B, T), reverse]
    w = _weights(4, I, H)
    w[1] = _randn(4 * H, P) * 0.5
    return [_randn(T, B, I), _randn(B, P), _randn(B, H), *w, _lengths(B, T), reverse, _randn(P, H) * 0.5]


def lstm_layer_backward(T=T, B=B, I=I, H=H, reverse=False, P=None):
    x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths, rev, *w_hr = lstm_layer_forward(T, B, I, H, reverse, P)
    _, _, _, hs, cs, ws = ops.lstm_layer_forward(x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths, rev, *w_hr)
    W = H if P is None else P
    return [_randn(T, B, W), _randn(B, W), _randn(B, H), x, w_ih, w_hh, hs, cs, ws, lengths, rev, *w_hr]


def gru_layer_forward(T=T, B=B, I=I, H=H, reverse=False, reset_after=True):
    return [_randn(T, B, I), _randn(B, H), *_weights(3, I, H), _lengths(B, T), reverse, reset_after]


def gru_layer_backward(T=T, B=B, I=I, H=H, reverse=False, reset_after=True):
    x, h0, w_ih, w_hh, b_ih, b_hh, lengths, rev, ra = gru_layer_forward(T, B, I, H, reverse, reset_after)
    _, _, hs, ws = ops.gru_layer_forward(x, h0, w_ih, w_hh, b_ih, b_hh, lengths, rev, ra)
    return [_randn(T, B, H), _randn(B, H), x, w_ih, w_hh, hs, ws, lengths, rev, ra]


def lstm_layer_bidir_forward(T=T, B=B, I=I, H=H):
    return [_randn(T, B, I), _randn(2, B, H), _randn(2, B, H), *_weights(4, I, H), *_weights(4, I, H),
            _lengths(B, T)]


def lstm_layer_bidir_backward(T=T, B=B, I=I, H=H):
    a = lstm_layer_bidir_forward(T, B, I, H)
    _, _, _, hs, cs, ws = ops.lstm_layer_bidir_forward(*a)
    x, (w_ih, w_hh), (w_ih_r, w_hh_r), lengths = a[0], a[3:5], a[7:9], a[11]
    return [_randn(T, B, 2 * H), _randn(2, B, H), _randn(2, B, H), x, w_ih, w_hh, w_ih_r, w_hh_r, hs, cs, ws,
            lengths]


def gru_layer_bidir_forward(T=T, B=B, I=I, H=H, reset_after=True):
    return [_randn(T, B, I), _randn(2, B, H), *_weights(3, I, H), *_weights(3, I, H), _lengths(B, T), reset_after]


def gru_layer_bidir_backward(T=T, B=B, I=I, H=H, reset_after=True):
    a = gru_layer_bidir_forward(T, B, I, H, reset_after)
    _, _, hs, ws = ops.gru_layer_bidir_forward(*a)
    x, (w_ih, w_hh), (w_ih_r, w_hh_r), lengths = a[0], a[2:4], a[6:8], a[10]
    return [_randn(T, B, 2 * H), _randn(2, B, H), x, w_ih, w_hh, w_ih_r, w_hh_r, hs, ws, lengths, reset_after]


def _ce_inputs(B=B, T=T, V=V, flat=False):
    # targets below V - 1, so that one class fewer is still a valid call
    logits = _randn(B * T, V) if flat else _randn(B, T, V)
    target = torch.randint(0, max(V - 1, 1), logits.shape[:-1])
    if target.numel():
        target.view(-1)[0] = -100
    valid_len = None if flat else _lengths(B, T)
    return logits, target, valid_len


def masked_ce_forward(B=B, T=T, V=V, flat=False):
    logits, target, valid_len = _ce_inputs(B, T, V, flat)
    return [logits, target, valid_len, -100, 0.1]


def masked_ce_backward(B=B, T=T, V=V, flat=False):
    logits, target, valid_len = _ce_inputs(B, T, V, flat)
    _, lse = ops.masked_ce_forward(logits, target, valid_len, -100, 0.1)
    return [_randn(*target.shape), logits, target, valid_len, lse, -100, 0.1]


S_ATT, HQ, DV = 4, 3, 6


def additive_attention_forward(B=B, S=S_ATT, H=H, Hq=HQ, Dv=DV, R=1):
    """R*B query rows over B source rows."""
    valid_len = torch.tensor([S, 0, 1][:B] + [S] * max(0, B - 3), dtype=torch.int64).clamp(max=S)
    return [_randn(R * B, Hq), _randn(B, S, H), _randn(B, S, Dv), _randn(H, Hq) * 0.5, _randn(H), valid_len]


def additive_attention_backward(B=B, S=S_ATT, H=H, Hq=HQ, Dv=DV, R=1):
    args = additive_attention_forward(B, S, H, Hq, Dv, R)
    ctx, w, qp = ops.additive_attention_forward(*args)
    return [_randn(R * B, Dv), _randn(R * B, S), *args, qp]


def dot_attention_forward(B=B, S=S_ATT, H=H, Hq=HQ, Dv=DV, R=1):
    """R*B query rows over B source rows; keys as wide as the query (Hq unused)."""
    valid_len = torch.tensor([S, 0, 1][:B] + [S] * max(0, B - 3), dtype=torch.int64).clamp(max=S)
    return [_randn(R * B, H), _randn(B, S, H), _randn(B, S, Dv), valid_len]


def dot_attention_backward(B=B, S=S_ATT, H=H, Hq=HQ, Dv=DV, R=1):
    args = dot_attention_forward(B, S, H, Hq, Dv, R)
    return [_randn(R * B, Dv), _randn(R * B, S), *args]


MAKERS = {f.__name__: f for f in (
    lstm_cell_forward, lstm_cell_backward, gru_cell_forward, gru_cell_backward, lstm_layer_forward,
    lstm_layer_backward, gru_layer_forward, gru_layer_backward, lstm_layer_bidir_forward, lstm_layer_bidir_backward,
    gru_layer_bidir_forward, gru_layer_bidir_backward, masked_ce_forward, masked_ce_backward,
    additive_attention_forward, additive_attention_backward, dot_attention_forward, dot_attention_backward)}
# The inference ops take the training forward's arguments.
MAKERS["lstm_layer_inference"] = lstm_layer_forward
MAKERS["gru_layer_inference"] = gru_layer_forward
TRITON_TWINS = {"lstm_cell_forward", "lstm_cell_backward", "gru_cell_forward", "gru_cell_backward",
                "lstm_layer_forward", "lstm_layer_backward", "gru_layer_forward", "gru_layer_backward",
                "masked_ce_forward", "masked_ce_backward", "additive_attention_forward",
                "additive_attention_backward", "dot_attention_forward", "dot_attention_backward"}
# The RNN, cross-entropy and attention ops of csrc/ops.cpp (beam_search_topk has its own tests).
CPP_OPS = sorted(MAKERS)
# The LSTM layer ops again with a projection (w_hr, torch's proj_size): P = 2 < H.
PROJ_OPS = ("lstm_layer_forward", "lstm_layer_inference", "lstm_layer_backward")
PROJ_P = 2


def test_every_rnn_and_ce_op_is_covered():
    schemas = {s.name.split("::")[1] for s in torch._C._jit_get_all_schemas() if s.name.startswith("s2s_fused::")}
    covered = set(CPP_OPS) | {n + "_triton" for n in TRITON_TWINS} | {"beam_search_topk", "beam_search_topk_triton"}
    assert schemas - covered - set(LINEAR_MAKERS) == set()
    if HAS_TRITON:
        assert {n + "_triton" for n in TRITON_TWINS} <= schemas


def _arg_names(name):
    return [a.name for a in getattr(ops, name).default._schema.arguments]


# ---------------------------------------------------------------------------------------------- mutations


def _resized(t, d, delta):
    shape = list(t.shape)
    shape[d] += delta
    if t.is_floating_point():
        return _randn(*shape, dtype=t.dtype)
    return torch.randint(0, 2, shape, dtype=t.dtype)


def _other_dtype(t, arg):
    if t.is_floating_point():
        return t.to(torch.float64 if t.dtype == torch.float32 else torch.float32)
    if arg == "lengths":  # any integer dtype will do
        return t.to(torch.float32)
    return t.to(torch.int32)


def tensor_mutations(t, arg):
    """(id, replacement) pairs for one tensor argument."""
    out = [("dim+1", t.unsqueeze(0))]
    if t.dim() > 0:
        out.append(("dim-1", t[0].clone()))
    for d in range(t.dim()):
        out.append((f"size{d}+1", _resized(t, d, 1)))
        if t.shape[d] > 0:
            out.append((f"size{d}-1", _resized(t, d, -1)))
    out.append(("dtype", _other_dtype(t, arg)))
    if arg == "lengths":
        out.append(("int32", t.to(torch.int32)))
    if t.dim() > 0 and t.numel() > 1:  # any strides must work: a strided view of a wider tensor
        wide = torch.cat([t.unsqueeze(-1), torch.full_like(t, float("nan") if t.is_floating_point() else -9)
                          .unsqueeze(-1)], -1)
        out.append(("strided", wide[..., 0]))
    out.append(("meta", t.to("meta")))
    return out


# Mutations the schema allows: (op, argument, mutation). The call must then succeed everywhere with the same
# result: a sequence length or class count of any size where nothing else carries it, float64 logits (the
# forward takes any float dtype), and (_is_valid) strided tensors and lengths of any integer dtype.
VALID = {
    ("lstm_layer_forward", "input", "size0+1"), ("lstm_layer_forward", "input", "size0-1"),
    ("gru_layer_forward", "input", "size0+1"), ("gru_layer_forward", "input", "size0-1"),
    ("lstm_layer_inference", "input", "size0+1"), ("lstm_layer_inference", "input", "size0-1"),
    ("gru_layer_inference", "input", "size0+1"), ("gru_layer_inference", "input", "size0-1"),
    ("lstm_layer_bidir_forward", "input", "size0+1"), ("lstm_layer_bidir_forward", "input", "size0-1"),
    ("gru_layer_bidir_forward", "input", "size0+1"), ("gru_layer_bidir_forward", "input", "size0-1"),
    ("masked_ce_forward", "logits", "size2+1"), ("masked_ce_forward", "logits", "size2-1"),
    ("masked_ce_forward", "logits", "dtype"),
    ("masked_ce_backward", "logits", "size2+1"), ("masked_ce_backward", "logits", "size2-1"),
    # Dv (values' last dim) is carried by values alone in the forward; the backward's grad_context carries it too
    ("additive_attention_forward", "values", "size2+1"), ("additive_attention_forward", "values", "size2-1"),
    ("dot_attention_forward", "values", "size2+1"), ("dot_attention_forward", "values", "size2-1"),
}


def _is_valid(op, arg, mutation):
    return mutation in ("strided", "int32") or (op, arg, mutation) in VALID


def _cases():
    """(op, case id, args, expected valid) for every op and mutation; sizes and seeds fixed per case."""
    out = []
    for op, kw, prefix in [(op, {}, "") for op in CPP_OPS] + [(op, {"P": PROJ_P}, "proj-") for op in PROJ_OPS]:
        torch.manual_seed(0)
        base = MAKERS[op](**kw)
        names = _arg_names(op)
        for i, (arg, value) in enumerate(zip(names, base)):
            if isinstance(value, torch.Tensor):
                for mid, repl in tensor_mutations(value, arg):
                    args = list(base)
                    args[i] = repl
                    out.append((op, f"{prefix}{arg}-{mid}", args, _is_valid(op, arg, mid)))
        if op.endswith("_backward") and op.startswith(("lstm_cell", "gru_cell")):
            for n in (5, 7):
                args = list(base)
                args[-1] = [True] * n
                out.append((op, f"grad_mask-len{n}", args, False))
        if op.startswith("masked_ce"):
            for ls in (1.5, -0.1, float("nan")):
                args = list(base)
                args[-1] = ls
                out.append((op, f"label_smoothing={ls}", args, False))
    return out


CASES = _cases()


# ------------------------------------------------------------------------------------------------ running


class _Guarded:
    """Tensor arguments copied into the middle of NaN-filled (integers: -7777) buffers; `intact()` says whether
    the guard regions and the arguments themselves are unchanged after a call."""

    GUARD = 64

    def __init__(self, args):
        self.args, self.checks = [], []
        for a in args:
            if isinstance(a, torch.Tensor) and a.device.type == "cpu" and a.is_contiguous():
                fill = float("nan") if a.is_floating_point() else -7777
                buf = torch.full((a.numel() + 2 * self.GUARD,), fill, dtype=a.dtype)
                view = buf[self.GUARD:self.GUARD + a.numel()].view(a.shape)
                view.copy_(a)
                self.checks.append((buf, buf.clone()))
                self.args.append(view)
            else:
                self.args.append(a)

    def intact(self):
        return all(torch.equal(torch.nan_to_num(b, nan=1234.5), torch.nan_to_num(c, nan=1234.5))
                   if b.is_floating_point() else torch.equal(b, c) for b, c in self.checks)


class _LaunchLog:
    """Every Triton kernel the launchers start (the module-level `*_kernel` JIT functions), recorded by name."""

    def __init__(self, monkeypatch):
        self.launched = []
        for mod in TRITON_MODULES:
            for name in dir(mod):
                fn = getattr(mod, name)
                if name.endswith("_kernel") and hasattr(fn, "run"):
                    monkeypatch.setattr(mod, name, self._spy(name, fn))

    def _spy(self, name, fn):
        log = self.launched

        class Spy:
            def __getitem__(self, grid):
                launch = fn[grid]

                def run(*a, **k):
                    log.append(name)
                    return launch(*a, **k)
                return run
        return Spy()


def _call(fn, args):
    """('ok', outputs) or (exception type, message)."""
    try:
        out = fn(*args)
    except Exception as e:  # noqa: BLE001 - the type is what the test compares
        return type(e), str(e)
    return "ok", out if isinstance(out, tuple) else (out,)


def _call_fake(name, args):
    with FakeTensorMode(allow_non_fake_inputs=False) as mode:
        fake = [mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args]
        return _call(getattr(ops, name), fake)


def _active_workspace(op, args, outs):
    """The layer forward ops' workspace (the activated gates backward reads) holds nothing at the steps `lengths`
    leaves out: the C++ ops zero those, the Triton ones leave what they computed. Compare the active steps only."""
    names = _arg_names(op)
    if op not in ("lstm_layer_forward", "gru_layer_forward") or args[names.index("lengths")] is None:
        return outs
    lengths = args[names.index("lengths")]
    T = args[0].shape[0]
    active = torch.arange(T).unsqueeze(1) < lengths.unsqueeze(0)
    return outs[:-1] + (outs[-1] * active.unsqueeze(2).to(outs[-1].dtype),)


def _same_outputs(a, b, what):
    assert len(a) == len(b), what
    for i, (x, y) in enumerate(zip(a, b)):
        assert (x.shape, x.dtype) == (y.shape, y.dtype), f"{what}: output {i}"
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-4, msg=lambda m: f"{what}: output {i}: {m}")


@pytest.mark.parametrize("op,case,args,valid", CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_wrong_input_same_error_everywhere(op, case, args, valid, monkeypatch):
    cpp = _call(getattr(ops, op), args)
    if valid:
        assert cpp[0] == "ok", f"{op} {case}: the schema allows this call, the C++ op raised {cpp}"
    else:
        assert cpp[0] != "ok", f"{op} {case}: the C++ op accepted a bad call"
        assert cpp[0] is RuntimeError and not cpp[1].startswith("Could not run"), cpp
    has_meta = any(isinstance(a, torch.Tensor) and a.device.type == "meta" for a in args)
    if not has_meta:  # (meta arguments dispatch to the fake kernel already)
        fake = _call_fake(op, args)
        if valid:
            assert fake[0] == "ok", f"fake kernel: {fake}"
            assert [t.shape for t in fake[1]] == [t.shape for t in cpp[1]]
        else:
            assert fake == cpp, f"fake kernel: {fake[1]!r}\nC++ op:      {cpp[1]!r}"
    if op not in TRITON_TWINS or not HAS_TRITON:
        return
    log = _LaunchLog(monkeypatch)
    guarded = _Guarded(args)
    tri = _call(getattr(ops, op + "_triton"), guarded.args)
    assert guarded.intact(), f"{op}_triton {case}: wrote outside its outputs (or into its inputs)"
    if valid:
        assert tri[0] == "ok", f"Triton op: {tri}"
        if not has_meta:
            _same_outputs(_active_workspace(op, args, tri[1]), _active_workspace(op, args, cpp[1]), f"{op} {case}")
    else:
        assert tri == cpp, f"Triton op: {tri[1]!r}\nC++ op:     {cpp[1]!r}"
        assert log.launched == [], f"{op}_triton {case}: launched {log.launched} before raising"


# ------------------------------------------------------------------------------------- linear + CE ops
# The chunked linear + cross-entropy ops are Python custom ops with no C++ twin; their `backend` argument picks
# the CE ops the chunks run, so the twins compared are backend="cpu" and backend="triton" (and the fake kernel).

N_ROWS = 7


def _linear_inputs():
    hidden, weight, bias = _randn(N_ROWS, H), _randn(V, H) * 0.5, _randn(V)
    target = torch.randint(0, V - 1, (N_ROWS,))
    target[3] = -100
    return hidden, weight, bias, target


def linear_masked_ce_forward(backend="cpu"):
    hidden, weight, bias, target = _linear_inputs()
    return [hidden, weight, bias, target, -100, 0.1, 3, backend]


def linear_masked_ce_backward(backend="cpu"):
    hidden, weight, bias, target = _linear_inputs()
    _, lse = ops.linear_masked_ce_forward(hidden, weight, bias, target, -100, 0.1, 3, "cpu")
    return [_randn(N_ROWS), hidden, weight, bias, target, lse, -100, 0.1, 3, backend]


def linear_masked_ce_forward_with_grad(backend="cpu"):
    hidden, weight, bias, target = _linear_inputs()
    return [hidden, weight, bias, target, torch.tensor(0.25), -100, 0.1, 3, backend]


LINEAR_MAKERS = {f.__name__: f for f in (linear_masked_ce_forward, linear_masked_ce_backward,
                                         linear_masked_ce_forward_with_grad)}


def _linear_cases():
    out = []
    for op, make in LINEAR_MAKERS.items():
        torch.manual_seed(5)
        base = make()
        names = _arg_names(op)
        for i, (arg, value) in enumerate(zip(names, base)):
            if isinstance(value, torch.Tensor):
                for mid, repl in tensor_mutations(value, arg):
                    args = list(base)
                    args[i] = repl
                    out.append((op, f"{arg}-{mid}", args, mid == "strided"))
        for arg, bad in (("label_smoothing", 1.5), ("chunk_size", 0), ("backend", "reference")):
            args = list(base)
            args[names.index(arg)] = bad
            out.append((op, f"{arg}={bad}", args, False))
        for row, v in ((5, V), (0, -1)):
            args = list(base)
            t = names.index("target")
            args[t] = base[t].clone()
            args[t][row] = v
            out.append((op, f"target[{row}]={v}", args, False))
    return out


LINEAR_CASES = _linear_cases()


@pytest.mark.parametrize("op,case,args,valid", LINEAR_CASES, ids=[f"{c[0]}-{c[1]}" for c in LINEAR_CASES])
def test_linear_ce_ops_wrong_input(op, case, args, valid, monkeypatch):
    cpu = _call(getattr(ops, op), args)
    if valid:
        assert cpu[0] == "ok", cpu
    else:
        assert cpu[0] is RuntimeError, cpu
    has_meta = any(isinstance(a, torch.Tensor) and a.device.type == "meta" for a in args)
    values_only = case.startswith("target[")  # the fake kernels read no values
    if not has_meta and not values_only:
        fake = _call_fake(op, args)
        assert fake[0] == cpu[0] and (valid or fake == cpu), f"fake kernel: {fake[1]!r}\nop: {cpu[1]!r}"
    if not HAS_TRITON or case.startswith("backend="):
        return
    log = _LaunchLog(monkeypatch)
    guarded = _Guarded(args[:-1] + ["triton"])
    tri = _call(getattr(ops, op), guarded.args)
    assert guarded.intact()
    if valid:
        assert tri[0] == "ok", tri
        _same_outputs(tri[1], cpu[1], f"{op} {case}")
    else:
        assert tri == cpu, f"backend triton: {tri[1]!r}\nbackend cpu:     {cpu[1]!r}"
        assert log.launched == []


# ------------------------------------------------------------------------------------------- value checks
# The cross-entropy ops read valid_len and the targets: out of range, the CPU op raises before any kernel runs
# (reading CPU values costs no device sync), and so does the Triton op on CPU tensors.


def _ce_value_cases():
    out = []
    for op in ("masked_ce_forward", "masked_ce_backward"):
        torch.manual_seed(1)
        base = MAKERS[op]()
        li, ti, vi = (0, 1, 2) if op == "masked_ce_forward" else (1, 2, 3)
        for b, v in ((1, T + 1), (2, -1), (0, 10**12)):
            args = list(base)
            args[vi] = base[vi].clone()
            args[vi][b] = v
            out.append((op, f"valid_len[{b}]={v}", args, False))
        for pos, v in (((2, 1), V), ((0, 3), -1), ((2, 2), -101)):
            args = list(base)
            args[ti] = base[ti].clone()
            args[ti][pos] = v
            out.append((op, f"target{list(pos)}={v}", args, False))
        args = list(base)  # beyond valid_len[1] = T - 2: masked, never read
        args[ti] = base[ti].clone()
        args[ti][1, T - 1] = 10**6
        out.append((op, "masked-target-out-of-range", args, True))
        flat = MAKERS[op](flat=True)
        flat[ti] = flat[ti].clone()
        flat[ti][5] = V + 3
        out.append((op, "flat-target[5]=V+3", flat, False))
    return out


VALUE_CASES = _ce_value_cases()


@pytest.mark.parametrize("op,case,args,valid", VALUE_CASES, ids=[f"{c[0]}-{c[1]}" for c in VALUE_CASES])
def test_out_of_range_values_same_error(op, case, args, valid, monkeypatch):
    cpp = _call(getattr(ops, op), args)
    assert (cpp[0] == "ok") == valid, cpp
    if not valid:
        assert cpp[0] is RuntimeError, cpp
    if not HAS_TRITON:
        return
    log = _LaunchLog(monkeypatch)
    guarded = _Guarded(args)
    tri = _call(getattr(ops, op + "_triton"), guarded.args)
    assert guarded.intact()
    if valid:
        assert tri[0] == "ok", tri
        _same_outputs(tri[1], cpp[1], f"{op} {case}")
    else:
        assert tri == cpp, f"Triton op: {tri[1]!r}\nC++ op:     {cpp[1]!r}"
        assert log.launched == []


# ------------------------------------------------------------------------------------- valid edge cases


def _reference_forward(op, args):
    """The reference backend's outputs for a forward op's leading outputs, or None (backward ops)."""
    R = reference
    if op == "lstm_cell_forward":
        x, h, c, w_ih, w_hh, b_ih, b_hh = args
        return R.lstm_cell(x, (h, c), w_ih, w_hh, b_ih, b_hh)
    if op == "gru_cell_forward":
        return (R.gru_cell(*args[:6], reset_after=args[6]),)
    if op in ("lstm_layer_forward", "lstm_layer_inference"):
        x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths, rev, *w_hr = args
        out, (h_n, c_n) = R.lstm_layer(x, (h0, c0), w_ih, w_hh, b_ih, b_hh, lengths=lengths, reverse=rev,
                                       w_hr=w_hr[0] if w_hr else None)
        return out, h_n, c_n
    if op in ("gru_layer_forward", "gru_layer_inference"):
        x, h0, w_ih, w_hh, b_ih, b_hh, lengths, rev, ra = args
        return R.gru_layer(x, h0, w_ih, w_hh, b_ih, b_hh, lengths=lengths, reverse=rev, reset_after=ra)
    if op == "masked_ce_forward":
        logits, target, valid_len, ii, ls = args
        return (R.masked_softmax_cross_entropy(logits, target, valid_len, ii, ls, "none"),)
    if op == "additive_attention_forward":
        return R.additive_attention(*args)
    if op == "dot_attention_forward":
        return R.dot_attention(*args)
    return None


_CELL_SIZES = [dict(B=0), dict(I=0), dict(H=1), dict(H=0), dict(B=1, I=1, H=1)]
_LAYER_SIZES = [dict(T=0), dict(B=0), dict(I=0), dict(H=1), dict(H=0), dict(T=1, B=1, I=1, H=1)]
_CE_SIZES = [dict(B=0), dict(T=0), dict(V=1), dict(B=1, T=1, V=1), dict(B=0, flat=True), dict(V=1, flat=True)]
_ATT_SIZES = [dict(B=0), dict(S=1), dict(H=0), dict(Hq=0), dict(Dv=0), dict(B=1, S=1, H=1, Hq=1, Dv=1), dict(R=2),
              dict(B=1, S=1, R=3), dict(H=0, R=4), dict(Dv=0, R=2)]
# Projected LSTM layers: P = 1 and P = H - 1, and empty sizes.
_PROJ_SIZES = [dict(T=0, P=2), dict(B=0, P=2), dict(I=0, P=2), dict(H=1, P=1), dict(H=2, P=1), dict(H=4, P=3),
               dict(T=1, B=1, I=1, H=3, P=1)]
EDGE_CASES = [(op, sizes) for op in CPP_OPS
              for sizes in (_CELL_SIZES if "_cell_" in op else _CE_SIZES if op.startswith("masked_ce")
                            else _ATT_SIZES if "_attention_" in op else _LAYER_SIZES)]
EDGE_CASES += [(op, sizes) for op in PROJ_OPS for sizes in _PROJ_SIZES]


@pytest.mark.parametrize("op,sizes", EDGE_CASES, ids=[f"{o}-{'-'.join(f'{k}={v}' for k, v in s.items())}"
                                                      for o, s in EDGE_CASES])
def test_valid_edge_cases_agree(op, sizes, monkeypatch):
    """Empty and size-1 problems are valid calls: every implementation returns the same finite result (no output
    left unwritten: the heap is NaN-poisoned first), and the fake kernel the same shapes."""
    torch.manual_seed(2)
    args = MAKERS[op](**sizes)
    poison_heap(4096)
    cpp = _call(getattr(ops, op), args)
    assert cpp[0] == "ok", cpp
    for i, t in enumerate(cpp[1]):
        assert torch.isfinite(t).all(), f"output {i} of {op}{sizes} is not finite: {t}"
    fake = _call_fake(op, args)
    assert fake[0] == "ok", fake
    assert [t.shape for t in fake[1]] == [t.shape for t in cpp[1]]
    assert [t.dtype for t in fake[1]] == [t.dtype for t in cpp[1]]
    ref = _reference_forward(op, args)
    if ref is not None:
        _same_outputs(tuple(cpp[1][:len(ref)]), tuple(ref), f"{op}{sizes} vs reference")
    if op in TRITON_TWINS and HAS_TRITON:
        guarded = _Guarded(args)
        poison_heap(4096)
        tri = _call(getattr(ops, op + "_triton"), guarded.args)
        assert guarded.intact()
        assert tri[0] == "ok", tri
        _same_outputs(_active_workspace(op, args, tri[1]), _active_workspace(op, args, cpp[1]), f"{op}{sizes}")


# ------------------------------------------------------------------------------------- reported failures


@pytest.mark.parametrize("suffix", ["", "_triton"])
def test_cell_backward_checks_saved_tensors(suffix):
    """lstm_cell_backward took a c1 of shape (1, H) for B = 3 and read past its end (the result changed with the
    memory behind it); a float64 workspace gave NaN; gru_cell_backward likewise."""
    if suffix and not HAS_TRITON:
        pytest.skip("triton not available")
    lstm_bwd, gru_bwd = getattr(ops, "lstm_cell_backward" + suffix), getattr(ops, "gru_cell_backward" + suffix)
    torch.manual_seed(3)
    a = lstm_cell_backward()
    c1 = a[8]
    with pytest.raises(RuntimeError, match=r"^c1: expected shape \[3, 5\] \(as hx\), got \[1, 5\]$"):
        lstm_bwd(*a[:8], c1[:1].clone(), a[9])
    with pytest.raises(RuntimeError, match=r"^workspace: expected dtype Float \(as input\), got Double$"):
        lstm_bwd(*a[:7], a[7].double(), *a[8:])
    with pytest.raises(RuntimeError, match=r"^cx: expected shape \[3, 5\] \(as hx\), got \[3, 4\]$"):
        lstm_bwd(*a[:4], a[4][:, :4].clone(), *a[5:])
    g = gru_cell_backward()
    with pytest.raises(RuntimeError, match=r"^workspace: expected dtype Float \(as input\), got Double$"):
        gru_bwd(*g[:5], g[5].double(), *g[6:])
    with pytest.raises(RuntimeError, match=r"^workspace: expected shape \[3, 20\], got \[1, 20\]$"):
        gru_bwd(*g[:5], g[5][:1].clone(), *g[6:])


@pytest.mark.skipif(not HAS_TRITON, reason="triton not available")
def test_triton_cell_forward_with_short_hx_raises_instead_of_corrupting_the_heap():
    """lstm_cell_forward_triton with an hx of B - 1 rows wrote past its outputs (heap corruption, abort): run in a
    child process, so that on a build without the check this test fails instead of taking pytest down."""
    code = textwrap.dedent("""
        import torch, s2s_fused
        B, I, H = 67, 3, 70
        x, h, c = torch.randn(B, I), torch.randn(B - 1, H), torch.randn(B, H)
        w_ih, w_hh = torch.randn(4 * H, I), torch.randn(4 * H, H)
        for _ in range(20):
            try:
                torch.ops.s2s_fused.lstm_cell_forward_triton(x, h, c, w_ih, w_hh, None, None)
            except RuntimeError as e:
                msg = str(e)
            else:
                msg = "no error"
            big = [torch.empty(B * H) for _ in range(64)]
            del big
        print(msg)
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                       env=_child_env())
    assert r.returncode == 0, f"exit {r.returncode}: {r.stderr[-2000:]}"
    assert r.stdout.strip().splitlines()[-1] == "hx: expected size 67 in dim 0, got shape [66, 70]"


def _child_env():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return dict(os.environ, TRITON_INTERPRET=os.environ.get("TRITON_INTERPRET", "1"),
                PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))


def _linear_backends():
    return ["reference", "cpu"] + (["triton"] if HAS_TRITON else [])


@pytest.mark.parametrize("backend", _linear_backends())
@pytest.mark.parametrize("bad", [T + 1, -1])
def test_linear_ce_valid_len_out_of_range_raises_as_the_reference(backend, bad):
    """linear_masked_cross_entropy on cpu / triton accepted valid_len > T or < 0; the reference raises."""
    h, w = torch.randn(B, T, H), torch.randn(V, H)
    target = torch.randint(0, V, (B, T))
    valid_len = torch.tensor([T, bad, 1])
    for grad in (False, True):
        with pytest.raises(ValueError) as e:
            s2s_fused.linear_masked_cross_entropy(h.clone().requires_grad_(grad), w, target, valid_len,
                                                  backend=backend)
        assert str(e.value) == f"valid_len: expected values in [0, T={T}], got {bad} at index 1"


@pytest.mark.parametrize("backend", [b for b in _linear_backends() if b != "reference"])
def test_linear_ce_valid_len_out_of_range_is_never_silent_under_compile(backend):
    """Under torch.compile valid_len's values are not read on the host: the rows of the bad sequence get a target
    the CE ops reject (on a GPU: NaN rows), never a silently clamped valid_len."""
    h, w = torch.randn(B, T, H), torch.randn(V, H)
    target = torch.randint(0, V, (B, T))
    torch._dynamo.reset()
    f = torch.compile(lambda *a: s2s_fused.linear_masked_cross_entropy(*a, backend=backend, reduction="none"),
                      fullgraph=True, backend="aot_eager")
    assert f(h, w, target, torch.tensor([T, 2, 1])).shape == (B, T)
    with pytest.raises(RuntimeError, match=rf"got {V} at flat position {T}$"):
        f(h, w, target, torch.tensor([T, T + 1, 1]))


@pytest.mark.parametrize("backend", _linear_backends())
@pytest.mark.parametrize("reduction", ["mean", "sum", "none", "per_sequence"])
@pytest.mark.parametrize("bias", [True, False])
def test_linear_ce_with_zero_hidden_size(backend, reduction, bias):
    """H = 0 is valid input: the logits are the bias alone (zeros without one); cpu and triton raised 'cannot
    reshape tensor of 0 elements'."""
    torch.manual_seed(4)
    h = torch.randn(B, T, 0, dtype=torch.float64, requires_grad=True)
    w = torch.randn(V, 0, dtype=torch.float64, requires_grad=True)
    b = torch.randn(V, dtype=torch.float64, requires_grad=True) if bias else None
    target = torch.randint(0, V, (B, T))
    valid_len = torch.tensor([T, 2, 0])
    out = s2s_fused.linear_masked_cross_entropy(h, w, target, valid_len, bias=b, reduction=reduction,
                                                backend=backend)
    logits = (b if bias else torch.zeros(V, dtype=torch.float64)).expand(B, T, V)
    expected = reference.masked_softmax_cross_entropy(logits, target, valid_len, -100, 0.0, reduction)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    out.sum().backward()
    assert h.grad.shape == h.shape and w.grad.shape == w.shape
    if bias:
        ref_b = b.detach().clone().requires_grad_()
        reference.masked_softmax_cross_entropy(ref_b.expand(B, T, V), target, valid_len, -100, 0.0,
                                               reduction).sum().backward()
        torch.testing.assert_close(b.grad, ref_b.grad, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("suffix", ["", "_triton"])
def test_compile_reports_a_bad_call_at_trace_time(suffix):
    """torch.compile runs the fake kernels while tracing: the same message, before anything runs."""
    if suffix and not HAS_TRITON:
        pytest.skip("triton not available")
    op = getattr(ops, "lstm_cell_forward" + suffix)
    x, h, c, w_ih, w_hh, b_ih, b_hh = lstm_cell_forward()
    torch._dynamo.reset()
    f = torch.compile(lambda *a: op(*a)[0] * 2, fullgraph=True, backend="aot_eager")
    with pytest.raises(Exception, match=r"hx: expected size 3 in dim 0, got shape \[2, 5\]"):
        f(x, h[:2].clone(), c, w_ih, w_hh, b_ih, b_hh)
    torch.testing.assert_close(f(x, h, c, w_ih, w_hh, b_ih, b_hh), op(x, h, c, w_ih, w_hh, b_ih, b_hh)[0] * 2)
