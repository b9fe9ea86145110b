"""A teacher behind any OpenAI-compatible chat endpoint, through the official ``openai`` client.

Each request is one (question, sample). What happens on failure (the summary counts each kind):

- 429, 500-599, a timeout, a dropped connection, or a body that is not the JSON the API promises
  (``malformed``): retried up to ``retries`` times, waiting ``backoff * 2**attempt`` seconds (capped at 60,
  with jitter); then recorded as failed with its last error;
- 401 / 403: the whole run stops (:class:`AuthError`); what was written stays, a rerun resumes; so does a
  connection failure (after its retries) before any request of the run has succeeded: a wrong URL or a server
  that is down would otherwise cost every request its retries;
- any other 4xx, or a response with no choice / no text: recorded as failed at once (retrying cannot help).

The thinking text is the message's ``reasoning_content`` / ``reasoning`` field when the endpoint returns one,
else what the content's markers hold (``s1fast.data.reasoning``: ``<think>`` blocks, Sky-T1's thought and
solution blocks, s1's sections), else empty.
"""
from __future__ import annotations

import json
import random
import threading
import time
from dataclasses import dataclass

from ..reasoning import split_content

TRANSIENT = ("rate_limit", "server_error", "timeout", "connection", "malformed")


class StopRun(RuntimeError):
    """Nothing more can succeed (refused credentials, an endpoint never reached): the run stops."""


class AuthError(StopRun):
    """The endpoint refused the credentials."""


@dataclass
class Failure:
    kind: str        # rate_limit, server_error, timeout, connection, malformed, client_error, empty; too_long
    #                  (an engine teacher's question that leaves no room within --max-total-tokens)
    error: str
    attempts: int


def split_reasoning(message) -> tuple[str, str, str]:
    """(thinking, answer, where the thinking came from) of a chat completion message."""
    content = getattr(message, "content", None) or ""
    extra = getattr(message, "model_extra", None) or {}
    for name in ("reasoning_content", "reasoning"):
        v = getattr(message, name, None) or extra.get(name)
        if isinstance(v, str) and v.strip():
            return v.strip(), content.strip(), name
    return split_content(content)


def request_settings(*, temperature: float, top_p: float, system: str | None = None, max_tokens: int | None = None,
                     extra_body: dict | None = None) -> dict:
    """What each request sends besides the model, the question and its seed (those unset left out): the
    teacher builds every request from it, and ``generate`` records it on each row it writes."""
    s = {"temperature": temperature, "top_p": top_p}
    s.update((k, v) for k, v in (("system", system), ("max_tokens", max_tokens), ("extra_body", extra_body)) if v)
    return s


def without_credentials(url: str) -> str:
    """``url`` without a ``user:password@`` part: the address rows record must not carry a secret (nor an ``@``
    of its own, which the resume's teacher check splits the address off at)."""
    from urllib.parse import urlsplit, urlunsplit
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    host = f"[{host}]" if ":" in host else host
    return urlunsplit(parts._replace(netloc=host + (f":{parts.port}" if parts.port else "")))


class OpenAITeacher:
    """``complete(question, seed)`` -> a result dict, or a :class:`Failure`; raises :class:`AuthError`."""

    def __init__(self, base_url: str, model: str, api_key: str | None = None, *, system: str | None = None,
                 max_tokens: int | None = None, temperature: float = 0.0, top_p: float = 1.0,
                 timeout: float = 600.0, retries: int = 4, backoff: float = 1.0, extra_body: dict | None = None):
        import openai
        self.openai = openai
        # The client's own retries are off: this class retries, so that each kind is counted and capped.
        self.client = openai.OpenAI(base_url=base_url, api_key=api_key or "EMPTY", timeout=timeout, max_retries=0)
        self.model = model
        self.settings = request_settings(temperature=temperature, top_p=top_p, system=system,
                                         max_tokens=max_tokens, extra_body=extra_body)
        self.retries, self.backoff = retries, backoff
        self.name = f"openai:{model}@{without_credentials(base_url)}"
        self.retried = {}
        self._lock = threading.Lock()

    def _classify(self, e: Exception) -> tuple[str, bool]:
        o = self.openai
        if isinstance(e, (o.AuthenticationError, o.PermissionDeniedError)):
            raise AuthError(f"the endpoint refused the credentials ({type(e).__name__}: {e}); set OPENAI_API_KEY "
                            "or --api-key; the samples written so far are kept and a rerun resumes") from e
        if isinstance(e, o.RateLimitError):
            return "rate_limit", True
        if isinstance(e, o.APITimeoutError):
            return "timeout", True
        if isinstance(e, o.APIConnectionError):
            return "connection", True
        if isinstance(e, o.APIStatusError):
            return ("server_error", True) if e.status_code >= 500 else ("client_error", False)
        if isinstance(e, (o.APIResponseValidationError, json.JSONDecodeError, ValueError, TypeError,
                          AttributeError)):
            return "malformed", True
        raise e

    def complete(self, question: str, seed: int):
        kw = dict(self.settings)
        system = kw.pop("system", None)
        msgs = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": question}]
        kw.update(model=self.model, messages=msgs, seed=seed)
        for attempt in range(self.retries + 1):
            try:
                r = self.client.chat.completions.create(**kw)
                if not getattr(r, "choices", None):
                    return Failure("empty", "the response has no choices", attempt + 1)
                thinking, answer, where = split_reasoning(r.choices[0].message)
                if not (thinking or answer):
                    return Failure("empty", "the response has no text", attempt + 1)
                usage = getattr(r, "usage", None)
                return {"thinking": thinking, "answer": answer, "reasoning_from": where,
                        "finish_reason": r.choices[0].finish_reason,
                        "completion_tokens": getattr(usage, "completion_tokens", None)}
            except Exception as e:  # noqa: BLE001 - classified: unknown errors are re-raised
                kind, transient = self._classify(e)
                err = f"{type(e).__name__}: {str(e)[:300]}"
                if not transient or attempt == self.retries:
                    return Failure(kind, err, attempt + 1)
                with self._lock:
                    self.retried[kind] = self.retried.get(kind, 0) + 1
                time.sleep(min(60.0, self.backoff * 2 ** attempt) * (0.5 + random.random() / 2))
        raise AssertionError("unreachable")
