"""The build, the CLI's info command, and the promises the README and CI make to each other."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import s2s_fused
from s2s_fused.backend import build_info

ROOT = Path(__file__).resolve().parent.parent


def _fenced_after(text: str, marker: str) -> str:
    m = re.search(re.escape(marker) + r"\s*```bash\n(.+?)\n```", text, re.S)
    assert m, f"README.md: no ```bash block after {marker}"
    return m.group(1).strip()


def test_readme_has_two_commands_and_ci_runs_the_test_command():
    readme = (ROOT / "README.md").read_text()
    main_cmd = _fenced_after(readme, "<!-- main-command -->")
    test_cmd = _fenced_after(readme, "<!-- test-command -->")
    assert "\n" not in main_cmd and "\n" not in test_cmd, "each set-up step is one command"
    assert "torch==2.13.0" in main_cmd and "torch==2.13.0" in test_cmd, "torch must stay pinned"
    ci = (ROOT / ".ci" / "run").read_text()
    assert test_cmd in ci.splitlines(), "CI must run the README's test command verbatim"


def test_extension_builds_every_cpu_capability_of_this_machine():
    info = build_info()
    assert info, "s2s_fused._C did not import"
    assert "DEFAULT" in info["cpu_capabilities_compiled"]
    assert info["cpu_capability"] in info["cpu_capabilities_compiled"]
    assert info["with_cuda"] == (torch.version.cuda is not None) or not info["with_cuda"]


def test_our_cpu_loops_run_in_parallel():
    """at::parallel_for's OpenMP pragma is compiled into our extension: without -fopenmp it silently runs every
    CPU loop on one thread (it did for a whole session). With torch's thread count above 1 it must split."""
    if not sys.platform.startswith("linux"):
        pytest.skip("the OpenMP build flag is set for Linux")
    old = torch.get_num_threads()
    try:
        ext = s2s_fused.backend._extension()
        torch.set_num_threads(2)
        assert ext.build_info()["parallel_for_chunks"] == 2
        torch.set_num_threads(1)
        assert ext.build_info()["parallel_for_chunks"] == 1
    finally:
        torch.set_num_threads(old)


def test_available_backends():
    av = s2s_fused.available_backends()
    assert av[:2] == ["reference", "cpu"]
    assert ("cuda" in av) == (torch.cuda.is_available() and build_info()["with_cuda"])


def test_info_command():
    res = subprocess.run([sys.executable, "-m", "s2s_fused", "info"], capture_output=True, text=True, cwd=ROOT,
                         timeout=120)
    assert res.returncode == 0, res.stderr
    out = res.stdout
    for key in ("s2s_fused", "torch", "triton", "CPU capabilities compiled", "CUDA arch list", "backends"):
        assert key in out
    assert "cpu (available)" in out
