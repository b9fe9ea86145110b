"""Tiled Triton matmuls with fused epilogues, the GEMMs of the fused linear cross-entropy.

``_matmul_kernel``: c (+)= a @ b with an fp32 accumulator; ``_logits_tile``: one [BM, BN] tile of
h W^T (+ bias) for kernels that finish it in their own epilogue. Tiles, warps and stages (``mm_config``) are
chosen for zero spills on sm_90, where the bf16 variant lowers to ``wgmma``. Why Triton and not cuBLAS:
docs/kernels.md.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._runtime import INTERPRET


@triton.jit
def _tile_ids(M, N, BM: tl.constexpr, BN: tl.constexpr, GROUP_M: tl.constexpr):
    """(row tile, column tile) of this program, in grouped order: GROUP_M row tiles share their b tiles in L2."""
    pid = tl.program_id(0)
    n_m = tl.cdiv(M, BM)
    n_n = tl.cdiv(N, BN)
    group = pid // (GROUP_M * n_n)
    first_m = group * GROUP_M
    size_m = tl.minimum(n_m - first_m, GROUP_M)
    return first_m + (pid % (GROUP_M * n_n)) % size_m, (pid % (GROUP_M * n_n)) // size_m


@triton.jit
def _mm_loop(a_ptr, b_ptr, M, N, K, sam, sak, sbk, sbn, pid_m, pid_n, acc, LOWP: tl.constexpr,
             UPCAST: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    """acc += a[tile rows, :] @ b[:, tile cols] over all of K (fp32 accumulator)."""
    # block pointers: the bounds checks cost no per-element pointer registers (masked pointer tiles
    # spilled at 128x128x64), and transposed operands are just other strides
    a_bp = tl.make_block_ptr(a_ptr, (M, K), (sam, sak), (pid_m * BM, 0), (BM, BK), (1, 0))
    b_bp = tl.make_block_ptr(b_ptr, (K, N), (sbk, sbn), (0, pid_n * BN), (BK, BN), (1, 0))
    for _ in range(0, K, BK):
        a = tl.load(a_bp, boundary_check=(0, 1), padding_option="zero")
        b = tl.load(b_bp, boundary_check=(0, 1), padding_option="zero")
        if UPCAST:
            acc = tl.dot(a.to(tl.float32), b.to(tl.float32), acc)
        elif LOWP:
            acc = tl.dot(a.to(b_ptr.dtype.element_ty), b, acc)
        else:
            acc = tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
        a_bp = tl.advance(a_bp, (0, BK))
        b_bp = tl.advance(b_bp, (BK, 0))
    return acc


@triton.jit
def _logits_tile(a_ptr, b_ptr, bias_ptr, M, N, K, sam, sak, sbk, sbn, HAS_BIAS: tl.constexpr, LOWP: tl.constexpr,
                 UPCAST: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, GROUP_M: tl.constexpr):
    """This program's tile of the logits h W^T (+ b) in fp32: (acc, pid_m, pid_n, row indices, column indices)."""
    pid_m, pid_n = _tile_ids(M, N, BM, BN, GROUP_M)
    acc = _mm_loop(a_ptr, b_ptr, M, N, K, sam, sak, sbk, sbn, pid_m, pid_n, tl.zeros((BM, BN), dtype=tl.float32),
                   LOWP, UPCAST, BM, BN, BK)
    rm = pid_m * BM + tl.arange(0, BM)
    rn = pid_n * BN + tl.arange(0, BN)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + rn, mask=rn < N, other=0.0).to(tl.float32)[None, :]
    return acc, pid_m, pid_n, rm, rn


@triton.jit
def _matmul_kernel(a_ptr, b_ptr, c_ptr, M, N, K, sam, sak, sbk, sbn, scm, scn,
                   ACCUMULATE: tl.constexpr, LOWP: tl.constexpr, UPCAST: tl.constexpr,
                   BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, GROUP_M: tl.constexpr):
    """c[M, N] (+)= a[M, K] @ b[K, N] with an fp32 accumulator; any strides (the backward GEMMs).

    LOWP: round both operands to b's dtype (bf16/fp16: tensor cores, wgmma on sm_90); otherwise fp32
    operands with IEEE precision. UPCAST (interpreter only) forces fp32 operands.
    """
    pid_m, pid_n = _tile_ids(M, N, BM, BN, GROUP_M)
    c_bp = tl.make_block_ptr(c_ptr, (M, N), (scm, scn), (pid_m * BM, pid_n * BN), (BM, BN), (1, 0))
    if ACCUMULATE:
        # start from c rather than adding it after the loop (the epilogue add spilled on sm_90)
        acc = tl.load(c_bp, boundary_check=(0, 1), padding_option="zero").to(tl.float32)
    else:
        acc = tl.zeros((BM, BN), dtype=tl.float32)
    acc = _mm_loop(a_ptr, b_ptr, M, N, K, sam, sak, sbk, sbn, pid_m, pid_n, acc, LOWP, UPCAST, BM, BN, BK)
    tl.store(c_bp, acc.to(c_ptr.dtype.element_ty), boundary_check=(0, 1))


def mm_config(lowp: bool) -> tuple[dict, int, int]:
    """(tile constexprs, num_warps, num_stages) of ``_matmul_kernel``, chosen for zero spills on sm_90.

    bf16/fp16: 128x128x64 tiles, 8 warps (wgmma, ~250 registers, no spills). fp32 operands (an fp32
    model; no tensor cores at IEEE precision): 64x64x32, 8 warps, 2 stages. Under the interpreter one
    large tile is fastest.
    """
    if lowp or INTERPRET:
        return dict(BM=128, BN=128, BK=64, GROUP_M=8), 8, 3
    return dict(BM=64, BN=64, BK=32, GROUP_M=8), 8, 2


def _mm(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, accumulate: bool = False) -> None:
    """c (+)= a @ b through ``_matmul_kernel``; a, b may be transposed views."""
    M, K = a.shape
    N = b.shape[1]
    lowp = b.dtype in (torch.bfloat16, torch.float16)
    blocks, warps, stages = mm_config(lowp)
    grid = (triton.cdiv(M, blocks["BM"]) * triton.cdiv(N, blocks["BN"]),)
    _matmul_kernel[grid](a, b, c, M, N, K, a.stride(0), a.stride(1),
                         b.stride(0), b.stride(1), c.stride(0), c.stride(1), ACCUMULATE=accumulate,
                         LOWP=lowp, UPCAST=INTERPRET, num_warps=warps,
                         num_stages=stages, **blocks)
