"""Argument checks of the registered ops (``torch.ops.s2s_fused.*``) written in Python: the Triton ops call them
before any launch, with the messages and the exception type (RuntimeError, as TORCH_CHECK raises) of their C++
twins' checks (csrc/checks.h and the ``check_*`` functions next to each family's impl), so a direct caller gets
the same answer from every backend. Public wrappers check first with their own friendlier checks
(s2s_fused/_checks.py); these are the last line for direct op callers. Nothing here reads tensor values (no
device sync), except the cross-entropy value checks, which their callers run on CPU tensors only.

One function per op schema, named after it, grouped by family below.
"""
from __future__ import annotations

import torch

_FLOATS = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def fail(*parts) -> None:
    raise RuntimeError("".join(str(p) for p in parts))


def shape_str(t: torch.Tensor) -> str:
    return "[" + ", ".join(str(s) for s in t.shape) + "]"


def dtype_str(dtype: torch.dtype) -> str:
    """The name c10 prints for a dtype in a TORCH_CHECK message (Float, Double, Half, BFloat16, Long, ...)."""
    names = {torch.float32: "Float", torch.float64: "Double", torch.float16: "Half", torch.bfloat16: "BFloat16",
             torch.int64: "Long", torch.int32: "Int", torch.int16: "Short", torch.int8: "Char",
             torch.uint8: "Byte", torch.bool: "Bool"}
    return names.get(dtype, str(dtype).replace("torch.", ""))


def tensor(t, name: str) -> torch.Tensor:
    """A tensor argument (an op schema's ``Tensor``; the dispatcher already rejects other types for C++ ops)."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    return t


def dim(t: torch.Tensor, d: int, name: str) -> None:
    if t.dim() != d:
        fail(name, ": expected a ", d, "-D tensor, got ", t.dim(), "-D with shape ", shape_str(t))


def size(t: torch.Tensor, d: int, n: int, name: str) -> None:
    if t.shape[d] != n:
        fail(name, ": expected size ", n, " in dim ", d, ", got shape ", shape_str(t))


def floating(t: torch.Tensor, name: str) -> None:
    if t.dtype not in _FLOATS:
        fail(name, ": expected a float32, float64, float16 or bfloat16 tensor, got ", dtype_str(t.dtype))


def same(t: torch.Tensor, ref: torch.Tensor, name: str, ref_name: str) -> None:
    """``t`` has ``ref``'s dtype and device (csrc/checks.h check_same)."""
    if t.dtype != ref.dtype:
        fail(name, ": expected dtype ", dtype_str(ref.dtype), " (as ", ref_name, "), got ", dtype_str(t.dtype))
    if t.device != ref.device:
        fail(name, ": expected device ", ref.device, " (as ", ref_name, "), got ", t.device)


def same_device(t: torch.Tensor, ref: torch.Tensor, name: str, ref_name: str) -> None:
    if t.device != ref.device:
        fail(name, ": expected device ", ref.device, " (as ", ref_name, "), got ", t.device)


def exact_shape(t: torch.Tensor, expected, name: str, what: str = "") -> None:
    if tuple(t.shape) != tuple(expected):
        fail(name, ": expected shape (", ", ".join(str(int(s)) for s in expected), ")", what, ", got ", shape_str(t))


# ------------------------------------------------------------------------------------------------ rnn_cell
# csrc/rnn_cell_impl.h, and the helpers of csrc/checks.h the layers share.


def saved(t: torch.Tensor, expected, input: torch.Tensor, name: str, what: str = "") -> None:
    """csrc/checks.h check_saved: input's dtype and device and exactly ``expected``'s shape (a saved state or
    workspace, an incoming gradient, the cell state); ``what`` says where the shape comes from."""
    same(t, input, name, "input")
    if tuple(t.shape) != tuple(expected):
        fail(name, ": expected shape [", ", ".join(str(int(s)) for s in expected), "]", what, ", got ", shape_str(t))


