"""The packed collate: one rank's micro-batch of (input_ids, labels) documents in the varlen layout.

``position_ids`` restart at 0 per document, ``targets[t] = labels[t+1]`` inside a document and -100 at its
last token, ``loss_weight`` the example's weight where there is a target, ``cu_seqlens`` int32. C++ on CPU
(``torch.ops.s1fast.pack_collate``), a CUDA kernel on a CUDA device when built with CUDA, else the CPU
result moved; ``collate_reference`` is the pure-Python specification. Details: docs/packing.md.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

IGNORE = -100


@dataclass
class MicroBatch:
    """One rank's packed micro-batch in the varlen layout (see the module docstring)."""

    input_ids: torch.Tensor      # [T] int64
    position_ids: torch.Tensor   # [T] int64, restarting at 0 per document
    targets: torch.Tensor        # [T] int64, next-token labels shifted inside each document, -100 elsewhere
    loss_weight: torch.Tensor    # [T] float32, the example's weight where targets != -100, else 0
    cu_seqlens: torch.Tensor     # [D+1] int32
    max_seqlen: int              # host int: never read from the device
    num_docs: int

    @property
    def num_tokens(self) -> int:
        return int(self.input_ids.numel())

    def to(self, device, non_blocking: bool = False) -> "MicroBatch":
        mv = lambda t: t.to(device, non_blocking=non_blocking)  # noqa: E731
        return dataclasses.replace(self, input_ids=mv(self.input_ids), position_ids=mv(self.position_ids),
                                   targets=mv(self.targets), loss_weight=mv(self.loss_weight),
                                   cu_seqlens=mv(self.cu_seqlens))


def _as_numpy(x, what: str, k: int) -> np.ndarray:
    a = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if a.ndim != 1 or not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"collate: example {k} {what} must be a 1-D integer array, got shape {a.shape} "
                         f"dtype {a.dtype}")
    return a


def _gather(examples, weights, pad_to_nonempty: bool, pad_id: int):
    if len(examples) != len(weights):
        raise ValueError(f"collate: {len(examples)} examples but {len(weights)} weights")
    ids, labels, lens = [], [], []
    for k, (x, y) in enumerate(examples):
        x, y = _as_numpy(x, "input_ids", k), _as_numpy(y, "labels", k)
        if len(x) != len(y) or len(x) == 0:
            raise ValueError(f"collate: example {k} has {len(x)} input_ids and {len(y)} labels; they must be "
                             "aligned (labels NOT shifted) and non-empty")
        ids.append(x)
        labels.append(y)
        lens.append(len(x))
    w = [float(v) for v in weights]
    if not ids and pad_to_nonempty:
        ids, labels, lens, w = [np.array([pad_id])], [np.array([IGNORE])], [1], [0.0]
    cat = lambda xs: np.concatenate(xs).astype(np.int64) if xs else np.zeros(0, np.int64)  # noqa: E731
    cu = np.zeros(len(lens) + 1, np.int32)
    np.cumsum(lens, out=cu[1:])
    return cat(ids), cat(labels), cu, np.asarray(w, np.float32), (max(lens) if lens else 0)


def collate(examples: Sequence, weights: Sequence[float], *, device=None, pad_to_nonempty: bool = False,
            pad_id: int = 0) -> MicroBatch:
    """Pack one micro-batch (list of (input_ids, labels)) with per-example per-token weights.

    device: None/CPU -> the C++ CPU op; a CUDA device -> the CUDA kernel when the extension has one (else the
    CPU op, then a copy). An empty list gives a zero-token batch (or one zero-weight dummy token with
    ``pad_to_nonempty``).
    """
    from . import _native
    ids, labels, cu, w, max_seqlen = _gather(examples, weights, pad_to_nonempty, pad_id)
    t = [torch.from_numpy(a) for a in (ids, labels, cu, w)]
    ops = _native.ops()
    dev = torch.device(device) if device is not None else torch.device("cpu")
    if dev.type == "cuda" and _has_cuda_kernel("pack_collate"):
        t = [x.pin_memory().to(dev, non_blocking=True) for x in t]
    input_ids, position_ids, targets, loss_weight = ops.pack_collate(*t)
    batch = MicroBatch(input_ids, position_ids, targets, loss_weight, t[2], int(max_seqlen), len(cu) - 1)
    return batch if batch.input_ids.device == dev else batch.to(dev)


def collate_reference(examples: Sequence, weights: Sequence[float], *, pad_to_nonempty: bool = False,
                      pad_id: int = 0) -> MicroBatch:
    """Pure-Python collate, document by document: the specification of the C++ and CUDA ops."""
    ids, labels, cu, w, max_seqlen = _gather(examples, weights, pad_to_nonempty, pad_id)
    T = len(ids)
    pos, tgt, lw = np.zeros(T, np.int64), np.full(T, IGNORE, np.int64), np.zeros(T, np.float32)
    for d in range(len(cu) - 1):
        s, e = int(cu[d]), int(cu[d + 1])
        pos[s:e] = np.arange(e - s)
        tgt[s:e - 1] = labels[s + 1:e]
        lw[s:e] = np.where(tgt[s:e] != IGNORE, w[d], 0.0)
    f = torch.from_numpy
    return MicroBatch(f(ids), f(pos), f(tgt), f(lw), f(cu), int(max_seqlen), len(cu) - 1)


def _has_cuda_kernel(op: str) -> bool:
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"s1fast::{op}", "CUDA")


def rows_with_target(targets: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor | None:
    """Indices of the rows with a target, for a loss head to skip the rest, where that is free: eager real
    tensors off a GPU (a gather costs no device sync there, and the vocabulary-wide head dominates a small
    model's step). None elsewhere (a GPU, fake tensors, torch.compile): every row goes in, no host sync."""
    from torch._subclasses.fake_tensor import is_fake
    if torch.compiler.is_compiling() or hidden.device.type != "cpu" or is_fake(hidden):
        return None
    return (targets != IGNORE).nonzero().squeeze(1)
