#!/usr/bin/env bash
# Runs every test: the C++ core tests (Catch2 via ctest), a compile of the CUDA sources when nvcc
# is present, and the pytest suite. Sets up .venv first (scripts/setup_env.sh).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/setup_env.sh"
BUILD="$ROOT/build/cmake"

cuda_args=()
if command -v nvcc >/dev/null 2>&1 || [ -x /usr/local/cuda/bin/nvcc ]; then
  cuda_args+=("-DCMAKE_CUDA_COMPILER=$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)")
  cuda_args+=("-DCUBLAS_INCLUDE_DIR=$("$ROOT/scripts/cublas_headers.sh")")
fi
"$VENV/bin/cmake" -S "$ROOT" -B "$BUILD" -DPython3_EXECUTABLE="$PY" "${cuda_args[@]}" >/dev/null
"$VENV/bin/cmake" --build "$BUILD" -j "$(nproc)"
(cd "$BUILD" && "$VENV/bin/ctest" --output-on-failure)

cd "$ROOT" && "$PY" -m pytest -q "$@"
