"""``select``: choose ``--size`` questions, by s1's recipe or a simple alternative; seeded.

``--method s1`` (the s1 paper's selection, Muennighoff et al. 2025, section 2), three filters in order:
1. quality: no malformed questions (shorter than ``--min-question-chars``, or pointing at an image the text
   lacks) and no failed generations (empty trace or answer);
2. difficulty: keep questions every named reference model got wrong (``--reference-graded FILE`` per model,
   or ``--grade-field`` such as s1K-1.1's ``gemini_grade``); a question a model did not attempt is dropped;
3. diversity: pick a domain uniformly among those with questions left, then a question in it with
   probability proportional to 2^-rank (rank 1: the longest trace), until ``--size`` are chosen.
Alternatives: ``length``, ``difficulty`` (uniform among the hard ones), ``random``. A question with several
samples is represented by its longest one. Domains: ``--domain-field`` or ``--domain-fn module:function``.
"""
from __future__ import annotations

import argparse
import random
import re
import sys
from collections import defaultdict

from . import rows as R

METHODS = ("s1", "length", "difficulty", "random")
_IMAGE = re.compile(r"!\[|<img|\.(?:png|jpe?g|gif|svg)\b|\b(?:shown|see|in) (?:the |this )?(?:figure|image|picture|"
                    r"diagram) (?:below|above)", re.I)
_WRONG = {False, 0, "no", "false", "incorrect", "wrong", "0"}


def is_wrong(v) -> bool | None:
    """A grade value as 'wrong' (True), 'right' (False) or unknown (None): bools, 0/1, Yes/No, correct/..."""
    if v is None:
        return None
    if isinstance(v, str):
        v = v.strip().lower()
        if v in ("yes", "true", "correct", "right", "1"):
            return False
    elif v is True or v == 1:
        return False
    return True if v in _WRONG else None


def quality(row: dict, min_chars: int = 10) -> str | None:
    """Why ``row`` fails the quality filter, or None."""
    q = R.question(row)
    if not q or not q.strip():
        return "no_question"
    if len(q.strip()) < min_chars:
        return "malformed_question_short"
    if _IMAGE.search(q):
        return "malformed_question_image"
    if "error" in row and row["error"]:
        return "failed_generation"
    if not R.trace(row) or not R.attempt(row).strip():
        return "failed_generation"
    return None


def load_reference_grades(paths: list[str]) -> list[dict]:
    """Per reference file: question id -> whether every attempt in it was wrong."""
    out = []
    for p in paths:
        R.need_file(p, "--reference-graded")
        wrong = {}
        for _, row in R.read(p):
            q, w = R.question(row), is_wrong(row.get("correct"))
            if q is None or w is None:     # not graded (no reference answer): not an attempt
                continue
            k = R.qid(q)
            wrong[k] = wrong.get(k, True) and w
        if not wrong:
            raise R.DataError("--reference-graded: no row has a 'correct' grade (true / false): pass the file "
                              "`verify --graded` writes for that model's answers", path=p)
        out.append(wrong)
    return out


def hard(row: dict, refs: list[dict], grade_fields: list[str]) -> str | None:
    """None when every reference model got ``row``'s question wrong, else why not ("easy" / "no_attempt")."""
    k = R.qid(R.question(row))
    for ref in refs:
        if k not in ref:
            return "difficulty_no_attempt"
        if not ref[k]:
            return "easy"
    for f in grade_fields:
        w = is_wrong(row.get(f))
        if w is None:
            return "difficulty_no_attempt"
        if not w:
            return "easy"
    return None


def length_fn(kind: str, tokenizer_dir: str | None = None):
    if kind == "chars":
        return lambda row: len(R.trace(row))
    from ..cache import load_tokenizer
    tok = load_tokenizer(tokenizer_dir)
    return lambda row: R.n_tokens(tok, R.trace(row))


def s1_diversity(pool: dict[str, list], size: int, rng: random.Random) -> list:
    """s1's draw: a domain uniformly among those left, then rank r (1 = longest) with weight 2^-r.

    ``pool``: domain -> items sorted longest first (consumed)."""
    pool = {d: list(v) for d, v in pool.items() if v}
    chosen = []
    while len(chosen) < size and pool:
        d = rng.choice(sorted(pool))
        items = pool[d]
        weights = [2.0 ** -(r + 1) for r in range(len(items))]
        i = rng.choices(range(len(items)), weights=weights)[0]
        chosen.append(items.pop(i))
        if not items:
            del pool[d]
    return chosen


def _candidates(rows, method: str, *, domain, length, refs, grade_fields, min_chars: int, tally: R.Tally,
                hold: bool) -> list[tuple]:
    """One candidate per question, its longest sample, longest first: ``(length, question id, why it is not
    hard or None, domain, the row or its position)``; what the draw reads of a row is taken as it is read."""
    check_hard = method in ("s1", "difficulty") and bool(refs or grade_fields)
    best: dict[str, tuple] = {}
    for pos, row in enumerate(rows):
        why = quality(row, min_chars) if method == "s1" else (None if R.question(row) else "no_question")
        if why:
            tally.drop(why)
            continue
        k, n = R.qid(R.question(row)), length(row)
        if k in best:
            tally.note("extra_samples_of_a_question")
            if n <= best[k][0]:
                continue
        easy = hard(row, refs, grade_fields) if check_hard else None
        dom = domain(row) if method == "s1" and easy is None else None
        best[k] = (n, k, easy, dom, row if hold else pos)
    return sorted(best.values(), key=lambda c: (-c[0], c[1]))


