"""Drop-in recurrent modules.

The cells subclass ``torch.nn.LSTMCell`` / ``torch.nn.GRUCell``: constructor, parameter names, shapes,
initialisation (same random stream) and ``state_dict`` are torch's own, so weights load either way with
``strict=True`` and ``isinstance(cell, torch.nn.LSTMCell)`` holds; only ``forward`` runs the fused op.
"""
from __future__ import annotations

import torch

from torch.nn.utils.rnn import PackedSequence

from .. import _checks, config
from ..backend import _validate_name, resolve
from ..ops.rnn_cell import gru_cell, lstm_cell
from ..ops.rnn_layer import gru_layer, gru_layer_bidir, lstm_layer, lstm_layer_bidir


def check_backend_arg(backend):
    if backend is not None:
        _validate_name(backend)
    return backend


def _cell_state(module, input, hx, names):
    """Checks a cell's call as torch.nn does (before any kernel, naming the culprit) and returns its states: hx's
    tensors, or zeros when hx is None. ``names``: the states' argument names, ("hx",) or ("hx[0]", "hx[1]")."""
    kind = type(module).__name__
    _checks.tensor(input, "input")
    if input.dim() not in (1, 2):
        raise ValueError(f"{kind}: input: expected a 1-D or 2-D tensor, got {input.dim()}-D with shape "
                         f"{tuple(input.shape)}")
    if input.shape[-1] != module.input_size:
        raise _checks.RNNShapeError(f"{kind}: input: expected input_size {module.input_size} in the last dim, got "
                                    f"shape {tuple(input.shape)}")
    w = module.weight_ih
    if input.dtype != w.dtype:
        raise _checks.RNNDtypeError(f"{kind}: input: expected dtype {w.dtype} (as the module's parameters), got "
                                    f"{input.dtype}")
    expected = (*input.shape[:-1], module.hidden_size)
    if hx is None:
        return [input.new_zeros(expected)] * len(names)
    if len(names) == 2 and (not isinstance(hx, (tuple, list)) or len(hx) != 2):
        raise TypeError(f"{kind}: hx: expected a tuple (h, c) of two tensors, got {type(hx).__name__}")
    states = list(hx) if len(names) == 2 else [hx]
    for name, h in zip(names, states):
        _checks.tensor(h, name)
        if tuple(h.shape) != expected:
            raise _checks.RNNShapeError(f"{kind}: {name}: expected shape {expected} (input's batch, hidden_size "
                                        f"{module.hidden_size}), got {tuple(h.shape)}")
        if h.dtype != input.dtype:
            raise _checks.RNNDtypeError(f"{kind}: {name}: expected dtype {input.dtype} (as input), got {h.dtype}")
    return states


def _refuse_script(module):
    """torch.jit.script calls this on every submodule before compiling it; our forward dispatches in Python
    (backends, autograd functions), which TorchScript cannot compile, so say what works instead."""
    name = next(c for c in type(module).__mro__ if c.__module__ == __name__).__name__
    raise RuntimeError(f"s2s_fused.nn.{name}: torch.jit.script cannot compile the fused modules; "
                       "use torch.jit.trace, torch.compile, or s2s_fused.nn.to_torch(model) for torch.nn's classes")


class _GRUOptions:
    """``reset_after`` and ``backend``, shared by GRUCell and GRU."""

    def _set_gru_options(self, reset_after, backend):
        if not isinstance(reset_after, bool):
            raise TypeError(f"reset_after: expected a bool, got {type(reset_after).__name__}")
        self.reset_after = reset_after
        self.backend = check_backend_arg(backend)

    def extra_repr(self):
        s = super().extra_repr()
        return s if self.reset_after else s + ", reset_after=False"


