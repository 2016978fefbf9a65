"""The CPU GEMM path of the RNN ops (csrc/cpu/cpu_path.h): every path gives the reference's numbers (so the choice
made on one machine, e.g. ATen's GEMMs on an Intel CPU, where they beat our kernel, can only change speed), the
measured choice under ``auto``, the S2S_FUSED_CPU_PATH switch, and the packed-weight cache of the cells and layers."""
from __future__ import annotations

import gc

import pytest
import torch
from helpers import (
    VALUE_TOL,
    assert_close,
    cpu_path,
    make_cell_params,
    poison_heap,
    run_python,
    s2s_fused,
)

import s2s_fused.nn

_C = s2s_fused.backend._extension() if s2s_fused.backend.is_available("cpu") else None
pytestmark = pytest.mark.skipif(_C is None, reason="the compiled extension is not available")

PATHS = s2s_fused.config.CPU_PATHS
TOL = VALUE_TOL[torch.float32]


def cell_call(kind, x, state, params, backend, reset_after=True):
    if kind == "lstm":
        h1, c1 = s2s_fused.lstm_cell(x, state, *params, backend=backend)
        return [h1, c1], h1.sum() + (c1 * c1).sum()
    h1 = s2s_fused.gru_cell(x, state, *params, reset_after=reset_after, backend=backend)
    return [h1], (h1 * h1).sum()


def check_cell(kind, B, I, H, reset_after=True, params64=None):
    """fp32 cpu cell (forward and every gradient) against the fp64 reference on the same values."""
    torch.manual_seed(B * 1000 + I * 10 + H)
    params64 = params64 or make_cell_params(kind, I, H)
    x64 = torch.randn(B, I, dtype=torch.float64)
    st64 = [torch.randn(B, H, dtype=torch.float64) for _ in range(2 if kind == "lstm" else 1)]
    results = []
    for dtype, backend in ((torch.float32, "cpu"), (torch.float64, "reference")):
        leaves = [t.to(dtype).requires_grad_() for t in (x64, *st64, *params64)]
        x, st, ps = leaves[0], leaves[1:1 + len(st64)], leaves[1 + len(st64):]
        poison_heap(B * 4 * H)
        outs, loss = cell_call(kind, x, tuple(st) if kind == "lstm" else st[0], ps, backend, reset_after)
        loss.backward()
        results.append(outs + [t.grad for t in leaves])
    for i, (a, b) in enumerate(zip(*results)):
        assert_close(a, b, TOL if i < 2 else 4 * TOL, f"{kind} B={B} I={I} H={H} result {i}")


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("kind,reset_after", [("lstm", True), ("gru", True), ("gru", False)])
def test_every_path_matches_reference_cells(path, kind, reset_after):
    with cpu_path(path):
        for B, I, H in ((1, 3, 17), (3, 17, 130), (17, 257, 33), (64, 64, 64)):
            check_cell(kind, B, I, H, reset_after)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_every_path_matches_reference_layers(path, kind):
    G = 4 if kind == "lstm" else 3
    fn = s2s_fused.lstm_layer if kind == "lstm" else s2s_fused.gru_layer
    with cpu_path(path):
        for T, B, I, H in ((3, 1, 5, 17), (5, 9, 17, 33)):
            torch.manual_seed(T * B + H)
            p64 = make_cell_params(kind, I, H)
            x64 = torch.randn(T, B, I, dtype=torch.float64)
            h64 = [torch.randn(B, H, dtype=torch.float64) for _ in range(2 if kind == "lstm" else 1)]
            lengths = torch.randint(1, T + 1, (B,))
            results = []
            for dtype, backend in ((torch.float32, "cpu"), (torch.float64, "reference")):
                leaves = [t.to(dtype).requires_grad_() for t in (x64, *h64, *p64)]
                hx = tuple(leaves[1:3]) if kind == "lstm" else leaves[1]
                out, hn = fn(leaves[0], hx, *leaves[-4:], lengths=lengths, backend=backend)
                hn = hn[0] if kind == "lstm" else hn
                (out.pow(2).sum() + hn.sum()).backward()
                results.append([out, hn] + [t.grad for t in leaves])
            for i, (a, b) in enumerate(zip(*results)):
                assert_close(a, b, 4 * TOL, f"{kind} layer T={T} B={B} G={G} result {i}")


