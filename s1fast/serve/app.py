"""The FastAPI app: routes, the API key, limits, streaming, and the bridge to the engine's worker thread.

``build_app(engine, tokenizer, ...)`` serves ``GET /health``, ``GET /v1/models``, ``POST /v1/chat/completions``
and ``POST /v1/completions``. Each choice's forcer (``n`` per request) goes to the engine
(``ContinuousBatcher`` or ``VLLMBatcher``); the engine's updates cross to the event loop with
``call_soon_threadsafe``. A streamed request sends ``reasoning_content`` deltas while thinking and ``content``
deltas while answering (with their tokens' logprobs when asked: ``serve.logprobs``); a ``stop`` string ends a
choice's answer (``StopText``). If the client goes away (mid-stream, or while waiting for a whole response)
the request is cancelled and its rows are freed. Every failure is answered in OpenAI's error shape
(``api.APIError``). ``/health`` is open; every ``/v1`` route checks the API key."""
from __future__ import annotations

import asyncio
import hmac
import json
import time
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from s1fast.batching import Update
from s1fast.forcing import BudgetForcer, ForcingTokens
from s1fast.generate import GenerationConfig
from s1fast.serve import api
from s1fast.serve.logprobs import Logprobs

DISCONNECT_POLL_S = 0.5


class TextStream:
    """Incremental detokenizer: the text of the ids so far, handed out as deltas (a delta never ends in
    half a UTF-8 character; the rest comes with the next token or at the end)."""

    def __init__(self, tokenizer):
        self.tok, self.ids, self.sent = tokenizer, [], 0

    def text(self) -> str:
        return self.tok.decode(self.ids, skip_special_tokens=False)

    def push(self, ids, final: bool = False) -> str:
        self.ids.extend(ids)
        if not ids and not final:
            return ""
        text = self.text()
        if not final and text.endswith("\ufffd"):
            return ""
        delta, self.sent = text[self.sent:], len(text)
        return delta


class StopText:
    """The answer's text cut before the first of ``stops``: ``push`` hands out what is safe to send, holding
    back a tail that could still become a stop string; ``hit`` once one was found (nothing more comes)."""

    def __init__(self, stops=()):
        self.stops, self.text, self.sent, self.hit = tuple(stops), "", 0, False

    def push(self, delta: str, final: bool = False) -> str:
        if self.hit:
            return ""
        self.text += delta
        found = [i for i in (self.text.find(s, self.sent) for s in self.stops) if i >= 0]
        if found:
            self.text, self.hit = self.text[:min(found)], True
            end = len(self.text)
        elif final:
            end = len(self.text)
        else:   # text sent is never part of a stop string: a match can only start at self.sent or later
            hold = max((k for s in self.stops for k in range(1, len(s)) if self.text.endswith(s[:k])), default=0)
            end = max(self.sent, len(self.text) - hold)
        out, self.sent = self.text[self.sent:end], end
        return out


def stopped_result(ticket, answer_tokens: int) -> dict:
    """The result of a request a stop string ended (after its ticket was cancelled): the answer's tokens are
    those generated up to the one that completed the match; ``finished``, so its finish_reason is "stop"."""
    r = ticket.forcer.result()
    r.update(answer_ids=r["answer_ids"][:answer_tokens], answer_tokens=answer_tokens, finished=True)
    return r


class Choice:
    """One choice of a request: its ticket, its texts (and logprobs) so far, and its result once it is done."""

    def __init__(self, server: "Server", job: api.Job, ticket):
        self.engine, self.ticket, self.result = server.engine, ticket, None
        self.thinking, self.answer, self.cut = TextStream(server.tok), TextStream(server.tok), StopText(job.stop)
        self.logprobs = Logprobs(server.tok, job.kind) if job.logprobs is not None else None

    def whole_logprobs(self) -> dict | None:
        """The logprobs of the answer's tokens (those a stop string left), for the whole response."""
        if self.logprobs is None:
            return None
        return Logprobs(self.logprobs.tok, self.logprobs.kind).take(
            self.logprobs.entries[:self.result["answer_tokens"]])

    def take(self, upd: Update) -> tuple[str, str]:
        """The (thinking, answer) text ``upd`` adds that may be sent; sets ``result`` once the choice is done
        (a stop string ends it: its ticket is cancelled)."""
        if self.logprobs is not None:
            self.logprobs.add(upd.logprobs)
        t = self.thinking.push(upd.thinking, upd.done)
        a = self.cut.push(self.answer.push(upd.answer, upd.done), upd.done)
        if self.cut.hit:
            self.engine.cancel(self.ticket)
            self.result = stopped_result(self.ticket, len(self.answer.ids))
        elif upd.done:
            self.result = upd.result
        return t, a