class LSTMCell(torch.nn.LSTMCell):
    """``torch.nn.LSTMCell`` with a fused forward/backward. Extra argument: ``backend`` (None = process default).

    forward(input (B, I) or (I,), hx = (h, c) or None) -> (h1, c1)
    """

    __prepare_scriptable__ = _refuse_script

    def __init__(self, input_size, hidden_size, bias=True, device=None, dtype=None, *, backend=None):
        super().__init__(input_size, hidden_size, bias=bias, device=device, dtype=dtype)
        self.backend = check_backend_arg(backend)

    def forward(self, input, hx=None):
        hx = tuple(_cell_state(self, input, hx, ("hx[0]", "hx[1]")))
        return lstm_cell(input, hx, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh,
                         backend=self.backend)


class GRUCell(_GRUOptions, torch.nn.GRUCell):
    """``torch.nn.GRUCell`` with a fused forward/backward. Extra arguments: ``reset_after`` (True: torch/cuDNN's
    GRU; False: Cho et al. / d2l's, where the reset gate scales h before W_hn) and ``backend``.

    forward(input (B, I) or (I,), hx (B, H) or (H,) or None) -> h1
    """

    __prepare_scriptable__ = _refuse_script

    def __init__(self, input_size, hidden_size, bias=True, device=None, dtype=None, *, reset_after=True,
                 backend=None):
        super().__init__(input_size, hidden_size, bias=bias, device=device, dtype=dtype)
        self._set_gru_options(reset_after, backend)

    def forward(self, input, hx=None):
        (hx,) = _cell_state(self, input, hx, ("hx",))
        return gru_cell(input, hx, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh,
                        reset_after=self.reset_after, backend=self.backend)


# ---------------------------------------------------------------------------------------- sequence layers
# The layers subclass torch.nn.RNNBase with mode "LSTM" / "GRU", exactly what torch.nn.LSTM / GRU's constructors
# do, so the constructor, parameter names, initialisation (same random stream), state_dict and flatten_parameters
# are torch's own. Not torch.nn.LSTM / GRU themselves: Dynamo refuses any isinstance(m, nn.LSTM / GRU / RNN)
# module (torch._dynamo.config.allow_rnn), which would rule out torch.compile(fullgraph=True). forward runs one
# fused op per layer and direction (or per layer, both directions in one op), so the time loop never runs in Python.


def _autocast_dtype(module, x):
    """The dtype torch.nn's layer would run in under autocast, or None: aten::lstm is on CPU autocast's
    lower-precision list (its output comes back in bfloat16), aten::gru is not (it stays in float32)."""
    on_cpu = x.device.type == "cpu" and x.is_floating_point()
    if module._kind == "LSTM" and on_cpu and torch.is_autocast_enabled("cpu"):
        return torch.get_autocast_dtype("cpu")
    return None


def _cast_state(hx, dtype):
    if isinstance(hx, (tuple, list)):
        return type(hx)(h.to(dtype) if isinstance(h, torch.Tensor) else h for h in hx)
    return hx.to(dtype) if isinstance(hx, torch.Tensor) else hx


def _packed_layout(batch_sizes: torch.Tensor):
    """For a PackedSequence's (T,) batch sizes (CPU): each row's length (B,) and the positions of the packed rows
    in a (T * B) time-major padded layout (the packed data is that layout's active rows, in order)."""
    T = batch_sizes.shape[0]
    B = int(batch_sizes[0]) if T else 0
    rows = torch.arange(B)
    lengths = (batch_sizes.unsqueeze(0) > rows.unsqueeze(1)).sum(1)
    positions = (rows.unsqueeze(0) < batch_sizes.unsqueeze(1)).reshape(-1).nonzero().squeeze(1)
    return T, B, lengths, positions


# The backends whose bidirectional layers run both directions in one op (s2s_fused.lstm_layer_bidir /
# gru_layer_bidir): on CUDA one batched recurrent GEMM and one pointwise launch per step instead of two of each; on
# CPU one parallel region over both directions' sequence loops, writing the (T, B, 2H) output in place of two
# outputs and a cat (2-layer bidirectional LSTM forward, T=32 B=64 H=256, 2 threads, AMD EPYC: 0.86x torch.nn per
# direction, 0.96x in one op; GRU alike either way; benchmarks/NOTES.md). S2S_FUSED_NO_BIDIR_FUSED=1
# (s2s_fused.config) goes back to one op per direction everywhere.
BIDIR_FUSED_BACKENDS = frozenset({"cuda", "cpu"})


