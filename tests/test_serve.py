"""The OpenAI-compatible server, end to end with the official ``openai`` client on a loopback port.

The model is an exported random tiny Qwen2 whose two stop ids (<|im_start|>, <|im_end|>) have their
(tied) embedding rows scaled up, so that greedy decoding ends its thinking now and then and the
protocol's moves (Wait extensions, min_thinking_tokens, the cap) all happen. Every answer is checked
against ``s1fast.generate`` run alone on the same folder with the same settings and seed.
"""
import asyncio
import json
import os
import socket
import threading
import time

import httpx
import openai
import pytest
import torch

from s1fast import model as lean
from s1fast.generate import BUNDLED_TOKENIZER, DEFAULT_SYSTEM, GenerationConfig, generate, load, prompt_ids

KEY = "test-key-17"
CONTEXT = 512
QUESTIONS = ["What is 1+1?", "hello there how are you", "Let $ABC$ be a triangle inscribed in a circle. Find m+n.",
             "2+2?"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def export_tiny(path: str) -> str:
    """A random tiny Qwen2 whose stop ids win greedy picks now and then (see the module docstring)."""
    torch.manual_seed(0)
    m = lean.build_model("tiny-qwen2", device="cpu", dtype=torch.float32).eval()
    with torch.no_grad():
        m.embed_tokens.weight[[151644, 151645]] *= 20
    m.save_pretrained(path, tokenizer_dir=BUNDLED_TOKENIZER)
    return path


def wait_healthy(base: str, timeout: float, proc=None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the server exited with {proc.returncode}: {proc.stderr.read()[-3000:]}")
        try:
            if httpx.get(f"{base}/health", headers={"Authorization": f"Bearer {KEY}"}, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"no server at {base} after {timeout} s")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    return export_tiny(str(tmp_path_factory.mktemp("tiny-served")))


@pytest.fixture(scope="module")
def served(exported):
    """An in-process server (uvicorn in a thread) with an API key and a default of one Wait."""
    import uvicorn

    from s1fast.serve.__main__ import build, parser
    old = os.environ.get("S1FAST_DISABLE_TRITON")
    os.environ["S1FAST_DISABLE_TRITON"] = "1"     # the kernels have their own tests
    port = free_port()
    args = parser().parse_args(["--model", exported, "--port", str(port), "--max-total-tokens", str(CONTEXT),
                                "--batch-size", "16", "--api-key", KEY, "--num-wait", "1",
                                "--max-thinking-tokens", "24", "--max-answer-tokens", "8",
                                "--max-body-bytes", "20000", "--max-prompt-tokens", "1000",
                                "--max-tokens-limit", "500", "--max-concurrency", "256"])
    app, engine = build(args)
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    wait_healthy(base, 60)
    yield base, app.state.server
    srv.should_exit = True
    thread.join(30)
    engine.stop(30)
    if old is None:
        os.environ.pop("S1FAST_DISABLE_TRITON")
    else:
        os.environ["S1FAST_DISABLE_TRITON"] = old


@pytest.fixture(scope="module")
def reference(exported):
    """``s1fast.generate`` alone on the same folder: one question, one settings dict -> its record."""
    model, tok = load(exported, dtype="fp32", device="cpu")
    memo = {}

    def ref(question: str, system=DEFAULT_SYSTEM, **cfg) -> dict:
        key = (question, system, json.dumps(cfg, sort_keys=True))
        if key not in memo:
            memo[key] = generate(model, tok, [question], GenerationConfig(max_total_tokens=CONTEXT, batch_size=1,
                                                                          **cfg), system=system)[0]
        return memo[key]
    ref.tok = tok
    return ref


def client(base: str, key: str = KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0, timeout=120)


# Request fields -> the GenerationConfig of the same run (server defaults: num_wait 1, 24 thinking, 8 answer).
CASES = [
    ({"num_wait": 2}, dict(num_wait=2, max_thinking_tokens=24, max_answer_tokens=8)),
    ({"num_wait": 0, "min_thinking_tokens": 9, "extension": "Hmm", "max_tokens": 5},
     dict(min_thinking_tokens=9, extension="Hmm", max_thinking_tokens=24, max_answer_tokens=5)),
    ({}, dict(num_wait=1, max_thinking_tokens=24, max_answer_tokens=8)),                      # CLI defaults
    ({"max_thinking_tokens": 6, "temperature": 1.0, "top_p": 0.9, "seed": 7, "max_answer_tokens": 4},
     dict(num_wait=1, max_thinking_tokens=6, temperature=1.0, top_p=0.9, seed=7, max_answer_tokens=4)),
]

LOAD_CASES = [
    ({"num_wait": 2, "max_thinking_tokens": 8, "max_tokens": 3}, dict(num_wait=2, max_thinking_tokens=8,
                                                                       max_answer_tokens=3)),
    ({"num_wait": 0, "min_thinking_tokens": 4, "max_thinking_tokens": 6, "max_tokens": 2},
     dict(min_thinking_tokens=4, max_thinking_tokens=6, max_answer_tokens=2)),
    ({"max_thinking_tokens": 5}, dict(num_wait=1, max_thinking_tokens=5, max_answer_tokens=8)),
]


def test_chat_honours_forcing_exactly_streamed_or_not(served, reference):
    base, _ = served
    c = client(base)
    moves = set()
    for i, (fields, cfg) in enumerate(CASES):
        q = QUESTIONS[i % len(QUESTIONS)]
        r = reference(q, **cfg)
        moves |= {("wait", r["waits"] > 0), ("capped", r["capped"])}
        resp = c.chat.completions.create(model=os.path.basename(served[1].model_name),
                                         messages=[{"role": "user", "content": q}], extra_body=fields)
        msg = resp.choices[0].message
        assert msg.reasoning_content == r["thinking"] and msg.content == r["answer"], (fields, r)
        u = resp.usage
        assert (u.prompt_tokens, u.thinking_tokens, u.answer_tokens) == (r["prompt_tokens"], r["thinking_tokens"],
                                                                        r["answer_tokens"])
        assert u.completion_tokens == r["thinking_tokens"] + r["answer_tokens"]
        assert u.completion_tokens_details.reasoning_tokens == r["thinking_tokens"]
        assert resp.choices[0].finish_reason == ("stop" if r["finished"] else "length")
        assert resp.budget_forcing["waits"] == r["waits"] and resp.budget_forcing["capped"] == r["capped"]

        thinking, answer, usage, finish = "", "", None, None
        for ev in c.chat.completions.create(messages=[{"role": "user", "content": q}], model=served[1].model_name,
                                            stream=True, stream_options={"include_usage": True}, extra_body=fields):
            if ev.usage is not None:
                usage = ev.usage
            for ch in ev.choices:
                thinking += getattr(ch.delta, "reasoning_content", None) or ""
                answer += ch.delta.content or ""
                finish = ch.finish_reason or finish
        assert (thinking, answer) == (r["thinking"], r["answer"])
        assert (usage.thinking_tokens, usage.answer_tokens) == (r["thinking_tokens"], r["answer_tokens"])
        assert finish == ("stop" if r["finished"] else "length")
    assert moves == {("wait", True), ("wait", False), ("capped", True), ("capped", False)}, moves


def test_completions_models_and_health(served, reference):
    base, server = served
    c = client(base)
    q, cfg = QUESTIONS[2], dict(num_wait=1, max_thinking_tokens=24, max_answer_tokens=8)
    r = reference(q, **cfg)
    text = reference.tok.decode(prompt_ids(reference.tok, q), skip_special_tokens=False)
    resp = c.completions.create(model=server.model_name, prompt=text)
    assert resp.choices[0].text == r["answer"] and resp.choices[0].reasoning_content == r["thinking"]
    assert resp.usage.thinking_tokens == r["thinking_tokens"]
    streamed = [ch for ev in c.completions.create(model=server.model_name, prompt=text, stream=True)
                for ch in ev.choices]
    assert "".join(ch.text for ch in streamed) == r["answer"]
    assert "".join(getattr(ch, "reasoning_content", None) or "" for ch in streamed) == r["thinking"]
    assert [m.id for m in c.models.list()] == [server.model_name]
    h = httpx.get(f"{base}/health", headers={"Authorization": f"Bearer {KEY}"}).json()
    assert h["status"] == "ok" and h["served"] >= 2


def test_health_is_open_and_every_v1_route_needs_the_key(served):
    """A load balancer's probe has no key (it got 401): /health answers without one, as vLLM's does."""
    base, server = served
    assert httpx.get(f"{base}/health").status_code == 200
    assert httpx.get(f"{base}/health", headers={"Authorization": "Bearer wrong"}).json()["status"] == "ok"
    for path, method in (("/v1/models", "GET"), ("/v1/chat/completions", "POST"), ("/v1/completions", "POST")):
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            r = httpx.request(method, base + path, headers=headers, json={}, timeout=30)
            assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key", (path, headers, r.text)
    assert httpx.get(f"{base}/v1/models", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200


@pytest.mark.slow
def test_64_concurrent_clients_each_get_their_own_answer(served, reference):
    base, server = served
    # 9 greedy variants, short (no system prompt, small budgets) to keep 192 requests quick on a CPU.
    variants = [(q, fields, cfg) for q in QUESTIONS[:3] for fields, cfg in LOAD_CASES]
    expected = {i: reference(q, system="", **cfg) for i, (q, _, cfg) in enumerate(variants)}
    ac = openai.AsyncOpenAI(base_url=f"{base}/v1", api_key=KEY, max_retries=0, timeout=300)

    async def one(cid: int, k: int):
        v = (cid * 3 + k) % len(variants)
        q, fields, _ = variants[v]
        stream = (cid + k) % 2 == 0
        msgs = [{"role": "system", "content": ""}, {"role": "user", "content": q}]
        resp = await ac.chat.completions.create(model=server.model_name, messages=msgs, stream=stream,
                                                extra_body=fields)
        if not stream:
            return cid, k, v, resp.id, resp.choices[0].message.reasoning_content, resp.choices[0].message.content
        ids, thinking, answer = set(), "", ""
        async for ev in resp:
            ids.add(ev.id)
            for ch in ev.choices:
                thinking += getattr(ch.delta, "reasoning_content", None) or ""
                answer += ch.delta.content or ""
        assert len(ids) == 1
        return cid, k, v, ids.pop(), thinking, answer

    async def client_loop(cid: int):
        return [await one(cid, k) for k in range(3)]

    async def main():
        try:
            return await asyncio.gather(*(client_loop(c) for c in range(64)))
        finally:
            await ac.close()

    steps0 = server.engine.steps
    results = [x for per in asyncio.run(main()) for x in per]
    assert sorted((cid, k) for cid, k, *_ in results) == [(c, k) for c in range(64) for k in range(3)]
    assert len({rid for *_, rid, _, _ in results}) == 192                 # no response twice
    for cid, k, v, _, thinking, answer in results:
        assert (thinking, answer) == (expected[v]["thinking"], expected[v]["answer"]), (cid, k, v)
    # Requests were batched: far fewer decode steps than serving them one by one would take.
    alone = sum(expected[v]["thinking_tokens"] + expected[v]["answer_tokens"] for _, _, v, *_ in results)
    assert server.engine.steps - steps0 < alone / 4
    assert server.in_flight == 0 and server.engine.busy == 0


def raw(base: str, body, key: str | None = KEY, path: str = "/v1/chat/completions", **kw) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    if isinstance(body, (dict, list)):
        body = json.dumps(body)
    kw.setdefault("timeout", 60)
    return httpx.post(base + path, content=body, headers={**headers, **kw.pop("headers", {})}, **kw)


class FailOnce:
    """The engine's model, raising on its first decode (an engine failure)."""

    def __init__(self, model):
        self.model, self.failed = model, False

    def __getattr__(self, name):
        return getattr(self.model, name)

    def decode(self, *a, **kw):
        if not self.failed:
            self.failed = True
            raise RuntimeError("injected failure")
        return self.model.decode(*a, **kw)


def test_bad_requests_get_openai_errors_and_the_server_keeps_serving(served, reference):
    base, server = served
    msgs = [{"role": "user", "content": "2+2?"}]
    long_prompt = [{"role": "user", "content": "hello " * 480}]
    cases = [
        (lambda: raw(base, '{"messages": [', ), 400, "invalid_json"),
        (lambda: raw(base, "[1, 2]"), 400, "invalid_json"),
        (lambda: raw(base, {"messages": msgs, "frobnicate": 1}), 400, "unknown_parameter"),
        (lambda: raw(base, {"messages": msgs, "max_thinking_tokens": -1}), 400, "invalid_value"),
        (lambda: raw(base, {"messages": msgs, "num_wait": -2}), 400, "invalid_value"),
        (lambda: raw(base, {"messages": msgs, "min_thinking_tokens": "3"}), 400, "invalid_type"),
        (lambda: raw(base, {"messages": msgs, "max_tokens": 501}), 400, "invalid_value"),
        (lambda: raw(base, {"messages": msgs, "extension": ""}), 400, "invalid_value"),
        (lambda: raw(base, {"messages": msgs, "n": 257}), 400, "invalid_value"),     # over --max-concurrency
        (lambda: raw(base, {"messages": msgs, "n": 0}), 400, "invalid_value"),
        (lambda: raw(base, {"messages": [{"role": "tool", "content": "x"}]}), 400, "invalid_value"),
        (lambda: raw(base, {"messages": long_prompt}), 400, "context_length_exceeded"),         # over the context
        (lambda: raw(base, {"messages": [{"role": "user", "content": "hello " * 1100}]}), 400,
         "context_length_exceeded"),                                                              # --max-prompt-tokens
        (lambda: raw(base, {"messages": msgs, "model": "gpt-17"}), 404, "model_not_found"),
        (lambda: raw(base, {"messages": msgs}, key="wrong-key"), 401, "invalid_api_key"),
        (lambda: raw(base, {"messages": msgs}, key=None), 401, "invalid_api_key"),
        (lambda: raw(base, json.dumps({"messages": msgs, "user": "x" * 30000})), 413, "request_too_large"),
        (lambda: raw(base, (b"x" * 1000 for _ in range(30))), 413, "request_too_large"),         # chunked, no length
        (lambda: raw(base, {}, path="/v1/nothing"), 404, "not_found"),
    ]
    for send, status, code in cases:
        r = send()
        assert r.status_code == status, (code, r.text)
        err = r.json()["error"]
        assert err["code"] == code and err["message"] and "type" in err and "param" in err, r.text
    with pytest.raises(openai.AuthenticationError):
        client(base, key="nope").chat.completions.create(model=server.model_name, messages=msgs)
    with pytest.raises(openai.BadRequestError, match="frobnicate"):
        client(base).chat.completions.create(model=server.model_name, messages=msgs, extra_body={"frobnicate": 1})
    limit = server.limits.max_concurrency
    server.limits.max_concurrency = 0
    try:
        r = raw(base, {"messages": msgs})
        assert r.status_code == 429 and r.json()["error"]["code"] == "too_many_requests"
        server.limits.max_concurrency, server.in_flight = 2, 1   # one choice running: n=2 would make three
        r = raw(base, {"messages": msgs, "n": 2})
        assert r.status_code == 429 and "n=2" in r.json()["error"]["message"], r.text
    finally:
        server.limits.max_concurrency, server.in_flight = limit, 0
    engine = server.engine
    engine.model = FailOnce(engine.model)
    try:
        r = raw(base, {"messages": msgs})
        assert r.status_code == 500 and r.json()["error"]["code"] == "engine_error", r.text
    finally:
        engine.model = engine.model.model
    r = reference("2+2?", num_wait=1, max_thinking_tokens=24, max_answer_tokens=8)
    ok = client(base).chat.completions.create(model=server.model_name, messages=msgs)
    assert ok.choices[0].message.content == r["answer"]
    assert server.in_flight == 0


def wait_for(cond, timeout: float = 30, state=None) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"condition not reached in {timeout} s: {state() if state else ''}"
        time.sleep(0.05)


class Slow:
    """The engine's model, 20 ms slower per step: a long request stays in flight for seconds."""

    def __init__(self, model):
        self.model = model

    def __getattr__(self, name):
        return getattr(self.model, name)

    def decode(self, *a, **kw):
        time.sleep(0.02)
        return self.model.decode(*a, **kw)


@pytest.fixture
def slow_engine(served):
    engine = served[1].engine
    engine.model = Slow(engine.model)
    yield
    engine.model = engine.model.model


def test_a_client_gone_mid_request_frees_its_row(served, slow_engine):
    base, server = served
    # 374 thinking tokens (the context's bound), 20 ms each: about 8 s unless it is cancelled.
    body = {"messages": [{"role": "user", "content": "count"}], "max_thinking_tokens": 400, "min_thinking_tokens": 400,
            "max_tokens": 64, "stream": True}
    served_before, cancelled = server.served, server.cancelled
    with httpx.stream("POST", f"{base}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {KEY}"},
                      timeout=60) as resp:
        assert resp.status_code == 200
        lines = resp.iter_lines()
        got = [next(lines) for _ in range(6)]
        assert any("reasoning_content" in x for x in got)
    wait_for(lambda: server.cancelled == cancelled + 1 and server.engine.busy == 0 and server.in_flight == 0)
    body["stream"] = False
    with pytest.raises(httpx.ReadTimeout):
        raw(base, body, timeout=1.0)
    wait_for(lambda: server.cancelled == cancelled + 2 and server.engine.busy == 0 and server.in_flight == 0,
             state=lambda: (server.cancelled - cancelled, server.engine.busy, server.in_flight, server.served))
    assert server.served == served_before
    body.update(stream=True, n=3)     # every choice's row is freed
    with httpx.stream("POST", f"{base}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {KEY}"},
                      timeout=60) as resp:
        lines = resp.iter_lines()
        assert resp.status_code == 200 and len([next(lines) for _ in range(8)]) == 8
    wait_for(lambda: server.cancelled == cancelled + 3 and server.engine.busy == 0 and server.in_flight == 0)
    ok = client(base).chat.completions.create(model=server.model_name, messages=[{"role": "user", "content": "hi"}])
    assert ok.usage.thinking_tokens <= 24


def test_stop_strings_end_the_answer_streamed_or_not_and_nulls_mean_left_out(served, reference):
    base, server = served
    c = client(base)
    q, cfg = QUESTIONS[1], dict(num_wait=0, max_thinking_tokens=8, max_answer_tokens=40)
    full = reference(q, **cfg)["answer"]
    assert len(full) >= 6, full
    fields = {"num_wait": 0, "max_thinking_tokens": 8}
    # lm-evaluation-harness's chat-completions model always sends "stop" (up to 4) and "seed": this was a 400
    cases = [([full[3:5], "never-there"], full[:full.find(full[3:5])]), (full[-2:], full[:full.find(full[-2:])]),
             ("never-there", full)]
    for stop, want in cases:
        stopped = want != full
        resp = c.chat.completions.create(model=server.model_name, messages=[{"role": "user", "content": q}],
                                         max_tokens=40, stop=stop, seed=0, extra_body=fields)
        assert resp.choices[0].message.content == want, (stop, full)
        if stopped:
            assert resp.choices[0].finish_reason == "stop"
            assert resp.usage.answer_tokens < reference(q, **cfg)["answer_tokens"]
        answer, finish = "", None
        for ev in c.chat.completions.create(model=server.model_name, messages=[{"role": "user", "content": q}],
                                            max_tokens=40, stop=stop, stream=True, extra_body=fields):
            for ch in ev.choices:
                answer += ch.delta.content or ""
                finish = ch.finish_reason or finish
        assert answer == want and (finish == "stop" or not stopped), (stop, answer, full)
    wait_for(lambda: server.in_flight == 0 and server.engine.busy == 0)   # the stopped requests freed their rows
    r = raw(base, {"messages": [{"role": "user", "content": q}], "n": True})   # was: served as n=1
    assert r.status_code == 400 and r.json()["error"]["message"] == "'n' must be an integer, got True", r.text
    r = raw(base, {"prompt": ["2+2?", "3+3?"]}, path="/v1/completions")
    assert r.status_code == 400 and "a batch of 2 prompts" in r.json()["error"]["message"], r.text
    for bad in ("", ["a"] * 5, 3, [None]):
        r = raw(base, {"messages": [{"role": "user", "content": q}], "stop": bad})
        assert r.status_code == 400 and r.json()["error"]["param"] == "stop", (bad, r.text)
    # null is "not given" (OpenAI's nullable fields; several clients send them): this was a 400 for n and stream
    r = raw(base, {"messages": [{"role": "user", "content": "2+2?"}], "n": None, "stream": None, "stop": None,
                   "num_wait": None, "model": None, "logprobs": None})
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == reference("2+2?", num_wait=1, max_thinking_tokens=24,
                                                                     max_answer_tokens=8)["answer"]


def test_stop_text_never_sends_part_of_a_stop_string():
    from s1fast.serve.app import StopText
    text, stops = "the answer is 42. The end", ("42.", "end", "zzz")
    for step in (1, 2, 3, 5):
        cut, sent = StopText(stops), []
        for i in range(0, len(text), step):
            sent.append(cut.push(text[i:i + step], final=i + step >= len(text)))
            assert not any(s[:2] in "".join(sent) for s in stops[:1]), sent   # "42" held back until it is decided
        assert "".join(sent) == cut.text == "the answer is " and cut.hit
    cut = StopText(("ab",))
    assert cut.push("xa") == "x" and cut.push("c") == "ac" and cut.push("a", final=True) == "a" and not cut.hit
    assert StopText().push("abc") == "abc"



def test_n_choices_are_seed_plus_index_streamed_or_not(served, reference):
    """n > 1 (OpenAI's and vLLM's; it was a 400): choice i is what s1fast.generate writes with seed + i."""
    base, server = served
    c = client(base)
    q, fields = QUESTIONS[0], {"num_wait": 1, "max_thinking_tokens": 12}
    refs = [reference(q, num_wait=1, max_thinking_tokens=12, max_answer_tokens=6, temperature=1.0, seed=5 + i)
            for i in range(3)]
    assert len({r["thinking"] for r in refs}) > 1             # the seeds do give different samples
    resp = c.chat.completions.create(model=server.model_name, messages=[{"role": "user", "content": q}], n=3,
                                     seed=5, temperature=1.0, max_tokens=6, extra_body=fields)
    assert [ch.index for ch in resp.choices] == [0, 1, 2]
    for ch, r in zip(resp.choices, refs):
        assert (ch.message.reasoning_content, ch.message.content) == (r["thinking"], r["answer"])
        assert ch.budget_forcing["waits"] == r["waits"]
    assert resp.usage.completion_tokens == sum(r["thinking_tokens"] + r["answer_tokens"] for r in refs)
    assert resp.usage.prompt_tokens == refs[0]["prompt_tokens"]
    texts, finishes, usage = [["", ""] for _ in refs], {}, None
    for ev in c.chat.completions.create(model=server.model_name, messages=[{"role": "user", "content": q}], n=3,
                                        seed=5, temperature=1.0, max_tokens=6, stream=True,
                                        stream_options={"include_usage": True}, extra_body=fields):
        usage = ev.usage or usage
        for ch in ev.choices:
            texts[ch.index][0] += getattr(ch.delta, "reasoning_content", None) or ""
            texts[ch.index][1] += ch.delta.content or ""
            if ch.finish_reason:
                finishes[ch.index] = ch.finish_reason
    assert texts == [[r["thinking"], r["answer"]] for r in refs]
    assert finishes == {i: "stop" if r["finished"] else "length" for i, r in enumerate(refs)}
    assert usage.completion_tokens == resp.usage.completion_tokens
    done = c.completions.create(model=server.model_name, prompt=[1, 2, 3], n=2, max_tokens=4)   # greedy: the same
    assert done.choices[0].text == done.choices[1].text and [ch.index for ch in done.choices] == [0, 1]
