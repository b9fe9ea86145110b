"""``decontaminate``: drop questions that overlap the evaluation sets, and duplicates within the data.

- Evaluation overlap (s1's rule): a question sharing one word n-gram (``--ngram``, 8 by default) with any
  evaluation question, both lower-cased and whitespace-normalised; a text shorter than n words is one n-gram.
  Built in: the evaluation problems s1fast ships (``assets/data/eval_sample.jsonl``); add files with ``--eval``.
- Exact duplicates: the same normalised question as an earlier row.
- Near duplicates: Jaccard similarity of word ``--near-n``-gram sets >= ``--near-threshold`` with an earlier
  kept question. Samples of one question (rows from ``generate``: same question text, ``sample`` field) are one
  question, never duplicates of each other.

The report (``<out>.removed.jsonl``) lists each removed question once: why, how many rows, and the benchmark
item or earlier question it matched (with the shared n-gram or the similarity).
"""
from __future__ import annotations

import argparse
import os
from collections import defaultdict

from . import rows as R

BUILTIN_EVAL = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(__file__))), "assets", "data",
                            "eval_sample.jsonl")


def words(text: str) -> list[str]:
    """s1's normalisation: lower case, runs of whitespace as one separator."""
    return text.lower().split()


def ngrams(ws: list[str], n: int) -> set[str]:
    if len(ws) < n:
        return {" ".join(ws)} if ws else set()
    return {" ".join(ws[i:i + n]) for i in range(len(ws) - n + 1)}


class EvalIndex:
    """n-gram -> the evaluation items that contain it."""

    def __init__(self, n: int = 8):
        self.n, self.index, self.items, self.grams = n, defaultdict(list), [], []

    def add_file(self, path: str) -> int:
        R.need_file(path, "--eval")
        added = 0
        for i, row in R.read(path):
            q = R.question(row)
            if not q:
                continue
            name = os.path.basename(path)
            item = {"benchmark_file": name, "item": row.get("source", f"{name}:{i}"),
                    "benchmark_question": q}
            self.items.append(item)
            self.grams.append(ngrams(words(q), self.n))
            for g in self.grams[-1]:
                self.index[g].append(len(self.items) - 1)
            added += 1
        if not added:
            raise R.DataError("--eval: no row has a question (question / problem / prompt, or a user turn), so "
                              "nothing would be checked against it: pass an evaluation set", path=path)
        return added

    def match(self, question: str, min_overlap: float = 0.0) -> dict | None:
        """The evaluation item sharing the largest share of its n-grams with ``question``, when that share is
        above ``min_overlap`` (0: any one shared n-gram, s1's rule), with one of the shared n-grams; else None."""
        mine = ngrams(words(question), self.n)
        shared = defaultdict(int)
        first_gram = {}
        for g in sorted(mine):
            for j in set(self.index.get(g, ())):
                shared[j] += 1
                first_gram.setdefault(j, g)
        if not shared:
            return None
        j = max(shared, key=lambda j: (shared[j] / len(self.grams[j]), -j))
        if shared[j] / len(self.grams[j]) < min_overlap:
            return None
        return {**self.items[j], "ngram": first_gram[j], "shared_ngrams": shared[j],
                "benchmark_ngrams": len(self.grams[j])}


class DuplicateIndex:
    """Earlier kept questions, for exact (normalised text) and near (n-gram Jaccard) duplicates. Texts and
    n-grams are held as their hashes (64-bit: a false match is ~1e-7 likely among 1M questions), an n-gram
    seen in one question as that question's number alone: the index of a 1M-question set fits in memory."""

    def __init__(self, n: int = 3, threshold: float = 0.7):
        self.n, self.threshold = n, threshold
        self.exact, self.sizes, self.by_gram, self.texts = {}, [], {}, []

    def _holding(self, gram: str):
        js = self.by_gram.get(hash(gram), ())
        return (js,) if isinstance(js, int) else js

    def match(self, question: str) -> dict | None:
        ws = words(question)
        norm = hash(" ".join(ws))
        if norm in self.exact:
            return {"kind": "duplicate_exact", "question": self.texts[self.exact[norm]]}
        if self.threshold > 1:
            return None
        mine = ngrams(ws, self.n)
        shared = defaultdict(int)
        for g in mine:
            for j in self._holding(g):
                shared[j] += 1
        best, best_sim = None, 0.0
        for j, s in shared.items():
            sim = s / (len(mine) + self.sizes[j] - s)
            if sim > best_sim:
                best, best_sim = j, sim
        if best is not None and best_sim >= self.threshold:
            return {"kind": "duplicate_near", "question": self.texts[best], "similarity": round(best_sim, 4)}
        return None

    def add(self, question: str) -> None:
        ws = words(question)
        j = len(self.texts)
        self.texts.append(question)
        self.exact.setdefault(hash(" ".join(ws)), j)
        g = ngrams(ws, self.n)
        self.sizes.append(len(g))
        for x in g:
            h = hash(x)
            js = self.by_gram.get(h)
            if js is None:
                self.by_gram[h] = j
            elif isinstance(js, int):
                self.by_gram[h] = [js, j]
            else:
                js.append(j)


