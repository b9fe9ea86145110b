"""Peak Python memory (tracemalloc) of the data pipeline's steps (verify, decontaminate, select, stats) on a made file,
as JSON lines, one JSON list and parquet (the same rows).

    python -m bench.bench_data_memory --questions 200 1000 [--formats jsonl json parquet] [--steps verify ...]

The file: QUESTIONS x 3 samples, each with a ~20 KB trace (a distilled set's shape). The graders and
indexes are warmed on a two-row file first, so their one-time imports are not counted. stats's peak includes
loading the tokenizer, the same for any input: printed first, on the warm file. One line per format, step and
size: rows, input MB, peak MB; for parquet also Arrow's peak (its memory pool, which tracemalloc does not see).
Arrow decodes a page whole, and pyarrow's writer checks a page's 1 MB limit every 1024 rows: a page of 20 KB
traces can hold 1024 of them, so Arrow's peak depends on how the file was written.
"""
from __future__ import annotations

if __name__ == "__main__" and not __package__:  # run as python bench/X.py: import as python -m bench.X
    import _path  # noqa: F401  (bench/_path.py)

import argparse
import contextlib
import os
import json
import random
import tempfile
import tracemalloc
from pathlib import Path

from bench._args import positive_int
from bench.env import environment, markdown_header
from s1fast.data.__main__ import main as data_main

FLAGS = {"verify": ["--keep", "first-k"], "decontaminate": ["--no-builtin-eval"],
         "select": ["--size", "5", "--length", "chars"], "stats": []}
WORDS = ("apple", "blue", "seven", "prime", "circle", "sum", "river", "grid", "lamp", "tile", "coin", "edge")


def make(path: Path, questions: int, trace_chars: int = 20_000, row_group_size: int | None = None) -> None:
    """QUESTIONS x 3 samples written to ``path`` as its suffix says: .jsonl, .json (one list) or .parquet (by
    pyarrow's writer: its defaults, or row groups of ``row_group_size`` rows); the same rows in each."""
    rng = random.Random(0)

    def words(n):
        return " ".join(rng.choice(WORDS) + str(rng.randrange(1000)) for _ in range(n))

    def rows():
        for q in range(questions):
            question = f"Question {q}: {words(30)}?"
            for s in range(3):
                yield {"question": question, "answer": "42", "sample": s, "domain": f"D{q % 5}",
                       "thinking_trajectories": [words(8) + "x" * trace_chars],
                       "attempt": f"so \\boxed{{{42 if s else 41}}}"}
    if path.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq
        pq.write_table(pa.Table.from_pylist(list(rows())), path, row_group_size=row_group_size)
        return
    with open(path, "w") as f:
        if path.suffix == ".json":
            f.write("[\n" + ",\n".join(json.dumps(r) for r in rows()) + "\n]\n")
        else:
            f.writelines(json.dumps(r) + "\n" for r in rows())


def warm(d: Path) -> None:
    """Run the graders, indexes and stats once on a small file, so their one-time imports are not counted."""
    make(d / "warm.jsonl", 1, trace_chars=10)
    for step in ("verify", "decontaminate", "stats"):
        peak(step, d / "warm.jsonl", out_path(d, step, "warm"))


def out_path(d: Path, step: str, name: str) -> Path:
    """Where ``step`` writes: a .jsonl file, or for stats a folder."""
    return d / (f"{step}_{name}" if step == "stats" else f"{step}_{name}.jsonl")


def peak(step: str, data: Path, out: Path) -> int:
    tracemalloc.start()
    try:
        with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet):  # the step's tables: not ours
            rc = data_main([step, "--data", str(data), "--out", str(out), "--no-progress"] + FLAGS[step])
        if rc != 0:
            raise SystemExit(f"error: {step} failed on {data}")
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


_POOLS = []     # every pool measured through stays alive: Arrow may free into it after the run


def arrow_peak(step: str, data: Path, out: Path) -> tuple[int, int]:
    """(:func:`peak`, the peak bytes of Arrow's memory pool in that run)."""
    import pyarrow as pa
    before = pa.default_memory_pool()
    pool = pa.proxy_memory_pool(before)
    _POOLS.append(pool)
    pa.set_memory_pool(pool)
    try:
        return peak(step, data, out), pool.max_memory()
    finally:
        pa.set_memory_pool(before)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--questions", type=positive_int, nargs="+", default=[200, 1000], help="sizes to measure")
    ap.add_argument("--steps", nargs="+", choices=list(FLAGS), default=list(FLAGS))
    ap.add_argument("--formats", nargs="+", choices=["jsonl", "json", "parquet"],
                    default=["jsonl", "json", "parquet"],
                    help="input formats to measure (the same rows in each)")
    ap.add_argument("--row-group-rows", type=positive_int, help="parquet: rows per row group (default: pyarrow's writer's)")
    args = ap.parse_args(argv)
    print(markdown_header(environment()), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        warm(d)
        if "stats" in args.steps:
            p = peak("stats", d / "warm.jsonl", out_path(d, "stats", "warm2"))
            print(f"{'stats':14s} rows {3:6d}  (the tokenizer's load)    peak {p / 1e6:6.2f} MB", flush=True)
        for n in args.questions:
            for fmt in args.formats:
                data = d / f"data{n}.{fmt}"
                make(data, n, row_group_size=args.row_group_rows)
                for step in args.steps:
                    name = f"{n}{fmt}"
                    if fmt == "parquet":
                        p, a = arrow_peak(step, data, out_path(d, step, name))
                        arrow = f"  arrow {a / 1e6:6.2f} MB"
                    else:
                        p, arrow = peak(step, data, out_path(d, step, name)), ""
                    print(f"{step:14s} {fmt:8s} rows {3 * n:6d}  input {data.stat().st_size / 1e6:7.1f} MB  "
                          f"peak {p / 1e6:6.2f} MB{arrow}", flush=True)


if __name__ == "__main__":
    main()