def _use_bidir_fused(module, x):
    if config.NO_BIDIR_FUSED or getattr(module, "proj_size", 0) > 0:  # the two-direction ops take no projection
        return False
    return resolve(f"{module._kind.lower()}_layer", module.backend, x.device) in BIDIR_FUSED_BACKENDS


class _FusedRNNBase:
    """The forward shared by LSTM and GRU: torch's input conventions (batch_first, unbatched, PackedSequence, hx
    None) around one fused op call per layer and direction; inter-layer dropout in training only, as torch."""

    _kind = ""  # "LSTM" or "GRU"

    def _layer_call(self, x, h0, c0, weights, lengths, reverse):
        raise NotImplementedError

    def _check_hidden(self, h, name, expected, input):
        _checks.tensor(h, name)
        if tuple(h.shape) != tuple(expected):
            raise _checks.RNNShapeError(f"{self._kind}: {name}: expected shape {tuple(expected)}, got "
                                        f"{tuple(h.shape)}")
        if h.dtype != input.dtype:
            raise _checks.RNNDtypeError(f"{self._kind}: {name}: expected dtype {input.dtype} (as input), got "
                                        f"{h.dtype}")
        if h.device != input.device:
            raise RuntimeError(f"{self._kind}: {name}: expected device {input.device} (as input), got {h.device}")

    def _run(self, input, hx):
        """Returns (output, h_n, c_n or None) in the caller's layout."""
        packed = isinstance(input, PackedSequence)
        D = 2 if self.bidirectional else 1
        L, H = self.num_layers, self.hidden_size
        if packed:
            data, batch_sizes, sorted_indices, unsorted_indices = input
            _checks.tensor(data, "input.data", dims=2)
            T, B, lengths, positions = _packed_layout(batch_sizes)
            x = data.new_zeros(T * B, data.shape[-1]).index_copy(0, positions.to(data.device), data)
            x = x.view(T, B, data.shape[-1])
            unbatched = False
        else:
            _checks.tensor(input, "input")
            if input.dim() not in (2, 3):
                raise ValueError(f"{self._kind}: input: expected a 2-D (unbatched) or 3-D tensor, got "
                                 f"{input.dim()}-D with shape {tuple(input.shape)}")
            unbatched = input.dim() == 2
            x = input.unsqueeze(1) if unbatched else (input.transpose(0, 1) if self.batch_first else input)
            T, B = x.shape[0], x.shape[1]
            lengths = sorted_indices = unsorted_indices = None
        if x.shape[0] == 0:
            raise RuntimeError(f"{self._kind}: input: expected a sequence length larger than 0, got shape "
                               f"{tuple(x.shape if packed else input.shape)}")
        if x.shape[-1] != self.input_size:
            raise _checks.RNNShapeError(f"{self._kind}: input: expected input_size {self.input_size} in the last "
                                        f"dim, got shape {tuple(x.shape if packed else input.shape)}")
        # The tensors getattr returns now, as torch's forward uses (its _update_flat_weights): a parametrization
        # (weight_norm, orthogonal, ...) computes its weight on access, and torch.func.functional_call swaps
        # parameters without going through the cached _flat_weights list.
        weights = [getattr(self, name) for name in self._flat_weights_names]
        autocast = _autocast_dtype(self, x)
        if autocast is not None:
            x, weights = x.to(autocast), [w.to(autocast) for w in weights]
            hx = None if hx is None else _cast_state(hx, autocast)
        w0 = weights[0]
        if not x.is_floating_point() or x.dtype != w0.dtype:
            raise _checks.RNNInputDtypeError(f"{self._kind}: input: expected dtype {w0.dtype} (as the module's "
                                             f"parameters), got {x.dtype}")
        if x.device != w0.device:
            raise RuntimeError(f"{self._kind}: input: expected device {w0.device} (as the module's parameters), "
                               f"got {x.device}")
        # h's width: the projection's with proj_size (torch.nn.LSTM's h = W_hr (o * tanh c)), else H; c keeps H.
        P = getattr(self, "proj_size", 0) or H
        state_shape = (L * D, H) if unbatched else (L * D, B, H)
        h_shape = (L * D, P) if unbatched else (L * D, B, P)
        lstm = self._kind == "LSTM"
        if hx is None:
            h0 = x.new_zeros(L * D, B, P)
            c0 = (h0 if P == H else x.new_zeros(L * D, B, H)) if lstm else None
        else:
            if lstm:
                if not isinstance(hx, (tuple, list)) or len(hx) != 2:
                    raise TypeError(f"LSTM: hx: expected a tuple (h_0, c_0), got {type(hx).__name__}")
                h0, c0 = hx
                self._check_hidden(h0, "hx[0]", h_shape, x)
                self._check_hidden(c0, "hx[1]", state_shape, x)
            else:
                h0, c0 = hx, None
                self._check_hidden(h0, "hx", state_shape, x)
            if unbatched:
                h0 = h0.unsqueeze(1)
                c0 = c0.unsqueeze(1) if lstm else None
            elif sorted_indices is not None:
                h0 = h0.index_select(1, sorted_indices)
                c0 = c0.index_select(1, sorted_indices) if lstm else None
        per_dir = len(weights) // (L * D)
        h_n, c_n = [], []
        layer_in = x
        bidir_fused = D == 2 and _use_bidir_fused(self, x)
        for layer in range(L):
            if bidir_fused:  # both directions in one op
                k = 2 * layer
                layer_in, h, c = self._bidir_call(layer_in, h0[k:k + 2], c0[k:k + 2] if lstm else None,
                                                  weights[k * per_dir:(k + 2) * per_dir], per_dir, lengths)
                h_n += list(h.unbind(0))
                c_n += list(c.unbind(0)) if lstm else [None, None]
                if self.dropout > 0 and self.training and layer < L - 1:
                    layer_in = torch.nn.functional.dropout(layer_in, self.dropout, training=True)
                continue
            outs = []
            for d in range(D):
                k = layer * D + d
                out, h, c = self._layer_call(layer_in, h0[k], c0[k] if lstm else None,
                                             weights[k * per_dir:(k + 1) * per_dir], lengths, d == 1)
                outs.append(out)
                h_n.append(h)
                c_n.append(c)
            layer_in = outs[0] if D == 1 else torch.cat(outs, dim=-1)
            if self.dropout > 0 and self.training and layer < L - 1:
                layer_in = torch.nn.functional.dropout(layer_in, self.dropout, training=True)
        out = layer_in
        h_n = torch.stack(h_n)
        c_n = torch.stack(c_n) if lstm else None
        if packed:
            out = PackedSequence(out.reshape(T * B, -1).index_select(0, positions.to(out.device)), batch_sizes,
                                 sorted_indices, unsorted_indices)
            if unsorted_indices is not None:
                h_n = h_n.index_select(1, unsorted_indices)
                c_n = c_n.index_select(1, unsorted_indices) if lstm else None
        elif unbatched:
            out, h_n = out.squeeze(1), h_n.squeeze(1)
            c_n = c_n.squeeze(1) if lstm else None
        elif self.batch_first:
            out = out.transpose(0, 1)
        return out, h_n, c_n


