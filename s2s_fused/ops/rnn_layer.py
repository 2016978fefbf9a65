"""Fused LSTM / GRU layers: one layer in one direction over a whole sequence, forward and backward.

Public: :func:`lstm_layer`, :func:`gru_layer`, and both directions of a layer in one op, :func:`lstm_layer_bidir`,
:func:`gru_layer_bidir` (the modules ``s2s_fused.nn.LSTM`` / ``GRU`` stack them over layers and directions). The ops
``torch.ops.s2s_fused.{lstm,gru}_layer_{forward,backward,inference}`` and ``..._layer_bidir_{forward,backward}``
(schemas and CPU / CUDA kernels in csrc/: the time loop in C++) and the Triton twins
``{lstm,gru}_layer_{forward,backward}_triton`` (kernels in s2s_fused/triton/rnn_layer.py) get their fake kernels
and autograd here; the ``reference`` backend is plain torch (s2s_fused.reference).

Shapes in the notation of s2s_fused.ops: input (T, B, I); h0, c0, h_n, c_n (B, H); output (T, B, H); lengths (B,)
integer or None; saved hs, cs (T+1, B, H) and workspace (T, B, A*H). Step t of row b runs when t < lengths[b] (a
finished row keeps its state and outputs zeros); ``reverse`` runs t = T-1 .. 0, so the reverse direction of a
packed batch starts at each row's own last step.
"""
from __future__ import annotations

import torch

from .. import _checks, _op_checks, reference
from ..backend import resolve
from . import _library
from ._autograd import recording_backward, reference_vjp

for _name in ("lstm_layer_forward", "lstm_layer_backward", "gru_layer_forward", "gru_layer_backward"):
    _library.define_triton_twin("rnn_layer", _name)

# --------------------------------------------------------------------------------------------- fake kernels
# Each runs its op's argument checks (s2s_fused/_op_checks.py: the C++ ops' messages), so torch.compile reports a
# bad call at trace time as the op would.


@_library.register_fake("lstm_layer_forward")
def _lstm_fwd_fake(input, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths, reverse, w_hr=None):
    T, B, _, H = _op_checks.lstm_layer_forward(input, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths, reverse, w_hr)
    P = h0.shape[1]
    new = input.new_empty
    return (new(T, B, P), new(B, P), new(B, H), new(T + 1, B, P), new(T + 1, B, H), new(T, B, 4 * H))


@_library.register_fake("lstm_layer_backward")
def _lstm_bwd_fake(grad_output, grad_h_n, grad_c_n, input, w_ih, w_hh, hs, cs, workspace, lengths, reverse,
                   w_hr=None):
    _, B, _, H = _op_checks.lstm_layer_backward(grad_output, grad_h_n, grad_c_n, input, w_ih, w_hh, hs, cs,
                                                workspace, lengths, reverse, w_hr)
    return (input.new_empty(input.shape), hs.new_empty(B, hs.shape[-1]), hs.new_empty(B, H),
            w_ih.new_empty(w_ih.shape), w_hh.new_empty(w_hh.shape), w_ih.new_empty(w_ih.shape[0]),
            w_ih.new_empty(w_hr.shape if w_hr is not None else (0,)))


@_library.register_fake("gru_layer_forward")
def _gru_fwd_fake(input, h0, w_ih, w_hh, b_ih, b_hh, lengths, reverse, reset_after):
    T, B, _, H = _op_checks.gru_layer_forward(input, h0, w_ih, w_hh, b_ih, b_hh, lengths, reverse, reset_after)
    new = input.new_empty
    return new(T, B, H), new(B, H), new(T + 1, B, H), new(T, B, (4 if reset_after else 3) * H)


@_library.register_fake("gru_layer_backward")
def _gru_bwd_fake(grad_output, grad_h_n, input, w_ih, w_hh, hs, workspace, lengths, reverse, reset_after):
    _, B, _, H = _op_checks.gru_layer_backward(grad_output, grad_h_n, input, w_ih, w_hh, hs, workspace, lengths,
                                               reverse, reset_after)
    return (input.new_empty(input.shape), hs.new_empty(B, H), w_ih.new_empty(w_ih.shape),
            w_hh.new_empty(w_hh.shape), w_ih.new_empty(w_ih.shape[0]), w_ih.new_empty(w_ih.shape[0]))


