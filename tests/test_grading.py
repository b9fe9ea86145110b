"""Answer extraction and equivalence, table-driven on real answer strings.

Gold answers are MATH-500 / AIME 2024 / GPQA ground truths (e.g. from the SkyThought evaluation outputs
listed in s1fast/assets/data/SOURCES.md); predictions are forms a model writes, equal or not.
"""
import pytest

from s1fast import grading
from s1fast.grading import extract_answer, grade, is_equiv, last_boxed, normalize

EXTRACT = [
    # (model output, extracted answer)
    ("Thus, the final answer is:\n\n\\[\n\\boxed{\\left(3,\\ \\frac{\\pi}{2}\\right)}\n\\] \n<|end_of_solution|>",
     "\\left(3,\\ \\frac{\\pi}{2}\\right)"),
    ("is \\( \\boxed{\\frac{14}{3}} \\). \n\n<|end_of_solution|>", "\\frac{14}{3}"),
    ("**Final Answer**\n\n\\[ \\boxed{\\text{Evelyn}} \\]", "\\text{Evelyn}"),
    ("first \\boxed{3} then \\boxed{\\frac{\\sqrt{3}}{\\sqrt{3}+\\frac{1}{2}}}",
     "\\frac{\\sqrt{3}}{\\sqrt{3}+\\frac{1}{2}}"),
    ("\\boxed{\\{1, 2\\}}", "\\{1, 2\\}"),
    ("so it is $\\boxed 5$.", "5"),
    ("\\fbox{204}", "204"),
    ("<|im_start|>answer\nFinal Answer: 204", "204"),
    ("Answer: $\\frac{1}{2}$.", "\\frac{1}{2}"),
    ("answer: (B)\nsome trailing text", "(B)"),
    ("**Answer:** 113", "113"),
    ("Final Answer: The final answer is $371$. I hope it is correct.", "371"),
    ("Answer: 3\nthen later\nAnswer: 5", "5"),
    ("Final Answer: \\boxed{25}", "25"),
    ("The answer is 42 but no marker", None),
    ("", None),
    ("\\boxed{unclosed", None),
]


@pytest.mark.parametrize("text,expected", EXTRACT)
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


def test_last_boxed_nesting_depth():
    assert last_boxed("\\boxed{a{b{c{d}}}e}") == "a{b{c{d}}}e"
    assert last_boxed("no box") is None


# (prediction, gold): must be equivalent
EQUAL = [
    ("204", "204"), ("0204", "204"), ("204.", "204"), ("$204$", "204"), ("204 \\text{ minutes}", "204"),
    ("\\dfrac{14}{3}", "\\frac{14}{3}"), ("\\frac{14}{3}", "\\frac{14}{3}"), ("\\frac{270}{7}", "\\frac{270}7"),
    ("\\left(3,\\ \\frac{\\pi}{2}\\right)", "(3,\\frac{\\pi}{2})"),
    ("\\text{Evelyn}", "Evelyn"), ("ellipse", "ellipse"),
    ("3\\sqrt{13}", "3\\sqrt{13}"), ("11\\sqrt2", "11\\sqrt{2}"),
    ("(-\\infty, 0]", "(-\\infty,0]"), ("\\left( \\frac{3}{5}, \\frac{8}{3} \\right]", "(\\frac{3}{5},\\frac{8}{3}]"),
    ("4210_{5}", "4210_5"), ("52_8", "52_8"),
    ("\\begin{pmatrix} -1 & 0 \\\\ 0 & -1 \\end{pmatrix}", "\\begin{pmatrix}-1&0\\\\0&-1\\end{pmatrix}"),
    ("1, -2", "-2,1"),                 # "enter all solutions": any order
    ("3, 7, 5", "3,5,7"),
    ("58500", "58,500"),
    ("(E)", "(E)"), ("E", "(E)"), ("\\text{(C)}", "(C)"), ("(C) 17", "(C)"), ("B. 3.2 eV", "B"), ("B", "B"),
    ("x = 5", "5"), ("k=2k+2", "2k+2"),
    ("50\\%", "50"), ("30^\\circ", "30"),
    ("-50", "-50"), (".5", "0.5"),
]

# (prediction, gold): equal only through sympy
EQUAL_SYMPY = [
    ("0.5", "\\frac{1}{2}"), ("1.25", "\\frac{5}{4}"), ("\\frac{5}{4}", "1.25"),
    ("2\\sqrt{2}", "\\sqrt{8}"), ("\\frac{\\sqrt{3}}{3}", "\\frac{1}{\\sqrt{3}}"),
    ("-\\frac{35}{9}", "\\frac{-35}{9}"), ("\\frac{\\pi}{2}", "\\pi/2"),
    ("(3, \\pi/2)", "(3,\\frac{\\pi}{2})"), ("x^5 - x^4 + x^3 - x^2 + x - 1", "x^5-x^4+x^3-x^2+x-1"),
    ("2(k+1)", "2k+2"), ("6+9i", "9i+6"), ("\\frac{11+9a}{20}", "\\frac{9a+11}{20}"),
    ("\\sqrt[3]{8}", "2"), ("10^{2}", "100"), ("(2, \\infty)", "(2,\\infty)"), ("\\frac12", "0.5"),
]

