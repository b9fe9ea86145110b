"""Evaluate a reasoning model under budget forcing, with a named grading protocol and honest statistics.

For every ``num_wait`` and thinking budget, each problem is answered ``--samples`` times (seeded per sample;
greedy is ``--samples 1 --temperature 0``), graded by ``--protocol`` (``s1``, ``skythought``, ``math-verify``),
and reported as pass@1 with its standard error, unbiased pass@k, majority vote and thinking tokens (docs/eval.md).

    python -m s1fast.eval --model DIR --data aime24.jsonl --budgets 1000,2000,4000 --num-wait 0,1,2 --out runs/eval
    python -m s1fast.eval --model runs/tiny-toy/final --data toy:chain:59 --budgets 8,24,48,96 --protocol s1
    python -m s1fast.eval compare runs/evalA runs/evalB        # problems whose verdicts differ
    python -m s1fast.eval show runs/evalA                      # outputs a "Wait" continued or a cap cut
    python -m s1fast.eval agreement                            # protocols vs SkyThought's published verdicts

Written under ``--out`` (docs/eval.md): ``problems.jsonl`` (appended as produced: a rerun resumes),
``results.json``, ``table.md`` and ``scaling.png``.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections import Counter
from dataclasses import replace
from typing import Sequence

from s1fast import grading, protocols
from s1fast.generate import (GenerationConfig, add_generation_args, budget_arg, check_args, compared_settings,
                             config_from_args, context_tokens, decoding_settings, generate, open_backend, too_long)
from s1fast import eval_inspect
from s1fast.eval_inspect import EvalError, output_paths, read_records
from s1fast.figure import pyplot, save_figure
from s1fast.jsonl import end_cut_line, read_jsonl

DEFAULT_DATA = os.path.join(os.path.dirname(__file__), "assets", "data", "eval_sample.jsonl")
DEFAULT_PROTOCOL = "math-verify" if grading.BACKEND == "math-verify" else "s1"
QUESTION_FIELDS = ("question", "problem", "Question", "prompt")
ANSWER_FIELDS = ("answer", "gt", "Answer", "solution")


# ---- problems ----------------------------------------------------------------------------------------------
def read_problems(path: str, question_field: str | None = None, answer_field: str | None = None,
                  limit: int | None = None) -> list[dict]:
    """[{"id", "question", "answer", "source"}] from a jsonl file or a toy source ``toy:NAME[:N]`` (held-out
    problems); errors name the file, line and field."""
    from s1fast.data import toy
    if toy.is_spec(path):
        task, n = toy.parse_spec(path)
        if path.count(":") == 1:
            n = 50
        rows = toy.make_problems(task, min(n, limit or n), seed=0, split="test")
        return [{"id": r["id"], "question": r["question"], "answer": r["answer"], "source": r["id"],
                 "difficulty": r["difficulty"]} for r in rows]
    rows = []
    for n, row in read_jsonl(path):
        q = _field(row, question_field, QUESTION_FIELDS, path, n, "question")
        a = _field(row, answer_field, ANSWER_FIELDS, path, n, "answer")
        source = row.get("source", f"{path}:{n}")
        rows.append({"id": str(row.get("id", source)), "question": str(q), "answer": str(a), "source": source})
        if limit and len(rows) >= limit:
            break
    if not rows:
        raise ValueError(f"{path}: no problems found")
    return rows


def check_unique_ids(problems: Sequence[dict]) -> None:
    """Records are keyed by problem id (a resume, ``compare``): two problems with one id would share a record."""
    seen: dict[str, str] = {}
    for p in problems:
        if p["id"] in seen:
            raise ValueError(f"{p['source']}: id {p['id']!r} again ({seen[p['id']]} has it); problem ids must be "
                             f"unique")
        seen[p["id"]] = p["source"]


def _field(row, name, candidates, path, n, what):
    names = (name,) if name else candidates
    for k in names:
        if isinstance(row, dict) and row.get(k) is not None:
            return row[k]
    raise ValueError(f"{path}:{n}: no {what} field (looked for {', '.join(names)}); "
                     f"pass --{what}-field to name it")


# ---- statistics ----------------------------------------------------------------------------------------------
def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are right: 1 - C(n-c, k) / C(n, k) (Chen et al. 2021)."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n} c={c} k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def mean_and_se(values: Sequence[float]) -> tuple[float, float]:
    """Mean and its standard error, sqrt(sample variance / n) (0 for a single value)."""
    n = len(values)
    m = sum(values) / n
    if n < 2:
        return m, 0.0
    var = sum((v - m) ** 2 for v in values) / (n - 1)
    return m, math.sqrt(var / n)


def majority(preds: Sequence[str | None]) -> str | None:
    """The most frequent extracted answer (ties: the first one sampled); None when none was extracted."""
    seen = [p for p in preds if p is not None]
    if not seen:
        return None
    counts = Counter(seen)
    top = max(counts.values())
    return next(p for p in seen if counts[p] == top)


def summarize(records: Sequence[dict], samples: int) -> dict:
    """One table row from the per-problem records of one (num_wait, budget) setting."""
    per_problem = [sum(r["verdicts"]) / len(r["verdicts"]) for r in records]
    p1, se = mean_and_se(per_problem)
    flat = lambda key: [x for r in records for x in r[key]]  # noqa: E731
    think, waits, capped = flat("thinking_tokens"), flat("waits"), flat("capped")
    row = {"budget": records[0]["budget"], "num_wait": records[0]["num_wait"], "n": len(records),
           "samples": samples, "correct": sum(sum(r["verdicts"]) for r in records), "accuracy": p1,
           "pass@1": p1, "pass@1_se": se,
           "majority": sum(r["majority_correct"] for r in records) / len(records),
           "mean_thinking_tokens": sum(think) / len(think), "mean_waits": sum(waits) / len(waits),
           "capped_frac": sum(capped) / len(capped)}
    k = 2
    while k <= samples:
        row[f"pass@{k}"] = sum(pass_at_k(len(r["verdicts"]), sum(r["verdicts"]), k) for r in records) / len(records)
        k *= 2
    return row


# ---- generation and grading ----------------------------------------------------------------------------------
def graded_text(result: dict) -> str:
    """What a harness sees of one output: the completion after the prompt, without the final stop token."""
    text = result["completion"]
    return text[:-len("<|im_end|>")] if text.endswith("<|im_end|>") else text


def _chunks(indices: Sequence[int], size: int) -> list[list[int]]:
    """Runs of consecutive indices, at most ``size`` long (so each run's seeds are one contiguous range)."""
    out: list[list[int]] = []
    for i in indices:
        if out and out[-1][-1] == i - 1 and len(out[-1]) < size:
            out[-1].append(i)
        else:
            out.append([i])
    return out


def evaluate(model, tokenizer, problems: Sequence[dict], budgets: Sequence[int | str], num_waits: Sequence[int],
             config: GenerationConfig | None = None, backend="native", *, protocol: str = DEFAULT_PROTOCOL,
             samples: int = 1, sink=None, done: dict | None = None, log=None) -> dict:
    """Generate and grade every problem ``samples`` times at every (num_wait, budget).

    ``sink(record)`` receives each per-problem record as it is produced; ``done`` maps (num_wait, budget, id)
    to records already produced by an interrupted run, which are reused, not generated again."""
    base = config or GenerationConfig()
    grader = protocols.protocol(protocol)
    done = done or {}
    rows, records = [], []
    for nw in num_waits:
        for budget in budgets:
            t0 = time.perf_counter()
            cfg = replace(base, max_thinking_tokens=budget, num_wait=nw)
            setting = [done.get((nw, budget, p["id"])) for p in problems]
            todo = [i for i, r in enumerate(setting) if r is None]
            for chunk in _chunks(todo, max(1, cfg.batch_size // samples)):
                # problem i, sample s -> seed + i * samples + s (generate seeds its i-th prompt with seed + i)
                questions = [problems[i]["question"] for i in chunk for _ in range(samples)]
                outs = generate(model, tokenizer, questions, replace(cfg, seed=cfg.seed + chunk[0] * samples),
                                backend=backend)
                for j, i in enumerate(chunk):
                    p, mine = problems[i], outs[j * samples:(j + 1) * samples]
                    graded = [grader.grade(graded_text(o), p["answer"]) for o in mine]
                    preds = [g["pred"] for g in graded]
                    maj = majority(preds)
                    rec = {"id": p["id"], "budget": budget, "num_wait": nw, "gold": p["answer"],
                           "samples": [graded_text(o) for o in mine], "extracted": preds,
                           "verdicts": [g["correct"] for g in graded], "majority": maj,
                           "majority_correct": bool(grader.equal(maj, p["answer"])) if maj is not None else False,
                           "thinking_tokens": [o["thinking_tokens"] for o in mine],
                           "waits": [o["waits"] for o in mine], "capped": [o["capped"] for o in mine],
                           "seeds": [cfg.seed + i * samples + s for s in range(samples)]}
                    setting[i] = rec
                    if sink:
                        sink(rec)
            records.extend(setting)
            row = summarize(setting, samples)
            row["seconds"] = round(time.perf_counter() - t0, 3)
            rows.append(row)
            if log:
                log(f"num_wait={nw} budget={budget}: pass@1 {row['pass@1']:.3f} +- {row['pass@1_se']:.3f} "
                    f"({row['correct']}/{row['n'] * samples}), mean thinking tokens {row['mean_thinking_tokens']:.1f}")
    return {"protocol": protocol, "protocol_source": grader.source, "grader_versions": grading.versions(),
            "decoding": decoding_settings(base), "samples": samples, "rows": rows, "records": records}


# ---- outputs -----------------------------------------------------------------------------------------------
def table(rows: Sequence[dict]) -> str:
    lines = ["| num_wait | budget | accuracy (pass@1) | +- s.e. | correct / samples | majority | "
             "mean thinking tokens | mean waits | capped |", "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['num_wait']} | {r['budget']} | {100 * r['accuracy']:.1f}% | "
                     f"{100 * r.get('pass@1_se', 0.0):.1f} | {r['correct']} / {r['n'] * r.get('samples', 1)} | "
                     f"{100 * r.get('majority', r['accuracy']):.1f}% | {r['mean_thinking_tokens']:.1f} | "
                     f"{r['mean_waits']:.2f} | {100 * r['capped_frac']:.0f}% |")
    return "\n".join(lines) + "\n"


def plot(rows: Sequence[dict], path: str, title: str) -> str | None:
    """Accuracy against mean thinking tokens, one line per num_wait, points labelled with their budget
    (s1fast.figure: skipped with a notice without matplotlib or on a full disk)."""
    if (plt := pyplot(path, "table.md has the numbers", sys.stderr)) is None:
        return None
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for nw in sorted({r["num_wait"] for r in rows}):
        pts = sorted(((r["mean_thinking_tokens"], 100 * r["accuracy"], r["budget"], 100 * r.get("pass@1_se", 0))
                      for r in rows if r["num_wait"] == nw), key=lambda p: p[0])
        ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[3] for p in pts], marker="o", capsize=2,
                    label=f"num_wait={nw}")
        for x, y, b, _ in pts:
            ax.annotate(str(b), (x, y), textcoords="offset points", xytext=(3, 4), fontsize=7)
    ax.set_xlabel("mean thinking tokens")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, max(10.0, 1.15 * max(100 * r["accuracy"] for r in rows)))
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(plt, fig, path, "table.md has the numbers", sys.stderr)


