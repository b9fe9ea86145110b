"""s1fast.projection (python -m s1fast.project): calibration arithmetic, monotonicity, memory table, JSON keys, the CLI."""
import json
import subprocess
import sys

import pytest

from s1fast import projection as P
from s1fast.projection import runs as R

PEAK = 989e12
V, H = 152064, 5120


@pytest.fixture(scope="module")
def s1():
    return P.project("s1", gpus=16)


def test_model_shape_matches_qwen25_32b_by_hand():
    s = P.model_shape("Qwen2.5-32B-Instruct")
    layer = 2 * H * H + 2 * H * 1024 + (H + 2 * 1024) + 3 * H * 27648 + 2 * H   # q,o + k,v + qkv bias + MLP + norms
    assert s.layer_params == layer
    matmul = 64 * (2 * H * H + 2 * H * 1024 + 3 * H * 27648) + V * H           # layers + lm_head, no embedding
    assert s.a == 6 * matmul
    assert s.b == 6 * 64 * 40 * 128                  # causal attention, forward + backward
    assert s.cost(1000) == s.a * 1000 + s.b * 1000 ** 2
    assert 32.7e9 < s.params < 32.8e9              # Qwen2.5-32B is 32.76B parameters


def test_calibration_reproduces_26_minutes_and_its_mfu(s1):
    c = s1["calibration"]
    assert c["seconds_per_step"] == pytest.approx(26 * 60 / 315)
    # End-to-end MFU from first principles: all training FLOPs of 5 epochs / (16 GPUs * peak * 26 min).
    lens = P.load_lengths(s1["lengths_file"])
    s = P.model_shape("Qwen2.5-32B-Instruct")
    work = 5 * sum(s.a * x + s.b * x * x for x in lens)
    assert c["end_to_end_mfu"] == pytest.approx(work / (16 * PEAK * 26 * 60))
    # The busiest rank's MFU: the straggler and the overheads only push it above the end-to-end figure.
    assert c["reference_mfu"] > c["end_to_end_mfu"] * c["straggler"]
    assert c["reference_hfu"] > c["reference_mfu"]  # checkpoint recompute is extra hardware work
    ref = next(r for r in s1["runs"] if r["stack"] == "reference")
    assert ref["minutes"] == pytest.approx(26.0, abs=0.01)
    assert ref["steps"] == 315
    assert ref["straggler"] > 1.2                  # one sequence per GPU on long-tailed lengths


def test_plan_stats_from_the_packing_planner():
    s = P.model_shape("Qwen2.5-32B-Instruct")
    kw = dict(world_size=4, micro_tokens=10_000, global_batch=8, epochs=2, seed=0)

    def stats(lens, mode):
        st = P.projection_plan(lens, s, mode=mode, **kw).stats
        return st["sync_straggler_factor"], st["micro_steps_per_rank"], st["max_micro_tokens"]
    f, micro, peak = stats([500] * 40, "none")
    assert f == pytest.approx(1.0) and micro == 2 * 5 * 2 and peak == 500   # 2 micro-steps of accumulation
    lens = [100 + 37 * i % 900 for i in range(64)]
    ref, _, _ = stats(lens, "none")
    bal, _, _ = stats(lens, "balanced")
    assert bal < ref


def test_more_gpus_take_less_time():
    p8, p16 = P.project("s1", gpus=8), P.project("s1", gpus=16)
    assert p16["reference_minutes"] < p8["reference_minutes"]
    assert p16["s1fast_minutes"] < p8["s1fast_minutes"]


def test_reference_needs_gpus_dividing_the_global_batch():
    with pytest.raises(SystemExit, match="multiple of --gpus"):
        P.project("s1", gpus=12)


