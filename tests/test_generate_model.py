"""Generation on s1fast's own model: the KV cache against full recomputation, batching, seeding, and
both CLIs end to end on an exported random tiny Qwen2 (real tokenizer, real eval sample)."""
import json
import os
import subprocess
import sys

import pytest
import torch
from transformers import AutoTokenizer

from s1fast import model as lean
from s1fast.forcing import BudgetForcer, ForcingTokens
from s1fast.generate import BUNDLED_TOKENIZER, GenerationConfig, generate, prompt_ids, run_native

QUESTIONS = ["What is 1+1?", "Every morning Aya goes for a $9$-kilometer-long walk. Find $s$.",
             "Let $ABC$ be a triangle inscribed in circle $\\omega$. Find $m+n$ where $AP=m/n$."]


@pytest.fixture(autouse=True)
def pytorch_path(monkeypatch):
    # The kernels have their own tests; here the Triton interpreter would only slow generation down.
    monkeypatch.setenv("S1FAST_DISABLE_TRITON", "1")


@pytest.fixture(scope="module")
def tok():
    return AutoTokenizer.from_pretrained(BUNDLED_TOKENIZER)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return lean.build_model("tiny-qwen2", device="cpu", dtype=torch.float32).eval()


class Recorder:
    """Wraps a model; keeps, per row, (position of the last fed token, its logits) for every decode call."""

    def __init__(self, model):
        self.model, self.seen = model, None

    def parameters(self):
        return self.model.parameters()

    def new_kv_cache(self, batch_size, max_len, dtype=None, device=None):
        self.seen = [[] for _ in range(batch_size)]
        return self.model.new_kv_cache(batch_size, max_len, dtype=dtype, device=device)

    def decode(self, input_ids, cache, lengths=None, last_only=False):
        before = cache.seqlens.clone()
        out = self.model.decode(input_ids, cache, lengths, last_only=last_only)
        for b, k in enumerate(lengths.tolist()):
            if k:
                self.seen[b].append((int(before[b]) + k - 1, (out[b] if last_only else out[b, k - 1]).clone()))
        return out


def test_kv_cache_generation_equals_full_recomputation(tok, tiny):
    tokens = ForcingTokens.from_tokenizer(tok)
    forcers = [BudgetForcer(prompt_ids(tok, q), tokens, max_thinking_tokens=10, num_wait=1, max_answer_tokens=5,
                            max_total_tokens=2048) for q in QUESTIONS]
    rec = Recorder(tiny)
    run_native(rec, forcers, vocab_limit=len(tok), prefill_chunk=16)   # chunked prefill, ragged rows
    for b, f in enumerate(forcers):
        assert f.done and f.capped and len(f.thinking) == 10
        ids = torch.tensor(f.ids)
        full = tiny.logits(ids, torch.arange(len(ids)), torch.tensor([0, len(ids)], dtype=torch.int32),
                           len(ids)).float()
        think0 = f.prompt_len + 2
        answer0 = think0 + len(f.thinking) + len(f.forced_end)
        generated = set(range(think0, think0 + len(f.thinking))) | set(range(answer0, len(f.ids)))
        picks = 0
        for pos, logits in rec.seen[b]:
            torch.testing.assert_close(logits, full[pos], atol=2e-4, rtol=1e-4)
            if pos + 1 in generated:     # greedy on the recomputed logits, ids with no token masked
                assert f.ids[pos + 1] == int(full[pos, :len(tok)].argmax())
                picks += 1
        assert picks == len(generated) == 10 + len(f.ids) - answer0 and f.waits == 0
        # The forced text sits exactly where the protocol says.
        assert f.ids[f.prompt_len:f.prompt_len + 2] == list(tokens.think_start)
        assert f.ids[f.prompt_len + 2 + 10:f.prompt_len + 2 + 10 + len(f.forced_end)] == f.forced_end
        assert all(t < len(tok) for t in f.ids)


def test_batching_does_not_change_greedy_output_and_sampling_is_seeded(tok, tiny):
    cfg = dict(max_thinking_tokens=5, max_answer_tokens=2, max_total_tokens=2048, prefill_chunk=32)
    batched = generate(tiny, tok, QUESTIONS, GenerationConfig(batch_size=3, **cfg))
    alone = [generate(tiny, tok, [q], GenerationConfig(batch_size=1, **cfg))[0] for q in QUESTIONS]
    strip = lambda rs: [{k: v for k, v in r.items() if k != "index"} for r in rs]  # noqa: E731
    assert strip(batched) == strip(alone)
    sample = lambda seed, bs: [r["thinking"] for r in generate(  # noqa: E731
        tiny, tok, QUESTIONS[:2], GenerationConfig(batch_size=bs, temperature=1.0, top_p=0.9, seed=seed, **cfg))]
    s1 = sample(5, 2)
    assert s1 == sample(5, 1)                       # per-prompt seeds: the batch does not matter
    assert s1 != sample(6, 2) and s1 != [r["thinking"] for r in batched[:2]]


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny):
    d = tmp_path_factory.mktemp("tiny-qwen2")
    tiny.save_pretrained(str(d), tokenizer_dir=BUNDLED_TOKENIZER)
    return str(d)


def test_generate_cli_end_to_end(exported, tmp_path):
    from s1fast.generate import main
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"question": "How many r in raspberry?"}) + "\n" + json.dumps("2+2?") + "\n")
    out = tmp_path / "out.jsonl"
    assert main(["--model", exported, "--prompt", "What is 1+1?", "--prompts", str(prompts), "--num-wait", "1",
                 "--max-thinking-tokens", "7", "--max-answer-tokens", "3", "--temperature", "0.7",
                 "--out", str(out)]) == 0
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["question"] for r in rows] == ["What is 1+1?", "How many r in raspberry?", "2+2?"]
    for r in rows:
        assert {"thinking", "answer", "thinking_tokens", "waits", "capped"} <= set(r)
        assert r["thinking_tokens"] == 7 and r["capped"] and r["answer_tokens"] <= 3
        assert r["completion"].startswith("<|im_start|>think")


def test_eval_cli_end_to_end(exported, tmp_path):
    out = tmp_path / "eval"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.getcwd()] + sys.path))
    proc = subprocess.run([sys.executable, "-m", "s1fast.eval", "--model", exported, "--limit", "2",
                           "--budgets", "4,8", "--num-wait", "0,1", "--max-answer-tokens", "2", "--out", str(out)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.load(open(out / "results.json"))
    assert [(r["num_wait"], r["budget"]) for r in res["rows"]] == [(0, 4), (0, 8), (1, 4), (1, 8)]
    assert [r["mean_thinking_tokens"] for r in res["rows"]] == [4, 8, 4, 8]   # a random model never stops
    assert all(r["n"] == 2 and 0 <= r["accuracy"] <= 1 for r in res["rows"])
    assert res["protocol"] and res["grader_versions"] and res["n_problems"] == 2
    assert (out / "scaling.png").stat().st_size > 5000 and "| num_wait | budget |" in proc.stdout
    assert len((out / "problems.jsonl").read_text().splitlines()) == 8   # 2 problems x 4 settings, one line each
