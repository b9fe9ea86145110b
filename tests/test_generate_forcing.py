"""Budget forcing checked token by token with a scripted stand-in model (next tokens fixed in advance).

The scripted model answers each ``decode`` call with logits that rank, at every row's last fed
position, the row's next scripted choices first; it also puts its highest logit on an id with no token
(151700) so that any unmasked pick would show. Rows are prefilled in one call (a large prefill_chunk),
so "the k-th call that feeds a row" is "the row's k-th pick".
"""
from types import SimpleNamespace

import pytest
import torch
from transformers import AutoTokenizer

from s1fast.forcing import AUTO_ANSWER_ROOM, BudgetForcer, ForcingTokens, ProtocolError
from s1fast.generate import BUNDLED_TOKENIZER, DEFAULT_SYSTEM, GenerationConfig, generate, pick_tokens, prompt_ids
from s1fast.vllm_backend import VLLMBackend
from fake_vllm import FakeLLM, SamplingParams

V = 151936            # Qwen2.5 embedding rows; ids >= 151665 have no token
NO_TOKEN = 151700
IM_START, IM_END = 151644, 151645
THINK = [151644, 26865]
END = [151644, 9217]
CAP = [151644, 9217, 198, 19357, 21806, 25]
WAIT = 14190
NL, NLNL = 198, 271
A, B, C, D, E = 32, 33, 34, 35, 36         # "A".."E": ordinary tokens
X, Y = 55, 56


@pytest.fixture(scope="module")
def tok():
    return AutoTokenizer.from_pretrained(BUNDLED_TOKENIZER)


class ScriptedModel:
    """``scripts[b][k]`` is row b's k-th choice: an int, or a list of ints in order of preference."""

    def __init__(self, scripts):
        self.scripts = scripts
        self.calls = [0] * len(scripts)
        self.seen = [[] for _ in scripts]   # every id fed to the model, per row (what its KV cache holds)

    def new_kv_cache(self, batch_size, max_len, dtype=None, device=None):
        assert batch_size == len(self.scripts)
        return SimpleNamespace(max_len=max_len)

    def decode(self, input_ids, cache, lengths=None, last_only=False):
        n, t = input_ids.shape
        logits = torch.zeros(n, t, V)
        for b in range(n):
            k = int(lengths[b])
            if k == 0:
                continue
            self.seen[b] += input_ids[b, :k].tolist()
            assert len(self.seen[b]) <= cache.max_len, "fed past the KV cache size the generator asked for"
            choice = self.scripts[b][self.calls[b]]
            self.calls[b] += 1
            prefs = choice if isinstance(choice, list) else [choice]
            for r, tid in enumerate(prefs):
                logits[b, k - 1, tid] = 10.0 - r
            logits[b, k - 1, NO_TOKEN] = 50.0   # the sampler must never pick an id with no token
        return logits[torch.arange(n), (torch.as_tensor(lengths) - 1).clamp(min=0)] if last_only else logits


def run(tok, scripts, questions=None, **cfg):
    questions = questions or [f"question {i}" for i in range(len(scripts))]
    model = ScriptedModel(scripts)
    cfg.setdefault("max_total_tokens", 4096)
    cfg.setdefault("prefill_chunk", 100_000)
    rows = generate(model, tok, questions, GenerationConfig(batch_size=len(scripts), **cfg))
    return model, rows


def test_prompt_is_s1s_chat_format(tok):
    ids = prompt_ids(tok, "How many r in raspberry?")
    text = tok.decode(ids, skip_special_tokens=False)
    assert text == (f"<|im_start|>system\n{DEFAULT_SYSTEM}<|im_end|>\n<|im_start|>user\nHow many r in raspberry?"
                    "<|im_end|>\n<|im_start|>assistant\n")
    templ = tok.apply_chat_template([{"role": "user", "content": "How many r in raspberry?"}],
                                    tokenize=False, add_generation_prompt=True)
    assert text == templ
    assert ids[-3:] == [151644, 77091, 198]