def rnn_weights(input, w_ih, w_hh, b_ih, b_hh, gates: int, I: int, H: int, suffix: str = "", P: int = -1) -> None:
    """csrc/checks.h check_rnn_weights; ``suffix`` is appended to the weights' names; P: w_hh's columns (the
    state's width; < 0: H)."""
    P = H if P < 0 else P
    wi, wh = "w_ih" + suffix, "w_hh" + suffix
    same(w_ih, input, wi, "input")
    same(w_hh, input, wh, "input")
    dim(w_ih, 2, wi)
    dim(w_hh, 2, wh)
    exact_shape(w_ih, (gates * H, I), wi)
    exact_shape(w_hh, (gates * H, P), wh)
    for t, name in ((b_ih, "b_ih" + suffix), (b_hh, "b_hh" + suffix)):
        if t is None:
            continue
        same(t, input, name, "input")
        if t.dim() != 1 or t.shape[0] != gates * H:
            fail(name, ": expected shape (", gates * H, ",), got ", shape_str(t))


def grad_mask(mask, n: int = 6) -> None:
    """A schema's bool[6]: the dispatcher's own message for a C++ op (it unboxes the list before any check)."""
    if len(mask) != n:
        fail("Tried to convert a List with ", len(mask), " elements to a fixed-size array of size ", n)


def cell_args(input, hx, w_ih, w_hh, b_ih, b_hh, gates: int):
    """csrc/rnn_cell_impl.h check_cell_args; returns (B, I, H)."""
    dim(input, 2, "input")
    dim(hx, 2, "hx")
    floating(input, "input")
    same(hx, input, "hx", "input")
    B, I = input.shape
    H = hx.shape[1]
    size(hx, 0, B, "hx")
    rnn_weights(input, w_ih, w_hh, b_ih, b_hh, gates, I, H)
    return B, I, H


def lstm_cell_forward(input, hx, cx, w_ih, w_hh, b_ih, b_hh):
    B, I, H = cell_args(input, hx, w_ih, w_hh, b_ih, b_hh, 4)
    saved(cx, (B, H), input, "cx", " (as hx)")
    return B, I, H


def lstm_cell_backward(grad_h1, grad_c1, input, hx, cx, w_ih, w_hh, workspace, c1, mask):
    grad_mask(mask)
    B, I, H = cell_args(input, hx, w_ih, w_hh, None, None, 4)
    for t, name in ((grad_h1, "grad_h1"), (grad_c1, "grad_c1")):
        if t is not None:
            saved(t, (B, H), input, name, " (as hx)")
    saved(cx, (B, H), input, "cx", " (as hx)")
    saved(workspace, (B, 4 * H), input, "workspace")
    saved(c1, (B, H), input, "c1", " (as hx)")
    return B, I, H


def gru_cell_forward(input, hx, w_ih, w_hh, b_ih, b_hh, reset_after):
    return cell_args(input, hx, w_ih, w_hh, b_ih, b_hh, 3)


def gru_cell_backward(grad_h1, input, hx, w_ih, w_hh, workspace, reset_after, mask):
    grad_mask(mask)
    B, I, H = cell_args(input, hx, w_ih, w_hh, None, None, 3)
    saved(grad_h1, (B, H), input, "grad_h1", " (as hx)")
    saved(workspace, (B, (4 if reset_after else 3) * H), input, "workspace")
    return B, I, H


# ----------------------------------------------------------------------------------------------- rnn_layer
# csrc/rnn_recurrence.h: the checks of the rnn_layer ops (one direction, and both directions in one op).


def lengths_arg(lengths, input, B: int) -> None:
    """csrc/rnn_recurrence.h active_mask: (B,) integers, on the CPU or on input's device."""
    if lengths is None:
        return
    if lengths.dim() != 1 or lengths.shape[0] != B:
        fail("lengths: expected shape (", B, ",), got ", shape_str(lengths))
    if lengths.dtype.is_floating_point or lengths.dtype.is_complex or lengths.dtype == torch.bool:
        fail("lengths: expected an integer tensor, got ", dtype_str(lengths.dtype))
    if lengths.device.type != "cpu" and lengths.device != input.device:
        fail("lengths: expected device cpu or ", input.device, " (as input), got ", lengths.device)


def projection(input, w_hr, P: int, suffix: str = "") -> None:
    """csrc/checks.h check_projection: an LSTM layer's w_hr (P, H), P = h0.size(1)."""
    name = "w_hr" + suffix
    tensor(w_hr, name)
    same(w_hr, input, name, "input")
    dim(w_hr, 2, name)
    if w_hr.shape[0] != P:
        fail(name, ": expected ", P, " rows (the projection size, h0.size(1)), got shape ", shape_str(w_hr))


