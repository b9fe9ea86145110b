"""Checks that every cross-entropy target is in [0, vocab) or is ``ignore_index``, failing loudly.

On CUDA with Triton a small kernel asserts on the device (``tl.device_assert``, compiled with ``debug=True``),
as PyTorch's own loss does: no host sync. On the CPU (the PyTorch path and the interpreter) the check is on
the host and raises a ``ValueError`` naming the first bad row; the interpreter ignores device asserts unless
its options ask for them. A CUDA run without Triton uses ``torch._assert_async``.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._runtime import use_triton
from .index_checks import fail_where

CHECK_BLOCK = 1024


@triton.jit(debug=True)
def _check_targets_kernel(t_ptr, n, vocab, ignore_index, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    t = tl.load(t_ptr + offs, mask=offs < n, other=ignore_index)
    tl.device_assert((t == ignore_index) | ((t >= 0) & (t < vocab)),
                     "s1fast_kernels cross-entropy: a target is outside [0, vocab) and is not ignore_index")


def check_target_dtype(name: str, target: torch.Tensor) -> None:
    """Class indices must be integers (a float target would be gathered as indices on one path, cast on another)."""
    if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
        raise ValueError(f"{name}: target has dtype {target.dtype}; it must hold integer class indices "
                         f"(e.g. target.long())")


def check_targets(name: str, target: torch.Tensor, vocab: int, ignore_index: int) -> None:
    """Fail if a target is neither ignore_index nor a class in [0, vocab) (asynchronously on CUDA)."""
    n = target.numel()
    if n == 0 or target.device.type == "meta":  # meta: shapes only (memory counting), nothing to check
        return
    if target.is_cuda and use_triton(target):
        _check_targets_kernel[(triton.cdiv(n, CHECK_BLOCK),)](target, n, vocab, ignore_index, BLOCK=CHECK_BLOCK)
        return
    bad = (target != ignore_index) & ((target < 0) | (target >= vocab))
    fail_where(name, target, bad, "target", f"[0, {vocab}) and is not ignore_index={ignore_index}",
               "fix the labels or mark them with ignore_index")


def sm90_variants() -> list[dict]:
    """The check kernel for compile_check (int64 targets, as the losses take them)."""
    return [dict(name="cross-entropy target check (device assert)", fn=_check_targets_kernel,
                 signature=dict(t_ptr="*i64", n="i32", vocab="i32", ignore_index="i32"),
                 constexprs=dict(BLOCK=CHECK_BLOCK), num_warps=4, debug=True)]