def decider(eval_index: EvalIndex | None, dups: DuplicateIndex | None, min_overlap: float = 0.0):
    """row -> None (kept) or why it is removed: ``{"reason": eval_overlap | duplicate_exact | duplicate_near |
    no_question, ...what it matched}``; rows are decided in order (earlier kept questions are the duplicates)."""
    seen = {}   # question identity -> the decision made for it

    def decide(row: dict) -> dict | None:
        q = R.question(row)
        if q is None:
            return {"reason": "no_question"}
        ident = R.qid(q) if "sample" in row else None    # a row without samples is a question of its own
        if ident in seen:
            return seen[ident]
        m = eval_index.match(q, min_overlap) if eval_index is not None else None
        if m is not None:
            m = {"reason": "eval_overlap", **m}
        elif dups is not None:
            d = dups.match(q)
            if d is not None:
                m = {"reason": d.pop("kind"), "matched_question": d.pop("question"), **d}
        if m is None and dups is not None:
            dups.add(q)
        if ident is not None:
            seen[ident] = m
        return m
    return decide


def decontaminate(rows, eval_index: EvalIndex | None, dups: DuplicateIndex | None, min_overlap: float = 0.0):
    """Yield ``(row, None)`` for kept rows and ``(row, match)`` for removed ones (see :func:`decider`), in
    order; ``rows``: ``(row number, row)``."""
    decide = decider(eval_index, dups, min_overlap)
    for _, row in rows:
        yield row, decide(row)


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="rows to clean (.json/.jsonl/.parquet, any schema s1fast reads)")
    p.add_argument("--out", required=True, help="kept rows, .jsonl (appended; a rerun resumes; one that would keep "
                                                 "otherwise is refused)")
    p.add_argument("--eval", action="append", default=[], help="an evaluation set to check against (repeatable; "
                                                                "any file with question / problem fields)")
    p.add_argument("--no-builtin-eval", action="store_true", help="do not check the evaluation problems s1fast ships")
    p.add_argument("--ngram", type=R.positive_int, default=8,
                   help="evaluation overlap: shared word n-gram length (s1: 8)")
    p.add_argument("--min-overlap", type=R.non_negative_float, default=0.0,
                   help="evaluation overlap: least share of the benchmark item's n-grams that must be shared "
                        "(0: any one, s1's rule; phrases like 'm and n are relatively prime positive integers' "
                        "then match many unrelated questions, which the report shows)")
    p.add_argument("--near-n", type=R.positive_int, default=3,
                   help="near duplicates: word n-gram length of the Jaccard sets")
    p.add_argument("--near-threshold", type=R.non_negative_float, default=0.7,
                   help="near duplicates: Jaccard similarity at or above which a later question is removed "
                        "(> 1 turns near-duplicate removal off)")
    p.add_argument("--no-dedup", action="store_true", help="keep duplicates within the data")
    p.add_argument("--report", help="removed questions, .jsonl (default: <out>.removed.jsonl)")


def _kept_keys(args, idx: EvalIndex | None) -> set:
    """The keys of the rows this run keeps: a first pass over --data, for a rerun's check of --out."""
    decide = decider(idx, None if args.no_dedup else DuplicateIndex(args.near_n, args.near_threshold),
                     args.min_overlap)
    return {row.get("key") or f"row{i}" for i, row in R.read(args.data, warn=False) if decide(row) is None}


def main(args) -> R.Tally:
    """One pass over --data, a row at a time (a rerun first checks --out in a pass of its own); the report,
    one row per removed question with its row count, is written at the end."""
    tally = R.Tally("decontaminate")
    idx = EvalIndex(args.ngram)
    files = ([] if args.no_builtin_eval else [BUILTIN_EVAL]) + list(args.eval)
    for f in files:
        tally.note(f"eval_items:{os.path.basename(f)}", idx.add_file(f))
    idx = idx if files else None
    decide = decider(idx, None if args.no_dedup else DuplicateIndex(args.near_n, args.near_threshold),
                     args.min_overlap)
    report_path = args.report or args.out[:-len(".jsonl")] + ".removed.jsonl"
    with R.Output(args.out) as out, R.Output(report_path, key_field="question_id") as report:
        if out.rows:
            out.check_same_run(_kept_keys(args, idx), "keep")
        removed = {}    # question id + reason -> (question, match, rows), in the order first met
        for i, row in R.read_shown(args.data, "decontaminate", not getattr(args, "no_progress", False)):
            m = decide(row)
            if m is None:
                key = row.get("key") or f"row{i}"
                if key in out.keys:
                    tally.note("already_done")
                else:
                    out.write({**row, "key": key})
                tally.keep("clean")
                continue
            tally.drop(m["reason"])
            q = R.question(row) or ""
            qk = R.qid(q) + ":" + m["reason"]
            n = removed[qk][2] if qk in removed else 0
            removed[qk] = (q, m, n + 1)
        for qk, (q, m, n) in removed.items():
            if qk not in report.keys:
                report.write({"question_id": qk, "question": q, "rows": n, **m})
        tally.note("removed_questions", len(removed))
    print(f"decontaminate: report of removed questions in {report_path}")
    return tally
