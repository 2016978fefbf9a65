"""The CUDA-graph cache of the layers' per-step loops (csrc/cuda/rnn_graph.h, S2S_FUSED_CUDA_GRAPH=1) next to the
user's own streams, captures and pending work. The layers' results with graphs on are checked in
test_rnn_layer.py (test_cuda_*_graph_replay, test_cuda_graph_inside_user_capture)."""
from __future__ import annotations

import time

import pytest
import torch

from s2s_fused import nn as snn
from tests.helpers import assert_close, poison_heap

pytestmark = pytest.mark.gpu


@pytest.fixture
def graph_cache_on(monkeypatch):
    monkeypatch.setenv("S2S_FUSED_CUDA_GRAPH", "1")
    monkeypatch.setenv("S2S_FUSED_NO_PERSISTENT", "1")  # the per-step loop, which the cache records


def _gru():
    torch.manual_seed(0)
    return snn.GRU(8, 16, backend="cuda").cuda()


def test_side_stream_is_not_one_of_torchs_pool_streams(graph_cache_on, monkeypatch):
    """The cache warms up and captures on a stream of its own. One from torch's pool (which hands its 32 streams
    per priority out round-robin) could be a stream the user is capturing on: here each pool stream in turn holds
    a relaxed-mode capture while the layer runs on the default stream, each time a shape the cache has not seen
    (its warm-up path); on the pool stream the warm-up would join the user's capture instead of running."""
    m = _gru()
    user_streams = [torch.cuda.Stream() for _ in range(64)]  # every stream of the pool, at least once
    for i, user in enumerate(user_streams):
        x = torch.randn(300 + i, 5, 8, device="cuda")
        monkeypatch.setenv("S2S_FUSED_CUDA_GRAPH", "0")
        with torch.no_grad():
            want = m(x)[0]
        monkeypatch.setenv("S2S_FUSED_CUDA_GRAPH", "1")
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g, stream=user, capture_error_mode="relaxed"):
            with torch.cuda.stream(torch.cuda.default_stream()), torch.no_grad():
                poison_heap(want.numel(), device="cuda")
                got = m(x)[0]
        torch.cuda.synchronize()
        assert_close(got, want, 1e-6, f"pool stream {i}")


def test_eviction_does_not_wait_for_the_device(graph_cache_on):
    """Evicting a cached shape does not synchronize the device (a cudaDeviceSynchronize would invalidate another
    thread's global-mode capture): with a kernel spinning for about 2 s on another stream, the call whose new shape
    evicts the least recently used one returns at once."""
    m = _gru()
    xs = [torch.randn(400 + i, 5, 8, device="cuda") for i in range(18)]
    with torch.no_grad():
        for x in xs[:-1]:  # more new shapes than the cache holds (16): it is full, each new shape evicts
            m(x)
        torch.cuda.synchronize()
        spinner = torch.cuda.Stream()
        with torch.cuda.stream(spinner):
            torch.cuda._sleep(4_000_000_000)  # ~2 s at the H200's 1.98 GHz
        t0 = time.perf_counter()
        m(xs[-1])
        host_s = time.perf_counter() - t0
    torch.cuda.synchronize()
    assert host_s < 0.5, f"the evicting call took {host_s:.2f} s: it waited for the spinning kernel"