def layer_args(input, h0, w_ih, w_hh, b_ih, b_hh, lengths, gates: int, suffix: str = "", w_hr=None):
    """csrc/rnn_recurrence.h check_layer_args; returns (T, B, I, H). ``suffix`` names the weights (``_r``: the
    reverse direction's of a bidirectional op). w_hr: an LSTM's projection (P, H), P = h0.size(1); H is then
    w_hr's second dim."""
    dim(input, 3, "input")
    dim(h0, 2, "h0")
    floating(input, "input")
    same(h0, input, "h0", "input")
    T, B, I = input.shape
    P = h0.shape[1]
    size(h0, 0, B, "h0")
    if w_hr is not None:
        projection(input, w_hr, P, suffix)
    H = w_hr.shape[1] if w_hr is not None else P
    lengths_arg(lengths, input, B)
    rnn_weights(input, w_ih, w_hh, b_ih, b_hh, gates, I, H, suffix, P)
    return T, B, I, H


def state_history(hs, input, directions: int = 1) -> None:
    """csrc/rnn_recurrence.h check_state_history: a backward op's saved hs, (T+1, B, H) or (2, T+1, B, H),
    checked before the other arguments, which take the hidden size from it."""
    dim(input, 3, "input")
    floating(input, "input")
    dim(hs, 2 + directions, "hs")
    T, B = input.shape[0], input.shape[1]
    saved(hs, ((2,) if directions == 2 else ()) + (T + 1, B, hs.shape[-1]), input, "hs")


def lstm_layer_forward(input, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths, reverse, w_hr=None):
    """Returns (T, B, I, H); the state's width P is h0.shape[1] (H without w_hr)."""
    T, B, I, H = layer_args(input, h0, w_ih, w_hh, b_ih, b_hh, lengths, 4, w_hr=w_hr)
    saved(c0, (B, H), input, "c0", " (as h0)" if w_hr is None else " (h0's rows, w_hr's columns)")
    return T, B, I, H


lstm_layer_inference = lstm_layer_forward


def lstm_layer_backward(grad_output, grad_h_n, grad_c_n, input, w_ih, w_hh, hs, cs, workspace, lengths, reverse,
                        w_hr=None):
    """Returns (T, B, I, H); the state's width P is hs.shape[-1] (H without w_hr)."""
    state_history(hs, input)
    T, B, I, H = layer_args(input, hs[0], w_ih, w_hh, None, None, lengths, 4, w_hr=w_hr)
    P = hs.shape[-1]
    saved(cs, (T + 1, B, H), input, "cs")
    saved(workspace, (T, B, 4 * H), input, "workspace")
    if grad_output is not None:
        saved(grad_output, (T, B, P), input, "grad_output")
    for t, name, width in ((grad_h_n, "grad_h_n", P), (grad_c_n, "grad_c_n", H)):
        if t is not None:
            saved(t, (B, width), input, name)
    return T, B, I, H


def gru_layer_forward(input, h0, w_ih, w_hh, b_ih, b_hh, lengths, reverse, reset_after):
    return layer_args(input, h0, w_ih, w_hh, b_ih, b_hh, lengths, 3)


gru_layer_inference = gru_layer_forward


def gru_layer_backward(grad_output, grad_h_n, input, w_ih, w_hh, hs, workspace, lengths, reverse, reset_after):
    state_history(hs, input)
    T, B, I, H = layer_args(input, hs[0], w_ih, w_hh, None, None, lengths, 3)
    saved(workspace, (T, B, (4 if reset_after else 3) * H), input, "workspace")
    if grad_output is not None:
        saved(grad_output, (T, B, H), input, "grad_output")
    if grad_h_n is not None:
        saved(grad_h_n, (B, H), input, "grad_h_n")
    return T, B, I, H


def bidir_args(input, h0, w_ih, w_hh, b_ih, b_hh, w_ih_r, w_hh_r, b_ih_r, b_hh_r, lengths, gates: int):
    """csrc/rnn_recurrence.h both_directions: h0 (2, B, H); returns (T, B, I, H)."""
    dim(input, 3, "input")
    dim(h0, 3, "h0")
    size(h0, 0, 2, "h0")
    size(h0, 1, input.shape[1], "h0")
    T, B, I, H = layer_args(input, h0[0], w_ih, w_hh, b_ih, b_hh, lengths, gates)
    layer_args(input, h0[1], w_ih_r, w_hh_r, b_ih_r, b_hh_r, None, gates, "_r")
    return T, B, I, H


