"""Public functional ops, one module per family: input checks, backend dispatch, fake kernels, autograd."""
