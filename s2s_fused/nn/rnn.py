"""Drop-in recurrent modules.

The cells subclass ``torch.nn.LSTMCell`` / ``torch.nn.GRUCell``: constructor, parameter names, shapes,
initialisation (same random stream) and ``state_dict`` are torch's own, so weights load either way with
``strict=True`` and ``isinstance(cell, torch.nn.LSTMCell)`` holds; only ``forward`` runs the fused op.
"""
from __future__ import annotations

import torch

from .. import _checks
from ..backend import _validate_name
from ..ops.rnn_cell import gru_cell, lstm_cell


def _check_backend_arg(backend):
    if backend is not None:
        _validate_name(backend)
    return backend


def _cell_input(module_name, input, hidden_size):
    _checks.tensor(input, "input")
    if input.dim() not in (1, 2):
        raise ValueError(f"{module_name}: expected input to be 1-D or 2-D, got {input.dim()}-D with shape "
                         f"{tuple(input.shape)}")
    batch = () if input.dim() == 1 else (input.shape[0],)
    return input.new_zeros(*batch, hidden_size)


class LSTMCell(torch.nn.LSTMCell):
    """``torch.nn.LSTMCell`` with a fused forward/backward. Extra argument: ``backend`` (None = process default).

    forward(input (B, I) or (I,), hx = (h, c) or None) -> (h1, c1)
    """

    def __init__(self, input_size, hidden_size, bias=True, device=None, dtype=None, *, backend=None):
        super().__init__(input_size, hidden_size, bias=bias, device=device, dtype=dtype)
        self.backend = _check_backend_arg(backend)

    def forward(self, input, hx=None):
        if hx is None:
            zeros = _cell_input("LSTMCell", input, self.hidden_size)
            hx = (zeros, zeros)
        return lstm_cell(input, hx, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh,
                         backend=self.backend)


class GRUCell(torch.nn.GRUCell):
    """``torch.nn.GRUCell`` with a fused forward/backward. Extra arguments: ``reset_after`` (True: torch/cuDNN's
    GRU; False: Cho et al. / d2l's, where the reset gate scales h before W_hn) and ``backend``.

    forward(input (B, I) or (I,), hx (B, H) or (H,) or None) -> h1
    """

    def __init__(self, input_size, hidden_size, bias=True, device=None, dtype=None, *, reset_after=True,
                 backend=None):
        super().__init__(input_size, hidden_size, bias=bias, device=device, dtype=dtype)
        if not isinstance(reset_after, bool):
            raise TypeError(f"reset_after: expected a bool, got {type(reset_after).__name__}")
        self.reset_after = reset_after
        self.backend = _check_backend_arg(backend)

    def extra_repr(self):
        s = super().extra_repr()
        return s if self.reset_after else s + ", reset_after=False"

    def forward(self, input, hx=None):
        if hx is None:
            hx = _cell_input("GRUCell", input, self.hidden_size)
        return gru_cell(input, hx, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh,
                        reset_after=self.reset_after, backend=self.backend)


# ---------------------------------------------------------------------------- sequence layers (rnn_layer)
# (LSTM and GRU go here)
