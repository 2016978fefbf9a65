#!/usr/bin/env bash
# The GPU round (ARCHITECTURE.md, "GPU runs"): two calls to the device machine (one H200, Python 3.12, torch 2.11
# CUDA 13.0, Triton 3.6, no network), each under the device tool's 600 s limit, each leaving at most 8 files in the
# folder it is given and writing them as it goes, so that a call cut short still says what passed and what failed.
#
#   bash benchmarks/gpu_check.sh [--dry-run] 1|2|all OUTDIR
#
# The two calls, from the repository root here, back to back (the machine stays warm ~30 s after a call; a cold
# one starts again, and part 2 then reuses .prebuilt/ or builds):
#   1. run(command="bash benchmarks/gpu_check.sh 1 $OUT", carry=[".prebuilt"], timeout_s=600)
#      the extension (.prebuilt/ from tools/gpu_stack_build.sh when it matches this machine, else a build), the
#      gpu-marked tests, compute-sanitizer memcheck and racecheck over benchmarks/gpu_sanitize.py (every CUDA kernel
#      once forward and backward). Files: summary-1.md env-1.txt build-1.log tests-gpu-1.log junit-gpu-1.xml
#      sanitizer-1.log.
#   2. run(command="bash benchmarks/gpu_check.sh 2 $OUT", carry=[".prebuilt"], timeout_s=600)
#      the extension again (already in the tree on a warm machine), the other tests, then every benchmark
#      (benchmarks/run_all.py, time-boxed per family). Files: summary-2.md env-2.txt [build-2.log] tests-rest-2.log
#      junit-rest-2.xml bench-2.log tables-2.md results-2.tar.gz.
# Time boxes (from this script's start; GPU_CHECK_BUDGET_1_S / _2_S): the two calls and the machine's start
# (1-2 min) share one session's 15 minutes of device time, and each call has 600 s: part 1 ends by 300 s, part 2
# by 420 s, 12 min in all with the start, ~1.5 min spare. Estimated from CPU timings (the round's report): part 1
# ~265 s with .prebuilt (environment 10 s, extension check 15 s, gpu tests ~90 s with 4 xdist workers, memcheck
# ~60 s, racecheck ~80 s); a build instead of .prebuilt takes ~2 min, which comes out of the tests' time box.
# Part 2 ~410 s: other tests ~100 s (8 workers; at most 120 s), benchmarks the rest (~270 s, shared out by
# run_all.py's per-family time boxes; a family stopped early keeps the rows it measured).
#
# What comes back: copy both calls' files (their names do not collide) into benchmarks/results/<gpu>-<date>/, e.g.
# benchmarks/results/h200-2026-12-01/, unpack results-2.tar.gz there (per family: <family>.csv / .md / .png, and
# <family>.partial.* for a family its time box stopped) and delete the archive; summary-1.md and summary-2.md say
# what ran, what passed and what failed, the logs and junit files say why; regenerate the README's GPU table from
# the .md tables. Commit the folder.
#
# --dry-run: the same sequence on this (CPU) machine, skipping what needs a device, for CI: no build (the
# extension must already import), the gpu-marked tests run (all skip), the sanitizer program runs on the CPU
# kernels without compute-sanitizer, the other tests are only collected, two benchmark families run on --smoke
# shapes, and the outputs are checked against the device tool's limits (at most 8 files a part, plain names).
# Exit status: 0 when every step passed; 3 when no extension with CUDA kernels could be had (the call stops there);
# 1 when any other step failed or was cut short.
set -uo pipefail
cd "$(dirname "$0")/.."

usage() { echo "usage: bash benchmarks/gpu_check.sh [--dry-run] 1|2|all OUTDIR" >&2; exit 2; }
dry=0
if [ "${1:-}" = "--dry-run" ]; then dry=1; shift; fi
part=${1:-}
out=${2:-}
case "$part" in 1|2|all) ;; *) usage ;; esac
[ -n "$out" ] || usage
mkdir -p "$out"
out=$(cd "$out" && pwd)

py=${PYTHON:-python3}
so=$("$py" -c 'import sysconfig; print("_C" + sysconfig.get_config_var("EXT_SUFFIX"))')
export PYTHONUNBUFFERED=1 PIP_NO_INDEX=1 PIP_DISABLE_PIP_VERSION_CHECK=1 MAX_JOBS=${MAX_JOBS:-$(nproc)}
unset TRITON_INTERPRET  # Triton runs on the GPU (the tests set it themselves where there is none)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
failed=0
PYTEST=(-v -rfE --tb=short -p no:cacheprovider)