def test_forcing_ids_from_tokenizer_are_recipe_ids(tok):
    t = ForcingTokens.from_tokenizer(tok)
    assert (list(t.think_start), list(t.think_end), list(t.cap_end), list(t.extension)) == (THINK, END, CAP, [WAIT])
    assert t.thinking_stops == {IM_START, IM_END} and t.answer_stops == {IM_END}
    assert list(ForcingTokens.from_tokenizer(tok, "Hmm").extension) == [80022]
    with pytest.raises(ValueError, match="must not be empty"):
        ForcingTokens.from_tokenizer(tok, "")


def test_natural_end_of_thinking(tok):
    model, [r] = run(tok, [[A, B, IM_START, X, Y, IM_END]])
    p = prompt_ids(tok, "question 0")
    assert model.seen[0] == p + THINK + [A, B] + END + [X, Y]     # the stop is dropped, think_end appended
    assert (r["thinking_tokens"], r["waits"], r["capped"], r["finished"]) == (2, 0, False, True)
    assert r["thinking"] == "AB" and r["answer"] == "XY" and r["forced_end"] == "<|im_start|>answer"
    assert r["completion"] == "<|im_start|>thinkAB<|im_start|>answerXY<|im_end|>"


def test_im_end_also_ends_thinking(tok):
    model, [r] = run(tok, [[A, IM_END, X, IM_END]])
    assert model.seen[0][-4:] == [A] + END + [X]
    assert (r["thinking_tokens"], r["capped"]) == (1, False)


def test_wait_replaces_the_stop_num_wait_times(tok):
    model, [r] = run(tok, [[A, IM_START, B, IM_END, C, IM_START, X, IM_END]], num_wait=2)
    p = prompt_ids(tok, "question 0")
    assert model.seen[0] == p + THINK + [A, WAIT, B, WAIT, C] + END + [X]
    assert (r["waits"], r["thinking_tokens"], r["capped"]) == (2, 5, False)
    assert r["thinking"] == "AWaitBWaitC"          # "Wait" follows the text directly: no space, no newline
    assert IM_START not in model.seen[0][len(p) + 2:len(p) + 7]


def test_the_token_after_a_wait_cannot_stop(tok):
    # After each extension (and in the first round, as s1's min_tokens=1) a stop is masked: the next choice wins.
    model, [r] = run(tok, [[[IM_START, A], IM_START, [IM_END, B], IM_START, X, IM_END]], num_wait=1)
    p = prompt_ids(tok, "question 0")
    assert model.seen[0] == p + THINK + [A, WAIT, B] + END + [X]
    assert r["waits"] == 1


def test_without_forcing_an_immediate_stop_ends_thinking(tok):
    model, [r] = run(tok, [[IM_START, X, IM_END]])
    assert model.seen[0][-3:] == END + [X] and r["thinking_tokens"] == 0 and r["thinking"] == ""


def test_min_thinking_tokens_extends_until_reached(tok):
    model, [r] = run(tok, [[A, IM_START, B, IM_START, C, IM_START, X, IM_END]], min_thinking_tokens=5)
    assert model.seen[0][-8:] == [A, WAIT, B, WAIT, C] + END + [X]
    assert (r["thinking_tokens"], r["waits"]) == (5, 2)


def test_cap_appends_newline_and_final_answer_once(tok):
    model, [r] = run(tok, [[A, B, C, X, Y, IM_END]], max_thinking_tokens=3)
    assert model.seen[0][-(3 + 1 + 6 + 2):] == [A, B, C, NL] + CAP + [X, Y]
    assert (r["capped"], r["thinking_tokens"]) == (True, 3)
    assert r["forced_end"] == "\n<|im_start|>answer\nFinal Answer:"
    assert r["completion"].count("<|im_start|>answer") == 1 and r["completion"].count("Final Answer:") == 1


@pytest.mark.parametrize("last", [NL, NLNL])
def test_cap_adds_no_newline_after_one(tok, last):
    model, [r] = run(tok, [[A, last, X, IM_END]], max_thinking_tokens=2)
    assert model.seen[0][-(2 + 6 + 1):] == [A, last] + CAP + [X]
    assert r["forced_end"] == "<|im_start|>answer\nFinal Answer:"


