"""A .json data file read a row at a time with ijson, never parsed whole.

Streams the shapes s1fast.data.readers accepts: a list of rows, ``{"train": [...]}`` (one key holding the list)
and SkyThought's results (problem id -> problem). Numbers come from ijson as int or Decimal, and the Decimals
become the floats Python's json makes of the same digits. ijson (yajl) reads strict JSON only: it refuses NaN
and Infinity, which Python's json reads, and it reads a lone surrogate escape ("\\ud83d" without its pair) as
"?". Such a file raises :class:`Unstreamable`, and so do a file that is not JSON, a missing ijson, and an object
whose list of rows is not its first and only value (``{"version": 1, "data": [...]}``, refused either way).
The caller then reads the file whole with Python's json (as before streaming), from the row after the last one
streamed: the same rows, and the same error message for a bad file, at the cost of holding that file.
"""
from __future__ import annotations

import re
from decimal import Decimal
from typing import Iterator

CHUNK = 1 << 16
BOM = b"\xef\xbb\xbf"
_SURROGATE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")
_HIGH = re.compile(rb"\\u[dD][89abAB][0-9a-fA-F]{2}")
_LOW = re.compile(rb"\\u[dD][c-fC-F][0-9a-fA-F]{2}")
_STARTS, _ENDS = ("start_map", "start_array"), ("end_map", "end_array")
_NESTED = (Decimal, dict, list)


class Unstreamable(Exception):
    """This file cannot be streamed from here on: read it whole (the message says why)."""


def stream_json(path: str) -> Iterator[tuple[int, str | None, object]]:
    """``(number, problem id, value)``: each row of a list (id None), numbered from 1, or each problem of a
    SkyThought results object. Raises :class:`Unstreamable` where the rest must be read whole."""
    try:
        import ijson
    except ImportError:
        raise Unstreamable("ijson is not installed") from None
    with open(path, "rb") as f:
        try:
            src = _Checked(f)
            first = src.first()
            if first == b"[":
                for n, value in enumerate(ijson.items(src, "item"), 1):
                    yield n, None, _floats(value)
            elif first == b"{":
                for n, uid, value in _object(ijson.parse(src)):
                    yield n, uid, _floats(value)
            elif first:                    # a scalar, or not JSON: the whole-file read says which
                raise Unstreamable("not a list or an object")
        except (ijson.JSONError, ValueError) as e:   # ValueError: bytes that are not UTF-8, or _LoneSurrogate
            raise Unstreamable(f"{type(e).__name__}: {str(e)[:200]}") from None


def _object(events) -> Iterator[tuple[int, str | None, object]]:
    """The rows of a top-level object whose first value is the list of rows (and which holds nothing else), or
    the problems of a results object (its first value a problem with 'responses')."""
    _next(events)                                  # start_map
    e, key = _next(events)
    if e != "map_key":
        raise Unstreamable("an empty object")
    e, v = _next(events)
    if e == "start_array":
        n = 0
        while True:
            e, v = _next(events)
            if e == "end_array":
                break
            n += 1
            yield n, None, _build(events, e, v)
        if _next(events)[0] != "end_map":
            raise Unstreamable("the object holds more than its list of rows")
    elif e == "start_map":
        rec = _build(events, e, v)
        if "responses" not in rec:
            raise Unstreamable("the object's first value is neither a list of rows nor a problem with responses")
        n = 1
        yield n, key, rec
        while True:
            e, key = _next(events)
            if e == "end_map":
                break
            n += 1
            yield n, key, _build(events, *_next(events))
    else:
        raise Unstreamable("the object's first value is neither a list of rows nor a problem with responses")
    for _ in events:                               # the end: yajl refuses trailing garbage
        pass


