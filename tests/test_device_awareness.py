"""On the GPU machine TRITON_INTERPRET is off and the Triton backend refuses CPU tensors, so a test that gives it
CPU tensors fails there for a reason that is not the kernels. This runs the test suite on this machine as if it
were the GPU machine (tests/conftest.py, S2S_FUSED_TEST_SIMULATE_GPU=1) and requires that no test does that, with
two planted tests proving that the simulation tells the two kinds apart."""
from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest
import torch

from s2s_fused.backend import triton_installed

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PLANTED = '''
import torch
import s2s_fused


def test_planted_triton_given_cpu_tensors():
    x, h = torch.randn(2, 3), torch.randn(2, 4)
    s2s_fused.gru_cell(x, h, torch.randn(12, 3), torch.randn(12, 4), backend="triton")


def test_planted_cuda_allocation():
    x = torch.randn(2, 3, device="cuda")
    s2s_fused.gru_cell(x, x[:, :2], torch.randn(6, 3), torch.randn(6, 2), backend="triton")
'''


@pytest.mark.skipif(not triton_installed(), reason="triton not installed")
def test_no_test_gives_the_triton_backend_cpu_tensors_on_a_gpu_machine(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a real GPU: the tests run on it instead")
    if os.environ.get("S2S_FUSED_TEST_SIMULATE_GPU", "0") != "0":
        pytest.skip("already inside the simulation")
    planted = tmp_path / "test_planted.py"
    planted.write_text(PLANTED)
    report = tmp_path / "report.xml"
    env = dict(os.environ, S2S_FUSED_TEST_SIMULATE_GPU="1", PYTHONPATH=ROOT)
    env.pop("TRITON_INTERPRET", None)
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={report}",
                        "tests", str(planted)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert report.exists(), r.stdout[-3000:] + r.stderr[-3000:]
    failed, device_aware = [], []
    for case in ET.parse(report).iter("testcase"):
        name = f"{case.get('classname')}::{case.get('name')}"
        if case.find("failure") is not None or case.find("error") is not None:
            failed.append(name)
        skipped = case.find("skipped")
        if skipped is not None and "device-aware" in skipped.get("message", ""):
            device_aware.append(name)
    assert [name.split("::")[-1] for name in failed] == ["test_planted_triton_given_cpu_tensors"], \
        "tests that fail on a GPU machine (CPU tensors on the Triton backend?):\n" + "\n".join(failed) + \
        "\n" + r.stdout[-3000:]
    assert "::test_planted_cuda_allocation" in " ".join(device_aware)
    # the Triton and CUDA tests are there and reach their CUDA allocation (the simulation is not vacuous)
    assert len(device_aware) > 200, f"only {len(device_aware)} tests reached a CUDA allocation"


def test_fp32_comparisons_run_without_tf32():
    """cuDNN's RNNs use TF32 by default (torch.backends.cudnn.allow_tf32): conftest turns it (and cuBLAS's) off, so
    the fp32 tolerances of 2x torch's own error against float64 measure fp32, not TF32 (~1e-3)."""
    assert torch.backends.cudnn.allow_tf32 is False and torch.backends.cuda.matmul.allow_tf32 is False
    rnn = getattr(torch.backends.cudnn, "rnn", None)
    if rnn is not None:  # torch >= 2.9's per-operator setting, which the legacy flag above sets
        assert rnn.fp32_precision != "tf32"
