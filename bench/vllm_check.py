"""The vLLM paths against the real vLLM, on a GPU node where it is installed: one command, a JSON report.

    python -m bench.vllm_check OUT.json [--model HF_FOLDER] [--dtype fp32|bf16]

The tests use stand-ins with vLLM's signatures (tests/fake_vllm.py); this runs the code on vLLM itself, through
RL's generator (``VLLMRollout``: the in-process engine built by ``VLLMBackend.from_pretrained``), which is also
``generate --backend vllm``'s backend. ``--model`` defaults to a random tiny-qwen2 exported with the bundled
tokenizer (no download). Report keys, each with ``ok``:

- ``engine``: vLLM's version; whether s1fast's vocab-limit logits processor was taken (else allowed_token_ids);
  the engine's vocabulary, max_model_len, and whether the trainer can reach its model;
- ``greedy`` / ``repetition``: budget-forced greedy generation (one Wait, short budgets), vLLM backend against
  the native engine on the same weights, without and with ``repetition_penalty`` 1.3: per question whether the
  records are equal and the common prefix of the completions (kernels differ, so a late divergence can be
  numerics; the protocol fields must agree where the texts do);
- ``refresh``: RL's weight update (load_weights + reset_prefix_cache): the same weights reloaded give the same
  outputs, scaled embeddings change them, the original weights reloaded give the first outputs back (a stale
  prefix cache would not).
"""
from __future__ import annotations

if __name__ == "__main__" and not __package__:  # run as python bench/X.py: import as python -m bench.X
    import _path  # noqa: F401  (bench/_path.py)

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import traceback

from bench.env import environment, markdown_header

QUESTIONS = ["What is 7 times 8?", "Name a prime number larger than 20.", "How many sides has a hexagon?"]


def common_prefix(a: str, b: str) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def compare(native: list[dict], vllm: list[dict]) -> dict:
    rows = [{"equal": n == v, "common_chars": common_prefix(n["completion"], v["completion"]),
             "native_chars": len(n["completion"]), "waits": (n["waits"], v["waits"])} for n, v in zip(native, vllm)]
    return {"ok": all(r["equal"] for r in rows), "rows": rows}


def tiny_model(folder: str) -> str:
    import torch

    from s1fast import model as lean
    from s1fast.generate import BUNDLED_TOKENIZER
    torch.manual_seed(0)
    lean.build_model("tiny-qwen2", device="cpu", dtype=torch.float32).save_pretrained(
        folder, tokenizer_dir=BUNDLED_TOKENIZER)
    return folder


def run_checks(model_dir: str, dtype: str, report: dict) -> None:
    import torch
    import vllm

    from s1fast.generate import GenerationConfig, generate, load
    from s1fast.rl.config import RLConfig
    from s1fast.rl.rollout import VLLMRollout
    model, tok = load(model_dir, dtype=dtype, device="cuda")
    cfg = RLConfig(generator="vllm", model=model_dir, dtype=dtype, vllm_gpu_memory=0.3)
    rollout = VLLMRollout(tok, cfg, torch.device("cuda"), model_dir)
    b = rollout.backend
    report["engine"] = {"ok": True, "vllm": vllm.__version__, "vocab_processor": b.vocab_processor,
                        "vocab_size": b.vocab_size, "max_model_len": b.max_model_len, "len_tokenizer": len(tok),
                        "model_reachable": type(rollout._engine_model()).__name__}
    gen = GenerationConfig(batch_size=len(QUESTIONS), num_wait=1, max_thinking_tokens=48, max_answer_tokens=16,
                           max_total_tokens=min(2048, b.max_model_len or 2048))
    first = generate(None, tok, QUESTIONS, gen, backend=b)
    report["greedy"] = compare(generate(model, tok, QUESTIONS, gen), first)
    rep = dataclasses.replace(gen, repetition_penalty=1.3)
    report["repetition"] = compare(generate(model, tok, QUESTIONS, rep), generate(None, tok, QUESTIONS, rep, backend=b))
    state = {k: v.detach() for k, v in model.state_dict().items()}
    dt = next(iter(state.values())).dtype
    rollout.refresh(None, state, dt)
    same = generate(None, tok, QUESTIONS, gen, backend=b)
    rollout.refresh(None, {k: v * 1.5 if "embed" in k else v for k, v in state.items()}, dt)
    scaled = generate(None, tok, QUESTIONS, gen, backend=b)
    rollout.refresh(None, state, dt)
    back = generate(None, tok, QUESTIONS, gen, backend=b)
    report["refresh"] = {"ok": same == first and scaled != first and back == first,
                         "same_weights_same_outputs": same == first, "scaled_weights_change_outputs": scaled != first,
                         "reloaded_weights_give_first_outputs": back == first}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", help="the JSON report")
    p.add_argument("--model", help="a Hugging Face model folder (default: a random tiny-qwen2 export)")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    args = p.parse_args(argv)
    report: dict = {"environment": environment()}
    print(markdown_header(report["environment"]), file=sys.stderr)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            run_checks(args.model or tiny_model(os.path.join(tmp, "tiny")), args.dtype, report)
    except Exception as e:  # noqa: BLE001 - the report says where it stopped
        report["error"] = f"{type(e).__name__}: {e}"
        report["traceback"] = traceback.format_exc()
    with open(args.out, "w") as fh:
        json.dump(report, fh, indent=2)
    checks = {k: v for k, v in report.items() if isinstance(v, dict) and k != "environment"}
    print(json.dumps({**{k: v.get("ok") for k, v in checks.items()},
                      **({"error": report["error"]} if "error" in report else {})}), file=sys.stderr)
    return 0 if checks and all(v.get("ok") for v in checks.values()) and "error" not in report else 1


if __name__ == "__main__":
    sys.exit(main())
