"""Build s1fast/assets/data/grader_agreement.jsonl: real model outputs with a published harness's verdicts.

Source: NovaSky-AI/SkyThought (branch `corrupt`, commit 9a750c725525201a16bcb2df386495da61371577),
skythought/Qwen2.5-Math/evaluation/outputs/ (copied to shared/data/skythought_eval_outputs; licences: Apache-2.0
repository, MIT evaluation harness; problems from AIME 2024, AMC 2023, MATH-500). Every AIME/AMC row and the
first 100 MATH-500 rows. Only the end of each generation is kept: the shortest tail (1500, 4000, 12000 or
40000 characters, else all) on which every s1fast protocol decides (and, but for s1's whole-text fallback,
extracts) exactly as on the whole generation (checked here, row by row).

    python scripts/make_grader_sample.py /work/shared/data/skythought_eval_outputs
"""
import glob
import json
import os
import sys

from s1fast import protocols

OUT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "s1fast", "assets", "data",
                   "grader_agreement.jsonl")


def _decisions(text: str, gt: str) -> list:
    # s1's harness keeps the whole text as the "answer" when it finds no boxed answer and no "Answer:", so for
    # s1 only the verdict must survive the cut; the other protocols must extract the same answer too
    return [(g["correct"], g["pred"] if n != "s1" else None)
            for n, g in ((n, p.grade(text, gt)) for n, p in protocols.PROTOCOLS.items())]


def tail(text: str, gt: str) -> str:
    full = _decisions(text, gt)
    for keep in (1500, 4000, 12000, 40000):
        if _decisions(text[-keep:], gt) == full:
            return text[-keep:]
    return text


def main(root: str) -> int:
    rows = []
    for path in sorted(glob.glob(os.path.join(root, "*", "*", "*.jsonl"))):
        model, bench = path.split(os.sep)[-3:-1]
        data = [json.loads(x) for x in open(path)]
        if bench == "math500":
            data = data[:100]
        for r in data:
            text = r["code"][0]
            rows.append({"id": f"{bench}/{model}/{r['idx']}", "benchmark": bench, "model": model, "gt": r["gt"],
                         "harness_pred": r["pred"][0], "harness_correct": bool(r["score"][0]),
                         "full_chars": len(text), "text": tail(text, r["gt"])})
    with open(OUT, "w") as fh:
        for r in rows:
            fh.write(json.dumps(r, ensure_ascii=False) + "\n")
    print(f"wrote {len(rows)} rows, {os.path.getsize(OUT):,} bytes to {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "/work/shared/data/skythought_eval_outputs"))
