"""Final-answer grading for reasoning-model evaluation, RL rewards and rejection sampling.

``extract_answer`` (``s1fast.extraction``) finds the answer; ``is_equiv(pred, gold)`` compares it with one
backend chosen at import and reported in ``BACKEND``: ``"math-verify"`` (Hugging Face's grader, the standard)
when installed, else ``"sympy"`` (a LaTeX normaliser, structural comparison and exact sympy equivalence), else
``"string"``. Multiple-choice golds compare as letters first (an answer naming several letters names none).
``grade(text, gold)`` does both steps, says which backend decided, and refuses credit for a reference it
cannot read (``reference_problem``) or an answer that boxes several different values. Every grade is bounded
in time, from any thread (``grading_worker``). The named harnesses (s1, skythought, math-verify) are in
``s1fast.protocols``; each backend's rules: docs/eval.md, "Grading".
"""
from __future__ import annotations

import functools
import logging
import re
import signal
import threading
from contextlib import contextmanager

from .extraction import THINKING_ENDS, after_thinking, boxed_all, extract_answer, last_boxed  # noqa: F401

try:  # the standard grader, when installed
    from math_verify import parse as _mv_parse, verify as _mv_verify
    BACKEND = "math-verify"
except ImportError:  # pragma: no cover - depends on the environment
    _mv_parse = _mv_verify = None
    try:
        import sympy as _sympy  # noqa: F401
        BACKEND = "sympy"
    except ImportError:
        BACKEND = "string"

def _short(record: logging.LogRecord) -> bool:
    """math-verify logs each timeout with the whole answer ("Timeout during parsing: <100 KB>"): cut it."""
    msg = record.getMessage()
    if len(msg) > 300:
        record.msg, record.args = msg[:300] + f"... ({len(msg)} characters)", None
    return True


for _name in ("math_verify.parser", "math_verify.grader"):
    logging.getLogger(_name).addFilter(_short)

TIMEOUT_S = 5            # math-verify's limit on each parse and each comparison (its default)
WORKER_TIMEOUT_S = 60    # one grade off the main thread, in the worker process: a bound on the whole
_LETTER_GOLD = re.compile(r"^\(?([A-E])\)?$")
# A run of choice letters joined by list words ("A, B, C or D"); a "." ends it, so "C. A circle" names C.
_CHOICE_LIST = re.compile(r"(?:\(?[A-E]\)?(?![A-Za-z])\s*(?:(?:,|;|/|&|\bor\b|\band\b)\s*)?)*")


# ---- normalisation --------------------------------------------------------------------------------------
def _matching_brace(s: str, open_at: int) -> int | None:
    """Index of the ``}`` closing the ``{`` at ``open_at`` (escaped ``\\{`` ``\\}`` do not count)."""
    depth = 0
    i = open_at
    while i < len(s):
        c = s[i]
        if c == "\\":
            i += 2
            continue
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return None


def _unwrap_command(s: str, names: tuple[str, ...]) -> str:
    """``\\text{abc}`` -> ``abc`` for each command in ``names`` (nested braces kept)."""
    pat = re.compile(r"\\(?:%s)\s*\{" % "|".join(names))
    while True:
        m = pat.search(s)
        if not m:
            return s
        end = _matching_brace(s, m.end() - 1)
        if end is None:
            return s
        s = s[:m.start()] + s[m.end():end] + s[end + 1:]


def _brace_arg(s: str, i: int) -> tuple[str, int]:
    """The argument starting at ``s[i]``: ``{...}`` or one character; returns (arg, index after it)."""
    if s[i] == "{":
        end = _matching_brace(s, i)
        if end is None:
            raise ValueError("unbalanced braces")
        return s[i + 1:end], end + 1
    return s[i], i + 1