def test_memory_table_logits_and_which_blocks_fit(s1):
    rows = {(m["stack"], m["tokens"]): m for m in s1["memory_table"]}
    ref, fast = rows[("reference", 32768)], rows[("s1fast", 32768)]
    assert ref["fp32_logits_full"] == pytest.approx(4 * 32768 * V / 1e9, abs=0.01)   # ~19.9 GB
    assert 19.5 < ref["fp32_logits_full"] < 20.5
    assert ref["states"] == pytest.approx(16 * P.model_shape("Qwen2.5-32B-Instruct").params / 16 / 1e9, abs=0.01)
    assert ref["loss_phase"] > ref["fp32_logits_full"] > fast["loss_phase"]
    assert not ref["fits"] and fast["fits"]          # s1.1 at 32768: the reference OOMs, s1fast fits
    assert not fast["fits_no_ckpt"]                  # 32B at 32768 needs activation checkpointing
    # Saved activations with checkpointing: one bf16 hidden state per layer and token.
    assert ref["saved_activations"] == pytest.approx(64 * 32768 * H * 2 / 1e9, abs=0.01)


def test_s1_1_at_32768_reference_oom_s1fast_fits():
    p = P.project("s1.1", gpus=16)
    runs = {(r["stack"], r["block"]): r for r in p["runs"]}
    assert not runs[("reference", 32768)]["fits"]
    assert runs[("s1fast", 32768)]["fits"]
    assert runs[("s1fast", 32768)]["peak_memory_gb"] <= runs[("s1fast", 32768)]["memory_budget_gb"]


def test_missing_lengths_and_bad_lengths_file_errors(tmp_path):
    with pytest.raises(SystemExit, match="--lengths"):
        P.project("sky-t1")
    bad = tmp_path / "lens.txt"
    bad.write_text("100\n12x\n")
    with pytest.raises(ValueError, match=r"lens.txt:2"):
        P.load_lengths(str(bad))


def test_cli_json_keys_and_plot(tmp_path):
    png = tmp_path / "proj.png"
    out = subprocess.run([sys.executable, "-m", "s1fast.project", "--preset", "s1", "--gpus", "16", "--gpu", "h100",
                          "--json", "--plot", str(png)], capture_output=True, text=True, check=True)
    p = json.loads(out.stdout)
    for key in ("reference_minutes", "s1fast_minutes", "peak_memory_gb", "calibration", "assumptions", "runs"):
        assert key in p
    assert p["s1fast_minutes"] < p["reference_minutes"]
    assert 0 < p["peak_memory_gb"] <= p["runs"][0]["memory_budget_gb"]
    assert png.stat().st_size > 10_000
    text = P.format_report(p)
    assert "PROJECTED" in text and "calibration" in text and "assumptions:" in text


def test_balance_comes_from_step_composition_and_selective_checkpointing_helps(s1):
    # With s1's random step composition (group window 1) and as many sequences per step as GPUs, no
    # placement can beat the longest sequence of each step: s1fast keeps the reference's straggler factor.
    fixed = P.project("s1", gpus=16, A=P.Assumptions(group_window=1))
    runs = {r["stack"]: r for r in fixed["runs"]}
    assert runs["s1fast"]["straggler"] == pytest.approx(runs["reference"]["straggler"], rel=0.02)  # other shuffle
    assert runs["s1fast"]["straggler"] > 1.3
    assert fixed["s1fast_minutes"] > s1["s1fast_minutes"]
    sens = s1["sensitivity"]
    assert sens["anchored, every layer checkpointed"]["minutes"] >= sens["anchored"]["minutes"]


def test_layers_to_checkpoint_is_the_fewest_that_fit_and_grows_with_tokens():
    s, A = P.model_shape("Qwen2.5-32B-Instruct"), P.Assumptions()
    limit = 75.0
    prev = 0
    for tokens in (1000, 4000, 6000, 8000, 9000, 12000):
        k = P.layers_to_checkpoint(s, A, tokens=tokens, shard=16, limit_gb=limit)
        fits = [j for j in range(s.layers + 1)
                if P.memory_gb(s, A, stack="s1fast", tokens=tokens, shard=16, ckpt_layers=j)["peak"] <= limit]
        assert k == (min(fits) if fits else None), tokens
        assert k is not None and k >= prev, "more tokens never need fewer checkpointed layers"
        prev = k
    assert P.layers_to_checkpoint(s, A, tokens=1000, shard=16, limit_gb=75.0) == 0
    assert P.layers_to_checkpoint(s, A, tokens=200_000, shard=16, limit_gb=75.0) is None


