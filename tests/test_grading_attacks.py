"""The graders attacked as a reward hacker and an unlucky user would: answers that must not score, answers that
must not be lost, and inputs that must neither hang nor crash the grader (s1fast.grading, s1fast.protocols)."""
import threading
import time

import pytest

from s1fast import grading, protocols
from s1fast.grading import extract_answer, grade, is_equiv, last_boxed

BACKENDS = ["math-verify", "sympy", "string"]


def _in_thread(fn, *args):
    out = {}

    def run():
        try:
            out["value"] = fn(*args)
        except BaseException as e:  # noqa: BLE001 -- raised again in the test's thread
            out["error"] = e
    t = threading.Thread(target=run)
    t.start()
    t.join(120)
    assert not t.is_alive(), "the grader hung in a thread"
    if "error" in out:
        raise out["error"]
    return out["value"]


# ---- false positives --------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("text,gold", [
    ("\\boxed{B or C}", "B"), ("\\boxed{A, B, C, D}", "A"), ("\\boxed{A B C D}", "A"), ("\\boxed{(A) or (B)}", "A"),
    ("\\boxed{A/B/C/D}", "A"), ("Answer: B and C", "B"), ("\\boxed{ABCD}", "B"),
])
def test_listing_several_choices_is_not_an_answer(text, gold, backend):
    assert not grade(text, gold, backend=backend)["correct"]


@pytest.mark.parametrize("pred,gold", [("(C) 17", "(C)"), ("B. 3.2 eV", "B"), ("C. A circle", "C"), ("(D)", "D")])
def test_one_choice_with_its_text_still_counts(pred, gold):
    assert is_equiv(pred, gold, backend="string")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("text,gold", [
    ("\\boxed{3} or \\boxed{5}", "5"), ("maybe \\boxed{3}, maybe \\boxed{4}, surely \\boxed{5}", "5"),
    ("</think>\nIt is \\boxed{3}. Or rather \\boxed{5}.", "5"),
    ("\\boxed{3 \\vee 5}", "5"), ("\\boxed{x=3 \\lor x=5}", "5"), ("\\boxed{1 \\wedge 5}", "5"),
])
def test_boxing_every_candidate_is_not_rewarded(text, gold, backend):
    # math-verify itself reads several boxed answers as one set ({3, 5}), which a scalar reference never equals
    assert not grade(text, gold, backend=backend)["correct"]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("text,gold", [
    ("\\boxed{5} so the answer is \\boxed{5}", "5"), ("\\boxed{5.} Final: \\boxed{5}", "5"),
    ("<|begin_of_thought|>try \\boxed{3}<|end_of_thought|><|begin_of_solution|>\\boxed{5}", "5"),
    ("<think>maybe \\boxed{3}</think>\nSo \\boxed{5}", "5"),
    ("<|im_start|>think\nis it \\boxed{3}?\n<|im_start|>answer\nFinal Answer: \\boxed{5}", "5"),
])
def test_repeated_box_and_boxes_in_the_thinking_still_count(text, gold, backend):
    assert grade(text, gold, backend=backend)["correct"]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("text,gold", [
    ("\\boxed{[1,2]}", "1"), ("\\boxed{\\{1,2\\}}", "1"), ("\\boxed{(1,2)}", "1"), ("\\boxed{1, 2}", "1"),
    ("\\boxed{\\begin{pmatrix}1\\\\2\\end{pmatrix}}", "1"), ("\\boxed{6, 7, 42}", "42"),   # a list holding it
    ("\\boxed{nan}", "5"), ("\\boxed{NaN}", "\\infty"), ("\\boxed{\\infty}", "5"), ("\\boxed{inf}", "5"),
    ("\\boxed{}", "5"), ("\\boxed{}", ""), ("", ""), ("What is 6 times 7? We have 6 and 7.", "42"),
])
def test_containers_nan_inf_and_empty_answers_are_not_a_scalar(text, gold, backend):
    assert not grade(text, gold, backend=backend)["correct"]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("answer_text", [
    "\n<|im_start|>answer\nFinal Answer: The answer is $\\boxed{5}$.",      # s1's forced end, then the answer
    "\n<|im_start|>answer\nFinal Answer:\n5.", "</think>\n\nThe final answer is **5**.",
])
def test_the_answer_after_the_forced_end_of_thinking(answer_text, backend):
    assert grade(answer_text, "5", backend=backend)["correct"]


@pytest.mark.parametrize("backend", ["sympy", "string"])
@pytest.mark.parametrize("pred,gold", [("10^{100}", "10^{100}+1"), ("10^{30}", "10^{30}-7"),
                                       ("123456789012345678901234567890", "123456789012345678901234567891")])
def test_huge_numbers_compare_exactly(pred, gold, backend):
    assert not is_equiv(pred, gold, backend=backend)


def test_huge_numbers_skythought():
    assert not protocols.protocol("skythought").grade("\\boxed{10^{100}}", "10^{100}+1")["correct"]