@_library.register_fake("lstm_layer_inference")
def _lstm_inf_fake(input, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths, reverse, w_hr=None):
    T, B, _, H = _op_checks.lstm_layer_inference(input, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths, reverse, w_hr)
    P = h0.shape[1]
    new = input.new_empty
    return new(T, B, P), new(B, P), new(B, H)


@_library.register_fake("gru_layer_inference")
def _gru_inf_fake(input, h0, w_ih, w_hh, b_ih, b_hh, lengths, reverse, reset_after):
    T, B, _, H = _op_checks.gru_layer_inference(input, h0, w_ih, w_hh, b_ih, b_hh, lengths, reverse, reset_after)
    return input.new_empty(T, B, H), input.new_empty(B, H)


def _forward_op(kind: str, backend: str, *tensors) -> str:
    """The forward op of a call: the inference op, which keeps nothing for backward, when no gradient can flow back
    through the call and the backend has one (cpu, cuda); the training forward otherwise."""
    inference = not torch.is_grad_enabled() or not any(t is not None and t.requires_grad for t in tensors)
    return f"{kind}_layer_{'inference' if inference and backend != 'triton' else 'forward'}"


# ------------------------------------------------------------------------------------------------ autograd

def _lstm_setup(ctx, inputs, output):
    input, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths, reverse, w_hr = inputs
    _, _, _, hs, cs, workspace = output
    ctx.save_for_backward(input, w_ih, w_hh, hs, cs, workspace, lengths, h0, c0, b_ih, b_hh, w_hr)
    ctx.has_bias = (b_ih is not None, b_hh is not None)
    ctx.reverse = reverse
    ctx.mark_non_differentiable(hs, cs, workspace)


def _lstm_backward(backward_op, ctx, grad_output, grad_h_n, grad_c_n, _g_hs, _g_cs, _g_ws):
    input, w_ih, w_hh, hs, cs, workspace, lengths, h0, c0, b_ih, b_hh, w_hr = ctx.saved_tensors
    if grad_output is None and grad_h_n is None and grad_c_n is None:
        return (None,) * 10
    if recording_backward():
        g = reference_vjp(
            lambda x, h, c, wi, wh, bi, bh, wr: reference.lstm_layer(x, (h, c), wi, wh, bi, bh, lengths=lengths,
                                                                     reverse=ctx.reverse, w_hr=wr),
            (input, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr), (grad_output, grad_h_n, grad_c_n),
            ctx.needs_input_grad[:7] + ctx.needs_input_grad[9:])
        return g[:7] + (None, None, g[7])
    g_in, g_h0, g_c0, g_wih, g_whh, g_b, g_whr = backward_op(grad_output, grad_h_n, grad_c_n, input, w_ih, w_hh, hs,
                                                             cs, workspace, lengths, ctx.reverse, w_hr)
    return (g_in, g_h0, g_c0, g_wih, g_whh, g_b if ctx.has_bias[0] else None, g_b if ctx.has_bias[1] else None,
            None, None, g_whr if w_hr is not None else None)


def _gru_setup(ctx, inputs, output):
    input, h0, w_ih, w_hh, b_ih, b_hh, lengths, reverse, reset_after = inputs
    _, _, hs, workspace = output
    ctx.save_for_backward(input, w_ih, w_hh, hs, workspace, lengths, h0, b_ih, b_hh)
    ctx.has_bias = (b_ih is not None, b_hh is not None)
    ctx.reverse = reverse
    ctx.reset_after = reset_after
    ctx.mark_non_differentiable(hs, workspace)