def test_adaptive_checkpointing_recomputes_less_than_the_longest_packs_count(s1):
    """Per micro-step checkpointing (the trainer's --checkpoint-budget-gb) against the longest pack's count at
    every step (--checkpoint-layers K): same memory at the longest pack, less recompute on shorter ones."""
    head = next(r for r in s1["runs"] if r["stack"] == "s1fast")
    assert head["ckpt_mean"] < head["ckpt_layers"]
    static = s1["sensitivity"]["anchored, the longest pack's layers checkpointed at every step"]
    assert s1["s1fast_minutes"] < static["minutes"] < s1["sensitivity"]["anchored, every layer checkpointed"]["minutes"]
    fixed = P.project("s1", gpus=16, A=P.Assumptions(adaptive_checkpointing=False))
    assert fixed["s1fast_minutes"] == pytest.approx(static["minutes"])
    assert fixed["peak_memory_gb"] == pytest.approx(s1["peak_memory_gb"])


def test_adaptive_timing_charges_each_layer_its_slowest_rank():
    """FSDP couples ranks at every layer: the adaptive figure is the sum over layers of the slowest rank there,
    equal to the per-rank factor when the ranks are alike and never below the slowest rank's own total."""
    s, A = P.model_shape("Qwen2.5-32B-Instruct"), P.Assumptions()
    lens = [3000, 9000]
    limit = 75.0
    k_small, k_big = (P.layers_to_checkpoint(s, A, tokens=n, shard=16, limit_gb=limit) for n in (3000, 9000))
    assert k_small < k_big
    st = R._Setup("s1fast", 32768, 2, lens, 0.0, 1, 1.0, 1, 9000, [[(s.cost(9000), 9000)] * 2])
    same, mean_k = P.adaptive_recompute(st, s, A, shard=16, limit_gb=limit)
    assert same == pytest.approx(P.recompute_factor(s, lens, k_big)) and mean_k == k_big
    # a rank with more work but fewer checkpointed layers beside one with less work and more of them
    w = s.cost(9000)
    st.loads = [[(1.2 * w, 3000), (w, 9000)]]  # (work, tokens): the tokens set each rank's count
    mixed, _ = P.adaptive_recompute(st, s, A, shard=16, limit_gb=limit)
    per_rank = max(1.2 * w * P.recompute_factor(s, lens, k_small), w * P.recompute_factor(s, lens, k_big)) / (1.2 * w)
    assert per_rank < mixed < P.recompute_factor(s, lens, k_big) * 1.0001


@pytest.mark.parametrize("args,match", [
    (["--gpus", "0"], "--gpus must be at least 1, got 0"),  # was: silently the preset's 16 GPUs
    (["--gpus", "3"], "multiple of --gpus (3)"),
    (["--nic-gbit", "0"], "--nic-gbit must be > 0"), (["--link-efficiency", "0"], "--link-efficiency must be in (0, 1]"),
    (["--s1fast-mfu", "2"], "--s1fast-mfu must be in (0, 1]"), (["--group-window", "0"], "--group-window must be >= 1"),
    (["--memory-headroom", "1"], "--memory-headroom must be in [0, 1)"),
    (["--lengths", "/no/such/lengths.txt"], "No such file or directory: /no/such/lengths.txt"),
    (["--model", "no-such-model"], "'no-such-model' is neither a named config"),
])
def test_cli_bad_input_is_one_error_line_exit_2(args, match, capsys):
    """These ended in tracebacks (ZeroDivisionError, FileNotFoundError, make_plan's ValueError) or in a bare
    message with exit 1; --gpus 0 projected the preset's GPU count instead."""
    from s1fast.projection.cli import main
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and match in err and "Traceback" not in err, err


def test_runtime_reserve_is_in_gb_as_the_memory_model_counts_it(capsys):
    """The reserve is subtracted from memory in GB (1e9 bytes: s1fast.memory.budget_gb); --help said GiB."""
    from s1fast.projection.cli import main
    with pytest.raises(SystemExit):
        main(["--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    line = help_text.split("--runtime-reserve-gb RUNTIME_RESERVE_GB")[-1].split("--memory-headroom", 1)[0]
    assert "GB per GPU" in line and "GiB" not in line, line
