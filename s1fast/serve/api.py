"""The OpenAI wire format: request bodies checked field by field, errors in OpenAI's shape, responses.

A request is a JSON object; every field is checked here (type, range, known name) so that the app
only sees a validated :class:`Job`. Budget forcing comes as extra body fields (the official client
passes them with ``extra_body``); fields left out take the server's defaults (its command line).
The error table (status, ``type``, ``code``) is in README.md ("Serving").
"""
from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field

from s1fast.generate import GenerationConfig, chat_prompt_ids
from s1fast.sampling import Penalties


class APIError(Exception):
    """An error answered as ``{"error": {"message", "type", "param", "code"}}`` with ``status``."""

    def __init__(self, status: int, message: str, *, code: str | None = None, param: str | None = None,
                 type: str = "invalid_request_error"):  # noqa: A002 - OpenAI's field name
        super().__init__(message)
        self.status, self.message, self.code, self.param, self.type = status, message, code, param, type

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


FORCING_FIELDS = ("max_thinking_tokens", "min_thinking_tokens", "num_wait", "extension", "max_answer_tokens")
PENALTY_FIELDS = ("presence_penalty", "frequency_penalty", "repetition_penalty")
COMMON_FIELDS = ("model", "stream", "stream_options", "max_tokens", "max_completion_tokens", "temperature",
                 "top_p", "seed", "n", "user", "stop", "logprobs") + PENALTY_FIELDS + FORCING_FIELDS
CHAT_FIELDS = COMMON_FIELDS + ("messages", "top_logprobs")
COMPLETION_FIELDS = COMMON_FIELDS + ("prompt",)
TOOL_FIELDS = ("tools", "tool_choice", "functions", "function_call", "parallel_tool_calls")
MAX_EXTENSION_CHARS = 200
MAX_STOPS = 4                          # OpenAI's limit on stop strings
MAX_LOGPROBS = 20                      # top_logprobs (chat) / logprobs (completions): OpenAI's and vLLM's 20


@dataclass
class Limits:
    max_body_bytes: int = 1 << 20
    max_prompt_tokens: int = 16384
    max_tokens: int = 16384            # the most a request may ask for as max_tokens / max_answer_tokens
    max_concurrency: int = 128         # requests in flight (running + queued); more -> 429


@dataclass
class Job:
    """A validated request: the prompt ids and the forcing and sampling settings."""
    kind: str                          # "chat" or "completion"
    prompt_ids: list[int]
    stream: bool
    include_usage: bool
    forcing: dict = field(default_factory=dict)   # BudgetForcer keyword arguments + "extension"
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    stop: tuple[str, ...] = ()         # strings that end the answer (not the thinking); the match is left out
    n: int = 1                         # choices; choice i is seeded with seed + i
    penalties: Penalties = Penalties()
    logprobs: int | None = None        # top logprobs per answer token; None: no logprobs


def parse_json(raw: bytes) -> dict:
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise APIError(400, f"the request body is not valid JSON ({e}); send a JSON object",
                       code="invalid_json") from None
    if not isinstance(body, dict):
        raise APIError(400, f"the request body must be a JSON object, got {type(body).__name__}",
                       code="invalid_json")
    return body


def _int(body: dict, name: str, lo: int, hi: int | None = None, *, auto: bool = False):
    v = body[name]
    if auto and v == "auto":
        return v
    if isinstance(v, bool) or not isinstance(v, int):
        kind = 'an integer or "auto"' if auto else "an integer"
        raise APIError(400, f"'{name}' must be {kind}, got {v!r}",
                       code="invalid_type", param=name)
    if v < lo or (hi is not None and v > hi):
        where = f">= {lo}" if hi is None else f"between {lo} and {hi}"
        raise APIError(400, f"'{name}' must be {where}, got {v}", code="invalid_value", param=name)
    return v


def _number(body: dict, name: str, lo: float, hi: float, lo_open: bool = False) -> float:
    v = body[name]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not (lo < v if lo_open else lo <= v) or v > hi:
        raise APIError(400, f"'{name}' must be a number in {'(' if lo_open else '['}{lo}, {hi}], got {v!r}",
                       code="invalid_value", param=name)
    return float(v)


def _text(content, where: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text"
                                         and isinstance(p.get("text"), str) for p in content):
        return "".join(p["text"] for p in content)
    raise APIError(400, f"{where} must be a string or a list of text parts ({{\"type\": \"text\", \"text\": ...}})",
                   code="invalid_type", param=where)


def _messages(body: dict) -> list[dict]:
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise APIError(400, "'messages' must be a non-empty list of {role, content} objects", code="invalid_value",
                       param="messages")
    out = []
    for i, m in enumerate(msgs):
        where = f"messages[{i}]"
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant"):
            raise APIError(400, f"{where}.role must be 'system', 'user' or 'assistant'", code="invalid_value",
                           param=f"{where}.role")
        extra = set(m) - {"role", "content", "name"}
        if extra:
            raise APIError(400, f"{where}: unrecognized field(s) {sorted(extra)}", code="unknown_parameter",
                           param=where)
        if m["role"] == "system" and i:
            raise APIError(400, f"{where}: a system message may only come first", code="invalid_value", param=where)
        out.append({"role": m["role"], "content": _text(m.get("content"), f"{where}.content")})
    return out


