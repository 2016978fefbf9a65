"""The build, the CLI's info command, and the promises the README and CI make to each other."""
from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from packaging.version import Version

import s2s_fused
from s2s_fused.backend import build_info
from tests.helpers import run_python

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


COMPILED_SWITCHES = ("S2S_FUSED_NO_PACKED", "S2S_FUSED_NO_ONEDNN", "S2S_FUSED_NO_PERSISTENT",
                     "S2S_FUSED_CHECK_GEMM_TAILS", "S2S_FUSED_NO_BUFFER_CACHE", "S2S_FUSED_POISON_BUFFERS")


def _switch_process(script, **switches):
    env = {k: v for k, v in os.environ.items() if not k.startswith("S2S_FUSED_")}
    env |= {"PYTHONPATH": str(ROOT)} | switches
    return subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120,
                          cwd=ROOT)


def test_compiled_switches_are_read_once_with_one_rule():
    """Every S2S_FUSED_* switch of the compiled library is in build_info()["switches"], read from the environment
    with the Python side's rule ("1" on; unset, "" or "0" off), and _set_switch changes one in a running process."""
    script = ("import json, s2s_fused._C as C; s = C.build_info()['switches']; "
              "prev = C._set_switch('S2S_FUSED_NO_PACKED', True); "
              "print(json.dumps([s, prev, C.build_info()['switches']['S2S_FUSED_NO_PACKED']]))")
    res = _switch_process(script, S2S_FUSED_NO_PACKED="", S2S_FUSED_NO_ONEDNN="1", S2S_FUSED_NO_PERSISTENT="0")
    assert res.returncode == 0, res.stderr
    switches, previous, now = json.loads(res.stdout)
    assert set(switches) == set(COMPILED_SWITCHES)
    assert switches == {"S2S_FUSED_NO_PACKED": False, "S2S_FUSED_NO_ONEDNN": True, "S2S_FUSED_NO_PERSISTENT": False,
                        "S2S_FUSED_CHECK_GEMM_TAILS": False, "S2S_FUSED_NO_BUFFER_CACHE": False,
                        "S2S_FUSED_POISON_BUFFERS": False}
    assert previous is False and now is True
    with pytest.raises(KeyError, match="S2S_FUSED_NOPE"):
        s2s_fused.backend._extension()._set_switch("S2S_FUSED_NOPE", True)


_BAD_SWITCH_SCRIPT = """
import sys, torch
try:
    import s2s_fused
except ValueError as e:
    print(e)
C = sys.modules["s2s_fused._C"]  # loaded before the package's import failed (this interpreter's own build)
x, h, w = torch.zeros(1, 1, 1), torch.zeros(1, 1), torch.zeros(4, 1)
for f in (C.build_info, C.build_info, lambda: torch.ops.s2s_fused.lstm_layer_inference(x, h, h, w, w, None, None,
                                                                                          None, False)):
    try:
        f()
    except ValueError as e:
        print(e)
"""


@pytest.mark.parametrize("value", ["true", "on", " 1", "2"])
def test_compiled_switch_with_a_bad_value_is_an_error(value):
    """Any value but 1, 0 or empty is a ValueError naming the variable, the first time the switches are read (the
    package's import) and every time after (a typo never leaves a switch silently off), from build_info and from
    an op alike."""
    res = _switch_process(_BAD_SWITCH_SCRIPT, S2S_FUSED_NO_ONEDNN=value)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    want = f"S2S_FUSED_NO_ONEDNN: expected 1 (on), 0 or unset (off), got '{value}'"
    assert len(lines) == 4 and all(line.startswith(want) for line in lines), res.stdout


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
    info = build_info()
    archs = re.search(r"^CUDA arch list +(.*)$", out, re.M).group(1)
    # a CUDA build names the archs it compiled, whether TORCH_CUDA_ARCH_LIST was set or not
    assert archs == (info["cuda_arch_list"] if info["with_cuda"] else "-")
    assert archs not in ("", "-") or not info["with_cuda"]
    built_for = re.search(r"^extension built for torch +(.*)$", out, re.M).group(1)
    assert built_for == info["torch_version"] == Version(torch.__version__).base_version


# ------------------------------------------------------------------------------ the CUDA arch list setup.py compiles


