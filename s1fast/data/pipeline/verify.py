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
    """``row`` plus ``pred``, ``correct``, ``grader``, ``gold`` and ``verdict``: ``correct``, ``wrong``,
    ``no_answer``, ``no_reference`` (none, or one the grader cannot read: ``grading.reference_problem``),
    ``several_answers`` (boxes different values) or ``grader_error`` (the grader raised or overran its time
    limit; ``grader_error`` says what): each counted in the summary, none a crash and none ``correct``.

    ``protocol``: ``s1fast`` (``grading.grade``: s1's extraction, math-verify equivalence when installed) or a
    named harness of ``protocols.PROTOCOLS`` (s1, skythought, math-verify)."""
    from s1fast import grading, protocols
    grade = grading.grade if protocol == "s1fast" else protocols.protocol(protocol).grade
    gold = R.reference(row, answer_field)
    text = (row.get("generation") or {}).get("forced_end", "") + R.attempt(row)
    out = dict(row)
    try:
        # the default grader's rule for every protocol (``grade`` applies it again, cached): a reference it
        # cannot read is no_reference whichever harness compares the answers, so their counts compare
        if gold is None or grading.reference_problem(gold):
            out.update(pred=None, correct=None, verdict="no_reference", gold=gold)
            return out
        if not text.strip():
            out.update(pred=None, correct=False, verdict="no_answer", gold=gold)
            return out
        g = grade(text, gold)
    except Exception as e:  # noqa: BLE001 -- one pathological answer must not stop a 100K-row run
        out.update(pred=None, correct=False, verdict="grader_error", gold=gold,
                   grader_error=f"{type(e).__name__}: {e}"[:500])
        return out
    verdict = g.get("note") or ("correct" if g["correct"] else ("no_answer" if g["pred"] is None else "wrong"))
    out.update(pred=g["pred"], correct=None if verdict == "no_reference" else g["correct"],
               grader=g.get("grader") or g.get("protocol"), verdict=verdict, gold=gold)
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


def _index(args, tally: R.Tally, rows: R.Reread) -> list:
    """The first pass over --data: of each sample only what orders and checks it, not its text: ``(question
    id, sample, key, row number, where in the file)``, in grading order (by question, then sample index). Rows
    of a .json / .parquet file are spilled to a temporary file as they are read (``rows``), and read from there."""
    meta, fields, answered, named = [], None, False, not args.answer_field
    for i, pos, row in rows:
        q = R.question(row)
        if q is None:
            tally.drop("no_question")
            continue
        row.setdefault("key", f"{R.qid(q)}:{row.get('sample', i)}")
        fields = fields or ", ".join(sorted(row))
        answered = answered or bool(R.attempt(row).strip())
        named = named or row.get(args.answer_field) not in (None, "")
        meta.append((R.qid(q), row.get("sample", 0), row["key"], i, pos))
    if meta and not answered:
        raise R.DataError(f"no row has an answer to grade: no attempt / deepseek_attempt field or assistant turn "
                          f"with text (the first row has: {fields}); give verify the rows generate writes, or "
                          f"raise generate's --max-tokens if every answer was cut", path=args.data)
    if meta and not named:
        raise R.DataError(f"no row has the field '{args.answer_field}' named by --answer-field (the first row has: "
                          f"{fields})", path=args.data)
    return sorted(meta, key=lambda m: (m[0], m[1]))


def _keep(args, g: dict, kept: int) -> tuple[bool, str]:
    """Whether rejection sampling keeps the graded sample ``g`` (``kept``: samples of its question kept so
    far), and why."""
    if args.keep == "all":
        return True, g["verdict"]
    if g["verdict"] != "correct":
        return False, g["verdict"]
    if args.keep == "first-k" and kept >= args.k:
        return False, "over_k"
    return True, "correct"


def main(args) -> R.Tally:
    """Two passes over --data, neither holding its text: index the samples, then read, grade and write them
    one at a time in grading order."""
    tally = R.Tally("verify")
    with R.Reread(args.data, beside=args.out) as rows:
        _grade(args, tally, rows, _index(args, tally, rows))
    return tally


def _grade(args, tally: R.Tally, rows: R.Reread, order: list) -> None:
    """The second pass: each sample read again, graded and written, in grading order."""
    with R.Output(args.out) as out:
        _check_earlier_rows(args, out, {m[2] for m in order})
        graded = R.Output(args.graded) if args.graded else None
        kept_per_q = defaultdict(int)
        for qid, _, key, _, _ in order:
            if key in out.keys:       # kept by an earlier run
                kept_per_q[qid] += 1
        bar = R.bar(len(order), "grading", "row", not getattr(args, "no_progress", False))
        for qid, _, key, i, pos in order:
            bar.update(1)
            if key in out.keys:
                tally.note("already_done")
                continue
            row = rows.row(pos, i)
            row.setdefault("key", key)
            g = grade_row(row, args.answer_field, args.protocol)
            if graded is not None and key not in graded.keys:
                graded.write(g)
            keep, why = _keep(args, g, kept_per_q[qid])
            if keep:
                kept_per_q[qid] += 1
                out.write(g)
                tally.keep(why)
            else:
                tally.drop(why)
        bar.close()
        if graded is not None:
            graded.close()
        tally.note("questions", len({m[0] for m in order}))
        tally.note("questions_with_a_kept_sample", sum(1 for v in kept_per_q.values() if v))
