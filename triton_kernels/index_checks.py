"""Range checks of the index inputs that kernels address memory with: RoPE's ``position_ids`` (rows of the
cos/sin tables) and packed attention's ``cu_seqlens`` (token offsets).

An index out of range makes a kernel read or write outside its tensors (garbage or an illegal address on a
GPU, heap corruption under the interpreter) and the PyTorch path wrap a negative position silently, so both
fail loudly instead. CPU tensors are checked on the host (a ``ValueError`` naming the first bad entry);
CUDA tensors with ``torch._assert_async`` (no host sync: the error surfaces at the next synchronisation).
Every layer of a model passes the same positions and offsets, so a tensor that passed is remembered (the very
object, unchanged since: same version counter) and not checked again: once per step, not once per layer.
The cross-entropy targets' check (``targets.py``) raises through the same ``fail_where``.
"""
from __future__ import annotations

import weakref

import torch

_passed: dict[str, tuple] = {}  # check name -> (weakref to the tensor, its version, the bound) of the last pass


def _memo(idx: torch.Tensor, bound: int) -> tuple | None:
    """What identifies this check of ``idx``; None where it must not be remembered: inside a CUDA graph capture
    (the check must be captured to run on replay) and for inference tensors (no version counter)."""
    if idx.is_inference() or (idx.is_cuda and torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()):
        return None
    return idx, idx._version, bound


def _passed_before(name: str, key: tuple | None) -> bool:
    last = _passed.get(name)
    return key is not None and last is not None and last[0]() is key[0] and last[1:] == key[1:]


def _remember(name: str, key: tuple | None) -> None:
    if key is not None:
        _passed[name] = (weakref.ref(key[0]), *key[1:])


def fail_where(name: str, idx: torch.Tensor, bad: torch.Tensor, what: str, rule: str, fix: str) -> None:
    """Raise (CPU) or assert on the device (CUDA) that no entry of ``idx`` is ``bad``: a CPU tensor is read on
    the host (no device sync), a CUDA one never is."""
    if idx.is_cuda:
        torch._assert_async(~bad.any(), f"{name}: {what} has an entry outside {rule}")
    elif bad.any().numpy():
        flat = bad.reshape(-1).nonzero()[0, 0]
        where = ", ".join(str(int(i)) for i in torch.unravel_index(flat, bad.shape))
        raise ValueError(f"{name}: {what}[{where}] = {int(idx.reshape(-1)[flat])} is outside {rule} "
                         f"({int(bad.sum())} such entries); {fix}")


def check_positions(name: str, position_ids: torch.Tensor, n_rows: int) -> None:
    """Every position is a row of the [n_rows, rotary_dim] cos/sin tables."""
    key = _memo(position_ids, n_rows)
    if position_ids.numel() == 0 or position_ids.device.type == "meta" or _passed_before("positions", key):
        return
    bad = (position_ids < 0) | (position_ids >= n_rows)
    fail_where(name, position_ids, bad, "position_ids",
               f"[0, {n_rows}) (the rows of the cos/sin tables)",
               "build the tables for at least max(position_ids) + 1 positions")
    _remember("positions", key)


def check_cu_seqlens(name: str, cu_seqlens: torch.Tensor, n_tokens: int) -> None:
    """Document offsets that never decrease and lie in [0, n_tokens]."""
    key = _memo(cu_seqlens, n_tokens)
    if cu_seqlens.numel() == 0 or cu_seqlens.device.type == "meta" or _passed_before("cu_seqlens", key):
        return
    cu = cu_seqlens.to(torch.int64)
    bad = (cu < 0) | (cu > n_tokens)
    bad[1:] |= cu[1:] < cu[:-1]
    fail_where(name, cu_seqlens, bad, "cu_seqlens",
               f"[0, T={n_tokens}] or below the entry before it",
               "cu_seqlens holds each document's first token, rising, then the token count T")
    _remember("cu_seqlens", key)