def _brace_short_args(s: str) -> str:
    """``\\frac12`` -> ``\\frac{1}{2}``, ``\\sqrt2`` -> ``\\sqrt{2}``: one shape for the string comparison."""
    out, i = [], 0
    while i < len(s):
        m = re.match(r"\\(frac|sqrt)", s[i:])
        if not m:
            out.append(s[i])
            i += 1
            continue
        name = m.group(1)
        i += m.end()
        try:
            if name == "sqrt" and i < len(s) and s[i] == "[":
                j = s.index("]", i)
                out.append("\\sqrt" + s[i:j + 1])
                i = j + 1
            nargs = 2 if name == "frac" else 1
            parts = []
            for _ in range(nargs):
                a, i = _brace_arg(s, i)
                parts.append("{" + _brace_short_args(a) + "}")
        except (ValueError, IndexError, RecursionError):    # RecursionError: \frac nested 1000 deep
            return s
        if name == "frac":
            out.append("\\frac" + "".join(parts))
        else:
            out.append(("" if out and out[-1].startswith("\\sqrt[") else "\\sqrt") + parts[0])
    return "".join(out)


def normalize(ans: str) -> str:
    """A canonical string for a LaTeX answer (spacing, delimiters, units and synonyms removed)."""
    s = str(ans).strip()
    s = s.replace("\n", " ").strip()
    if len(s) >= 2 and s[0] == "$" and s[-1] == "$":
        s = s.strip("$")
    for a, b in (("\\(", "\\)"), ("\\[", "\\]")):
        if s.startswith(a) and s.endswith(b):
            s = s[2:-2]
    s = s.replace("\\$", "").replace("$", "")
    # Units written after a number in text: "9\text{ customers}", "42 \mbox{inches}".
    s = re.sub(r"^([-+]?[\d.,/]+)\s*\\(?:text|mbox|mathrm)\s*\{\s*[A-Za-z][A-Za-z ]*\}\s*$", r"\1", s)
    s = _unwrap_command(s, ("text", "textbf", "mathrm", "mathbf", "mbox", "boxed", "displaystyle"))
    for old, new in (("\\dfrac", "\\frac"), ("\\tfrac", "\\frac"), ("\\left", ""), ("\\right", ""),
                     ("\\displaystyle", ""), ("~", ""), ("^{\\circ}", ""), ("^\\circ", ""), ("°", ""),
                     ("\\%", ""), ("%", ""), ("\\cdot", "*"), ("\\times", "*")):
        s = s.replace(old, new)
    s = re.sub(r"(?<!\\)\\[!,;: ]", "", s)            # thin spaces; "\\ " (a matrix row break) stays
    s = re.sub(r"\s+", "", s)
    s = re.sub(r"_\{(\w+)\}", r"_\1", s)                 # 4210_{5} -> 4210_5
    s = _brace_short_args(s)
    s = s.rstrip(".")
    # "x = 5" -> "5" (a single-letter left-hand side), never for equations like "5x-7y+11z+4=0".
    m = re.match(r"^[A-Za-z]=([^=<>]+)$", s)
    if m:
        s = m.group(1)
    s = re.sub(r"(?<![\d.])\.(\d)", r"0.\1", s)          # .5 -> 0.5
    return canonical_int(s) or s


def canonical_int(s: str) -> str | None:
    """``"007"`` -> ``"7"``, ``"+3"`` -> ``"3"``, ``"-0"`` -> ``"0"`` for an integer of ASCII digits, else None.
    Not ``str(int(s))``: past 4300 digits that raises, and ``int`` also takes "²" and "٣"."""
    m = re.fullmatch(r"([-+]?)0*([0-9]+)", s)
    if not m:
        return None
    return ("-" if m.group(1) == "-" and m.group(2) != "0" else "") + m.group(2)


# ---- structure ------------------------------------------------------------------------------------------
def _split_top(s: str, sep: str) -> list[str]:
    """Split on ``sep`` outside any (), [], {} nesting."""
    parts, depth, cur, i = [], 0, [], 0
    while i < len(s):
        if s.startswith("\\{", i) or s.startswith("\\}", i):
            depth += 1 if s[i + 1] == "{" else -1
            cur.append(s[i:i + 2])
            i += 2
            continue
        c = s[i]
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        if depth == 0 and s.startswith(sep, i):
            parts.append("".join(cur))
            cur = []
            i += len(sep)
            continue
        cur.append(c)
        i += 1
    parts.append("".join(cur))
    return parts


def _matrix_entries(s: str) -> list[list[str]] | None:
    m = re.fullmatch(r"\\begin\{([pbv]?matrix)\}(.*)\\end\{\1\}", s)
    if not m:
        return None
    return [row.split("&") for row in m.group(2).split("\\\\") if row != ""]


