#!/usr/bin/env bash
# Creates (once) the project's virtual environment in .venv and installs llmint8 into it.
# Sourced by scripts/test.sh and scripts/main.sh; safe to run again (it only adds what is missing).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${LLMINT8_VENV:-$ROOT/.venv}"
PY="$VENV/bin/python"

if [ ! -x "$PY" ]; then
  python3 -m venv "$VENV"
fi
# torch first: on this project's CPU machines 2.13.0 is a local CPU wheel; elsewhere pip picks
# the build that matches the platform.
"$PY" -c "import torch" 2>/dev/null || "$PY" -m pip install -q "torch==2.13.0"
"$PY" -m pip install -q "setuptools>=69" wheel "cmake>=3.28" ninja
# CUTLASS's headers for the fused sm90 GEMM (setup.py finds them). --no-deps: its dependencies
# (cuda-python, scipy, ...) serve CUTLASS's Python interface, which the build does not use.
"$PY" -m pip install -q --no-deps "nvidia-cutlass==4.2.0.0"
"$PY" -m pip install -q -e "$ROOT[test,hf,eval]" --no-build-isolation