# ----------------------------------------------------------------------------------------------- helpers
summary=""
deadline=0
left() { echo $((deadline - SECONDS)); }
clamp() { local v=$1 lo=$2 hi=$3; [ "$v" -lt "$lo" ] && v=$lo; [ "$v" -gt "$hi" ] && v=$hi; echo "$v"; }
# One row of the part's summary, written at once (a call killed later keeps it); also on stdout.
row() {
  printf '| %s | %s | %s | %s |\n' "$1" "$2" "$3" "${4//|//}" >> "$summary"
  echo "== $1: $2 (${3} s) $4"
  case "$2" in ok*|skipped*) ;; *) failed=1 ;; esac
}
status_of() {  # exit status -> summary status
  case "$1" in 0) echo ok ;; 124|137) echo "cut short (time box)" ;; 86) echo "FAILED (sanitizer errors)" ;;
               *) echo "FAILED (exit $1)" ;; esac
}
# timed LIMIT_S LOG CMD...: CMD under `timeout -s INT` (pytest writes its summary on SIGINT; KILL 30 s later),
# output appended to LOG; sets $rc and $secs.
timed() {
  local limit=$1 log=$2; shift 2
  local t0=$SECONDS
  timeout -s INT -k 30 "$limit" "$@" >> "$log" 2>&1
  rc=$?
  secs=$((SECONDS - t0))
}
have_xdist() { "$py" -c "import xdist" 2>/dev/null; }
# Counts and failed test ids from a junit file (or the log's last line when pytest was killed before writing it).
tests_detail() {
  "$py" - "$1" "$2" <<'EOF'
import os, sys
import xml.etree.ElementTree as ET
junit, log = sys.argv[1:]
if os.path.exists(junit) and os.path.getsize(junit):
    n = {"passed": 0, "failed": 0, "error": 0, "skipped": 0}
    bad = []
    for case in ET.parse(junit).iter("testcase"):
        kind = next((k for k in ("failure", "error", "skipped") if case.find(k) is not None), "passed")
        n["failed" if kind == "failure" else kind] += 1
        if kind in ("failure", "error"):
            bad.append(f"{case.get('classname')}::{case.get('name')}")
    text = ", ".join(f"{v} {k}" for k, v in n.items() if v)
    print(text + ("; failed: " + " ".join(bad[:40]) + (" ..." if len(bad) > 40 else "") if bad else ""))
else:
    text = open(log, errors="replace").read() if os.path.exists(log) else ""
    lines = [line for line in text.splitlines() if line.startswith("=")]
    print("no junit file; " + (lines[-1].strip("= ") if lines else "no pytest summary"))
EOF
}

# The extension with CUDA kernels, in the tree: "cuda", "cpu" or "none" (+ why) on stdout.
ext_status() {
  "$py" - 2>/dev/null <<'EOF' || echo "none (import failed)"
import torch
from s2s_fused.backend import available_backends, build_info, extension_error
info = build_info()
if not info:
    print("none", extension_error()[:200])
elif not (info.get("with_cuda") and "cuda" in available_backends()):
    print("cpu", f"with_cuda={info.get('with_cuda')}, backends {available_backends()}")
else:
    import s2s_fused
    x, h = torch.randn(3, 5, device="cuda"), torch.randn(3, 4, device="cuda")
    s2s_fused.gru_cell(x, h, torch.randn(12, 5, device="cuda"), torch.randn(12, 4, device="cuda"), backend="cuda")
    torch.cuda.synchronize()  # a kernel of ours ran on this GPU (its arch is in the build)
    print("cuda", f"archs {info.get('cuda_arch_list')}, {torch.cuda.get_device_name()}")
EOF
}