def _gru_backward(backward_op, ctx, grad_output, grad_h_n, _g_hs, _g_ws):
    input, w_ih, w_hh, hs, workspace, lengths, h0, b_ih, b_hh = ctx.saved_tensors
    if grad_output is None and grad_h_n is None:
        return (None,) * 9
    if recording_backward():
        return reference_vjp(
            lambda *a: reference.gru_layer(*a, lengths=lengths, reverse=ctx.reverse, reset_after=ctx.reset_after),
            (input, h0, w_ih, w_hh, b_ih, b_hh), (grad_output, grad_h_n), ctx.needs_input_grad[:6]
        ) + (None, None, None)
    g_in, g_h0, g_wih, g_whh, g_bih, g_bhh = backward_op(grad_output, grad_h_n, input, w_ih, w_hh, hs, workspace,
                                                        lengths, ctx.reverse, ctx.reset_after)
    return (g_in, g_h0, g_wih, g_whh, g_bih if ctx.has_bias[0] else None, g_bhh if ctx.has_bias[1] else None,
            None, None, None)


_library.register_autograd("lstm_layer_forward", "lstm_layer_backward", _lstm_backward, _lstm_setup)
_library.register_autograd("gru_layer_forward", "gru_layer_backward", _gru_backward, _gru_setup)

# ---------------------------------------------------------------------------------------- public functions


def check_lengths(lengths, T: int, B: int, device: torch.device, name: str = "lengths"):
    """lengths: None or an integer (B,) tensor with 1 <= lengths[b] <= T. Values are checked only where that
    costs no host sync (CPU tensors, outside torch.compile)."""
    if lengths is None:
        return None
    _checks.tensor(lengths, name, dims=1, integer=True)
    if lengths.shape[0] != B:
        raise ValueError(f"{name}: expected shape ({B},) (the batch size), got {tuple(lengths.shape)}")
    if lengths.device.type == "cpu" and not torch.compiler.is_compiling() and B > 0:
        lo, hi = int(lengths.min()), int(lengths.max())
        if lo < 1 or hi > T:
            raise ValueError(f"{name}: expected every length in [1, {T}] (T = input.shape[0]), got values in "
                             f"[{lo}, {hi}]")
    elif lengths.device.type != "cpu" and lengths.device != device:
        raise RuntimeError(f"{name}: expected a CPU tensor or one on {device} (as input), got {lengths.device}")
    return lengths


def _check_layer(kind, input, h, w_ih, w_hh, b_ih, b_hh, gates, lengths, *, c=None, w_hr=None):
    hname = _checks.rnn_tensors(kind, input, h, c, w_ih, w_hh, b_ih, b_hh, dims=3, state_dims=2)
    T, B, I = input.shape
    H = h.shape[-1]
    if h.shape[0] != B:
        raise ValueError(f"{hname}: expected batch size {B} (input.shape[1]), got shape {tuple(h.shape)}")
    if w_hr is None:
        if c is not None and c.shape != h.shape:
            raise ValueError(f"hx[1]: expected shape {tuple(h.shape)} (as hx[0]), got {tuple(c.shape)}")
        _checks.rnn_weights(w_ih, w_hh, b_ih, b_hh, gates, I, H, hname)
    else:  # projected: h is (B, P), c (B, H), w_hr (P, H)
        _checks.tensor(w_hr, "w_hr", dims=2, floating=True)
        _checks.same_dtype_device(input, "input", w_hr=w_hr)
        P, H = H, c.shape[-1]
        if c.shape[0] != B:
            raise ValueError(f"hx[1]: expected batch size {B} (input.shape[1]), got shape {tuple(c.shape)}")
        _checks.shape(w_hr, "w_hr", (P, H))
        _checks.rnn_weights(w_ih, w_hh, b_ih, b_hh, gates, I, H, state_size=P)
    check_lengths(lengths, T, B, input.device)


def _check_flag(value, name):
    if not isinstance(value, bool):
        raise TypeError(f"{name}: expected a bool, got {type(value).__name__}")


