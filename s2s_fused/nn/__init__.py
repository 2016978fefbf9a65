"""Drop-in modules: the torch.nn counterparts with the same arguments, parameter names and state_dict."""
# ---- cells and layers
from .rnn import GRU, LSTM, GRUCell, LSTMCell

# ---- swapping torch.nn's modules for ours and back
from .conversion import convert, to_torch

# ---- losses
from .loss import MaskedSoftmaxCELoss

# ---- end
