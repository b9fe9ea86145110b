"""Helpers every kernel test uses.

``check_against_reference``: the tolerance rule of the kernels issue (and Apple's Cut
Cross-Entropy): a kernel's error against a float64 reference must not exceed the error of plain
PyTorch computing the same thing in the same dtype, plus a small stated margin. That is tight in
fp32 (PyTorch's fp32 error is ~1e-7 relative) and fair in bf16 (bf16 rounding of the output alone
is ~4e-3 relative), instead of one loose tolerance for everything.

``on_kernel_device``: run a kernel on the GPU when the machine has one. The float64 tests build their inputs
on the CPU and compare there; wrapped in this, a kernel call copies its tensor arguments to CUDA and its
results back (both copies differentiable, so gradients reach the CPU leaves exactly). Without a GPU it is
the identity and the interpreter runs the Triton code (conftest). On a GPU machine (where conftest leaves
the interpreter off) ``pytest tests/test_kernel_*.py`` thus checks the compiled kernels on the hardware
against the same float64 references and tolerance rule (``bash bench/run_gpu.sh`` does).

``sm90_report``: compile a kernel for the H100 and return its register / spill / shared memory use
(see ``s1fast_kernels.compile_check``); kernels are expected to compile without spills.

``RegisteredOpCalls``: a dispatch mode counting the ``torch.ops.s1fast_kernels`` ops a computation calls.
"""
from __future__ import annotations

import shutil

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from s1fast_kernels.compile_check import CompileReport, compile_sm90

# Margins, relative to the largest magnitude of the reference. fp32 allows a few ulps of
# reordered accumulation; bf16 allows one rounding of the output on top of PyTorch's own error.
MARGIN = {torch.float32: 1e-5, torch.bfloat16: 8e-3, torch.float16: 1e-3, torch.float64: 1e-12}


def max_err(x: torch.Tensor, ref64: torch.Tensor) -> float:
    return (x.detach().double() - ref64.detach().double()).abs().max().item()


def check_against_reference(name: str, out: torch.Tensor, ref64: torch.Tensor,
                            baseline: torch.Tensor | None = None, *, margin: float | None = None) -> dict:
    """Assert ``out`` is as close to the float64 ``ref64`` as ``baseline`` (plain PyTorch, same dtype) + margin."""
    assert out.shape == ref64.shape, f"{name}: shape {tuple(out.shape)} != reference {tuple(ref64.shape)}"
    assert torch.isfinite(out.double()).all(), f"{name}: non-finite values"
    scale = max(ref64.double().abs().max().item(), 1e-30)
    m = MARGIN[out.dtype] if margin is None else margin
    err = max_err(out, ref64)
    base = max_err(baseline, ref64) if baseline is not None else 0.0
    allowed = base + m * scale
    assert err <= allowed, (f"{name} ({out.dtype}): max error {err:.3e} against float64 exceeds "
                            f"plain PyTorch's {base:.3e} + margin {m:.1e} x scale {scale:.3e} = {allowed:.3e}")
    return {"err": err, "baseline_err": base, "allowed": allowed}


KERNEL_DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def on_kernel_device(fn):
    """``fn`` with its tensor arguments on KERNEL_DEVICE and its tensor results back on the CPU."""
    if KERNEL_DEVICE == "cpu":
        return fn
    from torch.utils._pytree import tree_map

    def move(x, dev):
        return x.to(dev) if isinstance(x, torch.Tensor) else x

    def wrapped(*args, **kwargs):
        args, kwargs = tree_map(lambda x: move(x, KERNEL_DEVICE), (args, kwargs))
        return tree_map(lambda x: move(x, "cpu"), fn(*args, **kwargs))
    return wrapped


def sm90_report(fn, signature: dict, constexprs: dict | None = None, **kw) -> CompileReport:
    """Compile for sm_90 and assert it worked with no spills."""
    rep = compile_sm90(fn, signature, constexprs, **kw)
    assert rep.registers > 0, f"{rep.name}: no register count read from the cubin"
    assert rep.spill_stores == 0 and rep.spill_loads == 0, f"{rep.name}: spills {rep}"
    return rep


def have_cuobjdump() -> bool:
    from s1fast_kernels.compile_check import _tool
    return shutil.which(_tool("cuobjdump")) is not None or __import__("os").path.exists(_tool("cuobjdump"))


class RegisteredOpCalls(TorchDispatchMode):
    """Counts the ``torch.ops.s1fast_kernels`` ops dispatched inside it (forward and backward ops alike):
    ``with RegisteredOpCalls() as calls: ...``, then ``calls.counts`` maps an op's name to its calls."""

    def __init__(self):
        super().__init__()
        self.counts: dict[str, int] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.namespace == "s1fast_kernels":
            name = func.__name__.split(".")[0]
            self.counts[name] = self.counts.get(name, 0) + 1
        return func(*args, **(kwargs or {}))
