#!/usr/bin/env bash
# Prints a folder holding cublasLt.h: the CUDA toolkit's, else headers unpacked from PyPI's
# nvidia-cublas wheel into .cache/ (the toolkit here ships nvcc without cuBLAS).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
for dir in "${CUDA_HOME:-/usr/local/cuda}/include"; do
  [ -f "$dir/cublasLt.h" ] && { echo "$dir"; exit 0; }
done
CACHE="$ROOT/.cache/cublas"
HEADERS="$CACHE/nvidia/cu13/include"
if [ ! -f "$HEADERS/cublasLt.h" ]; then
  mkdir -p "$CACHE"
  python3 -m pip download -q --no-deps -d "$CACHE/wheel" "nvidia-cublas>=13,<14" >&2
  python3 -m zipfile -e "$CACHE"/wheel/nvidia_cublas-*.whl "$CACHE/unpacked" >&2
  mkdir -p "$HEADERS" && cp "$CACHE"/unpacked/nvidia/cu13/include/*.h "$HEADERS/"
  rm -rf "$CACHE/wheel" "$CACHE/unpacked"
fi
echo "$HEADERS"
