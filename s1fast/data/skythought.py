"""SkyThought's output files read as s1fast samples: one row per response.

- ``results.json`` of the ``skythought generate | evaluate`` CLI: a JSON object, problem id -> the problem's
  dataset fields plus ``prompt``, ``input_conversation``, ``responses`` (``[{"content", "correctness",
  "reason"}]``) and ``token_usages`` (``[{"completion_tokens", "prompt_tokens"}]``), one entry per sample.
  Older releases (``skythought_evals``, ``tools/``) keyed both by temperature: ``{"0.7": [...] or {...}}``.
  A problem id written twice is an error (:func:`problem_rows`), however the file is read.
  A JSON-lines file of such problem objects is read the same way.
- The Qwen2.5-Math evaluation harness SkyThought ships: JSON lines with ``code`` (the responses), ``pred`` and
  ``score`` (its extraction and grade per response) next to ``question`` and ``gt``.

Each response row: the problem's fields (less those lists), ``thinking_trajectories`` / ``attempt`` (the
content split by its markers, :mod:`s1fast.data.reasoning`), ``sample``, ``key`` (problem id : sample),
``skythought_id``, SkyThought's own grade as ``skythought_correct`` (and ``skythought_pred``), and
``completion_tokens`` when the file counts them.
"""
from __future__ import annotations

from typing import Iterator

from .reasoning import split_content

RESPONSE_FIELDS = ("responses", "token_usages", "input_conversation", "code", "pred", "report", "score")


def is_results(items: list) -> bool:
    """Whether a whole .json file's top-level object, as its ``(key, value)`` pairs, is a SkyThought results
    object (problem id -> problem)."""
    return bool(items) and isinstance(items[0][1], dict) and "responses" in items[0][1]


def is_response_row(row: dict) -> bool:
    """Whether one row holds a problem's SkyThought responses: ``responses`` of ``{"content", ...}`` entries (or
    by temperature), or a harness row (``code`` and ``gt``). Another dataset's ``responses`` field is left be."""
    resp = row.get("responses")
    if isinstance(resp, dict):
        resp = next(iter(resp.values()), None)
    first = resp[0] if isinstance(resp, list) and resp else resp
    if isinstance(first, dict) and "content" in first:
        return True
    return isinstance(row.get("code"), list) and "gt" in row and "attempt" not in row


def results_rows(items, path: str, error) -> Iterator[tuple[int, dict]]:
    """``(problem number, response row)`` of a results object's ``(problem id, problem)`` pairs, in the file's
    order and with any repeated id (:func:`problem_rows`); ``error(message, row, field)`` makes the exception for
    a malformed entry."""
    seen: dict = {}
    for n, (uid, rec) in enumerate(items, 1):
        for row in problem_rows(n, uid, rec, error, seen):
            yield n, row


def problem_rows(n: int, uid: str, rec, error, seen: dict) -> list[dict]:
    """The response rows of the results object's ``n``-th entry, ``uid`` -> ``rec`` (one at a time: a results
    file streamed, s1fast.data.json_stream). ``seen``: the ids before it, by entry number. A repeated id is an
    error: JSON does not say which entry wins (Python's json keeps the last, a streaming reader sees both), and
    either way one entry's responses would be dropped, or a problem's counted twice."""
    if uid in seen:
        raise error(f"problem id {uid!r} is repeated (entries {seen[uid]} and {n}), and a JSON object's keys "
                    f"must be unique; merge the two entries' responses into one, or give one of them another id",
                    n, None)
    seen[uid] = n
    if not isinstance(rec, dict):
        raise error(f"problem {uid!r}: expected an object with 'responses', got {type(rec).__name__}", n, None)
    return response_rows(rec, str(uid), n, error)


def response_rows(rec: dict, uid: str | None, n: int, error) -> list[dict]:
    """The response rows of one problem ``rec`` (``uid``: its id; None: its ``idx``, else its row ``n``)."""
    uid = uid if uid is not None else str(rec.get("idx", rec.get("_index", n)))
    if "responses" not in rec:
        return _harness_rows(rec, uid, n, error)
    base = {k: v for k, v in rec.items() if k not in RESPONSE_FIELDS}
    out = []
    for temp, entries, usages in _groups(rec, n, error):
        for j, e in enumerate(entries):
            field = f"responses[{temp!r}][{j}]" if temp is not None else f"responses[{j}]"
            if not isinstance(e, dict) or not isinstance(e.get("content"), str):
                raise error(f"problem {uid!r}: a response must be an object with a text 'content', got "
                            f"{_shape(e)}; is this a SkyThought results file?", n, field)
            use = usages[j] if isinstance(usages, list) and j < len(usages) else usages
            extra = {"skythought_correct": e.get("correctness"), "skythought_reason": e.get("reason")}
            if temp is not None:
                extra["temperature"] = temp
            if isinstance(use, dict) and use.get("completion_tokens") is not None:
                extra["completion_tokens"] = use["completion_tokens"]
            out.append(_row(base, uid, len(out), e["content"], extra))
    return out


def _groups(rec: dict, n: int, error) -> list[tuple]:
    """(temperature or None, response entries, token usages) of a problem: one group in today's format, one
    per temperature in the older one."""
    resp, usages = rec["responses"], rec.get("token_usages")
    if isinstance(resp, list):
        return [(None, resp, usages)]
    if isinstance(resp, dict):
        usages = usages if isinstance(usages, dict) else {}
        return [(t, v if isinstance(v, list) else [v], usages.get(t)) for t, v in resp.items()]
    raise error(f"'responses' must be a list of responses (or, in older files, an object by temperature), got "
                f"{_shape(resp)}", n, "responses")


def _harness_rows(rec: dict, uid: str, n: int, error) -> list[dict]:
    code, preds, scores = rec.get("code"), rec.get("pred"), rec.get("score")
    base = {k: v for k, v in rec.items() if k not in RESPONSE_FIELDS}
    out = []
    for j, content in enumerate(code or ()):
        if not isinstance(content, str):
            raise error(f"problem {uid!r}: a response in 'code' must be text, got {_shape(content)}", n,
                        f"code[{j}]")
        extra = {"skythought_correct": scores[j] if isinstance(scores, list) and j < len(scores) else None}
        if isinstance(preds, list) and j < len(preds):
            extra["skythought_pred"] = preds[j]
        out.append(_row(base, uid, j, content, extra))
    return out


def _row(base: dict, uid: str, sample: int, content: str, extra: dict) -> dict:
    thinking, answer, _ = split_content(content)
    return {**base, "thinking_trajectories": [thinking], "attempt": answer, "sample": sample,
            "key": f"{uid}:{sample}", "skythought_id": uid, **extra}


def _shape(v) -> str:
    return f"{type(v).__name__} {str(v)[:60]!r}" if v is not None else "null"
