"""The CPU buffer cache (csrc/cpu/memory.h): the CPU ops' large buffers and outputs come from blocks earlier calls
freed, which must never change a number, leak, or outlive the cap; tests hand them out poisoned (conftest.py)."""
import subprocess
import sys
import threading

import pytest
import torch

import s2s_fused
from s2s_fused import backend, reference

from helpers import ROOT, compiled_switch, make_cell_params

pytestmark = pytest.mark.skipif(not backend.is_available("cpu"), reason="needs the compiled CPU extension")

MIN_BYTES = 128 << 10  # BufferCache::kMinBytes
CAP_BYTES = 256 << 20  # BufferCache::kCapBytes


def _state():
    return backend._extension()._cpu_buffer_cache_state()


def _gru_cell_grads(B, H, dtype=torch.float64, seed=0):
    """Every gradient of one GRU step, fused CPU and reference, from the same fresh random inputs."""
    g = torch.Generator().manual_seed(seed)
    w = [t.clone().requires_grad_() for t in make_cell_params("gru", H, H, dtype=dtype)]
    x = torch.randn(B, H, generator=g, dtype=dtype).requires_grad_()
    h = torch.randn(B, H, generator=g, dtype=dtype).requires_grad_()
    up = torch.randn(B, H, generator=g, dtype=dtype)
    out = []
    for f in (lambda: s2s_fused.gru_cell(x, h, *w, backend="cpu"), lambda: reference.gru_cell(x, h, *w)):
        out.append(torch.autograd.grad(f(), [x, h, *w], up))
    return out


def test_reused_blocks_give_the_reference_numbers():
    """Calls of several sizes, one after another, take blocks earlier calls freed (hits), and every gradient is the
    float64 reference's: a reused block starts poisoned (NaN), so a skipped write cannot pass on stale numbers."""
    s2s_fused.empty_cpu_cache()
    before = _state()
    for B, H, seed in ((3, 130, 0), (17, 257, 1), (3, 130, 2), (1, 257, 3), (17, 257, 4)):
        fused, ref = _gru_cell_grads(B, H, seed=seed)
        for a, b in zip(fused, ref):
            assert torch.isfinite(a).all()
            torch.testing.assert_close(a, b, atol=1e-9, rtol=1e-9)
    after = _state()
    assert after["hits"] > before["hits"], (before, after)
    assert after["misses"] > before["misses"]


def test_blocks_are_handed_out_poisoned_in_tests():
    """A tensor resized in place asks its storage's allocator (the cache) for the larger block: under the test
    session's S2S_FUSED_POISON_BUFFERS the bytes the copy did not fill are NaN."""
    w = make_cell_params("gru", 256, 256, dtype=torch.float32)
    x = torch.randn(4, 256)
    g = torch.ops.s2s_fused.gru_cell_backward(torch.randn(4, 256), x, x, w[0], w[1],
                                              torch.ops.s2s_fused.gru_cell_forward(x, x, *w, True)[1], True,
                                              [False, False, True, False, False, False])[2]
    assert g.nbytes >= MIN_BYTES and torch.isfinite(g).all()
    n = g.numel()
    g.resize_(2 * n)
    assert torch.isnan(g[n:]).all()


def test_live_bytes_count_the_blocks_in_use():
    """While an op's output lives, the cache counts its block (at least the bytes asked for) as in use; once freed,
    the count is back where it was. Twice, so that both ways of handing out a block are counted: from the system
    into an emptied cache (misses), then the blocks the first call freed (hits)."""
    w = make_cell_params("gru", 256, 256, dtype=torch.float32)
    x = torch.randn(4, 256)
    ws = torch.ops.s2s_fused.gru_cell_forward(x, x, *w, True)[1]
    s2s_fused.empty_cpu_cache()
    for way in ("misses", "hits"):
        before = _state()
        grads = torch.ops.s2s_fused.gru_cell_backward(x, x, x, w[0], w[1], ws, True,
                                                      [False, False, True, False, False, False])
        during = _state()
        assert grads[2].nbytes >= MIN_BYTES
        assert during["live_bytes"] >= before["live_bytes"] + grads[2].nbytes, (before, during)
        assert during["live_blocks"] > before["live_blocks"]
        assert during[way] > before[way], (before, during)
        del grads
        after = _state()
        assert after["live_bytes"] == before["live_bytes"] and after["live_blocks"] == before["live_blocks"], \
            (before, after)


