"""Triton kernels and their launchers, registered as torch ops. Imported lazily (only when the triton backend is
used), so that TRITON_INTERPRET can be set before the kernels are defined."""
