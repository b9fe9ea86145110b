"""Causal attention over packed documents, behind one small switch.

A packed batch is ``T`` tokens holding documents back to back (``cu_seqlens`` int32 [D+1], ``max_seqlen``);
token ``i`` of a document attends to tokens ``0..i`` of that document only, with grouped-query heads.
Backends (``BACKENDS``: flash, varlen, flex, triton, sdpa_mask, sdpa_doc) are chosen by ``select_backend``
from the device and what is installed; ``prepare`` builds what depends on the boundaries once per batch.

    meta = prepare(cu_seqlens, max_seqlen, n_tokens=T, device=q.device)   # once per batch
    out = attention(q, k, v, meta)            # q [T, Hq, D], k/v [T, Hk, D] -> [T, Hq, D]

Each backend, the order of choice and why: docs/attention.md.
"""
from __future__ import annotations

import contextlib
import functools
import importlib.util
import inspect
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F

BACKENDS = ("flash", "varlen", "flex", "triton", "sdpa_mask", "sdpa_doc")
_override: str | None = None


# --------------------------------------------------------------------------- choosing a backend
def available_backends(device: torch.device | str) -> list[str]:
    """The backends that can run forward and backward on ``device``, best first."""
    dev = torch.device(device)
    if dev.type != "cuda":
        return ["sdpa_doc", "sdpa_mask"]
    out = []
    if importlib.util.find_spec("flash_attn") is not None:
        out.append("flash")
    if _varlen_attn() is not None:
        out.append("varlen")
    if _flex() is not None:
        out.append("flex")
    return out + ["triton", "sdpa_doc", "sdpa_mask"]


def select_backend(device: torch.device | str) -> str:
    """The backend in force: ``use_backend``'s override, else ``S1FAST_ATTENTION``, else the best
    available one for the device."""
    choice = _override or os.environ.get("S1FAST_ATTENTION") or None
    if choice is not None:
        if choice not in BACKENDS:
            raise ValueError(f"unknown attention backend {choice!r} (S1FAST_ATTENTION or use_backend); "
                             f"choose one of {BACKENDS}")
        return choice
    return available_backends(device)[0]


def set_backend(name: str | None) -> None:
    """Choose the backend for this process (``None``: automatic), as the trainer's ``--attention`` does."""
    global _override
    if name is not None and name not in BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}; choose one of {BACKENDS}")
    _override = name


@contextlib.contextmanager
def use_backend(name: str | None):
    """Force a backend inside a ``with`` block (``None`` restores automatic choice)."""
    global _override
    if name is not None and name not in BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}; choose one of {BACKENDS}")
    old, _override = _override, name
    try:
        yield
    finally:
        _override = old


@functools.lru_cache(maxsize=None)
def _flex_compiled():
    return torch.compile(_flex().flex_attention, dynamic=False)


@functools.lru_cache(maxsize=None)
def _varlen_params() -> frozenset:
    return frozenset(inspect.signature(_varlen_attn()).parameters)


def _varlen_attn():
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    return varlen_attn


def _flex():
    try:
        from torch.nn.attention import flex_attention as fa
    except ImportError:
        return None
    return fa


# --------------------------------------------------------------------------- per-batch metadata
@dataclass
class PackedBatch:
    """What every layer needs about the document boundaries, computed once per batch."""
    cu_seqlens: torch.Tensor        # int32 [D+1] on the compute device
    max_seqlen: int
    backend: str
    bounds: list[int] | None = None  # cu_seqlens as Python ints (sdpa_doc)
    mask: torch.Tensor | None = None  # bool [T, T], True = may attend (sdpa_mask)
    block_mask: object | None = None  # FlexAttention BlockMask (flex)


def document_ids(cu_seqlens: torch.Tensor, n_tokens: int) -> torch.Tensor:
    """doc id of every token: ``searchsorted`` of the token index in the boundaries (no sync)."""
    idx = torch.arange(n_tokens, device=cu_seqlens.device, dtype=cu_seqlens.dtype)
    return torch.searchsorted(cu_seqlens, idx, right=True) - 1