def test_the_unit_split_gives_the_row_splits_numbers_and_is_measured_for_layer_forwards():
    """packed-units (a layer forward's threads split the hidden units, meeting once a step, instead of the batch
    rows) computes every output element with the same products in the same order as packed: bit-identical results,
    for each cell kind, one and two directions, with lengths, training and inference, on shapes where the split is
    real (B >= 8 rows: packed splits the rows with two threads; whole and partial panels at every SIMD width).
    Under auto with two threads it is a candidate of a layer's forward, not of its backward or of a cell."""
    snn = s2s_fused.nn
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        for kind, kw in (("LSTM", {}), ("GRU", {}), ("GRU", {"reset_after": False})):
            for T, B, I, H, bidir in ((3, 8, 5, 130, False), (4, 17, 3, 257, True), (2, 9, 1, 64, False),
                                      (5, 33, 7, 40, True)):
                torch.manual_seed(T * B + H)
                m = getattr(snn, kind)(I, H, bidirectional=bidir, backend="cpu", **kw)
                x = torch.randn(T, B, I)
                lengths = torch.randint(1, T + 1, (B,))
                lengths[0] = T
                packed = torch.nn.utils.rnn.pack_padded_sequence(x, lengths, enforce_sorted=False)
                got = {}
                for path in ("packed", "packed-units"):
                    with cpu_path(path):
                        poison_heap(T * B * 8 * H)
                        train = m(packed)[0].data
                        train.sum().backward()
                        with torch.no_grad():
                            got[path] = (train.detach(), m(packed)[0].data, m(x)[0])
                for a, b in zip(got["packed"], got["packed-units"]):
                    assert torch.equal(a, b), (kind, kw, T, B, I, H, bidir)
                # reset_before has no torch module: our reference backend's, in fp64
                ref = (getattr(snn, kind)(I, H, bidirectional=bidir, backend="reference", dtype=torch.float64, **kw)
                       if kw else getattr(torch.nn, kind)(I, H, bidirectional=bidir, dtype=torch.float64))
                ref.load_state_dict({k: v.double() for k, v in m.state_dict().items()})
                want = ref(x.double())[0]
                assert_close(got["packed-units"][2].double(), want, 4 * TOL, f"{kind} T={T} B={B} H={H}")
        with cpu_path("auto"):
            m = snn.LSTM(4, 130, backend="cpu")
            m(torch.randn(3, 16, 4))[0].sum().backward()
            s2s_fused.lstm_cell(torch.randn(16, 4), (torch.randn(16, 130),) * 2, m.weight_ih_l0, m.weight_hh_l0,
                                m.bias_ih_l0, m.bias_hh_l0, backend="cpu")
            choices = _C._cpu_path_state()["choices"]
        with_units = {k.split()[0] for k, c in choices.items() if "packed-units" in c["times_us"]}
        assert with_units == {"lstm_layer_forward"}, choices
        assert {k.split()[0] for k in choices} >= {"lstm_layer_forward", "lstm_layer_backward", "lstm_cell_forward"}
        assert "packed-units" in _C._cpu_path_state()["candidates"]
    finally:
        torch.set_num_threads(old)
    if torch.get_num_threads() == 1:  # one thread has nothing to split
        assert "packed-units" not in _C._cpu_path_state()["candidates"]


