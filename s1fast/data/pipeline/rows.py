"""What the pipeline steps share: fields of any schema, resumable JSONL output, counts by reason.

Schemas read: s1K (``question``, ``solution``, ``thinking_trajectories``, ``attempt``), s1K-1.1
(``deepseek_thinking_trajectory``, ``deepseek_attempt``), ShareGPT (``conversations``: human / gpt turns),
chat (``messages``), evaluation rows (``problem`` / ``answer``), and what ``generate`` writes (s1K fields plus
``key``, ``sample``, ``teacher``). Output is JSON lines, one ``write`` per row, flushed: a killed run leaves
at most one partial last line, which :class:`Output` cuts off before appending again.
"""
from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import os
import pickle
import sys
import tempfile
from collections import Counter
from typing import Iterable, Iterator

from ...jsonl import end_cut_line
from ...whole_folder import clean_stale, sibling
from ..readers import DataError, jsonl_rows, read_rows, samples_of

QUESTION_FIELDS = ("question", "problem", "prompt", "Question")
REFERENCE_FIELDS = ("answer", "gt", "solution", "Answer")
DOMAIN_FIELDS = ("domain", "subject", "cot_type", "source_type", "source")
SPILL = ".s1fast-rows"   # Reread's spill folder beside an output: SPILL.tmp-HOST-PID


