"""Verifiers: a completion and its problem row -> a reward; several combined as a weighted sum.

    verifiers = parse_rewards("toy=1.0,format=0.1,mypkg.rewards:length_penalty=0.5")
    total, scores, errors = score(completion, row, verifiers)

Built in: ``toy`` (the toy task's exact checker, ``s1fast.data.toy.check``), ``math`` (``s1fast.grading.grade``:
the evaluation protocol's answer extraction and mathematical equivalence) and ``format`` (thinking ended on
its own, not at the cap, and a non-empty answer followed). A user's verifier is ``module:function`` called as
``fn(completion, row) -> float``, where ``completion`` holds ``answer_text`` (what ``s1fast.eval`` grades:
the forced end of thinking + the answer), ``thinking``, ``answer``, ``capped``, ``finished`` and the token
counts, and ``row`` is the problem (``question``, ``answer``, ...). A verifier that raises is not scored
silently: ``score`` returns its error (with the question), and the loop reports and counts it.
"""
from __future__ import annotations

import importlib
import math
import traceback
from typing import Callable

from ..config import ConfigError

CORRECTNESS = ("toy", "math")  # verifiers whose 1.0 means "correct" (the accuracy metric)


def _toy(c: dict, row: dict) -> float:
    from ..data import toy
    return float(toy.check(row.get("task", "sum"), c["answer_text"], row["answer"]))


def _math(c: dict, row: dict) -> float:
    """1.0 when the answer equals the reference. A reference that cannot be graded (none, empty, unreadable)
    raises, so the prompt is reported in verifier_errors.jsonl, not trained on as "always wrong"."""
    from .. import grading
    gold = row.get("answer")
    why = "the row has no answer field" if gold is None else grading.reference_problem(str(gold))
    if why:
        raise ValueError(f"cannot grade against the reference {str(gold)[:80]!r}: {why}; fix or drop the row")
    return float(grading.grade(c["answer_text"], str(gold))["correct"])


def _format(c: dict, row: dict) -> float:
    return float(c["finished"] and not c["capped"] and bool(c["answer"].strip()))


BUILTIN: dict[str, Callable[[dict, dict], float]] = {"toy": _toy, "math": _math, "format": _format}


def load_callable(spec: str) -> Callable:
    mod, _, name = spec.partition(":")
    try:
        fn = getattr(importlib.import_module(mod), name)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"--rewards {spec}: cannot load {name!r} from module {mod!r} ({e}); give module:function "
                          "with the module importable (on PYTHONPATH)") from None
    if not callable(fn):
        raise ConfigError(f"--rewards {spec}: {mod}.{name} is not callable")
    return fn


def parse_rewards(spec: str) -> list[tuple[str, float, Callable]]:
    """'toy=1.0,format=0.1,pkg.mod:fn=0.5' -> [(name, weight, fn)]; a missing '=W' means weight 1."""
    out = []
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        name, _, w = part.rpartition("=") if "=" in part else (part, "", "1")
        try:
            weight = float(w)
        except ValueError:
            raise ConfigError(f"--rewards {spec}: weight {w!r} of {name!r} is not a number") from None
        if ":" in name:
            fn = load_callable(name)
        elif name in BUILTIN:
            fn = BUILTIN[name]
        else:
            raise ConfigError(f"--rewards: unknown verifier {name!r}; built in: {', '.join(BUILTIN)}, or module:function")
        out.append((name, weight, fn))
    if not out:
        raise ConfigError("--rewards is empty: name at least one verifier, e.g. toy=1.0")
    return out


def score(completion: dict, row: dict, verifiers) -> tuple[float, dict, list[dict]]:
    """(weighted sum, {name: score}, [errors]); an erroring or non-finite verifier scores 0 and is listed."""
    total, scores, errors = 0.0, {}, []
    for name, weight, fn in verifiers:
        try:
            s = float(fn(completion, row))
            if not math.isfinite(s):
                raise ValueError(f"returned {s}")
        except Exception as e:  # a user's verifier may raise anything: report it, never hide it
            errors.append({"verifier": name, "question": row.get("question"), "error": f"{type(e).__name__}: {e}",
                           "traceback": traceback.format_exc(limit=3)})
            s = 0.0
        scores[name] = s
        total += weight * s
    return total, scores, errors