def parse_job(body: dict, kind: str, tokenizer, defaults: GenerationConfig, limits: Limits,
              model_name: str) -> Job:
    """Check ``body`` (a chat or completion request) and turn it into a :class:`Job`."""
    body = {k: v for k, v in body.items() if v is not None}   # null is "not given", as in OpenAI's API
    _check_names(body, kind)
    if "model" in body and body["model"] != model_name:
        raise APIError(404, f"The model {body['model']!r} does not exist; this server serves {model_name!r}",
                       code="model_not_found", param="model")
    n = _int(body, "n", 1, limits.max_concurrency) if "n" in body else 1   # each choice takes a row
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise APIError(400, "'stream' must be true or false", code="invalid_type", param="stream")
    opts = body.get("stream_options") or {}
    if not isinstance(opts, dict) or set(opts) - {"include_usage"}:
        raise APIError(400, "'stream_options' takes only {\"include_usage\": bool}", code="invalid_value",
                       param="stream_options")
    forcing = _forcing(body, defaults, limits)
    temperature = _number(body, "temperature", 0.0, 2.0) if body.get("temperature") is not None \
        else defaults.temperature
    top_p = _number(body, "top_p", 0.0, 1.0, lo_open=True) if body.get("top_p") is not None else defaults.top_p
    seed = _int(body, "seed", 0, 2**63 - 1) if body.get("seed") is not None else defaults.seed
    stop = body.get("stop", [])
    stop = [stop] if isinstance(stop, str) else stop
    if not isinstance(stop, list) or len(stop) > MAX_STOPS or not all(isinstance(x, str) and x for x in stop):
        raise APIError(400, f"'stop' must be a non-empty string or a list of at most {MAX_STOPS} of them, got "
                       f"{body['stop']!r}", code="invalid_value", param="stop")
    ids = _prompt_ids(body, kind, tokenizer)
    if len(ids) > limits.max_prompt_tokens:
        raise APIError(400, f"the prompt has {len(ids)} tokens; this server takes at most "
                       f"{limits.max_prompt_tokens} (--max-prompt-tokens)", code="context_length_exceeded",
                       param="messages" if kind == "chat" else "prompt")
    return Job(kind, ids, stream, bool(opts.get("include_usage", False)), forcing, temperature, top_p, seed,
               tuple(stop), n, _penalties(body), _logprobs(body, kind))


def _check_names(body: dict, kind: str) -> None:
    tools = [k for k in TOOL_FIELDS if k in body]
    if tools:
        raise APIError(400, f"tool calling is not supported by this server ('{tools[0]}' was sent): it serves a "
                       "budget-forced reasoning model; leave out tools, tool_choice and functions",
                       code="unsupported_parameter", param=tools[0])
    allowed = CHAT_FIELDS if kind == "chat" else COMPLETION_FIELDS
    unknown = sorted(set(body) - set(allowed))
    if unknown:
        raise APIError(400, f"Unrecognized request argument(s) supplied: {', '.join(unknown)} (this endpoint "
                       f"takes {', '.join(allowed)})", code="unknown_parameter", param=unknown[0])


def _forcing(body: dict, defaults: GenerationConfig, limits: Limits) -> dict:
    forcing = {k: getattr(defaults, k) for k in FORCING_FIELDS}
    for name in ("min_thinking_tokens", "num_wait"):
        if name in body:
            forcing[name] = _int(body, name, 0, limits.max_tokens)
    if "max_thinking_tokens" in body:
        forcing["max_thinking_tokens"] = _int(body, "max_thinking_tokens", 0, auto=True)
    for name in ("max_tokens", "max_completion_tokens", "max_answer_tokens"):   # all three: the answer budget
        if body.get(name) is not None:
            forcing["max_answer_tokens"] = _int(body, name, 0 if name == "max_answer_tokens" else 1,
                                                limits.max_tokens)
    if "extension" in body:
        ext = body["extension"]
        if not isinstance(ext, str) or not ext.strip() or len(ext) > MAX_EXTENSION_CHARS:
            raise APIError(400, f"'extension' must be a non-blank string of at most {MAX_EXTENSION_CHARS} "
                           f"characters, got {ext!r}", code="invalid_value", param="extension")
        forcing["extension"] = ext
    return forcing


def _penalties(body: dict) -> Penalties:
    """OpenAI's presence/frequency penalties (-2..2) and vLLM's repetition penalty (> 0, 1 is none)."""
    kw = {}
    for name in ("presence_penalty", "frequency_penalty"):
        if name in body:
            kw[name.split("_")[0]] = _number(body, name, -2.0, 2.0)
    if "repetition_penalty" in body:
        v = body["repetition_penalty"]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < float("inf"):
            raise APIError(400, f"'repetition_penalty' must be a finite number > 0 (1 is no penalty), got {v!r}",
                           code="invalid_value", param="repetition_penalty")
        kw["repetition"] = float(v)
    return Penalties(**kw)