def prepare(cu_seqlens: torch.Tensor, max_seqlen: int, n_tokens: int,
            device: torch.device | str | None = None, backend: str | None = None) -> PackedBatch:
    """Build the per-batch attention metadata for the backend in force."""
    device = torch.device(device) if device is not None else cu_seqlens.device
    backend = backend or select_backend(device)
    cu = cu_seqlens.to(device=device, dtype=torch.int32)
    meta = PackedBatch(cu, int(max_seqlen), backend)
    if backend == "sdpa_doc":
        meta.bounds = [int(b) for b in cu_seqlens.tolist()]
        if meta.bounds[-1] != n_tokens:
            raise ValueError(f"cu_seqlens ends at {meta.bounds[-1]} but the batch has {n_tokens} tokens")
    elif backend == "sdpa_mask":
        doc = document_ids(cu, n_tokens)
        pos = torch.arange(n_tokens, device=device)
        meta.mask = (doc[:, None] == doc[None, :]) & (pos[:, None] >= pos[None, :])
    elif backend == "flex":
        fa = _flex()
        doc = document_ids(cu, n_tokens)

        def doc_causal(b, h, q_idx, kv_idx):
            return (doc[q_idx] == doc[kv_idx]) & (q_idx >= kv_idx)

        # Compiled on CUDA so the [T, T] mask is never materialised (1 GiB at T = 32k).
        meta.block_mask = fa.create_block_mask(doc_causal, None, None, n_tokens, n_tokens,
                                               device=device, _compile=device.type == "cuda")
    return meta


# --------------------------------------------------------------------------- the attention call
def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, meta: PackedBatch) -> torch.Tensor:
    """Packed causal attention. ``q`` [T, Hq, D], ``k``/``v`` [T, Hk, D] -> [T, Hq, D]."""
    b = meta.backend
    if b == "flash":
        from flash_attn import flash_attn_varlen_func
        return flash_attn_varlen_func(q, k, v, meta.cu_seqlens, meta.cu_seqlens,
                                      meta.max_seqlen, meta.max_seqlen, causal=True)
    if b == "varlen":
        return _torch_varlen(q, k, v, meta)
    if b == "triton":
        from s1fast_kernels.attention_op import packed_attention
        return packed_attention(q, k, v, meta.cu_seqlens, meta.max_seqlen)
    gqa = q.shape[1] != k.shape[1]
    if b == "flex":
        # Eager flex materialises the [T, T] scores; on CUDA the compiled kernel is the point.
        fn = _flex_compiled() if q.is_cuda else _flex().flex_attention
        out = fn(q.transpose(0, 1)[None], k.transpose(0, 1)[None],
                                     v.transpose(0, 1)[None], block_mask=meta.block_mask,
                                     enable_gqa=gqa)
        return out[0].transpose(0, 1)
    if b == "sdpa_mask":
        out = F.scaled_dot_product_attention(q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1),
                                             attn_mask=meta.mask, enable_gqa=gqa)
        return out.transpose(0, 1)
    if b == "sdpa_doc":
        outs = []
        for s, e in zip(meta.bounds[:-1], meta.bounds[1:]):
            if e == s:
                continue
            o = F.scaled_dot_product_attention(q[s:e].transpose(0, 1), k[s:e].transpose(0, 1),
                                               v[s:e].transpose(0, 1), is_causal=True, enable_gqa=gqa)
            outs.append(o.transpose(0, 1))
        return torch.cat(outs, 0)
    raise ValueError(f"unknown attention backend {b!r}; choose one of {BACKENDS}")


def _torch_varlen(q, k, v, meta: PackedBatch) -> torch.Tensor:
    """torch's varlen_attn; its causal switch changed between releases (is_causal -> window_size)."""
    fn = _varlen_attn()
    params = _varlen_params()
    kw = {}
    if "window_size" in params:
        kw["window_size"] = (-1, 0)
    else:
        kw["is_causal"] = True
    if q.shape[1] != k.shape[1]:
        if "enable_gqa" in params:
            kw["enable_gqa"] = True
        else:  # older releases: expand the key/value heads
            rep = q.shape[1] // k.shape[1]
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    return fn(q, k, v, meta.cu_seqlens, meta.cu_seqlens, meta.max_seqlen, meta.max_seqlen, **kw)