def check_writable(out_dir: str) -> None:
    """Fail before any compute when ``--out`` cannot be written."""
    try:
        os.makedirs(out_dir, exist_ok=True)
        probe = os.path.join(out_dir, f".write-test-{os.getpid()}")
        with open(probe, "w") as fh:
            fh.write("ok")
        os.remove(probe)
    except OSError as e:
        raise EvalError(f"--out {out_dir} is not writable ({e.strerror}): pass a folder you can write") from None


def write_outputs(result: dict, out_dir: str, title: str) -> dict:
    """results.json, table.md and scaling.png (problems.jsonl is written as records are produced)."""
    paths = output_paths(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    summary = {k: v for k, v in result.items() if k != "records"}
    with open(paths["results"], "w") as fh:
        json.dump(summary, fh, indent=2)
    with open(paths["table"], "w") as fh:
        fh.write(f"{title}\n\nprotocol: {result['protocol']} ({result['protocol_source']}); samples per problem: "
                 f"{result['samples']}; graders: {json.dumps(result['grader_versions'])}\n\n" + table(result["rows"]))
    plot(result["rows"], paths["plot"], title)
    return paths


# ---- the CLI ----------------------------------------------------------------------------------------------
def _list(parse):
    def f(text: str):
        try:
            out = [parse(x.strip()) for x in text.split(",") if x.strip()]
        except (ValueError, argparse.ArgumentTypeError) as e:
            raise argparse.ArgumentTypeError(f"{text!r}: {e}") from None
        if not out:
            raise argparse.ArgumentTypeError(f"{text!r}: give at least one value (comma-separated)")
        return out
    return f


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m s1fast.eval", description=__doc__.split("\n\n")[0] +
                                "\n\nSubcommands: `compare A B` (problems whose verdicts differ), `show DIR` "
                                "(outputs where a Wait continued the thinking or a cap forced the answer), `agreement` "
                                "(each protocol against a harness's published verdicts).")
    add_generation_args(p)
    p.add_argument("--data", default=DEFAULT_DATA, help="jsonl of problems, or toy:NAME[:N] (held-out toy problems; "
                                                        "default: the bundled AIME24 / AMC23 / MATH-500 sample)")
    p.add_argument("--question-field", help=f"the question's field (default: the first of {', '.join(QUESTION_FIELDS)})")
    p.add_argument("--answer-field", help=f"the reference answer's field (default: the first of {', '.join(ANSWER_FIELDS)})")
    p.add_argument("--limit", type=int, help="only the first N problems")
    p.add_argument("--budgets", type=_list(budget_arg), default=[1000, 2000, 4000, 8000],
                   help="comma-separated thinking budgets (ints or auto) (default: 1000,2000,4000,8000)")
    p.add_argument("--num-wait", type=_list(int), default=[0], help="comma-separated num_wait values (default: 0)")
    p.add_argument("--samples", type=int, default=1, help="samples per problem (pass@1 is their mean) (default: 1)")
    p.add_argument("--protocol", choices=list(protocols.PROTOCOLS), default=DEFAULT_PROTOCOL,
                   help=f"answer extraction and equivalence to reproduce (default: {DEFAULT_PROTOCOL})")
    p.add_argument("--out", default="eval_out", help="output folder; an interrupted run there resumes (default: eval_out)")
    return p