def lstm_layer(input, hx, w_ih, w_hh, b_ih=None, b_hh=None, *, lengths=None, reverse=False, w_hr=None,
               backend=None):
    """One fused LSTM layer in one direction over a whole sequence (gate order i, f, g, o as torch).

    input (T, B, I); hx = (h0, c0), each (B, H); w_ih (G*H, I); w_hh (G*H, H); b_ih, b_hh (G*H,) or None; G = 4;
    lengths (B,) integer or None; reverse: run t = T-1 .. 0. Returns (output (T, B, H), (h_n, c_n)); output is zero at
    steps t >= lengths[b], and h_n, c_n are each row's state after its own last step.
    w_hr (P, H) or None: torch's projections (``proj_size``), h = W_hr (o * tanh c); then h0, h_n and output are P
    wide ((B, P), (T, B, P)), c0, c_n stay (B, H) and w_hh is (G*H, P).
    """
    if not isinstance(hx, (tuple, list)) or len(hx) != 2:
        raise TypeError(f"hx: expected a tuple (h0, c0) of two tensors, got {type(hx).__name__}")
    h, c = hx
    _check_layer("lstm", input, h, w_ih, w_hh, b_ih, b_hh, 4, lengths, c=c, w_hr=w_hr)
    _check_flag(reverse, "reverse")
    be = resolve("lstm_layer", backend, input.device)
    if be == "reference":
        return reference.lstm_layer(input, (h, c), w_ih, w_hh, b_ih, b_hh, lengths=lengths, reverse=reverse,
                                    w_hr=w_hr)
    op = _library.op(_forward_op("lstm", be, input, h, c, w_ih, w_hh, b_ih, b_hh, w_hr), be)
    out, h_n, c_n, *_ = op(input, h, c, w_ih, w_hh, b_ih, b_hh, lengths, reverse, w_hr)
    return out, (h_n, c_n)


def gru_layer(input, hx, w_ih, w_hh, b_ih=None, b_hh=None, *, lengths=None, reverse=False, reset_after=True,
              backend=None):
    """One fused GRU layer in one direction over a whole sequence (gate order r, z, n).

    ``reset_after=True`` is torch/cuDNN's GRU, ``False`` Cho et al. / d2l's (see :func:`s2s_fused.gru_cell`).
    input (T, B, I); hx (B, H); w_ih (G*H, I); w_hh (G*H, H); b_ih, b_hh (G*H,) or None; G = 3; lengths, reverse as
    :func:`lstm_layer`. Returns (output (T, B, H), h_n (B, H)).
    """
    _check_layer("gru", input, hx, w_ih, w_hh, b_ih, b_hh, 3, lengths)
    _check_flag(reverse, "reverse")
    _check_flag(reset_after, "reset_after")
    be = resolve("gru_layer", backend, input.device)
    if be == "reference":
        return reference.gru_layer(input, hx, w_ih, w_hh, b_ih, b_hh, lengths=lengths, reverse=reverse,
                                   reset_after=reset_after)
    op = _library.op(_forward_op("gru", be, input, hx, w_ih, w_hh, b_ih, b_hh), be)
    out, h_n, *_ = op(input, hx, w_ih, w_hh, b_ih, b_hh, lengths, reverse, reset_after)
    return out, h_n


# ================================================================ rnn_layer_bidir (both directions in one op)
# torch.ops.s2s_fused.{lstm,gru}_layer_bidir_{forward,backward} (CPU and CUDA): both directions of one
# bidirectional layer, step s running the forward direction at time s and the reverse one at time T-1-s together
# (on CUDA one batched recurrent GEMM and one pointwise launch per step). h0, c0, h_n, c_n are (D, B, H), D = 2,
# direction-major (as a bidirectional module's hx slice); output (T, B, D*H) is the two directions' outputs
# concatenated; the saved hs, cs (D, T+1, B, H) and workspace (D, T, B, A*H) hold, per direction, what the
# single-direction op saves. The modules use these ops where s2s_fused.nn.rnn.BIDIR_FUSED_BACKENDS says.


