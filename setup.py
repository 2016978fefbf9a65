"""Build of the s2s_fused._C extension.

Always built: csrc/ops.cpp (every schema), csrc/cpu/*.cpp (CPU registrations) and csrc/cpu/kernels/*.cpp, the hot
raw-pointer loops, which on x86-64 are compiled once per CPU capability (DEFAULT, AVX2, AVX512) with that
capability's flags and chosen at run time (see csrc/cpu/dispatch.h). CUDA sources (csrc/cuda/*.cu and
*_binding.cpp) are added when torch is a CUDA build and CUDA_HOME is found.

Environment: S2S_FUSED_FORCE_CUDA=1 / S2S_FUSED_CPU_ONLY=1 override the CUDA detection, MAX_JOBS bounds ninja,
TORCH_CUDA_ARCH_LIST picks the CUDA archs (unset: the visible GPUs' archs, as torch would pick them, or
"8.0;9.0+PTX" when no GPU is visible), S2S_FUSED_DEBUG=1 builds -O0 -g.
"""
import os
import re
import sys
import platform
from pathlib import Path

from setuptools import find_packages, setup

import torch
from packaging.version import Version
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

ROOT = Path(__file__).resolve().parent
CSRC = ROOT / "csrc"
VERSION = "0.1.0"

if Version(torch.__version__.split("+")[0]) < Version("2.4"):
    raise RuntimeError(f"s2s_fused needs torch >= 2.4 (custom-op registration API); found {torch.__version__}")


def _flag(name):
    """A build switch, with the rule of every S2S_FUSED_* switch (s2s_fused/config.py, csrc/config.h)."""
    value = os.environ.get(name, "")
    if value not in ("", "0", "1"):
        raise ValueError(f"{name}: expected 1 (on), 0 or unset (off), got {value!r}")
    return value == "1"


def want_cuda():
    if _flag("S2S_FUSED_CPU_ONLY"):
        return False
    if _flag("S2S_FUSED_FORCE_CUDA"):
        return True
    return torch.version.cuda is not None and CUDA_HOME is not None


DEFAULT_CUDA_ARCHS = "8.0;9.0+PTX"


def cuda_arch_list():
    """The CUDA archs to compile, spelled as TORCH_CUDA_ARCH_LIST. The build always hands torch an explicit list,
    so the list recorded in the build info is the one compiled: left unset, torch would pick the visible GPUs'
    archs itself and the build would not know them. Unset here means the same choice torch makes: each visible
    GPU's capability, capped at the newest arch this torch was built for (a newer GPU runs that arch's code or its
    PTX), +PTX on the last; with no GPU visible, DEFAULT_CUDA_ARCHS."""
    given = os.environ.get("TORCH_CUDA_ARCH_LIST", "").strip()
    if given:
        return given
    if not (torch.cuda.is_available() and torch.cuda.device_count() > 0):
        return DEFAULT_CUDA_ARCHS
    built_for = [int("".join(re.findall(r"\d+", a.split("_", 1)[1]))) for a in torch.cuda.get_arch_list()
                 if a.startswith("sm_")]
    newest = max((divmod(sm, 10) for sm in built_for), default=None)
    caps = set()
    for i in range(torch.cuda.device_count()):
        cap = tuple(torch.cuda.get_device_capability(i))
        caps.add(min(cap, newest) if newest else cap)
    archs = [f"{major}.{minor}" for major, minor in sorted(caps)]
    archs[-1] += "+PTX"
    return ";".join(archs)


# Per-capability compile flags for csrc/cpu/kernels/*.cpp. The macros make ATen's at::vec pick its AVX2/AVX512
# implementation and put our kernels in the matching namespace, so the three copies never clash at link time.
X86_CAPABILITIES = {
    "DEFAULT": [],
    "AVX2": ["-mavx2", "-mfma", "-mf16c", "-mbmi2"],
    "AVX512": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mavx2", "-mfma", "-mf16c", "-mbmi2"],
}


def cpu_capabilities():
    if platform.machine().lower() in ("x86_64", "amd64"):
        return X86_CAPABILITIES
    return {"DEFAULT": []}


class BuildWithCapabilities(BuildExtension):
    """BuildExtension that first compiles the capability kernels, each with its own flags, as extra objects."""

    def build_extension(self, ext):
        kernels = sorted(str(p) for p in (CSRC / "cpu" / "kernels").glob("*.cpp"))
        cxx = list(ext.extra_compile_args.get("cxx", [])) if isinstance(ext.extra_compile_args, dict) else []
        objects = []
        for cap, flags in cpu_capabilities().items():
            macros = [("CPU_CAPABILITY", cap), (f"CPU_CAPABILITY_{cap}", None)]
            out_dir = os.path.join(self.build_temp, "capability", cap)
            post = cxx + flags
            # BuildExtension's (ninja) compile expects a per-language dict for extra_postargs.
            objects += self.compiler.compile(
                kernels, output_dir=out_dir, macros=macros, include_dirs=ext.include_dirs,
                extra_postargs={"cxx": post, "nvcc": []} if self.use_ninja else post,
            )
        ext.extra_objects = list(ext.extra_objects or []) + objects
        super().build_extension(ext)