def lstm_layer_bidir_forward(input, h0, c0, w_ih, w_hh, b_ih, b_hh, w_ih_r, w_hh_r, b_ih_r, b_hh_r, lengths):
    T, B, I, H = bidir_args(input, h0, w_ih, w_hh, b_ih, b_hh, w_ih_r, w_hh_r, b_ih_r, b_hh_r, lengths, 4)
    saved(c0, (2, B, H), input, "c0", " (as h0)")
    return T, B, I, H


def _bidir_grads(grad_output, grad_states, input, T, B, H):
    if grad_output is not None:
        saved(grad_output, (T, B, 2 * H), input, "grad_output")
    for t, name in grad_states:
        if t is not None:
            saved(t, (2, B, H), input, name)


def lstm_layer_bidir_backward(grad_output, grad_h_n, grad_c_n, input, w_ih, w_hh, w_ih_r, w_hh_r, hs, cs,
                              workspace, lengths):
    state_history(hs, input, 2)
    T, B, I, H = bidir_args(input, hs[:, 0], w_ih, w_hh, None, None, w_ih_r, w_hh_r, None, None, lengths, 4)
    saved(cs, (2, T + 1, B, H), input, "cs")
    saved(workspace, (2, T, B, 4 * H), input, "workspace")
    _bidir_grads(grad_output, ((grad_h_n, "grad_h_n"), (grad_c_n, "grad_c_n")), input, T, B, H)
    return T, B, I, H


def gru_layer_bidir_forward(input, h0, w_ih, w_hh, b_ih, b_hh, w_ih_r, w_hh_r, b_ih_r, b_hh_r, lengths,
                            reset_after):
    return bidir_args(input, h0, w_ih, w_hh, b_ih, b_hh, w_ih_r, w_hh_r, b_ih_r, b_hh_r, lengths, 3)


def gru_layer_bidir_backward(grad_output, grad_h_n, input, w_ih, w_hh, w_ih_r, w_hh_r, hs, workspace, lengths,
                             reset_after):
    state_history(hs, input, 2)
    T, B, I, H = bidir_args(input, hs[:, 0], w_ih, w_hh, None, None, w_ih_r, w_hh_r, None, None, lengths, 3)
    saved(workspace, (2, T, B, (4 if reset_after else 3) * H), input, "workspace")
    _bidir_grads(grad_output, ((grad_h_n, "grad_h_n"),), input, T, B, H)
    return T, B, I, H


# ------------------------------------------------------------------------------------------- cross_entropy
# csrc/cross_entropy_args.h (shapes, dtypes, devices) and csrc/cpu/cross_entropy.cpp (values, CPU tensors only).


def ce_acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def ce_args(logits, target, valid_len, ignore_index, label_smoothing) -> None:
    """csrc/cross_entropy_args.h ce_args."""
    if logits.dim() not in (2, 3):
        fail("logits: expected a 2-D (N, V) or 3-D (B, T, V) tensor, got ", logits.dim(), "-D with shape ",
             shape_str(logits))
    floating(logits, "logits")
    if target.dtype != torch.int64:
        fail("target: expected an int64 tensor, got ", dtype_str(target.dtype))
    if tuple(target.shape) != tuple(logits.shape[:-1]):
        fail("target: expected shape [", ", ".join(str(s) for s in logits.shape[:-1]),
             "] (logits without its class dim), got ", shape_str(target))
    if target.device != logits.device:
        fail("target: expected device ", logits.device, " (as logits), got ", target.device)
    if not 0.0 <= label_smoothing <= 1.0:
        fail("label_smoothing: expected a value in [0, 1], got ", format(label_smoothing, "g"))
    if logits.shape[-1] < 1:
        fail("logits: expected at least one class, got shape ", shape_str(logits))
    if valid_len is None:
        return
    if logits.dim() != 3:
        fail("valid_len: only allowed with 3-D (B, T, V) logits, got logits of shape ", shape_str(logits))
    if valid_len.dtype != torch.int64:
        fail("valid_len: expected an int64 tensor, got ", dtype_str(valid_len.dtype))
    if valid_len.dim() != 1 or valid_len.shape[0] != logits.shape[0]:
        fail("valid_len: expected shape (", logits.shape[0], ",), got ", shape_str(valid_len))
    if valid_len.device != logits.device:
        fail("valid_len: expected device ", logits.device, " (as logits), got ", valid_len.device)