def _thousands(s: str) -> str | None:
    return s.replace(",", "") if re.fullmatch(r"[-+]?\d{1,3}(,\d{3})+", s) else None


def _equiv_norm(a: str, b: str, backend: str) -> bool:
    """Equivalence of two normalised answers: structure first, then scalars."""
    if a == b:
        return True
    # Unions of intervals: piece by piece, in order.
    ua, ub = _split_top(a, "\\cup"), _split_top(b, "\\cup")
    if len(ua) > 1 or len(ub) > 1:
        return len(ua) == len(ub) and all(_equiv_norm(x, y, backend) for x, y in zip(ua, ub))
    ma, mb = _matrix_entries(a), _matrix_entries(b)
    if ma is not None or mb is not None:
        return (ma is not None and mb is not None and len(ma) == len(mb)
                and all(len(r) == len(q) and all(_equiv_norm(x, y, backend) for x, y in zip(r, q))
                        for r, q in zip(ma, mb)))
    ta, tb = _thousands(a), _thousands(b)
    if (ta or tb) and (ta or a) == (tb or b):
        return True
    if a[:2] == "\\{" and b[:2] == "\\{" and a.endswith("\\}") and b.endswith("\\}"):   # sets: any order
        return _same_multiset(_split_top(a[2:-2], ","), _split_top(b[2:-2], ","), backend)
    ea, eb = _split_top(a, ","), _split_top(b, ",")
    if len(ea) > 1 or len(eb) > 1:
        if len(ea) != len(eb):
            return False
        return _same_multiset(ea, eb, backend)   # "Enter all solutions, separated by commas": any order
    if a[:1] in "([" and b[:1] in "([" and a[-1:] in ")]" and b[-1:] in ")]":
        ia, ib = _split_top(a[1:-1], ","), _split_top(b[1:-1], ",")
        if len(ia) > 1 or len(ib) > 1:     # tuples and intervals: brackets and order both matter
            return (a[0] == b[0] and a[-1] == b[-1] and len(ia) == len(ib)
                    and all(_equiv_norm(x, y, backend) for x, y in zip(ia, ib)))
    if backend == "sympy":
        return _sympy_equal(a, b)
    return False


def _same_multiset(xs: list[str], ys: list[str], backend: str) -> bool:
    left = list(ys)
    for x in xs:
        hit = next((k for k, y in enumerate(left) if _equiv_norm(x, y, backend)), None)
        if hit is None:
            return False
        left.pop(hit)
    return not left


# ---- sympy ----------------------------------------------------------------------------------------------
_FUNCS = {"sqrt", "pi", "oo", "I", "E", "log", "sin", "cos", "tan", "cot", "sec", "csc", "exp", "Abs",
          "asin", "acos", "atan"}
_LATEX_NAMES = {"\\pi": " pi ", "\\infty": " oo ", "\\ln": " log ", "\\log": " log ", "\\exp": " exp ",
                "\\sin": " sin ", "\\cos": " cos ", "\\tan": " tan ", "\\cot": " cot ", "\\sec": " sec ",
                "\\csc": " csc ", "\\arcsin": " asin ", "\\arccos": " acos ", "\\arctan": " atan ",
                "\\div": "/", "\\cdot": "*", "\\times": "*"}


def _latex_to_sympy_text(s: str) -> str | None:
    """Plain sympy syntax for a small LaTeX subset (fractions, roots, powers, pi, functions), else None."""
    out, i = [], 0
    try:
        while i < len(s):
            if s.startswith("\\frac", i):
                num, i = _brace_arg(s, i + 5)
                den, i = _brace_arg(s, i)
                a, b = _latex_to_sympy_text(num), _latex_to_sympy_text(den)
                if a is None or b is None:
                    return None
                out.append(f"(({a})/({b}))")
                continue
            if s.startswith("\\sqrt", i):
                i += 5
                index = None
                if i < len(s) and s[i] == "[":
                    j = s.index("]", i)
                    index, i = _latex_to_sympy_text(s[i + 1:j]), j + 1
                arg, i = _brace_arg(s, i)
                a = _latex_to_sympy_text(arg)
                if a is None:
                    return None
                out.append(f"(({a})**(1/({index})))" if index else f"sqrt({a})")
                continue
            name = next((k for k in sorted(_LATEX_NAMES, key=len, reverse=True) if s.startswith(k, i)), None)
            if name and not s[i + len(name):i + len(name) + 1].isalpha():
                out.append(_LATEX_NAMES[name])
                i += len(name)
                continue
            c = s[i]
            if c == "\\":
                return None          # a command this converter does not know
            out.append({"{": "(", "}": ")", "^": "**", "[": "(", "]": ")"}.get(c, c))
            i += 1
    except (ValueError, IndexError):
        return None
    return "".join(out)


