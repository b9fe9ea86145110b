"""The trainer as users run it: `python -m s1fast.train` and `torchrun -m s1fast.train`, on CPU with gloo.

One small configuration is shared (the tiny preset on the bundled sample cut to 256 tokens, 4 examples a
step): a one-process run is the reference that the 2-rank FSDP2 run, the 2x2 hybrid-sharded run and a
SIGKILLed-then-resumed run must reproduce.
"""
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file
from signal_ranks import expect_both_stopped, signal_rank_mid_run, torchrun

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASE = ["--preset", "tiny", "--max-tokens", "256", "--global-batch", "4", "--max-steps", "4", "--progress", "false",
        "--lr", "2e-3", "--save-every", "2"]
ENV = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
           PYTHONFAULTHANDLER="1")   # a rank that aborts prints every thread's Python stack
ENV.pop("TRITON_INTERPRET", None)  # the trainer's CPU path: PyTorch kernels (the interpreter is tested elsewhere)


def run(args, nproc=1, check=True, timeout=600, **kw):
    if nproc == 1:
        cmd = [sys.executable, "-m", "s1fast.train", *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
               "-m", "s1fast.train", *args]
    p = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=timeout, **kw)
    if check:
        assert p.returncode == 0, f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-5000:]}"
    return p


def losses(out):
    rows = {}
    for line in open(os.path.join(out, "metrics.jsonl")):
        r = json.loads(line)
        rows[r["step"]] = r["loss"]
    return [rows[k] for k in sorted(rows)]


def weights(out):
    files = sorted(f for f in os.listdir(os.path.join(out, "final")) if f.endswith(".safetensors"))
    sd = {}
    for f in files:
        sd.update(load_file(os.path.join(out, "final", f)))
    return sd


def assert_same_weights(a, b, atol=2e-6):
    assert a.keys() == b.keys()
    worst = max((a[k].double() - b[k].double()).abs().max().item() for k in a)
    assert worst <= atol, f"weights differ by up to {worst:.3e}"


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("single"))
    p = run(BASE + ["--output-dir", out])
    return out, p


def test_single_process_run_logs_checkpoints_exports(single):
    out, p = single
    rows = [json.loads(x) for x in open(os.path.join(out, "metrics.jsonl"))]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    for key in ("loss", "lr", "grad_norm", "tokens", "supervised_tokens", "tokens_per_s", "mfu", "peak_memory_gb",
                "step_time"):
        assert key in rows[0]
    assert rows[0]["lr"] < rows[-1]["lr"] or rows[1]["lr"] > 0  # warmup
    assert os.path.exists(os.path.join(out, "loss_curve.png"))
    assert open(os.path.join(out, "checkpoints", "latest")).read().strip() == "step_00000004"
    assert sorted(os.listdir(os.path.join(out, "checkpoints"))) == ["latest", "step_00000002", "step_00000004"]
    # the export loads in transformers and gives s1fast's logits
    from transformers import AutoModelForCausalLM

    from s1fast.model import from_pretrained
    hf = AutoModelForCausalLM.from_pretrained(os.path.join(out, "final"), dtype=torch.float32).eval()
    ours = from_pretrained(os.path.join(out, "final")).eval()
    ids = torch.tensor([151644, 8948, 198, 2610, 525, 1207, 16948, 13, 151645, 198, 151644, 872])
    with torch.no_grad():
        ref = hf(ids[None]).logits[0]
        got = ours.logits(ids, torch.arange(len(ids)), torch.tensor([0, len(ids)], dtype=torch.int32), len(ids))
    assert (ref - got.float()).abs().max().item() < 1e-4


