"""Shared benchmark machinery: timing (CPU median of repeats; GPU CUDA events / do_bench), result rows, and the
CSV + Markdown + PNG output of ARCHITECTURE.md ("Benchmarks"). Every bench_<family>.py builds rows with
``Row``/``measure`` and hands them to ``write_results``.

A row's ``ratio`` is baseline time / this provider's time, both measured in the same run (> 1: faster).

fp32 math: importing this module turns TF32 off for cuDNN and cuBLAS (cuDNN's RNNs default to TF32), so fp32
providers are compared in IEEE fp32 on both sides; ``S2S_FUSED_BENCH_TF32=1`` leaves TF32 on. Every row records
the setting it ran under (``tf32``).

A script stopped early (SIGTERM or SIGINT, e.g. by run_all.py's time box) writes the rows it measured so far to
``<out>/<family>.partial.csv`` / ``.md`` before exiting, so a cut-short round keeps them.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import datetime as _dt
import os
import platform
import random
import re
import signal
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

_TF32 = os.environ.get("S2S_FUSED_BENCH_TF32") == "1"
torch.backends.cudnn.allow_tf32 = _TF32
torch.backends.cuda.matmul.allow_tf32 = _TF32


def tf32_setting() -> str:
    """What fp32 cuDNN / cuBLAS math ran as, as read back from torch."""
    try:
        on = [name for name, flag in (("cudnn", torch.backends.cudnn.allow_tf32),
                                      ("cublas", torch.backends.cuda.matmul.allow_tf32)) if flag]
    except RuntimeError:  # torch >= 2.9 refuses the legacy read when its new per-operator flags were mixed in
        on = [f"{name}={prec}" for name, prec in (("cudnn.rnn", torch.backends.cudnn.rnn.fp32_precision),
                                                  ("cuda.matmul", torch.backends.cuda.matmul.fp32_precision))]
        return "per-operator: " + ", ".join(on)
    return "on (" + ", ".join(on) + ")" if on else "off"


@dataclasses.dataclass
class Row:
    op: str
    provider: str
    shape: str
    dtype: str
    mode: str
    median_ms: float
    p20_ms: float
    p80_ms: float
    peak_mem_mb: float = float("nan")
    throughput: str = ""
    ratio: float = float("nan")
    baseline: str = ""
    device: str = ""
    versions: str = ""
    date: str = ""
    tf32: str = dataclasses.field(default_factory=tf32_setting)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU {cpu_description()} x{torch.get_num_threads()} threads"


def _cpu_info() -> dict:
    # imported here: the scripts set their switches before s2s_fused is first imported
    from s2s_fused._cpu_path_cache import cpu_info

    return cpu_info()


def cpu_description() -> str:
    """The CPU model with its vendor, family and model numbers and the ISA the kernels run, e.g. "AMD EPYC
    (AuthenticAMD family 25 model 17; ISA AVX512)": CPU results differ between vendors and generations (MKL takes a
    generic path on AMD; Intel's AMX speeds up oneDNN), so a figure is never quoted without them. ISA: ATen's CPU
    capability, which our kernels follow, plus AMX where the CPU has it."""
    info = _cpu_info()
    model = info.get("model name") or platform.processor() or platform.machine()
    isa = torch.backends.cpu.get_cpu_capability()
    if "amx_tile" in info.get("flags", "").split():
        isa += ", AMX"
    ident = " ".join(x for x in (info.get("vendor_id", ""), f"family {info['cpu family']}" if "cpu family" in info
                                 else "", f"model {info['model']}" if "model" in info else "") if x)
    return f"{model} ({ident + '; ' if ident else ''}ISA {isa})"


def device_slug(device: torch.device) -> str:
    """The device part of a results folder's name: cpu-<vendor and model>-<ISA the kernels run> (cpu-amd-epyc-avx512),
    or the GPU's model (h200). The ISA is in it because a virtual machine may name different CPUs alike ("AMD EPYC"
    for a Zen 3 with AVX2 and a Zen 4 with AVX-512), and their figures must not share a folder or a README table."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device).split()[-1].lower()
    model = _cpu_info().get("model name") or platform.machine()
    model = re.sub(r"\(r\)|\(tm\)|cpu|processor|\d+-core", "", model.lower())
    isa = torch.backends.cpu.get_cpu_capability().lower()
    return "cpu-" + re.sub(r"[^a-z0-9]+", "-", f"{model} {isa}").strip("-")