@_library.register_fake("lstm_layer_bidir_forward")
def _lstm_bidir_fwd_fake(input, h0, c0, w_ih, w_hh, b_ih, b_hh, w_ih_r, w_hh_r, b_ih_r, b_hh_r, lengths):
    T, B, _, H = _op_checks.lstm_layer_bidir_forward(input, h0, c0, w_ih, w_hh, b_ih, b_hh, w_ih_r, w_hh_r, b_ih_r,
                                                     b_hh_r, lengths)
    new = input.new_empty
    return (new(T, B, 2 * H), new(2, B, H), new(2, B, H), new(2, T + 1, B, H), new(2, T + 1, B, H),
            new(2, T, B, 4 * H))


@_library.register_fake("lstm_layer_bidir_backward")
def _lstm_bidir_bwd_fake(grad_output, grad_h_n, grad_c_n, input, w_ih, w_hh, w_ih_r, w_hh_r, hs, cs, workspace,
                         lengths):
    _, B, _, H = _op_checks.lstm_layer_bidir_backward(grad_output, grad_h_n, grad_c_n, input, w_ih, w_hh, w_ih_r,
                                                      w_hh_r, hs, cs, workspace, lengths)
    return (input.new_empty(input.shape), hs.new_empty(2, B, H), hs.new_empty(2, B, H),
            w_ih.new_empty(w_ih.shape), w_hh.new_empty(w_hh.shape), w_ih.new_empty(w_ih.shape[0]),
            w_ih_r.new_empty(w_ih_r.shape), w_hh_r.new_empty(w_hh_r.shape), w_ih_r.new_empty(w_ih_r.shape[0]))


@_library.register_fake("gru_layer_bidir_forward")
def _gru_bidir_fwd_fake(input, h0, w_ih, w_hh, b_ih, b_hh, w_ih_r, w_hh_r, b_ih_r, b_hh_r, lengths, reset_after):
    T, B, _, H = _op_checks.gru_layer_bidir_forward(input, h0, w_ih, w_hh, b_ih, b_hh, w_ih_r, w_hh_r, b_ih_r,
                                                    b_hh_r, lengths, reset_after)
    new = input.new_empty
    return new(T, B, 2 * H), new(2, B, H), new(2, T + 1, B, H), new(2, T, B, (4 if reset_after else 3) * H)


@_library.register_fake("gru_layer_bidir_backward")
def _gru_bidir_bwd_fake(grad_output, grad_h_n, input, w_ih, w_hh, w_ih_r, w_hh_r, hs, workspace, lengths,
                        reset_after):
    _, B, _, H = _op_checks.gru_layer_bidir_backward(grad_output, grad_h_n, input, w_ih, w_hh, w_ih_r, w_hh_r, hs,
                                                     workspace, lengths, reset_after)
    G = w_ih.shape[0]
    return (input.new_empty(input.shape), hs.new_empty(2, B, H), w_ih.new_empty(w_ih.shape),
            w_hh.new_empty(w_hh.shape), w_ih.new_empty(G), w_ih.new_empty(G), w_ih_r.new_empty(w_ih_r.shape),
            w_hh_r.new_empty(w_hh_r.shape), w_ih_r.new_empty(G), w_ih_r.new_empty(G))


def _lstm_bidir_setup(ctx, inputs, output):
    input, h0, c0, w_ih, w_hh, b_ih, b_hh, w_ih_r, w_hh_r, b_ih_r, b_hh_r, lengths = inputs
    _, _, _, hs, cs, workspace = output
    ctx.save_for_backward(input, w_ih, w_hh, w_ih_r, w_hh_r, hs, cs, workspace, lengths, h0, c0, b_ih, b_hh, b_ih_r,
                          b_hh_r)
    ctx.has_bias = tuple(b is not None for b in (b_ih, b_hh, b_ih_r, b_hh_r))
    ctx.mark_non_differentiable(hs, cs, workspace)