def _number(cast, want: str, ok):
    """An argparse type: ``cast`` of the text, refused (naming the flag, exit 2) unless ``ok``."""
    def parse(text: str):
        try:
            v = cast(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {want}, got {text!r}") from None
        if not ok(v):
            raise argparse.ArgumentTypeError(f"must be {want}, got {v}")
        return v
    return parse


positive_int = _number(int, "a positive whole number", lambda v: v > 0)
non_negative_int = _number(int, "a whole number >= 0", lambda v: v >= 0)
positive_float = _number(float, "a number > 0", lambda v: v > 0)
non_negative_float = _number(float, "a number >= 0", lambda v: v >= 0)


def first(row: dict, names: Iterable[str]):
    for k in names:
        v = row.get(k)
        if v is not None and v != "":
            return v
    return None


def _turns(row: dict) -> list[tuple[str, str]]:
    if isinstance(row.get("conversations"), list):
        return [(str(t.get("from")), str(t.get("value", ""))) for t in row["conversations"] if isinstance(t, dict)]
    if isinstance(row.get("messages"), list):
        return [(str(t.get("role")), str(t.get("content", ""))) for t in row["messages"] if isinstance(t, dict)]
    return []


def question(row: dict) -> str | None:
    q = first(row, QUESTION_FIELDS)
    if q is None:
        q = next((v for r, v in _turns(row) if r in ("human", "user")), None)
    return q if isinstance(q, str) else None


def reference(row: dict, field: str | None = None) -> str | None:
    """The reference answer: ``field`` if named, else answer / gt / solution (a solution's last \\boxed{})."""
    from s1fast.grading import last_boxed
    v = row.get(field) if field else first(row, REFERENCE_FIELDS)
    if v is None:
        return None
    v = str(v)
    return last_boxed(v) or v


def trace(row: dict) -> str:
    """The reasoning text (s1K, s1K-1.1, or the assistant turn of ShareGPT / chat rows); "" when none."""
    t = row.get("thinking_trajectories")
    if isinstance(t, list):
        return "\n".join(str(x) for x in t).strip()
    if isinstance(t, str):
        return t.strip()
    if isinstance(row.get("deepseek_thinking_trajectory"), str):
        return row["deepseek_thinking_trajectory"].strip()
    return next((v for r, v in reversed(_turns(row)) if r in ("gpt", "assistant")), "").strip()


def attempt(row: dict) -> str:
    """The final answer text; for ShareGPT / chat rows, the whole assistant turn (its \\boxed{} is graded)."""
    for k in ("attempt", "deepseek_attempt"):
        if isinstance(row.get(k), str):
            return row[k]
    return next((v for r, v in reversed(_turns(row)) if r in ("gpt", "assistant")), "")

def domain_getter(field: str | None, fn: str | None):
    """row -> domain: the classifier ``fn`` (module:function) if named, else ``field``, else the first domain field."""
    if fn:
        mod, _, name = fn.partition(":")
        if not name:
            raise ValueError(f"--domain-fn {fn!r}: write module:function, e.g. mypkg.domains:classify")
        try:
            f = getattr(importlib.import_module(mod), name)
        except ImportError as e:
            raise ValueError(f"--domain-fn {fn!r}: cannot import {mod!r} ({e}); put its folder on PYTHONPATH") \
                from None
        except AttributeError:
            raise ValueError(f"--domain-fn {fn!r}: module {mod!r} has no {name!r}") from None

        def classify(row):
            try:
                return str(f(row))
            except Exception as e:  # noqa: BLE001 -- the user's code: name it, and the row it failed on
                q = (question(row) or "")[:80]
                raise ValueError(f"--domain-fn {fn!r} failed on the row with question {q!r}: "
                                 f"{type(e).__name__}: {e}") from None
        return classify

    def get(row):
        v = row.get(field) if field else first(row, DOMAIN_FIELDS)
        return str(v) if v not in (None, "") else "unknown"
    return get


def n_tokens(tokenizer, text: str) -> int:
    """Tokens in ``text`` (a lone surrogate, which tokenizers refuse, counted as one replacement character)."""
    if not text:
        return 0
    return len(tokenizer(text.encode("utf-8", "replace").decode("utf-8"), add_special_tokens=False)["input_ids"])


def qid(q: str) -> str:
    """A question's identity: a hash of its text, so that resuming does not depend on row order."""
    return hashlib.sha1(q.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def read(path: str, warn: bool = True) -> Iterator[tuple[int, dict]]:
    """Rows of a .json / .jsonl / .parquet file; a partial last line of a .jsonl (a killed writer) is skipped.

    A last line with no newline after it is partial only when it is not complete JSON: many tools end a
    JSON-lines file without a final newline, and that last row is kept. The file is streamed, never read whole.
    ``warn``: say so on stderr (a second pass over a file already warned about does not)."""
    for i, _, row in read_at(path, warn):
        yield i, row


def read_at(path: str, warn: bool = True) -> Iterator[tuple[int, tuple[int, int] | None, dict]]:
    """``read`` with where each row is: ``(row_number, (byte offset of its line, which of the line's samples),
    row)`` for a .jsonl, whose row :func:`row_at` reads again from there; None for .json and .parquet files."""
    if path.endswith(".jsonl") and os.path.isfile(path):
        def cut(n: int, nbytes: int) -> None:
            if warn:
                print(f"warning: {path}: ignoring a partial last line ({nbytes} bytes; a run was killed while "
                      "writing it)", file=sys.stderr)
        with open(path, "rb") as f:
            lines = _Lines(f)
            for i, line in jsonl_rows(lines, path, cut_tail_ok=True, on_cut=cut):
                for part, row in enumerate(samples_of(i, line, path)):
                    yield i, (lines.pos, part), row
        return
    for i, row in read_rows(path):
        yield i, None, row


def read_shown(path: str, desc: str, enabled: bool = True) -> Iterator[tuple[int, dict]]:
    """``read`` with a progress bar: bytes of a .jsonl (its size known without reading it), else rows."""
    size = os.path.getsize(path) if path.endswith(".jsonl") and os.path.isfile(path) else None
    shown = bar(size, desc, "B" if size is not None else "row", enabled, unit_scale=size is not None)
    done = 0
    for i, pos, row in read_at(path):
        if size is None:
            shown.update(1)
        else:
            shown.update(pos[0] - done)
            done = pos[0]
        yield i, row
    if size is not None:
        shown.update(size - done)
    shown.close()


class _Lines:
    """The raw lines of an open file; ``pos``: where the last one given began."""

    def __init__(self, f):
        self.f, self.pos, self._next = f, 0, 0

    def __iter__(self):
        for raw in self.f:
            self.pos, self._next = self._next, self._next + len(raw)
            yield raw


def row_at(f, path: str, where: tuple[int, int], row: int) -> dict:
    """The row ``row`` of the .jsonl ``path`` (open as ``f``, binary) that is ``where`` (from :func:`read_at`)."""
    offset, part = where
    f.seek(offset)
    for i, value in jsonl_rows([f.readline()], path, first=row):
        return samples_of(i, value, path)[part]
    raise DataError(f"no row at byte {offset} any more: the file changed while it was read; run again",
                    path=path, row=row)


class Reread:
    """The rows of ``path`` (``(row number, where, row)``, as :func:`read_at`), each read again later by
    :meth:`row` without being held: a .jsonl's from the file itself (its line's byte offset); any other format's
    from a spill file of the rows (pickled: the same Python values) in a folder beside the file ``beside``
    (``.s1fast-rows.tmp-HOST-PID``), removed on close; one a killed run left is removed by the next
    (``whole_folder.clean_stale``)."""

    def __init__(self, path: str, beside: str):
        self.path, self.beside, self._spill, self._dir = path, beside, None, None
        self._f = open(path, "rb") if path.endswith(".jsonl") and os.path.isfile(path) else None

    def __iter__(self) -> Iterator[tuple[int, tuple[int, int], dict]]:
        for i, where, row in read_at(self.path):
            if where is None:
                spill = self._spill or self._open_spill()
                where = (spill.tell(), -1)
                pickle.dump(row, spill, protocol=pickle.HIGHEST_PROTOCOL)
            yield i, where, row

    def _open_spill(self):
        base = os.path.join(os.path.dirname(os.path.abspath(self.beside)), SPILL)
        os.makedirs(os.path.dirname(base), exist_ok=True)
        clean_stale(base, lambda msg: print(msg, file=sys.stderr))   # what a killed run left (SIGTERM, OOM)
        self._dir = sibling(base)
        os.makedirs(self._dir, exist_ok=True)
        fd, self._name = tempfile.mkstemp(suffix=".pickle", dir=self._dir)
        self._spill = os.fdopen(fd, "w+b")
        return self._spill

    def row(self, where: tuple[int, int], i: int) -> dict:
        """Row ``i``, found at ``where``."""
        if where[1] >= 0:
            return row_at(self._f, self.path, where, i)
        self._spill.seek(where[0])
        return pickle.load(self._spill)

    def close(self) -> None:
        for f in (self._f, self._spill):
            if f is not None:
                f.close()
        if self._dir is not None:
            os.remove(self._name)
            try:
                os.rmdir(self._dir)
            except OSError:     # another spill of this process is there: the last one removes the folder
                pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def need_file(path: str, flag: str) -> None:
    """A DataError naming ``flag`` when ``path`` is not a file (read_rows's own says --data)."""
    if not os.path.isfile(path):
        raise DataError(f"{'is a folder' if os.path.isdir(path) else 'no such file'}; {flag} takes a .json, .jsonl "
                        "or .parquet file", path=path)


class Output:
    """An append-only JSON-lines file: ``keys`` holds what an earlier run already wrote (field ``key_field``);
    ``kept[key]`` the fields ``keep`` of that earlier row, read in the same pass, ``row_of[key]`` its row number."""

    def __init__(self, path: str, key_field: str | None = "key", keep: tuple[str, ...] = ()):
        if not path.endswith(".jsonl"):
            raise DataError("outputs are JSON lines (appendable, so a stopped run resumes): name a .jsonl file",
                            path=path)
        self.path, self.key_field, self.keys = path, key_field, set()
        self.kept: dict = {}
        self.row_of: dict = {}
        self.rows = 0
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        if os.path.exists(path):
            self._repair()
            for i, row in read_rows(path):
                self.rows += 1
                if key_field and row.get(key_field) is not None:
                    self.keys.add(row[key_field])
                    if keep:
                        self.kept[row[key_field]] = tuple(row.get(f) for f in keep)
                        self.row_of[row[key_field]] = i
        self._fh = open(path, "a", encoding="utf-8")

    def _repair(self) -> None:
        dropped = end_cut_line(self.path)
        if dropped:
            print(f"warning: {self.path}: dropping a partial last line ({dropped} bytes) left by a killed run; "
                  "that row is redone", file=sys.stderr)

    def check_same_run(self, keys: set, what: str) -> None:
        """Refuse to append when the file holds rows this run would not write (``keys``: all it writes): they
        came from a run with other options or data, and appending would mix the two."""
        stale = self.keys - keys
        if stale:
            raise DataError(f"already holds {len(stale)} row(s) that this run does not {what} (an earlier run with "
                            "other options or data wrote them); appending would mix the two: delete the file or "
                            "pass another --out", path=self.path)

    def write(self, row: dict) -> None:
        text = json.dumps(row, ensure_ascii=False)
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:       # a lone surrogate (valid JSON, "\ud83d"): written escaped, as read
            text = json.dumps(row)
        self._fh.write(text + "\n")
        self._fh.flush()
        self.rows += 1
        if self.key_field and row.get(self.key_field) is not None:
            self.keys.add(row[self.key_field])

    def close(self) -> None:
        self._fh.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def bar(total: int | None, desc: str, unit: str, enabled: bool = True, **kw):
    """A progress bar on stderr (tqdm; ``kw`` passed on), or one that shows nothing when disabled or tqdm is
    missing."""
    if enabled:
        try:
            from tqdm import tqdm
            return tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True, file=sys.stderr, **kw)
        except ImportError:
            pass
    return _NoBar()


class Tally:
    """Counts by reason; ``report()`` is the summary each step prints at its end."""

    def __init__(self, step: str):
        self.step, self.kept, self.dropped, self.other = step, Counter(), Counter(), Counter()

    def keep(self, reason: str, n: int = 1) -> None:
        self.kept[reason] += n

    def drop(self, reason: str, n: int = 1) -> None:
        self.dropped[reason] += n

    def note(self, what: str, n: int = 1) -> None:
        self.other[what] += n

    def as_dict(self) -> dict:
        return {"step": self.step, "kept": dict(self.kept), "dropped": dict(self.dropped), "other": dict(self.other),
                "total_kept": sum(self.kept.values()), "total_dropped": sum(self.dropped.values())}

    def report(self) -> str:
        d = self.as_dict()
        parts = [f"{self.step}: kept {d['total_kept']}, dropped {d['total_dropped']}"]
        for name, c in (("kept", self.kept), ("dropped", self.dropped), ("", self.other)):
            if c:
                parts.append(f"  {name + ': ' if name else ''}" + ", ".join(f"{k} {v}" for k, v in sorted(c.items())))
        return "\n".join(parts)