def _safe(expr_text: str) -> bool:
    """Only arithmetic, single-letter symbols and known functions may reach sympy's (eval-based) parser."""
    if len(expr_text) > 200 or "__" in expr_text or not re.fullmatch(r"[0-9A-Za-z+\-*/(). ]*", expr_text):
        return False
    if re.search(r"\*\*\s*\(?\s*\d{4,}", expr_text):       # 2**12345: too big to simplify
        return False
    return all(len(w) == 1 or w in _FUNCS for w in re.findall(r"[A-Za-z]+", expr_text))


@contextmanager
def _time_limit(seconds: int):
    """An alarm in the main thread (sympy can run away on odd input); no limit elsewhere."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGALRM"):
        yield
        return

    def _raise(signum, frame):
        raise TimeoutError

    old = signal.signal(signal.SIGALRM, _raise)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def _to_sympy(s: str):
    import sympy
    from sympy.parsing.sympy_parser import (convert_xor, implicit_multiplication_application, parse_expr,
                                            rationalize, standard_transformations)
    text = _latex_to_sympy_text(s)
    if text is None or not _safe(text):
        return None
    local = {"i": sympy.I, "e": sympy.E, "pi": sympy.pi, "oo": sympy.oo, "I": sympy.I, "E": sympy.E}
    tr = standard_transformations + (implicit_multiplication_application, convert_xor, rationalize)
    return parse_expr(text, local_dict=local, transformations=tr, evaluate=True)


def _sympy_equal(a: str, b: str) -> bool:
    import sympy
    try:
        with _time_limit(5):
            x, y = _to_sympy(a), _to_sympy(b)
            if x is None or y is None:
                return False
            if x == y:
                return True
            diff = sympy.simplify(x - y)
            if diff == 0:
                return True
            if diff.is_Rational:    # exact and not 0: 10^100 + 1 is not 10^100, however close relatively
                return False
            if not x.free_symbols and not y.free_symbols:
                d, ref = complex(sympy.N(x - y, 30)), complex(sympy.N(y, 30))
                return abs(d) <= 1e-12 * max(1.0, abs(ref))
            return False
    except Exception:   # parse errors, TimeoutError, sympy's own failures: not shown equal
        return False


# ---- the public API -------------------------------------------------------------------------------------
def _letter(s: str) -> str | None:
    """The choice a multiple-choice answer names: "(C)", "C", "\\text{(C)} 17", "C. 3.2", else None."""
    s = _unwrap_command(s.strip().strip("$").strip(), ("text", "textbf", "mathrm", "mbox")).strip()
    m = re.match(r"^\(([A-E])\)|^([A-E])(?=$|[\s.:,)])", s)
    if not m:
        return None
    if len(set(re.findall(r"[A-E]", _CHOICE_LIST.match(s).group(0)))) > 1:
        return None         # "B or C", "A, B, C, D", "(A) (B)": every candidate named is no answer
    return m.group(1) or m.group(2)


@functools.lru_cache(maxsize=4096)   # a reference is graded against many samples (RL groups, verify's k)
def reference_problem(gold: str | None, backend: str | None = None) -> str | None:
    """Why ``gold`` cannot be graded against (empty, unbalanced braces, nothing math-verify can read), else
    None. Such a row is ``no_reference``: nothing, not even an empty box, can match it."""
    if gold is None or not normalize(gold):
        return "the reference is empty"
    g = str(gold)
    if g.count("{") - g.count("\\{") != g.count("}") - g.count("\\}"):
        return "the reference's braces are unbalanced"
    if (backend or BACKEND) == "math-verify" and not _LETTER_GOLD.match(normalize(g)) and not _bounded(_mv_reads, g):
        return "math-verify reads nothing in the reference"
    return None


def _mv_reads(gold: str) -> bool:
    return bool(_mv_parse(f"${gold}$", parsing_timeout=TIMEOUT_S))


def mv_equal(pred: str, gold: str) -> bool:
    """math-verify's verdict on the answer ``pred`` (false when it times out or raises)."""
    try:
        return bool(_mv_verify(_mv_parse(f"${gold}$", parsing_timeout=TIMEOUT_S),
                               _mv_parse(f"${pred}$", parsing_timeout=TIMEOUT_S), timeout_seconds=TIMEOUT_S))
    except Exception:
        return False


