"""Test session set-up. Triton kernels run under the interpreter when there is no GPU: the variable must be set
before any @triton.jit kernel is defined, so it is set here, before s2s_fused (or its triton modules) import."""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
