"""Per-step cost of the sampling penalties on one row, against the output's length: the counts rebuilt from
the whole ids list every step (the definition ``s1fast.sampling`` used before ``PenaltyState``, kept as the
tests' reference ``old_penalize`` in tests/test_sampling.py) and the incremental ``PenaltyState`` (one new id
a step), on the CPU; a whole ``pick_tokens`` step (greedy, one row, no penalty) for scale. Median of repeated,
interleaved timings; the vocabulary is Qwen2.5's padded one.

    OMP_NUM_THREADS=1 python bench/penalty_step.py [--lengths 1024,8192,32768] [--repeat 50]

Prints a markdown table for bench/RESULTS.md.
"""
from __future__ import annotations

if __name__ == "__main__" and not __package__:  # run as python bench/X.py: import as python -m bench.X
    import _path  # noqa: F401  (bench/_path.py)

import argparse
import os
import random
import statistics
import sys
import time

import torch

from bench._args import positive_int, positive_ints
from bench.env import environment, markdown_header
from s1fast.sampling import Penalties, PenaltyState, pick_tokens

VOCAB, PROMPT = 151936, 200
PENALTIES = Penalties(presence=0.5, frequency=0.3, repetition=1.1)


def _old_penalize():
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))
    from test_sampling import old_penalize
    return old_penalize


def measure(length: int, repeat: int) -> dict[str, float]:
    """Median seconds a step for the from-lists counts, the incremental state and a plain pick, with the
    output at ``length`` ids (each step appends one)."""
    old_penalize = _old_penalize()
    rng = random.Random(length)
    ids = [rng.randrange(VOCAB) for _ in range(PROMPT + length)]
    logits = torch.randn(VOCAB)
    state = PenaltyState(PENALTIES, PROMPT)
    state.apply(logits.clone(), ids)                  # built at the row's first pick, before the timed steps
    steps = {"from lists": lambda: old_penalize(PENALTIES, logits.clone(), ids[:PROMPT], ids[PROMPT:]),
             "incremental": lambda: state.apply(logits.clone(), ids),
             "pick_tokens": lambda: pick_tokens(logits[None], temperature=0.0, top_p=1.0, vocab_limit=VOCAB,
                                                banned=[None], generators=[None])}
    times = {k: [] for k in steps}
    for _ in range(repeat):
        ids.append(rng.randrange(VOCAB))              # the step's new id
        for k, fn in steps.items():
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--lengths", type=positive_ints, default=[1024, 8192, 32768],
                   help="output lengths in ids (default: 1024,8192,32768)")
    p.add_argument("--repeat", type=positive_int, default=50, help="timed steps per length (default: 50)")
    args = p.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    print(markdown_header(environment()))
    print(f"vocabulary {VOCAB}, prompt {PROMPT} ids, {PENALTIES}, median of {args.repeat} steps\n")
    print("| output ids | from lists (ms/step) | incremental (ms/step) | speedup | pick_tokens alone (ms) |")
    print("|---|---|---|---|---|")
    for n in args.lengths:
        m = measure(n, args.repeat)
        print(f"| {n} | {m['from lists'] * 1e3:.3f} | {m['incremental'] * 1e3:.3f} | "
              f"{m['from lists'] / m['incremental']:.1f}x | {m['pick_tokens'] * 1e3:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
