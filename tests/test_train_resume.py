"""A run folder holds one trajectory (issue 14): a resume applies changed hyperparameters with a notice and
refuses a changed plan; a new run in a used folder is refused unless --replace; the NaN stop's advice works
when followed. The real CLI, in subprocesses, on a small configuration."""
import json
import math
import os
import re

from test_train import ENV, ROOT, run  # noqa: F401 -- the same runner as the trainer's tests

FAST = ["--preset", "tiny", "--max-tokens", "96", "--global-batch", "2", "--progress", "false", "--export", "false",
        "--plot", "false"]


def rows(out):
    from s1fast.metrics import read_metrics
    return {r["step"]: r for r in read_metrics(os.path.join(out, "metrics.jsonl"))}


def test_resume_applies_a_changed_lr_refuses_a_changed_plan_and_a_new_run_needs_replace(tmp_path):
    out = str(tmp_path / "run")
    first = run(FAST + ["--max-steps", "2", "--save-every", "1", "--lr", "2e-3", "--output-dir", out])
    run_id = re.search(r"\(run (\w+)\)", first.stdout).group(1)
    # a resume past --max-steps is refused: it saved the step-2 state as step_00000001 and pointed latest at it
    p = run(FAST + ["--max-steps", "1", "--output-dir", out], check=False)
    assert p.returncode == 2 and "--max-steps 1 is below the step this run resumes from (2" in p.stderr, \
        p.stderr[-2000:]
    assert open(os.path.join(out, "checkpoints", "latest")).read() == "step_00000002"
    # bug 3: --resume never in a folder holding a run is refused before any compute
    p = run(FAST + ["--max-steps", "1", "--resume", "never", "--output-dir", out], check=False)
    assert p.returncode == 2 and "holds another run (checkpoints up to step 2)" in p.stderr \
        and "--replace true" in p.stderr, p.stderr[-2000:]
    # bug 4: a field that changes which examples make up a step is refused, named with both values
    p = run(FAST + ["--max-steps", "3", "--global-batch", "4", "--output-dir", out], check=False)
    assert p.returncode == 2 and "belongs to another trajectory (global_batch: checkpoint 2, now 4)" in p.stderr, \
        p.stderr[-2000:]
    # the optimizer's decay groups are the checkpoint's: another --decay-norms is refused, naming the flag
    p = run(FAST + ["--max-steps", "3", "--decay-norms", "true", "--output-dir", out], check=False)
    assert p.returncode == 2 and "was trained with --decay-norms false" in p.stderr \
        and "pass --decay-norms false to resume it" in p.stderr, p.stderr[-2000:]
    # bug 4: a changed --lr is applied from the resumed step, with a notice (it was silently overridden)
    p = run(FAST + ["--max-steps", "3", "--lr", "5e-4", "--output-dir", out])
    assert "notice: changed on resume, applied from step 3: --lr 0.002 -> 0.0005" in p.stdout, p.stdout[-2000:]
    assert f"(run {run_id})" in p.stdout  # the same trajectory continues
    r = rows(out)
    # in warmup the schedule's factor doubles from step 2 to step 3; the rate scales with the new --lr
    assert math.isclose(r[3]["lr"], 2 * r[2]["lr"] * (5e-4 / 2e-3), rel_tol=1e-12), (r[2]["lr"], r[3]["lr"])
    # --replace: the old run goes first (its checkpoints, metrics), then a new trajectory starts
    p = run(FAST + ["--max-steps", "1", "--resume", "never", "--replace", "true", "--output-dir", out])
    assert f"(run {run_id})" not in p.stdout
    assert sorted(os.listdir(os.path.join(out, "checkpoints"))) == ["latest", "step_00000001"]
    assert list(rows(out)) == [1] and not os.path.exists(os.path.join(out, "run.lock"))


def test_nan_stop_advice_works_when_followed(tmp_path):
    out = str(tmp_path / "nan")
    p = run(FAST + ["--lr", "1e8", "--max-steps", "6", "--save-every", "1", "--output-dir", out], check=False)
    assert p.returncode == 2 and "training stopped" in p.stderr, p.stderr[-2000:]
    advice = re.search(r"Run again with a lower --lr and --resume (\S+): the new rate applies from step (\d+)",
                       p.stderr)
    assert advice, p.stderr[-2000:]
    # following it: the named checkpoint, a lower rate (applied, not overridden by the saved one), to the end
    p = run(FAST + ["--lr", "2e-3", "--max-steps", "4", "--save-every", "1", "--resume", advice.group(1),
                    "--output-dir", out])
    assert "--lr 100000000.0 -> 0.002" in p.stdout, p.stdout[-2000:]
    r = rows(out)
    # the steps from the named one on are the resumed run's (which step first overflows depends on the kernels'
    # arithmetic: the rows before it are the first run's)
    first_new = int(advice.group(2))
    assert sorted(r) == [1, 2, 3, 4] and all(math.isfinite(x["loss"]) and x["lr"] < 1
                                             for s, x in r.items() if s >= first_new), (first_new, r)
    for line in open(os.path.join(out, "metrics.jsonl")):
        json.loads(line, parse_constant=lambda c: (_ for _ in ()).throw(ValueError(f"{c} in metrics.jsonl")))
