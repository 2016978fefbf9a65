"""s2s_fused: fused CUDA/C++ and Triton kernels for RNN sequence-to-sequence models, as PyTorch ops.

Every op takes a keyword-only ``backend=`` ("reference", "cpu", "cuda", "triton"; None = the process default,
"auto" unless changed with :func:`set_backend` / :func:`use_backend`).
"""
from . import config
from .backend import available_backends, empty_cpu_cache, get_backend, set_backend, use_backend

# ---- rnn_cell
from .ops.rnn_cell import gru_cell, lstm_cell

# ---- rnn_layer
from .ops.rnn_layer import gru_layer, lstm_layer

# ---- cross_entropy
from .ops.cross_entropy import masked_softmax_cross_entropy
from .ops.linear_cross_entropy import linear_masked_cross_entropy

# ---- beam
from .ops.beam import beam_search_topk

# ---- attention
from .ops.attention import additive_attention, dot_attention

# ---- end of ops

# the drop-in modules (s2s_fused.nn.LSTM, ..., s2s_fused.nn.MaskedSoftmaxCELoss)
from . import nn  # noqa: E402



def __getattr__(name):
    # s2s_fused.onnx imports onnxscript (slow, optional): loaded on first use, not with the package.
    if name == "onnx":
        import importlib

        return importlib.import_module(".onnx", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__version__ = "0.1.0"

__all__ = ["__version__"] + sorted(
    name for name, obj in list(globals().items())
    if not name.startswith("_") and callable(obj) and getattr(obj, "__module__", "").startswith("s2s_fused")
)