def test_auto_measures_once_per_key_and_keeps_the_choice():
    with cpu_path("auto"):
        check_cell("lstm", 5, 33, 40)
        choices = _C._cpu_path_state()["choices"]
        keys = [k for k in choices if k.startswith("lstm_cell_forward") and "I=33 H=40" in k]
        assert len(keys) == 1, choices
        c = choices[keys[0]]
        assert c["path"] in PATHS and c["path"] in c["times_us"], c
        assert set(c["times_us"]) <= set(PATHS) and all(t > 0 for t in c["times_us"].values()), c
        check_cell("lstm", 7, 33, 40)  # the same bucket (B~8): no new measurement, the same numbers
        assert _C._cpu_path_state()["choices"] == choices
        check_cell("lstm", 9, 33, 40)  # the next bucket: one more key per op
        assert len(_C._cpu_path_state()["choices"]) > len(choices)


def test_measuring_a_long_op_costs_about_one_call_per_path():
    """An op that takes longer than the measuring budget (100 ms) is run once per path, then decided: a first call
    costs about the paths' sum, not several rounds of it (which made a big layer's first call take seconds)."""
    import time

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(64, 64, 512, generator=g)
        w = [t.float() for t in make_cell_params("gru", 512, 512)]
        h = torch.zeros(64, 512)

        def call():
            t0 = time.perf_counter()
            with torch.no_grad():
                s2s_fused.gru_layer(x, h, *w, backend="cpu")
            return time.perf_counter() - t0

        each = {}
        for p in PATHS:
            with cpu_path(p):
                call()
                each[p] = min(call() for _ in range(2))
        with cpu_path("auto"):
            first = call()
            c = next(iter(_C._cpu_path_state()["choices"].values()))
        assert min(each.values()) > 0.1, each  # the op is long enough for the rule
        assert first < 2 * sum(each.values()), (first, each, c)
    finally:
        torch.set_num_threads(old)


def test_auto_measures_layers_too():
    with cpu_path("auto"):
        x = torch.randn(6, 3, 8, requires_grad=True)
        w = [p.float() for p in make_cell_params("lstm", 8, 12)]
        out, _ = s2s_fused.lstm_layer(x, (torch.zeros(3, 12), torch.zeros(3, 12)), *w, backend="cpu")
        out.sum().backward()
        keys = sorted(k.split()[0] for k in _C._cpu_path_state()["choices"])
        assert keys == ["lstm_layer_backward", "lstm_layer_forward"], keys


def test_layer_inference_takes_its_training_forwards_choice():
    """Each path rounds differently: with and without autograd a layer must run the same path, or eval-mode outputs
    would differ from the training forward's."""
    with cpu_path("auto"):
        x = torch.randn(5, 9, 16)
        w = [p.float() for p in make_cell_params("gru", 16, 24)]
        h0 = torch.zeros(9, 24)
        with torch.no_grad():
            inference, _ = s2s_fused.gru_layer(x, h0, *w, backend="cpu")
        training, _ = s2s_fused.gru_layer(x, h0, *[p.requires_grad_() for p in w], backend="cpu")
        assert [k.split()[0] for k in _C._cpu_path_state()["choices"]] == ["gru_layer_forward"]
        assert torch.equal(inference, training.detach())


def test_auto_chooses_among_fp32_paths_only():
    with cpu_path("auto"):
        w = make_cell_params("gru", 8, 8, dtype=torch.float64)
        s2s_fused.gru_cell(torch.randn(2, 8, dtype=torch.float64), torch.randn(2, 8, dtype=torch.float64), *w,
                           backend="cpu")
        assert _C._cpu_path_state()["choices"] == {}  # fp64: ATen's GEMMs only, nothing to measure


