"""The RL command's parts in-process: verifier parsing and scoring (errors reported, never silent), which
tokens count as the policy's samples under budget forcing, the vLLM generator refused on a CPU, and the
seeded prompt draw."""
import json
import os

import pytest
import torch

from s1fast.config import ConfigError
from s1fast.forcing import ForcingTokens
from s1fast.rl.config import RLConfig
from s1fast.rl.loop import iteration_prompts
from s1fast.rl.rewards import parse_rewards, score
from s1fast.rl.rollout import RecordingForcer, VLLMRollout, sample_seed


def test_parse_rewards_builtin_user_and_errors():
    v = parse_rewards("toy=1.0, format=0.1,s1fast.rl.loss:token_weights")
    assert [(n, w) for n, w, _ in v] == [("toy", 1.0), ("format", 0.1), ("s1fast.rl.loss:token_weights", 1.0)]
    with pytest.raises(ConfigError, match="unknown verifier 'nope'"):
        parse_rewards("nope=1")
    with pytest.raises(ConfigError, match="cannot load"):
        parse_rewards("no_such_module_x:fn=1")
    with pytest.raises(ConfigError, match="not a number"):
        parse_rewards("toy=abc")


def test_score_reports_a_raising_or_nonfinite_verifier_with_its_prompt():
    def boom(c, row):
        raise ZeroDivisionError("bad")
    verifiers = [("toy", 1.0, parse_rewards("toy")[0][2]), ("boom", 2.0, boom),
                 ("nan", 1.0, lambda c, r: float("nan"))]
    row = {"question": "Add mod 10: a=3, b=5", "answer": "8", "task": "sum"}
    comp = {"answer_text": "Final Answer: 8", "answer": " 8", "finished": True, "capped": False}
    total, scores, errors = score(comp, row, verifiers)
    assert total == 1.0 and scores == {"toy": 1.0, "boom": 0.0, "nan": 0.0}
    assert [e["verifier"] for e in errors] == ["boom", "nan"]
    assert all(e["question"] == row["question"] for e in errors)
    assert "ZeroDivisionError: bad" in errors[0]["error"]


@pytest.mark.parametrize("gold", [None, "", "\\frac{1}{2"])
def test_math_reward_on_an_unusable_reference_is_a_reported_error(gold):
    # it read as "wrong" for every completion (an empty box even scored 1 under the s1 rule): a prompt whose
    # reward is stuck at zero, never reported
    row = {"question": "What is 1/2?", "answer": gold}
    comp = {"answer_text": "Final Answer: \\boxed{}", "answer": "\\boxed{}", "finished": True, "capped": False}
    total, scores, errors = score(comp, row, parse_rewards("math"))
    assert total == 0.0 and [e["verifier"] for e in errors] == ["math"] and "reference" in errors[0]["error"]


@pytest.mark.parametrize("text,reward", [("Final Answer: \\boxed{3} or \\boxed{5}", 0.0),
                                         ("Final Answer: \\boxed{B or C}", 0.0),
                                         ("Final Answer:\n**Final Answer**\n5", 1.0)])
def test_math_reward_hacks_and_unboxed_answers(text, reward):
    row = {"question": "Pick", "answer": "B" if "B" in text else "5"}
    comp = {"answer_text": text, "answer": text, "finished": True, "capped": False}
    assert score(comp, row, parse_rewards("math"))[:2] == (reward, {"math": reward})


class _Greedy:
    """A rollout whose greedy completion of each held-out row is its ``says`` field."""
    device = torch.device("cpu")

    def greedy(self, rows):
        return [{"answer_text": r["says"], "answer": r["says"], "finished": True, "capped": False} for r in rows]


def test_held_out_evaluation_counts_a_raising_verifier_not_correct_and_reports_it(tmp_path):
    # evaluate called the verifier bare: `math` on an unusable held-out reference raised and ended the run
    from types import SimpleNamespace

    from s1fast.rl.loop import evaluate
    held = [{"question": "1+1?", "answer": "2", "says": "\\boxed{2}"},
            {"question": "Half?", "answer": "\\frac{1}{2", "says": "\\boxed{\\frac{1}{2}}"},
            {"question": "3+4?", "answer": "7", "says": "\\boxed{8}"}]
    acc, errs = evaluate(_Greedy(), held, 0, 1, parse_rewards("format=0.1,math=1"))
    assert acc == pytest.approx(1 / 3)
    assert [(e["verifier"], e["question"]) for e in errs] == [("math", "Half?")] and "reference" in errs[0]["error"]
    from s1fast.rl.loop import report_errors
    said = []
    s = SimpleNamespace(rank=0, errors_path=str(tmp_path / "verifier_errors.jsonl"),
                        metrics=SimpleNamespace(message=said.append))
    report_errors(s, errs, 3, held_out=True)
    rec = [json.loads(x) for x in open(s.errors_path)]
    assert [(r["question"], r["iteration"], r["held_out"]) for r in rec] == [("Half?", 3, True)]
    assert "held-out evaluation: 1 verifier error(s), counted not correct" in said[0]


