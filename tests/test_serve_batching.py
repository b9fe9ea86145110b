"""The server's schedulers without HTTP: continuous batching on the KV-cache engine (requests joining a
running batch, cancelled, or hit by a failing step) and the vLLM scheduler on a stand-in engine; both
must give every request the tokens ``s1fast.generate`` gives it alone. Penalised requests: the incremental
counts give the tokens of the from-lists definition, in ``generate`` and in the batcher."""
import threading
import time

import pytest
import torch

import s1fast.generate
from s1fast import model as lean
from s1fast.batching import ContinuousBatcher
from s1fast.forcing import BudgetForcer, ForcingTokens
from s1fast.generate import GenerationConfig, generate, prompt_ids
from s1fast.sampling import Penalties
from s1fast.serve.vllm_engine import VLLMBatcher
from s1fast.vllm_backend import VLLMBackend
from fake_vllm import FakeLLM, SamplingParams
from test_generate_model import pytorch_path, tok  # noqa: F401 - fixtures
from test_sampling import old_pick_tokens
from test_serve import FailOnce

QUESTIONS = ["What is 1+1?", "hello there", "Let $ABC$ be a triangle inscribed in a circle. Find m+n.", "2+2?",
             "How many r in raspberry?"]
CTX = 256


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    m = lean.build_model("tiny-qwen2", device="cpu", dtype=torch.float32).eval()
    with torch.no_grad():
        m.embed_tokens.weight[[151644, 151645]] *= 20    # stops win now and then: Waits happen
    return m


def settings(i: int) -> dict:
    return dict(max_thinking_tokens=6 + i, num_wait=i % 3, min_thinking_tokens=2 * (i % 2),
                max_answer_tokens=2 + i % 3, temperature=0.8 if i % 4 == 3 else 0.0, top_p=0.9, seed=i,
                extension="Hmm" if i == 2 else "Wait")


def forcer(tok, i: int) -> BudgetForcer:
    s = settings(i)
    tokens = ForcingTokens.from_tokenizer(tok, s["extension"])
    return BudgetForcer(prompt_ids(tok, QUESTIONS[i % len(QUESTIONS)]), tokens,
                        max_thinking_tokens=s["max_thinking_tokens"], min_thinking_tokens=s["min_thinking_tokens"],
                        num_wait=s["num_wait"], max_answer_tokens=s["max_answer_tokens"], max_total_tokens=CTX)


class Collect:
    def __init__(self):
        self.updates, self.done = [], threading.Event()

    def __call__(self, u):
        self.updates.append(u)
        if u.done:
            self.done.set()

    def ids(self):
        return [t for u in self.updates for t in u.thinking], [t for u in self.updates for t in u.answer]


def submit_all(b, tok, n: int, pause: float = 0.0) -> list[Collect]:
    got = []
    for i in range(n):
        s, c = settings(i), Collect()
        b.submit(forcer(tok, i), c, temperature=s["temperature"], top_p=s["top_p"], seed=s["seed"])
        got.append(c)
        time.sleep(pause)
    assert all(c.done.wait(120) for c in got)
    return got


def assert_same(tok, c: Collect, ref: dict, i: int) -> None:
    """A request's updates carry exactly the record ``generate`` made alone."""
    thinking, answer = c.ids()
    assert tok.decode(thinking, skip_special_tokens=False) == ref["thinking"], i
    assert tok.decode(answer, skip_special_tokens=False) == ref["answer"], i
    res = c.updates[-1].result
    assert (res["thinking_tokens"], res["waits"], res["capped"]) == (ref["thinking_tokens"], ref["waits"],
                                                                     ref["capped"]), i
    assert sum(u.done for u in c.updates) == 1


def test_decode_last_only_is_the_last_valid_row_of_the_full_logits(tiny):
    x = torch.randint(0, 1000, (3, 5))
    lengths = torch.tensor([5, 2, 0])
    full = tiny.decode(x, tiny.new_kv_cache(3, 16), lengths=lengths)
    last = tiny.decode(x, tiny.new_kv_cache(3, 16), lengths=lengths, last_only=True)
    assert last.shape == (3, full.shape[-1])
    torch.testing.assert_close(last[:2], full[[0, 1], [4, 1]], rtol=1e-5, atol=1e-5)


def test_requests_joining_a_running_batch_get_the_tokens_they_get_alone(tok, tiny):
    n = 8
    b = ContinuousBatcher(tiny, vocab_limit=len(tok), slots=3, max_len=CTX, prefill_chunk=16).start()
    try:
        got = submit_all(b, tok, n, pause=0.02)   # more requests than rows: each joins a running batch
    finally:
        b.stop(30)
    waits = 0
    for i, c in enumerate(got):
        ref = generate(tiny, tok, [QUESTIONS[i % len(QUESTIONS)]],
                       GenerationConfig(max_total_tokens=CTX, batch_size=1, prefill_chunk=16, **settings(i)))[0]
        assert_same(tok, c, ref, i)
        waits += ref["waits"]
    assert waits > 0 and b.busy == 0 and not b.thread.is_alive()