def check_eval_args(args, log) -> None:
    """eval's own flags, then those shared with generate; before any model is loaded (EvalError/ValueError)."""
    if args.samples < 1:
        raise EvalError(f"--samples must be at least 1, got {args.samples}")
    if args.samples > 1 and args.temperature == 0:
        log("[s1fast.eval] warning: --samples > 1 with --temperature 0 repeats the same greedy output")
    if not os.path.isdir(args.model):
        raise EvalError(f"--model {args.model}: no such folder; pass an exported model folder (e.g. "
                        f"runs/tiny-toy/final, written by s1fast.train)")
    if args.limit is not None and args.limit < 1:
        raise EvalError(f"--limit must be at least 1, got {args.limit} (leave it out for every problem)")
    if min(args.num_wait) < 0:
        raise EvalError(f"--num-wait values must be >= 0, got {min(args.num_wait)}")
    check_args(argparse.Namespace(**{**vars(args), "num_wait": None}))   # the flags shared with generate
    check_writable(args.out)


def resume_state(args, paths: dict, run: dict, log) -> tuple[dict, bool]:
    """(the records already in ``--out``, by (num_wait, budget, id); whether the folder starts fresh). A
    folder of other settings, or records without their run.json, is refused (EvalError)."""
    if os.path.exists(paths["run"]) and os.path.exists(paths["problems"]):
        was, now = compared_settings(json.load(open(paths["run"]))), compared_settings(run)
        if was != now:
            diff = "; ".join(f"{k} {was.get(k)!r} there, {v!r} now" for k, v in now.items() if was.get(k) != v)
            raise EvalError(f"{args.out} holds an evaluation with other settings ({paths['run']}: {diff}); pass "
                            f"a new --out or delete that folder")
        end_cut_line(paths["problems"])   # a record cut short by a crash is produced again
        done = {(r["num_wait"], r["budget"], r["id"]): r for r in read_records(paths["problems"])}
        log(f"[s1fast.eval] resuming: {len(done)} problem-settings already in {paths['problems']}")
        return done, False
    if os.path.exists(paths["problems"]) and os.path.getsize(paths["problems"]):
        raise EvalError(f"{paths['problems']} holds records but {paths['run']} (the settings they were made "
                        f"with) is missing, so they cannot be resumed; pass a new --out or move them away")
    return {}, True


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("compare", "show", "agreement"):
        return getattr(eval_inspect, f"{argv[0]}_main")(argv[1:])
    args = build_parser().parse_args(argv)
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    try:
        check_eval_args(args, log)
        problems = read_problems(args.data, args.question_field, args.answer_field, args.limit)
        check_unique_ids(problems)
        paths = output_paths(args.out)
        cfg = config_from_args(args)
        run = {"model": args.model, **({"tokenizer": args.tokenizer} if args.tokenizer else {}), "data": args.data,
               "protocol": args.protocol, "samples": args.samples, "decoding": decoding_settings(cfg),
               "n_problems": len(problems)}
        done, fresh = resume_state(args, paths, run, log)
    except (EvalError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        return _run(args, problems, paths, cfg, run, done, fresh, log)
    except KeyboardInterrupt:
        print(f"\nerror: interrupted; the records written to {paths['problems']} are kept and the same command "
              "resumes after them", file=sys.stderr)
        return 130


def _run(args, problems, paths, cfg, run, done, fresh, log) -> int:
    model, tok, backend = open_backend(args)
    bad = too_long(tok, [(p["source"], p["question"]) for p in problems], cfg, context_tokens(model, cfg, backend))
    if bad:
        print(f"error: {len(bad)} problem(s) too long, nothing generated: {'; '.join(bad[:5])}"
              f"{' ...' if len(bad) > 5 else ''}. Raise --max-total-tokens or leave those problems out",
              file=sys.stderr)
        return 2
    if fresh:
        with open(paths["run"], "w") as fh:
            json.dump(run, fh, indent=2)
        open(paths["problems"], "w").close()
    log(f"{len(problems)} problems from {args.data}; protocol {args.protocol}; {args.samples} sample(s) each")
    from tqdm import tqdm
    total = len(problems) * len(args.budgets) * len(args.num_wait)   # (tty only: no bar in logs)
    bar = tqdm(total=total, initial=min(len(done), total), desc="eval", unit="problem-setting", file=sys.stderr,
               disable=None, dynamic_ncols=True)
    with open(paths["problems"], "a") as fh:
        def sink(rec):
            fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
            fh.flush()
            bar.update(1)
        result = evaluate(model, tok, problems, args.budgets, args.num_wait, cfg, backend, protocol=args.protocol,
                          samples=args.samples, sink=sink, done=done, log=lambda s: tqdm.write(s, file=sys.stderr))
    bar.close()
    result.update(model=args.model, data=args.data, n_problems=len(problems))
    title = f"{os.path.basename(os.path.normpath(args.model))} on {os.path.basename(args.data)} (n={len(problems)})"
    write_outputs(result, args.out, title)
    print(table(result["rows"]), end="")
    log("wrote " + ", ".join(paths.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
