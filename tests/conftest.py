"""Test session set-up.

- Triton kernels run under the interpreter when there is no GPU: the variable must be set before any @triton.jit
  kernel is defined, so it is set here, before s2s_fused's triton modules import.
- fp32 comparisons with cuDNN / cuBLAS run without TF32: the "2x torch's own error" tolerances must measure torch's
  fp32 error, which TF32 (cuDNN's RNN default) would inflate to ~1e-3.
- ``S2S_FUSED_TEST_SIMULATE_GPU=1`` (tests/test_device_awareness.py): a CPU-only machine plays the GPU machine for
  the tests' device choices. Called from the tests (any file under tests/), torch.cuda.is_available() says True;
  s2s_fused.backend.is_available("triton") says True with TRITON_INTERPRET off, as there. torch and s2s_fused
  themselves still see no GPU (torch.compile would try to use it). Nothing can run on a GPU here, so a test ends,
  skipped ("device-aware"), at its first CUDA allocation, while a test that hands the Triton backend CPU tensors
  before that fails as it would on the GPU machine: with the backend's "on CPU tensors needs TRITON_INTERPRET=1"
  error, or at the launch of a Triton kernel (which only CPU tensors can reach here). Only the tests that can
  reach a GPU backend run (_reaching_gpu_backends); ``=all`` runs every test.
"""
import atexit
import inspect
import os
import shutil
import sys
import tempfile

import torch

# The CPU GEMM path choices that the test process and its subprocesses measure are kept in a folder of this
# session's own (s2s_fused/_cpu_path_cache.py), never in the user's cache, so that no earlier run decides a path
# here; it is set before s2s_fused is imported (the choices are read then) and removed at exit, after s2s_fused
# has saved into it (atexit runs the later registration first).
_PATH_CACHE = tempfile.mkdtemp(prefix="s2s_fused_test_cpu_paths-")
os.environ["S2S_FUSED_CPU_PATH_CACHE"] = _PATH_CACHE
atexit.register(shutil.rmtree, _PATH_CACHE, ignore_errors=True)

SIMULATE_GPU_ENV = "S2S_FUSED_TEST_SIMULATE_GPU"
SIMULATE_GPU = os.environ.get(SIMULATE_GPU_ENV, "0") in ("1", "all")
DEVICE_AWARE = "simulated GPU: the test allocates on CUDA (device-aware)"
TRITON_LAUNCH = "simulated GPU: a Triton kernel was launched"
TESTS_DIR = os.path.dirname(os.path.abspath(__file__))

if SIMULATE_GPU:
    if torch.cuda.is_available():
        raise RuntimeError(f"{SIMULATE_GPU_ENV}=1 simulates a GPU on a machine without one")
    os.environ.pop("TRITON_INTERPRET", None)
    _cuda_is_available = torch.cuda.is_available

    def _gpu_for_the_tests() -> bool:
        caller = sys._getframe(1).f_code.co_filename
        return os.path.abspath(caller).startswith(TESTS_DIR + os.sep) or _cuda_is_available()

    torch.cuda.is_available = _gpu_for_the_tests
elif not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

torch.backends.cudnn.allow_tf32 = False
torch.backends.cuda.matmul.allow_tf32 = False

import pytest  # noqa: E402

if SIMULATE_GPU:
    from triton.runtime.jit import JITFunction  # noqa: E402

    import s2s_fused.backend as _backend  # noqa: E402

    _is_available = _backend.is_available

    def _is_available_on_the_gpu_machine(name: str) -> bool:
        return _backend.triton_installed() if name == "triton" else _is_available(name)

    def _cuda_init_in_simulation():
        pytest.skip(DEVICE_AWARE)

    def _launch_in_simulation(self, *args, **kwargs):
        raise RuntimeError(f"{TRITON_LAUNCH} ({self.__name__}): only CPU tensors exist here")

    _backend.is_available = _is_available_on_the_gpu_machine  # resolve() and the tests look it up at each call
    torch.cuda._lazy_init = _cuda_init_in_simulation  # every CUDA allocation, stream or sync goes through it
    JITFunction.run = _launch_in_simulation


def _names_gpu(text: str) -> bool:
    return "triton" in text.lower() or "cuda" in text.lower()


def _reaching_gpu_backends(items) -> list:
    """The tests that can reach a GPU backend: gpu-marked ones, and those whose id or source names triton or cuda,
    except the variants of a parametrized test whose other variants' ids name them (the CPU variants)."""
    gpu_variants = {item.function for item in items if _names_gpu(item.nodeid)}
    chosen = []
    for item in items:
        if _names_gpu(item.nodeid) or "gpu" in item.keywords:
            chosen.append(item)
        elif item.function not in gpu_variants:
            try:
                source = inspect.getsource(item.function)
            except (OSError, TypeError):
                source = "triton"
            if _names_gpu(source):
                chosen.append(item)
    return chosen


def pytest_collection_modifyitems(config, items):
    if SIMULATE_GPU:
        if os.environ[SIMULATE_GPU_ENV] != "all":
            chosen = _reaching_gpu_backends(items)
            config.hook.pytest_deselected(items=[item for item in items if item not in chosen])
            items[:] = chosen
        return
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True, scope="session")
def _check_gemm_operand_tails():
    """Every CPU GEMM of the RNN ops checks, for the whole session, that the memory oneDNN's AMX matmul reads past
    its operand's rows holds no NaN/inf (S2S_FUSED_CHECK_GEMM_TAILS, csrc/config.h): a buffer left unwritten next
    to a GEMM operand then fails on every machine, not only on Intel AMX ones where it turns into NaN gradients now
    and then."""
    from s2s_fused import backend

    ext = backend._extension()
    previous = ext._set_check_gemm_tails(True) if ext is not None else None
    yield
    if ext is not None:
        ext._set_check_gemm_tails(previous)


@pytest.fixture(autouse=True, scope="session")
def _poison_cpu_buffers():
    """Every large CPU op buffer (csrc/cpu/memory.h) is handed out filled with NaN bytes for the whole session
    (S2S_FUSED_POISON_BUFFERS): the buffer cache gives an op the block an earlier call freed, still holding that
    call's valid numbers, so without this a kernel that skips a write could read a plausible stale value."""
    from s2s_fused import backend

    ext = backend._extension()
    if ext is None or not hasattr(ext, "_cpu_buffer_cache_state"):
        yield
        return
    previous = ext._set_switch("S2S_FUSED_POISON_BUFFERS", True)
    yield
    ext._set_switch("S2S_FUSED_POISON_BUFFERS", previous)