class Server:
    """Shared state of one app: the engine, the tokenizer, the forcing tokens per extension string."""

    def __init__(self, engine, tokenizer, *, model_name: str, max_total_tokens: int, defaults: GenerationConfig,
                 limits: api.Limits, api_key: str | None = None):
        self.engine, self.tok, self.model_name = engine, tokenizer, model_name
        self.max_total, self.defaults, self.limits, self.api_key = max_total_tokens, defaults, limits, api_key
        self.in_flight = 0      # choices (rows asked for) between submit and their request's last byte
        self.served = 0         # requests answered in full
        self.cancelled = 0      # requests whose client went away before the end
        self.created = int(time.time())
        self._tokens: dict[str, ForcingTokens] = {}

    def forcing_tokens(self, extension: str) -> ForcingTokens:
        if extension not in self._tokens:
            if len(self._tokens) > 256:
                self._tokens.clear()
            self._tokens[extension] = ForcingTokens.from_tokenizer(self.tok, extension=extension)
        return self._tokens[extension]

    def check_key(self, request: Request) -> None:
        if self.api_key is None:
            return
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        ok = hmac.compare_digest(token.strip().encode(), self.api_key.encode()) and scheme.lower() == "bearer"
        if not ok:
            raise api.APIError(401, "Incorrect or missing API key: send 'Authorization: Bearer <key>' with the "
                               "key given to --api-key", code="invalid_api_key")

    async def read_body(self, request: Request) -> dict:
        limit = self.limits.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise api.APIError(413, f"the request body has {declared} bytes; this server takes at most {limit} "
                               "(--max-body-bytes)", code="request_too_large")
        raw = bytearray()
        async for part in request.stream():
            raw += part
            if len(raw) > limit:
                raise api.APIError(413, f"the request body exceeds {limit} bytes (--max-body-bytes)",
                                   code="request_too_large")
        return api.parse_json(bytes(raw))

    def forcer(self, job: api.Job) -> BudgetForcer:
        kw = dict(job.forcing)
        try:
            tokens = self.forcing_tokens(kw.pop("extension"))
        except ValueError as e:
            raise api.APIError(400, f"'extension': {e}", code="invalid_value", param="extension") from None
        try:
            return BudgetForcer(job.prompt_ids, tokens, max_total_tokens=self.max_total, **kw)
        except ValueError as e:
            raise api.APIError(400, f"{e} (prompt: {len(job.prompt_ids)} tokens, context: {self.max_total})",
                               code="context_length_exceeded",
                               param="messages" if job.kind == "chat" else "prompt") from None


class _EventStream(StreamingResponse):
    """Server-sent events whose ``close(done=False)`` runs even if the body never started (a client gone
    before the first byte), so its request is cancelled and its row freed either way."""

    def __init__(self, events, close):
        super().__init__(events, media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self.close = close

    async def __call__(self, scope, receive, send):
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.close(False)


def build_app(server: Server, *, on_shutdown=None) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app):
        yield
        # uvicorn has drained the requests in flight when this runs (SIGTERM: stop accepting, finish, exit).
        if on_shutdown is not None:
            on_shutdown()

    app = FastAPI(title="s1fast", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.server = server

    @app.exception_handler(api.APIError)
    async def _api_error(request: Request, exc: api.APIError):
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        return JSONResponse(api.APIError(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}",
                                         code=code).body(), status_code=exc.status_code)

    @app.get("/health")
    async def health():     # open, as vLLM's: a load balancer's probe has no key; every /v1 route checks it
        return {"status": "ok", "model": server.model_name, "in_flight": server.in_flight,
                "engine_busy": server.engine.busy, "served": server.served, "cancelled": server.cancelled}

    @app.get("/v1/models")
    async def models(request: Request):
        server.check_key(request)
        return {"object": "list", "data": [{"id": server.model_name, "object": "model", "created": server.created,
                                            "owned_by": "s1fast", "max_model_len": server.max_total}]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        return await _complete(server, request, "chat")

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await _complete(server, request, "completion")

    return app


async def _complete(server: Server, request: Request, kind: str):
    """One completion request: checked, submitted to the engine, answered whole or as a stream."""
    server.check_key(request)
    body = await server.read_body(request)
    job = api.parse_job(body, kind, server.tok, server.defaults, server.limits, server.model_name)
    _check_engine(server, job)
    forcers = [server.forcer(job) for _ in range(job.n)]
    if server.in_flight + job.n > server.limits.max_concurrency:   # each choice is a request to the engine
        raise api.APIError(429, f"the server is at its limit of {server.limits.max_concurrency} requests in "
                           f"flight (--max-concurrency; a request counts its n={job.n} choices); retry later",
                           code="too_many_requests", type="rate_limit_error")
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[int, Update]] = asyncio.Queue()   # (choice index, update)
    tickets = []
    try:
        for i, forcer in enumerate(forcers):
            tickets.append(_submit(server, job, forcer, loop, queue, i))
    except api.APIError:
        _cancel(server, tickets)
        raise
    server.in_flight += job.n
    rid = api.new_id(kind)
    choices = [Choice(server, job, t) for t in tickets]
    if job.stream:
        close = _closer(server, tickets)
        return _EventStream(_stream(server, job, rid, choices, queue, close), close)
    return await _whole(server, request, job, rid, choices, queue, loop)