def test_only_sampled_tokens_are_the_policys():
    tok = ForcingTokens()  # Qwen2.5's ids; no tokenizer needed
    f = RecordingForcer([1, 2, 3], tok, max_thinking_tokens=20, num_wait=1, max_total_tokens=400)
    start = len(f.ids)
    f.push(10)
    f.push(151645)          # tries to stop thinking: dropped, "Wait" forced instead (not the policy's)
    wait_at = len(f.ids) - len(tok.extension)
    f.push(11)
    f.push(151644)          # stops thinking: it stays as the first id of the forced "<|im_start|>answer"
    stop_at = len(f.ids) - len(tok.think_end)
    f.push(12)
    f.push(151645)          # ends the answer: kept, sampled
    assert f.done
    assert f.sampled == {start, wait_at + 1, stop_at, len(f.ids) - 2, len(f.ids) - 1}
    assert f.ids[wait_at:wait_at + len(tok.extension)] == list(tok.extension)
    assert all(i not in f.sampled for i in range(wait_at, wait_at + len(tok.extension)))


def test_vllm_generator_is_refused_on_cpu():
    with pytest.raises(ConfigError, match="GPU node"):
        VLLMRollout(None, RLConfig(), torch.device("cpu"), "unused")


def test_prompt_draw_and_sample_seeds_are_functions_of_the_iteration_only():
    a = iteration_prompts(100, 8, seed=3, it=5)
    assert a == iteration_prompts(100, 8, seed=3, it=5) and len(set(a)) == 8
    assert a != iteration_prompts(100, 8, seed=3, it=6)
    assert len({sample_seed(0, it, p, j) for it in range(3) for p in range(4) for j in range(4)}) == 48


def test_presets_validate_and_the_toy_preset_fits_every_toy_prompt(capsys):
    from transformers import AutoTokenizer

    from s1fast.generate import BUNDLED_TOKENIZER
    from s1fast.rl.config import PRESETS, parse_config, validate
    from s1fast.rl.loop import check_prompts, load_rows
    from s1fast.rl.rollout import Rollout
    for name in PRESETS:
        validate(parse_config(["--preset", name, "--model", "x"]), world=2)
    cfg = parse_config(["--preset", "toy"])  # its own prompts and held-out problems, as a user runs it
    rows, held = load_rows(cfg)
    assert len(rows) == 2000 and len(held) == cfg.eval_problems > 0
    assert not {r["question"] for r in rows} & {r["question"] for r in held}, "held-out problems never trained on"
    # the held-out problems are the same for every seed (seeds compare), and those s1fast.eval grades
    from s1fast.eval import read_problems
    other_rows, other_held = load_rows(parse_config(["--preset", "toy", "--seed", "7"]))
    assert other_held == held and other_rows != rows
    assert [r["question"] for r in read_problems(f"toy:chain:{len(held)}")] == [r["question"] for r in held]
    ro = Rollout(AutoTokenizer.from_pretrained(BUNDLED_TOKENIZER), cfg, torch.device("cpu"))
    check_prompts(rows + held, ro, cfg, "toy")
    with pytest.raises(ConfigError, match="multiple of the world size"):
        validate(parse_config(["--preset", "toy", "--prompts-per-iter", "3"]), world=2)
    with pytest.raises(SystemExit) as e:
        parse_config(["--help"])
    assert e.value.code == 0 and "--rewards" in capsys.readouterr().out


def test_the_toy_presets_missing_start_says_how_to_make_it(tmp_path, monkeypatch):
    from s1fast.rl.config import TOY_SFT_COMMAND, parse_config
    from s1fast.rl.loop import resolve
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as e:
        resolve(parse_config(["--preset", "toy"]))
    assert TOY_SFT_COMMAND in str(e.value) and "--max-steps" in TOY_SFT_COMMAND


