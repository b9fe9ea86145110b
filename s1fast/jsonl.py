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


def end_cut_line(path: str) -> None:
    """Before appending to a JSON-lines file: drop a last line a crash cut short (no newline, not JSON), or end
    a whole last line that lacks its newline, so the file stays one JSON value per line."""
    with open(path, "rb+") as fh:
        data = fh.read()
        if not data or data.endswith(b"\n"):
            return
        start = data.rfind(b"\n") + 1
        try:
            json.loads(data[start:])
            fh.write(b"\n")
        except ValueError:
            fh.truncate(start)
