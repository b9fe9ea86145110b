"""The vLLM adapter against stand-ins with vLLM's real signatures and checks (tests/fake_vllm.py): what it sends
(allowed_token_ids only where it masks something, built once), the repetition penalty it now passes (the native
engine's semantics under re-prompting), the settings vLLM would refuse (an error line before any model loads),
and the RL generator's weight refresh."""
import argparse
from types import SimpleNamespace

import pytest
import torch

import fake_vllm
from fake_vllm import FakeLLM, SamplingParams, VLLMValidationError
from s1fast.generate import GenerationConfig, generate
from s1fast.vllm_backend import VOCAB_LIMIT_ARG, VLLMBackend
from test_generate_forcing import IM_END, IM_START, NO_TOKEN, V, A, B, C, D, E, tok  # noqa: F401 - fixture

CANDIDATES = {A: 5.0, B: 4.7, C: 4.4, D: 4.1, E: 3.8, IM_START: 6.0, IM_END: 5.8}


def context_logits(ids) -> torch.Tensor:
    """A deterministic "model": positive logits on a few ids, shifted by the context's length and last id,
    and the highest logit on an id with no token (both engines must mask it)."""
    x = torch.zeros(V)
    for t, base in CANDIDATES.items():
        x[t] = base + 0.9 * (((len(ids) + ids[-1]) * (t % 7 + 1)) % 5) / 5
    x[NO_TOKEN] = 50.0
    return x


def vllm_repetition(x: torch.Tensor, seen) -> torch.Tensor:
    """vLLM's repetition penalty (apply_penalties): over the ids of the request's prompt and output."""
    ids = torch.tensor(sorted(set(seen)), dtype=torch.long)
    x = x.clone()
    x[ids] = torch.where(x[ids] > 0, x[ids] / REP, x[ids] * REP)
    return x


REP = 1.3


class ContextModel:
    """The native engine's view of ``context_logits``: each row's logits from every id fed to it."""

    def __init__(self):
        self.seen = {}

    def new_kv_cache(self, batch_size, max_len, dtype=None, device=None):
        self.seen = {b: [] for b in range(batch_size)}
        return SimpleNamespace(max_len=max_len)

    def decode(self, input_ids, cache, lengths=None, last_only=False):
        n = input_ids.shape[0]
        out = torch.zeros(n, V)
        for b in range(n):
            k = int(lengths[b])
            self.seen[b] += input_ids[b, :k].tolist()
            out[b] = context_logits(self.seen[b])
        return out


def ranked(x: torch.Tensor) -> list[int]:
    return x.topk(12).indices.tolist()


def test_the_repetition_penalty_under_re_prompting_is_the_native_engines(tok):
    """A round's prompt holds the earlier rounds and the forced text, so vLLM's penalty over prompt + output
    is the native one over prompt + everything after it; counting the round's output only would differ."""
    qs = ["question one", "question two"]
    cfg = GenerationConfig(batch_size=2, num_wait=2, max_thinking_tokens=14, max_answer_tokens=5,
                           max_total_tokens=4096, repetition_penalty=REP)
    native = generate(ContextModel(), tok, qs, cfg)
    engine = FakeLLM(lambda ids, sp: ranked(vllm_repetition(context_logits(ids), ids)))
    assert generate(None, tok, qs, cfg, backend=VLLMBackend(engine, sampling_params=SamplingParams)) == native
    assert {sp.repetition_penalty for _, sp in engine.requests} == {REP}
    assert sum(r["waits"] for r in native) == 4 and all(len(set(r["thinking"])) > 1 for r in native)
    round_only = FakeLLM(lambda ids, sp: ranked(vllm_repetition(context_logits(ids), ids[round_only.start:])))
    round_only._complete = lambda ctx, sp, f=round_only._complete: (setattr(round_only, "start", len(ctx)),
                                                                       f(ctx, sp))[1]
    assert generate(None, tok, qs, cfg, backend=VLLMBackend(round_only, sampling_params=SamplingParams)) != native