# .prebuilt/ when its build_info.json matches this machine (python, torch, CUDA, a cubin for this GPU) and the
# file is intact; prints why not otherwise.
prebuilt_matches() {
  [ -f .prebuilt/build_info.json ] || { echo "no .prebuilt/build_info.json"; return 1; }
  "$py" - <<'EOF'
import hashlib, json, os, platform, subprocess, sys
import torch
info = json.load(open(".prebuilt/build_info.json"))
so = os.path.join(".prebuilt", info.get("so", ""))
why = []
if info.get("python", "").split(".")[:2] != platform.python_version().split(".")[:2]:
    why.append(f"python {info.get('python')} != {platform.python_version()}")
if info.get("torch") != torch.__version__:
    why.append(f"torch {info.get('torch')} != {torch.__version__}")
if info.get("cuda") != torch.version.cuda:
    why.append(f"CUDA {info.get('cuda')} != {torch.version.cuda}")
if torch.cuda.is_available():
    cc = "sm_%d%d" % torch.cuda.get_device_capability()
    if cc not in info.get("cubin_archs", []):
        why.append(f"no cubin for {cc} (has {info.get('cubin_archs')})")
if not os.path.isfile(so) or hashlib.sha256(open(so, "rb").read()).hexdigest() != info.get("sha256"):
    why.append(f"{so} missing or not the file build_info.json describes (sha256)")
if not why:
    try:
        git = subprocess.run(["git", "diff", "--quiet", info.get("git_commit", "HEAD"), "--", "csrc", "setup.py"],
                             capture_output=True)
    except OSError:  # no git on the machine
        git = subprocess.CompletedProcess([], 128)
    if git.returncode == 1:
        why.append(f"csrc/ or setup.py changed since its commit {info.get('git_commit', '')[:10]}")
    elif git.returncode != 0:
        print(f"note: sources not compared with its commit {info.get('git_commit', '?')[:10]} (no git history)")
    if info.get("git_dirty"):
        print("note: built from a tree with uncommitted changes")
print("; ".join(why) if why else f"matches: {info.get('so')} from {info.get('git_commit', '?')[:10]}")
sys.exit(1 if why else 0)
EOF
}

# Makes sure the tree holds an extension with working CUDA kernels: already there (a warm machine), .prebuilt/,
# or a build (its whole log in build-$1.log). Stops the call (exit 3) when none can be had.
extension() {
  local p=$1 t0=$SECONDS status
  status=$(ext_status)
  if [ "${status%% *}" = "cuda" ]; then row extension "ok (already built here)" $((SECONDS - t0)) "$status"; return; fi
  local why
  if why=$(prebuilt_matches 2>&1); then
    [ -f "s2s_fused/$so" ] && mv "s2s_fused/$so" "$work/$so"  # what was there, back if the prebuilt one fails
    cp ".prebuilt/$so" "s2s_fused/$so"
    status=$(ext_status)
    if [ "${status%% *}" = "cuda" ]; then row extension "ok (.prebuilt)" $((SECONDS - t0)) "$why; $status"; return; fi
    why="the prebuilt extension does not run here: $status"
    rm -f "s2s_fused/$so"
    [ -f "$work/$so" ] && mv "$work/$so" "s2s_fused/$so"
    status=$(ext_status)
  fi
  echo "== prebuilt not used: $why"
  if [ "$dry" = 1 ]; then
    if [ "${status%% *}" = "none" ]; then
      row extension "FAILED (dry run: no build)" $((SECONDS - t0)) "the extension must already import: $status"
      exit 3
    fi
    row extension "ok (dry run: no build, no CUDA)" $((SECONDS - t0)) "prebuilt: $why; $status"
    return
  fi
  local log="$out/build-$p.log"
  {
    echo "prebuilt not used: $why"
    if ! command -v ninja >/dev/null; then  # the venv's ninja (pip package) may sit beside python, off PATH
      PATH="$(dirname "$("$py" -c 'import sys; print(sys.executable)')"):$PATH"
    fi
    command -v ninja || echo "ninja not found on PATH: torch would compile one file at a time"
  } > "$log" 2>&1
  if ! command -v ninja >/dev/null; then
    row extension "FAILED (no ninja)" $((SECONDS - t0)) "see build-$p.log"
    exit 3
  fi
  local arch
  arch=$("$py" -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability())' 2>>"$log")
  timed "$(clamp $(($(left) - 120)) 120 420)" "$log" env S2S_FUSED_FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST="${arch:-9.0}" \
    "$py" setup.py build_ext --inplace
  local build_rc=$rc build_s=$secs
  status=$(ext_status)
  echo "after the build: $status" >> "$log"
  if [ "$build_rc" != 0 ] || [ "${status%% *}" != "cuda" ]; then
    row extension "$(status_of "$build_rc"), no CUDA backend" $((SECONDS - t0)) \
      "build $build_s s; $status; see build-$p.log"
    exit 3
  fi
  row extension "ok (built)" $((SECONDS - t0)) "build $build_s s (sm_$arch); $status"
}

