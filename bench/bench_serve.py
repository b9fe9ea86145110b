"""Throughput of ``python -m s1fast.serve``: concurrent clients (continuous batching) against the same
requests sent one at a time, through the official ``openai`` client, on the same server process.

    python bench/bench_serve.py                      # random tiny Qwen2 (real tokenizer), 64 clients x 3
    python bench/bench_serve.py --model DIR --batch-size 32 --clients 64 --requests 3 --max-thinking-tokens 64

Prints a markdown table with the hardware, versions, commit and command (bench/env.py); ``--json`` writes
the raw figures. Every request is greedy with a fixed budget, so each does the same work in both modes.
"""
from __future__ import annotations

if __name__ == "__main__" and not __package__:  # run as python bench/X.py: import as python -m bench.X
    import _path  # noqa: F401  (bench/_path.py)

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))

from bench._args import positive_int
from bench.env import environment, markdown_header

QUESTIONS = ["What is 1+1?", "How many r in raspberry?", "Find the sum of all integers between 1 and 100.",
             "Let $ABC$ be a triangle inscribed in a circle. Find m+n.", "What is the capital of France?"]


def export_tiny(path: str) -> str:
    import torch

    from s1fast import model as lean
    from s1fast.generate import BUNDLED_TOKENIZER
    torch.manual_seed(0)
    lean.build_model("tiny-qwen2", device="cpu", dtype=torch.float32).save_pretrained(path, BUNDLED_TOKENIZER)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def run(base: str, n_clients: int, n_requests: int, fields: dict) -> dict:
    import openai
    ac = openai.AsyncOpenAI(base_url=f"{base}/v1", api_key="none", max_retries=0, timeout=3600)
    tokens = 0

    async def one(cid: int, k: int) -> None:
        nonlocal tokens
        msgs = [{"role": "user", "content": QUESTIONS[(cid + k) % len(QUESTIONS)]}]
        if (cid + k) % 2:
            r = await ac.chat.completions.create(model="bench", messages=msgs, extra_body=fields)
            tokens += r.usage.completion_tokens
        else:
            async for ev in await ac.chat.completions.create(model="bench", messages=msgs, stream=True,
                                                             stream_options={"include_usage": True},
                                                             extra_body=fields):
                if ev.usage is not None:
                    tokens += ev.usage.completion_tokens

    async def client(cid: int) -> None:
        for k in range(n_requests):
            await one(cid, k)

    t0 = time.perf_counter()
    await asyncio.gather(*(client(c) for c in range(n_clients)))
    wall = time.perf_counter() - t0
    await ac.close()
    n = n_clients * n_requests
    return {"clients": n_clients, "requests": n, "wall_s": round(wall, 2), "requests_per_s": round(n / wall, 3),
            "completion_tokens": tokens, "tokens_per_s": round(tokens / wall, 1)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help="exported model folder (default: a random tiny Qwen2 in a temporary folder)")
    p.add_argument("--batch-size", type=positive_int, default=64, help="the server's --batch-size (rows of the batch)")
    p.add_argument("--clients", type=positive_int, default=64)
    p.add_argument("--requests", type=positive_int, default=3, help="requests per client")
    p.add_argument("--sequential", type=positive_int, default=24, help="requests sent one at a time for the baseline")
    p.add_argument("--max-thinking-tokens", type=positive_int, default=16)
    p.add_argument("--max-tokens", type=positive_int, default=8, help="answer budget")
    p.add_argument("--max-total-tokens", type=positive_int, default=512)
    p.add_argument("--json", help="write the figures here")
    args = p.parse_args()
    model = args.model or export_tiny(os.path.join(tempfile.mkdtemp(prefix="s1fast-bench-"), "tiny"))
    port = free_port()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.dirname(HERE)] + sys.path))
    env.setdefault("S1FAST_DISABLE_TRITON", "1")
    proc = subprocess.Popen([sys.executable, "-m", "s1fast.serve", "--model", model, "--port", str(port),
                             "--served-model-name", "bench", "--batch-size", str(args.batch_size),
                             "--max-total-tokens", str(args.max_total_tokens), "--max-concurrency", "100000",
                             "--log-level", "warning"], env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        import httpx
        deadline = time.monotonic() + 600
        while True:
            try:
                if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    print("error: the server did not start", file=sys.stderr)
                    return 2
                time.sleep(0.5)
        # A greedy fixed budget: min = max thinking tokens, so every request thinks exactly that long.
        fields = {"max_thinking_tokens": args.max_thinking_tokens, "min_thinking_tokens": args.max_thinking_tokens,
                  "max_tokens": args.max_tokens, "temperature": 0}
        asyncio.run(run(base, 2, 1, fields))                          # warm-up
        load0 = os.getloadavg()[0]
        alone = asyncio.run(run(base, 1, args.sequential, fields))
        together = asyncio.run(run(base, args.clients, args.requests, fields))
        load1 = os.getloadavg()[0]
    finally:
        proc.terminate()
        proc.wait(120)
    info = environment()
    rows = [("one at a time", alone), (f"{args.clients} concurrent clients", together)]
    print(markdown_header(info) + f"- load average (1 min) before / after: {load0:.1f} / {load1:.1f}\n"
          f"- server: --batch-size {args.batch_size} --max-total-tokens {args.max_total_tokens}; requests: greedy, "
          f"{args.max_thinking_tokens} thinking + up to {args.max_tokens} answer tokens, half streamed\n")
    print("| mode | requests | wall (s) | requests/s | completion tokens/s |")
    print("|---|---:|---:|---:|---:|")
    for name, r in rows:
        print(f"| {name} | {r['requests']} | {r['wall_s']} | {r['requests_per_s']} | {r['tokens_per_s']} |")
    print(f"\nspeed-up (requests/s): {together['requests_per_s'] / alone['requests_per_s']:.2f}x")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"env": info, "alone": alone, "concurrent": together, "load": [load0, load1]}, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
