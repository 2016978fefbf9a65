"""The ``python -m s2s_fused`` command line. Sub-commands: info (and those the seq2seq package adds)."""
from __future__ import annotations

import argparse
import platform
import sys


def info() -> dict:
    import torch

    from . import __version__
    from .backend import BACKENDS, build_info, extension_error, is_available, triton_installed

    out = {
        "s2s_fused": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch CUDA": torch.version.cuda or "none (CPU build)",
        "triton": "not installed",
        "CUDA device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
    }
    if triton_installed():
        import triton

        out["triton"] = triton.__version__
    b = build_info()
    if b:
        out["extension"] = "built with CUDA" if b["with_cuda"] else "built without CUDA (CPU only)"
        out["CUDA arch list"] = b["cuda_arch_list"] or "-"
        out["CPU capabilities compiled"] = ", ".join(b["cpu_capabilities_compiled"])
        out["CPU capability in use"] = b["cpu_capability"]
    else:
        out["extension"] = f"not importable: {extension_error()}"
    out["backends"] = ", ".join(f"{n} ({'available' if is_available(n) else 'unavailable'})" for n in BACKENDS)
    return out


def _cmd_info(args) -> int:
    for k, v in info().items():
        print(f"{k:28s} {v}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m s2s_fused", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="versions, compiled and available backends, CUDA arch list").set_defaults(
        func=_cmd_info)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
