"""Run every benchmarks/bench_<family>.py with the same arguments (e.g. --smoke, --out DIR, --device cuda).

Each script runs in its own process, so one failing family does not hide the others; the exit code is non-zero
if any failed. Families run in PRIORITY order (the ops the issues compare first), then the rest alphabetically.
``--budget-s N`` (consumed here, not passed on) stops starting new families once N seconds have passed and kills
one that would overrun them, so a time-boxed GPU round keeps every table it finished.
"""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PRIORITY = ["rnn_layer", "rnn_cell", "cross_entropy", "beam", "rnn_bidir", "seq2seq"]


def _scripts() -> list[Path]:
    found = {p.stem[len("bench_"):]: p for p in HERE.glob("bench_*.py")}
    order = [f for f in PRIORITY if f in found] + sorted(f for f in found if f not in PRIORITY)
    return [found[f] for f in order]


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


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    budget = _pop_budget(argv)
    start = time.perf_counter()
    failed = []
    for script in _scripts():
        left = None if budget is None else budget - (time.perf_counter() - start)
        if left is not None and left < 5:
            print(f"== {script.name}: skipped, the {budget:.0f} s budget is spent", flush=True)
            failed.append(script.name)
            continue
        print(f"== {script.name} {' '.join(argv)}", flush=True)
        t0 = time.perf_counter()
        try:
            rc = subprocess.call([sys.executable, str(script), *argv], timeout=left)
        except subprocess.TimeoutExpired:
            rc = "timeout"
        print(f"== {script.name}: exit {rc} in {time.perf_counter() - t0:.1f} s", flush=True)
        if rc != 0:
            failed.append(script.name)
    if failed:
        print("failed: " + ", ".join(failed), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
