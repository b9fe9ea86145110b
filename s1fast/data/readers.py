"""Read rows from json, jsonl and parquet files, remembering where each row came from.

Every row comes back as ``(row_number, dict)``; errors name the file and the row, so a bad line
in a 100K-row jsonl is found at once. Every format is streamed, a row (a .jsonl line, a .json list item) or a
small batch (.parquet) at a time; a .json file that ijson cannot stream is read whole (s1fast.data.json_stream).
"""
from __future__ import annotations

import json
import os
from typing import Iterable, Iterator

from ..jsonl import parse_lines
from .json_stream import Unstreamable, stream_json
from .skythought import (is_response_row, is_results, problem_rows, response_rows,
                         results_rows)


class DataError(ValueError):
    """Bad input data: says which file, row and field, and what to do."""

    def __init__(self, message: str, *, path: str | None = None, row: int | None = None,
                 field: str | None = None):
        where = ", ".join(x for x in (path and f"file {path}", row is not None and f"row {row}",
                                      field and f"field '{field}'") if x)
        super().__init__(f"{where}: {message}" if where else message)
        self.path, self.row, self.field = path, row, field


def row_list(rows, limit: int = 20) -> str:
    """Row numbers (or labels) for a message: the first ``limit``, then how many more."""
    rows = [str(r) for r in rows]
    return ", ".join(rows[:limit]) + (f" and {len(rows) - limit} more" if len(rows) > limit else "")


def jsonl_rows(lines: Iterable[bytes], path: str, first: int = 1, cut_tail_ok: bool = False,
               on_cut=None) -> Iterator[tuple[int, dict]]:
    """``(line_number, row)`` of the raw lines of a .jsonl file (s1fast.jsonl.parse_lines: numbered from
    ``first``, blank lines skipped, a cut last line dropped with ``cut_tail_ok``); each line must be an object."""
    for i, row in parse_lines(lines, path, first=first, cut_tail_ok=cut_tail_ok, on_cut=on_cut,
                              bad=lambda msg, n: DataError(msg, path=path, row=n)):
        if not isinstance(row, dict):
            raise DataError(f"expected a JSON object, got {type(row).__name__}", path=path, row=i)
        yield i, row


def samples_of(i: int, row: dict, path: str) -> list[dict]:
    """The rows that row ``i`` stands for: one per response of a SkyThought output row (s1fast.data.skythought),
    else the row itself."""
    if not is_response_row(row):
        return [row]
    return response_rows(row, None, i, _error(path))


def read_rows(path: str) -> Iterator[tuple[int, dict]]:
    """Yield ``(row_number, row)`` from a .json (a list of objects), .jsonl or .parquet file.

    Row numbers start at 1 (a .jsonl row's number is its line number), as in every s1fast message. SkyThought's
    outputs come one row per response, each with its problem's number (``samples_of``).
    """
    if not os.path.exists(path):
        raise DataError("no such file; pass --data with a .json, .jsonl or .parquet file", path=path)
    if os.path.isdir(path):
        raise DataError("is a folder; pass --data with a .json, .jsonl or .parquet file", path=path)
    ext = os.path.splitext(path)[1].lower()
    if ext == ".jsonl":
        with open(path, "rb") as f:
            for i, row in jsonl_rows(f, path):
                for r in samples_of(i, row, path):
                    yield i, r
    elif ext == ".json":
        yield from _json_rows(path)
    elif ext == ".parquet":
        yield from _parquet_rows(path)
    else:
        raise DataError(f"unknown extension '{ext}': use .json, .jsonl or .parquet", path=path)


def _json_rows(path: str) -> Iterator[tuple[int, dict]]:
    """A .json file's rows, streamed (s1fast.data.json_stream); what cannot be streamed is read whole from where
    the stream stopped, by :func:`_json_whole`."""
    done, seen = 0, {}
    try:
        for n, uid, value in stream_json(path):
            rows = problem_rows(n, uid, value, _error(path), seen) if uid is not None else \
                _object_rows(n, value, path)
            for r in rows:
                yield n, r
            done = n
    except Unstreamable:
        for n, r in _json_whole(path):
            if n > done:
                yield n, r


def _error(path: str):
    return lambda msg, n, field: DataError(msg, path=path, row=n, field=field)


def _object_rows(i: int, row, path: str) -> list[dict]:
    if not isinstance(row, dict):
        raise DataError(f"expected a JSON object, got {type(row).__name__}", path=path, row=i)
    return samples_of(i, row, path)


def _json_whole(path: str) -> Iterator[tuple[int, dict]]:
    """A .json file parsed whole by Python's json: a file ijson refuses, or any without ijson installed."""
    with open(path, "rb") as f:
        raw = f.read()
    try:
        text = raw.decode("utf-8-sig")   # a byte-order mark (Windows tools write one) is not data
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise DataError(f"not UTF-8 (byte 0x{raw[e.start]:02x} on line {line}): re-save the file as UTF-8",
                        path=path) from None
    if not text.strip():
        return
    data, items = _loads(text, path)
    if is_results(items):
        yield from results_rows(items, path, _error(path))
        return
    if len(items) == 1 and isinstance(items[0][1], list):
        data = items[0][1]                # {"train": [...]}
    if not isinstance(data, list):
        raise DataError("a .json data file must hold a list of objects, or SkyThought's results (an object of "
                        "problems with 'responses'); use .jsonl for one object per line", path=path)
    for i, row in enumerate(data, 1):
        for r in _object_rows(i, row, path):
            yield i, r


def _loads(text: str, path: str) -> tuple[object, list]:
    """The file's JSON value, and its top-level object's ``(key, value)`` pairs in the file's order ([] for
    another value): a key written twice stays twice, as the stream sees it, where the dict keeps the last."""
    last = [[]]

    def keep(pairs: list) -> dict:       # called for each object, the top-level one last
        last[0] = pairs
        return dict(pairs)
    try:
        data = json.loads(text, object_pairs_hook=keep if text.lstrip()[:1] == "{" else None)
    except json.JSONDecodeError as e:
        raise DataError(f"not valid JSON ({e.msg} at line {e.lineno})", path=path) from None
    return data, last[0] if isinstance(data, dict) else []


PARQUET_BATCH_BYTES = 1 << 16   # the rows a parquet batch holds as Python objects: about this many bytes


def _parquet_rows(path: str) -> Iterator[tuple[int, dict]]:
    """A .parquet file's rows, a batch of about PARQUET_BATCH_BYTES at a time. Arrow also holds the page it
    decodes, whole: up to 1024 rows as pyarrow's writer writes them (bench/bench_data_memory.py)."""
    i = 1
    for batch in _parquet_batches(path):
        for row in batch:
            for r in samples_of(i, row, path):
                yield i, r
            i += 1


def _parquet_batches(path: str) -> Iterator[list[dict]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError("reading parquet needs pyarrow: `pip install pyarrow` (or convert to jsonl)",
                        path=path) from None
    try:
        pf = pq.ParquetFile(path)
        meta = pf.metadata
        size = sum(meta.row_group(g).total_byte_size for g in range(meta.num_row_groups))
        batches = pf.iter_batches(batch_size=max(1, min(1024, PARQUET_BATCH_BYTES * meta.num_rows // max(1, size))))
        while True:
            try:
                rows = next(batches).to_pylist()
            except StopIteration:
                return
            yield rows
    except Exception as e:  # noqa: BLE001 -- pyarrow raises ArrowInvalid / OSError for a file it cannot read
        raise DataError(f"not a readable parquet file ({type(e).__name__}: {str(e)[:160]}); check the file or "
                        f"convert it to jsonl", path=path) from None
