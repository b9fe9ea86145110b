"""The memory model that ``--checkpoint-budget-gb`` trusts, as the GPU checks read it: the one place they import it.

The model lives in ``s1fast.memory`` (``memory_gb``, ``model_shape``, ``MemoryAssumptions``). ``predicted_gib``: its per-rank components in GiB (what
``torch.cuda.max_memory_allocated`` counts in). ``block_terms``: its per-block terms in bytes, as PyTorch's
memory tracker sees them on one rank without FSDP (tests/test_fake_cuda.py compares the two).

    python -m bench.gpu_memory          # the tracker-vs-model table (fake "cpu" tensors, the GPU kernels' ops)
"""
from __future__ import annotations

if __name__ == "__main__" and not __package__:  # run as python bench/X.py: import as python -m bench.X
    import _path  # noqa: F401  (bench/_path.py)

import argparse
import json
import os
import subprocess
import sys
import tempfile

from bench._args import positive_ints
from bench.env import environment, markdown_header
from s1fast.attention import BACKENDS
from s1fast.hardware import GB
from s1fast.memory import MemoryAssumptions as Assumptions, memory_gb, model_shape

GIB = 2 ** 30
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def predicted_gib(model, tokens: int, *, shard: int = 1, ckpt_layers: int | None = None,
                  assumptions: Assumptions | None = None) -> dict:
    """The memory model's per-rank components (states, saved_activations, loss_phase, layer_phase, peak) in GiB
    for ``model`` (a CONFIGS name or ModelConfig) at ``tokens`` tokens, ``ckpt_layers`` blocks checkpointed."""
    parts = memory_gb(model_shape(model), assumptions or Assumptions(), stack="s1fast", tokens=tokens, shard=shard,
                      ckpt_layers=ckpt_layers)
    return {k: v * GB / GIB for k, v in parts.items()}


def block_terms(model, tokens: int) -> dict:
    """Bytes per block the model charges at ``tokens`` tokens, read off ``memory_gb`` by differences:
    saved activations without and with checkpointing, the block-backward transient (activations only: the
    FSDP gather and gradient terms are the part at 0 tokens), and the loss phase less the gathered lm_head and
    the fused loss's chunk buffers (``chunk_buffers``: inside the kernel, where a tracker cannot see them)."""
    from s1fast_kernels.linear_cross_entropy_op import _default_chunk
    s, A = model_shape(model), Assumptions()

    def m(t, k):
        return {key: v * GB for key, v in memory_gb(s, A, stack="s1fast", tokens=t, shard=1, ckpt_layers=k).items()}
    none, full = m(tokens, 0), m(tokens, s.layers)
    chunk_buffers = 6.0 * min(_default_chunk(tokens, s.vocab, on_gpu=True), tokens) * s.vocab
    return {"saved_none": none["saved_activations"] / s.layers, "saved_full": full["saved_activations"] / s.layers,
            "backward_none": none["layer_phase"] - m(0, 0)["layer_phase"],
            "backward_full": full["layer_phase"] - m(0, s.layers)["layer_phase"],
            "loss": none["loss_phase"] - 2.0 * s.vocab * s.h - chunk_buffers, "chunk_buffers": chunk_buffers}


def tracked_vs_model(run: dict, model="Qwen2.5-32B-Instruct") -> list[tuple[str, float, float]]:
    """(term, tracker bytes, model bytes) for one run of tests/fake_cuda_step.py (its first block: the last one's
    output is the loss's input, which the loss keeps)."""
    t, ck, b = run["tokens"], run["checkpoint"], run["blocks"][0]
    terms = block_terms(model, t)
    rows = [(f"saved activations per block ({ck})", b["saved_activations"], terms[f"saved_{ck}"])]
    if "backward_transient" in b:  # absent when the backward could not run (fake "cuda" without a driver)
        rows.append((f"block backward transient ({ck})", b["backward_transient"] - b["backward_gradients"],
                     terms[f"backward_{ck}"]))
    return rows + [("loss phase (outside the kernel)", run["loss_transient"], terms["loss"])]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Tracker vs memory model per block at the Qwen2.5-32B shape (markdown)")
    ap.add_argument("--python", default=sys.executable, help="the interpreter (--device cuda: a CUDA build of torch)")
    ap.add_argument("--backend", default="varlen", choices=BACKENDS)
    ap.add_argument("--tokens", type=positive_ints, default=[4096, 16384, 32768],
                    help="tokens of the step, comma-separated (default: 4096,16384,32768)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="the fake tensors' device (cpu: the backward runs too)")
    a = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "r.json")
        env = dict(os.environ, PYTHONPATH=ROOT)
        env.pop("TRITON_INTERPRET", None)
        step = subprocess.run([a.python, os.path.join(ROOT, "tests", "fake_cuda_step.py"), "--backend", a.backend,
                               "--tokens", ",".join(map(str, a.tokens)), "--checkpoint", "none,full", "--device",
                               a.device, "--out", out], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True)
        if step.returncode != 0:
            last = (step.stderr.strip().splitlines() or ["(no message)"])[-1]
            print(f"error: the fake step (tests/fake_cuda_step.py, --backend {a.backend} --device {a.device}) "
                  f"failed: {last}", file=sys.stderr)
            return 1
        runs = json.load(open(out))
    print(markdown_header(environment()))
    print("| tokens | term | tracker (GiB) | model (GiB) | tracker / model |\n|---:|---|---:|---:|---:|")
    for r in runs:
        for name, got, want in tracked_vs_model(r):
            if r["checkpoint"] == "full" and name.startswith("loss"):
                continue  # the same loss as the run without checkpointing
            print(f"| {r['tokens']} | {name} | {got / GIB:.3f} | {want / GIB:.3f} | {got / want:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
