"""Public functional ops, one module per family: input checks, backend dispatch, fake kernels, autograd
(registered as _library.py describes).

Shapes of the recurrent ops, in the notation every docstring of the package uses:

- ``T`` steps, ``B`` batch rows, ``I`` input features, ``H`` hidden units, ``D`` directions (1, or 2 for a
  bidirectional layer);
- ``G`` gates per hidden unit: 4 for an LSTM (i, f, g, o), 3 for a GRU (r, z, n); so w_ih (G*H, I),
  w_hh (G*H, H), b_ih, b_hh (G*H,), in torch's layout and gate order;
- ``A`` activations per hidden unit that a forward saves for backward, its workspace (B, A*H) per step:
  4 for an LSTM (i, f, g, o), 4 for a GRU with reset_after (r, z, n, W_hn h + b_hn), 3 for a GRU with
  reset_before (r, z, n);
- the state history of a layer, hs and cs (T+1, B, H) per direction: step t reads slot t and writes slot t+1
  forward, reads slot t+1 and writes slot t reversed; so h0 is in slot 0 (forward) or T (reversed), h_n in slot
  T or 0.
"""
