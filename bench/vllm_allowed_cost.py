"""What vLLM does per request with ``allowed_token_ids=list(range(151665))`` (Qwen2.5's tokenizer), timed on this
CPU with the same operations (vLLM main, 2026): the deep copy of the parameters (``SamplingParams.clone``), the id
by id range check (``_validate_allowed_token_ids``), the serialisation to the engine process (pickle here; vLLM
uses msgpack) and the write of the vocabulary-wide boolean mask row (``InputBatch.add_request``).

    python -m bench.vllm_allowed_cost
"""
from __future__ import annotations

if __name__ == "__main__" and not __package__:  # run as python bench/X.py: import as python -m bench.X
    import _path  # noqa: F401  (bench/_path.py)

import argparse
import copy
import pickle
import time

import torch

from bench.env import environment, markdown_header

VOCAB, LIMIT, ROWS, REPS = 152064, 151665, 256, 10


def ms(fn) -> float:
    t = time.perf_counter()
    for _ in range(REPS):
        fn()
    return (time.perf_counter() - t) / REPS * 1e3


def main(argv=None) -> None:
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args(argv)
    print(markdown_header(environment()))
    allowed = list(range(LIMIT))
    mask = torch.zeros(ROWS, VOCAB, dtype=torch.bool)

    def mask_row():
        mask[3] = True
        mask[3][allowed] = False

    rows = {"deep copy (clone)": ms(lambda: copy.deepcopy(allowed)),
            "range check": ms(lambda: [t for t in allowed if t < 0 or t >= VOCAB]),
            f"serialise ({len(pickle.dumps(allowed)) // 1024} KiB)": ms(lambda: pickle.dumps(allowed)),
            "mask row write": ms(mask_row)}
    for k, v in rows.items():
        print(f"| {k} | {v:.1f} ms |")
    print(f"| total per request | {sum(rows.values()):.1f} ms |")


if __name__ == "__main__":
    main()
