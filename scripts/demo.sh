#!/usr/bin/env bash
# The embedded default, end to end on a CPU box (installs what it needs into ./.venv first):
#  1. train the tiny Qwen2-architecture model on the bundled real reasoning traces with 2 FSDP2 ranks
#     (`--preset tiny`: the real tokenizer, the s1 text format and loss mask, balanced packing);
#  2. answer one question from the exported model with s1's budget forcing (one "Wait", 48 thinking tokens).
# Outputs in runs/tiny/: metrics.jsonl, loss_curve.png, checkpoints/, final/ (Hugging Face format),
# generations.jsonl. Extra arguments go to the trainer (e.g. --max-steps 5).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
# shellcheck disable=SC1091
. .venv/bin/activate
torchrun --standalone --nproc_per_node 2 -m s1fast.train --preset tiny --output-dir runs/tiny "$@"
python -m s1fast.generate --model runs/tiny/final --num-wait 1 --max-thinking-tokens 48 --max-answer-tokens 16 \
  --prompt "What is the sum of the first 10 positive integers?" --out runs/tiny/generations.jsonl
echo "[s1fast] demo done: runs/tiny/loss_curve.png, runs/tiny/final/, runs/tiny/generations.jsonl"
