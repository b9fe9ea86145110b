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
