"""The ``python -m s2s_fused`` command line. Sub-commands: info, train, translate, bench.

Mistakes a user can make (a missing data file, an unknown option value, a checkpoint from another version,
``--device cuda`` without a GPU) end with one line on stderr and exit status 2, never a traceback."""
from __future__ import annotations

import argparse
import platform
import sys


def info() -> dict:
    import torch
    from packaging.version import Version

    from . import __version__, config
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
        built_for = b["torch_version"]  # MAJOR.MINOR.PATCH, without a local or pre-release tag
        out["extension built for torch"] = built_for if built_for == Version(torch.__version__).base_version else (
            f"{built_for}, but torch {torch.__version__} is running: rebuild the extension")
        # the archs setup.py compiled (it always names them to torch); none in a CPU-only build
        out["CUDA arch list"] = b["cuda_arch_list"] if b["with_cuda"] else "-"
        out["CPU capabilities compiled"] = ", ".join(b["cpu_capabilities_compiled"])
        out["CPU capability in use"] = b["cpu_capability"]
    else:
        out["extension"] = f"not importable: {extension_error()}"
    out["backends"] = ", ".join(f"{n} ({'available' if is_available(n) else 'unavailable'})" for n in BACKENDS)
    out["switches (Python)"] = _switches_line(config.switches())
    cpp = b.get("switches")
    out["switches (C++)"] = _switches_line(cpp) if cpp is not None else "not reported by this build of the extension"
    out.update(_cpu_path_lines())
    return out


def _cpu_path_lines() -> dict:
    """The CPU GEMM path policy (S2S_FUSED_CPU_PATH, csrc/cpu/cpu_path.h) and the choices this process made."""
    from .backend import _extension

    try:
        state = _extension()._cpu_path_state()
    except (AttributeError, ValueError) as e:  # no extension / an old build; a bad S2S_FUSED_CPU_PATH value
        return {"CPU GEMM path": f"not reported ({e})" if isinstance(e, ValueError) else "not reported by this build of the extension"}
    policy = {"auto": "auto (the fastest of packed / onednn / blas, measured per op and shape on first use)"}
    choices = state["choices"]
    lines = "; ".join(f"{key}: {c['path']} (" + ", ".join(f"{p} {t:.0f} us" for p, t in c["times_us"].items()) + ")"
                      for key, c in sorted(choices.items()))
    w = state["packed_weights"]
    return {"CPU GEMM path": policy.get(state["path"], f"{state['path']} (forced by S2S_FUSED_CPU_PATH)"),
            "CPU GEMM path choices": lines or "none yet in this process",
            "packed weights cached": f"{w['entries']} ({w['bytes'] / 2**20:.1f} MiB; {w['hits']} hits, "
                                     f"{w['misses']} misses)"}


def _switches_line(switches: dict) -> str:
    """name=value, ..., a bool as 1 / 0 (the values the variables take)."""
    return ", ".join(f"{name}={int(v) if isinstance(v, bool) else v}" for name, v in sorted(switches.items())) or "-"


def _cmd_info(args) -> int:
    for k, v in info().items():
        print(f"{k:28s} {v}")
    return 0


def _cmd_train(args) -> int:
    from .seq2seq.command import run

    return run(args)


def _read_sentences(args) -> list[str]:
    from .seq2seq.errors import UserError

    if args.sentences:
        return list(args.sentences)
    if sys.stdin.isatty():
        raise UserError("translate: give sentences as arguments or on stdin, one per line")
    return [line.rstrip("\n") for line in sys.stdin if line.strip()]


def _cmd_translate(args) -> int:
    import torch

    from .seq2seq.checkpoint import load_checkpoint
    from .seq2seq.errors import UserError
    from .seq2seq.translate import translate

    if args.device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is available here (use --device cpu)")
    if args.beam < 1:
        raise UserError(f"--beam: expected a beam size >= 1, got {args.beam}")
    model, src_vocab, tgt_vocab, _ = load_checkpoint(args.checkpoint, backend=args.backend, device=args.device)
    sentences = _read_sentences(args)
    for line in translate(model, src_vocab, tgt_vocab, sentences, beam=args.beam, backend=args.backend):
        print(line)
    return 0


def _cmd_bench(args) -> int:
    import subprocess
    from pathlib import Path

    import torch

    from .seq2seq.errors import UserError

    script = Path(__file__).resolve().parent.parent / "benchmarks" / "run_all.py"
    if not script.exists():
        raise UserError(f"benchmarks not found at {script.parent} (bench runs from a source checkout: "
                        "git clone + pip install --no-build-isolation -e .)")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is available here")
    if args.out is None:
        import datetime

        tag = "cpu" if device == "cpu" else torch.cuda.get_device_name(0).split()[-1].lower()
        # The naming of benchmarks/common.py's default_outdir (gitignored: local-*).
        args.out = script.parent / "results" / f"local-{tag}-{datetime.date.today().isoformat()}"
    cmd = [sys.executable, str(script), "--device", device, "--out", str(args.out)]
    if args.repeats:
        cmd += ["--repeats", str(args.repeats)]
    if args.no_plot:
        cmd.append("--no-plot")
    if args.smoke:
        cmd.append("--smoke")
    print("running: " + " ".join(cmd), flush=True)
    rc = subprocess.call(cmd)
    tables = sorted(Path(args.out).glob("*.md"))
    if tables:
        print(f"\n==== tables ({args.out}) ====")
    for md in tables:
        print(f"\n{md.read_text()}")
    return rc


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line (the message), exit status 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m s2s_fused", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    sub.add_parser("info", help="versions, compiled and available backends, CUDA arch list, switches").set_defaults(
        func=_cmd_info)

    from .seq2seq.args import add_arguments

    t = sub.add_parser("train", help="train the seq2seq model on the shipped eng-fra corpus (or --data), report "
                                     "BLEU, translations and the fused vs torch speed")
    add_arguments(t)
    t.set_defaults(func=_cmd_train)

    tr = sub.add_parser("translate", help="translate sentences (arguments or stdin) with a trained checkpoint")
    tr.add_argument("sentences", nargs="*", help="English sentences (default: read stdin, one per line)")
    tr.add_argument("--checkpoint", required=True, help="checkpoint folder written by train (or its .pt file)")
    tr.add_argument("--beam", type=int, default=1, help="beam size (1: greedy)")
    tr.add_argument("--backend", default="fused", choices=("fused", "torch", "auto", "cpu", "cuda", "triton",
                                                           "reference"))
    tr.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    tr.set_defaults(func=_cmd_translate)

    b = sub.add_parser("bench", help="run the benchmark suite (benchmarks/run_all.py) for the current device "
                                     "and print the tables")
    b.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda when available")
    b.add_argument("--smoke", action="store_true", help="tiny shapes only (seconds)")
    b.add_argument("--out", default=None, help="results folder (default: benchmarks/results/local-<device>-<date>)")
    b.add_argument("--repeats", type=int, default=None, help="timed repeats per measurement")
    b.add_argument("--no-plot", action="store_true", help="no PNG plots")
    b.set_defaults(func=_cmd_bench)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from .seq2seq.errors import UserError

    try:
        return args.func(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
