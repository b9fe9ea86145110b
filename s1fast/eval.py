"""Evaluate a reasoning model under budget forcing: accuracy against mean thinking tokens (s1's scaling curve).

For every thinking budget and every ``num_wait`` the whole data set is generated with
``s1fast.generate`` (greedy by default, as in the paper), each output's final answer is extracted and
graded for mathematical equivalence by ``s1fast.grading`` (which grader was used is recorded), and one
row is reported: accuracy, mean thinking tokens, mean waits used, share of outputs that hit the cap.

Usage::

    python -m s1fast.eval --model DIR --budgets 1000,2000,4000,8000 --num-wait 0,1,2
    python -m s1fast.eval --model DIR --data aime24.jsonl --budgets auto --out runs/eval

``--data`` is jsonl with a question and a reference answer per line (fields ``question`` / ``answer``,
or ``problem``, ``gt``; see ``--question-field`` / ``--answer-field``); the default is the bundled sample
of 110 real problems (30 AIME 2024, 40 AMC 2023, 40 MATH500). Written under ``--out``: ``results.json``
(every row, the configuration and the grader), ``table.md``, ``scaling.png`` (accuracy against mean thinking tokens, one
line per ``num_wait``) and ``generations.jsonl`` (each output with its extracted answer and verdict).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, replace
from typing import Sequence

from s1fast import grading
from s1fast.generate import (GenerationConfig, add_generation_args, budget_arg, config_from_args, generate,
                             open_backend, read_jsonl)

DEFAULT_DATA = os.path.join(os.path.dirname(__file__), "assets", "data", "eval_sample.jsonl")
QUESTION_FIELDS = ("question", "problem", "Question", "prompt")
ANSWER_FIELDS = ("answer", "gt", "Answer", "solution")


def read_problems(path: str, question_field: str | None = None, answer_field: str | None = None,
                  limit: int | None = None) -> list[dict]:
    """[{"question", "answer", "source"}] from a jsonl file; errors name the file, line and field."""
    rows = []
    for n, row in read_jsonl(path):
        q = _field(row, question_field, QUESTION_FIELDS, path, n, "question")
        a = _field(row, answer_field, ANSWER_FIELDS, path, n, "answer")
        rows.append({"question": str(q), "answer": str(a), "source": row.get("source", f"{path}:{n}")})
        if limit and len(rows) >= limit:
            break
    if not rows:
        raise ValueError(f"{path}: no problems found")
    return rows


def _field(row, name, candidates, path, n, what):
    names = (name,) if name else candidates
    for k in names:
        if isinstance(row, dict) and row.get(k) is not None:
            return row[k]
    raise ValueError(f"{path}:{n}: no {what} field (looked for {', '.join(names)}); "
                     f"pass --{what}-field to name it")


def answer_text(result: dict) -> str:
    """What is graded: the answer phase, after the forced end of thinking (so "Final Answer: X" counts)."""
    return result["forced_end"] + result["answer"]


def evaluate(model, tokenizer, problems: Sequence[dict], budgets: Sequence[int | str], num_waits: Sequence[int],
             config: GenerationConfig | None = None, backend="native", log=None) -> dict:
    """Generate and grade ``problems`` at every (num_wait, budget); returns {"rows", "generations", ...}."""
    base = config or GenerationConfig()
    questions = [p["question"] for p in problems]
    rows, gens = [], []
    for nw in num_waits:
        for budget in budgets:
            t0 = time.perf_counter()
            cfg = replace(base, max_thinking_tokens=budget, num_wait=nw)
            outs = generate(model, tokenizer, questions, cfg, backend=backend)
            correct = 0
            for p, o in zip(problems, outs):
                g = grading.grade(answer_text(o), p["answer"])
                correct += g["correct"]
                gens.append({"budget": budget, "num_wait": nw, "source": p["source"], "gold": p["answer"],
                             "pred": g["pred"], "correct": g["correct"], **{k: o[k] for k in (
                                 "thinking_tokens", "waits", "capped", "answer_tokens", "thinking", "answer",
                                 "forced_end")}})
            n = len(outs)
            row = {"budget": budget, "num_wait": nw, "n": n, "correct": correct, "accuracy": correct / n,
                   "mean_thinking_tokens": sum(o["thinking_tokens"] for o in outs) / n,
                   "mean_waits": sum(o["waits"] for o in outs) / n,
                   "capped_frac": sum(o["capped"] for o in outs) / n,
                   "seconds": round(time.perf_counter() - t0, 3)}
            rows.append(row)
            if log:
                log(f"num_wait={nw} budget={budget}: accuracy {row['accuracy']:.3f} "
                    f"({correct}/{n}), mean thinking tokens {row['mean_thinking_tokens']:.1f}")
    return {"grader": grading.BACKEND, "config": asdict(base), "rows": rows, "generations": gens}


def table(rows: Sequence[dict]) -> str:
    lines = ["| num_wait | budget | accuracy | correct / n | mean thinking tokens | mean waits | capped |",
             "|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['num_wait']} | {r['budget']} | {100 * r['accuracy']:.1f}% | {r['correct']} / {r['n']} | "
                     f"{r['mean_thinking_tokens']:.1f} | {r['mean_waits']:.2f} | {100 * r['capped_frac']:.0f}% |")
    return "\n".join(lines) + "\n"


def plot(rows: Sequence[dict], path: str, title: str) -> None:
    """Accuracy against mean thinking tokens, one line per num_wait, points labelled with their budget."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for nw in sorted({r["num_wait"] for r in rows}):
        pts = sorted(((r["mean_thinking_tokens"], 100 * r["accuracy"], r["budget"]) for r in rows
                      if r["num_wait"] == nw), key=lambda p: p[0])
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=f"num_wait={nw}")
        for x, y, b in pts:
            ax.annotate(str(b), (x, y), textcoords="offset points", xytext=(3, 4), fontsize=7)
    ax.set_xlabel("mean thinking tokens")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, max(10.0, 1.15 * max(100 * r["accuracy"] for r in rows)))
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_outputs(result: dict, out_dir: str, title: str) -> dict:
    os.makedirs(out_dir, exist_ok=True)
    paths = {k: os.path.join(out_dir, f) for k, f in (("results", "results.json"), ("table", "table.md"),
                                                        ("plot", "scaling.png"), ("generations", "generations.jsonl"))}
    with open(paths["generations"], "w") as fh:
        for g in result["generations"]:
            fh.write(json.dumps(g, ensure_ascii=False) + "\n")
    summary = {k: v for k, v in result.items() if k != "generations"}
    with open(paths["results"], "w") as fh:
        json.dump(summary, fh, indent=2)
    with open(paths["table"], "w") as fh:
        fh.write(f"{title}\n\ngrader: {result['grader']}\n\n" + table(result["rows"]))
    plot(result["rows"], paths["plot"], title)
    return paths