def test_switch_off_bypasses_the_cache_and_empty_returns_the_blocks():
    s2s_fused.empty_cpu_cache()
    assert _state()["free_blocks"] == 0 and _state()["free_bytes"] == 0
    with compiled_switch("S2S_FUSED_NO_BUFFER_CACHE"):
        before = _state()
        _gru_cell_grads(8, 257)
        after = _state()
        assert after["hits"] == before["hits"] and after["misses"] == before["misses"]
        assert after["free_blocks"] == 0
    _gru_cell_grads(8, 257)
    assert _state()["free_blocks"] > 0
    s2s_fused.empty_cpu_cache()
    assert _state()["free_blocks"] == 0


def test_memory_stays_bounded_over_many_calls():
    """A training loop's steady state: the cache's blocks (free and in use) stop growing after the first steps,
    and the free ones never exceed the cap."""
    m = s2s_fused.nn.GRUCell(256, 256)
    x = torch.randn(8, 256, requires_grad=True)
    totals = []
    for _ in range(30):
        m.zero_grad(set_to_none=True)
        h = torch.zeros(8, 256)
        for _ in range(4):
            h = m(x, h)
        h.sum().backward()
        s = _state()
        assert s["free_bytes"] <= CAP_BYTES
        totals.append(s["free_bytes"] + s["live_bytes"])
    assert max(totals[10:]) <= max(totals[:10]), totals


def test_threads_share_the_cache_safely():
    """Ops in several threads take and free blocks at once: every result is still the reference's."""
    errors = []

    def work(seed):
        try:
            for i in range(6):
                fused, ref = _gru_cell_grads(5, 130, seed=seed * 100 + i)
                for a, b in zip(fused, ref):
                    torch.testing.assert_close(a, b, atol=1e-9, rtol=1e-9)
        except Exception as e:  # noqa: BLE001  (reported below, in the test's thread)
            errors.append(e)

    threads = [threading.Thread(target=work, args=(s,)) for s in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors


_FORK_SCRIPT = """
import os, threading, torch, s2s_fused
torch.set_num_threads(1)  # OpenMP's pool is not fork-safe; the cache's lock is what this tests
ops = torch.ops.s2s_fused
x, w_ih, w_hh = torch.randn(8, 256), torch.randn(768, 256), torch.randn(768, 256)
ws = ops.gru_cell_forward(x, x, w_ih, w_hh, None, None, True)[1]
def weight_grads():  # two 768 KB outputs from the cache per call
    return ops.gru_cell_backward(x, x, x, w_ih, w_hh, ws, True, [False, False, True, True, False, False])
stop = False
def spin():
    while not stop:
        weight_grads()
t = threading.Thread(target=spin); t.start()
pids = []
for _ in range(100):
    pid = os.fork()
    if pid == 0:
        weight_grads()  # hangs if the fork copied a cache lock while the other thread held it
        os._exit(0)
    pids.append(pid)
stop = True; t.join()
print(all(os.waitpid(p, 0)[1] == 0 for p in pids))
"""


def test_fork_while_another_thread_uses_the_cache():
    """Forked children (DataLoader workers) run ops while the parent's other thread keeps running them: no child may
    inherit a cache lock (buffer cache, path choices, packed weights) held by that thread. Without the fork handlers
    (cpu/fork_safe_mutex.h) 3 of 40 runs of 30 forks hung; a fork inside a lock is rare, so this catches a
    regression often, not always."""
    res = subprocess.run([sys.executable, "-c", _FORK_SCRIPT], capture_output=True, text=True, timeout=60,
                         cwd=ROOT, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert res.returncode == 0 and res.stdout.strip() == "True", res.stderr


def test_info_reports_the_cache():
    from s2s_fused.cli import info

    _gru_cell_grads(8, 257)
    line = info()["CPU buffer cache"]
    assert "free blocks" in line and "hits" in line, line
    with compiled_switch("S2S_FUSED_NO_BUFFER_CACHE"):
        assert info()["CPU buffer cache"].startswith("off"), info()["CPU buffer cache"]