def _logprobs(body: dict, kind: str) -> int | None:
    """The number of top logprobs per answer token, or None: chat's ``logprobs: true`` + ``top_logprobs``,
    completions' ``logprobs: k``."""
    if kind == "completion":
        return _int(body, "logprobs", 0, MAX_LOGPROBS) if "logprobs" in body else None
    on = body.get("logprobs", False)
    if not isinstance(on, bool):
        raise APIError(400, f"'logprobs' must be true or false (the number of alternatives is 'top_logprobs'), "
                       f"got {on!r}", code="invalid_type", param="logprobs")
    if "top_logprobs" in body and not on:
        raise APIError(400, "'top_logprobs' needs 'logprobs': true", code="invalid_value", param="top_logprobs")
    if not on:
        return None
    return _int(body, "top_logprobs", 0, MAX_LOGPROBS) if "top_logprobs" in body else 0


def _prompt_ids(body: dict, kind: str, tokenizer) -> list[int]:
    if kind == "chat":
        return chat_prompt_ids(tokenizer, _messages(body))
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    if isinstance(prompt, str) and prompt:
        return tokenizer.encode(prompt, add_special_tokens=False)
    if (isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t, bool)
                                                    and 0 <= t < len(tokenizer) for t in prompt)):
        return list(prompt)
    if isinstance(prompt, list) and len(prompt) > 1 and all(isinstance(p, (str, list)) for p in prompt):
        raise APIError(400, f"'prompt' is a batch of {len(prompt)} prompts; this server takes one per request: "
                       "send one request each (they are batched together on the server)", code="invalid_value",
                       param="prompt")
    raise APIError(400, "'prompt' must be a non-empty string (the chat-formatted text up to "
                   "'<|im_start|>assistant\\n') or a list of token ids", code="invalid_value", param="prompt")


# ---- responses ------------------------------------------------------------------------------------------
def new_id(kind: str) -> str:
    return ("chatcmpl-" if kind == "chat" else "cmpl-") + uuid.uuid4().hex[:24]


def usage(results: list[dict]) -> dict:
    """Of a request's choices: the prompt once, the completion tokens of all choices (as OpenAI counts n > 1)."""
    t, a = sum(r["thinking_tokens"] for r in results), sum(r["answer_tokens"] for r in results)
    p = results[0]["prompt_tokens"]
    return {"prompt_tokens": p, "completion_tokens": t + a, "total_tokens": p + t + a, "thinking_tokens": t,
            "answer_tokens": a, "completion_tokens_details": {"reasoning_tokens": t}}


def forcing_report(result: dict, forced_end: str) -> dict:
    return {"waits": result["waits"], "capped": result["capped"], "max_thinking_tokens": result["max_thinking_tokens"],
            "forced_end": forced_end}


def finish_reason(result: dict) -> str:
    return "stop" if result["finished"] else "length"


def response(kind: str, rid: str, model: str, outs: list[tuple[str, str, dict, str, dict | None]]) -> dict:
    """The whole response; ``outs``: (thinking, answer, result, forced end text, logprobs) per choice. Each
    choice carries its ``budget_forcing``; the top-level one is choice 0's (the only one when n = 1)."""
    choices = []
    for i, (thinking, answer, result, forced_end, logprobs) in enumerate(outs):
        if kind == "chat":
            choice = {"index": i, "message": {"role": "assistant", "content": answer, "reasoning_content": thinking},
                      "logprobs": logprobs, "finish_reason": finish_reason(result)}
        else:
            choice = {"index": i, "text": answer, "reasoning_content": thinking, "logprobs": logprobs,
                      "finish_reason": finish_reason(result)}
        choices.append({**choice, "budget_forcing": forcing_report(result, forced_end)})
    obj = "chat.completion" if kind == "chat" else "text_completion"
    return {"id": rid, "object": obj, "created": int(time.time()), "model": model, "choices": choices,
            "usage": usage([o[2] for o in outs]), "budget_forcing": choices[0]["budget_forcing"]}


def chunk(kind: str, rid: str, model: str, *, index: int = 0, thinking: str = "", answer: str = "",
          first: bool = False, finish: str | None = None, logprobs: dict | None = None) -> dict:
    """One streamed event (``chat.completion.chunk`` or a streamed ``text_completion``)."""
    if kind == "chat":
        delta: dict = {"role": "assistant", "content": ""} if first else {}
        if thinking:
            delta["reasoning_content"] = thinking
        if answer:
            delta["content"] = answer
        choice = {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
        obj = "chat.completion.chunk"
    else:
        choice = {"index": index, "text": answer, "logprobs": logprobs, "finish_reason": finish}
        if thinking:
            choice["reasoning_content"] = thinking
        obj = "text_completion"
    return {"id": rid, "object": obj, "created": int(time.time()), "model": model, "choices": [choice]}
