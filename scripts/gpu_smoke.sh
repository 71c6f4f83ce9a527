#!/usr/bin/env bash
# The whole GPU path end to end on one GPU in under 8 minutes (benchmarks/gpu_smoke.py): base model in its own
# dtype, vLLM (or batched transformers) Q&A from 50 chunks through the grounding check, QLoRA bf16 train steps,
# a retrieval index, eval of every arm (base/tuned x closed/RAG); figures in metrics/gpu_smoke.json.
#   bash scripts/gpu_smoke.sh [--model gemma3-270m] [--steps 60]
#   bash scripts/gpu_smoke.sh --dry-run --out /tmp/gpu_smoke.json    # CPU, tiny model: what CI runs
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ " $* " != *" --dry-run "* ]] && command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
fi
exec python -m benchmarks.gpu_smoke "$@"
