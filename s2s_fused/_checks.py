"""Input checks shared by the public op wrappers. Every message names the argument, what was expected and what
came; checks run before any kernel (and never read tensor values, so they cost no host sync)."""
from __future__ import annotations

import torch

FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
INT_DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)


def tensor(x, name: str, *, dims=None, floating: bool = False, integer: bool = False) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    if dims is not None:
        dims = (dims,) if isinstance(dims, int) else tuple(dims)
        if x.dim() not in dims:
            want = " or ".join(f"{d}-D" for d in dims)
            raise ValueError(f"{name}: expected a {want} tensor, got {x.dim()}-D with shape {tuple(x.shape)}")
    if floating and x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name}: expected a float32, float64, float16 or bfloat16 tensor, got {x.dtype}")
    if integer and x.dtype not in INT_DTYPES:
        raise TypeError(f"{name}: expected an integer tensor, got {x.dtype}")
    return x


def same_dtype_device(ref: torch.Tensor, ref_name: str, **others) -> None:
    """Every tensor in ``others`` (None skipped) has ``ref``'s dtype and device."""
    for name, t in others.items():
        if t is None:
            continue
        if t.dtype != ref.dtype:
            raise TypeError(f"{name}: expected dtype {ref.dtype} (as {ref_name}), got {t.dtype}")
        if t.device != ref.device:
            raise RuntimeError(f"{name}: expected device {ref.device} (as {ref_name}), got {t.device}")


def same_device(ref: torch.Tensor, ref_name: str, **others) -> None:
    for name, t in others.items():
        if t is not None and t.device != ref.device:
            raise RuntimeError(f"{name}: expected device {ref.device} (as {ref_name}), got {t.device}")


def shape(t: torch.Tensor, name: str, expected: tuple) -> None:
    if tuple(t.shape) != tuple(expected):
        raise ValueError(f"{name}: expected shape {tuple(expected)}, got {tuple(t.shape)}")


def choice(value, name: str, options) -> None:
    if value not in options:
        raise ValueError(f"{name}: expected one of {', '.join(map(repr, options))}, got {value!r}")


def rnn_tensors(kind: str, input, h, c, w_ih, w_hh, b_ih, b_hh, dims, state_dims=None) -> str:
    """Kinds, dtypes and devices of an LSTM/GRU cell's or layer's tensors: input with ``dims`` dims (an int or a
    tuple), the state h (and c, for an LSTM; None for a GRU) with ``state_dims`` (None: as many as input), 2-D
    weights, 1-D biases or None, all one floating dtype on input's device. Returns the state's argument name
    ("hx" or "hx[0]")."""
    tensor(input, "input", dims=dims, floating=True)
    hname = "hx[0]" if kind == "lstm" else "hx"
    state_dims = input.dim() if state_dims is None else state_dims
    tensor(h, hname, dims=state_dims, floating=True)
    tensor(w_ih, "w_ih", dims=2, floating=True)
    tensor(w_hh, "w_hh", dims=2, floating=True)
    for name, b in (("b_ih", b_ih), ("b_hh", b_hh)):
        if b is not None:
            tensor(b, name, dims=1, floating=True)
    others = {hname: h, "w_ih": w_ih, "w_hh": w_hh, "b_ih": b_ih, "b_hh": b_hh}
    if c is not None:
        tensor(c, "hx[1]", dims=state_dims, floating=True)
        others["hx[1]"] = c
    same_dtype_device(input, "input", **others)
    return hname


def rnn_weights(w_ih, w_hh, b_ih, b_hh, gates: int, input_size: int, hidden_size: int, hname: str = "",
                state_size: int | None = None) -> None:
    """Shapes of one LSTM/GRU cell's or layer-direction's weights: w_ih (G*H, I), w_hh (G*H, P), b (G*H,), where P
    is the state's (``hname``'s) last dim: H but for a projected LSTM (``state_size``). Weights consistent among
    themselves with another H blame the state."""
    n = w_hh.shape[1]
    if (hname and state_size is None and n != hidden_size and tuple(w_hh.shape) == (gates * n, n)
            and w_ih.shape[0] == gates * n):
        raise ValueError(f"{hname}: expected hidden size {n} in the last dim (w_hh is {tuple(w_hh.shape)}), got "
                         f"{hidden_size}")
    shape(w_ih, "w_ih", (gates * hidden_size, input_size))
    shape(w_hh, "w_hh", (gates * hidden_size, hidden_size if state_size is None else state_size))
    for name, b in (("b_ih", b_ih), ("b_hh", b_hh)):
        if b is not None:
            shape(b, name, (gates * hidden_size,))


# torch.nn's RNN modules raise RuntimeError for most shape and dtype mismatches (ValueError for an input whose
# dtype is not the weights'), where the package raises ValueError / TypeError. The modules raise these, which are
# both, so code written against either catches them.
class RNNShapeError(ValueError, RuntimeError):
    """A shape mismatch in an nn RNN module's call: ValueError here, RuntimeError in torch.nn."""


class RNNDtypeError(TypeError, RuntimeError):
    """A dtype mismatch in an nn RNN module's call where torch.nn raises RuntimeError."""


class RNNInputDtypeError(TypeError, ValueError):
    """An nn RNN layer's input whose dtype is not its weights': TypeError here, ValueError in torch.nn."""