def test_cancel_frees_the_row_and_a_failing_step_fails_only_its_requests(tok, tiny):
    b = ContinuousBatcher(tiny, vocab_limit=len(tok), slots=1, max_len=CTX).start()
    try:
        long = BudgetForcer(prompt_ids(tok, "count"), ForcingTokens.from_tokenizer(tok), max_thinking_tokens=200,
                            min_thinking_tokens=200, max_total_tokens=CTX)
        c1 = Collect()
        t1 = b.submit(long, c1)
        while not c1.updates:
            time.sleep(0.005)
        b.cancel(t1)
        c2 = Collect()
        b.submit(forcer(tok, 0), c2)          # the only row: it must be freed for this one to run
        assert c2.done.wait(60) and c2.updates[-1].error is None
        assert not c1.done.is_set() and len(long.thinking) < 200
        b.model = FailOnce(tiny)
        c3 = Collect()
        b.submit(forcer(tok, 1), c3)
        assert c3.done.wait(60) and "injected failure" in c3.updates[-1].error
        b.model = tiny
        c4 = Collect()
        b.submit(forcer(tok, 1), c4)          # the batcher keeps serving
        assert c4.done.wait(60) and c4.updates[-1].result["thinking_tokens"] > 0
    finally:
        b.stop(30)



@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_penalised_requests_get_the_tokens_of_the_from_lists_definition(tok, tiny, monkeypatch, temperature):
    """``generate`` with the incremental counts equals it with every pick penalised from the whole ids lists
    (the forced Waits counted as output); the batcher gives each penalised request those tokens too, on rows
    that a cancelled penalised request held before (each request keeps its own counts)."""
    pen = Penalties(presence=0.5, frequency=0.3, repetition=0.6)   # < 1: the stops (in the prompt) come
    kw = dict(max_thinking_tokens=10, num_wait=2, max_answer_tokens=4, max_total_tokens=CTX, prefill_chunk=16,
              temperature=temperature, top_p=0.9, seed=1, batch_size=3)
    cfg = GenerationConfig(**kw, presence_penalty=pen.presence, frequency_penalty=pen.frequency,
                           repetition_penalty=pen.repetition)
    qs = QUESTIONS[:3]
    new = generate(tiny, tok, qs, cfg)
    with monkeypatch.context() as m:
        m.setattr(s1fast.generate, "pick_tokens", old_pick_tokens)
        old = generate(tiny, tok, qs, cfg)
    assert new == old and sum(r["waits"] for r in new) > 0
    assert [r["completion"] for r in new] != [r["completion"] for r in generate(tiny, tok, qs, GenerationConfig(**kw))]
    tokens = ForcingTokens.from_tokenizer(tok)
    b = ContinuousBatcher(tiny, vocab_limit=len(tok), slots=2, max_len=CTX, prefill_chunk=16).start()
    try:
        gone = []
        for q in qs[:2]:       # both rows first hold a penalised request cancelled mid-thinking
            c = Collect()
            gone.append((b.submit(BudgetForcer(prompt_ids(tok, q), tokens, max_thinking_tokens=200,
                                               min_thinking_tokens=200, max_total_tokens=CTX),
                                  c, penalties=pen, temperature=temperature, seed=9), c))
        while not all(c.updates for _, c in gone):
            time.sleep(0.005)
        for t, _ in gone:
            b.cancel(t)
        got = []
        for i, q in enumerate(qs):
            c = Collect()
            b.submit(BudgetForcer(prompt_ids(tok, q), tokens, max_thinking_tokens=10, num_wait=2,
                                  max_answer_tokens=4, max_total_tokens=CTX),
                     c, temperature=temperature, top_p=0.9, seed=1 + i, penalties=pen)
            got.append(c)
        assert all(c.done.wait(120) for c in got)
    finally:
        b.stop(30)
    for i, (c, ref) in enumerate(zip(got, old)):
        assert_same(tok, c, ref, i)


def hashed_next(ctx, sp):
    """A deterministic model for fake_vllm.FakeLLM: the next token is a function of the whole context."""
    h = (sum(ctx) * 31 + len(ctx) * 7) % 997
    return [151645, 100 + h] if h % 5 == 0 else 100 + h


def test_vllm_scheduler_matches_generate_with_the_vllm_backend(tok):
    backend = VLLMBackend(FakeLLM(hashed_next), sampling_params=SamplingParams)
    b = VLLMBatcher(backend, vocab_limit=len(tok), max_len=CTX).start()
    try:
        got = submit_all(b, tok, 5)
    finally:
        b.stop(30)
    waits = 0
    for i, c in enumerate(got):
        ref = generate(None, tok, [QUESTIONS[i % len(QUESTIONS)]],
                       GenerationConfig(max_total_tokens=CTX, batch_size=1, **settings(i)), backend=backend)[0]
        assert_same(tok, c, ref, i)
        waits += ref["waits"]
    assert waits > 0


def test_a_request_with_nothing_to_generate_is_answered_and_fails_no_other(tok, tiny):
    """max_thinking_tokens 0 and max_answer_tokens 0 (both accepted by the API): the forcer is done before any
    token; it is answered at once with its result, and the request running beside it is not failed (a step
    pushed a token into the finished forcer, and the ProtocolError failed every request in flight)."""
    b = ContinuousBatcher(tiny, vocab_limit=len(tok), slots=2, max_len=CTX).start()
    try:
        c1, c0 = Collect(), Collect()
        b.submit(forcer(tok, 0), c1)
        zero = BudgetForcer(prompt_ids(tok, "hi"), ForcingTokens.from_tokenizer(tok), max_thinking_tokens=0,
                            max_answer_tokens=0, max_total_tokens=CTX)
        b.submit(zero, c0)
        assert c0.done.wait(60) and c1.done.wait(60)
    finally:
        b.stop(30)
    assert [u.error for u in c0.updates + c1.updates] == [None] * (len(c0.updates) + len(c1.updates))
    assert len(c0.updates) == 1 and c0.updates[0].result == zero.result()
    assert (zero.result()["answer_tokens"], zero.result()["capped"]) == (0, True)
    ref = generate(tiny, tok, [QUESTIONS[0]], GenerationConfig(max_total_tokens=CTX, batch_size=1, **settings(0)))[0]
    assert_same(tok, c1, ref, 0)
