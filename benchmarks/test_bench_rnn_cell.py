"""CPU timing-regression suite for the cells (pytest-benchmark): fused and torch.nn side by side per group.

    pytest benchmarks/test_bench_rnn_cell.py --benchmark-only --benchmark-json=out.json
"""
import pytest
import torch

from bench_rnn_cell import make, step_fns

B, I, H = 64, 512, 512


@pytest.mark.parametrize("provider", ["torch-eager", "s2s_fused-cpu"])
@pytest.mark.parametrize("mode", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_cell_step(benchmark, kind, mode, provider):
    benchmark.group = f"{kind}_cell {mode} B={B} H={H}"
    cell = make(kind, I, H, torch.float32, torch.device("cpu"), provider)
    fwd, fwd_bwd = step_fns(kind, cell, B, I, H, torch.float32, torch.device("cpu"))
    benchmark(fwd if mode == "fwd" else fwd_bwd)
