"""Rotary position embedding for packed sequences, Q and K together, in one launch.

Layouts: varlen ``q`` [T, Hq, D], ``k`` [T, Hk, D] with ``position_ids`` [T] (restarting at 0 per
document), or batched [B, S, H, D] with ``position_ids`` [B, S]. ``cos``/``sin`` are [max_positions,
rotary_dim] tables in transformers' layout, so any scaling the caller computed is honoured; partial rotary
passes the other channels through. Any strides are read in place; ``inplace=True`` writes into q/k.
Backward is the same rotation by -theta (no saved activations). The functional API goes through the
registered op ``torch.ops.s1fast_kernels.rope`` (fake implementation, autograd formula). Math: docs/kernels.md.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from ._runtime import INTERPRET, like_fake, triton_next_pow2, use_triton
from .index_checks import check_positions


@triton.jit
def _rope_one(x_ptr, o_ptr, b, s, tmask, c1, c2, s1, s2, n_heads, sxb, sxs, sxh, oob, oos, ooh,
              half, rest, BACKWARD: tl.constexpr, COPY_REST: tl.constexpr, BLOCK_H: tl.constexpr,
              BLOCK_R: tl.constexpr, BLOCK_P: tl.constexpr):
    """Rotate the first 2*half channels of every head of BLOCK_T tokens (x strides in elements)."""
    h = tl.arange(0, BLOCK_H)[None, :, None]
    d = tl.arange(0, BLOCK_R)[None, None, :]
    mask = tmask[:, None, None] & (h < n_heads) & (d < half)
    xbase = x_ptr + b[:, None, None] * sxb + s[:, None, None] * sxs + h * sxh
    obase = o_ptr + b[:, None, None] * oob + s[:, None, None] * oos + h * ooh
    x1_raw = tl.load(xbase + d, mask=mask, other=0.0)
    x1 = x1_raw.to(tl.float32)
    x2 = tl.load(xbase + d + half, mask=mask, other=0.0).to(tl.float32)
    if BACKWARD:
        y1 = x1 * c1 + x2 * s2
        y2 = x2 * c2 - x1 * s1
    else:
        y1 = x1 * c1 - x2 * s1
        y2 = x2 * c2 + x1 * s2
    tl.store(obase + d, y1.to(o_ptr.dtype.element_ty), mask=mask)
    tl.store(obase + d + half, y2.to(o_ptr.dtype.element_ty), mask=mask)
    if COPY_REST:
        p = tl.arange(0, BLOCK_P)[None, None, :]
        pmask = tmask[:, None, None] & (h < n_heads) & (p < rest)
        v = tl.load(xbase + 2 * half + p, mask=pmask, other=0.0)
        tl.store(obase + 2 * half + p, v, mask=pmask)


@triton.jit
def _rope_kernel(q_ptr, k_ptr, qo_ptr, ko_ptr, cos_ptr, sin_ptr, pos_ptr, n_tokens, seq_len, n_qh, n_kh,
                 sqb, sqs, sqh, skb, sks, skh, soqb, soqs, soqh, sokb, soks, sokh, cos_stride, sin_stride,
                 half, rest, BACKWARD: tl.constexpr, COPY_REST: tl.constexpr, BLOCK_T: tl.constexpr,
                 BLOCK_HQ: tl.constexpr, BLOCK_HK: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_P: tl.constexpr):
    t = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    tmask = t < n_tokens
    t64 = t.to(tl.int64)
    b = t64 // seq_len
    s = t64 % seq_len
    pos = tl.load(pos_ptr + t64, mask=tmask, other=0).to(tl.int64)
    d = tl.arange(0, BLOCK_R)[None, None, :]
    cmask = tmask[:, None, None] & (d < half)
    crow = cos_ptr + pos[:, None, None] * cos_stride + d
    srow = sin_ptr + pos[:, None, None] * sin_stride + d
    c1 = tl.load(crow, mask=cmask, other=0.0).to(tl.float32)
    c2 = tl.load(crow + half, mask=cmask, other=0.0).to(tl.float32)
    s1 = tl.load(srow, mask=cmask, other=0.0).to(tl.float32)
    s2 = tl.load(srow + half, mask=cmask, other=0.0).to(tl.float32)
    _rope_one(q_ptr, qo_ptr, b, s, tmask, c1, c2, s1, s2, n_qh, sqb, sqs, sqh, soqb, soqs, soqh, half, rest,
              BACKWARD, COPY_REST, BLOCK_HQ, BLOCK_R, BLOCK_P)
    _rope_one(k_ptr, ko_ptr, b, s, tmask, c1, c2, s1, s2, n_kh, skb, sks, skh, sokb, soks, sokh, half, rest,
              BACKWARD, COPY_REST, BLOCK_HK, BLOCK_R, BLOCK_P)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def rope_reference(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                   position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    r = cos.shape[-1]
    acc = torch.promote_types(q.dtype, torch.float32)  # fp32 math, fp64 for a float64 reference
    c = cos[position_ids].unsqueeze(-2).to(acc)  # [..., 1, r]
    s = sin[position_ids].unsqueeze(-2).to(acc)

    def apply(x):
        xr, xp = x[..., :r].to(acc), x[..., r:]
        out = (xr * c + _rotate_half(xr) * s).to(x.dtype)
        return torch.cat((out, xp), dim=-1) if xp.shape[-1] else out

    return apply(q), apply(k)


def rope_reference_backward(dq, dk, cos, sin, position_ids):
    """The PyTorch backward of ``rope_reference``: the rotation by -theta (module docstring)."""
    r, h = cos.shape[-1], cos.shape[-1] // 2
    acc = torch.promote_types(dq.dtype, torch.float32)
    c = cos[position_ids].unsqueeze(-2).to(acc)
    s = sin[position_ids].unsqueeze(-2).to(acc)

    def apply(dy):
        y1, y2 = dy[..., :h].to(acc), dy[..., h:r].to(acc)
        x1 = y1 * c[..., :h] + y2 * s[..., h:]
        x2 = y2 * c[..., h:] - y1 * s[..., :h]
        return torch.cat((x1.to(dy.dtype), x2.to(dy.dtype), dy[..., r:]), dim=-1)

    return apply(dq), apply(dk)


def _bsh_strides(x: torch.Tensor) -> tuple[int, int, int]:
    """(batch, seq, head) strides in elements; the varlen layout is one batch of T tokens."""
    if x.dim() == 3:
        return 0, x.stride(0), x.stride(1)
    return x.stride(0), x.stride(1), x.stride(2)


def _launch(q, k, qo, ko, cos, sin, pos, backward: bool, copy_rest: bool) -> None:
    """Callers guarantee a unit stride on head_dim for q/k/qo/ko (``unit_last``)."""
    n_tokens = pos.numel()
    seq_len = q.shape[1] if q.dim() == 4 else n_tokens
    d, r = q.shape[-1], cos.shape[-1]
    half, rest = r // 2, d - r
    n_qh, n_kh = q.shape[-2], k.shape[-2]
    meta, warps = _config(n_qh, n_kh, half, rest)
    _rope_kernel[(triton.cdiv(n_tokens, meta["BLOCK_T"]),)](
        q, k, qo, ko, cos, sin, pos, n_tokens, seq_len, n_qh, n_kh, *_bsh_strides(q), *_bsh_strides(k),
        *_bsh_strides(qo), *_bsh_strides(ko), cos.stride(0), sin.stride(0), half, rest,
        BACKWARD=backward, COPY_REST=copy_rest and rest > 0, num_warps=warps, **meta)


def _config(n_qh: int, n_kh: int, half: int, rest: int) -> tuple[dict, int]:
    """Block sizes: all heads of BLOCK_T tokens per program, ~4K rotated pairs of q+k on a GPU."""
    bhq, bhk, br = triton_next_pow2(n_qh), triton_next_pow2(n_kh), triton_next_pow2(max(half, 1))
    bp = triton_next_pow2(max(rest, 1))
    budget = 65536 if INTERPRET else 4096
    block_t = max(1, min(64, budget // ((bhq + bhk) * max(br, bp))))
    block_t = 1 << (block_t.bit_length() - 1)
    warps = 8 if block_t * (bhq + bhk) * br >= 4096 else 4
    return dict(BLOCK_T=block_t, BLOCK_HQ=bhq, BLOCK_HK=bhk, BLOCK_R=br, BLOCK_P=bp), warps


def sm90_variants(n_qh: int = 40, n_kh: int = 8, head_dim: int = 128, rotary_dim: int = 128) -> list[dict]:
    """Launch configurations at s1's attention shape (Qwen2.5-32B: 40/8 heads, head_dim 128)."""
    meta, warps = _config(n_qh, n_kh, rotary_dim // 2, head_dim - rotary_dim)
    strides = {k: "i32" for k in ("sqb", "sqs", "sqh", "skb", "sks", "skh", "soqb", "soqs", "soqh", "sokb",
                                  "soks", "sokh", "cos_stride", "sin_stride", "half", "rest")}
    out = []
    for dt in ("*bf16", "*fp32"):
        for bwd in (False, True):
            out.append(dict(name=f"rope {'bwd' if bwd else 'fwd'} q+k ({dt[1:]}, {n_qh}/{n_kh} heads, d {head_dim})",
                            fn=_rope_kernel,
                            signature=dict(q_ptr=dt, k_ptr=dt, qo_ptr=dt, ko_ptr=dt, cos_ptr=dt, sin_ptr=dt,
                                           pos_ptr="*i64", n_tokens="i32", seq_len="i32", n_qh="i32",
                                           n_kh="i32", **strides),
                            constexprs=dict(BACKWARD=bwd, COPY_REST=False, **meta), num_warps=warps,
                            num_stages=3, divisible=tuple(k for k in strides if k != "rest")))
    return out


def unit_last(t: torch.Tensor) -> torch.Tensor:
    """``t`` itself when its last dim has stride 1, else a contiguous copy (an expanded gradient has stride 0)."""
    return t if t.stride(-1) == 1 else t.contiguous()


def _check(q, k, cos, sin, position_ids) -> None:
    """Shapes on every path (so an error reads the same on a GPU box and off it); any strides are taken (the
    kernel's launcher copies a head_dim without unit stride)."""
    lead = q.shape[:-2]
    if q.dim() not in (3, 4) or k.dim() != q.dim() or k.shape[:-2] != lead or k.shape[-1] != q.shape[-1]:
        raise ValueError(f"rope: q {tuple(q.shape)} and k {tuple(k.shape)} must both be [T, H, D] or "
                         f"[B, S, H, D] with the same tokens and head_dim")
    if tuple(position_ids.shape) != tuple(lead):
        raise ValueError(f"rope: position_ids {tuple(position_ids.shape)} must be {tuple(lead)} "
                         f"(one position per token of q)")
    r = cos.shape[-1]
    if cos.dim() != 2 or sin.shape != cos.shape or r % 2 or r > q.shape[-1]:
        raise ValueError(f"rope: cos {tuple(cos.shape)} / sin {tuple(sin.shape)} must be equal "
                         f"[max_positions, rotary_dim] tables with an even rotary_dim <= head_dim "
                         f"{q.shape[-1]}")


# ------------------------------------------------------------------ the op (torch.library, fake, autograd)
def _kernel(x: Tensor, position_ids: Tensor) -> bool:
    return use_triton(x) and position_ids.numel() > 0


def _rope_launch(q, k, cos, sin, pos, backward: bool):
    """Out of place through the kernel; the outputs keep a dense input's strides (``empty_like``)."""
    q, k, cos, sin = unit_last(q), unit_last(k), unit_last(cos), unit_last(sin)
    qo, ko = torch.empty_like(q), torch.empty_like(k)
    _launch(q, k, qo, ko, cos, sin, pos.reshape(-1).contiguous(), backward=backward, copy_rest=True)
    return qo, ko


@torch.library.custom_op("s1fast_kernels::rope", mutates_args=())
def _rope_op(q: Tensor, k: Tensor, cos: Tensor, sin: Tensor, position_ids: Tensor) -> tuple[Tensor, Tensor]:
    check_positions("rope", position_ids, cos.shape[0])  # the backward reuses them: checked once, here
    if _kernel(q, position_ids):
        qo, ko = _rope_launch(q, k, cos, sin, position_ids, backward=False)
    else:
        qo, ko = rope_reference(q, k, cos, sin, position_ids)
    return like_fake(q, qo), like_fake(k, ko)


@_rope_op.register_fake
def _(q, k, cos, sin, position_ids):
    return torch.empty_like(q), torch.empty_like(k)


@torch.library.custom_op("s1fast_kernels::rope_backward", mutates_args=())
def _rope_backward(dq: Tensor, dk: Tensor, cos: Tensor, sin: Tensor, position_ids: Tensor) -> tuple[Tensor, Tensor]:
    if _kernel(dq, position_ids):
        gq, gk = _rope_launch(dq, dk, cos, sin, position_ids, backward=True)
    else:
        gq, gk = rope_reference_backward(dq, dk, cos, sin, position_ids)
    return like_fake(dq, gq), like_fake(dk, gk)


@_rope_backward.register_fake
def _(dq, dk, cos, sin, position_ids):
    return torch.empty_like(dq), torch.empty_like(dk)


def _setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs[2:])


def _grad(ctx, dq, dk):  # an unused output's gradient arrives as zeros (materialized by autograd)
    cos, sin, pos = ctx.saved_tensors
    gq, gk = torch.ops.s1fast_kernels.rope_backward(dq, dk, cos, sin, pos)
    return gq, gk, None, None, None


_rope_op.register_autograd(_grad, setup_context=_setup)


def rope(q: Tensor, k: Tensor, cos: Tensor, sin: Tensor, position_ids: Tensor, *,
         inplace: bool = False) -> tuple[Tensor, Tensor]:
    """Rotate ``q`` and ``k`` by the angles of ``position_ids`` (layouts in the module docstring), through the
    registered op. ``inplace=True`` copies the op's result into q and k (an op with an autograd formula may
    not mutate its inputs), so it saves no memory; it keeps the callers' contract of getting q and k back."""
    _check(q, k, cos, sin, position_ids)
    qo, ko = torch.ops.s1fast_kernels.rope(q, k, cos, sin, position_ids)
    if inplace:
        q.copy_(qo)
        k.copy_(ko)
        return q, k
    return qo, ko