def test_tracing_never_measures():
    """torch.compile traces with fake tensors: the CPU kernels, and so the measurement, never run while tracing."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    with cpu_path("auto"):
        with FakeTensorMode():
            x, h = torch.randn(4, 8), torch.randn(4, 8)
            s2s_fused.gru_cell(x, h, torch.randn(24, 8), torch.randn(24, 8), backend="cpu")
        assert _C._cpu_path_state()["choices"] == {}


def test_forced_path_shown_and_bad_values_refused():
    with cpu_path("blas"):
        assert _C.build_info()["cpu_path"] == "blas"
        assert _C._cpu_path_state()["path"] == "blas"
        check_cell("gru", 3, 5, 7)
        assert _C._cpu_path_state()["choices"] == {}  # forced: nothing measured
        with pytest.raises(ValueError, match="S2S_FUSED_CPU_PATH.*got 'fast'"):
            _C._set_cpu_path("fast")
        assert _C._cpu_path_state()["path"] == "blas"
    # read at the package's import, as every switch
    out = run_python("try:\n    import s2s_fused\nexcept ValueError as e:\n    print('refused:', e)\n",
                     S2S_FUSED_CPU_PATH="Packed")
    assert "refused: S2S_FUSED_CPU_PATH: expected auto, packed, packed-units, onednn or blas" in out
    assert "'Packed'" in out
    out = run_python("import s2s_fused.backend as b\nprint(b._extension().build_info()['cpu_path'])",
                     S2S_FUSED_CPU_PATH="onednn")
    assert out.strip() == "onednn"


def test_the_candidate_paths_are_reported():
    """_cpu_path_state()["candidates"]: what an fp32 op may take here, in the preferred order, blas always; the
    benchmarks time each forced, and `info` names them."""
    from s2s_fused.cli import info

    cands = _C._cpu_path_state()["candidates"]
    assert cands and cands[-1] == "blas" and list(cands) == [p for p in PATHS if p in cands], cands
    with cpu_path("auto"):
        assert info()["CPU GEMM path"].startswith(f"auto (the fastest of {' / '.join(cands)} here")


def test_info_reports_the_cpu_path():
    from s2s_fused.cli import info

    with cpu_path("auto"):
        check_cell("gru", 3, 5, 7)
        got = info()
    assert got["CPU GEMM path"].startswith("auto"), got["CPU GEMM path"]
    assert "gru_cell_forward" in got["CPU GEMM path choices"]


# ------------------------------------------------------------------ choices kept across processes
_MEASURE = """
import torch, s2s_fused
from s2s_fused import _cpu_path_cache
torch.set_num_threads(1)
_C = s2s_fused.backend._extension()
print("kept", _cpu_path_cache.state()["file"], _cpu_path_cache.state()["loaded"])
before = _C._cpu_path_state()["choices"]
print("before", {k: c["path"] for k, c in before.items() if k.startswith("gru_cell_forward")})
s2s_fused.gru_cell(torch.randn(3, 5), torch.randn(3, 7), *[torch.randn(*s) for s in ((21, 5), (21, 7), (21,), (21,))])
after = _C._cpu_path_state()["choices"]
print("after", {k: (c["path"], bool(c["times_us"])) for k, c in after.items() if k.startswith("gru_cell_forward")})
"""


def _kept(out, tag):
    import ast

    return ast.literal_eval(next(line for line in out.splitlines() if line.startswith(tag + " "))[len(tag) + 1:])


def test_choices_are_kept_for_the_next_process(tmp_path):
    """A process keeps its measured choices in the cache folder at exit; the next one takes them at import and runs
    them without measuring, also a choice it would not have made (a hand-edited file: the file decides); lines that
    are not key<TAB>path are skipped; S2S_FUSED_CPU_PATH_CACHE=0 keeps nothing."""
    first = run_python(_MEASURE, S2S_FUSED_CPU_PATH_CACHE=str(tmp_path))
    assert _kept(first, "before") == {}
    (key, (path, measured)), = _kept(first, "after").items()
    assert measured and path in PATHS
    files = sorted(p for p in tmp_path.iterdir() if p.suffix == ".tsv")
    assert len(files) == 1 and f"{key}\t{path}\n" in files[0].read_text()
    other = "blas" if path != "blas" else "packed"  # a candidate on every machine with SIMD (oneDNN's is not)
    text = files[0].read_text().replace(f"{key}\t{path}\n", f"{key}\t{other}\n")
    files[0].write_text(text + "a line without a tab\nsome key\tnot_a_path\n\tblas\n")
    second = run_python(_MEASURE, S2S_FUSED_CPU_PATH_CACHE=str(tmp_path))
    assert f"kept {files[0]} " in second
    assert _kept(second, "before") == {key: other}
    assert _kept(second, "after") == {key: (other, False)}  # taken, not measured again
    off = tmp_path / "off"
    third = run_python(_MEASURE + "print('file', _cpu_path_cache.cache_file(_C, '{}'))".format(off),
                       S2S_FUSED_CPU_PATH_CACHE="0")
    assert "kept None 0" in third and _kept(third, "before") == {}
    assert not off.exists()


def test_a_kept_choice_the_call_cannot_take_is_measured_again(tmp_path):
    """A kept choice naming a path that is not a candidate of the call (here onednn, with S2S_FUSED_NO_ONEDNN on;
    packed and blas remain, on every machine with SIMD) is not taken: the key is measured again among the
    candidates, and the file keeps its entry."""
    first = run_python(_MEASURE, S2S_FUSED_CPU_PATH_CACHE=str(tmp_path))
    (key, _), = _kept(first, "after").items()
    file, = (p for p in tmp_path.iterdir() if p.suffix == ".tsv")
    lines = [line for line in file.read_text().splitlines() if not line.startswith(key + "\t")]
    file.write_text("\n".join(lines + [f"{key}\tonednn"]) + "\n")
    out = run_python(_MEASURE, S2S_FUSED_CPU_PATH_CACHE=str(tmp_path), S2S_FUSED_NO_ONEDNN="1")
    assert _kept(out, "before") == {key: "onednn"}
    path, measured = _kept(out, "after")[key]
    assert path in ("packed", "blas") and measured
    assert f"{key}\tonednn\n" in file.read_text()


def test_kept_choices_are_per_machine_and_build(tmp_path, monkeypatch):
    """The file's name hashes what the choices depend on (CPU model, logical CPUs, capability, torch, build): a
    machine or build that differs reads another file. Saving merges: a key already in the file stays as it is."""
    from s2s_fused import _cpu_path_cache as kept

    name = kept.cache_file(_C, str(tmp_path))
    sig = kept.signature(_C)
    assert "cpu=" in sig and "capability=" in sig and "torch=" in sig
    monkeypatch.setattr(kept, "_cpu_model", lambda: "another CPU")
    assert kept.cache_file(_C, str(tmp_path)) != name
    monkeypatch.undo()
    monkeypatch.setitem(kept._state, "file", name)
    with open(name, "w") as f:
        f.write("# made by hand\nop one\tblas\n")
    monkeypatch.setattr(kept, "_measured_here", lambda ext: {"op one": "packed", "op two": "onednn"})
    kept.save(_C)
    assert kept.read(name) == {"op one": "blas", "op two": "onednn"}


# ------------------------------------------------------------------ packed weights kept across calls
def packed_stats():
    return _C._cpu_path_state()["packed_weights"]


def gru_step(x, h, params):
    return s2s_fused.gru_cell(x, h, *params, backend="cpu")


def expected(x, h, params):
    return s2s_fused.gru_cell(x.double(), h.double(), *[p.double() for p in params], backend="reference")


def test_packed_weights_are_reused_across_calls():
    with cpu_path("packed"):
        params = [p.float() for p in make_cell_params("gru", 32, 48)]
        x, h = torch.randn(4, 32), torch.randn(4, 48)
        gru_step(x, h, params)
        before = packed_stats()
        for _ in range(3):
            assert_close(gru_step(x, h, params), expected(x, h, params), TOL, "decode step")
        after = packed_stats()
        assert after["misses"] == before["misses"] and after["hits"] >= before["hits"] + 6, (before, after)


def test_forward_and_backward_packings_of_a_weight_both_stay():
    """A training loop alternates the forward's W^T and the backward's W (two views of one storage): neither may
    evict the other, or every call repacks."""
    with cpu_path("packed"):
        torch.manual_seed(0)
        cell = s2s_fused.nn.LSTMCell(24, 40, backend="cpu")
        x, h, c = torch.randn(3, 24), torch.randn(3, 40), torch.randn(3, 40)
        xg = x.clone().requires_grad_()

        def step():
            h1, c1 = cell(xg, (h, c))
            (h1.sum() + c1.sum()).backward()

        step()
        misses = packed_stats()["misses"]
        for _ in range(3):
            step()
        assert packed_stats()["misses"] == misses, packed_stats()


@pytest.mark.parametrize("update", ["no_grad_add_", "one_element", "optimizer_step", "data_mul_", "load_state_dict"])
def test_packed_weights_follow_in_place_updates(update):
    """A stale packed copy would give the old weights' numbers: each kind of in-place update must be seen."""
    with cpu_path("packed"):
        torch.manual_seed(0)
        cell = s2s_fused.nn.GRUCell(24, 40, backend="cpu")
        x, h = torch.randn(3, 24), torch.randn(3, 40)
        cell(x, h)  # packs and keeps W_ih^T, W_hh^T
        if update == "no_grad_add_":
            with torch.no_grad():
                cell.weight_hh.add_(0.25)
        elif update == "one_element":  # away from the sampled values: only the version counter sees it
            with torch.no_grad():
                cell.weight_hh[1, 1] += 3.0
        elif update == "optimizer_step":
            opt = torch.optim.SGD(cell.parameters(), lr=0.5)
            cell(x, h).pow(2).sum().backward()
            opt.step()
        elif update == "data_mul_":  # shares the storage, not the version counter
            cell.weight_ih.data.mul_(-2.0)
        else:
            cell.load_state_dict({k: v + 1.0 for k, v in cell.state_dict().items()})
        params = (cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh)
        assert_close(cell(x, h), expected(x, h, [p.detach() for p in params]), TOL, f"after {update}")


