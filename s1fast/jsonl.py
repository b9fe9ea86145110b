"""JSON-lines files as the CLIs read and append them: every line numbered in errors, and a last line that a
crash cut short dropped (reading) or removed (before appending), so a file stays one JSON value per line."""
from __future__ import annotations

import json
import os


def read_jsonl(path: str, *, cut_tail_ok: bool = False):
    """(line number, parsed value) for each non-blank line; a bad line names the file and line. With
    ``cut_tail_ok`` a last line without its newline that does not parse (still being written, or cut by a
    crash) ends the file instead."""
    if not os.path.isfile(path):
        raise ValueError(f"{path}: no such file")
    with open(path, "rb") as fh:
        for n, raw in enumerate(fh, 1):
            cut = cut_tail_ok and not raw.endswith(b"\n")   # only the last line can lack its newline
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                if cut:
                    return
                raise ValueError(f"{path}:{n}: not UTF-8 (byte 0x{raw[e.start]:02x} at column {e.start + 1}); "
                                 "re-save the file as UTF-8") from None
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as e:
                if cut:
                    return
                raise ValueError(f"{path}:{n}: not a JSON line ({e})") from None
            yield n, value


def partial_tail(path: str, block: int = 1 << 16) -> tuple[int, int | None]:
    """(file size, where a partial last line begins): one with no newline after it that is not complete JSON;
    None when there is none. Reads the file's end only."""
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
    if not tail.strip():    # trailing blanks with no newline: nothing was cut
        return size, None
    try:
        json.loads(tail)
    except ValueError:      # not JSON, or not UTF-8: cut by a kill
        return size, start
    return size, None


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
