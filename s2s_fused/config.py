"""The switches of the Python side: every ``S2S_FUSED_*`` environment variable it reads, read once, at import.

One parsing rule (the C++ side reads its own switches with the same rule): a switch is on when its variable is
``1``, off when it is unset, empty or ``0``; any other value is an error (a ``ValueError`` naming the variable),
so that a typo never leaves a switch silently off. ``SETTINGS`` lists the variables that are not switches (a
folder). ``python -m s2s_fused info`` shows the switches of both sides (the C++ ones as
``s2s_fused._C.build_info()["switches"]`` reports them).

The values are module attributes, read by the code at each call (torch.compile guards on them). To change one for
a block, e.g. an A/B benchmark: ``with s2s_fused.config.override(TRITON_NO_PERSISTENT=True): ...``.
"""
from __future__ import annotations

import contextlib
import os

# name -> what turning it on does. Each is also this module's attribute of the same name without the prefix.
SWITCHES = {
    "S2S_FUSED_TRITON_NO_PERSISTENT": "Triton layers run the per-step kernels, never the persistent program",
    "S2S_FUSED_NO_BIDIR_FUSED": "bidirectional modules on CUDA run one op per direction instead of the "
                                "two-direction op",
}
PREFIX = "S2S_FUSED_"


def parse_switch(name: str, environ=os.environ) -> bool:
    """The value of the switch ``name`` in ``environ`` (the rule above)."""
    value = environ.get(name, "")
    if value in ("", "0"):
        return False
    if value == "1":
        return True
    raise ValueError(f"{name}: expected 1 (on), 0 or unset (off), got {value!r}")


TRITON_NO_PERSISTENT: bool = parse_switch("S2S_FUSED_TRITON_NO_PERSISTENT")
NO_BIDIR_FUSED: bool = parse_switch("S2S_FUSED_NO_BIDIR_FUSED")


# The CPU GEMM paths of the RNN ops (csrc/config.h, csrc/cpu/cpu_path.h), in their order of preference; a build
# reports which of them an fp32 op can take on its machine (_cpu_path_state()["candidates"]).
CPU_PATHS = ("packed", "packed-units", "onednn", "blas")

# The variables that are not on/off switches: name -> what it sets.
CPU_PATH_CACHE_VARIABLE = "S2S_FUSED_CPU_PATH_CACHE"
SETTINGS = {
    CPU_PATH_CACHE_VARIABLE: "the folder where the CPU GEMM path choices are kept across processes "
                             "(s2s_fused/_cpu_path_cache.py); 0: keep none",
}


def cpu_path_cache_dir(environ=os.environ) -> str | None:
    """The folder of the kept CPU path choices: ``S2S_FUSED_CPU_PATH_CACHE`` (``0``: keep none; unset or empty:
    ``$XDG_CACHE_HOME/s2s_fused``, else ``~/.cache/s2s_fused``)."""
    value = environ.get(CPU_PATH_CACHE_VARIABLE, "")
    if value == "0":
        return None
    if value:
        return value
    base = environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "s2s_fused")


CPU_PATH_CACHE: str | None = cpu_path_cache_dir()


def switches() -> dict[str, bool]:
    """Every switch of the Python side with its value now."""
    return {name: globals()[name[len(PREFIX):]] for name in SWITCHES}


@contextlib.contextmanager
def override(**values: bool):
    """``with override(TRITON_NO_PERSISTENT=True):`` sets switches (by attribute name) for the block."""
    known = {name[len(PREFIX):] for name in SWITCHES}
    for attr, value in values.items():
        if attr not in known:
            raise ValueError(f"override: expected a switch among {', '.join(sorted(known))}, got {attr!r}")
        if not isinstance(value, bool):
            raise TypeError(f"override: {attr}: expected a bool, got {type(value).__name__}")
    saved = {attr: globals()[attr] for attr in values}
    globals().update(values)
    try:
        yield
    finally:
        globals().update(saved)