def _floats(v):
    """``v`` with each Decimal (ijson's non-integer numbers) as the float Python's json makes of its text (an
    integer past 64 bits, which ijson's use_float refuses, stays an int)."""
    t = type(v)
    if t is Decimal:
        return float(v)         # float(str(v)): the float json.loads makes of the same digits
    if t is dict:
        for k, x in v.items():
            if type(x) in _NESTED:
                v[k] = _floats(x)
    elif t is list:
        for i, x in enumerate(v):
            if type(x) in _NESTED:
                v[i] = _floats(x)
    return v


def _next(events) -> tuple[str, object]:
    for _, e, v in events:
        return e, v
    raise Unstreamable("the file ends early")


def _build(events, e: str, v):
    """The value that begins with event ``e`` (value ``v``), read to its end."""
    if e not in _STARTS:
        return v
    from ijson import ObjectBuilder
    b, depth = ObjectBuilder(), 0
    while True:
        b.event(e, v)
        depth += (e in _STARTS) - (e in _ENDS)
        if depth == 0:
            return b.value
        e, v = _next(events)


class _LoneSurrogate(ValueError):
    pass


class _Checked:
    """An open .json file's bytes for ijson, a chunk at a time: a leading byte-order mark dropped, and a lone
    surrogate escape refused (:class:`_LoneSurrogate`) before the parser sees it. A chunk is checked with the
    64 bytes before it and the 12 after (an escape pair is 12 bytes)."""

    def __init__(self, f):
        self.f, self.buf, self.tail, self.done = f, b"", b"", 0
        head = self._more()
        self.ahead = head[len(BOM):] if head.startswith(BOM) else head

    def _more(self) -> bytes:
        """The next chunk: at least the 12 bytes the check looks ahead, unless the file ends first."""
        got = self.f.read(CHUNK)
        while 0 < len(got) < 12:
            more = self.f.read(CHUNK)
            if not more:
                break
            got += more
        return got

    def _fill(self) -> bool:
        chunk = self.ahead
        if not chunk:
            return False
        self.ahead = self._more()
        _check(self.tail + chunk + self.ahead[:12], len(self.tail), len(self.tail) + len(chunk),
               self.done > len(self.tail))
        self.done += len(chunk)
        self.tail = (self.tail + chunk)[-64:]
        self.buf += chunk
        return True

    def first(self) -> bytes:
        """The first byte that is not blank (b"" for none), left to be read."""
        while not self.buf.lstrip(b" \t\r\n"):
            if not self._fill():
                return b""
        return self.buf.lstrip(b" \t\r\n")[:1]

    def read(self, n: int = -1) -> bytes:
        """Up to ``n`` bytes (-1: the rest), reading at most one more chunk; b"" only at the end."""
        if not self.buf:
            self._fill()
        while n < 0 and self._fill():
            pass
        n = len(self.buf) if n < 0 else n
        out, self.buf = self.buf[:n], self.buf[n:]
        return out


def _check(window: bytes, start: int, end: int, cut: bool) -> None:
    """Raise _LoneSurrogate for a surrogate escape beginning in ``window[start:end]`` that is not one half of a
    pair; ``cut``: the window begins mid-file (a run of backslashes reaching its start is taken as unsafe)."""
    for m in _SURROGATE.finditer(window, start):
        s = m.start()
        if s >= end:
            return
        if not _escapes(window, s, cut):
            continue                               # "\\ud83d": a backslash, then text
        if _HIGH.match(window, s) and _LOW.match(window, s + 6):
            continue
        if _LOW.match(window, s) and s >= 6 and _HIGH.match(window, s - 6) and _escapes(window, s - 6, cut):
            continue
        raise _LoneSurrogate(f"a lone surrogate escape {m.group().decode()!r}")


def _escapes(window: bytes, s: int, cut: bool) -> bool:
    """Whether the backslash at ``s`` begins an escape: an even run of backslashes before it."""
    j = s
    while j > 0 and window[j - 1] == 0x5C:
        j -= 1
    if j == 0 and cut:
        raise _LoneSurrogate("a run of backslashes longer than the check's context")
    return (s - j) % 2 == 0