def ce_values(target, valid_len, T: int, V: int, ignore_index: int) -> None:
    """csrc/cpu/cross_entropy.cpp check_valid_len_values and check_target_values: valid_len in [0, T] and the
    unmasked targets in [0, V) or ignore_index. Reads values, so callers run it on CPU tensors only."""
    if valid_len is not None:
        bad = ((valid_len < 0) | (valid_len > T)).nonzero()
        if bad.numel():
            b = int(bad[0, 0])
            fail("valid_len: expected values in [0, T=", T, "], got ", int(valid_len[b]), " at index ", b)
    flat = target.reshape(-1)
    bad = (flat != ignore_index) & ((flat < 0) | (flat >= V))
    if valid_len is not None:
        steps = torch.arange(T, device=target.device)
        bad &= (steps.unsqueeze(0) < valid_len.unsqueeze(1)).reshape(-1)
    bad = bad.nonzero()
    if bad.numel():
        n = int(bad[0, 0])
        fail("target: expected class indices in [0, ", V, ") or ignore_index=", ignore_index, ", got ",
             int(flat[n]), " at flat position ", n)


def masked_ce_forward(logits, target, valid_len, ignore_index, label_smoothing) -> None:
    ce_args(logits, target, valid_len, ignore_index, label_smoothing)


def masked_ce_backward(grad_loss, logits, target, valid_len, lse, ignore_index, label_smoothing) -> None:
    """ce_args, then csrc/cross_entropy_args.h ce_check_backward."""
    ce_args(logits, target, valid_len, ignore_index, label_smoothing)
    acc = ce_acc_dtype(logits.dtype)
    for t, name in ((grad_loss, "grad_loss"), (lse, "lse")):
        if tuple(t.shape) != tuple(target.shape):
            fail(name, ": expected shape ", shape_str(target), " (as target), got ", shape_str(t))
        if t.dtype != acc:
            fail(name, ": expected dtype ", dtype_str(acc), ", got ", dtype_str(t.dtype))
    if grad_loss.device != logits.device or lse.device != logits.device:
        fail("grad_loss, lse: expected device ", logits.device, " (as logits), got ", grad_loss.device, " and ",
             lse.device)


# The chunked linear + cross-entropy ops (s2s_fused/ops/linear_cross_entropy.py; Python only, so their messages
# follow the C++ ones' style): hidden (N, H), weight (V, H), bias (V,), target (N,) int64, per-row tensors (N,) of
# the loss dtype.


def _linear_ce(hidden, weight, bias, target, label_smoothing, chunk_size, backend) -> None:
    dim(hidden, 2, "hidden")
    floating(hidden, "hidden")
    same(weight, hidden, "weight", "hidden")
    dim(weight, 2, "weight")
    N, H = hidden.shape
    if weight.shape[0] < 1 or weight.shape[1] != H:
        fail("weight: expected shape (V, ", H, ") with V >= 1 (H as hidden), got ", shape_str(weight))
    if bias is not None:
        same(bias, hidden, "bias", "hidden")
        if tuple(bias.shape) != (weight.shape[0],):
            fail("bias: expected shape (", weight.shape[0], ",) (V as weight), got ", shape_str(bias))
    if target.dtype != torch.int64:
        fail("target: expected an int64 tensor, got ", dtype_str(target.dtype))
    if tuple(target.shape) != (N,):
        fail("target: expected shape (", N, ",) (hidden's rows), got ", shape_str(target))
    same_device(target, hidden, "target", "hidden")
    if not 0.0 <= label_smoothing <= 1.0:
        fail("label_smoothing: expected a value in [0, 1], got ", format(label_smoothing, "g"))
    if chunk_size < 1:
        fail("chunk_size: expected a positive number of rows, got ", chunk_size)
    if backend not in ("cpu", "cuda", "triton"):
        fail("backend: expected 'cpu', 'cuda' or 'triton', got ", repr(backend))