class LSTM(_FusedRNNBase, torch.nn.RNNBase):
    """``torch.nn.LSTM`` with a fused forward/backward over whole sequences. Extra argument: ``backend``.

    A ``torch.nn.RNNBase`` (not an ``nn.LSTM``, which Dynamo refuses to compile) with torch's constructor,
    parameter names (``weight_ih_l0``, ``weight_hh_l0_reverse``, ...), initialisation and ``state_dict``; forward(input (T, B, I) / (B, T, I) with batch_first / (T, I) / PackedSequence,
    hx = (h_0, c_0) each (num_layers * num_directions, B, H), or None) -> (output, (h_n, c_n)).
    ``proj_size = P > 0``: LSTM with projections as torch's (``weight_hr_l{k}[_reverse]`` (P, H), h = W_hr (o *
    tanh c)): h_0, h_n are (num_layers * num_directions, B, P), the output D * P wide; c_0, c_n keep H.
    """

    __prepare_scriptable__ = _refuse_script

    _kind = "LSTM"

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False, dropout=0.0,
                 bidirectional=False, proj_size=0, device=None, dtype=None, *, backend=None):
        super().__init__("LSTM", input_size, hidden_size, num_layers=num_layers, bias=bias,
                         batch_first=batch_first, dropout=dropout, bidirectional=bidirectional, proj_size=proj_size,
                         device=device, dtype=dtype)
        self.backend = check_backend_arg(backend)

    def _layer_call(self, x, h0, c0, weights, lengths, reverse):
        # torch's per layer-direction order: w_ih, w_hh, [b_ih, b_hh], [w_hr]
        w_ih, w_hh, *rest = weights
        w_hr = rest.pop() if self.proj_size > 0 else None
        b_ih, b_hh = rest if rest else (None, None)
        out, (h, c) = lstm_layer(x, (h0, c0), w_ih, w_hh, b_ih, b_hh, lengths=lengths, reverse=reverse, w_hr=w_hr,
                                 backend=self.backend)
        return out, h, c

    def _bidir_call(self, x, h0, c0, weights, per_dir, lengths):
        wf, wr = (list(weights[i:i + per_dir]) + [None, None] * (per_dir == 2) for i in (0, per_dir))
        out, (h, c) = lstm_layer_bidir(x, (h0, c0), tuple(wf), tuple(wr), lengths=lengths, backend=self.backend)
        return out, h, c

    def forward(self, input, hx=None):
        out, h_n, c_n = self._run(input, hx)
        return out, (h_n, c_n)


