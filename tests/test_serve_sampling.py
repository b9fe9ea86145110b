"""The server's logprobs and penalties, end to end on the tiny model (test_serve's server and fixtures).

The reference is a plain loop: a packed forward of the tiny model over the whole sequence at every step,
the penalties and the log-softmax in float64, the same ``BudgetForcer``; no KV cache, no batcher."""
import json
import threading

import httpx
import pytest
import torch

from s1fast.forcing import BudgetForcer, ForcingTokens
from s1fast.generate import load, prompt_ids
from s1fast.sampling import Penalties
from s1fast.serve.vllm_engine import VLLMBatcher
from test_sampling import ref_penalized
from test_serve import CONTEXT, KEY, client, exported, raw, served  # noqa: F401 - fixtures

Q = "hello there how are you"
FIELDS = {"num_wait": 0, "max_thinking_tokens": 10}
FORCING = dict(num_wait=0, max_thinking_tokens=10, max_answer_tokens=6)


@pytest.fixture(scope="module")
def plain(exported):  # noqa: F811 - the fixture imported above
    model, tok = load(exported, dtype="fp32", device="cpu")

    def logits(ids: list[int]) -> torch.Tensor:
        t = len(ids)
        with torch.no_grad():
            return model.logits(torch.tensor(ids), torch.arange(t), torch.tensor([0, t], dtype=torch.int32), t)

    def greedy(question: str, pen: Penalties = Penalties(), **forcing) -> BudgetForcer:
        f = BudgetForcer(prompt_ids(tok, question), ForcingTokens.from_tokenizer(tok), max_total_tokens=CONTEXT,
                         **forcing)
        while not f.done:
            lg = ref_penalized(logits(f.ids)[-1, :len(tok)].double().tolist(), f.ids[:f.prompt_len],
                               f.ids[f.prompt_len:], pen.presence, pen.frequency, pen.repetition)
            for s in (f.stops if f.suppress_stop else ()):
                lg[s] = float("-inf")
            f.push(max(range(len(lg)), key=lg.__getitem__))
        return f
    greedy.tok, greedy.logits = tok, logits
    return greedy


def test_chat_logprobs_are_the_models_log_softmax_streamed_or_not(served, plain):  # noqa: F811
    base, server = served
    tok, f = plain.tok, plain(Q, **FORCING)
    lsm = torch.log_softmax(plain.logits(f.ids)[:, :len(tok)].double(), dim=-1)
    first = len(f.ids) - len(f.answer) - (f.stopped_by is not None)     # where the answer's ids start
    c = client(base)
    resp = c.chat.completions.create(model=server.model_name, messages=[{"role": "user", "content": Q}],
                                     max_tokens=6, logprobs=True, top_logprobs=3, extra_body=FIELDS)
    assert resp.choices[0].message.content == tok.decode(f.answer)
    content = resp.choices[0].logprobs.content                 # the official client parses them
    assert len(content) == len(f.answer) >= 2
    for j, (entry, tid) in enumerate(zip(content, f.answer)):
        row = lsm[first + j - 1]                                # the logits the answer's j-th id was drawn from
        assert entry.token == tok.decode([tid]) and entry.bytes == list(entry.token.encode())
        assert entry.logprob == pytest.approx(row[tid].item(), abs=2e-4)
        best = row.topk(3)
        assert [t.token for t in entry.top_logprobs] == [tok.decode([i]) for i in best.indices.tolist()]
        assert [t.logprob for t in entry.top_logprobs] == pytest.approx(best.values.tolist(), abs=2e-4)
        assert entry.top_logprobs[0].token == entry.token      # greedy: the pick is the most likely token
    streamed = []
    for ev in c.chat.completions.create(model=server.model_name, messages=[{"role": "user", "content": Q}],
                                        max_tokens=6, logprobs=True, top_logprobs=3, stream=True, extra_body=FIELDS):
        for ch in ev.choices:
            streamed += ch.logprobs.content if ch.logprobs else []
    assert [e.model_dump() for e in streamed] == [e.model_dump() for e in content]
    plain_resp = raw(base, {"messages": [{"role": "user", "content": Q}], "max_tokens": 6, "logprobs": True, **FIELDS})
    assert [e["top_logprobs"] for e in plain_resp.json()["choices"][0]["logprobs"]["content"]] == [[]] * len(content)
    off = raw(base, {"messages": [{"role": "user", "content": Q}], "max_tokens": 6, **FIELDS}).json()
    assert off["choices"][0]["logprobs"] is None


