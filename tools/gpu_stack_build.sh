#!/usr/bin/env bash
# Build and check the extension, CUDA kernels included, against the GPU machine's exact stack on a CPU machine
# (ARCHITECTURE.md, "GPU runs"): Python 3.12, torch 2.11.0 (PyPI's Linux wheel is the CUDA 13.0 build; the CUDA
# headers come with its nvidia-* wheels), Triton 3.6.0, the local nvcc (13.0), archs 8.0 and 9.0.
#
#   bash tools/gpu_stack_build.sh [DIR]       DIR: the venv (default: $TMPDIR or /tmp, then s2s_fused-gpu-stack)
#
#  1. a Python 3.12 venv in DIR with the pinned stack and the test extras (an existing one is reused: pip then
#     only checks the pins); nothing is installed into any other environment;
#  2. builds in place (s2s_fused/_C.cpython-312-*.so sits beside the Python 3.11 build's _C.cpython-311-*.so: each
#     Python loads only its own, and *.so is git-ignored), the CUDA sources forced in;
#  3. imports it (loading needs no GPU), checks the archs in it, that every op of csrc/ops.cpp has a CUDA kernel
#     and that every compiled op's Triton twin registers with a fake kernel and has its function in s2s_fused/triton/;
#  4. writes .prebuilt/: the .so with its debug info stripped and build_info.json, for the GPU round to use
#     instead of building there (benchmarks/gpu_check.sh; the device tool carries .prebuilt/);
#  5. runs the test suite on this stack (Triton tests under Triton 3.6's interpreter), and compiles every Triton
#     kernel for sm_90 with Triton 3.6 (python -m tests.gpu_compile; a SKIP there is a failure here).
# Exits non-zero on any failure; the last line is always `cuda kernels: N of M ops` (M: the ops of
# csrc/ops.cpp, N: those with a CUDA kernel registered, 0 when the build did not get that far).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

TORCH_PIN=2.11.0
TRITON_PIN=3.6.0
ARCHS="8.0;9.0"
venv=${1:-${TMPDIR:-/tmp}/s2s_fused-gpu-stack}
so_name=_C.cpython-312-x86_64-linux-gnu.so
t_start=$SECONDS

# The op names of csrc/ops.cpp's TORCH_LIBRARY block: the first string literal of each m.def is "name(...".
mapfile -t OPS < <(grep -ozP 'm\.def\(\s*"\K[A-Za-z_]\w*(?=\()' csrc/ops.cpp | tr '\0' '\n')
cuda_ok=0
trap 'echo "cuda kernels: $cuda_ok of ${#OPS[@]} ops"' EXIT
[ "${#OPS[@]}" -gt 0 ] || { echo "no m.def(\"name(...\") found in csrc/ops.cpp" >&2; exit 1; }

step() { echo "== [$((SECONDS - t_start)) s] $*"; }
die() { echo "FAILED: $*" >&2; exit 1; }

# ------------------------------------------------------------------------------------------- 1. the venv
find_python312() {
  local c
  for c in "${PYTHON312:-}" python3.12; do
    # a pyenv shim exists for every installed version but fails unless that version is selected
    if [ -n "$c" ] && "$c" -c 'import sys; assert sys.version_info[:2] == (3, 12)' 2>/dev/null; then
      command -v "$c"; return 0
    fi
  done
  for c in "$(pyenv root 2>/dev/null || echo "$HOME/.pyenv")"/versions/3.12*/bin/python3.12; do
    if [ -x "$c" ]; then echo "$c"; return 0; fi
  done
  return 1
}

step "venv $venv (Python 3.12, torch==$TORCH_PIN, triton==$TRITON_PIN)"
if [ ! -x "$venv/bin/python" ]; then
  [ ! -e "$venv" ] || [ -z "$(ls -A "$venv")" ] || die "$venv exists and is not a venv; give another DIR"
  py312=$(find_python312) || die "Python 3.12 not found (set PYTHON312=/path/to/python3.12)"
  "$py312" -m venv "$venv"