def test_two_rank_fsdp_equals_single_process(single, tmp_path):
    ref, _ = single
    out = str(tmp_path / "two")
    run(BASE + ["--output-dir", out], nproc=2)
    a, b = losses(ref), losses(out)
    assert len(a) == len(b) == 4
    for x, y in zip(a, b):
        assert abs(x - y) <= 1e-5 * abs(x), (a, b)
    assert_same_weights(weights(ref), weights(out))
    # python -m s1fast.export: the last step's sharded checkpoint is final/ exactly; an earlier one is not
    ck = os.path.join(out, "checkpoints")
    for step in ("step_00000004", "step_00000002"):
        p = subprocess.run([sys.executable, "-m", "s1fast.export", os.path.join(ck, step)], cwd=ROOT, env=ENV,
                           capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, p.stderr[-3000:]
    last, early = (load_file(os.path.join(out, f"export_{s}", "model.safetensors")) for s in ("step_00000004",
                                                                                             "step_00000002"))
    assert_same_weights(weights(out), last, atol=0.0)
    assert os.path.exists(os.path.join(out, "export_step_00000002", "tokenizer.json"))
    assert max((early[k] - last[k]).abs().max().item() for k in last) > 0
    p = subprocess.run([sys.executable, "-m", "s1fast.export", out], cwd=ROOT, env=ENV, capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 2 and "is not a complete s1fast checkpoint" in p.stderr, p.stderr[-2000:]


def test_hybrid_sharding_2x2_equals_single_process(single, tmp_path):
    ref, _ = single
    out = str(tmp_path / "hsdp")
    p = run(BASE + ["--output-dir", out, "--shard-size", "2", "--max-steps", "2", "--export", "false"], nproc=4)
    a, b = losses(ref)[:2], losses(out)
    assert len(b) == 2 and all(abs(x - y) <= 1e-5 * abs(x) for x, y in zip(a, b)), (a, b)
    assert "4 rank(s)" in p.stdout + p.stderr


def test_sigkill_during_saves_3_times_then_resume_reproduces_the_uninterrupted_run(single, tmp_path):
    """bench/fault_injection.py's campaign, 3 kills (the 20-kill figure is in bench/RESULTS.md): a run with
    --save-every 1 SIGKILLed at random moments of its saves; after each kill the newest complete checkpoint
    loads (the dead run's lock is taken over by the next), and the finished run equals the uninterrupted one
    bitwise: losses and exported weights."""
    from bench_scripts import load
    res = load("fault_injection").campaign(str(tmp_path), kills=3, seed=0, ref=single[0], log=lambda *_: None)
    assert res["bitwise_equal"], res
    assert len(res["loaded"]) == 3 and any(res["loaded"]), res


def test_sigterm_saves_each_step_once_exits_nonzero_and_the_folder_is_locked_meanwhile(tmp_path):
    """SIGTERM while periodic saves run (--save-every 1): the step is finished and saved once (issue 14, bug 1:
    it was saved a second time, deleting the only complete checkpoint in between), and the exit status is
    128 + 15: the run did not finish. While it runs, a second run on the folder is refused (bug 5)."""
    out = str(tmp_path / "term")
    args = [*BASE, "--max-steps", "40", "--save-every", "1", "--output-dir", out]
    proc = subprocess.Popen([sys.executable, "-m", "s1fast.train", *args], cwd=ROOT, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    metrics = os.path.join(out, "metrics.jsonl")
    t0 = time.time()
    while not (os.path.exists(metrics) and os.path.getsize(metrics) > 0):
        assert proc.poll() is None and time.time() - t0 < 300
        time.sleep(0.05)
    second = run([*BASE, "--output-dir", out], check=False, timeout=300)
    assert second.returncode == 2 and f"is in use by another run: process {proc.pid} on host" in second.stderr, \
        second.stderr[-2000:]
    proc.send_signal(signal.SIGTERM)
    text, _ = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signal.SIGTERM, text
    assert "signal 15: saved" in text
    saves = [line.split()[-1] for line in text.splitlines() if line.startswith("[s1fast] saved ")]
    assert len(saves) == len(set(saves)), f"a step was saved twice: {saves}"
    step = int(open(os.path.join(out, "checkpoints", "latest")).read().strip().split("_")[1])
    assert 1 <= step < 40 and losses(out)[-1] and len(losses(out)) == step
    assert not os.path.exists(os.path.join(out, "run.lock"))


def test_nan_loss_stops_with_step_and_last_checkpoint(tmp_path):
    out = str(tmp_path / "nan")
    p = run([*BASE, "--lr", "1e8", "--grad-clip", "0", "--max-steps", "12", "--save-every", "1", "--warmup-ratio", "0",
             "--output-dir", out], check=False)
    assert p.returncode == 2, p.stdout + p.stderr
    assert "training stopped" in p.stderr and "Last good checkpoint:" in p.stderr and "step_" in p.stderr
    # the step that diverged is the last row of metrics.jsonl (strict JSON: its non-finite values are null)
    step = int(re.search(r"at step (\d+): training stopped", p.stderr).group(1))
    last = json.loads(open(os.path.join(out, "metrics.jsonl")).read().splitlines()[-1])
    assert last["step"] == step and None in (last["loss"], last["grad_norm"]), last


@pytest.mark.parametrize("extra,match", [
    (["--model", "/nonexistent/model"], "neither a folder nor a named config"),
    (["--data", "/nonexistent/data.jsonl"], "no such file"),
    (["--policy", "error", "--max-tokens", "512"], "longer than --max-tokens 512"),
    (["--model", "tiny-qwen3"], "named configs: "),
])
def test_bad_input_fails_before_any_compute(tmp_path, extra, match):
    p = run([*BASE, "--output-dir", str(tmp_path / "x"), *extra], check=False, timeout=120)
    assert p.returncode == 2 and match in p.stderr, p.stderr[-2000:]
    assert not os.path.exists(tmp_path / "x" / "metrics.jsonl")


def test_bf16_checkpointing_and_compile_paths_train_the_same_model(single, tmp_path):
    """The options a GPU user turns on, run for real on CPU: bf16 compute with bf16 master weights and
    selective activation checkpointing; full checkpointing with per-block torch.compile."""
    ref = losses(single[0])[:2]
    out = str(tmp_path / "bf16")
    run(BASE + ["--output-dir", out, "--max-steps", "2", "--export", "false", "--dtype", "bf16",
                "--master-dtype", "bf16", "--activation-checkpointing", "selective", "--checkpoint-layers", "1"], nproc=2)
    assert all(abs(x - y) <= 2e-3 * x for x, y in zip(ref, losses(out))), (ref, losses(out))
    out = str(tmp_path / "compiled")
    run(BASE + ["--output-dir", out, "--max-steps", "2", "--export", "false", "--activation-checkpointing", "full",
                "--compile"], nproc=2)
    assert all(abs(x - y) <= 1e-5 * x for x, y in zip(ref, losses(out))), (ref, losses(out))


def test_cpu_offload_on_a_cpu_run_is_refused_clearly(tmp_path):
    p = run([*BASE, "--output-dir", str(tmp_path / "x"), "--cpu-offload"], check=False, timeout=120)
    assert p.returncode == 2 and "drop --cpu-offload" in p.stderr


def test_tiny_preset_trains_and_exports(tmp_path):
    """The tiny preset on the bundled real sample, 2 FSDP2 ranks, to the end. The loss falls
    from ln(V) and the exported folder loads in transformers with s1fast's logits."""
    out = str(tmp_path / "tiny")
    run(["--preset", "tiny", "--output-dir", out, "--progress", "false"], nproc=2, timeout=900)
    loss = losses(out)
    assert len(loss) == 24 and abs(loss[0] - 11.93) < 0.1, loss
    assert max(loss[-4:]) < loss[0] - 3.0, f"the loss must fall visibly: {loss}"
    assert os.path.exists(os.path.join(out, "loss_curve.png"))
    from transformers import AutoModelForCausalLM

    from s1fast.model import from_pretrained
    hf = AutoModelForCausalLM.from_pretrained(os.path.join(out, "final"), dtype=torch.float32).eval()
    ours = from_pretrained(os.path.join(out, "final")).eval()
    ids = torch.tensor([151644, 8948, 198, 2610, 525, 1207, 16948, 13, 151645, 198, 151644, 872, 198, 3838, 374])
    with torch.no_grad():
        ref = hf(ids[None]).logits[0]
        got = ours.logits(ids, torch.arange(len(ids)), torch.tensor([0, len(ids)], dtype=torch.int32), len(ids))
    assert (ref - got.float()).abs().max().item() < 1e-4


def test_gpu_kernel_path_inside_the_trainer_matches_the_pytorch_path(tmp_path):
    """What a GPU user runs, in some form: the trainer with the Triton kernels (RMSNorm, RoPE, SwiGLU, fused
    linear cross-entropy) inside FSDP2's forward and backward on 2 ranks, here through Triton's interpreter.
    It must train the same model as the PyTorch path: same losses and gradient norms, step by step."""
    args = ["--preset", "tiny", "--max-tokens", "96", "--global-batch", "2", "--max-steps", "2", "--progress", "false",
            "--export", "false", "--plot", "false"]
    ref = run(args + ["--output-dir", str(tmp_path / "torch")], nproc=2)
    assert "kernels: pytorch" in ref.stdout + ref.stderr
    env = dict(ENV, TRITON_INTERPRET="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
           "s1fast.train", *args, "--output-dir", str(tmp_path / "triton")]
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-4000:]
    assert "kernels: triton (interpreter)" in p.stdout + p.stderr
    rows = {}
    for name in ("torch", "triton"):
        rows[name] = [json.loads(x) for x in open(tmp_path / name / "metrics.jsonl")]
    assert len(rows["triton"]) == 2
    for a, b in zip(rows["torch"], rows["triton"]):
        assert abs(a["loss"] - b["loss"]) <= 1e-5 * a["loss"], (a["loss"], b["loss"])
        assert abs(a["grad_norm"] - b["grad_norm"]) <= 1e-4 * a["grad_norm"], (a["grad_norm"], b["grad_norm"])


def test_adaptive_checkpointing_picks_the_blocks_the_budget_needs_and_keeps_the_math(tmp_path):
    """--checkpoint-budget-gb: before each micro-step the trainer checkpoints the fewest blocks that keep the
    projected peak within the budget (s1fast.project's memory model). With a budget between the model's peaks
    with 0 and 1 checkpointed block at 256 tokens, a 256-token micro-step checkpoints 1 block and the 1-token
    stand-in micro-step of the rank that has one example fewer (global batch 3 on 2 ranks) checkpoints none: the
    count changes between micro-steps, here with torch.compile'd blocks (the recommended command line), on 2
    FSDP2 ranks, and the losses are those of the same run without checkpointing (recompute changes no math)."""
    from s1fast import projection as P
    from s1fast.model import get_config
    s, A = P.model_shape(get_config("tiny-qwen2")), P.Assumptions()
    peaks = [P.memory_gb(s, A, stack="s1fast", tokens=256, shard=2, ckpt_layers=k)["peak"] for k in (0, 1)]
    budget = (peaks[0] + peaks[1]) / 2
    assert P.layers_to_checkpoint(s, A, tokens=256, shard=2, limit_gb=budget) == 1
    assert P.layers_to_checkpoint(s, A, tokens=1, shard=2, limit_gb=budget) == 0
    args = BASE + ["--global-batch", "3", "--max-steps", "3", "--export", "false", "--save-every", "0"]
    ref, out = str(tmp_path / "plain"), str(tmp_path / "adaptive")
    run(args + ["--output-dir", ref], nproc=2)
    p = run(args + ["--output-dir", out, "--activation-checkpointing", "full", "--compile",
                    "--checkpoint-budget-gb", repr(budget)], nproc=2)
    assert "adaptive checkpointing: budget" in p.stdout and "1 of 2 blocks" in p.stdout, p.stdout[-2000:]
    assert "memory model assumes bf16 activations" in p.stdout  # the tiny preset computes in fp32
    rows = [json.loads(x) for x in open(os.path.join(out, "metrics.jsonl"))]
    assert [(r["checkpointed_layers_min"], r["checkpointed_layers"]) for r in rows] == [(0, 1)] * 3
    a, b = losses(ref), losses(out)
    assert len(a) == 3 and all(abs(x - y) <= 1e-5 * x for x, y in zip(a, b)), (a, b)
    bad = run(BASE + ["--output-dir", str(tmp_path / "bad"), "--checkpoint-budget-gb", "40"], check=False, timeout=120)
    assert bad.returncode == 2 and "also pass --activation-checkpointing full" in bad.stderr
    bad = run(BASE + ["--output-dir", str(tmp_path / "bad2"), "--activation-checkpointing", "full",
                      "--checkpoint-budget-gb", "-1"], check=False, timeout=120)
    assert bad.returncode == 2 and "on a CPU run give the budget in GB" in bad.stderr


def test_export_finds_a_relative_model_folder_from_any_folder_and_says_what_to_pass_when_it_moved(single, tmp_path):
    """A run started with a relative --model folder: exporting its checkpoint from another folder read the path
    from there ("--model 'x' is neither a folder nor a named config", a flag export did not have)."""
    import shutil
    start = tmp_path / "start"
    shutil.copytree(os.path.join(single[0], "final"), start)
    out = str(tmp_path / "ft")
    run(["--preset", "tiny", "--model", os.path.relpath(start, ROOT), "--max-tokens", "96", "--global-batch", "2",
         "--max-steps", "1", "--progress", "false", "--export", "false", "--plot", "false", "--output-dir", out])
    ck = os.path.join(out, "checkpoints", "step_00000001")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    def export(*extra):
        return subprocess.run([sys.executable, "-m", "s1fast.export", ck, "--out", str(tmp_path / "hf"), *extra],
                              cwd=elsewhere, env=ENV, capture_output=True, text=True, timeout=300)
    p = export()
    assert p.returncode == 0, p.stderr[-3000:]
    assert os.path.exists(tmp_path / "hf" / "model.safetensors")
    # the model folder moved: the error names the run's --model and the flags to pass; passing them works
    os.rename(start, tmp_path / "moved")
    p = export()
    assert p.returncode == 2 and "pass --model (that model's folder or named config)" in p.stderr \
        and os.path.relpath(start, ROOT) in p.stderr, p.stderr[-2000:]
    p = export("--model", str(tmp_path / "moved"))
    assert p.returncode == 0, p.stderr[-3000:]
    # --out naming the run folder: it was deleted whole (checkpoints included) to hold the export
    p = export("--model", str(tmp_path / "moved"), "--out", out)
    assert p.returncode == 2 and "is not a Hugging Face model folder" in p.stderr and os.path.exists(ck), p.stderr
    # a run folder instead of a checkpoint: its complete checkpoints are named
    p = subprocess.run([sys.executable, "-m", "s1fast.export", out], cwd=elsewhere, env=ENV, capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 2 and f"the complete ones there: {ck}" in p.stderr, p.stderr[-2000:]


def test_sigint_to_one_rank_stops_both_with_its_status_and_the_resume_equals_the_uninterrupted_run(single, tmp_path):
    """A Ctrl-C in one rank's terminal: every rank finishes the same step, takes part in the same save and exits
    128 + 2 (the other rank exited 128 + 15, a signal it never got); the resume reproduces the uninterrupted run."""
    from s1fast import checkpoint
    out = str(tmp_path / "one-rank-int")
    proc = torchrun("s1fast.train", [*BASE, "--output-dir", out], 2, ROOT, ENV)
    signal_rank_mid_run(proc, 1, signal.SIGINT)
    text = expect_both_stopped(proc, signal.SIGINT)
    latest = checkpoint.latest(os.path.join(out, "checkpoints"))
    step = checkpoint.step_of(latest)
    assert checkpoint.is_complete(latest) and len(losses(out)) == step, text[-3000:]
    assert f"saved {latest} at step {step}" in text and not os.path.exists(os.path.join(out, "final"))
    p = run(BASE + ["--output-dir", out], nproc=2)
    assert f"resumed from {latest}" in p.stdout + p.stderr
    a, b = losses(single[0]), losses(out)
    assert len(b) == 4 and all(abs(x - y) <= 1e-5 * abs(x) for x, y in zip(a, b)), (a, b)
    assert_same_weights(weights(single[0]), weights(out))
