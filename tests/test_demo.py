"""The main job's claim, checked: the tiny-toy preset on 2 FSDP2 ranks learns the toy reasoning task, and held-out
accuracy rises with the thinking budget (s1's test-time scaling). This is scripts/demo.sh's training run at its
full size (550 steps, about 5 minutes on 2 cores: shorter runs had not learned the additions yet, bench/RESULTS.md)
with a smaller evaluation (2 budgets, 0 and 1 forced "Wait")."""
import json
import subprocess
import sys

from test_train import ENV, ROOT, run


def test_toy_demo_learns_and_accuracy_rises_with_the_budget(tmp_path):
    out = tmp_path / "toy"
    run(["--preset", "tiny-toy", "--output-dir", str(out), "--progress", "false", "--plot", "false",
         "--save-every", "0"], nproc=2, timeout=1500)
    cmd = [sys.executable, "-m", "s1fast.eval", "--model", str(out / "final"), "--data", "toy:chain:59", "--protocol",
           "s1", "--budgets", "8,96", "--num-wait", "0,1", "--max-answer-tokens", "8", "--batch-size", "59", "--out",
           str(out / "eval")]
    p = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    rows = {(r["num_wait"], r["budget"]): r for r in json.load(open(out / "eval" / "results.json"))["rows"]}
    short, full = rows[(0, 8)]["accuracy"], rows[(0, 96)]["accuracy"]
    assert full >= 0.7, f"held-out accuracy at 96 thinking tokens {full:.1%}: the model did not learn the task"
    assert short <= full / 2, (short, full)
    waited = rows[(1, 96)]
    # a forced "Wait" continues the thinking (its effect on accuracy is measured in bench/RESULTS.md)
    assert waited["mean_waits"] == 1.0 and waited["mean_thinking_tokens"] > rows[(0, 96)]["mean_thinking_tokens"]
