"""s2s_fused: fused CUDA/C++ and Triton kernels for RNN sequence-to-sequence models, as PyTorch ops.

Every op takes a keyword-only ``backend=`` ("reference", "cpu", "cuda", "triton"; None = the process default,
"auto" unless changed with :func:`set_backend` / :func:`use_backend`).
"""
from .backend import available_backends, get_backend, set_backend, use_backend
from .ops.rnn_cell import gru_cell, lstm_cell

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "available_backends",
    "get_backend",
    "set_backend",
    "use_backend",
    "lstm_cell",
    "gru_cell",
]
