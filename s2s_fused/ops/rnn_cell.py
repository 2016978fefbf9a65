"""Fused LSTM / GRU cells: one recurrent step, forward and backward.

Public: :func:`lstm_cell`, :func:`gru_cell`. The ops ``torch.ops.s2s_fused.{lstm,gru}_cell_{forward,backward}``
(schemas and CPU / CUDA kernels in csrc/) and their Triton twins ``..._triton`` (kernels in
s2s_fused/triton/rnn_cell.py) get their fake kernels and autograd here; the ``reference`` backend is plain torch
(s2s_fused.reference). Shapes in the notation of s2s_fused.ops: input (B, I), h, c (B, H) (or unbatched (I,),
(H,)), workspace (B, A*H).
"""
from __future__ import annotations

import torch

from .. import _checks, _op_checks, reference
from ..backend import resolve
from . import _library
from ._autograd import recording_backward, reference_vjp

for _name in ("lstm_cell_forward", "lstm_cell_backward", "gru_cell_forward", "gru_cell_backward"):
    _library.define_triton_twin("rnn_cell", _name)

# --------------------------------------------------------------------------------------------- fake kernels
# Each runs its op's argument checks (s2s_fused/_op_checks.py: the C++ ops' messages), so torch.compile reports a
# bad call at trace time as the op would.


@_library.register_fake("lstm_cell_forward")
def _lstm_fwd_fake(input, hx, cx, w_ih, w_hh, b_ih, b_hh):
    B, _, H = _op_checks.lstm_cell_forward(input, hx, cx, w_ih, w_hh, b_ih, b_hh)
    return hx.new_empty(B, H), hx.new_empty(B, H), hx.new_empty(B, 4 * H)


def _masked(mask, shapes, like):
    """Backward outputs: the gradient's shape where wanted, an empty (0-element) tensor where not."""
    return tuple(like.new_empty(shape if want else (0,)) for want, shape in zip(mask, shapes))


@_library.register_fake("lstm_cell_backward")
def _lstm_bwd_fake(grad_h1, grad_c1, input, hx, cx, w_ih, w_hh, workspace, c1, grad_mask):
    _op_checks.lstm_cell_backward(grad_h1, grad_c1, input, hx, cx, w_ih, w_hh, workspace, c1, grad_mask)
    return _masked(grad_mask, (input.shape, hx.shape, hx.shape, w_ih.shape, w_hh.shape, (w_ih.shape[0],)), hx)


@_library.register_fake("gru_cell_forward")
def _gru_fwd_fake(input, hx, w_ih, w_hh, b_ih, b_hh, reset_after):
    B, _, H = _op_checks.gru_cell_forward(input, hx, w_ih, w_hh, b_ih, b_hh, reset_after)
    return hx.new_empty(B, H), hx.new_empty(B, (4 if reset_after else 3) * H)


@_library.register_fake("gru_cell_backward")
def _gru_bwd_fake(grad_h1, input, hx, w_ih, w_hh, workspace, reset_after, grad_mask):
    _op_checks.gru_cell_backward(grad_h1, input, hx, w_ih, w_hh, workspace, reset_after, grad_mask)
    G = (w_ih.shape[0],)
    return _masked(grad_mask, (input.shape, hx.shape, w_ih.shape, w_hh.shape, G, G), hx)


# ------------------------------------------------------------------------------------------------ autograd


def _lstm_setup(ctx, inputs, output):
    input, hx, cx, w_ih, w_hh, b_ih, b_hh = inputs
    _, c1, workspace = output
    ctx.save_for_backward(input, hx, cx, w_ih, w_hh, workspace, c1, b_ih, b_hh)
    ctx.mark_non_differentiable(workspace)


def _lstm_backward(backward_op, ctx, grad_h1, grad_c1, _grad_ws):
    input, hx, cx, w_ih, w_hh, workspace, c1, b_ih, b_hh = ctx.saved_tensors
    need = ctx.needs_input_grad
    if grad_h1 is None and grad_c1 is None or not any(need):
        return (None,) * 7
    if recording_backward():
        return reference_vjp(lambda x, h, c, *w: reference.lstm_cell(x, (h, c), *w),
                             (input, hx, cx, w_ih, w_hh, b_ih, b_hh), (grad_h1, grad_c1), need)
    mask = list(need[:5]) + [need[5] or need[6]]
    g = backward_op(grad_h1, grad_c1, input, hx, cx, w_ih, w_hh, workspace, c1, mask)
    g_in, g_hx, g_cx, g_wih, g_whh, g_b = (t if m else None for t, m in zip(g, mask))
    # One bias gradient serves both biases; the second gets its own copy so the two .grad fields never alias.
    return (g_in, g_hx, g_cx, g_wih, g_whh, g_b if need[5] else None,
            (g_b.clone() if need[5] else g_b) if need[6] else None)