def _list(parse):
    def f(text: str):
        try:
            return [parse(x.strip()) for x in text.split(",") if x.strip()]
        except (ValueError, argparse.ArgumentTypeError) as e:
            raise argparse.ArgumentTypeError(f"{text!r}: {e}") from None
    return f


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m s1fast.eval", description=__doc__.split("\n\n")[0])
    add_generation_args(p)
    p.add_argument("--data", default=DEFAULT_DATA, help="jsonl of problems (default: the bundled sample)")
    p.add_argument("--question-field")
    p.add_argument("--answer-field")
    p.add_argument("--limit", type=int, help="only the first N problems")
    p.add_argument("--budgets", type=_list(budget_arg), default=[1000, 2000, 4000, 8000],
                   help="comma-separated thinking budgets (ints or auto)")
    p.add_argument("--num-wait", type=_list(int), default=[0], help="comma-separated num_wait values")
    p.add_argument("--out", default="eval_out", help="output folder")
    args = p.parse_args(argv)
    problems = read_problems(args.data, args.question_field, args.answer_field, args.limit)
    model, tok, backend = open_backend(args)
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    log(f"{len(problems)} problems from {args.data}; grader: {grading.BACKEND}")
    result = evaluate(model, tok, problems, args.budgets, args.num_wait, config_from_args(args), backend, log)
    result.update(model=args.model, data=args.data, n_problems=len(problems))
    title = f"{os.path.basename(os.path.normpath(args.model))} on {os.path.basename(args.data)} (n={len(problems)})"
    paths = write_outputs(result, args.out, title)
    print(table(result["rows"]), end="")
    log("wrote " + ", ".join(paths.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
