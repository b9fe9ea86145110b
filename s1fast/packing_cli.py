"""``python -m s1fast.packing``: plan a run's packing from a lengths file and print its statistics."""
from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from .packing import (DEFAULT_COST, DEFAULT_GROUP_WINDOW, DEFAULT_TOLERANCE, MODES, WEIGHTINGS, CostModel,
                      make_plan)


def _read_lengths(path: str):
    """(lengths, supervised) arrays from ``s1fast.lengths_file`` (supervised defaults to length - 1)."""
    from .lengths_file import read_lengths
    try:
        lengths, sup = read_lengths(path)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    return (np.array(lengths, np.int64),
            np.array([s if s is not None else n - 1 for n, s in zip(lengths, sup)], np.int64))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m s1fast.packing", description=__doc__.split("\n\n")[0])
    p.add_argument("--lengths", required=True, help="file: one 'length [supervised]' per line (supervised "
                   "defaults to length-1)")
    p.add_argument("--world-size", type=int, required=True)
    p.add_argument("--max-tokens", type=int, required=True, help="token budget per rank per micro-step")
    p.add_argument("--global-batch", type=int, required=True, help="examples per optimizer step")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--mode", choices=MODES, default="balanced")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--group-window", type=int, default=DEFAULT_GROUP_WINDOW, help="steps per grouping window")
    p.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE,
                   help="balanced mode: costs within this relative width share a grouping level (0 = exact sort)")
    p.add_argument("--accum", type=int, default=None, help="tokens mode: micro-batches per rank per step")
    p.add_argument("--weighting", choices=WEIGHTINGS, default="sequence")
    p.add_argument("--backend", choices=("native", "python"), default="native")
    p.add_argument("--hf-config", help="config.json of the model for the cost model (default Qwen2.5-32B)")
    p.add_argument("--plan-out", help="write the full plan as JSON here")
    a = p.parse_args(argv)
    lengths, sup = _read_lengths(a.lengths)
    cost = DEFAULT_COST
    if a.hf_config:
        with open(a.hf_config) as f:
            cost = CostModel.from_hf_config(json.load(f))
    try:
        plan = make_plan(lengths, sup, world_size=a.world_size, max_tokens=a.max_tokens, global_batch=a.global_batch,
                         epochs=a.epochs, seed=a.seed, mode=a.mode, cost=cost, weighting=a.weighting,
                         backend=a.backend, group_window=a.group_window, tolerance=a.tolerance, accum=a.accum)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if a.plan_out:
        with open(a.plan_out, "w") as f:
            f.write(plan.to_json())
    print(json.dumps(plan.stats, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