def cpu_paths() -> tuple[str, ...]:
    """The CPU GEMM paths an fp32 op can take on this machine (csrc/cpu/cpu_path.h), each timed forced by the
    layer and cell benchmarks: oneDNN's is missing where ATen's matmul refuses fp32 (x86 without AVX-512), and
    forcing it there would time ATen's BLAS under its name; packed-units only with more than one thread."""
    from s2s_fused import config
    from s2s_fused.backend import _extension

    ext = _extension()
    state = ext._cpu_path_state() if ext is not None and hasattr(ext, "_cpu_path_state") else {}
    return tuple(state.get("candidates", config.CPU_PATHS))


def versions() -> str:
    out = f"torch {torch.__version__}"
    try:
        import triton

        out += f", triton {triton.__version__}"
    except ImportError:
        pass
    if torch.version.cuda:
        out += f", CUDA {torch.version.cuda}"
    return out


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_once(fn, device: torch.device) -> float:
    """One call of ``fn`` in milliseconds (GPU: CUDA events around it)."""
    if device.type == "cuda":
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        return start.elapsed_time(stop)
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def summarize(times: list[float]):
    """(median, p20, p80) of a list of times."""
    times = sorted(times)
    q = statistics.quantiles(times, n=5) if len(times) >= 5 else [times[0]] * 4
    return statistics.median(times), q[0], q[3]


def time_fn(fn, device: torch.device, *, warmup: int = 3, repeats: int = 20, min_time_s: float = 0.0):
    """Run ``fn`` repeatedly; returns (median, p20, p80) in milliseconds."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    t_end = time.perf_counter() + min_time_s
    while len(times) < repeats or time.perf_counter() < t_end:
        times.append(time_once(fn, device))
        if len(times) >= 10 * repeats:
            break
    return summarize(times)


def time_interleaved(fns: dict, device: torch.device, *, repeats: int, warmup: int = 2) -> dict:
    """Time several providers' callables in alternation (one call each per round), so that load from other
    processes on a shared machine hits them alike; returns {name: (median, p20, p80)} in ms.

    Each round runs the providers in a fresh (seeded) random order, so that on average every provider follows every
    other alike: a call runs slower right after a provider that evicted its weights from the caches (a fused GRU
    cell measured 15 % slower when it always followed torch.nn's than when it followed another fused one, the same
    code and path). Rotating a fixed order would not do: it keeps each provider's predecessor."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    _sync(device)
    times = {name: [] for name in fns}
    order, rng = list(fns), random.Random(0)
    for _ in range(repeats):
        rng.shuffle(order)
        for name in order:
            times[name].append(time_once(fns[name], device))
    return {name: summarize(ts) for name, ts in times.items()}


