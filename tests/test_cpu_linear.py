"""The inference-time CPU linear of the seq2seq decoder (s2s_fused/_cpu_linear.py): both libraries give F.linear's
numbers (so the choice made on one machine only moves speed), the measured choice is made once per key and kept
with the C++ ops' choices, S2S_FUSED_CPU_PATH and S2S_FUSED_NO_ONEDNN decide it, and what either library cannot
take (gradients, other dtypes, strided operands) goes to ATen untouched."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import VALUE_TOL, assert_close, cpu_path, poison_heap, s2s_fused

from s2s_fused import _cpu_linear

_C = s2s_fused.backend._extension() if s2s_fused.backend.is_available("cpu") else None
pytestmark = pytest.mark.skipif(_C is None or _cpu_linear._ONEDNN is None,
                                reason="needs the compiled extension and a torch with oneDNN")


def linear_keys():
    return {k: v for k, v in _C._cpu_path_state()["choices"].items() if k.startswith("linear ")}


SHAPES = [(1, 64, 4096), (3, 17, 130 * 40), (130, 257, 17), (257, 130, 1031), (512, 128, 2516)]


@pytest.mark.parametrize("path", ["auto", "onednn", "blas"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("M,K,N", SHAPES)
def test_every_path_matches_the_reference(path, M, K, N, bias):
    g = torch.Generator().manual_seed(M * 7 + N)
    x, w = torch.randn(M, K, generator=g), torch.randn(N, K, generator=g)
    b = torch.randn(N, generator=g) if bias else None
    ref = F.linear(x.double(), w.double(), None if b is None else b.double())
    out = torch.full((M, N), float("nan"))  # poisoned: a row or column the path leaves unwritten fails
    with cpu_path(path), torch.no_grad():
        poison_heap(M * N)  # and so is the memory a path that returns a new tensor gets from the allocator
        y = _cpu_linear.linear(x, w, b, out=out)
        assert y.shape == (M, N) and y.dtype == torch.float32
        assert_close(y.double(), ref, VALUE_TOL[torch.float32] * K ** 0.5, f"{path} {M}x{K}x{N}")
        if path == "blas":
            assert y.data_ptr() == out.data_ptr()  # ATen writes the caller's buffer


def test_auto_measures_once_per_key_and_keeps_the_choice(monkeypatch):
    calls = []
    measure = _cpu_linear._measure

    def counted(*a):
        calls.append(a[0])
        return measure(*a)

    monkeypatch.setattr(_cpu_linear, "_measure", counted)
    x, w, b = torch.randn(300, 128), torch.randn(2516, 128), torch.randn(2516)
    with cpu_path("auto"), torch.no_grad():
        _cpu_linear.linear(x, w, b)
        (key, c), = linear_keys().items()
        assert key == f"linear M~512 K=128 N=2516 bias Float threads={torch.get_num_threads()}"
        assert c["path"] in ("onednn", "blas") and set(c["times_us"]) == {"onednn", "blas"}, c
        assert all(t > 0 for t in c["times_us"].values()), c
        _cpu_linear.linear(x[:257], w, b)  # the same bucket: no new measurement
        assert calls == [key]
        _cpu_linear.linear(x[:200], w, b)  # the next bucket down: one more
        assert len(calls) == 2 and len(linear_keys()) == 2


def test_a_kept_choice_is_taken_without_measuring(monkeypatch):
    monkeypatch.setattr(_cpu_linear, "_measure", lambda *a: pytest.fail("measured a kept key"))
    x, w = torch.randn(64, 256), torch.randn(384, 256)
    key = f"linear M~64 K=256 N=384 Float threads={torch.get_num_threads()}"
    used = []
    monkeypatch.setitem(_cpu_linear._PATHS, "blas", lambda *a: used.append("blas") or F.linear(a[0], a[1], a[2]))
    with cpu_path("auto"), torch.no_grad():
        assert _C._load_cpu_path_choices({key: "blas"}) == 1  # as the choices file hands it over at import
        _cpu_linear.linear(x, w)
    assert used == ["blas"]


@pytest.mark.parametrize("setting,expected", [("blas", "blas"), ("onednn", "onednn"), ("packed", "onednn")])
def test_forced_path_decides(monkeypatch, setting, expected):
    used = []
    for name in ("onednn", "blas"):
        fn = _cpu_linear._PATHS[name]
        monkeypatch.setitem(_cpu_linear._PATHS, name, lambda *a, n=name, fn=fn: used.append(n) or fn(*a))
    with cpu_path(setting), torch.no_grad():
        _cpu_linear.linear(torch.randn(64, 128), torch.randn(2516, 128))
    assert used == [expected] and linear_keys() == {}


def test_no_onednn_switch_keeps_aten(monkeypatch):
    monkeypatch.setattr(_cpu_linear, "_measure", lambda *a: pytest.fail("measured with oneDNN switched off"))
    previous = _C._set_switch("S2S_FUSED_NO_ONEDNN", True)
    try:
        with cpu_path("auto"), torch.no_grad():
            x, w = torch.randn(64, 128), torch.randn(2516, 128)
            assert torch.equal(_cpu_linear.linear(x, w), F.linear(x, w))
    finally:
        _C._set_switch("S2S_FUSED_NO_ONEDNN", previous)


@pytest.mark.parametrize("case", ["grad", "float64", "strided weight", "strided input", "small", "3-d", "tracing"])
def test_what_the_choice_cannot_take_goes_to_aten_untouched(monkeypatch, case):
    monkeypatch.setattr(_cpu_linear, "_ONEDNN", lambda *a: pytest.fail("oneDNN called"))
    x, w, b = torch.randn(64, 128), torch.randn(2516, 128), torch.randn(2516)
    grad = False
    if case == "grad":
        w.requires_grad_(True)
        grad = True
    elif case == "float64":
        x, w, b = x.double(), w.double(), b.double()
    elif case == "strided weight":
        w = torch.randn(2516, 256)[:, :128]
    elif case == "strided input":
        x = torch.randn(128, 128)[::2]
    elif case == "small":
        x, w, b = x[:2, :8], w[:8, :8], b[:8]
    elif case == "3-d":
        x = x.view(8, 8, 128)
    else:
        monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    with cpu_path("auto"), torch.set_grad_enabled(grad):
        y = _cpu_linear.linear(x, w, b)
        assert torch.equal(y, F.linear(x, w, b))
        assert y.requires_grad == grad
    assert linear_keys() == {}


def test_record_refuses_bad_choices():
    with cpu_path("auto"):
        with pytest.raises(ValueError, match="path: expected packed, packed-units, onednn or blas, got 'fast'"):
            _C._record_cpu_path_choice("linear x", "fast", {})
        with pytest.raises(ValueError, match="times: expected"):
            _C._record_cpu_path_choice("linear x", "blas", {"blas": -1.0})
        with pytest.raises(ValueError, match="times: expected"):
            _C._record_cpu_path_choice("linear x", "blas", {"warp": 1.0})
        with pytest.raises(TypeError):
            _C._record_cpu_path_choice("linear x", "blas", [1.0])
        assert linear_keys() == {}
        _C._record_cpu_path_choice("linear x", "blas", {"blas": 2.0, "onednn": 3.0})
        _C._record_cpu_path_choice("linear x", "onednn", {"onednn": 1.0})  # a chosen key keeps its choice
        assert linear_keys() == {"linear x": {"path": "blas", "times_us": {"blas": 2.0, "onednn": 3.0}}}
        assert _C._cpu_path() == ("auto", True)
