#!/usr/bin/env bash
# One whole GPU round on a bare GPU machine (ARCHITECTURE.md, "GPU runs"), in well under 10 minutes:
# build the extension with its CUDA kernels, run the whole test suite including the gpu-marked tests, run every
# benchmark on the GPU, and leave the results, logs and nvidia-smi output in OUTDIR.
#
#   bash benchmarks/gpu_check.sh [OUTDIR]      (default: benchmarks/results/<gpu>-<date>/)
#
# The device tool brings back at most 8 files, so the per-family CSV/Markdown/PNG files are packed into
# results.tar.gz and their tables concatenated into summary.md.
set -uo pipefail
cd "$(dirname "$0")/.."
py=python3
gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n1 | tr ' ' '-' | tr -cd 'A-Za-z0-9._-')
out=${1:-benchmarks/results/${gpu:-gpu}-$(date +%Y-%m-%d)}
mkdir -p "$out"
work=$(mktemp -d)
export MAX_JOBS=${MAX_JOBS:-$(nproc)} PYTHONUNBUFFERED=1
# The device tool kills a call at 600 s; stop every phase by this many seconds after the start so the logs and
# tables are written before that. Tests get what is left minus the benchmarks' share, the benchmarks the rest.
deadline=$((SECONDS + ${GPU_CHECK_BUDGET_S:-570}))

nvidia-smi > "$out/nvidia-smi.txt" 2>&1
{
  echo "== build"
  time $py -m pip install --no-build-isolation --no-deps -e . 2>&1 | tail -n 30
  $py -m s2s_fused info
} > "$out/build.log" 2>&1
if ! $py -c "import s2s_fused; assert 'cuda' in s2s_fused.available_backends()" 2>>"$out/build.log"; then
  echo "CUDA backend not available after the build: see build.log" | tee -a "$out/build.log"
fi

left=$((deadline - SECONDS)); test_s=$((left > 460 ? 330 : (left * 3) / 5))
echo "== tests (gpu-marked included), up to ${test_s} s"
timeout "$test_s" $py -m pytest -q -p no:cacheprovider tests > "$out/tests.log" 2>&1
echo "tests exit $?" >> "$out/tests.log"
tail -n 3 "$out/tests.log"

bench_s=$((deadline - SECONDS - 10)); bench_s=$((bench_s > 30 ? bench_s : 30))
echo "== benchmarks, up to ${bench_s} s (rnn_layer first)"
$py benchmarks/run_all.py --device cuda --out "$work/results" --budget-s "$bench_s" > "$work/bench.log" 2>&1
cat "$work"/results/*.md > "$out/summary.md" 2>/dev/null
cp "$work/bench.log" "$out/bench.log"
tar -czf "$out/results.tar.gz" -C "$work" results 2>/dev/null
ls -la "$out"