fi
py=$venv/bin/python
"$py" -c 'import sys; assert sys.version_info[:2] == (3, 12), sys.version' || die "$venv is not a Python 3.12 venv"
# The test and train extras (the suite's seq2seq tests need the latter), read from setup.py so that the lists cannot
# drift apart.
mapfile -t TEST_EXTRAS < <("$py" - <<'EOF'
import ast
for node in ast.parse(open("setup.py").read()).body:
    if isinstance(node, ast.Assign) and [getattr(t, "id", None) for t in node.targets] in (["TEST"], ["TRAIN"]):
        print("\n".join(ast.literal_eval(node.value)))
EOF
)
[ "${#TEST_EXTRAS[@]}" -gt 0 ] || die "no TEST = [...] / TRAIN = [...] extras lists found in setup.py"
# numpy<2.4: Triton 3.6's interpreter turns 1-element arrays into loop bounds with int(), which NumPy 2.4 refuses
# ("only 0-dimensional arrays can be converted to Python scalars"); Triton 3.9 squeezes them first.
"$py" -m pip install -q --disable-pip-version-check "torch==$TORCH_PIN" "triton==$TRITON_PIN" setuptools wheel \
  ninja packaging "${TEST_EXTRAS[@]}" "numpy<2.4" > "$venv/pip.log" 2>&1 \
  || { tail -n 30 "$venv/pip.log"; die "pip install"; }
"$py" - "$TORCH_PIN" "$TRITON_PIN" <<'EOF' || die "the venv does not hold the pinned stack"
import sys, torch, triton
want_torch, want_triton = sys.argv[1:]
assert torch.__version__.split("+")[0] == want_torch and torch.version.cuda, f"torch {torch.__version__}"
assert triton.__version__ == want_triton, f"triton {triton.__version__}"
print(f"torch {torch.__version__} (CUDA {torch.version.cuda}), triton {triton.__version__}")
EOF

# ------------------------------------------------------------------------------------------- 2. the build
if [ -z "${CUDA_HOME:-}" ]; then
  for d in /usr/local/cuda "$(dirname "$(dirname "$(readlink -f "$(command -v nvcc || echo /nonexistent)")")")"; do
    if [ -x "$d/bin/nvcc" ]; then CUDA_HOME=$d; break; fi
  done
fi
[ -n "${CUDA_HOME:-}" ] && [ -x "$CUDA_HOME/bin/nvcc" ] || die "nvcc not found (set CUDA_HOME)"
nvcc_cuda=$("$CUDA_HOME/bin/nvcc" --version | grep -oP 'release \K[0-9]+\.[0-9]+')
torch_cuda=$("$py" -c 'import torch; print(torch.version.cuda)')
[ "${nvcc_cuda%%.*}" = "${torch_cuda%%.*}" ] \
  || die "nvcc $nvcc_cuda at $CUDA_HOME, but torch is built with CUDA $torch_cuda"
