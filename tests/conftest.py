"""Test harness. Runs first, before any kernel module is imported.

With no GPU, ``TRITON_INTERPRET=1`` is set here so that every Triton kernel runs on CPU tensors
through Triton's interpreter (platform.md: it must be set before a module defining a kernel is
imported, or Triton fails with "0 active drivers").
"""
import os
import sys


def _has_gpu() -> bool:
    try:
        import torch
        return torch.cuda.is_available()
    except Exception:
        return False


if not _has_gpu():
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

sys.path.insert(0, os.path.dirname(__file__))  # tests/kernel_testing.py


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory) -> str:
    """A randomly initialised tiny-qwen2 (seed 0, fp32) exported with the bundled tokenizer: the model folder
    that the generate, data-pipeline and serve tests load. Read-only: tests write elsewhere."""
    import torch

    from s1fast import model as lean
    from s1fast.generate import BUNDLED_TOKENIZER
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("tiny-export")
    lean.build_model("tiny-qwen2", device="cpu", dtype=torch.float32).save_pretrained(str(d),
                                                                                      tokenizer_dir=BUNDLED_TOKENIZER)
    return str(d)
