"""The CPU GEMM path choices, kept across processes.

Under ``S2S_FUSED_CPU_PATH=auto`` the CPU RNN ops measure their candidate paths on the first call of each key and
keep the fastest for the process (csrc/cpu/cpu_path.h). Measured again in every process, a near tie or a moment of
load can make two processes choose differently, and the paths round differently (within the documented
tolerances): the same training run would then not repeat bit for bit from one process to the next (an
interrupted and resumed run against a straight one), and every process would pay the measurement again. So the
choices are kept in a file, as cuDNN's benchmark mode and Triton's autotuner keep theirs: read when the extension
loads, the choices measured by this process merged in when it exits (the first process to save a key wins, so the
processes of a machine agree). One file per machine and build (CPU model, logical CPUs, capability in use, torch
version, extension build), in ``config.CPU_PATH_CACHE`` (``S2S_FUSED_CPU_PATH_CACHE=0``: none). Delete the file to
measure again. The file format: a comment line naming what it was made for, then ``key<TAB>path`` lines.
"""
from __future__ import annotations

import hashlib
import os
import platform
import tempfile
import warnings

import torch

from . import config

_state = {"file": None, "loaded": 0}


def cpu_info() -> dict:
    """The first processor's fields of /proc/cpuinfo (empty where there is none); the benchmarks name their CPU
    from it too."""
    out = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if not line.strip():
                    break
                key, _, value = line.partition(":")
                out[key.strip()] = value.strip()
    except OSError:
        pass
    return out


def _cpu_model() -> str:
    return cpu_info().get("model name") or platform.processor() or platform.machine()


def signature(ext) -> str:
    """What the choices depend on besides the key: the CPU, the build and the torch that runs it."""
    info = ext.build_info()
    try:
        build = str(os.path.getsize(ext.__file__))
    except (OSError, AttributeError, TypeError):
        build = "?"
    return (f"cpu={_cpu_model()}; logical_cpus={os.cpu_count()}; capability={info.get('cpu_capability')}; "
            f"torch={torch.__version__}; built_against={info.get('torch_version')}; extension_bytes={build}")


def cache_file(ext, folder=None) -> str | None:
    folder = config.CPU_PATH_CACHE if folder is None else folder
    if not folder:
        return None
    digest = hashlib.sha256(signature(ext).encode()).hexdigest()[:16]
    return os.path.join(folder, f"cpu_paths-{digest}.tsv")


def read(path: str) -> dict[str, str]:
    """{key: path} from a cache file; missing file: {}; lines that are not ``key<TAB>path`` are skipped."""
    out = {}
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.startswith("#"):
                    continue
                key, sep, path_name = line.rstrip("\n").rpartition("\t")
                if sep and key and path_name in config.CPU_PATHS:
                    out.setdefault(key, path_name)
    except (OSError, UnicodeDecodeError):
        return {}
    return out


def load(ext) -> None:
    """At import: hand the kept choices to the extension (keys it has chosen already keep theirs)."""
    path = cache_file(ext)
    _state["file"] = path
    if path is not None:
        _state["loaded"] = ext._load_cpu_path_choices(read(path))


def _measured_here(ext) -> dict[str, str]:
    """The choices this process measured (kept ones carry no times)."""
    try:
        choices = ext._cpu_path_state()["choices"]
    except ValueError:  # a bad S2S_FUSED_CPU_PATH value: reported where the ops run
        return {}
    return {key: c["path"] for key, c in choices.items() if c["times_us"] and "\t" not in key and "\n" not in key}


def save(ext) -> None:
    """At exit: merge this process's measured choices into the file (under a lock; written whole and renamed into
    place, so a reader never sees half a file). A failure to write costs the next process a measurement: a
    warning, not an error."""
    path = _state["file"]
    if path is None:
        return
    mine = _measured_here(ext)
    if not mine:
        return
    try:
        import fcntl
    except ImportError:  # no POSIX file locks (Windows): nothing is kept
        return
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path + ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            kept = read(path)
            merged = {**mine, **kept}  # a key saved by another process first stays as it is
            if merged == kept:
                return
            fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".cpu_paths-")
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(f"# s2s_fused CPU GEMM path choices for {signature(ext)}\n")
                f.writelines(f"{key}\t{p}\n" for key, p in sorted(merged.items()))
            os.replace(tmp, path)
    except OSError as e:
        warnings.warn(f"{config.CPU_PATH_CACHE_VARIABLE}: could not keep the CPU path choices in {path}: {e} "
                      f"(set {config.CPU_PATH_CACHE_VARIABLE}=0 to keep none)", RuntimeWarning, stacklevel=1)


def state() -> dict:
    """For ``python -m s2s_fused info``: the file (None: off) and how many choices came from it at import."""
    return dict(_state)
