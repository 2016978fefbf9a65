"""Drop-in modules: the torch.nn counterparts with the same arguments, parameter names and state_dict."""
# ---- cells and layers
from .rnn import GRUCell, LSTMCell

# ---- layers (rnn_layer issue)
from .rnn import GRU, LSTM

# ---- losses
from .loss import MaskedSoftmaxCELoss

# ---- end
