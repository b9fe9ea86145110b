"""``stats``: what a data set holds: counts, token lengths, per-domain and per-source tables, a PNG.

Lengths are in tokens of the real tokenizer (the bundled Qwen2.5 unless ``--tokenizer``): question, trace
and answer separately, and the whole training sequence under ``--recipe`` when the rows render in it. Writes
``stats.json``, ``stats.md`` and ``lengths.png`` under ``--out``; the markdown is also printed. The file is
streamed: what is held is a few numbers a row (lengths, question hashes), not the rows.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from array import array
from collections import Counter, defaultdict
from typing import Iterable

from ...figure import pyplot, save_figure
from . import rows as R
from ..format import RECIPES, render
from ..readers import DataError


def _summary(xs) -> dict:
    if not xs:
        return {"n": 0}
    s = sorted(xs)
    pick = lambda p: s[min(len(s) - 1, int(p * len(s)))]  # noqa: E731
    return {"n": len(s), "mean": round(statistics.fmean(s), 1), "min": s[0], "p50": pick(0.5), "p90": pick(0.9),
            "max": s[-1], "sum": sum(s)}


def compute(rows: Iterable[dict], tokenizer, recipe: str | None, domain) -> dict:
    """Counts and per-row token lengths of ``rows``, read once and not held: a data set of any size streams."""
    n_tok = lambda t: R.n_tokens(tokenizer, t)  # noqa: E731
    lengths = defaultdict(lambda: array("q"))    # 8 bytes a length
    by_domain, by_source = defaultdict(lambda: Counter()), defaultdict(lambda: Counter())
    qids, n, no_q, unrenderable = set(), 0, 0, 0
    for row in rows:
        n += 1
        q = R.question(row)
        if q is None:
            no_q += 1
            continue
        qids.add(R.qid(q))
        t, a = R.trace(row), R.attempt(row)
        lq, lt, la = n_tok(q), n_tok(t), n_tok(a)
        lengths["question"].append(lq)
        lengths["trace"].append(lt)
        lengths["answer"].append(la)
        if recipe:
            try:
                lengths["sequence"].append(n_tok(render(row, recipe)))
            except DataError:
                unrenderable += 1
        for table, name in ((by_domain, domain(row)), (by_source, str(row.get("source_type") or row.get("source")
                                                                         or "unknown").split(":")[0])):
            table[name]["rows"] += 1
            table[name]["trace_tokens"] += lt
            if row.get("correct") is True:
                table[name]["correct"] += 1
    return {"rows": n, "questions": len(qids), "rows_without_question": no_q,
            "rows_not_renderable": unrenderable if recipe else None, "recipe": recipe,
            "lengths": {k: _summary(v) for k, v in lengths.items()}, "_raw": dict(lengths),
            "by_domain": {k: dict(v) for k, v in sorted(by_domain.items())},
            "by_source": {k: dict(v) for k, v in sorted(by_source.items())}}


def markdown(st: dict, title: str) -> str:
    out = [f"## {title}", "", f"{st['rows']} rows, {st['questions']} distinct questions"
           + (f", {st['rows_without_question']} rows without a question" if st["rows_without_question"] else "")
           + (f", {st['rows_not_renderable']} rows not renderable as {st['recipe']}" if st["rows_not_renderable"]
              else ""), "", "| tokens | n | mean | min | p50 | p90 | max |", "|---|---:|---:|---:|---:|---:|---:|"]
    for k, s in st["lengths"].items():
        if s["n"]:
            out.append(f"| {k} | {s['n']} | {s['mean']} | {s['min']} | {s['p50']} | {s['p90']} | {s['max']} |")
    for name in ("by_domain", "by_source"):
        out += ["", f"| {name[3:]} | rows | mean trace tokens | correct |", "|---|---:|---:|---:|"]
        for k, c in st[name].items():
            out.append(f"| {k} | {c['rows']} | {c['trace_tokens'] / max(1, c['rows']):.0f} | {c.get('correct', 0)} |")
    return "\n".join(out) + "\n"


def plot(st: dict, path: str, title: str) -> str | None:
    """Histograms of the token lengths, rows per domain (s1fast.figure: skipped with a notice without matplotlib
    or on a full disk)."""
    if (plt := pyplot(path, "stats.md has the numbers", sys.stderr)) is None:
        return None
    raw = {k: v for k, v in st["_raw"].items() if v}
    fig, axes = plt.subplots(1, len(raw) + 1, figsize=(4 * (len(raw) + 1), 3.4), dpi=110, squeeze=False)
    axes = axes[0]
    for ax, (k, v) in zip(axes, raw.items()):
        ax.hist(v, bins=min(50, max(5, len(set(v)))), color="tab:blue", alpha=0.8)
        ax.set_title(f"{k} tokens (n={len(v)})", fontsize=9)
        ax.set_xlabel("tokens")
    ax = axes[-1]
    doms = st["by_domain"]
    names = list(doms)[:30]
    ax.barh(names, [doms[n]["rows"] for n in names], color="tab:green")
    ax.set_title("rows per domain", fontsize=9)
    ax.tick_params(axis="y", labelsize=6)
    fig.suptitle(title, fontsize=10)
    return save_figure(plt, fig, path, "stats.md has the numbers", sys.stderr)


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="a .json/.jsonl/.parquet data set (any schema s1fast reads)")
    p.add_argument("--out", required=True, help="folder for stats.json, stats.md, lengths.png")
    p.add_argument("--tokenizer", help="tokenizer folder (default: the bundled Qwen2.5)")
    p.add_argument("--recipe", choices=RECIPES, help="also count whole training sequences in this format")
    p.add_argument("--domain-field", help="field naming each row's domain (default: domain / subject / cot_type / "
                                          "source_type / source)")
    p.add_argument("--domain-fn", help="classifier module:function taking a row, returning its domain")


def main(args) -> R.Tally:
    from ..cache import load_tokenizer
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise DataError("is a file; --out takes a folder (for stats.json, stats.md and lengths.png)", path=args.out)
    R.need_file(args.data, "--data")     # before the tokenizer's load (seconds)
    tokenizer, domain = load_tokenizer(args.tokenizer), R.domain_getter(args.domain_field, args.domain_fn)
    rows = (row for _, row in R.read_shown(args.data, "counting tokens", not args.no_progress))
    st = compute(rows, tokenizer, args.recipe, domain)
    if not st["rows"]:
        raise DataError("holds no rows: nothing to count; pass --data with a file of examples", path=args.data)
    os.makedirs(args.out, exist_ok=True)
    title = f"{os.path.basename(args.data)}"
    md = markdown(st, title)
    plot(st, os.path.join(args.out, "lengths.png"), title)
    with open(os.path.join(args.out, "stats.json"), "w") as f:
        json.dump({k: v for k, v in st.items() if k != "_raw"}, f, indent=2)
    with open(os.path.join(args.out, "stats.md"), "w") as f:
        f.write(md)
    print(md, end="")
    tally = R.Tally("stats")
    tally.keep("rows", st["rows"])
    tally.note("questions", st["questions"])
    return tally