# cuBLAS, cuSPARSE, ... headers (torch's CUDA headers include them) come with torch's nvidia-* wheels.
site=$("$py" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
cuda_inc=$(ls -d "$site"/nvidia/*/include 2>/dev/null | paste -sd: - || true)
[ -n "$cuda_inc" ] || die "no nvidia/*/include under $site (torch==$TORCH_PIN should bring them)"

step "build (CUDA $nvcc_cuda from $CUDA_HOME, archs $ARCHS, MAX_JOBS=${MAX_JOBS:-2}); log: $venv/build.log"
rm -rf .prebuilt
t_build=$SECONDS
if ! env S2S_FUSED_FORCE_CUDA=1 S2S_FUSED_CPU_ONLY=0 TORCH_CUDA_ARCH_LIST="$ARCHS" CUDA_HOME="$CUDA_HOME" \
    CPATH="$cuda_inc${CPATH:+:$CPATH}" MAX_JOBS="${MAX_JOBS:-2}" "$py" setup.py build_ext --inplace \
    > "$venv/build.log" 2>&1; then
  grep -E -B2 -A8 'error|Error' "$venv/build.log" | tail -n 60
  die "build (whole log: $venv/build.log)"
fi
build_s=$((SECONDS - t_build))
so=s2s_fused/$so_name
[ -f "$so" ] || die "the build left no $so"
echo "built in $build_s s: $so ($(du -m "$so" | cut -f1) MB)"

# ------------------------------------------------------------------------------------------- 3. the checks
step "import, archs, CUDA kernels, Triton launchers"
# Which archs the device code is compiled for: cuobjdump lists the fatbin's cubins. It comes as a pip wheel, kept
# beside the venv rather than in it (the venv mirrors the GPU machine); PyPI's oldest CUDA 13 one is 13.2.
cuobjdump=$(ls "$venv"/cuobjdump/nvidia/*/bin/cuobjdump 2>/dev/null | head -n1 || true)
if [ -z "$cuobjdump" ]; then
  "$py" -m pip install -q --disable-pip-version-check --no-deps --target "$venv/cuobjdump" \
    "nvidia-cuda-cuobjdump==13.2.86" >> "$venv/pip.log" 2>&1 || die "pip install nvidia-cuda-cuobjdump ($venv/pip.log)"
  cuobjdump=$(ls "$venv"/cuobjdump/nvidia/*/bin/cuobjdump 2>/dev/null | head -n1 || true)
fi
[ -x "$cuobjdump" ] || die "cuobjdump not found under $venv/cuobjdump"
sms=$("$cuobjdump" --list-elf "$so" | grep -oP '\.sm_\K[0-9]+[a-z]?(?=\.cubin)' | sort -un | paste -sd' ' - || true)
ptx=$("$cuobjdump" --list-ptx "$so" 2>/dev/null | grep -oP '\.sm_\K[0-9]+[a-z]?(?=\.ptx)' | sort -un \
  | paste -sd' ' - || true)
echo "cubins for sm: ${sms:-none}; PTX for: ${ptx:-none}"
[ "$sms" = "80 90" ] || die "expected cubins for sm_80 and sm_90 in $so, found: ${sms:-none}"

checked=$(env -u TRITON_INTERPRET "$py" - "$ARCHS" "${OPS[@]}" <<'EOF'
import glob, re, sys
import torch
from packaging.version import Version
import s2s_fused
from s2s_fused.backend import build_info, extension_error

want_archs, ops = sys.argv[1], sys.argv[2:]
info = build_info()
assert info, f"s2s_fused._C did not import: {extension_error()}"
assert s2s_fused._C.__file__.endswith(".cpython-312-x86_64-linux-gnu.so"), s2s_fused._C.__file__
problems = []
if not info["with_cuda"]:
    problems.append("the extension says it was built without CUDA")
if info["cuda_arch_list"] != want_archs:
    problems.append(f"build info cuda_arch_list {info['cuda_arch_list']!r}, expected {want_archs!r}")
if info["torch_version"] != Version(torch.__version__).base_version:
    problems.append(f"built against torch {info['torch_version']}, running {torch.__version__}")
# The parsed list must be every op the extension defines: a C++ op is one with a CPU kernel (the Python custom
# ops register a CompositeExplicitAutograd kernel, not a CPU one).
has = torch._C._dispatch_has_kernel_for_dispatch_key
defined = {n.split("::", 1)[1] for n in torch._C._dispatch_get_all_op_names() if n.startswith("s2s_fused::")}
with_cpu = {n for n in defined if has(f"s2s_fused::{n}", "CPU")}
if set(ops) != with_cpu:
    problems.append(f"ops parsed from csrc/ops.cpp {sorted(set(ops) - with_cpu)} have no CPU kernel, "
                    f"ops with a CPU kernel {sorted(with_cpu - set(ops))} were not parsed")
no_cuda = [n for n in ops if not has(f"s2s_fused::{n}", "CUDA")]
problems += [f"no CUDA kernel registered for s2s_fused::{n}" for n in no_cuda]
# Triton launchers: every compiled op's Triton twin (s2s_fused/ops/_library.py), registered by importing s2s_fused,
# with its fake kernel, and the function that implements it in s2s_fused/triton/<family>.py.
import importlib
from s2s_fused.ops import _library
from torch._library.simple_registry import singleton as registry
launchers = 0
for name, family in sorted(_library.TRITON_TWINS.items()):
    twin = name + _library.TWIN_SUFFIX
    launchers += 1
    if not has(f"s2s_fused::{twin}", "CompositeExplicitAutograd"):
        problems.append(f"Triton twin s2s_fused::{twin} is not registered")
    elif registry.find(f"s2s_fused::{twin}").fake_impl.kernel is None:
        problems.append(f"Triton twin s2s_fused::{twin} has no fake kernel")
    if not callable(getattr(importlib.import_module(f"s2s_fused.triton.{family}"), name, None)):
        problems.append(f"s2s_fused/triton/{family}.py has no function {name} for s2s_fused::{twin}")
for p in problems:
    print("FAILED:", p, file=sys.stderr)
print(f"triton launchers: {launchers} registered", file=sys.stderr)
print(len(ops) - len(no_cuda))
sys.exit(1 if problems or launchers == 0 else 0)
EOF
) || { cuda_ok=${checked:-0}; die "extension checks"; }
cuda_ok=$checked
"$py" -m s2s_fused info

# ------------------------------------------------------------------------------------------- 4. .prebuilt/
step "prebuilt: .prebuilt/$so_name (debug info stripped) and .prebuilt/build_info.json"
mkdir -p .prebuilt
strip --strip-debug -o ".prebuilt/$so_name" "$so"
"$py" - "$build_s" "$ARCHS" "$sms" "$ptx" "$nvcc_cuda" <<'EOF' || die "the stripped extension"
import hashlib, json, os, platform, subprocess, sys
import torch, triton

build_s, archs, sms, ptx, nvcc = sys.argv[1:]
so = ".prebuilt/_C.cpython-312-x86_64-linux-gnu.so"
torch.ops.load_library(so)  # the stripped file itself must load and register the ops
assert hasattr(torch.ops.s2s_fused, "lstm_layer_forward")
git = lambda *a: subprocess.run(["git", *a], capture_output=True, text=True).stdout.strip()
info = {
    "so": os.path.basename(so),
    "sha256": hashlib.sha256(open(so, "rb").read()).hexdigest(),
    "bytes": os.path.getsize(so),
    "python": platform.python_version(),
    "torch": torch.__version__,
    "cuda": torch.version.cuda,
    "nvcc": nvcc,
    "triton": triton.__version__,
    "torch_cuda_arch_list": archs,
    "cubin_archs": [f"sm_{s}" for s in sms.split()],
    "ptx_archs": [f"compute_{s}" for s in ptx.split()],
    "git_commit": git("rev-parse", "HEAD"),
    # uncommitted changes to tracked files: the .so is then not exactly the commit's sources
    "git_dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
    "build_seconds": int(build_s),
}
json.dump(info, open(".prebuilt/build_info.json", "w"), indent=2)
print(json.dumps(info))
EOF
echo "$(du -m ".prebuilt/$so_name" | cut -f1) MB stripped ($(stat -c %s ".prebuilt/$so_name") bytes)"

# ------------------------------------------------------------------------------------------- 5. the tests
step "tests/test_build.py against this build"
"$py" -m pytest -q -p no:cacheprovider tests/test_build.py || die "tests/test_build.py"
step "the test suite on torch $TORCH_PIN, Triton tests under Triton $TRITON_PIN's interpreter"
# The whole suite, so that the oldest supported torch is tested as well as the newest (the main CI run). The tests
# that compile for sm_90 run tests.gpu_compile in a subprocess and skip on its SKIP; it runs directly below
# instead, where a SKIP fails. test_device_awareness reruns the suite in a GPU simulation: the main run has it.
# The interpreter's int() of 1-element arrays warns under NumPy 2.x. One worker per core (pytest-xdist), as the main
# run: serially the two runs of the suite took most of CI's 90 minutes on a slower (AMD EPYC Zen 3) machine.
"$py" -m pytest -q -n auto -p no:cacheprovider -W "ignore::DeprecationWarning:triton.runtime.interpreter" tests \
  -k "not compile_for_gpu and not test_device_awareness" || die "the test suite on torch $TORCH_PIN"
step "every Triton kernel compiled for sm_90 with Triton $TRITON_PIN (tests.gpu_compile)"
# Triton's compile cache goes with the venv: a fresh venv compiles everything, as a fresh machine would.
out=$(env -u TRITON_INTERPRET TRITON_CACHE_DIR="$venv/triton-cache" "$py" -m tests.gpu_compile 2>&1) || { echo "$out"; die "tests.gpu_compile"; }
echo "$out" | tail -n 3
case "$out" in SKIP*) die "tests.gpu_compile skipped: ${out}" ;; esac
grep -q '^compiled [0-9]' <<< "$out" || die "tests.gpu_compile printed no 'compiled N'"

step "done in $((SECONDS - t_start)) s"
[ "$cuda_ok" = "${#OPS[@]}" ] || exit 1