def _setup_py():
    """setup.py as a module (its setup() call runs only as __main__, as setuptools runs it)."""
    spec = importlib.util.spec_from_file_location("s2s_fused_setup_py", ROOT / "setup.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _fake_gpus(monkeypatch, capabilities, built_for):
    """Visible GPUs of these capabilities, and a torch built for these archs (torch.cuda.get_arch_list)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: bool(capabilities))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: len(capabilities))
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda i=0: capabilities[i])
    monkeypatch.setattr(torch.cuda, "get_arch_list", lambda: list(built_for))


@pytest.mark.parametrize("given, capabilities, built_for, expected", [
    ("7.5;8.6", [(9, 0)], ["sm_90"], "7.5;8.6"),                        # an explicit list is kept
    ("", [], [], "8.0;9.0+PTX"),                                         # no GPU visible: the default
    ("", [(9, 0)], ["sm_80", "sm_90", "sm_100"], "9.0+PTX"),             # an H100 / H200
    ("", [(9, 0), (8, 0), (9, 0)], ["sm_80", "sm_90"], "8.0;9.0+PTX"),   # two kinds of GPU, each once
    ("", [(12, 0)], ["sm_80", "sm_90"], "9.0+PTX"),                      # newer than this torch: its newest
])
def test_cuda_arch_list_is_always_explicit(monkeypatch, given, capabilities, built_for, expected):
    setup_py = _setup_py()
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", given)
    _fake_gpus(monkeypatch, capabilities, built_for)
    assert setup_py.cuda_arch_list() == expected


def test_cuda_build_records_the_archs_it_compiles(monkeypatch, tmp_path):
    """With TORCH_CUDA_ARCH_LIST unset and a GPU visible, torch picks the archs itself; the build must still know
    them (`python -m s2s_fused info` printed "-" for such a build)."""
    import torch.utils.cpp_extension as cpp_extension
    # describing a CUDA extension only joins paths to the toolkit's (a CPU build of torch has none)
    monkeypatch.setattr(cpp_extension, "CUDA_HOME", str(tmp_path))
    setup_py = _setup_py()
    monkeypatch.setenv("S2S_FUSED_FORCE_CUDA", "1")
    monkeypatch.setenv("S2S_FUSED_CPU_ONLY", "0")
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "")  # unset, as far as the build is concerned
    _fake_gpus(monkeypatch, [(9, 0)], ["sm_80", "sm_90"])
    ext = setup_py.make_extension()
    assert '-DS2S_CUDA_ARCH_LIST="9.0+PTX"' in ext.extra_compile_args["cxx"]
    assert os.environ["TORCH_CUDA_ARCH_LIST"] == "9.0+PTX", "torch must compile the list that is recorded"


def test_without_the_extension_the_package_runs_the_reference_and_says_why():
    """A broken build (s2s_fused._C does not import) leaves a package that imports, runs every op on the reference
    backend, refuses the others naming the extension, and whose `info` reports what failed."""
    out = run_python(
        "import sys, runpy\n"
        "sys.modules['s2s_fused._C'] = None  # as if the extension failed to import\n"
        "import torch, s2s_fused, s2s_fused.nn as snn\n"
        "assert s2s_fused.available_backends() == ['reference'], s2s_fused.available_backends()\n"
        "x, h = torch.randn(2, 3), torch.randn(2, 4)\n"
        "assert s2s_fused.gru_cell(x, h, torch.randn(12, 3), torch.randn(12, 4)).shape == (2, 4)\n"
        "assert snn.LSTM(3, 4, bidirectional=True)(torch.randn(5, 2, 3))[0].shape == (5, 2, 8)\n"
        "t, vl = torch.randint(0, 5, (2, 3)), torch.tensor([3, 1])\n"
        "s2s_fused.masked_softmax_cross_entropy(torch.randn(2, 3, 5), t, vl)\n"
        "s2s_fused.beam_search_topk(torch.randn(2, 3, 5), torch.zeros(2, 3), 2)\n"
        "for b in ('cpu', 'triton'):\n"
        "    try:\n"
        "        s2s_fused.gru_cell(x, h, torch.randn(12, 3), torch.randn(12, 4), backend=b)\n"
        "        raise SystemExit(b + ' ran without the extension')\n"
        "    except RuntimeError as e:\n"
        "        assert 's2s_fused._C did not import' in str(e), e\n"
        "sys.argv = ['s2s_fused', 'info']\n"
        "runpy.run_module('s2s_fused', run_name='__main__')\n")
    assert "not importable" in out and "reference (available), cpu (unavailable)" in out, out


def test_gpu_stack_build_can_read_the_test_and_train_extras():
    """tools/gpu_stack_build.sh installs the TEST and TRAIN extras into its venv by reading setup.py with
    ast.literal_eval: each must stay a plain literal list (an expression such as ``[...] + OTHER`` breaks it)."""
    import ast

    tree = ast.parse((ROOT / "setup.py").read_text())
    found = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and [getattr(t, "id", None) for t in node.targets] in (["TEST"], ["TRAIN"]):
            found[node.targets[0].id] = ast.literal_eval(node.value)
    assert set(found) == {"TEST", "TRAIN"}
    assert all(isinstance(v, list) and v and all(isinstance(x, str) for x in v) for v in found.values())
