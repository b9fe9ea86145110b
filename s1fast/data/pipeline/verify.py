"""``verify``: grade each sample's answer against its question's reference; rejection sampling.

The answer graded is the sample's attempt (with the forced end of thinking before it, as ``s1fast.eval``
grades), by s1fast's grader or a named evaluation protocol (``--protocol``); the reference is
``--answer-field``, else ``answer`` / ``gt`` / ``solution`` (a worked solution's last ``\\boxed{}``).
Every graded row is written to ``--graded`` (if named) with ``correct`` and ``pred``; ``--out`` keeps what
rejection sampling keeps: ``--keep correct`` (all correct samples), ``--keep first-k`` (the first ``--k``
correct samples per question, by sample index) or ``--keep all`` (grade only).
"""
from __future__ import annotations

import argparse
from collections import defaultdict

from . import rows as R

KEEP = ("correct", "first-k", "all")


def grade_row(row: dict, answer_field: str | None = None, protocol: str = "s1fast") -> dict:
    """``row`` plus ``pred``, ``correct``, ``grader`` and ``gold``; ``verdict`` says why when not graded.

    ``protocol``: ``s1fast`` (``grading.grade``: s1's extraction, math-verify equivalence when installed) or a
    named harness of ``protocols.PROTOCOLS`` (s1, skythought, math-verify)."""
    from s1fast import grading, protocols
    grade = grading.grade if protocol == "s1fast" else protocols.protocol(protocol).grade
    gold = R.reference(row, answer_field)
    text = (row.get("generation") or {}).get("forced_end", "") + R.attempt(row)
    out = dict(row)
    if gold is None:
        out.update(pred=None, correct=None, verdict="no_reference", gold=None)
    elif not text.strip():
        out.update(pred=None, correct=False, verdict="no_answer", gold=gold)
    else:
        g = grade(text, gold)
        verdict = "correct" if g["correct"] else ("no_answer" if g["pred"] is None else "wrong")
        out.update(pred=g["pred"], correct=g["correct"], grader=g.get("grader") or g.get("protocol"),
                   verdict=verdict, gold=gold)
    return out


def _check_earlier_rows(args, out: R.Output, keys: set) -> None:
    """Refuse to append to rows an earlier run kept under another rule or from other data (they are not
    graded again, so they would stay, mixed with this run's)."""
    if not out.rows:
        return
    per_q, why = defaultdict(int), None
    for i, row in R.read(out.path):
        if row.get("key") not in keys:
            why = f"row {i} is not a sample of --data"
        elif args.keep != "all" and row.get("verdict") != "correct":
            why = f"row {i} is graded {row.get('verdict')!r}, which --keep {args.keep} does not keep"
        else:
            q = R.qid(R.question(row) or "")
            per_q[q] += 1
            if args.keep == "first-k" and per_q[q] > args.k:
                why = f"row {i} is one more sample of a question than --k {args.k}"
        if why:
            raise R.DataError(f"holds rows an earlier run kept with other options or data ({why}); appending "
                              "would mix the two: delete the file or pass another --out", path=out.path)


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="generated samples (what `generate` writes, or any s1K / "
                                                 "s1K-1.1 / ShareGPT file with a reference answer)")
    p.add_argument("--out", required=True, help="kept rows, .jsonl (appended; a rerun resumes)")
    p.add_argument("--graded", help="also write every graded row here (.jsonl)")
    p.add_argument("--answer-field", help="reference answer field (default: answer / gt / solution)")
    p.add_argument("--protocol", default="s1fast",
                   help="how answers are extracted and compared: s1fast (its grader) or a named harness of "
                        "s1fast.protocols.PROTOCOLS (s1, skythought, math-verify)")
    p.add_argument("--keep", choices=KEEP, default="correct", help="rejection sampling rule")
    p.add_argument("--k", type=R.positive_int, default=1, help="with --keep first-k: correct samples kept per question")


def main(args) -> R.Tally:
    tally = R.Tally("verify")
    rows = []
    for i, row in R.read(args.data):
        q = R.question(row)
        if q is None:
            tally.drop("no_question")
            continue
        row.setdefault("key", f"{R.qid(q)}:{row.get('sample', i)}")
        rows.append(row)
    if rows and not any(R.attempt(row).strip() for row in rows):
        raise R.DataError(f"no row has an answer to grade: no attempt / deepseek_attempt field or assistant turn "
                          f"with text (the first row has: {', '.join(sorted(rows[0]))}); give verify the rows "
                          f"generate writes, or raise generate's --max-tokens if every answer was cut",
                          path=args.data)
    if rows and args.answer_field and not any(row.get(args.answer_field) not in (None, "") for row in rows):
        raise R.DataError(f"no row has the field '{args.answer_field}' named by --answer-field (the first row has: "
                          f"{', '.join(sorted(rows[0]))})", path=args.data)
    with R.Output(args.out) as out:
        _check_earlier_rows(args, out, {row["key"] for row in rows})
        graded = R.Output(args.graded) if args.graded else None
        kept_per_q = defaultdict(int)
        for row in sorted(rows, key=lambda r: (R.qid(R.question(r)), r.get("sample", 0))):
            qid = R.qid(R.question(row))
            if row["key"] in out.keys:       # kept by an earlier run
                kept_per_q[qid] += 1
        for row in sorted(rows, key=lambda r: (R.qid(R.question(r)), r.get("sample", 0))):
            if row["key"] in out.keys:
                tally.note("already_done")
                continue
            g = grade_row(row, args.answer_field, args.protocol)
            if graded is not None and row["key"] not in graded.keys:
                graded.write(g)
            qid = R.qid(R.question(row))
            if args.keep == "all":
                keep, why = True, g["verdict"]
            elif g["verdict"] != "correct":
                keep, why = False, g["verdict"]
            elif args.keep == "first-k" and kept_per_q[qid] >= args.k:
                keep, why = False, "over_k"
            else:
                keep, why = True, "correct"
            if keep:
                kept_per_q[qid] += 1
                out.write(g)
                tally.keep(why)
            else:
                tally.drop(why)
        if graded is not None:
            graded.close()
        tally.note("questions", len({R.qid(R.question(r)) for r in rows}))
        tally.note("questions_with_a_kept_sample", sum(1 for v in kept_per_q.values() if v))
    return tally
