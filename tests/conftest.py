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


@pytest.fixture(autouse=True, scope="session")
def _check_gemm_operand_tails():
    """Every CPU GEMM of the RNN ops checks, for the whole session, that the memory oneDNN's AMX matmul reads past
    its operand's rows holds no NaN/inf (csrc/cpu/debug_checks.h): a buffer left unwritten next to a GEMM operand
    then fails on every machine, not only on Intel AMX ones where it turns into NaN gradients now and then."""
    from s2s_fused import backend

    ext = backend._extension()
    previous = ext._set_check_gemm_tails(True) if ext is not None else None
    yield
    if ext is not None:
        ext._set_check_gemm_tails(previous)