@pytest.mark.parametrize("name", ["s1", "skythought", "math-verify"])
def test_empty_box_never_matches_an_empty_reference(name):
    assert not protocols.protocol(name).grade("\\boxed{}", "")["correct"]
    assert not protocols.protocol(name).grade("", "")["correct"]


@pytest.mark.parametrize("gold", ["", "  ", "\\boxed{}", "\\frac{", "\\text{unparseable}\\frac{", "$$"])
def test_unusable_reference_is_named(gold):
    assert grading.reference_problem(gold) is not None
    assert not grade("\\boxed{\\frac{}", gold)["correct"]


@pytest.mark.parametrize("gold", ["5", "\\frac{1}{2}", "Evelyn", "(B)", "\\{1, 2\\}", "x^2+1"])
def test_usable_reference(gold):
    assert grading.reference_problem(gold) is None


# ---- false negatives --------------------------------------------------------------------------------------
@pytest.mark.parametrize("text,pred", [
    ("**Final Answer**\n42", "42"), ("**Final Answer**\n\n$42$", "42"), ("The final answer is $42$.", "42"),
    ("So the answer is 42.", "42"), ("Final answer: 1,000.", "1,000"),
])
def test_unboxed_final_answers_are_extracted(text, pred):
    assert extract_answer(text) == pred


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("text,gold", [
    ("**Final Answer**\n42", "42"), ("The final answer is $1,000$.", "1000"), ("Answer: 42.", "42"),
    ("\\boxed{1000}", "1,000"),
])
def test_unboxed_final_answers_are_graded(text, gold, backend):
    assert grade(text, gold, backend=backend)["correct"]


# ---- hangs and crashes ------------------------------------------------------------------------------------
def test_many_unclosed_boxes_extract_in_linear_time():
    t0 = time.perf_counter()
    assert last_boxed("\\boxed{" * 20000) is None
    assert extract_answer("\\boxed{" * 20000 + "\\boxed{7}") == "7"
    assert time.perf_counter() - t0 < 2


@pytest.mark.parametrize("backend", BACKENDS)
def test_integers_past_pythons_digit_limit_grade(backend):
    big = "1" * 5000      # str(int(...)) raises past 4300 digits: it used to crash the grade (and `data verify`)
    g = grade(f"\\boxed{{{big}}}", big, backend=backend)
    # math-verify itself reads nothing in a 5000-digit number: a counted no_reference, never a crash
    assert (g["correct"], g.get("note")) == ((False, "no_reference") if backend == "math-verify" else (True, None))
    assert not grade(f"\\boxed{{{big}}}", "5", backend=backend)["correct"]
    assert grading.normalize("-" + "0" * 3 + big) == "-" + big


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("deep", ["\\frac{1}{" * 2000 + "2" + "}" * 2000, "\\sqrt{" * 2000 + "2" + "}" * 2000])
def test_deeply_nested_answers_do_not_raise(deep, backend):
    assert not grade("\\boxed{" + deep + "}", "5", backend=backend)["correct"]     # RecursionError in normalize


@pytest.mark.parametrize("pred,gold", [("²", "2"), ("1" * 5000, "1" * 5000), ("0" * 5000, "0")])
def test_s1_protocol_integer_rule_never_raises(pred, gold):
    protocols.s1_equal(pred, gold)   # "²".isdigit() is True but int("²") raises; 5000 digits pass int()'s limit
    assert protocols.s1_equal("1" * 5000, "1" * 5000) and protocols.s1_equal("0" * 50, "0")


@pytest.mark.parametrize("backend", ["math-verify", "sympy"])
def test_grading_in_a_thread_is_right_and_bounded(backend):
    # math-verify's time limits are SIGALRM alarms: from a thread it raises, which used to read as "wrong"
    # for every answer (rewards stuck at zero); s1fast's sympy backend had no limit at all there
    assert _in_thread(lambda: grade("\\boxed{\\frac{1}{2}}", "0.5", backend=backend)["correct"])
    assert not _in_thread(lambda: grade("\\boxed{3}", "0.5", backend=backend)["correct"])
    t0 = time.perf_counter()
    with pytest.raises(TimeoutError):
        _in_thread(lambda: grading.is_equiv("9^{9^{9^9}}", "5", backend=backend, timeout=3))
    assert time.perf_counter() - t0 < 60


def test_math_verify_protocol_in_a_thread():
    p = protocols.protocol("math-verify")
    assert _in_thread(lambda: p.grade("so \\boxed{\\frac{1}{2}}", "0.5")["correct"])


def test_a_timeout_warning_does_not_print_the_whole_answer(caplog):
    import logging
    text = "$" + "{" * 50000 + "1" + "}" * 50000 + "$"
    with caplog.at_level(logging.WARNING):
        logging.getLogger("math_verify.parser").warning(f"Timeout during parsing: {text}")
    assert caplog.records and all(len(r.getMessage()) < 400 for r in caplog.records)
