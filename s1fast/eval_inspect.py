"""An evaluation's files read back, and ``python -m s1fast.eval compare | show | agreement``.

``compare A B``: the problems whose verdicts differ between two evaluations; ``show DIR``: outputs where a forced
"Wait" continued the thinking or a cap forced the answer; ``agreement``: each grading protocol against a
harness's published verdicts (docs/eval.md).
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

from s1fast import protocols
from s1fast.jsonl import read_jsonl


class EvalError(ValueError):
    """An evaluation that cannot run as asked; the message says what to change."""


def output_paths(out_dir: str) -> dict:
    return {k: os.path.join(out_dir, f) for k, f in (("results", "results.json"), ("table", "table.md"),
                                                      ("plot", "scaling.png"), ("problems", "problems.jsonl"),
                                                      ("run", "run.json"))}


def read_records(path: str) -> list[dict]:
    """The per-problem records of a problems.jsonl (or of the one in a results folder)."""
    if os.path.isdir(path):
        path = output_paths(path)["problems"]
    if not os.path.exists(path):
        raise EvalError(f"{path}: no such file (give a problems.jsonl or the --out folder of an evaluation)")
    return [r for _, r in read_jsonl(path, cut_tail_ok=True)]   # an evaluation may be writing its last line


# ---- compare ----------------------------------------------------------------------------------------------
def compare(a: Sequence[dict], b: Sequence[dict]) -> list[tuple[dict, dict]]:
    """Pairs of records (same problem and setting) whose verdicts differ, in A's order."""
    key = lambda r: (r["id"], str(r["budget"]), r["num_wait"])  # noqa: E731
    index = {key(r): r for r in b}
    return [(r, index[key(r)]) for r in a if key(r) in index and r["verdicts"] != index[key(r)]["verdicts"]]


def compare_main(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m s1fast.eval compare",
                                description="Print the problems whose verdicts differ between two evaluations.")
    p.add_argument("a", help="problems.jsonl or --out folder of evaluation A")
    p.add_argument("b", help="problems.jsonl or --out folder of evaluation B")
    args = p.parse_args(argv)
    try:
        ra, rb = read_records(args.a), read_records(args.b)
    except (EvalError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    diffs = compare(ra, rb)
    for x, y in diffs:
        print(f"{x['id']}  budget={x['budget']} num_wait={x['num_wait']} gold={x['gold']!r}\n"
              f"  A: {x['extracted']} -> {x['verdicts']}\n  B: {y['extracted']} -> {y['verdicts']}")
    common = len({(r['id'], str(r['budget']), r['num_wait']) for r in ra}
                 & {(r['id'], str(r['budget']), r['num_wait']) for r in rb})
    print(f"{len(diffs)} of {common} problem-settings in both differ")
    return 0


# ---- show ----------------------------------------------------------------------------------------------------
def examples(records: Sequence[dict], n: int = 2) -> str:
    """A few outputs that show budget forcing: a forced "Wait" that continued the thinking, and a cap that
    forced the answer (each with its setting, verdict and the completion as the model wrote it)."""
    waited = [r for r in records if any(r["waits"]) and "Wait" in r["samples"][0]]
    capped = [r for r in records if r["capped"][0]]
    out = []
    for title, rs in (("a forced \"Wait\" continued the thinking", waited[-n:]),
                      ("the thinking budget ran out and the answer was forced", capped[len(capped) // 2:][:n])):
        for r in rs:
            verdict = "right" if r["verdicts"][0] else "wrong"
            out.append(f"--- {title} (problem {r['id']}, budget {r['budget']}, num_wait {r['num_wait']}, "
                       f"{r['thinking_tokens'][0]} thinking tokens; answer {r['extracted'][0]!r}, gold {r['gold']!r}: "
                       f"{verdict})\n{r['samples'][0]}")
    return "\n".join(out) + "\n" if out else "(no output was forced to wait or capped)\n"


def show_main(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m s1fast.eval show",
                                description="Print outputs where a forced Wait continued the thinking or a cap "
                                            "forced the answer.")
    p.add_argument("run", help="problems.jsonl or --out folder of an evaluation")
    p.add_argument("-n", type=int, default=2, help="examples of each kind")
    args = p.parse_args(argv)
    try:
        if args.n < 1:
            raise EvalError(f"-n must be at least 1, got {args.n}")
        print(examples(read_records(args.run), args.n), end="")
    except (EvalError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


# ---- agreement with a published harness ----------------------------------------------------------------------
AGREEMENT_SAMPLE = os.path.join(os.path.dirname(__file__), "assets", "data", "grader_agreement.jsonl")


def agreement(rows: Sequence[dict], name: str) -> list[dict]:
    """The rows (``text``, ``gt``, ``harness_correct``) where protocol ``name`` disagrees with the harness."""
    grader = protocols.protocol(name)
    return [r for r in rows if grader.grade(r["text"], r["gt"])["correct"] != r["harness_correct"]]


def agreement_main(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m s1fast.eval agreement",
                                description="Each protocol's agreement with a harness's published verdicts.")
    p.add_argument("sample", nargs="?", default=AGREEMENT_SAMPLE,
                   help="jsonl with text, gt, harness_correct (default: 200 real outputs graded by SkyThought)")
    args = p.parse_args(argv)
    try:
        rows = [r for _, r in read_jsonl(args.sample)]
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print("| protocol | agree | disagree (id: harness verdict, extracted here) |\n|---|---:|---|")
    for name in protocols.PROTOCOLS:
        dis = agreement(rows, name)
        ids = "; ".join(f"{r.get('id')}: {r['harness_correct']}, "
                        f"{str(protocols.protocol(name).extract(r['text']))[:30]!r}" for r in dis[:12])
        print(f"| {name} | {len(rows) - len(dis)} / {len(rows)} ({100 * (len(rows) - len(dis)) / len(rows):.1f}%) | "
              f"{ids}{f' (+{len(dis) - 12} more)' if len(dis) > 12 else ''} |")
    return 0