def _per_row(t, hidden, name: str) -> None:
    acc = ce_acc_dtype(hidden.dtype)
    if t.dtype != acc:
        fail(name, ": expected dtype ", dtype_str(acc), ", got ", dtype_str(t.dtype))
    same_device(t, hidden, name, "hidden")
    if tuple(t.shape) != (hidden.shape[0],):
        fail(name, ": expected shape (", hidden.shape[0], ",) (hidden's rows), got ", shape_str(t))


def linear_masked_ce_forward(hidden, weight, bias, target, ignore_index, label_smoothing, chunk_size, backend):
    _linear_ce(hidden, weight, bias, target, label_smoothing, chunk_size, backend)


def linear_masked_ce_backward(grad_loss, hidden, weight, bias, target, lse, ignore_index, label_smoothing,
                              chunk_size, backend):
    _linear_ce(hidden, weight, bias, target, label_smoothing, chunk_size, backend)
    _per_row(grad_loss, hidden, "grad_loss")
    _per_row(lse, hidden, "lse")


def linear_masked_ce_forward_with_grad(hidden, weight, bias, target, scale, ignore_index, label_smoothing,
                                       chunk_size, backend):
    _linear_ce(hidden, weight, bias, target, label_smoothing, chunk_size, backend)
    acc = ce_acc_dtype(hidden.dtype)
    if scale.dim() != 0 or scale.dtype != acc:
        fail("scale: expected a 0-D ", dtype_str(acc), " tensor, got ", scale.dim(), "-D ", dtype_str(scale.dtype))
    same_device(scale, hidden, "scale", "hidden")


def linear_ce_target_values(hidden, weight, target, ignore_index) -> None:
    """On CPU tensors, the targets checked over all N rows before the chunks run (whose own checks would count
    positions from the start of the chunk)."""
    if hidden.device.type == "cpu":
        ce_values(target, None, hidden.shape[0], weight.shape[0], ignore_index)


# ---------------------------------------------------------------------------------------------------- beam


def beam_search_topk(logits, beam_scores, k, finished=None, eos_id=None) -> None:
    """csrc/beam_checks.h check_beam_topk_args, check for check and message for message."""
    tensor(logits, "logits")
    tensor(beam_scores, "beam_scores")
    if logits.dim() != 3:
        fail("logits: expected a 3-D tensor (B, K, V), got ", logits.dim(), "-D with shape ", shape_str(logits))
    floating(logits, "logits")
    B, K, V = logits.shape
    if beam_scores.dtype != torch.float32:
        fail("beam_scores: expected a float32 tensor, got ", dtype_str(beam_scores.dtype))
    exact_shape(beam_scores, (B, K), "beam_scores", " (logits' (B, K))")
    same_device(beam_scores, logits, "beam_scores", "logits")
    if not 1 <= k <= K * V:
        fail("k: expected 1 <= k <= K*V = ", K * V, ", got ", k)
    if finished is not None:
        tensor(finished, "finished")
        if finished.dtype != torch.bool:
            fail("finished: expected a bool tensor, got ", dtype_str(finished.dtype))
        exact_shape(finished, (B, K), "finished", " (logits' (B, K))")
        same_device(finished, logits, "finished", "logits")
        if eos_id is None:
            fail("eos_id: required when finished is given, got None")
    if eos_id is not None and not 0 <= eos_id < V:
        fail("eos_id: expected 0 <= eos_id < V = ", V, ", got ", eos_id)


# ----------------------------------------------------------------------------------------------- attention


def attn_acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def attn_rows_error(N: int, keys: torch.Tensor):
    """The message for keys' B source rows under N query rows unless N = R*B with R >= 1 (or N = B = 0), else None;
    the public function raises it as ValueError, the ops as RuntimeError."""
    B = keys.shape[0]
    if (N == 0) if B == 0 else (N >= B and N % B == 0):
        return None
    return (f"keys: expected B rows with query's N = R*B (R >= 1 query rows per source row; N = {N}), got shape "
            f"{shape_str(keys)}")


