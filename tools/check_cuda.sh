#!/usr/bin/env bash
# Compile-check the CUDA sources without a GPU or a CUDA build of torch:
#  - every csrc/cuda/*.cu with nvcc -c for sm_80 and sm_90 (they include no torch headers);
#  - every csrc/cuda/*_binding.cpp with g++ -fsyntax-only against torch's headers and the CUDA toolkit's.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v nvcc >/dev/null || { echo "nvcc not found" >&2; exit 1; }
cuda_inc=""
for d in "${CUDA_HOME:-}" /usr/local/cuda "$(dirname "$(dirname "$(readlink -f "$(command -v nvcc)")")")"; do
  if [ -n "$d" ] && [ -f "$d/include/cuda_runtime_api.h" ]; then cuda_inc="$d/include"; break; fi
done
[ -n "$cuda_inc" ] || { echo "CUDA headers (cuda_runtime_api.h) not found; set CUDA_HOME" >&2; exit 1; }
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
shopt -s nullglob
for cu in csrc/cuda/*.cu; do
  echo "nvcc -c $cu (sm_80, sm_90)"
  nvcc -c -std=c++17 -O2 -Icsrc --expt-relaxed-constexpr \
    -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90 "$cu" -o "$tmp/$(basename "$cu").o"
done
# torch's CPU wheel lacks the one generated c10/cuda header; a stand-in is enough for a syntax check.
mkdir -p "$tmp/stub/c10/cuda/impl"
printf '#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n' > "$tmp/stub/c10/cuda/impl/cuda_cmake_macros.h"
torch_inc=$(python -c "import torch.utils.cpp_extension as c; print(' '.join('-I' + p for p in c.include_paths()))")
for b in csrc/cuda/*_binding.cpp; do
  echo "g++ -fsyntax-only $b"
  g++ -fsyntax-only -std=c++20 -DS2S_WITH_CUDA -Wno-unknown-pragmas -Icsrc $torch_inc -I"$cuda_inc" -I"$tmp/stub" "$b"
done
