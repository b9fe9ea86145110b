"""``python -m s1fast.data prepare ...``: build (or reuse) the token cache of a data file; the pipeline steps
``generate | verify | decontaminate | select | stats`` (``s1fast.data.pipeline``)."""
from __future__ import annotations

import argparse
import importlib
import json
import os
import sys

from ..cli_help import DefaultsHelpFormatter
from .cache import DEFAULT_DATA, DEFAULT_TOKENIZER, POLICIES, prepare
from .format import RECIPES
from .pipeline import STEPS
from .pipeline.rows import positive_int
from .readers import DataError


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m s1fast.data", description="s1fast data tools")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare", help="tokenise a data file into a reusable token cache",
                       formatter_class=DefaultsHelpFormatter)
    p.add_argument("--data", default=DEFAULT_DATA,
                   help="a .json, .jsonl or .parquet file, or toy:NAME[:N] (the toy task); default: the "
                        "bundled sample")
    p.add_argument("--recipe", default="s1", choices=RECIPES, help="text format and loss mask")
    p.add_argument("--tokenizer", default=DEFAULT_TOKENIZER,
                   help="Hugging Face tokenizer folder (default: the bundled Qwen2.5)")
    p.add_argument("--max-tokens", type=positive_int, default=None,
                   help="per-example token budget (block size); none: no limit")
    p.add_argument("--policy", default="error", choices=POLICIES,
                   help="examples over --max-tokens: error (list them), drop (skip, counted), truncate (warn)")
    p.add_argument("--out", default="runs/tokens", help="cache folder (default: runs/tokens)")
    p.add_argument("--workers", type=positive_int, default=None, help="tokeniser processes; none: the cores, at most 8")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    for name, help_ in STEPS.items():
        mod = importlib.import_module(f".pipeline.{name}", __package__)
        sp = sub.add_parser(name, help=help_, description=mod.__doc__,
                            formatter_class=DefaultsHelpFormatter)
        mod.add_args(sp)
        sp.add_argument("--summary", help="also write the summary (counts by reason) here as JSON")
        sp.add_argument("--no-progress", action="store_true", help="no progress bar")
        sp.set_defaults(step=mod)
    args = ap.parse_args(argv)
    if args.cmd in STEPS:
        return _run_step(args)
    try:
        prepare(args.data, args.recipe, args.tokenizer, args.max_tokens, args.out, args.policy, args.workers,
                progress=not args.no_progress)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # the cache folder: read-only, a full disk
        print(f"error: cannot write the cache {args.out} ({e.strerror or e}): pass --out with a writable folder "
              f"that has space", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"error: prepare: interrupted; no partial cache is left and an earlier one in {args.out} is kept: "
              "run the same command again", file=sys.stderr)
        return 130
    return 0


def _same_file(args) -> str | None:
    """Two of a step's files (input, outputs) that are one file: outputs are appended to, so that is refused."""
    named = [(f"--{k.replace('_', '-')}", os.path.realpath(v)) for k in ("data", "out", "graded", "report", "summary")
             if isinstance(v := getattr(args, k, None), str)]
    for i, (a, pa) in enumerate(named):
        for b, pb in named[i + 1:]:
            if pa == pb:
                return f"{a} and {b} name the same file ({getattr(args, a[2:].replace('-', '_'))}): {b} would " \
                       f"be appended to it; pass another {b}"
    return None


def _run_step(args) -> int:
    from .pipeline.teacher_openai import StopRun
    if (why := _same_file(args)) is not None:
        print(f"error: {args.cmd}: {why}", file=sys.stderr)
        return 2
    try:
        tally = args.step.main(args)
    except (DataError, StopRun, ValueError, ImportError, OSError) as e:
        if getattr(e, "tally", None) is not None:
            print(e.tally.report(), file=sys.stderr)
        print(f"error: {args.cmd}: {e}".replace("\n", " "), file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        if getattr(e, "tally", None) is not None:
            print(e.tally.report(), file=sys.stderr)
        print(f"error: {args.cmd}: interrupted; the rows written to {args.out} are kept, and running the same "
              "command again resumes", file=sys.stderr)
        return 130
    print(tally.report(), file=sys.stderr)
    if args.summary:
        try:
            os.makedirs(os.path.dirname(os.path.abspath(args.summary)), exist_ok=True)
            with open(args.summary, "w") as f:
                json.dump(tally.as_dict(), f, indent=2)
        except OSError as e:
            print(f"error: {args.cmd}: cannot write --summary {args.summary} ({e.strerror or e}); the step's "
                  "output is written", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
