"""Where a kernel runs: the one place that decides between Triton and plain PyTorch.

CUDA tensors go to the Triton kernels. CPU tensors go to the PyTorch implementation, unless the
Triton interpreter is on (``TRITON_INTERPRET=1``), which the tests use to run the very same Triton
code on a CPU. Under the interpreter, bf16 arithmetic is wrong (it works on raw bit patterns), so
kernels load bf16, convert to fp32 at once, and compute in fp32; ``INTERPRET`` also lets matmul
kernels upcast their ``tl.dot`` operands there only (on an H100 they stay bf16 for ``wgmma``).
"""
from __future__ import annotations

import os

import torch

INTERPRET: bool = os.environ.get("TRITON_INTERPRET", "0") == "1"


def use_triton(*tensors: torch.Tensor) -> bool:
    """True when these tensors should be handled by the Triton kernel rather than PyTorch."""
    if os.environ.get("S1FAST_DISABLE_TRITON", "0") == "1":
        return False
    t = tensors[0]
    return t.is_cuda or (INTERPRET and t.device.type == "cpu")


def row_block(n_cols: int, cap: int = 65536) -> int:
    """The smallest power of two that holds a row of ``n_cols`` (one program per row)."""
    return min(cap, triton_next_pow2(n_cols))


def triton_next_pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


def like_fake(ref: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """``out`` in the layout of ``torch.empty_like(ref)``, which is what an op's fake implementation promises:
    torch.compile lays out the rest of the graph (and checks it) by the fake, so a real output with other strides
    (a kernel's contiguous result for a transposed input, a PyTorch path's ``cat``) fails there. Copies only
    when the layouts differ, never for contiguous tensors."""
    if ref.is_contiguous() and out.is_contiguous():
        return out
    if torch.empty_like(ref, device="meta").stride() == out.stride():  # meta: the strides, no memory
        return out
    return torch.empty_like(ref, dtype=out.dtype).copy_(out)


def _full(t):
    """A sharded DTensor (FSDP2 parameter) -> the full local tensor: an all-gather forward, and in backward
    a reduce-scatter that SUMS the ranks' gradients (grad placement Partial). ``full_tensor()`` would
    instead hand each rank only the slice of its own gradient, silently dropping the other ranks' data."""
    if t is None or not hasattr(t, "placements"):
        return t
    from torch.distributed.tensor import Partial, Replicate
    n = t.device_mesh.ndim
    return t.redistribute(t.device_mesh, [Replicate()] * n).to_local(grad_placements=[Partial()] * n)
