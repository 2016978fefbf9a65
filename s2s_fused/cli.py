"""The ``python -m s2s_fused`` command line. Sub-commands: info, train, translate, evaluate, average, bench.

Mistakes a user can make (a missing data file, an unknown option value, a checkpoint from another version,
``--device cuda`` without a GPU) end with one line on stderr and exit status 2, never a traceback."""
from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path


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
    from . import config
    from .backend import _extension

    try:
        state = _extension()._cpu_path_state()
    except (AttributeError, ValueError) as e:  # no extension / an old build; a bad S2S_FUSED_CPU_PATH value
        return {"CPU GEMM path": f"not reported ({e})" if isinstance(e, ValueError) else "not reported by this build of the extension"}
    paths = " / ".join(state.get("candidates", config.CPU_PATHS))
    policy = {"auto": f"auto (the fastest of {paths} here, measured per op and shape on first use)"}
    choices = state["choices"]
    lines = "; ".join(f"{key}: {c['path']} (" + (", ".join(f"{p} {t:.0f} us" for p, t in c["times_us"].items())
                                                 or "kept from an earlier process") + ")"
                      for key, c in sorted(choices.items()))
    w = state["packed_weights"]
    ext = _extension()
    cache = ext._cpu_buffer_cache_state() if hasattr(ext, "_cpu_buffer_cache_state") else None
    if cache is None:
        cache_line = "not reported by this build of the extension"
    elif not cache["enabled"]:
        cache_line = "off (its switch is on)"
    else:
        cache_line = (f"{cache['free_blocks']} free blocks ({cache['free_bytes'] / 2**20:.1f} MiB), "
                      f"{cache['live_blocks']} in use ({cache['live_bytes'] / 2**20:.1f} MiB); "
                      f"{cache['hits']} hits, {cache['misses']} misses")
    from . import _cpu_path_cache

    kept = _cpu_path_cache.state()
    kept_line = (f"off ({config.CPU_PATH_CACHE_VARIABLE}=0)" if kept["file"] is None else
                 f"{kept['file']} ({kept['loaded']} choices taken at import; delete it to measure again)")
    return {"CPU buffer cache": cache_line,
            "CPU GEMM path": policy.get(state["path"], f"{state['path']} (forced by S2S_FUSED_CPU_PATH)"),
            "CPU GEMM path choices": lines or "none yet in this process",
            "CPU GEMM path choices kept in": kept_line,
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


def _input_lines(args):
    """The sentences to translate, one per line: the arguments, ``--input FILE`` or ``--input -`` / piped stdin."""
    from .seq2seq.errors import UserError

    if args.sentences and args.input is not None:
        raise UserError("translate: give sentences as arguments or --input, not both")
    if args.sentences:
        return iter(args.sentences)
    if args.input is None and sys.stdin.isatty():
        raise UserError("translate: give sentences as arguments, --input FILE, or on stdin (--input -), one per line")
    if args.input is None or args.input == "-":
        return (line.rstrip("\r\n") for line in sys.stdin)
    try:
        f = open(args.input, encoding="utf-8")  # noqa: SIM115 - closed by the generator below
    except OSError as e:
        raise UserError(f"--input {args.input}: cannot read it ({e.strerror})") from None

    def lines():
        with f:
            try:
                for line in f:
                    yield line.rstrip("\r\n")
            except UnicodeDecodeError as e:
                raise UserError(f"--input {args.input}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    return lines()


def _load_for_decoding(args):
    """Checks the shared options of translate / evaluate and loads the checkpoint: (model, vocabs, segmenters)."""
    import torch

    from .seq2seq.checkpoint import load_checkpoint, segmenters_of
    from .seq2seq.command import check_backend
    from .seq2seq.errors import UserError

    if args.device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is available here (use --device cpu)")
    check_backend(args.backend, args.device)
    model, src_vocab, tgt_vocab, obj = load_checkpoint(args.checkpoint, backend=args.backend, device=args.device)
    return model, src_vocab, tgt_vocab, segmenters_of(obj, args.checkpoint)


def _cmd_translate(args) -> int:
    import itertools

    from .seq2seq.translate import translate

    model, src_vocab, tgt_vocab, segs = _load_for_decoding(args)
    lines = _input_lines(args)
    while True:
        chunk = list(itertools.islice(lines, args.batch_size))
        if not chunk:
            break
        # A blank line translates to a blank line, so output line i always belongs to input line i.
        todo = [s for s in chunk if s.strip()]
        done = iter(translate(model, src_vocab, tgt_vocab, todo, beam=args.beam, backend=args.backend,
                              batch_size=args.batch_size, segmenters=segs)) if todo else iter(())
        print("\n".join(next(done) if s.strip() else "" for s in chunk), flush=True)
    return 0


def _cmd_evaluate(args) -> int:
    from .seq2seq.command import loaded_objects_frozen
    from .seq2seq.data import HeldOut, group_references, read_pairs
    from .seq2seq.evaluate import score
    from .seq2seq.model import make_loss

    model, src_vocab, tgt_vocab, (src_seg, tgt_seg) = _load_for_decoding(args)
    pairs, bad = read_pairs(args.data, bad_lines=args.bad_lines)
    for b in bad[:10]:
        print(f"warning: skipped line {b.lineno}: {b.reason}: {b.text!r}", file=sys.stderr)
    items = list(group_references(pairs).items())
    data = HeldOut.build(items, src_seg, tgt_seg, src_vocab, tgt_vocab, model.config["num_steps"])
    with loaded_objects_frozen():
        s = score(model, make_loss(args.backend), data, tgt_seg, tgt_vocab, args.device, args.beam)
    how = "greedy" if args.beam == 1 else f"beam-{args.beam}"
    print(f"{args.data}: {len(items)} sources, {len(pairs)} references, {how}; loss {s['loss']:.3f}/token")
    print(f"BLEU {s['bleu']:.1f} [sacrebleu {s['bleu_signature']}]")
    print(f"chrF {s['chrf']:.1f} [sacrebleu {s['chrf_signature']}]")
    return 0


def _cmd_average(args) -> int:
    from .seq2seq.checkpoint import average_checkpoints

    path = average_checkpoints(args.checkpoints, args.out)
    print(f"wrote {path}: the mean of the weights of {len(args.checkpoints)} checkpoints")
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
    if args.out is None:  # benchmarks/common.py's default: local-<CPU model or GPU>-<date> (gitignored)
        sys.path.insert(0, str(script.parent))
        try:
            from common import default_outdir
        finally:
            sys.path.remove(str(script.parent))
        args.out = default_outdir(torch.device(device))
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
    from .seq2seq.model import BACKENDS

    t = sub.add_parser("train", help="train the seq2seq model on the shipped eng-fra corpus (or --data), report "
                                     "BLEU, translations and the fused vs torch speed", allow_abbrev=False)
    add_arguments(t)
    t.set_defaults(func=_cmd_train)

    from .seq2seq.args import existing_file, positive_int

    def decoding_options(q):
        q.add_argument("--checkpoint", required=True,
                       help="checkpoint folder written by train (its checkpoint.pt) or a .pt file")
        q.add_argument("--beam", type=positive_int, default=1, help="beam size (1: greedy)")
        q.add_argument("--backend", default="fused", choices=BACKENDS)
        q.add_argument("--device", choices=("cpu", "cuda"), default="cpu")

    tr = sub.add_parser("translate", help="translate sentences (arguments, a file or stdin) with a trained "
                                          "checkpoint, one line out per line in")
    tr.add_argument("sentences", nargs="*", help="English sentences (default: --input, or stdin, one per line)")
    tr.add_argument("--input", type=existing_file, default=None, help="file to translate, or - for stdin")
    tr.add_argument("--batch-size", type=positive_int, default=64, help="sentences decoded together")
    decoding_options(tr)
    tr.set_defaults(func=_cmd_translate)

    ev = sub.add_parser("evaluate", help="corpus BLEU and chrF (sacrebleu, with signatures) of a checkpoint on a "
                                         "tab-separated source<TAB>reference file")
    ev.add_argument("--data", type=existing_file, required=True,
                    help="source<TAB>reference[<TAB>...] lines; lines with the same source are its references")
    ev.add_argument("--bad-lines", choices=("error", "skip"), default="error")
    decoding_options(ev)
    ev.set_defaults(func=_cmd_evaluate)

    av = sub.add_parser("average", help="average the weights of checkpoints of one model into a new checkpoint")
    av.add_argument("--checkpoints", nargs="+", required=True, help="checkpoint folders or .pt files")
    av.add_argument("--out", type=Path, required=True, help="folder for the averaged checkpoint.pt")
    av.set_defaults(func=_cmd_average)

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
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "train":  # --resume refuses options that differ from the saved run's, if written out
        from .seq2seq.args import explicit_options

        sub = parser._subparsers._group_actions[0].choices["train"]
        args._explicit = explicit_options(sub, argv[1:])
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
