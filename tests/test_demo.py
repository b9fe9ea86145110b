"""The demo's phenomenon at a reduced size: the tiny preset, trained on the toy task with 2 FSDP2 ranks on the CPU
for fewer steps, answers held-out problems more accurately the more it may think (scripts/demo.sh runs the full
size; bench/RESULTS.md has its figures)."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
ENV.pop("TRITON_INTERPRET", None)   # the trainer's CPU path: PyTorch kernels
STEPS_DATA = "toy:chain:1600"       # 200 steps of 8 problems


@pytest.mark.slow
def test_tiny_learns_the_toy_task_and_accuracy_rises_with_budget(tmp_path):
    out = str(tmp_path / "tiny")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
           "s1fast.train", "--preset", "tiny", "--data", STEPS_DATA, "--output-dir", out, "--progress", "false",
           "--plot", "false", "--save-every", "0"]
    p = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=1200)
    assert p.returncode == 0, p.stderr[-4000:]

    from s1fast.eval import evaluate, read_problems
    from s1fast.generate import GenerationConfig, load
    model, tok = load(os.path.join(out, "final"), device="cpu")
    problems = read_problems("toy:chain:30")
    res = evaluate(model, tok, problems, budgets=[8, 96], num_waits=[0], protocol="s1",
                   config=GenerationConfig(max_answer_tokens=6, batch_size=30))
    acc = {r["budget"]: r["accuracy"] for r in res["rows"]}
    # budget 8 cuts every trace of 2 or more additions; a cut chain's last value is never the answer
    assert acc[8] <= 0.25, acc
    assert acc[96] >= acc[8] + 0.3, acc