def test_completion_logprobs_shape_streamed_or_not(served, plain):  # noqa: F811
    base, server = served
    tok, f = plain.tok, plain(Q, **FORCING)
    c = client(base)
    text = tok.decode(prompt_ids(tok, Q), skip_special_tokens=False)
    chat = c.chat.completions.create(model=server.model_name, messages=[{"role": "user", "content": Q}],
                                     max_tokens=6, logprobs=True, top_logprobs=2, extra_body=FIELDS)
    resp = c.completions.create(model=server.model_name, prompt=text, max_tokens=6, logprobs=2, extra_body=FIELDS)
    lp = resp.choices[0].logprobs
    assert "".join(lp.tokens) == resp.choices[0].text == tok.decode(f.answer)
    assert lp.text_offset == [sum(len(s) for s in lp.tokens[:i]) for i in range(len(lp.tokens))]
    assert lp.token_logprobs == [e.logprob for e in chat.choices[0].logprobs.content]
    for s, v, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs):
        assert top[s] == v and len(top) <= 3 and max(top.values()) == v      # greedy: the sampled one is the best
    parts = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    for ev in c.completions.create(model=server.model_name, prompt=text, max_tokens=6, logprobs=2, stream=True,
                                   extra_body=FIELDS):
        for ch in ev.choices:
            for k in parts:
                parts[k] += getattr(ch.logprobs, k) if ch.logprobs else []
    assert parts == {k: getattr(lp, k) for k in parts}


PEN_FORCING = dict(num_wait=0, min_thinking_tokens=8, max_thinking_tokens=12, max_answer_tokens=6)


def test_penalties_are_applied_per_row_in_one_batch(served, plain):  # noqa: F811
    """Two requests with different penalties decode in the same steps; each gets what the plain loop gives
    for its own penalties, and the penalties do change the output."""
    base, server = served
    tok = plain.tok
    pens = [Penalties(repetition=1.1, presence=0.3), Penalties(frequency=0.4)]
    refs = [plain(Q, p, **PEN_FORCING) for p in pens]
    none = plain(Q, **PEN_FORCING)
    assert len({tuple(f.thinking + f.answer) for f in refs + [none]}) == 3, "the penalties change nothing here"
    done, got = [threading.Event() for _ in pens], [[] for _ in pens]
    with server.engine.cv:     # both join before the next step: they share every step
        for i, p in enumerate(pens):
            f = BudgetForcer(prompt_ids(tok, Q), ForcingTokens.from_tokenizer(tok), max_total_tokens=CONTEXT,
                             **PEN_FORCING)
            server.engine.submit(f, lambda u, i=i: (got[i].append(u), u.done and done[i].set()), penalties=p)
    assert all(d.wait(60) for d in done)
    for g, r in zip(got, refs):
        assert (g[-1].result["thinking_ids"], g[-1].result["answer_ids"]) == (r.thinking, r.answer)
    body = {"messages": [{"role": "user", "content": Q}], "max_tokens": 6, "repetition_penalty": 1.1,
            "presence_penalty": 0.3, "num_wait": 0, "min_thinking_tokens": 8, "max_thinking_tokens": 12}
    out = raw(base, body).json()["choices"][0]["message"]
    assert (out["reasoning_content"], out["content"]) == (tok.decode(refs[0].thinking, skip_special_tokens=False),
                                                          tok.decode(refs[0].answer, skip_special_tokens=False))


def test_logprobs_are_raw_whatever_the_temperature_top_p_and_penalties(served, plain):  # noqa: F811
    """vLLM's default logprobs_mode (raw_logprobs): the model's log-softmax, not the distribution the token
    was drawn from (tempered, penalized, cut to the nucleus)."""
    base, server = served
    tok, done, got = plain.tok, threading.Event(), []
    f = BudgetForcer(prompt_ids(tok, Q), ForcingTokens.from_tokenizer(tok), max_total_tokens=CONTEXT, num_wait=0,
                     max_thinking_tokens=4, max_answer_tokens=8)
    server.engine.submit(f, lambda u: (got.append(u), u.done and done.set()), temperature=1.7, top_p=0.8, seed=3,
                         penalties=Penalties(frequency=0.5, repetition=1.2), logprobs=2)
    assert done.wait(60)
    r = got[-1].result
    entries = [e for u in got for e in u.logprobs]
    ids = f.ids[:f.prompt_len] + list(f.tokens.think_start) + r["thinking_ids"] + r["forced_end_ids"] + r["answer_ids"]
    lsm = torch.log_softmax(plain.logits(ids)[:, :len(tok)].double(), dim=-1)
    first = len(ids) - len(r["answer_ids"])
    assert [e[0] for e in entries] == r["answer_ids"] and len(entries) >= 2
    for j, (tid, lp, top) in enumerate(entries):
        assert lp == pytest.approx(lsm[first + j - 1, tid].item(), abs=2e-4)
        assert [i for i, _ in top] == lsm[first + j - 1].topk(2).indices.tolist()


