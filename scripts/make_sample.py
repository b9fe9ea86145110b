"""Build the bundled real-data sample (s1fast/assets/data/sample_s1k.jsonl) from SkyThought outputs.

Input: the SkyThought evaluation generations under ``shared/data/skythought_eval_outputs/`` (see
``s1fast/assets/data/SOURCES.md``). Each kept row is complete (its generation has both
``<|end_of_thought|>`` and ``<|end_of_solution|>``) and graded correct (``score[0]``), and is
converted to the s1K schema:

    question               the problem statement
    thinking_trajectories  [the text between <|begin_of_thought|> and <|end_of_thought|>]
    attempt                the text between <|begin_of_solution|> and <|end_of_solution|>
    solution               the reference answer (``gt``)
    source                 which file and row it came from

Usage: python scripts/make_sample.py --src ../shared/data/skythought_eval_outputs --out s1fast/assets/data
"""
import argparse
import glob
import json
import os


def between(text: str, start: str, end: str) -> str:
    return text.split(start, 1)[1].split(end, 1)[0].strip()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--src", default="../shared/data/skythought_eval_outputs")
    ap.add_argument("--out", default="s1fast/assets/data")
    ap.add_argument("--math500-every", type=int, default=7, help="keep every k-th complete MATH-500 row")
    args = ap.parse_args()
    rows, evals = [], []
    for path in sorted(glob.glob(os.path.join(args.src, "*", "*", "*.jsonl"))):
        model, bench = path.split(os.sep)[-3:-1]
        complete = 0
        for i, line in enumerate(open(path, encoding="utf-8")):
            r = json.loads(line)
            gen = r["code"][0]
            ok = "<|end_of_thought|>" in gen and "<|end_of_solution|>" in gen and r["score"][0]
            if bench != "math500" or sum(e["source"].startswith("math500") for e in evals) < 40:
                evals.append({"question": r["question"], "answer": str(r["gt"]), "source": f"{bench}:{r['idx']}"})
            if not ok:
                continue
            complete += 1
            if bench == "math500" and complete % args.math500_every:
                continue
            rows.append({
                "question": r["question"],
                "thinking_trajectories": [between(gen, "<|begin_of_thought|>", "<|end_of_thought|>")],
                "attempt": between(gen, "<|begin_of_solution|>", "<|end_of_solution|>"),
                "solution": str(r["gt"]),
                "source": f"SkyThought/{model}/{bench} row {i}",
            })
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "sample_s1k.jsonl"), "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    seen, uniq = set(), []
    for e in evals:  # AIME 2024 appears twice (14B and 32B runs): keep one copy of each problem
        if e["question"] not in seen:
            seen.add(e["question"])
            uniq.append(e)
    with open(os.path.join(args.out, "eval_sample.jsonl"), "w", encoding="utf-8") as f:
        for e in uniq:
            f.write(json.dumps(e, ensure_ascii=False) + "\n")
    print(f"wrote {len(rows)} training rows and {len(uniq)} eval problems to {args.out}")


if __name__ == "__main__":
    main()