def _lstm_bidir_backward(backward_op, ctx, grad_output, grad_h_n, grad_c_n, _g_hs, _g_cs, _g_ws):
    (input, w_ih, w_hh, w_ih_r, w_hh_r, hs, cs, workspace, lengths, h0, c0, b_ih, b_hh, b_ih_r,
     b_hh_r) = ctx.saved_tensors
    if grad_output is None and grad_h_n is None and grad_c_n is None:
        return (None,) * 12
    if recording_backward():
        return reference_vjp(lambda x, h, c, *w: reference.lstm_layer_bidir(x, (h, c), w[:4], w[4:], lengths=lengths),
                             (input, h0, c0, w_ih, w_hh, b_ih, b_hh, w_ih_r, w_hh_r, b_ih_r, b_hh_r),
                             (grad_output, grad_h_n, grad_c_n), ctx.needs_input_grad[:11]) + (None,)
    g_in, g_h0, g_c0, g_wih, g_whh, g_b, g_wih_r, g_whh_r, g_b_r = backward_op(
        grad_output, grad_h_n, grad_c_n, input, w_ih, w_hh, w_ih_r, w_hh_r, hs, cs, workspace, lengths)
    hb = ctx.has_bias
    return (g_in, g_h0, g_c0, g_wih, g_whh, g_b if hb[0] else None, g_b if hb[1] else None, g_wih_r, g_whh_r,
            g_b_r if hb[2] else None, g_b_r if hb[3] else None, None)


def _gru_bidir_setup(ctx, inputs, output):
    input, h0, w_ih, w_hh, b_ih, b_hh, w_ih_r, w_hh_r, b_ih_r, b_hh_r, lengths, reset_after = inputs
    _, _, hs, workspace = output
    ctx.save_for_backward(input, w_ih, w_hh, w_ih_r, w_hh_r, hs, workspace, lengths, h0, b_ih, b_hh, b_ih_r, b_hh_r)
    ctx.has_bias = tuple(b is not None for b in (b_ih, b_hh, b_ih_r, b_hh_r))
    ctx.reset_after = reset_after
    ctx.mark_non_differentiable(hs, workspace)


def _gru_bidir_backward(backward_op, ctx, grad_output, grad_h_n, _g_hs, _g_ws):
    input, w_ih, w_hh, w_ih_r, w_hh_r, hs, workspace, lengths, h0, b_ih, b_hh, b_ih_r, b_hh_r = ctx.saved_tensors
    if grad_output is None and grad_h_n is None:
        return (None,) * 12
    if recording_backward():
        return reference_vjp(lambda x, h, *w: reference.gru_layer_bidir(x, h, w[:4], w[4:], lengths=lengths,
                                                                       reset_after=ctx.reset_after),
                             (input, h0, w_ih, w_hh, b_ih, b_hh, w_ih_r, w_hh_r, b_ih_r, b_hh_r),
                             (grad_output, grad_h_n), ctx.needs_input_grad[:10]) + (None, None)
    (g_in, g_h0, g_wih, g_whh, g_bih, g_bhh, g_wih_r, g_whh_r, g_bih_r,
     g_bhh_r) = backward_op(grad_output, grad_h_n, input, w_ih, w_hh, w_ih_r, w_hh_r, hs, workspace, lengths,
                            ctx.reset_after)
    hb = ctx.has_bias
    return (g_in, g_h0, g_wih, g_whh, g_bih if hb[0] else None, g_bhh if hb[1] else None, g_wih_r, g_whh_r,
            g_bih_r if hb[2] else None, g_bhh_r if hb[3] else None, None, None)


_library.register_autograd("lstm_layer_bidir_forward", "lstm_layer_bidir_backward", _lstm_bidir_backward,
                           _lstm_bidir_setup)
_library.register_autograd("gru_layer_bidir_forward", "gru_layer_bidir_backward", _gru_bidir_backward,
                           _gru_bidir_setup)


def _bidir_weights(weights, name):
    if not isinstance(weights, (tuple, list)) or len(weights) != 4:
        raise TypeError(f"{name}: expected a tuple (w_ih, w_hh, b_ih, b_hh) (biases may be None), got "
                        f"{type(weights).__name__}" + (f" of length {len(weights)}" if
                                                       isinstance(weights, (tuple, list)) else ""))
    return tuple(weights)


