"""s1fast.eval mechanics with a rule-following stand-in model on the bundled real eval sample.

The stand-in thinks "A" until it has written K of them, then ends its thinking (<|im_start|>); after a
forced "Wait" its first choice is to stop again, so the sampler's mask makes it write one more "A".
In the answer phase it writes " \\boxed{204}" and <|im_end|>. Thinking tokens are therefore known
exactly for every budget and num_wait, and only problems whose answer is 204 are right.
"""
import itertools
import json
import math
import os
import sys
from types import SimpleNamespace

import pytest
import torch
from transformers import AutoTokenizer

from s1fast.eval import (DEFAULT_DATA, _chunks, check_unique_ids, evaluate, majority, mean_and_se, pass_at_k,
                         read_problems, table, write_outputs)
from s1fast.generate import BUNDLED_TOKENIZER, GenerationConfig

V = 151936
A, IM_START, IM_END, ANSWER, WAIT = 32, 151644, 151645, 9217, 14190
K = 6


@pytest.fixture(scope="module")
def tok():
    return AutoTokenizer.from_pretrained(BUNDLED_TOKENIZER)


class RuleModel:
    def __init__(self, tok):
        self.answer = tok.encode(" \\boxed{204}", add_special_tokens=False) + [IM_END]

    def new_kv_cache(self, batch_size, max_len, dtype=None, device=None):
        return SimpleNamespace(seen=[[] for _ in range(batch_size)])

    def next_prefs(self, seen):
        think = max(i for i in range(len(seen) - 1) if seen[i:i + 2] == [IM_START, 26865]) + 2
        if ANSWER in seen[think:]:
            end = think + seen[think:].index(ANSWER) + 1
            if seen[end:end + 4] == [198, 19357, 21806, 25]:
                end += 4
            return [self.answer[len(seen) - end]]
        a_count = seen[think:].count(A)
        return [IM_START, A] if a_count >= K else [A]

    def decode(self, input_ids, cache, lengths=None, last_only=False):
        n, t = input_ids.shape
        logits = torch.zeros(n, t, V)
        for b in range(n):
            k = int(lengths[b])
            if k:
                cache.seen[b] += input_ids[b, :k].tolist()
                for r, tid in enumerate(self.next_prefs(cache.seen[b])):
                    logits[b, k - 1, tid] = 10.0 - r
        return logits[torch.arange(n), (torch.as_tensor(lengths) - 1).clamp(min=0)] if last_only else logits