def _gru_setup(ctx, inputs, output):
    input, hx, w_ih, w_hh, b_ih, b_hh, reset_after = inputs
    _, workspace = output
    ctx.save_for_backward(input, hx, w_ih, w_hh, workspace, b_ih, b_hh)
    ctx.reset_after = reset_after
    ctx.mark_non_differentiable(workspace)


def _gru_backward(backward_op, ctx, grad_h1, _grad_ws):
    input, hx, w_ih, w_hh, workspace, b_ih, b_hh = ctx.saved_tensors
    need = ctx.needs_input_grad
    if grad_h1 is None or not any(need[:6]):
        return (None,) * 7
    if recording_backward():
        return reference_vjp(lambda *a: reference.gru_cell(*a, reset_after=ctx.reset_after),
                             (input, hx, w_ih, w_hh, b_ih, b_hh), (grad_h1,), need[:6]) + (None,)
    mask = list(need[:6])
    g = backward_op(grad_h1, input, hx, w_ih, w_hh, workspace, ctx.reset_after, mask)
    return tuple(t if m else None for t, m in zip(g, mask)) + (None,)


_library.register_autograd("lstm_cell_forward", "lstm_cell_backward", _lstm_backward, _lstm_setup)
_library.register_autograd("gru_cell_forward", "gru_cell_backward", _gru_backward, _gru_setup)

# ---------------------------------------------------------------------------------------- public functions


def _check_cell(kind, input, h, w_ih, w_hh, b_ih, b_hh, gates, *, c=None):
    hname = _checks.rnn_tensors(kind, input, h, c, w_ih, w_hh, b_ih, b_hh, dims=(1, 2))
    H = h.shape[-1]
    I = input.shape[-1]
    if input.dim() == 2 and h.shape[0] != input.shape[0]:
        raise ValueError(f"{hname}: expected batch size {input.shape[0]} (as input), got shape {tuple(h.shape)}")
    if c is not None and c.shape != h.shape:
        raise ValueError(f"hx[1]: expected shape {tuple(h.shape)} (as hx[0]), got {tuple(c.shape)}")
    _checks.rnn_weights(w_ih, w_hh, b_ih, b_hh, gates, I, H, hname)


def lstm_cell(input, hx, w_ih, w_hh, b_ih=None, b_hh=None, *, backend=None):
    """One fused LSTM step, the math and gate order (i, f, g, o) of ``torch.lstm_cell``.

    input (B, I) or (I,); hx = (h, c), each (B, H) or (H,); w_ih (G*H, I); w_hh (G*H, H); b_ih, b_hh (G*H,) or
    None; G = 4. Returns (h1, c1), shaped as h. fp32/fp64/fp16/bf16; low-precision math runs in fp32.
    """
    if not isinstance(hx, (tuple, list)) or len(hx) != 2:
        raise TypeError(f"hx: expected a tuple (h, c) of two tensors, got {type(hx).__name__}")
    h, c = hx
    _check_cell("lstm", input, h, w_ih, w_hh, b_ih, b_hh, 4, c=c)
    be = resolve("lstm_cell", backend, input.device)
    if be == "reference":
        return reference.lstm_cell(input, (h, c), w_ih, w_hh, b_ih, b_hh)
    unbatched = input.dim() == 1
    if unbatched:
        input, h, c = input.unsqueeze(0), h.unsqueeze(0), c.unsqueeze(0)
    h1, c1, _ = _library.op("lstm_cell_forward", be)(input, h, c, w_ih, w_hh, b_ih, b_hh)
    if unbatched:
        h1, c1 = h1.squeeze(0), c1.squeeze(0)
    return h1, c1


def gru_cell(input, hx, w_ih, w_hh, b_ih=None, b_hh=None, *, reset_after=True, backend=None):
    """One fused GRU step, gate order (r, z, n).

    ``reset_after=True`` is ``torch.gru_cell`` (cuDNN's form: n = tanh(W_in x + b_in + r * (W_hn h + b_hn)));
    ``reset_after=False`` is Cho et al. 2014 / d2l's form: n = tanh(W_in x + b_in + W_hn (r * h) + b_hn).
    input (B, I) or (I,); hx (B, H) or (H,); w_ih (G*H, I); w_hh (G*H, H); b_ih, b_hh (G*H,) or None; G = 3.
    Returns h1.
    """
    _check_cell("gru", input, hx, w_ih, w_hh, b_ih, b_hh, 3)
    if not isinstance(reset_after, bool):
        raise TypeError(f"reset_after: expected a bool, got {type(reset_after).__name__}")
    be = resolve("gru_cell", backend, input.device)
    if be == "reference":
        return reference.gru_cell(input, hx, w_ih, w_hh, b_ih, b_hh, reset_after=reset_after)
    unbatched = input.dim() == 1
    if unbatched:
        input, hx = input.unsqueeze(0), hx.unsqueeze(0)
    h1, _ = _library.op("gru_cell_forward", be)(input, hx, w_ih, w_hh, b_ih, b_hh, reset_after)
    return h1.squeeze(0) if unbatched else h1
