"""Named evaluation protocols: each reproduces one published harness's answer extraction and equivalence
(s1, skythought, math-verify; docs/eval.md has the sources), on top of ``s1fast.grading``."""
from __future__ import annotations

import math
import re

from .grading import TIMEOUT_S, _bounded, _equiv_norm, _mv_parse, canonical_int, last_boxed, mv_equal, normalize

# ``extract(completion)`` reads the whole completion (thinking and answer); ``equal(pred, gold)`` decides.
ANSWER_MARK = "<|im_start|>answer"
_S1_ANSWER_PATTERN = re.compile(r"(?i)Answer\s*:\s*(.*)", re.DOTALL)


def answer_section(text: str) -> str:
    """What follows the last ``<|im_start|>answer`` line (the s1 answer phase), else the whole text."""
    if ANSWER_MARK + "\n" in text:
        return text.split(ANSWER_MARK + "\n")[-1].split("<|im_end|>")[0]
    if "<|im_start|>" in text:
        tail = text.split("<|im_start|>")[-1]
        return "\n".join(tail.split("\n")[1:]) if "\n" in tail else tail
    return text


def s1_extract(text: str | None) -> str | None:
    """s1's lm-evaluation-harness tasks (aime24_nofigures, openai_math): the answer phase; the last boxed
    answer if any, else everything after the first ``Answer:`` (re.DOTALL, as the harness matches it)."""
    if not text:
        return None
    a = answer_section(text)
    box = last_boxed(a)
    if box is not None:
        return box
    matches = _S1_ANSWER_PATTERN.findall(a)
    return matches[-1] if matches else a


def s1_equal(pred: str | None, gold: str) -> bool:
    """Integers compare as integers (023 == 23); anything else by exact string, which is what the harness
    does without its optional GPT-4o-mini judge (not reproduced: it is neither offline nor deterministic)."""
    if not pred or not str(gold).strip():
        return False            # an empty box never matches an empty reference
    gold = str(gold)
    g = canonical_int(gold) if gold.isdecimal() else None     # not int(): "²".isdigit(), and 4300+ digits
    p = canonical_int(pred) if pred.isdecimal() else None
    return (p or pred) == g if g and p else pred == (g or gold)


def skythought_extract(text: str | None) -> str | None:
    """SkyThought's Qwen2.5-Math evaluation: the last boxed answer; else what follows "he answer is"; else
    the last number in the text (so a truncated output still yields a prediction)."""
    if not text:
        return None
    box = last_boxed(text)
    if box is not None:
        return box
    if "he answer is" in text:
        return text.split("he answer is")[-1].strip().rstrip(".").strip() or None
    nums = re.findall(r"-?\d*\.?\d+", text.replace(",", ""))
    return nums[-1] if nums else None


def _number(s: str) -> float | None:
    s = s.replace(",", "").replace("\\%", "").replace("%", "").strip()
    try:
        return float(s)
    except ValueError:
        return None


def skythought_equal(pred: str | None, gold: str) -> bool:
    """Qwen2.5-Math's math_equal: numbers within 1e-4 relative (``math.isclose``, as its numeric_equal; also
    x/100 and x*100 of the reference, its percentage rule); else equal after normalisation; else structural
    and symbolic equality (sympy)."""
    if pred is None or not str(pred).strip():
        return False
    a, b = normalize(pred), normalize(gold)
    x, y = _number(a), _number(b)
    if x is not None and y is not None:
        return any(math.isclose(t, x, rel_tol=1e-4) for t in (y, y / 100, y * 100))   # inf is close to inf only
    if a.lower() == b.lower():
        return True
    return _equiv_norm(a, b, "sympy")


def math_verify_extract(text: str | None) -> str | None:
    """math-verify's ``parse`` (default LaTeX and expression extraction) of the answer phase."""
    if not text or _mv_parse is None:
        return None
    return _bounded(_mv_extract, text)


def _mv_extract(text: str) -> str | None:
    try:
        parsed = _mv_parse(answer_section(text), parsing_timeout=TIMEOUT_S)
    except Exception:
        return None
    return str(parsed[-1]) if parsed else None


def math_verify_equal(pred: str | None, gold: str) -> bool:
    if pred is None or _mv_parse is None:
        return False
    return _bounded(mv_equal, pred, gold)


class Protocol:
    """A named harness: how the answer is extracted from a completion and compared with the reference."""

    def __init__(self, name: str, extract, equal, source: str, needs: str | None = None):
        self.name, self.extract, self.equal, self.source, self.needs = name, extract, equal, source, needs

    def grade(self, completion: str | None, gold: str) -> dict:
        """{"pred", "correct", "protocol"} for one completion."""
        if self.needs == "math_verify" and _mv_parse is None:
            raise RuntimeError("protocol 'math-verify' needs the math-verify package: pip install math-verify")
        pred = self.extract(completion)
        return {"pred": pred, "correct": bool(self.equal(pred, gold)), "protocol": self.name}


PROTOCOLS: dict[str, Protocol] = {
    "s1": Protocol("s1", s1_extract, s1_equal,
                   "simplescaling/s1 eval/lm-evaluation-harness, lm_eval/tasks/openai_math/utils.py process_results"),
    "skythought": Protocol("skythought", skythought_extract, skythought_equal,
                           "NovaSky-AI/SkyThought skythought/Qwen2.5-Math/evaluation (parser.extract_answer, "
                           "grader.math_equal)"),
    "math-verify": Protocol("math-verify", math_verify_extract, math_verify_equal,
                            "huggingface/Math-Verify parse + verify (open-r1, TRL, lighteval)", needs="math_verify"),
}


def protocol(name: str) -> Protocol:
    if name not in PROTOCOLS:
        raise ValueError(f"unknown protocol '{name}'; choose one of {', '.join(PROTOCOLS)}")
    return PROTOCOLS[name]
