"""``python -m s1fast.data prepare ...``: build (or reuse) the token cache of a data file."""
from __future__ import annotations

import argparse
import sys

from .cache import DEFAULT_DATA, DEFAULT_TOKENIZER, POLICIES, prepare
from .format import RECIPES
from .readers import DataError


def positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive whole number, got {v}")
    return v


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m s1fast.data", description="s1fast data tools")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare", help="tokenise a data file into a reusable token cache",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", default=DEFAULT_DATA, help="a .json, .jsonl or .parquet file (default: the bundled sample)")
    p.add_argument("--recipe", default="s1", choices=RECIPES, help="text format and loss mask")
    p.add_argument("--tokenizer", default=DEFAULT_TOKENIZER, help="Hugging Face tokenizer folder")
    p.add_argument("--max-tokens", type=positive_int, default=None, help="per-example token budget (block size)")
    p.add_argument("--policy", default="error", choices=POLICIES,
                   help="examples over --max-tokens: error (list them), drop (skip, counted), truncate (warn)")
    p.add_argument("--out", default="runs/tokens", help="cache folder")
    p.add_argument("--workers", type=positive_int, default=None, help="tokeniser processes (default: cores, at most 8)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = ap.parse_args(argv)
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