def test_allowed_token_ids_are_sent_only_where_they_mask_and_built_once(tok):
    """The list (151,665 ids for Qwen2.5) costs vLLM a deep copy, an id-by-id check and a vocabulary-wide mask
    row per request: it was sent with every request of every round, one list per batch, even where the
    tokenizer covers the model's whole vocabulary."""
    qs = ["question one", "question two"]
    cfg = GenerationConfig(batch_size=1, max_thinking_tokens=3, max_answer_tokens=2, max_total_tokens=4096)
    padded = FakeLLM(lambda ids, sp: ranked(context_logits(ids)))           # Qwen2.5: 152064 > len(tok)
    generate(None, tok, qs, cfg, backend=VLLMBackend(padded, sampling_params=SamplingParams))
    lists = [sp.allowed_token_ids for _, sp in padded.requests]
    assert len(lists) >= 4 and all(a is lists[0] for a in lists) and len(lists[0]) == len(tok)
    exact = FakeLLM(lambda ids, sp: ranked(context_logits(ids)), vocab_size=len(tok))
    rows = generate(None, tok, qs, cfg, backend=VLLMBackend(exact, sampling_params=SamplingParams))
    assert all(sp.allowed_token_ids is None for _, sp in exact.requests)
    assert rows == generate(None, tok, qs, cfg, backend=VLLMBackend(padded, sampling_params=SamplingParams))


@pytest.mark.parametrize("takes_processors", [True, False])
def test_padded_ids_are_masked_by_one_int_per_request_where_vllm_takes_logits_processors(tok, monkeypatch,
                                                                                        takes_processors):
    """from_pretrained builds the engine with s1fast.vllm_vocab.VocabLimit: a request carries its limit in
    extra_args and the id with no token (the model's top pick here) is masked as the native engine masks it;
    a vLLM whose LLM has no logits_processors keyword gets allowed_token_ids instead."""
    built = fake_vllm.install(monkeypatch, lambda ids, sp: ranked(context_logits(ids)),
                              takes_processors=takes_processors)
    backend = VLLMBackend.from_pretrained("model-dir", seed=0)
    assert backend.vocab_processor == takes_processors and built[-1].engine_kwargs == {"seed": 0}
    qs = ["question one", "question two"]
    cfg = GenerationConfig(batch_size=2, num_wait=1, max_thinking_tokens=6, max_answer_tokens=3,
                           max_total_tokens=4096)
    assert generate(None, tok, qs, cfg, backend=backend) == generate(ContextModel(), tok, qs, cfg)
    sent = [(sp.extra_args, sp.allowed_token_ids is not None) for _, sp in built[-1].requests]
    want = ({VOCAB_LIMIT_ARG: len(tok)}, False) if takes_processors else (None, True)
    assert set(map(repr, sent)) == {repr(want)}


def test_the_vocab_processor_follows_rows_as_vllm_moves_them(monkeypatch):
    fake_vllm.install(monkeypatch, lambda ids, sp: 1)
    from s1fast.vllm_vocab import VocabLimit
    p = VocabLimit(None, torch.device("cpu"), False)
    sp = lambda limit: SamplingParams(extra_args=None if limit is None else {VOCAB_LIMIT_ARG: limit})  # noqa: E731
    p.update_state(fake_vllm.BatchUpdate(3, [], [(0, sp(4), [1], []), (1, sp(None), [1], []), (2, sp(6), [1], [])],
                                         []))
    p.update_state(fake_vllm.BatchUpdate(3, [], [], [(0, 1, fake_vllm.MoveDirectionality.SWAP)]))
    p.update_state(fake_vllm.BatchUpdate(2, [0], [], [(2, 0, fake_vllm.MoveDirectionality.UNIDIRECTIONAL)]))
    x = p.apply(torch.zeros(2, 8))
    assert p.limits == {0: 6, 1: 4}
    assert x.isinf().tolist() == [[False] * 6 + [True] * 2, [False] * 4 + [True] * 4]
    with pytest.raises(ValueError, match="positive int"):
        VocabLimit.validate_params(sp(0))


