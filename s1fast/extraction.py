"""Final-answer extraction from a model's output (the first step of grading; ``s1fast.grading`` compares).

``extract_answer``, as in s1's evaluation: the last ``\\boxed{...}`` (braces matched to any depth), else the
last ``Answer:`` line, else what follows the last "the (final) answer is" / "**Final Answer**". ``boxed_all``
lists every box and ``after_thinking`` cuts a completion to its answer, for the several-boxes rule of
``grading.grade``. Linear in the text's length: a 100 KB pathological answer extracts in milliseconds.
"""
from __future__ import annotations

import re

_ANSWER_RE = re.compile(r"(?i)Answer\s*:\s*(.*)")
# -----------------------------------------------------------------------------------------
# Where the thinking ends: what follows the last of these is the answer (s1, DeepSeek-R1 / QwQ, Sky-T1).
THINKING_ENDS = ("<|im_start|>answer", "</think>", "<|end_of_thought|>")
_BOX_RE = re.compile(r"\\(?:boxed|fbox)")
_BRACE_TOKEN = re.compile(r"\\.|[{}]", re.S)    # an escape (skipped whole), or a brace
_BARE_ARG = re.compile(r"[^\s$]+")
_FINAL_RE = re.compile(r"(?i)\bthe\s+(?:final\s+)?answer\s+is\b|\bfinal\s+answer\b")
_PROSE = re.compile(r"(?<![\\A-Za-z])[A-Za-z]{3,}")


def _brace_pairs(s: str, start: int = 0) -> dict[int, int]:
    """{index of each ``{`` from ``start``: index of its ``}``}, in one pass (a search per box is quadratic: a
    100 KB answer of unclosed ``\\boxed{`` took minutes); only braces and escapes are visited."""
    pairs, stack = {}, []
    for m in _BRACE_TOKEN.finditer(s, start):
        c = m.group(0)
        if c == "{":
            stack.append(m.start())
        elif c == "}" and stack:
            pairs[stack.pop()] = m.start()
    return pairs


def boxed_all(text: str) -> list[str]:
    """The content of every ``\\boxed{...}`` / ``\\fbox{...}`` (or ``\\boxed 5``) not inside another, in order."""
    out, pairs, after = [], None, 0
    for m in _BOX_RE.finditer(text):
        i = m.end()
        if i < after:
            continue                        # inside the previous box
        while i < len(text) and text[i] == " ":
            i += 1
        if i < len(text) and text[i] == "{":
            pairs = _brace_pairs(text, m.start()) if pairs is None else pairs
            if i in pairs:
                out.append(text[i + 1:pairs[i]].strip())
                after = pairs[i]
        elif i > m.end():                   # "\boxed 5": up to the next space or dollar
            b = _BARE_ARG.match(text, i)
            if b:
                out.append(b.group(0))
                after = b.end()
    return out


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` / ``\\fbox{...}`` (or ``\\boxed 5``), nested braces kept."""
    boxes = boxed_all(text)
    return boxes[-1] if boxes else None


def after_thinking(text: str) -> str:
    """What follows the end of the thinking (the last of ``THINKING_ENDS``), else the whole text."""
    cut = max((text.rfind(m) + len(m) for m in THINKING_ENDS if m in text), default=0)
    return text[cut:]


def _clean(ans: str) -> str | None:
    """An answer line without markdown bold, "the answer is", a closing period or its ``$...$``."""
    ans = re.sub(r"^\*+\s*|\s*\*+$", "", ans.strip())                # **Answer:** 42
    m = re.search(r"(?i)\bthe\s+(?:final\s+)?answer\s+is\s*:?\s*(.*)$", ans)
    if m:
        ans = m.group(1)
    ans = re.sub(r"(?i)\.?\s*I hope it is correct\.?$", "", ans).strip()
    ans = ans.strip().rstrip(".").strip()
    if len(ans) >= 2 and ans[0] == "$" and ans[-1] == "$":
        ans = ans.strip("$").strip()
    for a, b in (("\\(", "\\)"), ("\\[", "\\]")):
        if ans.startswith(a) and ans.endswith(b):
            ans = ans[2:-2].strip()
    return ans or None


def _line_after(text: str, at: int) -> str:
    """The rest of the line from ``at``, or the next non-empty line when that is empty ("Final Answer:\\n42")."""
    rest = text[at:].lstrip(" \t*:")
    lines = rest.split("\n")
    return next((x for x in lines if x.strip(" \t*")), "") if not lines[0].strip(" \t*") else lines[0]


def extract_answer(text: str | None) -> str | None:
    """The final answer in a model's output, or None when it gives none: the last box, else the last
    ``Answer:`` line, else what follows the last "the (final) answer is" / "**Final Answer**" (not prose)."""
    if not text:
        return None
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed
    found = []                          # (where the answer starts, its text), the later one first
    colon = list(_ANSWER_RE.finditer(text))
    if colon:
        found.append((colon[-1].start(1), _clean(_line_after(text, colon[-1].start(1)))))
    finals = list(_FINAL_RE.finditer(text))
    if finals:
        line = re.sub(r"(?i)^\s*is\b", "", _line_after(text, finals[-1].end()))
        ans = _clean(re.split(r"\.(?:\s|$)", line.strip())[0])
        # "the answer is 42 but I am not sure" is no answer, not a guess at one
        found.append((finals[-1].end(), None if ans and len(_PROSE.findall(ans)) > 1 else ans))
    return next((a for _, a in sorted(found, reverse=True) if a is not None), None)
