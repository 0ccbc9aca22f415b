#!/usr/bin/env bash
# The main job: sets up .venv (scripts/setup_env.sh), then runs `llmint8 demo` with any arguments.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/setup_env.sh"
exec "$VENV/bin/llmint8" demo "$@"