def test_cap_during_forcing_counts_waits_and_stops_extending(tok):
    # Budget 3: A, Wait, B reach it; the cap ends thinking though a second Wait was still owed.
    model, [r] = run(tok, [[A, IM_START, B, X, IM_END]], max_thinking_tokens=3, num_wait=2)
    assert model.seen[0][-(3 + 1 + 6 + 1):] == [A, WAIT, B, NL] + CAP + [X]
    assert (r["waits"], r["capped"], r["thinking_tokens"]) == (1, True, 3)


def test_extension_is_cut_to_the_budget_left(tok):
    ext = "Let me double check"
    ext_ids = tok.encode(ext, add_special_tokens=False)
    assert len(ext_ids) >= 3
    model, [r] = run(tok, [[A, IM_START, X, IM_END]], max_thinking_tokens=3, num_wait=1, extension=ext)
    assert model.seen[0][-(3 + 1 + 6 + 1):] == [A] + ext_ids[:2] + [NL] + CAP + [X]
    assert (r["waits"], r["capped"], r["thinking_tokens"]) == (1, True, 3)


def test_zero_budget_caps_at_once(tok):
    model, [r] = run(tok, [[X, IM_END]], max_thinking_tokens=0)
    assert model.seen[0][-(2 + 1 + 6 + 1):] == THINK + [NL] + CAP + [X]
    assert (r["capped"], r["thinking_tokens"], r["thinking"]) == (True, 0, "")


def test_answer_budget_and_auto_thinking_budget(tok):
    p = prompt_ids(tok, "question 0")
    total = len(p) + 120
    model, [r] = run(tok, [[A] * 200], max_total_tokens=total, max_answer_tokens=3)
    # --max-answer-tokens is what the context bound keeps for the answer (issue 14, item 8), not the default room
    auto = total - len(p) - 2 - 6 - 1 - 3  # the newline forced before the cap, and the answer budget
    assert auto == 108 and r["max_thinking_tokens"] == auto and r["thinking_tokens"] == auto and r["capped"]
    assert (r["answer_tokens"], r["finished"]) == (3, False)
    assert len(model.seen[0]) <= total  # the request fits the context, and is served
    # without one, 100 tokens are kept for the answer (s1's "auto")
    _, [r0] = run(tok, [[A] * 200], max_total_tokens=total)
    assert r0["max_thinking_tokens"] == total - len(p) - 2 - 6 - AUTO_ANSWER_ROOM == 12
    # An explicit budget is lowered to what the context allows.
    _, [r2] = run(tok, [[A] * 200], max_total_tokens=total, max_thinking_tokens=10_000, max_answer_tokens=3)
    assert r2["max_thinking_tokens"] == auto
    with pytest.raises(ValueError, match="leaves no room"):
        BudgetForcer(p, ForcingTokens(), max_total_tokens=len(p) + 50)


def test_batch_rows_in_different_phases(tok):
    scripts = [[A, IM_START, B, IM_START, X, IM_END],          # waits once, then answers
               [A, B, C, D, E, X, Y, IM_END],                  # hits the cap (4)
               [[IM_START, C], IM_START, [IM_END, D], IM_START, X, IM_END]]  # masked stop, Wait, masked, stop
    model, rows = run(tok, scripts, num_wait=1, max_thinking_tokens=4)
    assert [r["waits"] for r in rows] == [1, 0, 1]
    assert [r["capped"] for r in rows] == [False, True, False]
    assert [r["thinking"] for r in rows] == ["AWaitB", "ABCD", "CWaitD"]
    assert [r["answer"] for r in rows] == ["X", "EXY", "X"]
    tail = [[A, WAIT, B] + END + [X], [A, B, C, D, NL] + CAP + [E, X, Y], [C, WAIT, D] + END + [X]]
    for b in range(3):   # the model saw exactly the protocol's sequence (all but the final <|im_end|>)
        assert model.seen[b] == prompt_ids(tok, f"question {b}") + THINK + tail[b]


