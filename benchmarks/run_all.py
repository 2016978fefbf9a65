"""Run every benchmarks/bench_<family>.py with the same arguments (e.g. --smoke, --out DIR, --device cuda).

Each script runs in its own process, so one failing family does not hide the others; the exit code is non-zero
if any failed. Families run in PRIORITY order (the device's ceilings first, then the RNN layers and cells,
cross-entropy, beam search, attention and the whole model), then the rest alphabetically.

``--only FAMILY...`` (consumed here) runs just those families. ``--budget-s N`` (consumed here too) time-boxes
the whole run for a GPU round: each family gets at most its share of the time left (WEIGHTS, over the families
still to run; one that finishes early leaves its time to the next), then SIGTERM, on which benchmarks/common.py
writes the rows measured so far to <family>.partial.*, and SIGKILL GRACE_S later. So one slow family cannot
starve the others, and a cut-short family keeps its rows.
"""
from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PRIORITY = ["ceilings", "rnn_layer", "rnn_cell", "cross_entropy", "beam", "attention", "seq2seq"]
# Relative shares of a time-boxed run, from the GPU round's estimates (gpu_check.sh's header); others weigh 1.
WEIGHTS = {"ceilings": 0.3, "rnn_layer": 4.5, "rnn_cell": 3, "cross_entropy": 1.5, "beam": 1, "attention": 0.5,
           "seq2seq": 1.5}
GRACE_S = 20
MIN_CAP_S = 30  # the least a family gets (importing torch and s2s_fused alone takes seconds)


def _scripts() -> list[Path]:
    found = {p.stem[len("bench_"):]: p for p in HERE.glob("bench_*.py")}
    order = [f for f in PRIORITY if f in found] + sorted(f for f in found if f not in PRIORITY)
    return [found[f] for f in order]


def _family(script: Path) -> str:
    return script.stem[len("bench_"):]


def _pop_budget(argv: list[str]) -> float | None:
    for i, a in enumerate(argv):
        if a == "--budget-s":
            value = argv[i + 1]
            del argv[i:i + 2]
            return float(value)
        if a.startswith("--budget-s="):
            del argv[i]
            return float(a.split("=", 1)[1])
    return None


def _pop_only(argv: list[str]) -> list[str] | None:
    """The family names after --only, up to the next option."""
    if "--only" not in argv:
        return None
    i = argv.index("--only")
    j = i + 1
    while j < len(argv) and not argv[j].startswith("-"):
        j += 1
    names = argv[i + 1:j]
    del argv[i:j]
    return names


def _run(script: Path, argv: list[str], cap: float | None):
    """Exit status of one family, or "stopped after N s" when its cap ran out."""
    proc = subprocess.Popen([sys.executable, str(script), *argv])
    try:
        return proc.wait(timeout=cap)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)  # common.py writes <family>.partial.* and exits
        try:
            proc.wait(timeout=GRACE_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        return f"stopped after {cap:.0f} s"


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    budget, only = _pop_budget(argv), _pop_only(argv)
    start = time.perf_counter()
    scripts = _scripts()
    if only is not None:
        unknown = sorted(set(only) - {_family(s) for s in scripts})
        if unknown:
            print(f"--only: no benchmarks/bench_<family>.py for {unknown}", file=sys.stderr)
            return 2
        scripts = [s for s in scripts if _family(s) in only]
    failed = []
    for i, script in enumerate(scripts):
        cap = None
        if budget is not None:
            left = budget - (time.perf_counter() - start)
            if left < MIN_CAP_S + GRACE_S:
                print(f"== {script.name}: skipped, the {budget:.0f} s budget is spent", flush=True)
                failed.append(script.name)
                continue
            weights = [WEIGHTS.get(_family(s), 1.0) for s in scripts[i:]]
            cap = max(MIN_CAP_S, (left - GRACE_S) * weights[0] / sum(weights))
        print(f"== {script.name} {' '.join(argv)}" + (f" (up to {cap:.0f} s)" if cap else ""), flush=True)
        t0 = time.perf_counter()
        rc = _run(script, argv, cap)
        print(f"== {script.name}: exit {rc} in {time.perf_counter() - t0:.1f} s", flush=True)
        if rc != 0:
            failed.append(script.name)
    if failed:
        print("failed or cut short: " + ", ".join(failed), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
