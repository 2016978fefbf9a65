"""How the package holds together: which module imports which, how ops are registered, and the one configuration
module of the Python side.

- No import cycles among s2s_fused's modules (every import statement, those inside functions included), and no
  module of s2s_fused/triton imports s2s_fused.ops: the kernels implement, ops/<family>.py registers.
- The core modules each import on their own, in a fresh interpreter, and ``import s2s_fused`` imports no Triton.
- Every Triton twin is registered by importing s2s_fused alone.
- Every S2S_FUSED_* variable the Python side reads is read in s2s_fused/config.py, with its one rule.
"""
from __future__ import annotations

import ast
import concurrent.futures
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from s2s_fused import config

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "s2s_fused"


def _modules() -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its __init__.py)."""
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def import_graph() -> dict[str, set[str]]:
    """module -> the package's modules it imports (a name imported from a package counts as its submodule when it
    is one, e.g. ``from .. import config``; the compiled extension s2s_fused._C is a leaf)."""
    modules = _modules()
    known = set(modules) | {"s2s_fused._C"}
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                edges |= {a.name for a in node.names if a.name in known}
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    parts = package.split(".")
                    base = ".".join(parts[:len(parts) - node.level + 1] + ([node.module] if node.module else []))
                else:
                    base = node.module or ""
                for a in node.names:
                    sub = f"{base}.{a.name}"
                    edges.add(sub if sub in known else base)
        graph[name] = {e for e in edges if e in known and e != name}
    return graph


def _cycle(graph):
    """One import cycle as a list of modules, or None."""
    state = {}

    def visit(node, path):
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt, path + [nxt])
                if found:
                    return found
        state[node] = "done"
        return None

    for start in sorted(graph):
        if start not in state:
            found = visit(start, [start])
            if found:
                return found
    return None


def test_no_import_cycles():
    graph = import_graph()
    assert "s2s_fused.ops.rnn_layer" in graph and "s2s_fused.triton.rnn_layer" in graph, sorted(graph)
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))


def test_cycle_finder_finds_a_planted_cycle():
    """The layering before this one: ops/rnn_layer.py imported triton/rnn_layer.py for its kernels, and that
    imported ops/rnn_layer.py for its fakes and autograd."""
    graph = import_graph()
    graph["s2s_fused.ops.rnn_layer"] = graph["s2s_fused.ops.rnn_layer"] | {"s2s_fused.triton.rnn_layer"}
    graph["s2s_fused.triton.rnn_layer"] = graph["s2s_fused.triton.rnn_layer"] | {"s2s_fused.ops.rnn_layer"}
    assert _cycle(graph) == ["s2s_fused.ops.rnn_layer", "s2s_fused.triton.rnn_layer", "s2s_fused.ops.rnn_layer"]


def test_triton_modules_import_nothing_from_ops():
    """The kernels do not reach back into the registration layer (its fakes, autograd or dispatch)."""
    for name, edges in import_graph().items():
        if name.startswith("s2s_fused.triton"):
            assert not {e for e in edges if e.startswith("s2s_fused.ops")}, f"{name} imports {sorted(edges)}"


# Importing any module of the package runs s2s_fused/__init__.py first, which imports every ops module: so the
# package, the modules, and each kernel module, which it does not import.
CORE = ["s2s_fused", "s2s_fused.nn"] + sorted(m for m in _modules() if m.startswith("s2s_fused.triton."))


def _import_alone(module):
    code = (f"import sys, {module}\n"
            "print(sorted(m for m in sys.modules if m == 'triton' or m.startswith('s2s_fused.triton')))")
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env,
                          timeout=300)


def test_each_core_module_imports_alone_in_a_fresh_interpreter():
    """An import-order dependency (a module that works only when another was imported first) shows here."""
    pytest.importorskip("triton")
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        results = dict(zip(CORE, pool.map(_import_alone, CORE)))
    failed = {m: r.stderr[-1500:] for m, r in results.items() if r.returncode != 0}
    assert not failed, failed
    # the package registers every op without importing Triton (so TRITON_INTERPRET can still be set after it)
    assert results["s2s_fused"].stdout.strip() == "[]", results["s2s_fused"].stdout


def test_importing_the_package_registers_every_triton_twin():
    schemas = {s.name.split("::")[1] for s in torch._C._jit_get_all_schemas() if s.name.startswith("s2s_fused::")}
    compiled_with_twin = {"lstm_cell_forward", "lstm_cell_backward", "gru_cell_forward", "gru_cell_backward",
                          "lstm_layer_forward", "lstm_layer_backward", "gru_layer_forward", "gru_layer_backward",
                          "masked_ce_forward", "masked_ce_backward", "beam_search_topk",
                          "additive_attention_forward", "additive_attention_backward", "dot_attention_forward",
                          "dot_attention_backward"}
    assert {n + "_triton" for n in compiled_with_twin} <= schemas
    for name in compiled_with_twin:  # the same schema under the twin's name
        ours = getattr(torch.ops.s2s_fused, name + "_triton").default._schema
        theirs = getattr(torch.ops.s2s_fused, name).default._schema
        assert str(ours).replace("_triton(", "(", 1) == str(theirs)


# -------------------------------------------------------------------------------------------- configuration


def test_every_switch_is_read_in_the_config_module_only():
    """Outside s2s_fused/config.py no module of the package reads an S2S_FUSED_* variable (it reads config's
    attributes), and config knows every one it reads (the switches, and the settings that are not on/off)."""
    readers = {}
    for path in PACKAGE.rglob("*.py"):
        for name in re.findall(r"""["'](S2S_FUSED_[A-Z0-9_]+)["']""", path.read_text()):
            readers.setdefault(name, set()).add(path.relative_to(ROOT).as_posix())
    outside = {n: sorted(p) for n, p in readers.items() if p != {"s2s_fused/config.py"}}
    assert not outside, outside
    assert set(readers) == set(config.SWITCHES) | set(config.SETTINGS)
    assert not set(config.SWITCHES) & set(config.SETTINGS)
    for name in config.SWITCHES:
        assert isinstance(getattr(config, name[len(config.PREFIX):]), bool)


@pytest.mark.parametrize("value, expected", [(None, False), ("", False), ("0", False), ("1", True)])
def test_switch_values(value, expected):
    environ = {} if value is None else {"S2S_FUSED_X": value}
    assert config.parse_switch("S2S_FUSED_X", environ) is expected


@pytest.mark.parametrize("value", ["true", "yes", "2", " 1", "1 ", "on", "01"])
def test_a_switch_with_another_value_is_an_error(value):
    with pytest.raises(ValueError, match=r"^S2S_FUSED_X: expected 1 \(on\), 0 or unset \(off\), got "):
        config.parse_switch("S2S_FUSED_X", {"S2S_FUSED_X": value})


def test_switches_are_read_once_at_import():
    env = dict(os.environ, PYTHONPATH=str(ROOT), S2S_FUSED_TRITON_NO_PERSISTENT="1")
    code = ("import os, s2s_fused\n"
            "os.environ['S2S_FUSED_TRITON_NO_PERSISTENT'] = '0'\n"
            "print(s2s_fused.config.TRITON_NO_PERSISTENT, s2s_fused.config.NO_BIDIR_FUSED)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert r.stdout.split() == ["True", "False"], r.stderr[-2000:]
    env["S2S_FUSED_NO_BIDIR_FUSED"] = "yes"
    r = subprocess.run([sys.executable, "-c", "import s2s_fused"], capture_output=True, text=True, cwd=ROOT,
                       env=env, timeout=300)
    assert r.returncode != 0
    assert "ValueError: S2S_FUSED_NO_BIDIR_FUSED: expected 1 (on), 0 or unset (off), got 'yes'" in r.stderr


def test_override():
    before = config.switches()
    with config.override(TRITON_NO_PERSISTENT=not config.TRITON_NO_PERSISTENT):
        assert config.switches()["S2S_FUSED_TRITON_NO_PERSISTENT"] is not before["S2S_FUSED_TRITON_NO_PERSISTENT"]
    assert config.switches() == before
    with pytest.raises(ValueError, match="override: expected a switch among"):
        with config.override(NO_SUCH_SWITCH=True):
            pass
    with pytest.raises(TypeError, match=r"override: NO_BIDIR_FUSED: expected a bool, got str"):
        with config.override(NO_BIDIR_FUSED="1"):
            pass
    assert config.switches() == before


def test_info_shows_the_switches_of_both_sides(monkeypatch):
    """``python -m s2s_fused info`` lists the Python side's switches and the C++ side's as build_info reports them
    (name -> bool), or says that this build of the extension does not report them."""
    from s2s_fused import backend, cli
    python = ", ".join(f"{n}={int(v)}" for n, v in sorted(config.switches().items()))
    monkeypatch.setattr(backend, "_BUILD_INFO", {**backend._BUILD_INFO,
                                                 "switches": {"S2S_FUSED_NO_PACKED": True, "S2S_FUSED_X": False}})
    out = cli.info()
    assert out["switches (Python)"] == python
    assert out["switches (C++)"] == "S2S_FUSED_NO_PACKED=1, S2S_FUSED_X=0"
    monkeypatch.setattr(backend, "_BUILD_INFO", {k: v for k, v in backend._BUILD_INFO.items() if k != "switches"})
    assert cli.info()["switches (C++)"] == "not reported by this build of the extension"
    monkeypatch.setattr(backend, "_BUILD_INFO", {})  # no extension
    assert cli.info()["switches (C++)"] == "not reported by this build of the extension"


def test_triton_cell_kinds_are_csrc_s():
    """The Triton kernels' CellKind has the names and values of csrc's ``enum class CellKind``, and the constants
    the kernels compare against are those values."""
    pytest.importorskip("triton")
    from s2s_fused.triton import rnn_common
    assert {k.name: int(k) for k in rnn_common.CellKind} == {"LSTM": 0, "GRU_RESET_AFTER": 1, "GRU_RESET_BEFORE": 2}
    for kind in rnn_common.CellKind:
        assert getattr(rnn_common, kind.name).value == int(kind)
    assert [rnn_common.gru_kind(ra) for ra in (True, False)] == [rnn_common.CellKind.GRU_RESET_AFTER,
                                                                 rnn_common.CellKind.GRU_RESET_BEFORE]
    # the time layout: step s of T = 3 runs time t, reading and writing these slots of the (T+1, B, H) history
    assert [rnn_common.step_slots(s, 3, False) for s in range(3)] == [(0, 0, 1), (1, 1, 2), (2, 2, 3)]
    assert [rnn_common.step_slots(s, 3, True) for s in range(3)] == [(2, 3, 2), (1, 2, 1), (0, 1, 0)]
