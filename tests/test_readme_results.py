"""The README's results tables are generated from the committed results files (tools/readme_results.py)."""
from __future__ import annotations

import csv
import re
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
import readme_results  # noqa: E402


def test_readme_tables_match_the_results_files():
    text = readme_results.README.read_text()
    assert readme_results.render(text) == text, "run: python tools/readme_results.py --write"
    assert readme_results.main(["--check"]) == 0


def test_every_results_folder_names_device_date_and_machine():
    """benchmarks/results/<device>-<date>/, each CSV row naming the CPU model (vendor, family, ISA) and threads, or
    the GPU, and the torch version."""
    folders = [d for d in readme_results.RESULTS.iterdir() if d.is_dir() and not d.name.startswith("local-")]
    assert folders
    for d in folders:
        assert readme_results.FOLDER.match(d.name), d.name
        for path in d.glob("*.csv"):
            with path.open(newline="") as f:
                for r in csv.DictReader(f):
                    assert "torch " in r["versions"], (path, r["versions"])
                    if d.name.startswith("cpu-"):
                        assert " family " in r["device"] and "ISA " in r["device"] and " threads" in r["device"], (
                            path, r["device"])
                        # The folder names the ISA its rows ran (benchmarks/common.device_slug): CPUs that a VM
                        # names alike keep apart.
                        isa = re.search(r"ISA (\w+)", r["device"])[1].lower()
                        assert readme_results.FOLDER.match(d.name)["device"].endswith("-" + isa), (path, r["device"])


def test_a_changed_figure_fails_the_check(tmp_path):
    results = tmp_path / "results"
    shutil.copytree(readme_results.RESULTS, results)
    text = readme_results.README.read_text()
    assert readme_results.render(text, results) == text
    path = sorted(results.glob("*/rnn_cell.csv"))[-1]  # the newest: the one the README shows
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    row = next(r for r in rows if r["baseline"] and r["provider"] != r["baseline"])
    row["ratio"] = str(float(row["ratio"]) * 3)
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    assert readme_results.render(text, results) != text


def test_markers_are_required():
    with pytest.raises(ValueError, match="expected one"):
        readme_results.render("no markers here")


def test_bench_command_names_its_folder_like_the_benchmarks(monkeypatch):
    """`python -m s2s_fused bench` without --out writes where the benchmark scripts do: local-<CPU model>-<date>,
    which names the machine (a bare local-cpu-<date> did not)."""
    import datetime
    import subprocess

    import torch

    from s2s_fused import cli

    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from common import device_slug
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    calls = []
    monkeypatch.setattr(subprocess, "call", lambda cmd: calls.append(cmd) or 0)
    assert cli.main(["bench", "--device", "cpu", "--smoke", "--no-plot"]) == 0
    out = Path(calls[0][calls[0].index("--out") + 1])
    slug = device_slug(torch.device("cpu"))
    assert slug != "cpu" and out.name == f"local-{slug}-{datetime.date.today().isoformat()}", out