def make_extension():
    debug = _flag("S2S_FUSED_DEBUG")
    opt = ["-O0", "-g"] if debug else ["-O3"]
    cxx = opt + ["-std=c++20", "-fvisibility=hidden", "-Wno-unknown-pragmas", "-Wno-maybe-uninitialized"]
    # at::parallel_for is inline: its `#pragma omp parallel` is compiled into *our* objects, and without -fopenmp
    # it silently runs every loop on one thread. Compile with it but do not link an OpenMP runtime: the GOMP_* /
    # omp_* symbols then resolve to the one libtorch_cpu loaded (torch/lib/libgomp*.so, whatever its soname:
    # some wheels bundle it under a hashed name), so the process keeps a single OpenMP runtime and
    # torch.set_num_threads governs our loops too.
    link = []
    if sys.platform.startswith("linux"):
        cxx.append("-fopenmp")
    caps = cpu_capabilities()
    defines = [f"-DS2S_HAVE_CAPABILITY_{cap}" for cap in caps]
    sources = [str(CSRC / "ops.cpp")] + sorted(str(p) for p in (CSRC / "cpu").glob("*.cpp"))
    include_dirs = [str(CSRC)]
    if want_cuda():
        arch = os.environ["TORCH_CUDA_ARCH_LIST"] = cuda_arch_list()
        sources += sorted(str(p) for p in (CSRC / "cuda").glob("*.cu"))
        sources += sorted(str(p) for p in (CSRC / "cuda").glob("*_binding.cpp"))
        # No --use_fast_math: exact first (it swaps expf/divisions for approximations whose error grows with |x|);
        # kernels that want an intrinsic (e.g. __expf in the CE row pass) call it explicitly.
        nvcc = opt + ["-std=c++17", "-lineinfo", "--expt-relaxed-constexpr",
                      "-U__CUDA_NO_HALF_OPERATORS__", "-U__CUDA_NO_HALF_CONVERSIONS__",
                      "-U__CUDA_NO_BFLOAT16_CONVERSIONS__", "-U__CUDA_NO_HALF2_OPERATORS__"]
        return CUDAExtension(
            "s2s_fused._C", sources, include_dirs=include_dirs,
            extra_compile_args={"cxx": cxx + defines + ["-DS2S_WITH_CUDA", f'-DS2S_CUDA_ARCH_LIST="{arch}"'],
                                "nvcc": nvcc},
            extra_link_args=link,
        )
    return CppExtension("s2s_fused._C", sources, include_dirs=include_dirs, extra_link_args=link,
                        extra_compile_args={"cxx": cxx + defines})


# Plain literal lists: tools/gpu_stack_build.sh reads TEST and TRAIN with ast.literal_eval.
SUBWORD = ["sentencepiece"]  # train --subword sentencepiece
TEST = ["pytest>=8", "pytest-xdist", "pytest-benchmark", "hypothesis", "triton>=3.6", "numpy", "onnx",
        "onnxscript", "onnxruntime", "sentencepiece"]
TRAIN = ["tqdm", "sacrebleu", "matplotlib"]

if __name__ == "__main__":  # setuptools runs this file as __main__; tests import it for its functions
    setup(
        name="s2s_fused",
        version=VERSION,
        description="Fused CUDA/C++/Triton kernels for RNN sequence-to-sequence models, as PyTorch ops",
        long_description=(ROOT / "README.md").read_text(encoding="utf-8") if (ROOT / "README.md").exists() else "",
        long_description_content_type="text/markdown",
        packages=find_packages(include=["s2s_fused", "s2s_fused.*"]),
        package_data={"s2s_fused": ["data/*.txt"]},
        python_requires=">=3.10",
        # torch is deliberately not listed: the extension is built against the torch already installed, and a
        # requirement here would let pip replace it (several GB of CUDA wheels on a CPU machine).
        install_requires=["numpy", "packaging"],
        extras_require={"test": TEST, "train": TRAIN, "subword": SUBWORD, "all": TEST + TRAIN},
        ext_modules=[make_extension()],
        cmdclass={"build_ext": BuildWithCapabilities.with_options(use_ninja=True)},
        zip_safe=False,
    )
