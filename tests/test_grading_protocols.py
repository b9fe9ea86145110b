"""Named grading protocols: each harness's extraction on hand-written cases taken from its code, and the
measured agreement with SkyThought's published verdicts on real model outputs (s1fast/assets/data)."""
import json
import os

import pytest

from s1fast import grading, protocols
from s1fast.eval_inspect import agreement, agreement_main
from s1fast.protocols import PROTOCOLS, protocol

SAMPLE = os.path.join(os.path.dirname(grading.__file__), "assets", "data", "grader_agreement.jsonl")
S1_OUT = "<|im_start|>think\nlet me add: 20+3\n<|im_start|>answer\n"


@pytest.mark.parametrize("text, gold, pred, ok", [
    (S1_OUT + "Answer: 023", "23", "023", True),                         # integers compare as integers
    (S1_OUT + "So \\boxed{\\frac{1}{2}}", "\\frac{1}{2}", "\\frac{1}{2}", True),
    (S1_OUT + "So \\boxed{\\frac{1}{2}}", "0.5", "\\frac{1}{2}", False),  # no GPT-4o-mini judge: exact strings
    (S1_OUT + "Answer: 12\nAnswer: 13", "13", "12\nAnswer: 13", False),  # (.*) with re.DOTALL: all after the first
    ("<|im_start|>think\n1: 4+7=1\n<|im_start|>answer\nFinal Answer: 1", "1", "1", True),
    ("<|im_start|>think\nno answer yet, 42", "42", "no answer yet, 42", False),  # split on <|im_start|>, drop a line
    ("<|im_start|>think\nx<|im_start|>answer \\boxed{7}", "7", "7", True),   # no newline after the marker
])
def test_s1_protocol_cases(text, gold, pred, ok):
    g = protocol("s1").grade(text, gold)
    assert (g["pred"], g["correct"]) == (pred, ok)


@pytest.mark.parametrize("text, gold, pred, ok", [
    ("... so the angle is \\boxed{45^\\circ}.", "45", "45^\\circ", True),
    ("We get 3 and then 12. So the answer is 12.", "12", "12", True),        # "he answer is"
    ("the totals are 3 and 7", "7", "7", True),                              # the last number
    ("\\boxed{50}", "0.5", "50", True),                                      # the percentage rule
    ("\\boxed{\\dfrac{1}{2}}", "0.5", "\\dfrac{1}{2}", True),
    ("\\boxed{x^5 - x^4 + 1}", "x^5-x^4+1", "x^5 - x^4 + 1", True),
    ("\\boxed{0.3333}", "\\frac{1}{3}", "0.3333", False),
    ("no digits here", "5", None, False),
    ("\\boxed{7}", "1" * 400, "7", False),          # float() of the reference is inf: inf - 7 <= 1e-4 * inf held
    ("\\boxed{7}", "1e400", "7", False),
    ("\\boxed{1e400}", "1e500", "1e400", True),    # the harness's isclose(inf, inf)
])
def test_skythought_protocol_cases(text, gold, pred, ok):
    g = protocol("skythought").grade(text, gold)
    assert (g["pred"], g["correct"]) == (pred, ok)


@pytest.mark.parametrize("text, gold, ok", [
    ("\\boxed{\\frac{1}{2}}", "0.5", True),
    (S1_OUT + "Final Answer: 9", "9", True),
    ("the same answer: $-2 + 7i$.", "-2+7i", True),
    ("\\boxed{\\{1,2\\}}", "\\{2,1\\}", True),
    ("\\boxed{3}", "4", False),
])
def test_math_verify_protocol_cases(text, gold, ok):
    assert protocol("math-verify").grade(text, gold)["correct"] is ok


def test_unknown_protocol_and_versions():
    with pytest.raises(ValueError, match="choose one of s1, skythought, math-verify"):
        protocol("lighteval")
    v = grading.versions()
    assert v["math-verify"] and v["sympy"]


def _disagreements(name):
    rows = [json.loads(x) for x in open(SAMPLE)]
    assert len(rows) == 200
    dis = agreement(rows, name)
    assert dis == [r for r in rows if PROTOCOLS[name].grade(r["text"], r["gt"])["correct"] != r["harness_correct"]]
    return rows, dis


def test_agreement_with_skythought_verdicts():
    """bench/RESULTS.md states these numbers and explains each disagreement left."""
    rows, dis = _disagreements("skythought")
    # one: the harness normalised the reference ("east") to an empty string and an empty prediction matched it
    assert [r["id"] for r in dis] == ["math500/Sky-T1-math-correct-5K-27B/97"] and dis[0]["gt"] == ""
    rows, dis = _disagreements("math-verify")
    # 28, 73: an unboxed final answer the harness reads as its last number; 34, 41: cut-off outputs where
    # math-verify takes an intermediate expression; 97: the empty reference
    assert sorted(int(r["id"].rsplit("/", 1)[1]) for r in dis) == [28, 34, 41, 73, 97]
    assert all(r["benchmark"] == "math500" for r in dis)
    rows, dis = _disagreements("s1")
    assert len(rows) - len(dis) >= 160
    # s1's harness sends every answer that is not an integer on both sides to a GPT-4o-mini judge, which is
    # not reproduced (exact strings instead): every disagreement left is such a case
    for r in dis:
        pred = protocols.s1_extract(r["text"])
        assert not (pred.isdigit() and r["gt"].isdigit()), r["id"]


def test_agreement_cli(capsys):
    assert agreement_main([]) == 0
    out = capsys.readouterr().out
    assert "| skythought | 199 / 200 (99.5%) |" in out and "| math-verify | 195 / 200 (97.5%) |" in out