def attn_args(query, keys, values, w_q, v, valid_len) -> None:
    """csrc/attention_args.h attn_args_of, check for check and message for message; w_q and v None: the dot op's."""
    additive = w_q is not None
    named = [(query, "query"), (keys, "keys"), (values, "values")]
    named += [(w_q, "w_q"), (v, "v")] if additive else []
    for t, name in named + [(valid_len, "valid_len")]:
        tensor(t, name)
    floating(query, "query")
    dim(query, 2, "query")
    for t, name, d in ((keys, "keys", 3), (values, "values", 3)) + (((w_q, "w_q", 2), (v, "v", 1)) if additive
                                                                    else ()):
        same(t, query, name, "query")
        dim(t, d, name)
    if valid_len.dtype != torch.int64:
        fail("valid_len: expected an int64 tensor, got ", dtype_str(valid_len.dtype))
    same_device(valid_len, query, "valid_len", "query")
    dim(valid_len, 1, "valid_len")
    N, Hq = query.shape
    B, S, H = keys.shape
    rows_error = attn_rows_error(N, keys)
    if rows_error:
        fail(rows_error)
    if S < 1:
        fail("keys: expected at least one position (S >= 1), got shape ", shape_str(keys))
    size(values, 0, B, "values")
    size(values, 1, S, "values")
    if additive:
        if tuple(w_q.shape) != (H, Hq):
            fail("w_q: expected shape [", H, ", ", Hq, "] (keys' H, query's Hq), got ", shape_str(w_q))
        size(v, 0, H, "v")
    elif H != Hq:
        fail("keys: expected size ", Hq, " in dim 2 (query's Hq), got shape ", shape_str(keys))
    size(valid_len, 0, B, "valid_len")


def attn_valid_len_values(valid_len, S: int) -> None:
    """valid_len in [0, S] (csrc/cpu/attention.cpp); callers run it on CPU tensors only (it reads values)."""
    bad = (valid_len < 0) | (valid_len > S)
    if bad.any():
        i = int(bad.nonzero()[0, 0])
        fail("valid_len: expected values in [0, S=", S, "], got ", int(valid_len[i]), " at index ", i)


def additive_attention_forward(query, keys, values, w_q, v, valid_len) -> None:
    attn_args(query, keys, values, w_q, v, valid_len)


def attn_grads(grad_context, grad_weights, query, keys, values) -> None:
    """csrc/attention_args.h attn_check_grads."""
    N, S, Dv = query.shape[0], keys.shape[1], values.shape[2]
    same(grad_context, query, "grad_context", "query")
    if grad_context.dim() != 2 or tuple(grad_context.shape) != (N, Dv):
        fail("grad_context: expected shape [", N, ", ", Dv, "] (as context), got ", shape_str(grad_context))
    if grad_weights is not None:
        same(grad_weights, query, "grad_weights", "query")
        if grad_weights.dim() != 2 or tuple(grad_weights.shape) != (N, S):
            fail("grad_weights: expected shape [", N, ", ", S, "] (as weights), got ", shape_str(grad_weights))


def additive_attention_backward(grad_context, grad_weights, query, keys, values, w_q, v, valid_len,
                                query_proj) -> None:
    """csrc/attention_args.h attn_check_backward, after attn_args."""
    tensor(grad_context, "grad_context")
    if grad_weights is not None:
        tensor(grad_weights, "grad_weights")
    tensor(query_proj, "query_proj")
    attn_args(query, keys, values, w_q, v, valid_len)
    attn_grads(grad_context, grad_weights, query, keys, values)
    N, H = query.shape[0], keys.shape[2]
    acc = attn_acc_dtype(query.dtype)
    if query_proj.dtype != acc:
        fail("query_proj: expected dtype ", dtype_str(acc), ", got ", dtype_str(query_proj.dtype))
    same_device(query_proj, query, "query_proj", "query")
    if query_proj.dim() != 2 or tuple(query_proj.shape) != (N, H):
        fail("query_proj: expected shape [", N, ", ", H, "] (query W_q^T), got ", shape_str(query_proj))


def dot_attention_forward(query, keys, values, valid_len) -> None:
    attn_args(query, keys, values, None, None, valid_len)


def dot_attention_backward(grad_context, grad_weights, query, keys, values, valid_len) -> None:
    """csrc/attention_args.h attn_check_grads, after dot_attn_args."""
    tensor(grad_context, "grad_context")
    if grad_weights is not None:
        tensor(grad_weights, "grad_weights")
    attn_args(query, keys, values, None, None, valid_len)
    attn_grads(grad_context, grad_weights, query, keys, values)


# ----------------------------------------------------------------------------------------------------- end
