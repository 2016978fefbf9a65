"""Public functional ops, one module per family: input checks, backend dispatch, fake kernels, autograd
(registered as _library.py describes).

Shapes of the recurrent ops are written in the notation that csrc/rnn_core.h defines once, for both sides: T steps,
B batch rows, I input features, H hidden units, D directions, G gates (4 LSTM, 3 GRU), A activations a forward keeps
per hidden unit (workspace A*H wide); the time layout of the state history hs, cs (T+1 slots) is its TimeLayout.
"""
