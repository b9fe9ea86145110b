"""Throughput of ``python -m s1fast.data generate`` with s1fast's engine: questions batched together
against one at a time, side by side, on the same model and questions.

Each question runs to exactly ``--tokens`` thinking tokens (min = max thinking budget, so a random model's
stops cannot shorten some runs) plus ``--answer-tokens``; tokens per second counts every generated token.
The model is a named config with random weights (the speed of a decode step does not depend on the weights)
or a Hugging Face folder.

    python bench/bench_generate.py                                   # tiny-qwen2 on CPU
    python bench/bench_generate.py --model Qwen2.5-0.5B-Instruct --device cuda --batch-sizes 1,8,32 --tokens 256
"""
from __future__ import annotations

if __name__ == "__main__" and not __package__:  # run as python bench/X.py: import as python -m bench.X
    import _path  # noqa: F401  (bench/_path.py)

import argparse
import json
import os
import sys
import tempfile
import time

import torch

from bench._args import non_negative_int, positive_int, positive_ints
from bench.env import environment, markdown_header
from s1fast import model as lean
from s1fast.data.pipeline import rows as R
from s1fast.data.pipeline.generate import EngineTeacher, pending_requests, run
from s1fast.generate import BUNDLED_TOKENIZER, GenerationConfig


def measure(model, tok, data, batch_size, args) -> dict:
    cfg = GenerationConfig(max_thinking_tokens=args.tokens, min_thinking_tokens=args.tokens,
                           max_answer_tokens=args.answer_tokens, temperature=1.0, top_p=1.0, batch_size=batch_size)
    teacher = EngineTeacher(model, tok, cfg, "native", name="bench")
    with tempfile.TemporaryDirectory() as d:
        out, failed = R.Output(os.path.join(d, "g.jsonl")), R.Output(os.path.join(d, "g.failed.jsonl"))
        todo, *_ = pending_requests(data, 1, set(), 0, limit=args.questions)
        tally = R.Tally("generate")
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        run(teacher, todo, out, failed, tally, progress=False)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        rows = [r for _, r in R.read(out.path)]
        out.close()
        failed.close()
    toks = sum(r["generation"]["thinking_tokens"] + r["generation"]["answer_tokens"] for r in rows)
    return {"batch_size": batch_size, "questions": len(rows), "tokens": toks, "seconds": round(dt, 3),
            "tokens_per_s": round(toks / dt, 1)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="tiny-qwen2", help="a named config (random weights) or a model folder")
    ap.add_argument("--data", default=os.path.join(os.path.dirname(R.__file__), "..", "..", "assets", "data",
                                                   "eval_sample.jsonl"))
    ap.add_argument("--questions", type=positive_int, default=16)
    ap.add_argument("--tokens", type=positive_int, default=64, help="thinking tokens per question")
    ap.add_argument("--answer-tokens", type=non_negative_int, default=8)
    ap.add_argument("--batch-sizes", type=positive_ints, default=[1, 16], help="comma-separated (default: 1,16)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="auto", choices=["auto", "bf16", "fp32"], help="auto: bf16 on cuda, fp32 on cpu")
    ap.add_argument("--repeats", type=positive_int, default=2, help="runs per batch size (the best is reported)")
    ap.add_argument("--out", help="write the results here as JSON")
    args = ap.parse_args(argv)
    from transformers import AutoTokenizer
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}.get(args.dtype) or (
        torch.bfloat16 if args.device.startswith("cuda") else torch.float32)
    torch.manual_seed(0)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(f"error: --device {args.device}: this torch sees no CUDA GPU; use --device cpu", file=sys.stderr)
        return 2
    try:
        model = (lean.from_pretrained(args.model, dtype=dtype, device=args.device) if os.path.isdir(args.model)
                 else lean.build_model(args.model, device=args.device, dtype=dtype)).eval()
    except (FileNotFoundError, KeyError, ValueError) as e:
        print(f"error: --model {args.model}: {e}", file=sys.stderr)
        return 2
    tok = AutoTokenizer.from_pretrained(BUNDLED_TOKENIZER)
    measure(model, tok, args.data, 2, argparse.Namespace(**{**vars(args), "questions": 2}))   # warm-up
    rows = []
    for bs in args.batch_sizes:
        best = max((measure(model, tok, args.data, bs, args) for _ in range(args.repeats)),
                   key=lambda r: r["tokens_per_s"])
        rows.append(best)
        print(json.dumps(best), flush=True)
    env = environment()
    base = rows[0]["tokens_per_s"]
    print("\n" + markdown_header(env))
    print(f"model {args.model} ({args.device}, {str(dtype).replace('torch.', '')}), {args.questions} questions x "
          f"({args.tokens} thinking + {args.answer_tokens} answer tokens)\n")
    print("| questions decoded together | tokens | seconds | tokens/s | vs one at a time |\n|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['batch_size']} | {r['tokens']} | {r['seconds']} | {r['tokens_per_s']} | "
              f"{r['tokens_per_s'] / base:.2f}x |")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"env": env, "args": vars(args), "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