def test_read_problems_bundled_sample_and_errors(tmp_path):
    rows = read_problems(DEFAULT_DATA)
    assert len(rows) == 110 and rows[0]["answer"] == "204" and rows[0]["source"] == "aime24:0"
    assert read_problems(DEFAULT_DATA, limit=3)[2]["answer"] == "371"
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"problem": "1+1?", "gt": "2"}\n{"question": "x"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: no answer field"):
        read_problems(str(bad))
    assert read_problems(str(bad), limit=1) == [{"id": f"{bad}:1", "question": "1+1?", "answer": "2",
                                                 "source": f"{bad}:1"}]
    twice = tmp_path / "twice.jsonl"      # a resume keyed by id gave the second problem the first one's record
    twice.write_text('{"id": 1, "problem": "1+1?", "answer": "2"}\n{"id": 2, "problem": "2+2?", "answer": "4"}\n'
                     '{"id": 1, "problem": "3+3?", "answer": "6"}\n')
    with pytest.raises(ValueError, match=r"twice.jsonl:3: id '1' again \(.*twice.jsonl:1 has it\)"):
        check_unique_ids(read_problems(str(twice)))


def test_evaluate_counts_accuracy_and_thinking_tokens(tok, tmp_path):
    problems = read_problems(DEFAULT_DATA, limit=3)          # answers 204, 113, 371
    cfg = GenerationConfig(max_answer_tokens=8, batch_size=2, max_total_tokens=4096)
    res = evaluate(RuleModel(tok), tok, problems, budgets=[4, 100], num_waits=[0, 2], config=cfg, protocol="s1")
    rows = {(r["num_wait"], r["budget"]): r for r in res["rows"]}
    # budget 4: capped at 4 "A"s, answer forced with "Final Answer:"; budget 100: K "A"s (+ "Wait", "A" per wait)
    assert rows[(0, 4)]["mean_thinking_tokens"] == 4 and rows[(0, 4)]["capped_frac"] == 1
    assert rows[(0, 100)]["mean_thinking_tokens"] == K and rows[(0, 100)]["capped_frac"] == 0
    assert rows[(2, 100)]["mean_thinking_tokens"] == K + 2 * 2 and rows[(2, 100)]["mean_waits"] == 2
    assert rows[(2, 4)]["mean_waits"] == 0
    for r in res["rows"]:
        assert (r["correct"], r["n"]) == (1, 3) and r["accuracy"] == pytest.approx(1 / 3)
        assert r["pass@1_se"] == pytest.approx(math.sqrt(((2 / 3) ** 2 + 2 * (1 / 3) ** 2) / 2 / 3))
    assert res["protocol"] == "s1" and res["grader_versions"]["math-verify"]
    g = [x for x in res["records"] if x["budget"] == 4 and x["num_wait"] == 0]
    assert [x["extracted"] for x in g] == [["204"]] * 3 and [x["verdicts"] for x in g] == [[True], [False], [False]]
    assert g[0]["samples"][0].endswith("\n<|im_start|>answer\nFinal Answer: \\boxed{204}")

    paths = write_outputs(res, str(tmp_path / "out"), "rule model")
    summary = json.load(open(paths["results"]))
    assert summary["rows"] == res["rows"] and "records" not in summary and summary["protocol"] == "s1"
    with open(paths["plot"], "rb") as fh:
        assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
    assert os.path.getsize(paths["plot"]) > 5000
    md = open(paths["table"]).read()
    assert "| 2 | 100 | 33.3% | 33.3 | 1 / 3 | 33.3% | 10.0 | 2.00 | 0% |" in md and "protocol: s1" in md


def test_samples_seeds_and_majority(tok):
    problems = read_problems(DEFAULT_DATA, limit=3)
    cfg = GenerationConfig(max_answer_tokens=8, batch_size=4, max_total_tokens=4096, seed=10)
    res = evaluate(RuleModel(tok), tok, problems, budgets=[100], num_waits=[0], config=cfg, samples=3,
                   protocol="math-verify")
    assert [r["seeds"] for r in res["records"]] == [[10, 11, 12], [13, 14, 15], [16, 17, 18]]
    row = res["rows"][0]
    assert row["samples"] == 3 and row["correct"] == 3 and row["pass@2"] == pytest.approx(1 / 3)
    assert row["majority"] == pytest.approx(1 / 3)


def test_table_format():
    t = table([{"num_wait": 0, "budget": "auto", "accuracy": 0.5, "correct": 1, "n": 2, "mean_thinking_tokens": 12.25,
                "mean_waits": 0, "capped_frac": 0.5}])
    assert t.splitlines()[-1] == "| 0 | auto | 50.0% | 0.0 | 1 / 2 | 50.0% | 12.2 | 0.00 | 50% |"


def test_pass_at_k_matches_brute_force():
    for n in range(1, 7):
        for c in range(n + 1):
            for k in range(1, n + 1):
                subsets = list(itertools.combinations([1] * c + [0] * (n - c), k))
                assert pass_at_k(n, c, k) == pytest.approx(sum(any(s) for s in subsets) / len(subsets))
    with pytest.raises(ValueError):
        pass_at_k(3, 4, 1)


def test_standard_error_and_majority_direct():
    vals = [1.0, 0.0, 0.5, 0.25]
    m = sum(vals) / 4
    se = math.sqrt(sum((v - m) ** 2 for v in vals) / 3) / 2
    assert mean_and_se(vals) == pytest.approx((m, se))
    assert mean_and_se([0.5]) == (0.5, 0.0)
    assert majority(["3", None, "5", "5", "3"]) == "3" and majority(["1", "2", "2"]) == "2"
    assert majority([None, None]) is None
    assert _chunks([0, 1, 2, 5, 6, 9], 2) == [[0, 1], [2], [5, 6], [9]]


def test_toy_problems_are_held_out():
    from s1fast.data import toy
    probs = read_problems("toy:chain:20")
    train = {r["question"] for r in toy.make_problems("chain", 2000, seed=0)}
    assert len(probs) == 20 and not train & {p["question"] for p in probs}


def test_cli_errors_before_compute_resume_and_compare(tok, tmp_path, monkeypatch, capsys):
    import s1fast.eval as ev
    (tmp_path / "config.json").write_text("{}")    # a model folder to the checks; the model itself is faked
    ro = tmp_path / "ro"
    ro.mkdir()
    os.chmod(ro, 0o500)
    assert ev.main(["--model", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x")]) == 2
    assert "no such folder" in capsys.readouterr().err and not os.path.exists(tmp_path / "x")
    if not os.access(ro, os.W_OK):   # root can write anywhere
        assert ev.main(["--model", str(tmp_path), "--out", str(ro / "x")]) == 2
        assert "not writable" in capsys.readouterr().err
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert ev.main(["--model", str(tmp_path), "--out", str(blocker / "x")]) == 2
    assert "not writable" in capsys.readouterr().err
    calls = []

    def fake_open(args):
        calls.append(1)
        return RuleModel(tok), tok, "native"
    monkeypatch.setattr(ev, "open_backend", fake_open)
    out = tmp_path / "a"
    argv = ["--model", str(tmp_path), "--limit", "3", "--budgets", "4,100", "--num-wait", "0", "--max-answer-tokens", "8",
            "--max-total-tokens", "4096", "--protocol", "s1", "--out", str(out)]
    assert ev.main(argv) == 0
    lines = open(out / "problems.jsonl").read().splitlines()
    assert len(lines) == 6
    # an interrupted run: drop the last two records; the rerun produces only those
    open(out / "problems.jsonl", "w").write("\n".join(lines[:4]) + "\n")
    produced = []
    real = ev.evaluate
    monkeypatch.setattr(ev, "evaluate", lambda *a, **k: real(*a, **{**k, "sink": lambda r: (produced.append(r),
                                                                                         k["sink"](r))}))
    assert ev.main(argv) == 0
    assert len(produced) == 2 and len(open(out / "problems.jsonl").read().splitlines()) == 6
    assert ev.main(argv[:-1] + [str(out)] + ["--samples", "2"]) == 2      # other settings: refused
    assert "other settings" in capsys.readouterr().err
    b = tmp_path / "b"
    assert ev.main(argv[:-3] + ["math-verify", "--out", str(b)]) == 0
    capsys.readouterr()
    assert ev.main(["compare", str(out), str(b)]) == 0
    text = capsys.readouterr().out
    assert "0 of 6 problem-settings in both differ" in text


@pytest.mark.parametrize("flags, says", [
    (["--num-wait", "0,-1"], "--num-wait values must be >= 0, got -1"),
    (["--min-thinking-tokens", "-2"], "--min-thinking-tokens must be >= 0"),
    (["--max-answer-tokens", "-1"], "--max-answer-tokens must be >= 0"),
    (["--limit", "-1"], "--limit must be at least 1"), (["--limit", "0"], "--limit must be at least 1"),
    (["--batch-size", "0"], "--batch-size must be positive"), (["--max-total-tokens", "0"], "--max-total-tokens must"),
    (["--temperature", "-1"], "--temperature must be >= 0"), (["--top-p", "0"], "--top-p in (0, 1]"),
    (["--extension", ""], "--extension must be a non-blank string")])
def test_cli_bad_flags_are_error_lines_before_any_output(tmp_path, capsys, flags, says):
    import s1fast.eval as ev
    (tmp_path / "config.json").write_text("{}")
    out = tmp_path / "out"
    # these ran on with nonsense or ended in a traceback (ZeroDivisionError, BudgetForcer's ValueError, range())
    assert ev.main(["--model", str(tmp_path), "--data", "toy:chain:2", "--out", str(out)] + flags) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and says in err and not out.exists()


@pytest.mark.parametrize("flag", ["--budgets", "--num-wait"])
def test_cli_empty_lists_are_usage_errors(tmp_path, capsys, flag):
    import s1fast.eval as ev
    with pytest.raises(SystemExit) as e:     # was: max() arg is an empty sequence, after the model had loaded
        ev.main(["--model", str(tmp_path), flag, ",", "--out", str(tmp_path / "out")])
    assert e.value.code == 2 and "give at least one value" in capsys.readouterr().err


def test_cli_keeps_records_a_rerun_cannot_resume_and_resumes_after_a_cut_line(tok, tmp_path, monkeypatch, capsys):
    import s1fast.eval as ev
    (tmp_path / "config.json").write_text("{}")
    monkeypatch.setattr(ev, "open_backend", lambda args: (RuleModel(tok), tok, "native"))
    out = tmp_path / "a"
    argv = ["--model", str(tmp_path), "--limit", "2", "--budgets", "4", "--max-answer-tokens", "8",
            "--max-total-tokens", "4096", "--protocol", "s1", "--out", str(out)]
    # a prompt the context cannot hold: one error line naming the problem, and nothing written to resume from
    assert ev.main(argv + ["--max-total-tokens", "40"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: 2 problem(s) too long, nothing generated: aime24:0: the prompt has")
    assert not (out / "run.json").exists()
    assert ev.main(argv) == 0                          # the same folder then runs (it was not left with other settings)
    lines = (out / "problems.jsonl").read_text().splitlines()
    # a crash in the middle of writing the second record: the rerun drops the cut line and produces it again
    (out / "problems.jsonl").write_text(lines[0] + "\n" + lines[1][:30])
    assert ev.main(argv) == 0
    assert (out / "problems.jsonl").read_text().splitlines() == lines
    # other settings: refused, naming what differs
    assert ev.main(argv + ["--temperature", "0.5"]) == 2
    assert "decoding.temperature 0.0 there, 0.5 now" in capsys.readouterr().err
    # records without the run.json that says how they were made: refused, not emptied
    (out / "run.json").unlink()
    assert ev.main(argv) == 2
    assert "run.json (the settings they were made with) is missing" in capsys.readouterr().err
    assert (out / "problems.jsonl").read_text().splitlines() == lines



def test_a_resume_may_change_how_the_run_is_batched_and_how_its_paths_are_written(tok, tmp_path, monkeypatch, capsys):
    """--batch-size / the prefill chunk do not change a record (each prompt is seeded by its index): a rerun
    with another batch size (after an out-of-memory, say) resumes, as `generate --out` does; it was refused."""
    import s1fast.eval as ev
    (tmp_path / "config.json").write_text("{}")
    monkeypatch.setattr(ev, "open_backend", lambda args: (RuleModel(tok), tok, "native"))
    out = tmp_path / "a"
    argv = ["--model", str(tmp_path), "--limit", "3", "--budgets", "4", "--max-answer-tokens", "8",
            "--max-total-tokens", "4096", "--protocol", "s1", "--out", str(out)]
    assert ev.main(argv + ["--batch-size", "4"]) == 0
    lines = (out / "problems.jsonl").read_text().splitlines()
    (out / "problems.jsonl").write_text(lines[0] + "\n")          # interrupted after its first record
    capsys.readouterr()
    assert ev.main(argv + ["--batch-size", "1"]) == 0, capsys.readouterr().err
    assert (out / "problems.jsonl").read_text().splitlines() == lines
    assert ev.main(argv + ["--batch-size", "1", "--seed", "3"]) == 2      # what a record depends on: refused
    assert "decoding.seed 0 there, 3 now" in capsys.readouterr().err
    # the same folders written another way (a trailing slash, ./): the same run
    assert ev.main([a + "/" if a == str(tmp_path) else a for a in argv]) == 0, capsys.readouterr().err
    # was: another --tokenizer (the prompts' ids) resumed the folder as the same run
    assert ev.main(argv + ["--tokenizer", BUNDLED_TOKENIZER]) == 2
    assert "tokenizer None there" in capsys.readouterr().err


def test_compare_and_show_read_a_run_that_is_still_writing(tok, tmp_path, monkeypatch, capsys):
    import s1fast.eval as ev
    (tmp_path / "config.json").write_text("{}")
    monkeypatch.setattr(ev, "open_backend", lambda args: (RuleModel(tok), tok, "native"))
    out = tmp_path / "a"
    assert ev.main(["--model", str(tmp_path), "--limit", "2", "--budgets", "4", "--max-answer-tokens", "8",
                    "--max-total-tokens", "4096", "--out", str(out)]) == 0
    lines = (out / "problems.jsonl").read_text().splitlines()
    assert "eval:" not in capsys.readouterr().err     # no progress bar off a terminal
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    assert ev.main(["--model", str(tmp_path), "--limit", "2", "--budgets", "4,8", "--max-answer-tokens", "8",
                    "--max-total-tokens", "4096", "--out", str(tmp_path / "b")]) == 0
    err = capsys.readouterr().err
    assert "eval: 100%" in err and "4/4" in err and "num_wait=0 budget=8: pass@1" in err, err
    (out / "problems.jsonl").write_text(lines[0] + "\n" + lines[1][:40])   # a record half written
    capsys.readouterr()
    assert ev.main(["compare", str(out), str(out)]) == 0   # was: error: ...problems.jsonl:2: not a JSON line
    assert "0 of 1 problem-settings in both differ" in capsys.readouterr().out
    assert ev.main(["show", str(out)]) == 0
    assert ev.main(["show", str(out), "-n", "0"]) == 2 and "-n must be at least 1" in capsys.readouterr().err
    (out / "problems.jsonl").write_text(lines[0][:40] + "\n" + lines[1] + "\n")   # a bad line inside: still an error
    assert ev.main(["show", str(out)]) == 2 and "problems.jsonl:1: not valid JSON" in capsys.readouterr().err


def test_the_scaling_plot_is_optional_and_written_whole(tmp_path, monkeypatch, capsys):
    """matplotlib is the optional 'plot' extra, but an evaluation without it ended, after all its generation,
    in an ImportError traceback at scaling.png (and a full disk in an OSError one, with a partial PNG): now a
    notice on stderr, the table and results.json written (s1fast.figure)."""
    import errno

    import matplotlib.figure
    row = {"num_wait": 0, "budget": 100, "accuracy": 0.5, "correct": 1, "n": 2, "mean_thinking_tokens": 10.0,
           "mean_waits": 0.0, "capped_frac": 0.0}
    res = {"rows": [row], "protocol": "s1", "protocol_source": "test", "samples": 1, "grader_versions": {}}

    def full(self, out, *a, **k):
        with open(out, "wb") as f:
            f.write(b"\x89PNG")
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", full)
    paths = write_outputs(res, str(tmp_path / "full"), "t")
    assert "scaling.png skipped: No space left on device; table.md has the numbers" in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path / "full")) == ["results.json", "table.md"]
    monkeypatch.setitem(sys.modules, "matplotlib", None)          # import matplotlib raises ImportError
    paths = write_outputs(res, str(tmp_path / "none"), "t")
    assert "scaling.png skipped: matplotlib is not installed" in capsys.readouterr().err
    assert not os.path.exists(paths["plot"]) and "| 0 | 100 | 50.0% |" in open(paths["table"]).read()