def test_the_stand_in_refuses_what_vllm_refuses():
    with pytest.raises(TypeError, match="Unexpected keyword argument 'stop_ids'"):
        SamplingParams(stop_ids=[1])
    for kw in (dict(temperature=2.5), dict(top_p=0.0), dict(max_tokens=0), dict(min_tokens=3, max_tokens=2)):
        with pytest.raises(VLLMValidationError):
            SamplingParams(**kw)
    with pytest.raises(VLLMValidationError, match="empty"):
        FakeLLM(lambda ids, sp: 1).generate([{"prompt_token_ids": [1]}], [SamplingParams(allowed_token_ids=[])])
    with pytest.raises(TypeError):
        FakeLLM(lambda ids, sp: 1).generate([{"prompt_token_ids": [1]}], [SamplingParams()], use_progress=False)
    assert SamplingParams(temperature=0.005).temperature == 0.01


@pytest.mark.parametrize("flags, says", [
    (["--temperature", "2.5"], "--temperature 2.5 with vLLM"),
    (["--temperature", "0.005"], "--temperature 0.005 with vLLM"),
    (["--presence-penalty", "0.5"], "--presence-penalty needs --backend native (vLLM counts only the current"),
])
def test_what_vllm_would_refuse_is_an_error_line_before_loading(tmp_path, capsys, flags, says):
    """--temperature 2.5 passed the checks and vLLM refused it after loading the model (a traceback)."""
    from s1fast.generate import main
    (tmp_path / "config.json").write_text("{}")
    assert main(["--model", str(tmp_path), "--prompt", "hi", "--backend", "vllm", *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and says in err and len(err.strip().splitlines()) == 1, err


def test_the_context_defaults_to_the_engines_max_model_len_and_is_bounded_by_it(tok, monkeypatch, capsys):
    """The context was 32768 without --max-total-tokens whatever the engine's max_model_len: a request then ran
    into it and vLLM refused the next round's prompt (a traceback, after the rounds before)."""
    from s1fast.generate import BUNDLED_TOKENIZER, main
    engine = FakeLLM(lambda ids, sp: ranked(context_logits(ids)), max_model_len=300)
    cfg = GenerationConfig(batch_size=1, max_total_tokens=None)
    assert generate(None, tok, ["q"], cfg, backend=VLLMBackend(engine, sampling_params=SamplingParams))
    assert all(len(ctx) + sp.max_tokens <= 300 for ctx, sp in engine.requests)
    fake_vllm.install(monkeypatch, lambda ids, sp: 1, max_model_len=8192)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert main(["--model", "m", "--tokenizer", BUNDLED_TOKENIZER, "--prompt", "hi", "--backend", "vllm",
                 "--max-total-tokens", "9000"]) == 2
    assert capsys.readouterr().err.startswith("error: --max-total-tokens 9000 is over the vLLM engine's "
                                              "max_model_len 8192")


def test_the_data_teacher_checks_vllms_settings_and_takes_its_repetition_penalty(tmp_path):
    from s1fast.data.pipeline.generate import make_teacher
    from s1fast.data.readers import DataError
    from s1fast.penalty_args import check_penalties
    base = dict(model=str(tmp_path), presence_penalty=0.0, frequency_penalty=0.0, repetition_penalty=1.0,
                temperature=0.7, top_p=0.95)
    with pytest.raises(DataError, match="--top-p 1.5 with vLLM"):
        make_teacher(argparse.Namespace(**{**base, "teacher": "vllm", "top_p": 1.5}))
    check_penalties(argparse.Namespace(**{**base, "repetition_penalty": 1.2}), "vllm", "--teacher")
    with pytest.raises(ValueError, match="--repetition-penalty needs --teacher native .*the openai teacher does not"):
        check_penalties(argparse.Namespace(**{**base, "repetition_penalty": 1.2}), "openai", "--teacher")
    with pytest.raises(ValueError, match="--frequency-penalty needs --teacher native \\(vLLM counts only"):
        check_penalties(argparse.Namespace(**{**base, "frequency_penalty": 0.2}), "vllm", "--teacher")