environment() {
  local p=$1 t0=$SECONDS
  local f="$out/env-$p.txt"
  {
    date -u +"%Y-%m-%d %H:%M:%S UTC"
    echo "== nvidia-smi"; nvidia-smi 2>&1 || echo "(no nvidia-smi)"
    local q=name,driver_version,memory.total,clocks.sm,clocks.max.sm,power.draw,power.limit,temperature.gpu
    nvidia-smi --format=csv --query-gpu=$q 2>&1 || true
    echo "== versions"
    "$py" -c 'import sys, torch; print("python", sys.version.split()[0])
print("torch", torch.__version__, "CUDA", torch.version.cuda, "cuDNN", torch.backends.cudnn.version())' 2>&1
    "$py" -c 'import triton; print("triton", triton.__version__)' 2>&1
    "$py" -m pytest --version 2>&1
    have_xdist && echo "pytest-xdist: yes" || echo "pytest-xdist: no"
    command -v nvcc >/dev/null && nvcc --version | tail -n 2
    command -v compute-sanitizer >/dev/null && compute-sanitizer --version | head -n 2 || echo "no compute-sanitizer"
    command -v ninja >/dev/null && echo "ninja $(ninja --version)" || echo "no ninja on PATH"
    echo "cores $(nproc); $(free -g 2>/dev/null | sed -n 2p)"
    echo "== .prebuilt/build_info.json"; cat .prebuilt/build_info.json 2>/dev/null || echo "(none)"
    git log -1 --format='tree at %H %s' 2>/dev/null || echo "(no git history)"
  } > "$f" 2>&1
  local gpu
  gpu=$(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null | head -n1)
  row environment ok $((SECONDS - t0)) "$gpu $(grep -m1 '^torch' "$f")"
}

start_part() {
  local p=$1 budget=$2
  summary="$out/summary-$p.md"
  deadline=$((SECONDS + budget))
  local what="extension, other tests, benchmarks"
  [ "$p" = 1 ] && what="extension, gpu-marked tests, compute-sanitizer"
  {
    echo "# GPU round, part $p: $what$([ "$dry" = 1 ] && echo " (DRY RUN on $(hostname))")"
    echo
    echo "Started $(date -u +"%Y-%m-%d %H:%M:%S UTC"), time box ${budget} s; a step missing below did not finish."
    echo
    echo "| step | status | s | detail |"
    echo "|---|---|---|---|"
  } > "$summary"
}

# The device tool brings back at most 8 files a call, named in letters, digits, '.', '_' and '-', at most 2
# folders deep: this part writes no folders, so count and names.
check_outputs() {
  local p=$1 n bad
  n=$(find "$out" -maxdepth 1 -type f -name "*-$p.*" | wc -l)
  bad=$(find "$out" -maxdepth 1 -type f -name "*-$p.*" -printf '%f\n' | grep -v '^[A-Za-z0-9._-]*$' || true)
  if [ "$n" -le 8 ] && [ -z "$bad" ] && [ -z "$(find "$out" -mindepth 1 -type d)" ]; then
    row outputs ok 0 "$n files (limit 8): $(cd "$out" && ls -- *-"$p".* | tr '\n' ' ')"
  else
    row outputs "FAILED (device tool limits)" 0 \
      "$n files, bad names: ${bad:-none}, folders: $(find "$out" -mindepth 1 -type d | wc -l)"
  fi
}