def test_packed_weights_memory_is_bounded_and_freed_with_the_weights():
    with cpu_path("packed"):
        x, h = torch.randn(2, 16), torch.randn(2, 16)
        kept = []
        for _ in range(40):
            params = [p.float() for p in make_cell_params("gru", 16, 16)]
            gru_step(x, h, params)
            kept.append(params)
        assert 0 < packed_stats()["entries"] <= 16
        del kept, params
        gc.collect()
        assert packed_stats()["entries"] == 0, packed_stats()


def test_new_weight_at_a_freed_weights_address_is_not_stale():
    """A freed weight's memory is often handed to the next tensor of its size, with a fresh version counter: the
    cache must not take it for the old weight."""
    with cpu_path("packed"):
        x, h = torch.randn(2, 64), torch.randn(2, 64)
        for i in range(4):
            params = [p.float() for p in make_cell_params("gru", 64, 64)]
            assert_close(gru_step(x, h, params), expected(x, h, params), TOL, f"weights {i}")
            del params


def layer_reference(kind, x, state, params, lengths=None, reverse=False):
    d = [p.double() for p in params]
    fn = s2s_fused.lstm_layer if kind == "lstm" else s2s_fused.gru_layer
    st = tuple(s.double() for s in state) if kind == "lstm" else state.double()
    return fn(x.double(), st, *d, lengths=lengths, reverse=reverse, backend="reference")