def _bounded(fn, *args, timeout: float | None = None):
    """``fn(*args)`` under a time limit: math-verify's and the sympy backend's are SIGALRM alarms, which only
    the main thread may set (math-verify raises elsewhere, which read as "wrong" for every answer), so from
    another thread the call runs in a worker process that is killed when it overruns (``TimeoutError``)."""
    if threading.current_thread() is threading.main_thread() and hasattr(signal, "SIGALRM"):
        return fn(*args)
    from . import grading_worker
    return grading_worker.call(f"{fn.__module__}:{fn.__name__}", args, timeout or WORKER_TIMEOUT_S)


def is_equiv(pred: str | None, gold: str, backend: str | None = None, timeout: float | None = None) -> bool:
    """Whether the extracted answer ``pred`` equals the reference ``gold`` mathematically. Bounded in time
    (``timeout``: seconds, off the main thread; ``TimeoutError`` past it)."""
    if pred is None or not str(pred).strip():
        return False
    backend = backend or BACKEND
    if backend == "math-verify" and _mv_verify is None:
        raise RuntimeError("backend 'math-verify' asked for but math_verify is not installed")
    if backend == "string":
        return _is_equiv(pred, gold, backend)
    return _bounded(_is_equiv, pred, gold, backend, timeout=timeout)


def _is_equiv(pred: str, gold: str, backend: str) -> bool:
    gm = _LETTER_GOLD.match(normalize(gold))
    if gm:   # multiple choice
        return _letter(pred) == gm.group(1)
    if backend == "math-verify":
        return mv_equal(pred, gold)
    pa, ga = normalize(pred), normalize(gold)
    if pa.lower() == ga.lower() and re.fullmatch(r"[A-Za-z ]+", ga):   # word answers: "Evelyn", "ellipse"
        return True
    return _equiv_norm(pa, ga, backend)


_JOINED = re.compile(r"\\(?:vee|lor|wedge|land)(?![A-Za-z])")     # math-verify reads "3 \vee 5" as 5


def _several_answers(text: str, pred: str, gold: str, backend: str) -> bool:
    """Whether the answer names values besides ``pred``: other boxes after the thinking (math-verify reads
    several boxes as one set), or candidates joined by ``\\vee`` / ``\\wedge`` (math-verify keeps the last
    one). A model that lists every candidate is not rewarded for the right one among them."""
    if _JOINED.search(pred) and not _JOINED.search(gold):
        return True
    others = {b for b in boxed_all(after_thinking(text)) if normalize(b) != normalize(pred)}
    return any(not is_equiv(b, pred, backend) for b in others)


def grade(text: str | None, gold: str, backend: str | None = None) -> dict:
    """Extract the answer from ``text`` and grade it: {"pred", "correct", "grader"}, and "note" when the
    verdict needs one: ``no_reference`` (``reference_problem``) or ``several_answers``."""
    backend = backend or BACKEND
    pred = extract_answer(text)
    out = {"pred": pred, "correct": False, "grader": backend}
    if reference_problem(gold, backend):
        return dict(out, note="no_reference")
    out["correct"] = is_equiv(pred, gold, backend)
    if out["correct"] and _several_answers(text, pred, gold, backend):
        return dict(out, correct=False, note="several_answers")
    return out


def versions() -> dict:
    """Versions of the graders in use, for the results file."""
    from importlib.metadata import PackageNotFoundError, version
    out = {}
    for pkg in ("math-verify", "sympy", "latex2sympy2_extended"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out