# ------------------------------------------------------------------------------------------------ part 1
part1() {
  start_part 1 "${GPU_CHECK_BUDGET_1_S:-300}"
  environment 1
  extension 1
  local sanitizer_s=150  # kept for memcheck + racecheck
  local log="$out/tests-gpu-1.log" junit="$out/junit-gpu-1.xml"
  timed "$(clamp $(($(left) - sanitizer_s)) 60 300)" "$log" "$py" -m pytest -m gpu "${PYTEST[@]}" \
    $(have_xdist && echo "-n 4") --junitxml="$junit" tests
  row "gpu tests" "$(status_of $rc)" "$secs" "$(tests_detail "$junit" "$log")"

  log="$out/sanitizer-1.log"
  if [ "$dry" = 1 ]; then
    echo "== dry run: benchmarks/gpu_sanitize.py on the CPU kernels, without compute-sanitizer" >> "$log"
    timed "$(clamp $(($(left) - 10)) 30 120)" "$log" "$py" benchmarks/gpu_sanitize.py --device cpu
    row "sanitizer program (CPU, no sanitizer)" "$(status_of $rc)" "$secs" "$(tail -n 1 "$log")"
  elif ! command -v compute-sanitizer >/dev/null; then
    row sanitizer "FAILED (no compute-sanitizer)" 0 ""
  else
    # memcheck: each tensor its own cudaMalloc (no caching allocator), so a read just past a tensor is outside any
    # allocation.
    echo "== compute-sanitizer --tool memcheck (PYTORCH_NO_CUDA_MEMORY_CACHING=1)" >> "$log"
    timed "$(clamp $(($(left) * 7 / 15)) 30 150)" "$log" env PYTORCH_NO_CUDA_MEMORY_CACHING=1 \
      compute-sanitizer --tool memcheck --error-exitcode 86 "$py" benchmarks/gpu_sanitize.py
    row memcheck "$(status_of $rc)" "$secs" "$(grep -m1 -E 'ERROR SUMMARY|^done' "$log" | tail -n 1)"
    echo "== compute-sanitizer --tool racecheck" >> "$log"
    timed "$(clamp $(($(left) - 5)) 30 200)" "$log" \
      compute-sanitizer --tool racecheck --error-exitcode 86 "$py" benchmarks/gpu_sanitize.py
    row racecheck "$(status_of $rc)" "$secs" "$(grep -E 'RACECHECK SUMMARY|ERROR SUMMARY|^done' "$log" | tail -n 1)"
  fi
  check_outputs 1
}

# ------------------------------------------------------------------------------------------------ part 2
part2() {
  start_part 2 "${GPU_CHECK_BUDGET_2_S:-420}"
  environment 2
  extension 2
  local bench_min=270  # the benchmarks' share; the other tests get what is left, at most 120 s
  local log="$out/tests-rest-2.log" junit="$out/junit-rest-2.xml"
  if [ "$dry" = 1 ]; then  # CI runs the suite itself: here, only the selection
    timed 120 "$log" "$py" -m pytest -m "not gpu" -q --collect-only -p no:cacheprovider tests
    row "other tests (dry run: collected only)" "$(status_of $rc)" "$secs" "$(tail -n 1 "$log")"
  else
    timed "$(clamp $(($(left) - bench_min)) 60 120)" "$log" "$py" -m pytest -m "not gpu" "${PYTEST[@]}" \
      $(have_xdist && echo "-n 8") --junitxml="$junit" tests
    row "other tests" "$(status_of $rc)" "$secs" "$(tests_detail "$junit" "$log")"
  fi

  log="$out/bench-2.log"
  local args=(--device cuda)
  [ "$dry" = 1 ] && args=(--device cpu --smoke --no-plot --only ceilings beam)
  local budget
  budget=$(clamp $(($(left) - 25)) 40 600)  # 25 s kept for packing
  timed $((budget + 30)) "$log" "$py" benchmarks/run_all.py "${args[@]}" --out "$work/results" --budget-s "$budget"
  local bench_rc=$rc bench_s=$secs
  if compgen -G "$work/results/*.md" > /dev/null; then
    for md in "$work"/results/*.md; do cat "$md"; echo; done > "$out/tables-2.md"
    tar -czf "$out/results-2.tar.gz" -C "$work/results" .
  fi
  row benchmarks "$(status_of $bench_rc)" "$bench_s" \
    "$(grep -E '^== bench_.*: exit' "$log" | sed 's/^== //' | tr '\n' ';')"
  check_outputs 2
}

case "$part" in
  1) part1 ;;
  2) part2 ;;
  all) part1; part2 ;;
esac
if [ "$failed" = 0 ]; then
  echo "== done: every step passed ($out)"
else
  echo "== done: a step failed or was cut short ($out)"
fi
exit "$failed"