def select(rows, method: str, size: int, seed: int, *, domain, length, refs=(), grade_fields=(),
           min_chars: int = 10, tally: R.Tally | None = None, hold: bool = True) -> list:
    """The chosen rows (``hold=False``: their positions in ``rows``, which is then read once, a row at a time,
    and no row is kept)."""
    tally = tally or R.Tally("select")
    refs, grade_fields = list(refs), list(grade_fields)
    if method == "difficulty" and not (refs or grade_fields):
        raise ValueError("--method difficulty needs --reference-graded FILE or --grade-field FIELD")
    cands = _candidates(rows, method, domain=domain, length=length, refs=refs, grade_fields=grade_fields,
                        min_chars=min_chars, tally=tally, hold=hold)
    if method in ("s1", "difficulty") and (refs or grade_fields):
        for c in cands:
            if c[2]:
                tally.drop(c[2])
        cands = [c for c in cands if not c[2]]
    elif method == "s1":
        tally.note("difficulty_filter_skipped_no_reference_models")
    rng = random.Random(seed)
    if method == "s1":
        pool = defaultdict(list)
        for c in cands:
            pool[c[3]].append(c[4])
        tally.note("domains", len(pool))
        if list(pool) == ["unknown"]:
            print("warning: select: no row names a domain (domain / subject / cot_type / source_type / source), so "
                  "s1's diversity draw has one domain; pass --domain-field or --domain-fn", file=sys.stderr)
        chosen = s1_diversity(pool, size, rng)
    elif method == "length":
        chosen = [c[4] for c in cands[:size]]
    else:  # random, difficulty: uniform
        chosen = [c[4] for c in rng.sample(cands, min(size, len(cands)))]
    tally.drop("not_chosen", len(cands) - len(chosen))
    tally.keep("chosen", len(chosen))
    if len(chosen) < size:
        tally.note(f"short_of_target_{size}", size - len(chosen))
    return chosen


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="candidate rows (.json/.jsonl/.parquet, any schema s1fast reads)")
    p.add_argument("--out", required=True, help="chosen rows, .jsonl (a rerun with the same options adds what is "
                                                "missing; one that would choose otherwise is refused)")
    p.add_argument("--size", type=R.positive_int, default=1000, help="target number of questions")
    p.add_argument("--method", choices=METHODS, default="s1", help="how questions are chosen (above)")
    p.add_argument("--seed", type=int, default=0, help="seed of the draws")
    p.add_argument("--domain-field", help="field naming each row's domain (default: domain / subject / cot_type / "
                                          "source_type / source)")
    p.add_argument("--domain-fn", help="classifier module:function taking a row, returning its domain")
    p.add_argument("--reference-graded", action="append", default=[],
                   help="graded attempts of one reference model (verify --graded output); repeat per model")
    p.add_argument("--grade-field", action="append", default=[], help="a field grading a reference model's attempt "
                                                                       "(repeatable), e.g. gemini_grade")
    p.add_argument("--length", choices=["tokens", "chars"], default="tokens", help="trace length measure")
    p.add_argument("--tokenizer", help="tokenizer for --length tokens (default: the bundled Qwen2.5)")
    p.add_argument("--min-question-chars", type=R.non_negative_int, default=10,
                   help="shorter questions are malformed (quality filter)")


def _rows_at(path: str, positions: list[int]) -> list[dict]:
    """The rows at ``positions`` (0-based, in ``R.read``'s order) of ``path``, in that order: a second pass that
    holds only them."""
    want = {p: j for j, p in enumerate(positions)}
    got: list = [None] * len(positions)
    left = len(want)
    for p, (_, row) in enumerate(R.read(path, warn=False)):
        if left and p in want:
            got[want[p]], left = row, left - 1
        if not left:
            break
    if left:
        raise R.DataError(f"{left} chosen row(s) are missing on the second read: the file changed while select read "
                          "it; run again", path=path)
    return got


def main(args) -> R.Tally:
    """Two passes over --data: measure each row and keep what the draw reads of it, then copy the chosen rows."""
    tally = R.Tally("select")
    refs, measure = load_reference_grades(args.reference_graded), length_fn(args.length, args.tokenizer)
    dom = R.domain_getter(args.domain_field, args.domain_fn)
    rows = R.read_shown(args.data, "measuring traces", not args.no_progress and args.length == "tokens")
    positions = select((row for _, row in rows), args.method, args.size, args.seed, domain=dom, length=measure,
                       refs=refs, grade_fields=args.grade_field, min_chars=args.min_question_chars, tally=tally,
                       hold=False)
    chosen = _rows_at(args.data, positions)
    with R.Output(args.out) as out:
        out.check_same_run({row.get("key") or R.qid(R.question(row)) for row in chosen}, "choose")
        for row in chosen:
            key = row.get("key") or R.qid(R.question(row))
            if key in out.keys:
                tally.note("already_done")
                continue
            out.write({**row, "key": key, "domain": dom(row)})   # the domain the draw used
    return tally
