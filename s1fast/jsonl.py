"""JSON-lines files as s1fast reads and appends them: every line numbered in errors, and a last line that a
crash cut short dropped (reading) or removed (before appending), so a file stays one JSON value per line.

:func:`parse_lines` is the one parser; :func:`read_jsonl` (any JSON value, ``FILE:LINE: ...`` ValueErrors) and
s1fast.data.readers.jsonl_rows (objects only, DataErrors naming file and row) are built on it.
"""
from __future__ import annotations

import json
import os
from typing import Callable, Iterable, Iterator

BOM = b"\xef\xbb\xbf"   # UTF-8's byte-order mark: some Windows tools start a file with it


def parse_lines(lines: Iterable[bytes], path: str, *, first: int = 1, cut_tail_ok: bool = False,
                bad: Callable[[str, int], Exception] | None = None,
                on_cut: Callable[[int, int], None] | None = None) -> Iterator[tuple[int, object]]:
    """(line number, parsed value) for each non-blank raw line, numbered from ``first`` (1 unless the lines
    are read from the middle of the file); a byte-order mark before line 1 is not data.

    A bad line raises ``bad(message, line number)`` (default: a ValueError ``path:line: message``). With
    ``cut_tail_ok``, a last line without its newline that is not UTF-8 JSON (still being written, or cut by a
    crash) ends the lines instead, after ``on_cut(line number, its bytes)``."""
    bad = bad or (lambda msg, n: ValueError(f"{path}:{n}: {msg}"))
    for n, raw in enumerate(lines, first):
        cut = cut_tail_ok and not raw.endswith(b"\n")   # only the last line can lack its newline
        try:
            line = (raw[len(BOM):] if n == 1 and raw.startswith(BOM) else raw).decode("utf-8")
            if not line.strip():
                continue
            value = json.loads(line)
        except ValueError as e:             # UnicodeDecodeError, json.JSONDecodeError
            if cut:
                if on_cut:
                    on_cut(n, len(raw))
                return
            raise bad(_what(e), n) from None
        yield n, value


def _what(e: ValueError) -> str:
    if isinstance(e, UnicodeDecodeError):
        return f"not UTF-8 (byte 0x{e.object[e.start]:02x} at column {e.start + 1}): re-save the file as UTF-8"
    if isinstance(e, json.JSONDecodeError):
        return f"not valid JSON ({e.msg} at column {e.colno})"
    return f"not valid JSON ({e})"      # e.g. an integer too long to convert


def read_jsonl(path: str, *, cut_tail_ok: bool = False) -> Iterator[tuple[int, object]]:
    """(line number, parsed value) for each non-blank line of the file ``path`` (streamed); a bad line is a
    ValueError naming the file and line. With ``cut_tail_ok`` a last line cut short ends the file instead."""
    if not os.path.isfile(path):
        raise ValueError(f"{path}: no such file")
    with open(path, "rb") as fh:
        yield from parse_lines(fh, path, cut_tail_ok=cut_tail_ok)


def partial_tail(path: str, block: int = 1 << 16) -> tuple[int, int | None]:
    """(file size, where a partial last line begins): one :func:`parse_lines` drops as cut short; None when
    there is none. Reads the file's end only."""
    with open(path, "rb") as f:
        size = f.seek(0, os.SEEK_END)
        if size == 0:
            return size, None
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return size, None
        tail, start = b"", size
        while start > 0:                  # back to the newline before the last line
            step = min(block, start)
            start -= step
            f.seek(start)
            tail = f.read(step) + tail
            nl = tail.rfind(b"\n")
            if nl >= 0:
                start, tail = start + nl + 1, tail[nl + 1:]
                break
    cut = []
    list(parse_lines([tail], path, first=1 if start == 0 else 2, cut_tail_ok=True,
                     on_cut=lambda n, nbytes: cut.append(n)))
    return size, start if cut else None


def end_cut_line(path: str) -> int:
    """Before appending to a JSON-lines file: drop a last line a crash cut short (no newline, not JSON), or end
    a whole last line that lacks its newline, so the file stays one JSON value per line. Returns the bytes
    dropped (0: none). Reads the file's end only."""
    size, cut = partial_tail(path)
    if cut is not None:
        os.truncate(path, cut)
        return size - cut
    if size:
        with open(path, "rb+") as f:
            f.seek(size - 1)
            if f.read(1) != b"\n":      # a complete last row with no newline: end its line
                f.write(b"\n")
    return 0
