"""`python -m s1fast.rl` and `torchrun -m s1fast.rl` as users run them, on CPU with gloo, from a tiny random
Hugging Face folder with the real tokenizer: two ranks reproduce one rank; a SIGKILLed run resumed from its
checkpoint reproduces the uninterrupted one, and so does a 2-rank run of which one rank alone was SIGTERMed; a
raising verifier is reported with its prompt and counted; a prompt longer than the budget is refused before any
compute; an all-zero-reward run says so."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from rl_verifiers import fails
from signal_ranks import expect_both_stopped, signal_rank_mid_run, torchrun

from s1fast.metrics import read_metrics
from s1fast.rl.loop import TIMING

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.path.join(ROOT, "tests")]), OMP_NUM_THREADS="1",
           TOKENIZERS_PARALLELISM="false")
ENV.pop("TRITON_INTERPRET", None)  # the CPU path of the kernels (the interpreter is tested in test_kernel_logprob)
# 2 prompts x 2 samples, 2 iterations, 2 updates per batch (so ratios move and clipping acts), KL to the start
BASE = ["--iterations", "2", "--prompts-per-iter", "2", "--group-size", "2", "--max-total-tokens", "200",
        "--max-thinking-tokens", "6", "--max-answer-tokens", "3", "--dtype", "fp32", "--progress", "false",
        "--rewards", "rl_verifiers:text_hash=1,format=0.1,rl_verifiers:fails_on_some=1", "--lr", "1e-2",
        "--updates-per-batch", "2", "--kl-coef", "0.05", "--save-every", "1", "--data", "toy:sum:300",
        "--plot", "false"]


pytestmark = pytest.mark.slow  # whole runs in subprocesses (about 2 minutes on 2 idle cores)


@pytest.fixture(scope="module")
def tiny_hf(tmp_path_factory):
    import torch
    from s1fast.generate import BUNDLED_TOKENIZER
    from s1fast.model import CONFIGS, build_model
    out = str(tmp_path_factory.mktemp("rl") / "tiny-hf")
    cfg = CONFIGS["tiny-qwen2"].with_(hidden_size=32, intermediate_size=64, num_layers=1, num_heads=4,
                                      num_kv_heads=2, head_dim=8)
    torch.manual_seed(0)
    build_model(cfg).save_pretrained(out, tokenizer_dir=BUNDLED_TOKENIZER)
    return out


def run(args, nproc=1, check=True):
    pre = [sys.executable, "-m", "s1fast.rl"] if nproc == 1 else \
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc), "-m", "s1fast.rl"]
    p = subprocess.run(pre + args, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=900)
    if check:
        assert p.returncode == 0, f"{args} failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-5000:]}"
    return p


def rows(out):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in read_metrics(os.path.join(out, "metrics.jsonl"))]


def assert_same_rows(a, b, rel=1e-4):
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            if isinstance(x[k], float):
                assert abs(x[k] - y[k]) <= rel * max(1.0, abs(x[k])), (x["step"], k, x[k], y[k])
            else:
                assert x[k] == y[k], (x["step"], k, x[k], y[k])


@pytest.fixture(scope="module")
def single(tiny_hf, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("rl") / "one")
    p = run(BASE + ["--model", tiny_hf, "--output-dir", out])
    return out, p


def test_one_rank_run_logs_every_metric_and_reports_the_raising_verifier(single):
    out, p = single
    r = rows(out)
    assert len(r) == 2
    for k in ("reward_mean", "reward_std", "reward/rl_verifiers:text_hash", "reward/format", "completion_tokens",
              "all_equal_groups", "kl", "clip_fraction", "entropy", "loss", "grad_norm", "verifier_errors"):
        assert k in r[0], k
    full = read_metrics(os.path.join(out, "metrics.jsonl"))
    assert all(x["gen_time"] > 0 and x["train_time"] > 0 for x in full)
    assert any(x["clip_fraction"] > 0 for x in r), "the second update of a batch moves the ratio past the clip"
    assert any(x["kl"] > 0 for x in r)
    # the raising verifier: reported with its prompt, counted, its groups dropped from the update
    from s1fast.rl.config import parse_config
    from s1fast.rl.loop import iteration_prompts, load_rows
    prompts, _ = load_rows(parse_config(BASE))
    drawn = [(it + 1, prompts[i]["question"]) for it in range(2) for i in iteration_prompts(len(prompts), 2, 0, it)]
    failing = {d for d in drawn if fails(d[1])}
    assert 0 < len(failing) < len(drawn), "test set-up: the draw must hold prompts the verifier fails on and others"
    errs = [json.loads(line) for line in open(os.path.join(out, "verifier_errors.jsonl"))]
    assert {(e["iteration"], e["question"]) for e in errs} == failing
    assert all("KeyError" in e["error"] for e in errs) and len(errs) == 2 * len(failing)  # each of G samples
    assert sum(x["verifier_errors"] for x in r) == len(errs)
    assert sum(x["dropped_groups"] for x in r) == len({(e["iteration"], e["question"]) for e in errs})
    assert "verifier error" in p.stdout + p.stderr and repr(errs[0]["question"]) in p.stdout + p.stderr
    assert os.path.exists(os.path.join(out, "final", "model.safetensors"))


def test_two_ranks_equal_one_rank(single, tiny_hf, tmp_path):
    out = str(tmp_path / "two")
    p = run(BASE + ["--model", tiny_hf, "--output-dir", out], nproc=2)
    assert "2 rank(s)" in p.stdout + p.stderr
    assert_same_rows(rows(single[0]), rows(out))


def test_sigkill_then_resume_gives_the_same_iterations(single, tiny_hf, tmp_path):
    out = str(tmp_path / "killed")
    proc = subprocess.Popen([sys.executable, "-m", "s1fast.rl", *BASE, "--model", tiny_hf, "--output-dir", out],
                            cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    latest = os.path.join(out, "checkpoints", "latest")
    t0 = time.time()
    while not (os.path.exists(latest) and open(latest).read().strip() == "step_00000001"):
        assert proc.poll() is None, "the run ended before its first checkpoint"
        assert time.time() - t0 < 600
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not os.path.exists(os.path.join(out, "final")), "killed before the end"
    p = run(BASE + ["--model", tiny_hf, "--output-dir", out])
    assert "resumed from" in p.stdout + p.stderr
    assert_same_rows(rows(single[0]), rows(out), rel=1e-6)


def test_prompt_longer_than_the_budget_is_refused_before_compute(tiny_hf, tmp_path):
    data = tmp_path / "long.jsonl"
    data.write_text(json.dumps({"question": "short", "answer": "1"}) + "\n"
                    + json.dumps({"question": "word " * 300, "answer": "2"}) + "\n")
    out = str(tmp_path / "long")
    t0 = time.time()
    p = run(["--model", tiny_hf, "--data", str(data), "--rewards", "math=1", "--max-total-tokens", "200",
             "--output-dir", out, "--progress", "false"], check=False)
    assert p.returncode == 2
    err = p.stderr.strip().splitlines()[-1]
    assert err.startswith("error: ") and "row 1" in err and "--max-total-tokens 200" in err, err
    assert not os.path.exists(os.path.join(out, "metrics.jsonl")), "refused before any compute"


def test_all_zero_reward_run_says_so(tiny_hf, tmp_path):
    out = str(tmp_path / "zero")
    p = run(["--model", tiny_hf, "--output-dir", out, "--iterations", "1", "--prompts-per-iter", "2",
             "--group-size", "2", "--max-total-tokens", "200", "--max-thinking-tokens", "4", "--max-answer-tokens",
             "2", "--dtype", "fp32", "--progress", "false", "--rewards", "rl_verifiers:zero=1", "--export", "false",
             "--plot", "false"])
    (r,) = rows(out)
    assert r["all_zero_reward"] is True and r["no_signal"] is True and r["all_equal_groups"] == 1.0
    assert r["grad_norm"] == 0.0
    assert "every reward is 0: no learning signal" in p.stdout + p.stderr


def test_a_folder_holds_one_rl_run_and_a_resume_past_iterations_is_refused(tiny_hf, tmp_path):
    """--resume never in a folder holding a run silently overwrote its checkpoints and appended to its metrics;
    --iterations below the resumed iteration exported the later model as if it had run fewer iterations."""
    out = str(tmp_path / "one")
    small = ["--model", tiny_hf, "--output-dir", out, "--prompts-per-iter", "2", "--group-size", "2",
             "--max-total-tokens", "200", "--max-thinking-tokens", "4", "--max-answer-tokens", "2", "--dtype", "fp32",
             "--progress", "false", "--rewards", "rl_verifiers:zero=1", "--export", "false", "--plot", "false"]
    run(small + ["--iterations", "2"])
    p = run(small + ["--iterations", "1"], check=False)
    assert p.returncode == 2 and "--iterations 1 is below the iteration this run resumes from (2" in p.stderr, \
        p.stderr[-2000:]
    p = run(small + ["--iterations", "1", "--resume", "never"], check=False)
    assert p.returncode == 2 and "holds another run (checkpoints up to step 2)" in p.stderr, p.stderr[-2000:]
    assert sorted(os.listdir(os.path.join(out, "checkpoints"))) == ["latest", "step_00000002"]
    run(small + ["--iterations", "1", "--resume", "never", "--replace", "true"])
    assert sorted(os.listdir(os.path.join(out, "checkpoints"))) == ["latest", "step_00000001"]
    assert [r["step"] for r in rows(out)] == [1] and len(open(os.path.join(out, "metrics.jsonl")).readlines()) == 1
    assert not os.path.exists(os.path.join(out, "run.lock"))
    # a resume with another seed: the setting is named with both values, and the advice (--replace) is one that works
    p = run(small + ["--iterations", "2", "--seed", "1"], check=False)
    assert p.returncode == 2 and "saved by another RL run (seed: checkpoint 0, now 1)" in p.stderr \
        and "--replace true" in p.stderr, p.stderr[-2000:]


def test_sigterm_saves_and_exits_128_plus_the_signal(tiny_hf, tmp_path):
    """A SIGTERMed RL run saved and exited 0, so a scheduler took the unfinished run (no final/) for done."""
    out = str(tmp_path / "term")
    args = [*BASE, "--iterations", "40", "--model", tiny_hf, "--output-dir", out]
    proc = subprocess.Popen([sys.executable, "-m", "s1fast.rl", *args], cwd=ROOT, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    metrics = os.path.join(out, "metrics.jsonl")
    t0 = time.time()
    while not (os.path.exists(metrics) and os.path.getsize(metrics) > 0):
        assert proc.poll() is None and time.time() - t0 < 300
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    text, _ = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signal.SIGTERM, text[-3000:]
    assert "signal 15: saved" in text and not os.path.exists(os.path.join(out, "final"))
    step = int(open(os.path.join(out, "checkpoints", "latest")).read().strip().split("_")[1])
    assert 1 <= step < 40 and len(rows(out)) == step


def test_sigterm_to_one_rank_stops_both_after_the_same_save_and_the_resume_equals_the_uninterrupted_run(
        single, tiny_hf, tmp_path):
    """A signal that reached one rank only (a scheduler signalling one process) stopped that rank alone: the
    others went on into the next iteration's collectives while it saved, and the run hung or tore its checkpoint.
    Every rank now stops after the same iteration and save, and exits 128 + 15."""
    from s1fast import checkpoint
    out = str(tmp_path / "one-rank-term")
    proc = torchrun("s1fast.rl", [*BASE, "--iterations", "40", "--model", tiny_hf, "--output-dir", out], 2, ROOT, ENV)
    signal_rank_mid_run(proc, 1, signal.SIGTERM)
    text = expect_both_stopped(proc, signal.SIGTERM)
    ck = os.path.join(out, "checkpoints")
    latest = checkpoint.latest(ck)
    step = checkpoint.step_of(latest)
    assert 1 <= step <= 2 and checkpoint.is_complete(latest), (latest, text[-3000:])  # signalled in iteration 1
    assert not [d for d in os.listdir(ck) if ".tmp" in d] and len(rows(out)) == step
    assert f"saved {latest} at iteration {step}" in text and not os.path.exists(os.path.join(out, "final"))
    p = run(BASE + ["--model", tiny_hf, "--output-dir", out], nproc=2)
    assert f"resumed from {latest}" in p.stdout + p.stderr
    assert_same_rows(rows(single[0]), rows(out))