def layer_cpu(kind, x, state, params, lengths=None, reverse=False):
    fn = s2s_fused.lstm_layer if kind == "lstm" else s2s_fused.gru_layer
    return fn(x, state, *params, lengths=lengths, reverse=reverse, backend="cpu")


def flat(out):
    o, s = out
    return [o] + (list(s) if isinstance(s, tuple) else [s])


@pytest.mark.parametrize("kind", ["lstm", "gru"])
@pytest.mark.parametrize("T,B,I,H", [(3, 1, 1, 1), (5, 3, 17, 3), (4, 17, 3, 130), (2, 5, 257, 17)])
def test_layer_packed_weights_are_reused_across_calls(kind, T, B, I, H):
    """A layer's packed-sequence loop keeps its packed W_ih^T and W_hh^T (and the backward's W_hh) across calls:
    an evaluation loop packs them once. Each call still gives the reference's numbers, on a poisoned heap."""
    with cpu_path("packed"):
        torch.manual_seed(T * 1000 + H)
        params = [p.float() for p in make_cell_params(kind, I, H)]
        x = torch.randn(T, B, I)
        state = (torch.randn(B, H), torch.randn(B, H)) if kind == "lstm" else torch.randn(B, H)
        lengths = torch.tensor([T] + [max(1, T - 1 - b % T) for b in range(1, B)])
        ref = flat(layer_reference(kind, x, state, params, lengths))
        layer_cpu(kind, x, state, params, lengths)
        before = packed_stats()
        for i in range(3):
            poison_heap(T * B * 4 * H)
            for a, b in zip(flat(layer_cpu(kind, x, state, params, lengths)), ref):
                assert_close(a, b, TOL, f"call {i}")
        after = packed_stats()
        assert after["misses"] == before["misses"] and after["hits"] >= before["hits"] + 6, (before, after)