def test_rl_toy_bench_reads_each_seeds_start_and_end(tmp_path):
    import json
    import os

    from bench_scripts import load
    bench = load("rl_toy")
    out = tmp_path / "seed0"
    out.mkdir()
    rows = [{"step": 1, "reward_mean": 0.2, "eval_accuracy": 0.4}, {"step": 2, "reward_mean": 0.3},
            {"step": 6, "reward_mean": 0.3, "eval_accuracy": 0.45}]
    (out / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (out / "eval_final.json").write_text(json.dumps({"iterations": 10, "eval_accuracy": 0.5, "eval_problems": 59}))
    r = bench.seed_row(str(out), 300.0)
    assert (r["start"], r["end"], r["minutes"], r["problems"]) == (0.4, 0.5, 5.0, 59)
    table = bench.table({0: r, 1: dict(r, end=0.4, minutes=7.0)})
    assert "| 0 | 40.0% | 50.0% | +10.0 | 5.00 |" in table and "| 1 | 40.0% | 40.0% | +0.0 | 7.00 |" in table
    assert table.splitlines()[-1] == "| mean | 40.0% | 45.0% | +5.0 | 6.00 |"
    assert os.path.getsize(bench.plot(str(tmp_path), [0])) > 0
    args = bench.sft_args(os.path.join("x", "sft"))
    assert args.count("--output-dir") == 1 and args[args.index("--output-dir") + 1] == os.path.join("x", "sft")
    assert "--max-steps" in args


@pytest.mark.parametrize("flag,value,match", [
    ("--lr", "-0.001", "--lr must be positive"), ("--lr", "0", "--lr must be positive"),
    ("--lr", "nan", "--lr must be a finite number"), ("--temperature", "nan", "--temperature must be a finite"),
    ("--beta1", "1.5", "--beta1 and --beta2 must be in"), ("--grad-clip", "-1", "--grad-clip must be >= 0"),
    ("--save-every", "-1", "--save-every must be >= 0"), ("--eval-every", "-2", "--eval-every must be >= 0"),
    ("--num-wait", "-1", "--num-wait must be >= 0"), ("--vllm-gpu-memory", "2", "--vllm-gpu-memory is a share"),
])
def test_out_of_range_rl_flags_are_refused_before_compute(flag, value, match):
    """These were accepted: a negative --lr trained against the rewards; --beta1 1.5 died in AdamW with a
    traceback; a negative --save-every saved every iteration."""
    from s1fast.rl.config import parse_config, validate
    with pytest.raises(ConfigError, match=match):
        validate(parse_config(["--preset", "toy", flag, value]), world=1)


def test_a_jsonl_with_other_field_names_is_read_with_the_flags_its_error_names(tmp_path):
    """The error for a .jsonl without a question field said 'pass --question-field', a flag s1fast.rl lacked."""
    from s1fast.rl.config import parse_config
    from s1fast.rl.loop import load_rows
    data = tmp_path / "p.jsonl"
    data.write_text(json.dumps({"q": "What is 2 + 3?", "sol": "5"}) + "\n")
    with pytest.raises(ConfigError, match="pass --question-field"):
        load_rows(parse_config(["--data", str(data)]))
    rows, held = load_rows(parse_config(["--data", str(data), "--question-field", "q", "--answer-field", "sol"]))
    assert [(r["question"], r["answer"]) for r in rows] == [("What is 2 + 3?", "5")] and held == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU: --device cuda must fail")
def test_device_cuda_without_a_gpu_is_one_error_line(capsys):
    """It was a ConfigError traceback: the process group started before the command's error handling."""
    from s1fast.rl.__main__ import main
    assert main(["--model", "x", "--device", "cuda"]) == 2
    assert capsys.readouterr().err.startswith("error: --device cuda was asked for but torch sees no CUDA GPU")


def test_reward_curve_without_matplotlib_is_skipped_with_a_notice(tmp_path, monkeypatch, capsys):
    """matplotlib is optional ('skipped with a notice'), but the RL run's reward curve raised ImportError at its
    very end, after the export."""
    import sys

    from s1fast.rl.loop import plot_rewards
    path = tmp_path / "metrics.jsonl"
    path.write_text(json.dumps({"step": 1, "reward_mean": 0.5}) + "\n")
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib raises ImportError
    assert plot_rewards(str(path)) is None
    assert "reward_curve.png skipped: matplotlib is not installed" in capsys.readouterr().out


def test_a_full_disk_leaves_no_partial_reward_curve(tmp_path, monkeypatch, capsys):
    """plot_rewards kept its own copy of the loss curve's plotting less the write-whole, so a full disk left a
    partial reward_curve.png (and a ready one was truncated); both now save through metrics.save_figure."""
    import errno

    import matplotlib.figure

    from s1fast.rl.loop import plot_rewards
    path = tmp_path / "metrics.jsonl"
    path.write_text(json.dumps({"step": 1, "reward_mean": 0.5, "accuracy": 0.5}) + "\n")
    assert plot_rewards(str(path)) == str(tmp_path / "reward_curve.png")
    before = (tmp_path / "reward_curve.png").read_bytes()

    def full(self, out, *a, **k):
        with open(out, "wb") as f:
            f.write(b"\x89PNG")
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", full)
    assert plot_rewards(str(path)) is None
    assert "reward_curve.png skipped: No space left on device; metrics.jsonl has every iteration" in \
        capsys.readouterr().out
    assert sorted(os.listdir(tmp_path)) == ["metrics.jsonl", "reward_curve.png"]
    assert (tmp_path / "reward_curve.png").read_bytes() == before       # the last good curve, whole