# (prediction, gold): must NOT be equivalent
DIFFERENT = [
    ("6", "\\frac{3}{56}"), ("2", "\\sqrt{51}"), ("3-2i", "6-5i"), ("1", "\\pi"), ("7", "-2+7i"),
    ("5", "-125"), ("40", "70\\sqrt{2}"), ("-29", "(15,-29)"), ("\\frac{11}{36}", "\\frac{13}{18}"),
    ("7", "7\\pi"), ("12", "12\\pi"), ("5850", "58,500"), ("2", "-2"), ("\\frac{5}{11}", "\\frac{10}{11}"),
    ("(3,4)", "(3,4]"), ("[3,4]", "(3,4]"), ("(2,1)", "(1,2)"), ("0.333", "\\frac{1}{3}"), ("1.414", "\\sqrt{2}"),
    ("100", "10"), ("10", "100"), ("2", "\\frac{1}{2}"), ("\\sqrt{2}", "2"), ("3, 5", "3,5,7"),
    ("C", "(B)"), ("(A)", "B"), ("AB", "A"), ("definitely8000", "8000"), ("9customers", "9"),
    ("x^3+3x+6", "x^3+3x-6"),
    ("\\begin{pmatrix}1&0\\\\0&1\\end{pmatrix}", "\\begin{pmatrix}-1&0\\\\0&-1\\end{pmatrix}"),
    ("odd", "even"), (None, "5"), ("", "5"), ("__import__('os').system('true')", "0"),
    ("2^{99999}", "3"),
]


@pytest.mark.parametrize("pred,gold", EQUAL)
@pytest.mark.parametrize("backend", ["sympy", "string"])
def test_equal(pred, gold, backend):
    assert is_equiv(pred, gold, backend=backend)


@pytest.mark.parametrize("pred,gold", EQUAL_SYMPY)
def test_equal_with_sympy(pred, gold):
    assert is_equiv(pred, gold, backend="sympy")


@pytest.mark.parametrize("pred,gold", [("0.5", "\\frac{1}{2}"), ("2\\sqrt{2}", "\\sqrt{8}"), ("2(k+1)", "2k+2")])
def test_string_backend_is_only_a_normaliser(pred, gold):
    # Without sympy these are not shown equal: the fallback under-credits, it never guesses.
    assert not is_equiv(pred, gold, backend="string")


@pytest.mark.parametrize("pred,gold", DIFFERENT)
@pytest.mark.parametrize("backend", ["sympy", "string"])
def test_not_equal(pred, gold, backend):
    assert not is_equiv(pred, gold, backend=backend)


def test_normalize_examples():
    assert normalize("\\dfrac12") == "\\frac{1}{2}"
    assert normalize("\\left( 3 , \\ \\tfrac{\\pi}{2} \\right)") == "(3,\\frac{\\pi}{2})"
    assert normalize("42 \\mbox{ inches}") == "42"
    assert normalize("5x-7y+11z+4=0") == "5x-7y+11z+4=0"


def test_backend_in_use_and_math_verify_path(monkeypatch):
    import importlib.util
    has_mv = importlib.util.find_spec("math_verify") is not None
    has_sympy = importlib.util.find_spec("sympy") is not None
    assert grading.BACKEND == ("math-verify" if has_mv else "sympy" if has_sympy else "string")
    calls = []
    monkeypatch.setattr(grading, "_mv_parse", lambda s, **kw: calls.append(s) or s)
    monkeypatch.setattr(grading, "_mv_verify", lambda g, p, **kw: g == p.replace("0.5", "\\frac{1}{2}"))
    assert is_equiv("0.5", "\\frac{1}{2}", backend="math-verify")
    assert calls == ["$\\frac{1}{2}$", "$0.5$"]
    assert not is_equiv("0.4", "\\frac{1}{2}", backend="math-verify")
    assert is_equiv("(B)", "B", backend="math-verify")        # letters never go to math-verify


def test_grade_reports_prediction_and_grader():
    r = grade("<|im_start|>answer\nFinal Answer: $\\boxed{\\dfrac{3}{2}}$", "\\frac{3}{2}", backend="sympy")
    assert r == {"pred": "\\dfrac{3}{2}", "correct": True, "grader": "sympy"}
    assert grade("no answer here", "3")["correct"] is False