@pytest.mark.parametrize("update", ["no_grad_add_", "data_mul_", "optimizer_step"])
def test_layer_packed_weights_follow_in_place_updates(update):
    with cpu_path("packed"):
        torch.manual_seed(1)
        rnn = s2s_fused.nn.LSTM(6, 17, backend="cpu")
        x = torch.randn(4, 3, 6)
        rnn(x)  # packs and keeps W_ih^T, W_hh^T
        if update == "no_grad_add_":
            with torch.no_grad():
                rnn.weight_hh_l0.add_(0.25)
        elif update == "data_mul_":  # shares the storage, not the version counter
            rnn.weight_ih_l0.data.mul_(-2.0)
        else:
            opt = torch.optim.SGD(rnn.parameters(), lr=0.5)
            rnn(x)[0].pow(2).sum().backward()
            opt.step()
        params = [getattr(rnn, n).detach() for n in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0")]
        zeros = (torch.zeros(3, 17), torch.zeros(3, 17))
        with torch.no_grad():
            got = rnn(x)[0]
        assert_close(got, layer_reference("lstm", x, zeros, params)[0], TOL, f"after {update}")


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_cell_and_layer_packings_of_one_weight_stay_apart(kind):
    """A cell and a layer sharing their weights pack the same view W^T in two layouts (the cell's plain panels,
    the layer's gates of a unit side by side): each must get its own packing, alternating calls included."""
    with cpu_path("packed"):
        torch.manual_seed(2)
        I, H, T, B = 5, 33, 3, 4
        params = [p.float() for p in make_cell_params(kind, I, H)]
        x = torch.randn(T, B, I)
        state = (torch.randn(B, H), torch.randn(B, H)) if kind == "lstm" else torch.randn(B, H)
        h = state[0] if kind == "lstm" else state
        layer_ref = flat(layer_reference(kind, x, state, params))
        cell_state = tuple(s.double() for s in state) if kind == "lstm" else h.double()
        cell_ref, _ = cell_call(kind, x[0].double(), cell_state, [p.double() for p in params], "reference")
        for i in range(2):
            got, _ = cell_call(kind, x[0], state, params, "cpu")
            for a, b in zip(got, cell_ref):
                assert_close(a, b, TOL, f"cell, round {i}")
            for a, b in zip(flat(layer_cpu(kind, x, state, params)), layer_ref):
                assert_close(a, b, TOL, f"layer, round {i}")
