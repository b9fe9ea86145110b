"""Causal attention over packed documents (FlashAttention-2 scheme), forward and backward in Triton.

q [T, Hq, D], k/v [T, Hk, D] (query head h reads key/value head h // (Hq/Hk)), ``cu_seqlens`` int32
[docs+1]: token t of document d attends to tokens cu[d]..t only. With S = q k^T / sqrt(D), P = softmax(S):
    out = P v,  dv = P^T dout,  dS = P * (dout v^T - delta), delta = rowsum(dout * out),
    dq = dS k / sqrt(D),  dk = dS^T q / sqrt(D)       (dk, dv summed over a key head's query heads)
The forward keeps the softmax statistics in fp32 on chip and saves only out and the base-2 row
log-sum-exp [Hq, T]; the backward recomputes P block by block (a dk/dv kernel per key block and key
head, a dq kernel per query block and head: no atomics). No [T, T] matrix exists: memory is linear in T.
Grid: one program per (block of a document, head) from a (document, block) table built on the device
(``block_table``: no host sync), of length cdiv(T, BLOCK) + docs, known from shapes: it scales with the
tokens and documents present, not max_seqlen x docs. Head dim 80 is padded to 128 with masked loads.
bf16 tiles feed ``tl.dot`` as they are (wgmma on sm_90, fp32 accumulation), fp32 ones in IEEE precision;
under the interpreter (``UPCAST``) tiles are upcast on load, as its bf16 arithmetic is wrong.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from torch import Tensor

from ._runtime import INTERPRET, triton_next_pow2, use_triton
from .index_checks import check_cu_seqlens

LOG2E = 1.4426950408889634
# Tiles per kernel, (bf16/fp16, fp32). fp32 runs IEEE dots on the FMA units (no tensor cores): a correctness
# path (GPU training is bf16), with tiles small enough for no spills at head dim 64. The
# interpreter uses the same tiles (fewer, larger numpy steps are what make it fast). The dk/dv kernel's
# blocks are key blocks of BLOCK_N rows; the others' are query blocks of BLOCK_M rows. Checked for no spills
# with triton 3.6 (the GPU node's, which spilled dk/dv at BLOCK_M 64 and the fp32 forward at 2 stages) and 3.7.
TILES = {
    "fwd": (dict(BLOCK_M=128, BLOCK_N=64, num_warps=8, num_stages=3),
            dict(BLOCK_M=32, BLOCK_N=32, num_warps=4, num_stages=1)),
    "dq": (dict(BLOCK_M=64, BLOCK_N=64, num_warps=4, num_stages=2),
           dict(BLOCK_M=32, BLOCK_N=32, num_warps=4, num_stages=2)),
    "dkdv": (dict(BLOCK_M=32, BLOCK_N=64, num_warps=8, num_stages=2),
             dict(BLOCK_M=16, BLOCK_N=32, num_warps=4, num_stages=2)),
}


def tiles(kernel: str, dtype: torch.dtype) -> dict:
    return dict(TILES[kernel][dtype == torch.float32])


PRE_BLOCK = 64


# ----------------------------------------------------------------------------------------- kernels
@triton.jit
def _attn_fwd_kernel(q_ptr, k_ptr, v_ptr, o_ptr, lse_ptr, cu_ptr, bdoc_ptr, bidx_ptr, sqt, sqh, skt, skh, svt, svh,
                     sot, soh, n_tokens, qk_scale, GROUP: tl.constexpr, HEAD_DIM: tl.constexpr,
                     BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, UPCAST: tl.constexpr,
                     PREC: tl.constexpr):
    pid = tl.program_id(0)
    h = tl.program_id(1)
    doc = tl.load(bdoc_ptr + pid)
    if doc < 0:
        return
    start = tl.load(cu_ptr + doc)
    end = tl.load(cu_ptr + doc + 1)
    m0 = start + tl.load(bidx_ptr + pid) * BLOCK_M
    offs_m = m0 + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    mmask = offs_m < end
    dmask = offs_d < HEAD_DIM
    kh = (h // GROUP).to(tl.int64)
    q = tl.load(q_ptr + offs_m.to(tl.int64)[:, None] * sqt + h.to(tl.int64) * sqh + offs_d[None, :],
                mask=mmask[:, None] & dmask[None, :], other=0.0)
    if UPCAST:  # the interpreter's bf16 dots are wrong
        q = q.to(tl.float32)
    m_i = tl.full([BLOCK_M], -1e30, dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    hi = tl.minimum(end, m0 + BLOCK_M)
    for n0 in range(start, hi, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        nmask = offs_n < end
        kt = tl.load(k_ptr + offs_n.to(tl.int64)[None, :] * skt + kh * skh + offs_d[:, None],
                     mask=nmask[None, :] & dmask[:, None], other=0.0)
        if UPCAST:  # the interpreter's bf16 dots are wrong
            kt = kt.to(tl.float32)
        s = tl.dot(q, kt, input_precision=PREC) * qk_scale
        # causal inside the document; keys past its end sit past every valid query, so this covers them
        s = tl.where(offs_n[None, :] <= offs_m[:, None], s, -1e30)
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(v_ptr + offs_n.to(tl.int64)[:, None] * svt + kh * svh + offs_d[None, :],
                    mask=nmask[:, None] & dmask[None, :], other=0.0)
        if UPCAST:  # the interpreter's bf16 dots are wrong
            v = v.to(tl.float32)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PREC)
        m_i = m_new
    acc = acc / l_i[:, None]
    tl.store(o_ptr + offs_m.to(tl.int64)[:, None] * sot + h.to(tl.int64) * soh + offs_d[None, :],
             acc.to(o_ptr.dtype.element_ty), mask=mmask[:, None] & dmask[None, :])
    tl.store(lse_ptr + h.to(tl.int64) * n_tokens + offs_m, m_i + tl.log2(l_i), mask=mmask)


@triton.jit
def _attn_bwd_delta_kernel(o_ptr, do_ptr, delta_ptr, sot, soh, sdot, sdoh, n_tokens, HEAD_DIM: tl.constexpr,
                           BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr):
    """delta[h, t] = sum_d o[t, h, d] * do[t, h, d] in fp32 (the softmax backward's row term)."""
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    h = tl.program_id(1).to(tl.int64)
    offs_d = tl.arange(0, BLOCK_D)
    mask = (offs_m < n_tokens)[:, None] & (offs_d < HEAD_DIM)[None, :]
    rows = offs_m.to(tl.int64)[:, None]
    o = tl.load(o_ptr + rows * sot + h * soh + offs_d[None, :], mask=mask, other=0.0).to(tl.float32)
    do = tl.load(do_ptr + rows * sdot + h * sdoh + offs_d[None, :], mask=mask, other=0.0).to(tl.float32)
    tl.store(delta_ptr + h * n_tokens + offs_m, tl.sum(o * do, 1), mask=offs_m < n_tokens)


@triton.jit
def _attn_bwd_dq_kernel(q_ptr, k_ptr, v_ptr, do_ptr, lse_ptr, delta_ptr, dq_ptr, cu_ptr, bdoc_ptr, bidx_ptr,
                        sqt, sqh, skt, skh, svt, svh, sdot, sdoh, sdqt, sdqh, n_tokens, qk_scale, sm_scale,
                        GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr,
                        BLOCK_N: tl.constexpr, UPCAST: tl.constexpr, PREC: tl.constexpr):
    """dq = scale * sum over keys of P * (dP - delta) @ k, for one block of queries of one head."""
    pid = tl.program_id(0)
    h = tl.program_id(1)
    doc = tl.load(bdoc_ptr + pid)
    if doc < 0:
        return
    start = tl.load(cu_ptr + doc)
    end = tl.load(cu_ptr + doc + 1)
    m0 = start + tl.load(bidx_ptr + pid) * BLOCK_M
    offs_m = m0 + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    mmask = offs_m < end
    dmask = offs_d < HEAD_DIM
    h64 = h.to(tl.int64)
    kh = (h // GROUP).to(tl.int64)
    rows = offs_m.to(tl.int64)[:, None]
    qd_mask = mmask[:, None] & dmask[None, :]
    q = tl.load(q_ptr + rows * sqt + h64 * sqh + offs_d[None, :], mask=qd_mask, other=0.0)
    do = tl.load(do_ptr + rows * sdot + h64 * sdoh + offs_d[None, :], mask=qd_mask, other=0.0)
    if UPCAST:
        q, do = q.to(tl.float32), do.to(tl.float32)
    lse = tl.load(lse_ptr + h64 * n_tokens + offs_m, mask=mmask, other=0.0)
    delta = tl.load(delta_ptr + h64 * n_tokens + offs_m, mask=mmask, other=0.0)
    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    hi = tl.minimum(end, m0 + BLOCK_M)
    for n0 in range(start, hi, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        kv_mask = (offs_n < end)[None, :] & dmask[:, None]
        cols = offs_n.to(tl.int64)[None, :]
        kt = tl.load(k_ptr + cols * skt + kh * skh + offs_d[:, None], mask=kv_mask, other=0.0)
        vt = tl.load(v_ptr + cols * svt + kh * svh + offs_d[:, None], mask=kv_mask, other=0.0)
        if UPCAST:
            kt, vt = kt.to(tl.float32), vt.to(tl.float32)
        s = tl.dot(q, kt, input_precision=PREC) * qk_scale
        s = tl.where((offs_n[None, :] <= offs_m[:, None]) & mmask[:, None], s, -1e30)
        # P <= 1 exactly; the min keeps a recomputed score a few ulps over the forward's (|s| ~ 1e9 in fp32)
        # from giving P = inf, and inf * 0 = NaN where dO is 0.
        p = tl.exp2(tl.minimum(s - lse[:, None], 0.0))
        dp = tl.dot(do, vt, input_precision=PREC)
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(kt.dtype), tl.trans(kt), input_precision=PREC)
    tl.store(dq_ptr + rows * sdqt + h64 * sdqh + offs_d[None, :], (dq * sm_scale).to(dq_ptr.dtype.element_ty),
             mask=qd_mask)


@triton.jit
def _attn_bwd_dkdv_kernel(q_ptr, k_ptr, v_ptr, do_ptr, lse_ptr, delta_ptr, dk_ptr, dv_ptr, cu_ptr, bdoc_ptr,
                          bidx_ptr, sqt, sqh, skt, skh, svt, svh, sdot, sdoh, sdkt, sdkh, sdvt, sdvh, n_tokens,
                          qk_scale, sm_scale, GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
                          BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, UPCAST: tl.constexpr, PREC: tl.constexpr):
    """dk, dv for one block of keys of one key/value head, summed over its GROUP query heads and over the
    queries of the document at or after the block (transposed scores: rows are keys)."""
    pid = tl.program_id(0)
    kh = tl.program_id(1)
    doc = tl.load(bdoc_ptr + pid)
    if doc < 0:
        return
    start = tl.load(cu_ptr + doc)
    end = tl.load(cu_ptr + doc + 1)
    n0 = start + tl.load(bidx_ptr + pid) * BLOCK_N
    offs_n = n0 + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    nmask = offs_n < end
    dmask = offs_d < HEAD_DIM
    kh64 = kh.to(tl.int64)
    rows = offs_n.to(tl.int64)[:, None]
    kd_mask = nmask[:, None] & dmask[None, :]
    k = tl.load(k_ptr + rows * skt + kh64 * skh + offs_d[None, :], mask=kd_mask, other=0.0)
    v = tl.load(v_ptr + rows * svt + kh64 * svh + offs_d[None, :], mask=kd_mask, other=0.0)
    if UPCAST:
        k, v = k.to(tl.float32), v.to(tl.float32)
    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    for g in range(GROUP):
        h64 = (kh * GROUP + g).to(tl.int64)
        for m0 in range(n0, end, BLOCK_M):
            offs_m = m0 + tl.arange(0, BLOCK_M)
            mmask = offs_m < end
            cols = offs_m.to(tl.int64)[None, :]
            qt_mask = mmask[None, :] & dmask[:, None]
            qt = tl.load(q_ptr + cols * sqt + h64 * sqh + offs_d[:, None], mask=qt_mask, other=0.0)
            dot_ = tl.load(do_ptr + cols * sdot + h64 * sdoh + offs_d[:, None], mask=qt_mask, other=0.0)
            if UPCAST:
                qt, dot_ = qt.to(tl.float32), dot_.to(tl.float32)
            lse = tl.load(lse_ptr + h64 * n_tokens + offs_m, mask=mmask, other=0.0)
            delta = tl.load(delta_ptr + h64 * n_tokens + offs_m, mask=mmask, other=0.0)
            st = tl.dot(k, qt, input_precision=PREC) * qk_scale
            st = tl.where((offs_m[None, :] >= offs_n[:, None]) & mmask[None, :], st, -1e30)
            pt = tl.exp2(tl.minimum(st - lse[None, :], 0.0))  # P <= 1: see the dq kernel
            dv += tl.dot(pt.to(dot_.dtype), tl.trans(dot_), input_precision=PREC)
            dpt = tl.dot(v, dot_, input_precision=PREC)
            dst = pt * (dpt - delta[None, :])
            dk += tl.dot(dst.to(qt.dtype), tl.trans(qt), input_precision=PREC)
    tl.store(dk_ptr + rows * sdkt + kh64 * sdkh + offs_d[None, :], (dk * sm_scale).to(dk_ptr.dtype.element_ty),
             mask=kd_mask)
    tl.store(dv_ptr + rows * sdvt + kh64 * sdvh + offs_d[None, :], dv.to(dv_ptr.dtype.element_ty), mask=kd_mask)


# ---------------------------------------------------------------------------------------- launchers
def block_table(cu_seqlens: Tensor, n_tokens: int, block: int) -> tuple[Tensor, Tensor]:
    """(document, block within it) of every program, -1 past the last block; on the device, no host sync.

    Its length, cdiv(n_tokens, block) + docs, bounds sum over documents of cdiv(length, block) from the
    shapes alone."""
    cu = cu_seqlens.to(torch.int64)
    n_docs = cu.numel() - 1
    blocks = (cu[1:] - cu[:-1] + block - 1) // block
    ends = torch.cumsum(blocks, 0)
    idx = torch.arange(triton.cdiv(n_tokens, block) + n_docs, device=cu.device)
    doc = torch.searchsorted(ends, idx, right=True)
    first = (ends - blocks)[doc.clamp(max=max(n_docs - 1, 0))]
    live = doc < n_docs
    return (torch.where(live, doc, -1).to(torch.int32).contiguous(),
            torch.where(live, idx - first, 0).to(torch.int32).contiguous())


def _flags(q: Tensor) -> dict:
    """fp32 operands: IEEE fp32 dots (not tf32); bf16/fp16: the precision flag is moot (wgmma, fp32 sums)."""
    return dict(UPCAST=INTERPRET, PREC="ieee" if INTERPRET or q.dtype == torch.float32 else "tf32")


def _check(q: Tensor, k: Tensor, v: Tensor, cu_seqlens: Tensor) -> None:
    if q.dim() != 3 or k.dim() != 3 or v.shape != k.shape or q.shape[0] != k.shape[0] or q.shape[2] != k.shape[2]:
        raise ValueError(f"packed_attention: q must be [T, Hq, D] and k, v [T, Hk, D]; got q {tuple(q.shape)}, "
                         f"k {tuple(k.shape)}, v {tuple(v.shape)}")
    if q.shape[1] % k.shape[1]:
        raise ValueError(f"packed_attention: {q.shape[1]} query heads is not a multiple of {k.shape[1]} key heads")
    if q.shape[2] > 256:
        raise ValueError(f"packed_attention: head dim {q.shape[2]} > 256 is not supported")
    if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2:
        raise ValueError(f"packed_attention: cu_seqlens must be 1-D with at least 2 entries, got "
                         f"{tuple(cu_seqlens.shape)}")


def _unit_last(x: Tensor) -> Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


def _launch_fwd(q: Tensor, k: Tensor, v: Tensor, cu_seqlens: Tensor) -> tuple[Tensor, Tensor]:
    T, hq, d = q.shape
    q, k, v = _unit_last(q), _unit_last(k), _unit_last(v)
    cu = cu_seqlens.to(device=q.device, dtype=torch.int32)
    out = torch.zeros_like(q)  # tokens past cu_seqlens[-1] (in no document) get 0, not garbage
    lse = torch.zeros((hq, T), device=q.device, dtype=torch.float32)
    cfg = tiles("fwd", q.dtype)
    bdoc, bidx = block_table(cu, T, cfg["BLOCK_M"])
    sm_scale = 1.0 / math.sqrt(d)
    _attn_fwd_kernel[(bdoc.numel(), hq)](
        q, k, v, out, lse, cu, bdoc, bidx, q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0),
        v.stride(1), out.stride(0), out.stride(1), T, sm_scale * LOG2E, GROUP=hq // k.shape[1], HEAD_DIM=d,
        BLOCK_D=max(16, triton_next_pow2(d)), **_flags(q), **cfg)
    return out, lse


def _launch_bwd(q, k, v, out, lse, dout, cu_seqlens) -> tuple[Tensor, Tensor, Tensor]:
    T, hq, d = q.shape
    hk = k.shape[1]
    q, k, v, out, dout = (_unit_last(x) for x in (q, k, v, out, dout))
    cu = cu_seqlens.to(device=q.device, dtype=torch.int32)
    block_d = max(16, triton_next_pow2(d))
    delta = torch.empty((hq, T), device=q.device, dtype=torch.float32)
    _attn_bwd_delta_kernel[(triton.cdiv(T, PRE_BLOCK), hq)](
        out, dout, delta, out.stride(0), out.stride(1), dout.stride(0), dout.stride(1), T, HEAD_DIM=d,
        BLOCK_D=block_d, BLOCK_M=PRE_BLOCK)
    dq, dk, dv = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
    sm_scale = 1.0 / math.sqrt(d)
    common = dict(GROUP=hq // hk, HEAD_DIM=d, BLOCK_D=block_d, **_flags(q))
    dq_cfg, kv_cfg = tiles("dq", q.dtype), tiles("dkdv", q.dtype)
    bdoc, bidx = block_table(cu, T, dq_cfg["BLOCK_M"])
    _attn_bwd_dq_kernel[(bdoc.numel(), hq)](
        q, k, v, dout, lse, delta, dq, cu, bdoc, bidx, q.stride(0), q.stride(1), k.stride(0), k.stride(1),
        v.stride(0), v.stride(1), dout.stride(0), dout.stride(1), dq.stride(0), dq.stride(1), T,
        sm_scale * LOG2E, sm_scale, **common, **dq_cfg)
    bdoc, bidx = block_table(cu, T, kv_cfg["BLOCK_N"])
    _attn_bwd_dkdv_kernel[(bdoc.numel(), hk)](
        q, k, v, dout, lse, delta, dk, dv, cu, bdoc, bidx, q.stride(0), q.stride(1), k.stride(0), k.stride(1),
        v.stride(0), v.stride(1), dout.stride(0), dout.stride(1), dk.stride(0), dk.stride(1), dv.stride(0),
        dv.stride(1), T, sm_scale * LOG2E, sm_scale, **common, **kv_cfg)
    return dq, dk, dv


# ------------------------------------------------------------------------ plain PyTorch (CPU path)
def _doc_bounds(cu_seqlens: Tensor) -> list[tuple[int, int]]:
    b = [int(x) for x in cu_seqlens.tolist()]
    return [(s, e) for s, e in zip(b[:-1], b[1:]) if e > s]


def _doc_probs(q, k, s, e, group):
    """fp32 probabilities [H, L, L] and base-2 lse [H, L] of one document (dense: the CPU path only)."""
    qd = q[s:e].float().transpose(0, 1)
    kd = k[s:e].float().transpose(0, 1).repeat_interleave(group, 0)
    sc = qd @ kd.transpose(1, 2) / math.sqrt(q.shape[-1])
    causal = torch.ones(e - s, e - s, dtype=torch.bool, device=q.device).tril()
    sc = sc.masked_fill(~causal, float("-inf"))
    lse = torch.logsumexp(sc, -1)
    return torch.exp(sc - lse[..., None]), lse * LOG2E


def forward_reference(q: Tensor, k: Tensor, v: Tensor, cu_seqlens: Tensor) -> tuple[Tensor, Tensor]:
    """(out, base-2 lse [Hq, T] fp32) by the module's math in PyTorch, fp32, one document at a time."""
    group = q.shape[1] // k.shape[1]
    out = torch.zeros_like(q)
    lse = torch.zeros((q.shape[1], q.shape[0]), device=q.device, dtype=torch.float32)
    for s, e in _doc_bounds(cu_seqlens):
        p, lse[:, s:e] = _doc_probs(q, k, s, e, group)
        out[s:e] = (p @ v[s:e].float().transpose(0, 1).repeat_interleave(group, 0)).transpose(0, 1).to(q.dtype)
    return out, lse


def backward_reference(q, k, v, out, lse, dout, cu_seqlens) -> tuple[Tensor, Tensor, Tensor]:
    """(dq, dk, dv): dV = P^T dO, dS = P (dO V^T - rowsum(dO o O)), dQ = dS K / sqrt(D), dK = dS^T Q / sqrt(D)."""
    hq, hk = q.shape[1], k.shape[1]
    group, scale = hq // hk, 1.0 / math.sqrt(q.shape[-1])
    dq, dk, dv = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
    for s, e in _doc_bounds(cu_seqlens):
        p, _ = _doc_probs(q, k, s, e, group)
        do = dout[s:e].float().transpose(0, 1)
        vd = v[s:e].float().transpose(0, 1).repeat_interleave(group, 0)
        kd = k[s:e].float().transpose(0, 1).repeat_interleave(group, 0)
        delta = (do * out[s:e].float().transpose(0, 1)).sum(-1, keepdim=True)
        ds = p * (do @ vd.transpose(1, 2) - delta)
        dq[s:e] = (ds @ kd * scale).transpose(0, 1).to(q.dtype)
        fold = lambda x: x.view(hk, group, e - s, -1).sum(1).transpose(0, 1)  # noqa: E731
        dk[s:e] = fold(ds.transpose(1, 2) @ q[s:e].float().transpose(0, 1) * scale).to(k.dtype)
        dv[s:e] = fold(p.transpose(1, 2) @ do).to(v.dtype)
    return dq, dk, dv


# --------------------------------------------------------------------- the op (torch.library, autograd)
@torch.library.custom_op("s1fast_kernels::packed_attention", mutates_args=())
def _packed_attention(q: Tensor, k: Tensor, v: Tensor, cu_seqlens: Tensor, max_seqlen: int) -> tuple[Tensor, Tensor]:
    """(out [T, Hq, D], base-2 log-sum-exp [Hq, T] fp32). ``max_seqlen`` is accepted for the varlen
    convention; the grid does not need it."""
    _check(q, k, v, cu_seqlens)
    check_cu_seqlens("packed_attention", cu_seqlens, q.shape[0])  # the backward reuses them: checked once
    if use_triton(q):
        return _launch_fwd(q, k, v, cu_seqlens)
    return forward_reference(q, k, v, cu_seqlens)


@_packed_attention.register_fake
def _(q, k, v, cu_seqlens, max_seqlen):
    return torch.empty_like(q), q.new_empty((q.shape[1], q.shape[0]), dtype=torch.float32)


@torch.library.custom_op("s1fast_kernels::packed_attention_backward", mutates_args=())
def _packed_attention_backward(q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, dout: Tensor,
                               cu_seqlens: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    if use_triton(q):
        return _launch_bwd(q, k, v, out, lse, dout, cu_seqlens)
    return backward_reference(q, k, v, out, lse, dout, cu_seqlens)


@_packed_attention_backward.register_fake
def _(q, k, v, out, lse, dout, cu_seqlens):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _setup(ctx, inputs, output):
    q, k, v, cu_seqlens, _ = inputs
    ctx.save_for_backward(q, k, v, output[0], output[1], cu_seqlens)


def _grad(ctx, dout, _dlse):
    q, k, v, out, lse, cu = ctx.saved_tensors
    dq, dk, dv = torch.ops.s1fast_kernels.packed_attention_backward(q, k, v, out, lse, dout, cu)
    return dq, dk, dv, None, None


_packed_attention.register_autograd(_grad, setup_context=_setup)


def packed_attention(q: Tensor, k: Tensor, v: Tensor, cu_seqlens: Tensor, max_seqlen: int) -> Tensor:
    """Causal attention inside each packed document: q [T, Hq, D], k/v [T, Hk, D] -> [T, Hq, D].

    ``cu_seqlens`` (int32, [docs+1], on q's device) should end at T: tokens past its end belong to no document
    and get zero output and zero gradient. Entries outside [0, T] or decreasing fail (``index_checks``: a
    ValueError on a CPU, a device assert on CUDA, no host sync)."""
    return torch.ops.s1fast_kernels.packed_attention(q, k, v, cu_seqlens, int(max_seqlen))[0]


def packed_attention_reference(q: Tensor, k: Tensor, v: Tensor, cu_seqlens: Tensor) -> Tensor:
    """The same attention by PyTorch's SDPA, one document at a time (any dtype; differentiable)."""
    gqa = q.shape[1] != k.shape[1]
    outs = []
    for s, e in _doc_bounds(cu_seqlens):
        o = torch.nn.functional.scaled_dot_product_attention(
            q[s:e].transpose(0, 1), k[s:e].transpose(0, 1), v[s:e].transpose(0, 1), is_causal=True, enable_gqa=gqa)
        outs.append(o.transpose(0, 1))
    return torch.cat(outs, 0)


# ----------------------------------------------------------------------------------- sm_90 variants
def sm90_variants() -> list[dict]:
    """Forward, dq and dk/dv in bf16 at head dims 128 (s1's), 64 and 80 (padded to 128), and in fp32 at 128
    (the tiny preset's dtype, smaller tiles), for compile_check; then the delta pre-pass."""
    out = []
    strides = lambda *names: {n: "i32" for n in names}  # noqa: E731
    for dt, d in (("bf16", 128), ("bf16", 64), ("bf16", 80), ("fp32", 64)):
        ptr, dtype = f"*{dt}", torch.float32 if dt == "fp32" else torch.bfloat16
        common = dict(GROUP=5, HEAD_DIM=d, BLOCK_D=triton_next_pow2(d), UPCAST=False,
                      PREC="ieee" if dt == "fp32" else "tf32")
        st = ("sqt", "sqh", "skt", "skh", "svt", "svh")
        fwd_sig = {"q_ptr": ptr, "k_ptr": ptr, "v_ptr": ptr, "o_ptr": ptr, "lse_ptr": "*fp32", "cu_ptr": "*i32",
                   "bdoc_ptr": "*i32", "bidx_ptr": "*i32", **strides(*st, "sot", "soh", "n_tokens"), "qk_scale": "fp32"}
        st_b = st + ("sdot", "sdoh")
        bwd = {"q_ptr": ptr, "k_ptr": ptr, "v_ptr": ptr, "do_ptr": ptr, "lse_ptr": "*fp32", "delta_ptr": "*fp32"}
        table = {"cu_ptr": "*i32", "bdoc_ptr": "*i32", "bidx_ptr": "*i32"}
        dq_sig = {**bwd, "dq_ptr": ptr, **table, **strides(*st_b, "sdqt", "sdqh", "n_tokens"), "qk_scale": "fp32",
                  "sm_scale": "fp32"}
        kv_sig = {**bwd, "dk_ptr": ptr, "dv_ptr": ptr, **table,
                  **strides(*st_b, "sdkt", "sdkh", "sdvt", "sdvh", "n_tokens"), "qk_scale": "fp32", "sm_scale": "fp32"}
        for kind, label, fn, sig, div in (
                ("fwd", "fwd", _attn_fwd_kernel, fwd_sig, st + ("sot", "soh")),
                ("dq", "bwd dq", _attn_bwd_dq_kernel, dq_sig, st_b + ("sdqt", "sdqh")),
                ("dkdv", "bwd dk/dv", _attn_bwd_dkdv_kernel, kv_sig, st_b + ("sdkt", "sdkh", "sdvt", "sdvh"))):
            t = tiles(kind, dtype)
            out.append(dict(name=f"packed attention {label} ({dt}, d {d})", fn=fn, signature=sig,
                            constexprs={**common, "BLOCK_M": t["BLOCK_M"], "BLOCK_N": t["BLOCK_N"]},
                            num_warps=t["num_warps"], num_stages=t["num_stages"], divisible=div))
    out.append(dict(name="packed attention bwd delta (bf16, d 128)", fn=_attn_bwd_delta_kernel,
                    signature={"o_ptr": "*bf16", "do_ptr": "*bf16", "delta_ptr": "*fp32", "sot": "i32", "soh": "i32",
                               "sdot": "i32", "sdoh": "i32", "n_tokens": "i32"},
                    constexprs=dict(HEAD_DIM=128, BLOCK_D=128, BLOCK_M=PRE_BLOCK), num_warps=4, num_stages=3,
                    divisible=("sot", "soh", "sdot", "sdoh")))
    return out