def peak_memory_mb(fn, device: torch.device) -> float:
    """Peak memory of one call above what was allocated before it (GPU: allocator stats; CPU: not tracked)."""
    if device.type != "cuda":
        return float("nan")
    _sync(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    fn()
    _sync(device)
    return (torch.cuda.max_memory_allocated(device) - base) / 2**20


def measure(op, provider, shape, dtype, mode, fn, device, *, repeats=20, warmup=3, throughput_fn=None) -> Row:
    med, p20, p80 = time_fn(fn, device, warmup=warmup, repeats=repeats)
    return _measured(Row(op=op, provider=provider, shape=shape, dtype=str(dtype).replace("torch.", ""), mode=mode,
                         median_ms=med, p20_ms=p20, p80_ms=p80, peak_mem_mb=peak_memory_mb(fn, device),
                         throughput=throughput_fn(med) if throughput_fn else "", device=device_name(device),
                         versions=versions(), date=_dt.date.today().isoformat()))


# Every row measured in this process, for the partial results of a script stopped early (_write_partial).
_MEASURED: list[Row] = []
_WRITTEN: set[str] = set()


def _measured(row: Row) -> Row:
    _MEASURED.append(row)
    return row


def fill_ratios(rows: list[Row], baseline_provider: str) -> list[Row]:
    """ratio = baseline median / row median for rows sharing (op, shape, dtype, mode) with the baseline."""
    base = {(r.op, r.shape, r.dtype, r.mode): r.median_ms for r in rows if r.provider == baseline_provider}
    for r in rows:
        key = (r.op, r.shape, r.dtype, r.mode)
        if key in base and r.median_ms > 0:
            r.ratio = base[key] / r.median_ms
            r.baseline = baseline_provider
    return rows


def default_outdir(device: torch.device) -> Path:
    """benchmarks/results/local-<device>-<date>/ (gitignored); committed results drop the "local-": the layout
    tools/readme_results.py reads, <device>-<date>/."""
    return ROOT / "benchmarks" / "results" / f"local-{device_slug(device)}-{_dt.date.today().isoformat()}"


def markdown_table(rows: list[Row]) -> str:
    head = "| op | provider | shape | dtype | mode | median ms | p20–p80 ms | peak MB | throughput | ratio | TF32 |"
    lines = [head, "|" + "---|" * 11]
    for r in rows:
        ratio = f"{r.ratio:.2f}× vs {r.baseline}" if r.baseline else ""
        mem = "" if r.peak_mem_mb != r.peak_mem_mb else f"{r.peak_mem_mb:.1f}"
        lines.append(f"| {r.op} | {r.provider} | {r.shape} | {r.dtype} | {r.mode} | {r.median_ms:.3f} | "
                     f"{r.p20_ms:.3f}–{r.p80_ms:.3f} | {mem} | {r.throughput} | {ratio} | {r.tf32} |")
    return "\n".join(lines)


def machine_line(rows: list[Row]) -> str:
    """Where and with what the rows were measured: device (CPU model, vendor, family, ISA, threads), versions, date."""
    def join(field):
        return "; ".join(sorted({getattr(r, field) for r in rows if getattr(r, field)}))
    return f"Measured on {join('device')}; {join('versions')}; {join('date')}."


def write_results(rows: list[Row], family: str, outdir: Path | None, *, plot: bool = True) -> None:
    """Append rows to <outdir>/<family>.csv, write <family>.md and (matplotlib present) <family>.png."""
    _WRITTEN.add(family)
    if outdir is None:
        return
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    _append_csv(rows, outdir / f"{family}.csv")
    (outdir / f"{family}.md").write_text(f"# {family}\n\n{machine_line(rows)}\n\n{markdown_table(rows)}\n")
    if plot:
        _plot(rows, family, outdir / f"{family}.png")


def _append_csv(rows: list[Row], path: Path) -> None:
    fields = [f.name for f in dataclasses.fields(Row)]
    if path.exists():  # keep an older file's columns (one without a newer field loses just that field)
        with path.open(newline="") as f:
            fields = next(csv.reader(f), fields)
    new = not path.exists()
    with path.open("a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        if new:
            w.writeheader()
        for r in rows:
            w.writerow(dataclasses.asdict(r))


def _write_partial(signum, frame) -> None:
    """SIGTERM / SIGINT before the script wrote its results: write the rows measured so far (ratios against the
    baseline rows among them) to <out>/<family>.partial.csv / .md, then exit with 128 + signum."""
    family = Path(sys.argv[0]).stem.removeprefix("bench_")
    outdir = _argv_value("--out")
    try:
        if family not in _WRITTEN and _MEASURED and outdir is not None:
            rows = list(_MEASURED)
            for baseline in ("torch-cudnn", "torch-eager"):
                fill_ratios(rows, baseline)
            Path(outdir).mkdir(parents=True, exist_ok=True)
            _append_csv(rows, Path(outdir) / f"{family}.partial.csv")
            (Path(outdir) / f"{family}.partial.md").write_text(
                f"# {family} (stopped after {len(rows)} rows)\n\n{markdown_table(rows)}\n")
            print(f"stopped by signal {signum}: {len(rows)} rows written to {outdir}/{family}.partial.*",
                  flush=True)
    finally:
        os._exit(128 + signum)


def _argv_value(flag: str) -> str | None:
    for i, a in enumerate(sys.argv):
        if a == flag and i + 1 < len(sys.argv):
            return sys.argv[i + 1]
        if a.startswith(flag + "="):
            return a.split("=", 1)[1]
    return None


if Path(sys.argv[0]).stem.startswith("bench_"):  # a benchmark script run as a program, not an importer
    signal.signal(signal.SIGTERM, _write_partial)
    signal.signal(signal.SIGINT, _write_partial)


def _plot(rows, family, path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    rows = [r for r in rows if r.baseline and r.provider != r.baseline]
    if not rows:
        return
    labels = [f"{r.op} {r.shape} {r.dtype} {r.mode}\n{r.provider}" for r in rows]
    fig, ax = plt.subplots(figsize=(10, max(2.5, 0.45 * len(rows))))
    ax.barh(range(len(rows)), [r.ratio for r in rows], color=["tab:green" if r.ratio >= 1 else "tab:red"
                                                               for r in rows])
    ax.axvline(1.0, color="k", lw=0.8)
    ax.set_yticks(range(len(rows)), labels, fontsize=6)
    ax.invert_yaxis()
    ax.set_xlabel("speed-up vs baseline measured in the same run (×)")
    ax.set_title(f"{family} — {rows[0].device}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def base_parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--smoke", action="store_true", help="one tiny shape, few repeats (CI smoke test)")
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--out", type=Path, default=None, help="results folder (default: none written unless given)")
    p.add_argument("--no-plot", action="store_true")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU; default: torch's)")
    return p


def parse_args(p: argparse.ArgumentParser, argv=None) -> argparse.Namespace:
    """``p.parse_args(argv)``, then ``torch.set_num_threads(--threads)`` when given (every CPU figure names its
    thread count)."""
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    return args


@contextlib.contextmanager
def switches(**env: str):
    """The library's A/B switches ``env`` (variable name -> "0" / "1", or S2S_FUSED_CPU_PATH -> a path) in effect
    while the block runs, as they were afterwards, around one provider's calls. The Python side's (s2s_fused.config, read once at import) through
    config.override; the others as environment variables."""
    from s2s_fused import backend, config
    env = dict(env)
    cpu_path = env.pop("S2S_FUSED_CPU_PATH", None)  # the compiled library's path setting (read once): set directly
    python = {name[len(config.PREFIX):]: config.parse_switch(name, env) for name in env if name in config.SWITCHES}
    others = {name: value for name, value in env.items() if name not in config.SWITCHES}
    saved = {name: os.environ.get(name) for name in others}
    os.environ.update(others)
    previous_path = backend._extension()._set_cpu_path(cpu_path) if cpu_path is not None else None
    try:
        with config.override(**python):
            yield
    finally:
        if previous_path is not None:
            backend._extension()._set_cpu_path(previous_path)
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def threads_note() -> str:
    return f"{torch.get_num_threads()} threads, {os.cpu_count()} cores"


def interleaved_rows(op: str, shape: str, dtype: torch.dtype, by_mode: dict, device: torch.device, *,
                     repeats: int, label: str = "", width: int = 18) -> list[Row]:
    """Time each mode's providers in alternation ({mode: {provider: fn}}) and return one Row per (mode, provider),
    printing a line each as it goes."""
    rows = []
    for mode, fns in by_mode.items():
        for name, (med, p20, p80) in time_interleaved(fns, device, repeats=repeats).items():
            rows.append(_measured(Row(op=op, provider=name, shape=shape, dtype=str(dtype).replace("torch.", ""),
                                      mode=mode, median_ms=med, p20_ms=p20, p80_ms=p80, device=device_name(device),
                                      versions=versions(), date=_dt.date.today().isoformat())))
            print(f"{label} {shape} {mode:8s} {name:{width}s} {med:9.3f} ms (p20 {p20:.3f}, p80 {p80:.3f})",
                  flush=True)
    return rows


def layer_bench_main(doc: str, family: str, bench, shapes: dict, argv=None) -> None:
    """The command line shared by the sequence-layer benchmarks: --dtype, --threads and the base options;
    shapes = {"smoke": [...], "cpu": [...], "cuda": [...]}; bench(device, shapes, dtype, repeats) -> rows."""
    p = base_parser(doc.splitlines()[0])
    p.add_argument("--dtype", default="float32", choices=["float32", "float64", "bfloat16", "float16"])
    args = parse_args(p, argv)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    chosen = shapes["smoke"] if args.smoke else shapes["cuda" if device.type == "cuda" else "cpu"]
    repeats = args.repeats or (3 if args.smoke else 21)
    import s2s_fused
    print(f"s2s_fused {s2s_fused.__version__}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    rows = bench(device, chosen, dtype, repeats)
    print(markdown_table(rows))
    write_results(rows, family, args.out, plot=not args.no_plot)
