#!/usr/bin/env bash
# The main job, end to end on a CPU box (installs what it needs into ./.venv first): s1 in miniature.
#  1. train a tiny Qwen2-architecture model (`--preset tiny-toy`: the real Qwen2.5 tokenizer and vocabulary,
#     the s1 text format and loss mask, balanced packing, 2 FSDP2 ranks) on the toy reasoning task shipped in
#     the repository (`toy:chain`, docs/toy.md: "Start at 4 and add 7, six times (mod 10)." with one line of
#     thinking per addition, so a harder problem needs a longer trace);
#  2. evaluate the exported model on held-out problems (never in training) at several thinking budgets and with
#     0, 1 and 2 forced "Wait"s (s1's budget forcing): table.md, scaling.png (accuracy against mean thinking
#     tokens, like the s1 paper's figure), problems.jsonl (every output);
#  3. print generations where a forced "Wait" continued the thinking and where a cap forced the answer.
# Outputs in runs/tiny-toy/ (the evaluation in runs/tiny-toy/eval/). Extra arguments go to the trainer.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
# shellcheck disable=SC1091
. .venv/bin/activate
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
torchrun --standalone --nproc_per_node 2 -m s1fast.train --preset tiny-toy --output-dir runs/tiny-toy "$@"
python -m s1fast.eval --model runs/tiny-toy/final --data toy:chain:59 --protocol s1 \
  --budgets 8,24,48,96 --num-wait 0,1,2 --max-answer-tokens 8 --batch-size 59 --out runs/tiny-toy/eval
python -m s1fast.eval show runs/tiny-toy/eval -n 1
echo "[s1fast] demo done: runs/tiny-toy/eval/table.md, runs/tiny-toy/eval/scaling.png, runs/tiny-toy/loss_curve.png, runs/tiny-toy/final/"