def test_forcer_rejects_a_suppressed_stop_and_tokens_after_the_end(tok):
    f = BudgetForcer([1, 2, 3], ForcingTokens.from_tokenizer(tok), num_wait=1, max_total_tokens=1000,
                     max_answer_tokens=1)
    assert f.suppress_stop
    with pytest.raises(ProtocolError, match="suppressed"):
        f.push(IM_START)
    f.push_segment([A, IM_START])            # Wait appended
    assert f.thinking == [A, WAIT] and f.suppress_stop
    with pytest.raises(ProtocolError, match="follow a protocol decision"):
        f.push_segment([B, IM_END, X])       # an engine that ran past the stop id
    assert f.phase == "answer" and f.answer == []    # stopped at the decision; X was not taken
    f.push(X)
    assert f.done and f.answer == [X]                # max_answer_tokens=1
    with pytest.raises(ProtocolError, match="after the answer ended"):
        f.push(Y)
    g = BudgetForcer([1, 2, 3], ForcingTokens.from_tokenizer(tok), max_thinking_tokens=2, max_total_tokens=1000)
    with pytest.raises(ProtocolError, match="ignored max_tokens"):
        g.push_segment([A, B, C, D])


# ---- sampling ----------------------------------------------------------------------------------------
def test_ids_with_no_token_are_never_sampled():
    logits = torch.zeros(16, V)
    logits[:, 151665:] = 30.0                       # nearly all mass on rows with no token
    gens = [torch.Generator().manual_seed(i) for i in range(16)]
    for temp, top_p in [(1.0, 1.0), (2.0, 0.9), (0.7, 1.0)]:
        picks = pick_tokens(logits, temperature=temp, top_p=top_p, vocab_limit=151665, banned=[None] * 16,
                            generators=gens)
        assert max(picks) < 151665
    assert set(pick_tokens(logits, temperature=0, top_p=1, vocab_limit=151665, banned=[None] * 16,
                           generators=[None] * 16)) < set(range(151665))


def test_banned_stops_and_top_p_nucleus_and_seeding():
    logits = torch.full((1, 10), -30.0)
    logits[0, :4] = torch.log(torch.tensor([0.45, 0.3, 0.15, 0.10]))
    draws = lambda seed, **kw: [pick_tokens(logits, vocab_limit=10, generators=[g], **kw)[0]  # noqa: E731
                                for g in [torch.Generator().manual_seed(seed)] for _ in range(300)]
    nucleus = draws(0, temperature=1.0, top_p=0.7, banned=[None])
    assert set(nucleus) == {0, 1}                   # 0.45 < 0.7 <= 0.75: the third token is outside
    full = draws(0, temperature=1.0, top_p=1.0, banned=[None])
    assert set(full) == {0, 1, 2, 3}
    assert draws(0, temperature=1.0, top_p=1.0, banned=[None]) == full      # same seed, same draws
    assert draws(1, temperature=1.0, top_p=1.0, banned=[None]) != full
    no_first = draws(0, temperature=1.0, top_p=1.0, banned=[{0}])
    assert 0 not in no_first
    assert pick_tokens(logits, temperature=0, top_p=1, vocab_limit=10, banned=[{0, 1}], generators=[None]) == [2]



def test_extreme_temperature_and_top_p_pick_the_top_token():
    """A temperature of 1e-38 drew the last id (logits / T overflowed, softmax NaN) and a top_p of 1e-300 drew
    id 0 (it rounds to 0 in float32, which dropped every token): both now pick the argmax, as vLLM does."""
    torch.manual_seed(0)
    logits = torch.randn(3, 50) * 3
    top = logits.argmax(-1).tolist()
    assert top != [49] * 3 and top != [0] * 3
    for temp, top_p in [(1e-38, 1.0), (5e-324, 1.0), (1e-6, 1.0), (1.0, 1e-300), (2.0, 1e-45), (0.5, 1e-9)]:
        gens = [torch.Generator().manual_seed(i) for i in range(3)]
        assert pick_tokens(logits, temperature=temp, top_p=top_p, vocab_limit=50, banned=[None] * 3,
                           generators=gens) == top, (temp, top_p)


