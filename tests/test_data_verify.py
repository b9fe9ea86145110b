"""`data verify` on answers and references that used to crash it, hang it or be counted correct: each is now a
counted verdict in the summary (no_reference, several_answers, grader_error), never a traceback or a keep."""
import json
import time

import pytest

from s1fast import grading
from s1fast.data.__main__ import main as data_main
from s1fast.data.pipeline.verify import grade_row


def _rows(pairs):
    return [{"question": f"Question number {i} about primes?", "answer": gold, "attempt": att, "sample": 0}
            for i, (att, gold) in enumerate(pairs)]


def _verify(tmp_path, pairs, *extra):
    data = tmp_path / "g.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in _rows(pairs)))
    rc = data_main(["verify", "--data", str(data), "--out", str(tmp_path / "v.jsonl"), "--graded",
                    str(tmp_path / "all.jsonl"), "--summary", str(tmp_path / "s.json"), "--no-progress", *extra])
    graded = {json.loads(x)["question"]: json.loads(x)["verdict"] for x in open(tmp_path / "all.jsonl")}
    verdicts = [graded[r["question"]] for r in _rows(pairs)]      # in the order of ``pairs``
    return rc, verdicts, json.load(open(tmp_path / "s.json"))


@pytest.mark.parametrize("gold", ["", "\\boxed{}", "\\frac{1}{2"])
def test_unusable_reference_is_no_reference(gold):
    g = grade_row({"question": "q?", "answer": gold, "attempt": "\\boxed{}"})
    assert (g["verdict"], g["correct"]) == ("no_reference", None)


def test_grader_exception_is_a_counted_verdict(monkeypatch):
    def boom(text, gold):
        raise ValueError("Exceeds the limit (4300 digits) for integer string conversion")
    monkeypatch.setattr(grading, "grade", boom)
    g = grade_row({"question": "q?", "answer": "5", "attempt": "\\boxed{5}"})
    assert (g["verdict"], g["correct"]) == ("grader_error", False) and "4300 digits" in g["grader_error"]


def test_pathological_answers_do_not_stop_or_fool_verify(tmp_path):
    pairs = [("\\boxed{5}", "5"), ("\\boxed{" * 20000, "5"), ("\\boxed{3} or \\boxed{5}", "5"), ("\\boxed{5}", ""),
             ("\\boxed{B or C}", "B"), ("\\boxed{" + "7" * 5000 + "}", "7" * 5000)]
    t0 = time.perf_counter()
    rc, verdicts, summary = _verify(tmp_path, pairs, "--keep", "all")
    assert rc == 0 and time.perf_counter() - t0 < 60
    assert verdicts.count("correct") == 1 + (grading.BACKEND != "math-verify")   # math-verify cannot read 5000 digits
    assert {"several_answers", "no_reference", "no_answer"} <= set(verdicts)
    assert summary["kept"]["several_answers"] == 1 and summary["kept"]["no_reference"] >= 1


def test_s1_protocol_on_unicode_and_huge_integers(tmp_path):
    # "²".isdigit() is True and int("²") raises; so does int() of 4300+ digits: each crashed the whole run
    rc, verdicts, _ = _verify(tmp_path, [("Answer: ²", "2"), ("Answer: " + "9" * 5000, "9" * 5000),
                                         ("Answer: 023", "23")], "--protocol", "s1", "--keep", "all")
    # the default rule counts a reference math-verify reads nothing in (5000 digits) as no_reference, here too
    huge = "no_reference" if grading.BACKEND == "math-verify" else "correct"
    assert rc == 0 and verdicts == ["wrong", huge, "correct"]


@pytest.mark.parametrize("protocol", ["s1", "skythought", "math-verify"])
@pytest.mark.parametrize("gold", ["\\\\", "1" * 4400])
def test_named_protocols_count_an_unreadable_reference_as_the_default_does(protocol, gold, tmp_path):
    # balanced, not empty, but math-verify reads nothing in it: the default path counted it no_reference, the
    # named protocols graded every answer against it "wrong" (skythought even "correct")
    default = grading.reference_problem(gold) and "no_reference"
    assert default == ("no_reference" if grading.BACKEND == "math-verify" else None)
    row = {"question": "q?", "answer": gold, "attempt": "Answer: 7"}
    assert grade_row(row)["verdict"] == grade_row(row, protocol=protocol)["verdict"] == (default or "wrong")
    rc, verdicts, summary = _verify(tmp_path, [("Answer: 7", gold), ("Answer: 7", "7")], "--protocol", protocol,
                                    "--keep", "all")
    assert rc == 0 and verdicts == [default or "wrong", "correct"]