def _check_bidir_state(h, name):
    _checks.tensor(h, name, dims=3, floating=True)
    if h.shape[0] != 2:
        raise ValueError(f"{name}: expected shape (2, B, H) (one state per direction), got {tuple(h.shape)}")


def lstm_layer_bidir(input, hx, weights, weights_reverse, *, lengths=None, backend=None):
    """Both directions of one bidirectional LSTM layer in one fused op.

    input (T, B, I); hx = (h0, c0), each (2, B, H) (direction 0 forward, 1 reverse); weights and
    weights_reverse = (w_ih, w_hh, b_ih, b_hh) of each direction, shaped as :func:`lstm_layer`'s; lengths as
    :func:`lstm_layer`. Returns (output (T, B, 2*H), (h_n, c_n) each (2, B, H)): the same as
    :func:`lstm_layer` with reverse=False and reverse=True, outputs concatenated and states stacked. Backends
    ``cpu`` and ``cuda`` run the two-direction op; ``reference`` and ``triton`` run their per-direction layers.
    """
    if not isinstance(hx, (tuple, list)) or len(hx) != 2:
        raise TypeError(f"hx: expected a tuple (h0, c0) of two tensors, got {type(hx).__name__}")
    h, c = hx
    wf, wr = _bidir_weights(weights, "weights"), _bidir_weights(weights_reverse, "weights_reverse")
    _check_bidir_state(h, "hx[0]")
    _check_bidir_state(c, "hx[1]")
    for d, w in ((0, wf), (1, wr)):
        _check_layer("lstm", input, h[d], *w, 4, lengths, c=c[d])
    be = resolve("lstm_layer", backend, input.device)
    if be in ("reference", "triton"):
        outs, hs, cs = [], [], []
        for d, w in ((0, wf), (1, wr)):
            o, (hn, cn) = lstm_layer(input, (h[d], c[d]), *w, lengths=lengths, reverse=d == 1, backend=be)
            outs.append(o)
            hs.append(hn)
            cs.append(cn)
        return torch.cat(outs, dim=-1), (torch.stack(hs), torch.stack(cs))
    out, h_n, c_n, *_ = _library.op("lstm_layer_bidir_forward", be)(input, h, c, *wf, *wr, lengths)
    return out, (h_n, c_n)


def gru_layer_bidir(input, hx, weights, weights_reverse, *, lengths=None, reset_after=True, backend=None):
    """Both directions of one bidirectional GRU layer in one fused op.

    input (T, B, I); hx (2, B, H); weights, weights_reverse = (w_ih, w_hh, b_ih, b_hh) of each direction, shaped
    as :func:`gru_layer`'s; lengths, reset_after as :func:`gru_layer`. Returns (output (T, B, 2*H), h_n (2, B, H)),
    the same as
    :func:`gru_layer` run per direction (outputs concatenated, states stacked).
    """
    wf, wr = _bidir_weights(weights, "weights"), _bidir_weights(weights_reverse, "weights_reverse")
    _check_bidir_state(hx, "hx")
    for d, w in ((0, wf), (1, wr)):
        _check_layer("gru", input, hx[d], *w, 3, lengths)
    _check_flag(reset_after, "reset_after")
    be = resolve("gru_layer", backend, input.device)
    if be in ("reference", "triton"):
        outs, hs = [], []
        for d, w in ((0, wf), (1, wr)):
            o, hn = gru_layer(input, hx[d], *w, lengths=lengths, reverse=d == 1, reset_after=reset_after, backend=be)
            outs.append(o)
            hs.append(hn)
        return torch.cat(outs, dim=-1), torch.stack(hs)
    out, h_n, *_ = _library.op("gru_layer_bidir_forward", be)(input, hx, *wf, *wr, lengths, reset_after)
    return out, h_n
# ============================================================ end of rnn_layer_bidir