def test_draws_follow_the_distribution_and_each_row_its_own_seed():
    """Frequencies of 6000 seeded draws per row match softmax(logits / T) (5 sd of a binomial), batched rows
    draw what they draw alone, and a probability-0 token between two others is never drawn."""
    probs = torch.tensor([[0.5, 0.0, 0.3, 0.2, 0.0], [0.05, 0.15, 0.0, 0.0, 0.8]])
    logits = torch.log(probs) * 2.0                          # temperature 2 gives back probs
    n = 6000
    gens = [torch.Generator().manual_seed(s) for s in (11, 12)]
    counts = torch.zeros(2, 5)
    for _ in range(n):
        for r, t in enumerate(pick_tokens(logits, temperature=2.0, top_p=1.0, vocab_limit=5, banned=[None, None],
                                          generators=gens)):
            counts[r, t] += 1
    sd = (probs * (1 - probs) / n).sqrt()
    assert ((counts / n - probs).abs() <= 5 * sd + 1e-12).all(), counts / n
    assert counts[probs == 0].sum() == 0
    g_alone = torch.Generator().manual_seed(12)
    alone = [pick_tokens(logits[1:], temperature=2.0, top_p=1.0, vocab_limit=5, banned=[None],
                         generators=[g_alone])[0] for _ in range(50)]
    g_pair = [torch.Generator().manual_seed(11), torch.Generator().manual_seed(12)]
    paired = [pick_tokens(logits, temperature=2.0, top_p=1.0, vocab_limit=5, banned=[None, None],
                          generators=g_pair)[1] for _ in range(50)]
    assert alone == paired


# ---- the vLLM backend, driven by a fake engine -------------------------------------------------------
class FakeEngine(FakeLLM):
    """Follows one script per prompt (a token, or a list of preferred tokens, per generated token) under
    vLLM's rules (fake_vllm); ``drop_stop``: the stop id left out of token_ids, named by stop_reason only."""

    def __init__(self, scripts, prompts, drop_stop=False, **kw):
        self.scripts = {tuple(p): list(s) for p, s in zip(prompts, scripts)}
        self.drop_stop = drop_stop
        super().__init__(self._next, **kw)

    def _next(self, ctx, sp):
        return self.scripts[next(k for k in self.scripts if tuple(ctx[:len(k)]) == k)].pop(0)

    def _complete(self, ctx, sp):
        o = super()._complete(ctx, sp)
        if self.drop_stop and o.stop_reason is not None:
            o.token_ids = o.token_ids[:-1]
        return o


@pytest.mark.parametrize("drop_stop", [False, True])
def test_vllm_backend_matches_native_on_the_same_script(tok, drop_stop):
    scripts = [[A, IM_START, B, IM_START, X, IM_END],
               [A, B, C, D, E, X, Y, IM_END],
               [[IM_START, C], IM_START, [IM_END, D], IM_START, X, IM_END]]
    qs = [f"question {i}" for i in range(3)]
    cfg = dict(num_wait=1, max_thinking_tokens=4, max_total_tokens=4096)
    _, native = run(tok, [list(s) for s in scripts], qs, **cfg)
    engine = FakeEngine([list(s) for s in scripts], [prompt_ids(tok, q) for q in qs], drop_stop=drop_stop)
    rows = generate(None, tok, qs, GenerationConfig(batch_size=3, **cfg),
                    backend=VLLMBackend(engine, sampling_params=SamplingParams))
    assert rows == native
    first = engine.requests[0][1]
    assert first.stop_token_ids == [IM_START, IM_END] and first.min_tokens == 1 and first.ignore_eos
    assert first.max_tokens == 4 and len(first.allowed_token_ids) == 151665
    answer_reqs = [sp for _, sp in engine.requests if sp.stop_token_ids == [IM_END]]
    assert len(answer_reqs) == 3 and all(sp.min_tokens == 0 for sp in answer_reqs)


def test_vllm_backend_says_when_vllm_is_missing():
    try:
        import vllm  # noqa: F401
        pytest.skip("vllm is installed here, so the missing-vllm error cannot be shown")
    except ImportError:
        pass
    with pytest.raises(ImportError, match="pip install vllm"):
        VLLMBackend(object())
