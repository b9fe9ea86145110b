"""The sampling penalties on the generation CLIs (``--presence-penalty``, ``--frequency-penalty``,
``--repetition-penalty``, as the server takes them per request): a penalised greedy run differs from the
unpenalised one and equals a hand-driven loop penalised by the from-lists definition (sampled runs and the
server: test_serve_batching); at their defaults nothing changes (the output, --out's settings, eval's
run.json), so files written before still resume; vllm refuses them with a clear error."""
import argparse
import json

import pytest
import torch

from s1fast.forcing import BudgetForcer, ForcingTokens
from s1fast.generate import GenerationConfig, decoding_settings, generate, load, main, prompt_ids
from s1fast.sampling import Penalties, PenaltyState, pick_tokens
from test_sampling import old_pick_tokens

PENALISED = dict(presence_penalty=0.5, frequency_penalty=0.3, repetition_penalty=1.3)
FORCING = dict(max_thinking_tokens=12, num_wait=1, max_answer_tokens=6, max_total_tokens=512)


@pytest.fixture(autouse=True)
def pytorch_path(monkeypatch):
    monkeypatch.setenv("S1FAST_DISABLE_TRITON", "1")  # the kernels have their own tests


@pytest.fixture(scope="module")
def model_tok(tiny_export):
    return load(tiny_export, device="cpu")


def by_hand(model, tok, question: str, p: Penalties) -> list[int]:
    """Greedy budget forcing recomputing the whole sequence each step (no KV cache), penalised by the from-lists
    definition (the whole output counted again each step)."""
    f = BudgetForcer(prompt_ids(tok, question), ForcingTokens.from_tokenizer(tok), **FORCING)
    while not f.done:
        ids = torch.tensor(f.ids)
        logits = model.logits(ids, torch.arange(len(ids)), torch.tensor([0, len(ids)], dtype=torch.int32),
                              len(ids)).float()[-1:]
        f.push(old_pick_tokens(logits, temperature=0.0, top_p=1.0, vocab_limit=len(tok),
                               banned=[f.stops if f.suppress_stop else None], generators=[None],
                               penalties=[(PenaltyState(p, f.prompt_len), f.ids)])[0])
    return f.ids[f.prompt_len:]


def test_a_penalised_greedy_run_differs_and_equals_a_hand_driven_pick_tokens_loop(model_tok):
    model, tok = model_tok
    qs = ["What is 1+1?", "Name a prime."]
    plain = generate(model, tok, qs, GenerationConfig(**FORCING, batch_size=2))
    pen = generate(model, tok, qs, GenerationConfig(**FORCING, **PENALISED, batch_size=2))
    p = GenerationConfig(**PENALISED).penalties
    assert p == Penalties(0.5, 0.3, 1.3)
    for q, a, b in zip(qs, plain, pen):
        assert a["completion"] != b["completion"], q
        assert b["completion"] == tok.decode(by_hand(model, tok, q, p), skip_special_tokens=False), q
        assert a["completion"] == tok.decode(by_hand(model, tok, q, Penalties()), skip_special_tokens=False), q



def test_defaults_record_nothing_new_so_earlier_out_files_resume_and_penalties_are_recorded(
        tiny_export, tmp_path, capsys):
    assert decoding_settings(GenerationConfig()).keys() == {
        "max_thinking_tokens", "min_thinking_tokens", "num_wait", "extension", "max_answer_tokens",
        "max_total_tokens", "temperature", "top_p", "seed", "batch_size", "prefill_chunk"}  # as before the flags
    assert decoding_settings(GenerationConfig(repetition_penalty=1.3))["repetition_penalty"] == 1.3
    out = tmp_path / "out.jsonl"
    args = ["--model", tiny_export, "--prompt", "a", "--max-thinking-tokens", "2", "--max-answer-tokens", "1",
            "--out", str(out)]
    assert main(args) == 0
    first = json.loads(out.read_text())
    assert not any("penalty" in k for k in first["settings"]), first["settings"]  # the line written before the flags
    assert main(args + ["--prompt", "b"]) == 0   # (the same settings: resumed)
    assert "1 prompt(s) already in" in capsys.readouterr().err and len(out.read_text().splitlines()) == 2
    assert main(args + ["--repetition-penalty", "1.3"]) == 2
    assert "other settings (repetition_penalty None there, 1.3 now)" in capsys.readouterr().err
    pen = tmp_path / "pen.jsonl"
    assert main(args[:-1] + [str(pen), "--presence-penalty", "0.5"]) == 0
    assert json.loads(pen.read_text())["settings"]["presence_penalty"] == 0.5
    assert main(args[:-1] + [str(pen), "--presence-penalty", "0.5"]) == 0   # resumes itself
    assert "1 prompt(s) already in" in capsys.readouterr().err


@pytest.mark.parametrize("flags, says", [
    (["--backend", "vllm", "--presence-penalty", "0.5"], "--presence-penalty needs --backend native"),
    (["--frequency-penalty", "3"], "--frequency-penalty must be in [-2, 2], got 3.0"),
    (["--repetition-penalty", "0"], "--repetition-penalty must be a finite number > 0"),
])
def test_penalties_vllm_cannot_apply_or_out_of_range_are_error_lines(tiny_export, capsys, flags, says):
    assert main(["--model", tiny_export, "--prompt", "hi", *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and says in err and len(err.strip().splitlines()) == 1, err


def test_the_data_pipelines_teacher_refuses_penalties_it_cannot_apply(tiny_export):
    from s1fast.data.pipeline.generate import make_teacher
    from s1fast.data.readers import DataError
    for teacher, penalty in (("vllm", "presence_penalty"), ("openai", "repetition_penalty")):
        args = argparse.Namespace(**{"teacher": teacher, "model": tiny_export, "presence_penalty": 0.0,
                                     "frequency_penalty": 0.0, "repetition_penalty": 1.0, penalty: 1.2})
        with pytest.raises(DataError, match=f"--{penalty.replace('_', '-')} needs --teacher native"):
            make_teacher(args)


def test_evals_run_json_records_penalties_only_when_set(tiny_export, tmp_path):
    from s1fast.eval import main as eval_main
    common = ["--model", tiny_export, "--limit", "1", "--budgets", "2", "--max-answer-tokens", "1"]
    for name, extra in (("plain", []), ("pen", ["--frequency-penalty", "0.4"])):
        assert eval_main([*common, *extra, "--out", str(tmp_path / name)]) == 0
    plain, pen = (json.load(open(tmp_path / n / "run.json"))["decoding"] for n in ("plain", "pen"))
    assert not any("penalty" in k for k in plain) and pen == {**plain, "frequency_penalty": 0.4}