BAD = [
    ({"logprobs": True, "top_logprobs": 21}, "top_logprobs", "invalid_value"),
    ({"logprobs": True, "top_logprobs": -1}, "top_logprobs", "invalid_value"),
    ({"top_logprobs": 2}, "top_logprobs", "invalid_value"),                    # OpenAI: needs logprobs: true
    ({"logprobs": False, "top_logprobs": 2}, "top_logprobs", "invalid_value"),
    ({"logprobs": 3}, "logprobs", "invalid_type"),
    ({"presence_penalty": 2.5}, "presence_penalty", "invalid_value"),
    ({"frequency_penalty": -2.01}, "frequency_penalty", "invalid_value"),
    ({"frequency_penalty": "1"}, "frequency_penalty", "invalid_value"),
    ({"repetition_penalty": 0}, "repetition_penalty", "invalid_value"),
    ({"repetition_penalty": -1.0}, "repetition_penalty", "invalid_value"),
    ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools", "unsupported_parameter"),
    ({"tool_choice": "auto"}, "tool_choice", "unsupported_parameter"),
]


def test_out_of_range_logprobs_and_penalties_are_400s_naming_the_param(served):  # noqa: F811
    base, _ = served
    msgs = [{"role": "user", "content": "2+2?"}]
    for fields, param, code in BAD:
        r = raw(base, {"messages": msgs, **fields})
        err = r.json()["error"]
        assert r.status_code == 400 and err["param"] == param and err["code"] == code, (fields, r.text)
        assert param in err["message"] or "tool calling is not supported" in err["message"], err
    assert "tool calling is not supported" in raw(base, {"messages": msgs, "tools": []}).json()["error"]["message"]
    for bad, code in ((21, "invalid_value"), (-1, "invalid_value"), (True, "invalid_type")):
        r = raw(base, {"prompt": "2+2?", "logprobs": bad}, path="/v1/completions")
        assert r.status_code == 400 and r.json()["error"]["param"] == "logprobs", (bad, r.text)
    r = raw(base, {"prompt": "2+2?", "top_logprobs": 2}, path="/v1/completions")   # a chat field
    assert r.status_code == 400 and r.json()["error"]["code"] == "unknown_parameter"
    assert json.loads(httpx.get(f"{base}/health").text)["status"] == "ok"


def test_a_stop_string_cuts_the_logprobs_with_the_answer_and_vllm_refuses_them(served, plain):  # noqa: F811
    base, server = served
    tok, f = plain.tok, plain(Q, **FORCING)
    answer = tok.decode(f.answer)
    stop = tok.decode(f.answer[:2])[-2:]          # found by the first or the second token
    body = {"messages": [{"role": "user", "content": Q}], "max_tokens": 6, "logprobs": True, "stop": stop, **FIELDS}
    whole = raw(base, body).json()
    content = whole["choices"][0]["logprobs"]["content"]
    assert whole["choices"][0]["message"]["content"] == answer[:answer.find(stop)]
    n = whole["usage"]["answer_tokens"]
    assert len(content) == n and 1 <= n < len(f.answer)
    assert [e["token"] for e in content] == [tok.decode([t]) for t in f.answer[:n]]
    streamed = []
    with httpx.stream("POST", f"{base}/v1/chat/completions", json={**body, "stream": True},
                      headers={"Authorization": f"Bearer {KEY}"}, timeout=60) as resp:
        for line in resp.iter_lines():
            if line.startswith("data: {"):
                streamed += [e for ch in json.loads(line[6:])["choices"] for e in (ch["logprobs"] or {}).get(
                    "content", [])]
    assert streamed == content
    server.engine.unsupported = VLLMBatcher.unsupported       # what --backend vllm's engine says
    try:
        for fields, param in (({"logprobs": True}, "logprobs"), ({"presence_penalty": 0.5}, "presence_penalty"),
                              ({"frequency_penalty": 0.5}, "frequency_penalty")):
            r = raw(base, {"messages": [{"role": "user", "content": Q}], **fields})
            assert r.status_code == 400 and r.json()["error"]["code"] == "unsupported_parameter", r.text
            assert r.json()["error"]["param"] == param and "--backend vllm" in r.json()["error"]["message"]
        # vLLM's repetition penalty is s1fast's under re-prompting: taken (was refused)
        r = raw(base, {"messages": [{"role": "user", "content": Q}], "repetition_penalty": 1.2, "max_tokens": 2})
        assert r.status_code == 200, r.text
    finally:
        del server.engine.unsupported