class GRU(_GRUOptions, _FusedRNNBase, torch.nn.RNNBase):
    """``torch.nn.GRU`` with a fused forward/backward over whole sequences. Extra arguments: ``reset_after``
    (True: torch/cuDNN's GRU; False: Cho et al. / d2l's, which torch does not offer) and ``backend``.

    forward(input as :class:`LSTM`, hx (num_layers * num_directions, B, H) or None) -> (output, h_n).
    """

    __prepare_scriptable__ = _refuse_script

    _kind = "GRU"

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False, dropout=0.0,
                 bidirectional=False, device=None, dtype=None, *, reset_after=True, backend=None, **kwargs):
        if "proj_size" in kwargs:
            raise ValueError("GRU: proj_size: only supported for LSTM, not RNN or GRU (as torch.nn.GRU)")
        if kwargs:
            raise TypeError(f"GRU: unexpected keyword argument {next(iter(kwargs))!r}")
        super().__init__("GRU", input_size, hidden_size, num_layers=num_layers, bias=bias,
                         batch_first=batch_first, dropout=dropout, bidirectional=bidirectional, device=device,
                         dtype=dtype)
        self._set_gru_options(reset_after, backend)

    def _layer_call(self, x, h0, c0, weights, lengths, reverse):
        w_ih, w_hh, *b = weights
        b_ih, b_hh = b if b else (None, None)
        out, h = gru_layer(x, h0, w_ih, w_hh, b_ih, b_hh, lengths=lengths, reverse=reverse,
                           reset_after=self.reset_after, backend=self.backend)
        return out, h, None

    def _bidir_call(self, x, h0, c0, weights, per_dir, lengths):
        wf, wr = (list(weights[i:i + per_dir]) + [None, None] * (per_dir == 2) for i in (0, per_dir))
        out, h = gru_layer_bidir(x, h0, tuple(wf), tuple(wr), lengths=lengths, reset_after=self.reset_after,
                                 backend=self.backend)
        return out, h, None

    def forward(self, input, hx=None):
        out, h_n, _ = self._run(input, hx)
        return out, h_n