def _submit(server: Server, job: api.Job, forcer: BudgetForcer, loop, queue: asyncio.Queue, index: int):
    """The engine's ticket for choice ``index`` (seed + index); its updates are put on ``queue`` as (index,
    update) from the engine's thread."""
    def deliver(u: Update) -> None:     # on the engine's thread
        try:
            loop.call_soon_threadsafe(queue.put_nowait, (index, u))
        except RuntimeError:            # the loop is closed: nobody is waiting any more
            pass

    try:
        return server.engine.submit(forcer, deliver, temperature=job.temperature, top_p=job.top_p,
                                    seed=job.seed + index, penalties=job.penalties, logprobs=job.logprobs)
    except ValueError as e:
        raise api.APIError(400, str(e), code="context_length_exceeded") from None
    except RuntimeError as e:
        raise api.APIError(503, f"{e}; retry on another server", code="shutting_down",
                           type="server_error") from None


def _check_engine(server: Server, job: api.Job) -> None:
    refused = server.engine.refused(job.penalties, job.logprobs)
    if refused:
        why = server.engine.unsupported[refused[0]]
        raise api.APIError(400, f"'{refused[0]}' needs the native engine; this server runs --backend vllm ({why}): "
                           "leave it out, or serve with the default backend",
                           code="unsupported_parameter", param=refused[0])


def _cancel(server: Server, tickets) -> None:
    for t in tickets:   # a ticket already done is left as it is
        server.engine.cancel(t)


def _closer(server: Server, tickets):
    """A stream's end: ``close(done)`` runs exactly once, from whichever side ends first."""
    closed = []

    def close(done: bool) -> None:
        if closed:
            return
        closed.append(done)
        if not done:
            _cancel(server, tickets)
            server.cancelled += 1
        server.in_flight -= len(tickets)
    return close


async def _whole(server: Server, request: Request, job: api.Job, rid: str, choices: list[Choice],
                 queue: asyncio.Queue, loop):
    """The whole response once every choice is done (or a stop string ended its answer); a client gone
    meanwhile cancels the request (499)."""
    tickets = [c.ticket for c in choices]
    try:
        check_at = loop.time() + DISCONNECT_POLL_S
        while True:
            try:   # updates come every step: look for a gone client on a clock, not on a quiet queue
                item = await asyncio.wait_for(queue.get(), max(0.0, check_at - loop.time()))
            except asyncio.TimeoutError:
                item = None
            if loop.time() >= check_at:
                if await request.is_disconnected():
                    _cancel(server, tickets)
                    server.cancelled += 1
                    return JSONResponse({}, status_code=499)
                check_at = loop.time() + DISCONNECT_POLL_S
            if item is None:
                continue
            i, upd = item
            if upd.error:
                _cancel(server, tickets)
                raise api.APIError(500, f"generation failed: {upd.error}", code="engine_error",
                                   type="server_error")
            if choices[i].result is None:
                choices[i].take(upd)
            if all(c.result is not None for c in choices):
                server.served += 1
                return api.response(job.kind, rid, server.model_name, [
                    (c.thinking.text(), c.cut.text, c.result,
                     server.tok.decode(c.result["forced_end_ids"], skip_special_tokens=False), c.whole_logprobs())
                    for c in choices])
    except asyncio.CancelledError:
        _cancel(server, tickets)
        server.cancelled += 1
        raise
    finally:
        server.in_flight -= len(choices)


async def _stream(server: Server, job: api.Job, rid: str, choices: list[Choice], queue: asyncio.Queue, close):
    """Server-sent events: reasoning and answer deltas per choice, each choice's last chunk with its forcing
    report, then (asked for) the usage of all choices, then [DONE]."""
    def event(obj: dict) -> str:
        return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"

    done = False
    try:
        for i in range(len(choices)):
            yield event(api.chunk(job.kind, rid, server.model_name, index=i, first=True))
        while True:
            i, upd = await queue.get()
            if upd.error:
                done = True
                _cancel(server, [c.ticket for c in choices])
                yield event(api.APIError(500, f"generation failed: {upd.error}", code="engine_error",
                                         type="server_error").body())
                break
            c = choices[i]
            if c.result is not None:     # ended by a stop string: what was already on its way is dropped
                continue
            t, a = c.take(upd)
            lp = c.logprobs.take(upd.logprobs) if c.logprobs is not None and upd.logprobs else None
            if t or a or lp:
                yield event(api.chunk(job.kind, rid, server.model_name, index=i, thinking=t, answer=a, logprobs=lp))
            if c.result is not None:
                last = api.chunk(job.kind, rid, server.model_name, index=i, finish=api.finish_reason(c.result))
                last["budget_forcing"] = api.forcing_report(c.result, server.tok.decode(
                    c.result["forced_end_ids"], skip_special_tokens=False))
                yield event(last)
            if all(c.result is not None for c in choices):
                done = True
                server.served += 1
                if job.include_usage:
                    tail = api.chunk(job.kind, rid, server.model_name)
                    tail["choices"], tail["usage"] = [], api.usage([c.result for c in choices])
                    yield event(tail)
                break
        yield "data: [DONE]\n\n"
    finally:
        # A client that went away mid-stream ends up here too (the generator is closed or cancelled).
        close(done)
