"""Fused linear cross-entropy (``hidden @ weight.T`` -> loss, never the full [N, V] logits) and a
cross-entropy over given logits.

    loss = fused_linear_cross_entropy(hidden [N, H], weight [V, H], target [N], bias=None, *,
                                      ignore_index=-100, label_smoothing=0.0, z_loss=0.0, softcap=None,
                                      reduction="mean", token_weight=None, normalizer=None,
                                      return_lse=False, chunk_size=None)
    loss = cross_entropy(logits [N, V], target [N], *, same keywords)

Per token i with logits a_i = h_i W^T + b, capped logits z = c * tanh(a / c) if ``softcap=c`` else a,
lse_i = log sum_j exp(z_ij), t = target_i, eps = label_smoothing, lam = z_loss:
    l_i       = lse_i - (1 - eps) * z_it - (eps / V) * sum_j z_ij + lam * lse_i^2
    dl_i/dz_j = (1 + 2 lam lse_i) * softmax(z_i)_j - (1 - eps) [j = t] - eps / V
    dz/da     = 1 - (z / c)^2                                       (softcap only)
Tokens with ``target == ignore_index`` contribute exactly 0 to the loss and to every gradient, whatever
their ``token_weight`` holds (a NaN weight there included): their effective weight is forced to 0.

Reductions (w_i = token_weight[i], or 1; w_i = 0 where the target is ignored):
    "none": the vector [w_i * l_i]                  (fp32, 0 at ignored tokens)
    "sum":  sum_i w_i l_i                           (``normalizer`` not allowed)
    "mean": sum_i w_i l_i / D, with D = ``normalizer`` if given (a number or a 0-dim tensor, e.g. the
            step's global supervised-token count), else D = sum_i w_i (= the number of non-ignored tokens
            without weights). D == 0 gives a loss of 0, not NaN.
A trainer that folds the step's normalisation into the weights calls
``fused_linear_cross_entropy(h, W, t, token_weight=w, reduction="sum")``: that is exact (one fp32 sum
of w_i l_i, no division, no host sync) and costs nothing beyond the unweighted loss. The result is an
fp32 scalar; ``return_lse=True`` also returns the per-token log-sum-exp [N] (fp32, not differentiable),
from which a caller can log the z-loss term.

Algorithm (the same on every device, so CPU users get the memory savings too). Tokens are processed in
chunks of C rows (``chunk_size``; default ``_default_chunk``: 2 GiB of chunk buffers on a GPU, which keeps
the GEMMs compute-bound, and 64 MiB of fp32 logits on a CPU):
    1. z = h_c W^T (+ b) into an fp32 [C, V] buffer; on a GPU the GEMM's epilogue also writes each row's
       statistics over its column tile (max, sum of exp, target logit, sum of logits: ``_logits_stats_kernel``),
       which a few small tensor ops combine into lse and the loss;
    2. when a gradient is wanted, dz = w_i dl_i/dz is written from z and lse in the GEMM operand dtype (bf16
       for a bf16 model) into a [C, V] buffer (``_ce_grad_tile_kernel``): z is read once. (The PyTorch path
       does the same math in one exp pass per chunk; ``_ce_rows_kernel``, a two-pass row kernel, serves
       ``cross_entropy`` over given logits.)
    3. dh_c = dz W (written in h's dtype), dW += dz^T h_c (fp32 accumulator), db += sum_rows dz.
The gradients are thus computed during the forward (one pass over the vocabulary instead of two) and
the backward only scales them by the incoming gradient. With ``reduction="none"`` the incoming gradient
differs per token, so the backward re-runs the chunk loop with w_i * grad_i instead.
Peak extra memory: the [C, V] fp32 and bf16 buffers plus the fp32 [V, H] weight-gradient accumulator; the unfused
path holds [N, V] logits, their fp32 softmax and their gradient.

Two modes. The default above is the fastest (each logit computed once: 3 GEMMs of 2NVH FLOPs) but its
dW accumulator is 4VH bytes (3.1 GB at Qwen2.5-32B's lm_head). ``low_memory=True`` drops it: steps 1-3
run without the dW GEMM (C = 512 rows on a GPU), the forward keeps the lse [N], and the backward makes dW
by blocks of vocabulary rows: for each block, the logits of every token against it are recomputed in
tiles (``_dw_tiles``) and turned into w_i dl_i/dz from the saved lse in the same GEMM's epilogue
(``_logits_grad_kernel``: no row reduction is needed, so no fp32 logits buffer), and dW_block = dz^T h reduces over all tokens inside the GEMM's fp32 accumulator (a
[block, H] fp32 accumulator only when the tokens take several tiles), written once in the weight's dtype.
Cost: 4 GEMMs of 2NVH instead of 3. Why both targets (time and memory) cannot be had at once, and the
counted memory of both modes at s1's shapes: bench/RESULTS.md, Kernels. No ``.item()`` or other host sync: the
loop bounds depend on shapes only and every reduction stays a device tensor.

The matmuls are Triton kernels (``_matmul_kernel``), not cuBLAS, for three reasons: the logits GEMM
writes fp32 and adds the bias in its epilogue, the dW GEMM accumulates into the fp32 accumulator in its
epilogue (cuBLAS via torch would return a bf16 product, rounding every chunk's contribution before the
fp32 sum, or need an extra fp32 [V, H] temporary per chunk). The gradient dz is stored in bf16 (not fp32
read and rounded in registers: that variant spilled on sm_90, and bf16 halves the bytes the two backward
GEMMs read). On sm_90 the bf16 variant lowers to ``wgmma`` (asserted by a
test); operands stay bf16 with fp32 accumulation. Under the interpreter operands are upcast to fp32
(``UPCAST``, from ``_runtime.INTERPRET``) because the interpreter's bf16 arithmetic is wrong.
Cost at s1's shapes is in ``bench/RESULTS.md`` (three GEMMs of 2NVH FLOPs; the fp32 chunk buffer is
written once and read twice by the row kernel; the bf16 dz is written once and read by the two backward
GEMMs).

FSDP2. Inside the FSDP-wrapped module's forward (a head hook, where FSDP2 has already all-gathered the
parameters) ``weight`` is a plain tensor and FSDP2 reduce-scatters its gradient as for any parameter:
nothing to do. Given a sharded DTensor instead (calling from outside the wrapped module), the weight
(and bias) is all-gathered to a full local tensor (``_full``: redistribute to Replicate) and its
gradient goes back to the DTensor shard through a reduce-scatter that sums over the ranks (grad
placement Partial): the exact gradient of a loss whose normaliser is global (the trainer's per-token
weights), with no rescaling by the world size. The chunk loop then runs on the full [V, H] weight; a
vocab-sharded variant (all-reducing each token's max and sum-exp) would save the gather's memory at the
cost of two extra collectives per chunk, and is not implemented. Tied embeddings: pass the embedding
weight; autograd adds both gradients.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from ._runtime import INTERPRET, use_triton


# ----------------------------------------------------------------------------------------- kernels
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


@triton.jit
def _logits_stats_kernel(a_ptr, b_ptr, c_ptr, bias_ptr, t_ptr, stats_ptr, M, N, K, sam, sak, sbk, sbn, scm, scn,
                         n_tiles, softcap, HAS_BIAS: tl.constexpr, HAS_SOFTCAP: tl.constexpr, LOWP: tl.constexpr,
                         UPCAST: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
                         GROUP_M: tl.constexpr):
    """The logits GEMM z = h W^T (+ b) of one chunk, and in its epilogue each row's statistics over this
    tile's columns, of the (capped) logits: max m, sum exp(z - m), the target's logit, and the sum of z.
    stats [4, M, n_tiles] fp32; the row kernel's first pass over z is not needed."""
    acc, pid_m, pid_n, rm, rn = _logits_tile(a_ptr, b_ptr, bias_ptr, M, N, K, sam, sak, sbk, sbn, HAS_BIAS, LOWP,
                                             UPCAST, BM, BN, BK, GROUP_M)
    c_bp = tl.make_block_ptr(c_ptr, (M, N), (scm, scn), (pid_m * BM, pid_n * BN), (BM, BN), (1, 0))
    tl.store(c_bp, acc.to(c_ptr.dtype.element_ty), boundary_check=(0, 1))
    if HAS_SOFTCAP:
        acc = softcap * _tanh(acc / softcap)
    cmask = (rn < N)[None, :]
    rmask = rm < M
    tgt = tl.load(t_ptr + rm, mask=rmask, other=-1).to(tl.int64)
    m = tl.max(tl.where(cmask, acc, float("-inf")), axis=1)
    srow = tl.sum(tl.where(cmask, tl.exp(acc - m[:, None]), 0.0), axis=1)
    zt = tl.sum(tl.where(rn[None, :] == tgt[:, None], acc, 0.0), axis=1)
    zsum = tl.sum(tl.where(cmask, acc, 0.0), axis=1)
    out = stats_ptr + rm.to(tl.int64) * n_tiles + pid_n
    plane = M.to(tl.int64) * n_tiles
    tl.store(out, m, mask=rmask)
    tl.store(out + plane, srow, mask=rmask)
    tl.store(out + 2 * plane, zt, mask=rmask)
    tl.store(out + 3 * plane, zsum, mask=rmask)


@triton.jit
def _logits_grad_kernel(a_ptr, b_ptr, g_ptr, bias_ptr, t_ptr, w_ptr, lse_ptr, M, N, K, sam, sak, sbk, sbn, sgm, sgn,
                        col0, vocab, ignore_index, smoothing, z_loss, softcap, HAS_BIAS: tl.constexpr,
                        HAS_SOFTCAP: tl.constexpr, LOWP: tl.constexpr, UPCAST: tl.constexpr, BM: tl.constexpr,
                        BN: tl.constexpr, BK: tl.constexpr, GROUP_M: tl.constexpr):
    """The low-memory backward's tile: logits z = h W_block^T (+ b) and, in the GEMM's epilogue, straight from
    the fp32 accumulator and the saved lse, g = w * dloss/dz (columns col0.. of a vocabulary of ``vocab``),
    stored in g's dtype. No fp32 logits buffer and no second kernel."""
    acc, pid_m, pid_n, rm, rn = _logits_tile(a_ptr, b_ptr, bias_ptr, M, N, K, sam, sak, sbk, sbn, HAS_BIAS, LOWP,
                                             UPCAST, BM, BN, BK, GROUP_M)
    rmask = rm < M
    tgt = tl.load(t_ptr + rm, mask=rmask, other=ignore_index).to(tl.int64)
    valid = rmask & (tgt != ignore_index)
    w = tl.load(w_ptr + rm, mask=rmask, other=0.0)
    lse = tl.load(lse_ptr + rm, mask=rmask, other=0.0)
    g = _dlogits(acc, col0 + rn, lse, tgt, valid, w, vocab, smoothing, z_loss, softcap, HAS_SOFTCAP)
    g_bp = tl.make_block_ptr(g_ptr, (M, N), (sgm, sgn), (pid_m * BM, pid_n * BN), (BM, BN), (1, 0))
    tl.store(g_bp, g.to(g_ptr.dtype.element_ty), boundary_check=(0, 1))


@triton.jit
def _tanh(x):
    # tanh(x) = 1 - 2 / (exp(2x) + 1): exact limits at +-inf, and the interpreter has no tanh
    return 1.0 - 2.0 / (tl.exp(2.0 * x) + 1.0)


@triton.jit
def _ce_rows_kernel(z_ptr, z_stride, g_ptr, g_stride, t_ptr, w_ptr, loss_ptr, lse_ptr, n_rows, n_cols,
                    ignore_index, smoothing, z_loss, softcap, HAS_SOFTCAP: tl.constexpr,
                    WRITE_GRAD: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr):
    """Per row: w * loss and lse; with WRITE_GRAD, g = w * dloss/dlogits (g may alias z)."""
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    rmask = rows < n_rows
    rows64 = rows.to(tl.int64)
    tgt = tl.load(t_ptr + rows, mask=rmask, other=ignore_index).to(tl.int64)
    valid = rmask & (tgt != ignore_index)
    w = tl.load(w_ptr + rows, mask=rmask, other=0.0)
    m = tl.full((BLOCK_N,), float("-inf"), tl.float32)
    s = tl.zeros((BLOCK_N,), tl.float32)
    zsum = tl.zeros((BLOCK_N,), tl.float32)
    zt = tl.zeros((BLOCK_N,), tl.float32)
    for start in range(0, n_cols, BLOCK_V):
        cols = start + tl.arange(0, BLOCK_V)
        cmask = (cols < n_cols)[None, :]
        z = tl.load(z_ptr + rows64[:, None] * z_stride + cols[None, :], mask=rmask[:, None] & cmask,
                    other=0.0).to(tl.float32)
        if HAS_SOFTCAP:
            z = softcap * _tanh(z / softcap)
        m_new = tl.maximum(m, tl.max(tl.where(cmask, z, float("-inf")), axis=1))
        s = s * tl.exp(m - m_new) + tl.sum(tl.where(cmask, tl.exp(z - m_new[:, None]), 0.0), axis=1)
        m = m_new
        zsum += tl.sum(tl.where(cmask, z, 0.0), axis=1)
        zt += tl.sum(tl.where(cols[None, :] == tgt[:, None], z, 0.0), axis=1)
    lse = m + tl.log(s)
    loss = lse - (1.0 - smoothing) * zt - (smoothing / n_cols) * zsum + z_loss * lse * lse
    tl.store(loss_ptr + rows, tl.where(valid, w * loss, 0.0), mask=rmask)
    tl.store(lse_ptr + rows, lse, mask=rmask)
    if WRITE_GRAD:
        for start in range(0, n_cols, BLOCK_V):
            cols = start + tl.arange(0, BLOCK_V)
            mask = rmask[:, None] & (cols < n_cols)[None, :]
            a = tl.load(z_ptr + rows64[:, None] * z_stride + cols[None, :], mask=mask, other=0.0).to(tl.float32)
            g = _dlogits(a, cols, lse, tgt, valid, w, n_cols, smoothing, z_loss, softcap, HAS_SOFTCAP)
            tl.store(g_ptr + rows64[:, None] * g_stride + cols[None, :], g.to(g_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _dlogits(a, cols, lse, tgt, valid, w, vocab, smoothing, z_loss, softcap, HAS_SOFTCAP: tl.constexpr):
    """w * dloss/da for a tile of raw logits a [rows, cols] (columns ``cols`` of a vocabulary of ``vocab``),
    given each row's lse (of the capped logits): the gradient formula of the module docstring."""
    z = a
    if HAS_SOFTCAP:
        z = softcap * _tanh(a / softcap)
    g = (1.0 + 2.0 * z_loss * lse)[:, None] * tl.exp(z - lse[:, None]) - smoothing / vocab
    g = tl.where(cols[None, :] == tgt[:, None], g - (1.0 - smoothing), g)
    if HAS_SOFTCAP:
        zc = z / softcap
        g = g * (1.0 - zc * zc)
    return tl.where(valid[:, None], g * w[:, None], 0.0)


@triton.jit
def _ce_grad_tile_kernel(z_ptr, z_stride, g_ptr, g_stride, t_ptr, w_ptr, lse_ptr, n_rows, n_cols,
                         ignore_index, smoothing, z_loss, softcap, HAS_SOFTCAP: tl.constexpr,
                         BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr):
    """g = w * dloss/dz of the logits z [n_rows, n_cols] from each row's lse, tiled in 2-D (no row reduction is
    left to do); g may alias z."""
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tl.program_id(1) * BLOCK_V + tl.arange(0, BLOCK_V)
    rmask = rows < n_rows
    mask = rmask[:, None] & (cols < n_cols)[None, :]
    rows64 = rows.to(tl.int64)
    tgt = tl.load(t_ptr + rows, mask=rmask, other=ignore_index).to(tl.int64)
    valid = rmask & (tgt != ignore_index)
    w = tl.load(w_ptr + rows, mask=rmask, other=0.0)
    lse = tl.load(lse_ptr + rows, mask=rmask, other=0.0)
    a = tl.load(z_ptr + rows64[:, None] * z_stride + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    g = _dlogits(a, cols, lse, tgt, valid, w, n_cols, smoothing, z_loss, softcap, HAS_SOFTCAP)
    tl.store(g_ptr + rows64[:, None] * g_stride + cols[None, :], g.to(g_ptr.dtype.element_ty), mask=mask)


# --------------------------------------------------------------------------------------- launchers
def mm_config(lowp: bool) -> tuple[dict, int, int]:
    """(tile constexprs, num_warps, num_stages) of ``_matmul_kernel``, chosen for zero spills on sm_90.

    bf16/fp16: 128x128x64 tiles, 8 warps (wgmma, ~250 registers, no spills). fp32 operands (an fp32
    model; no tensor cores at IEEE precision): 64x64x32, 8 warps, 2 stages. Under the interpreter one
    large tile is fastest.
    """
    if lowp or INTERPRET:
        return dict(BM=128, BN=128, BK=64, GROUP_M=8), 8, 3
    return dict(BM=64, BN=64, BK=32, GROUP_M=8), 8, 2


# rows kernel: one row per program on a GPU (C ~ 400 rows per chunk fill 132 SMs; 16 fp32 values per
# thread: no spills); 16 rows per program under the interpreter, where each program costs milliseconds
ROWS_BLOCK_N, ROWS_BLOCK_V, ROWS_WARPS = (16, 1024, 8) if INTERPRET else (1, 4096, 8)
# gradient tiles of the low-memory backward (elementwise): 32 x 128 per program, 4 warps (32 values a thread)
TILE_BLOCK_N, TILE_BLOCK_V = (64, 256) if INTERPRET else (32, 128)


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


def sm90_variants() -> list[dict]:
    """The launch configurations used at s1's shapes, for ``compile_check.compile_variants``."""
    out = []
    # which strides are 1 (Triton turns them into constants at launch) for row-major h [N,H], W [V,H],
    # z/dz [C,V], dW [V,H]; every other int is a multiple of 16 at s1's shapes (H 5120, V 152064)
    unit = {"dh = dz W": ("sak", "sbn", "scn"), "dW += dz^T h": ("sam", "sbn", "scn"),
            "dW = dz^T h": ("sam", "sbn", "scn")}
    for dt, name in (("*bf16", "bf16"), ("*fp32", "fp32")):
        lowp = dt == "*bf16"
        blocks, warps, stages = mm_config(lowp)
        launch = dict(num_warps=warps, num_stages=stages)
        for label, c, acc in (("dh = dz W", dt, False), ("dW += dz^T h", "*fp32", True), ("dW = dz^T h", dt, False)):
            ints = [k for k in ("M", "N", "K", "sam", "sak", "sbk", "sbn", "scm", "scn") if k not in unit[label]]
            out.append(dict(name=f"flce matmul {label} ({name})", fn=_matmul_kernel,
                            signature=dict(a_ptr=dt, b_ptr=dt, c_ptr=c, **{k: "i32" for k in ints}),
                            constexprs=dict(ACCUMULATE=acc, LOWP=lowp, UPCAST=False, **{k: 1 for k in unit[label]},
                                            **blocks), divisible=ints, **launch))
        # the logits GEMMs: h [C, H] against W^T (unit strides sak, sbk and the output's column stride)
        logits = dict(HAS_BIAS=True, HAS_SOFTCAP=True, LOWP=lowp, UPCAST=False, sak=1, sbk=1, **blocks)
        ints = ("M", "N", "K", "sam", "sbn", "scm", "n_tiles")
        out.append(dict(name=f"flce logits + row statistics, bias, softcap ({name})", fn=_logits_stats_kernel,
                        signature=dict(a_ptr=dt, b_ptr=dt, c_ptr="*fp32", bias_ptr=dt, t_ptr="*i64",
                                       stats_ptr="*fp32", **{k: "i32" for k in ints}, softcap="fp32"),
                        constexprs=dict(logits, scn=1), divisible=ints, **launch))
        ints = ("M", "N", "K", "sam", "sbn", "sgm", "col0", "vocab")
        out.append(dict(name=f"flce logits -> dz from lse, bias, softcap (low-memory backward, {name})",
                        fn=_logits_grad_kernel,
                        signature=dict(a_ptr=dt, b_ptr=dt, g_ptr=dt, bias_ptr=dt, t_ptr="*i64", w_ptr="*fp32",
                                       lse_ptr="*fp32", **{k: "i32" for k in ints}, ignore_index="i32",
                                       smoothing="fp32", z_loss="fp32", softcap="fp32"),
                        constexprs=dict(logits, sgn=1), divisible=ints, **launch))
    for dt in ("*fp32", "*bf16"):  # fp32 chunk buffer (fused path) and bf16 logits (cross_entropy)
        out.append(dict(name=f"ce rows, softcap, grad ({dt[1:]} logits)", fn=_ce_rows_kernel,
                        signature=dict(z_ptr=dt, z_stride="i32", g_ptr=dt, g_stride="i32", t_ptr="*i64",
                                       w_ptr="*fp32", loss_ptr="*fp32", lse_ptr="*fp32", n_rows="i32",
                                       n_cols="i32", ignore_index="i32", smoothing="fp32", z_loss="fp32",
                                       softcap="fp32"),
                        constexprs=dict(HAS_SOFTCAP=True, WRITE_GRAD=True, BLOCK_N=ROWS_BLOCK_N,
                                        BLOCK_V=ROWS_BLOCK_V), num_warps=ROWS_WARPS, num_stages=3,
                        divisible=("z_stride", "g_stride", "n_cols")))
    out.append(dict(name="ce grad tile, softcap (dz from z and lse, bf16 dz)", fn=_ce_grad_tile_kernel,
                    signature=dict(z_ptr="*fp32", z_stride="i32", g_ptr="*bf16", g_stride="i32", t_ptr="*i64",
                                   w_ptr="*fp32", lse_ptr="*fp32", n_rows="i32", n_cols="i32", ignore_index="i32",
                                   smoothing="fp32", z_loss="fp32", softcap="fp32"),
                    constexprs=dict(HAS_SOFTCAP=True, BLOCK_N=TILE_BLOCK_N, BLOCK_V=TILE_BLOCK_V), num_warps=4,
                    num_stages=3, divisible=("z_stride", "g_stride", "n_cols")))
    return out


def _logits_rows_triton(h, weight, bias, z, g, target, w, loss, lse, stats, cfg, write_grad: bool) -> None:
    """Steps 1-2 of a chunk on the GPU: the logits GEMM with each row's statistics per column tile in its
    epilogue (``_logits_stats_kernel``), their combination into lse and the loss (a few [C, tiles] tensor
    ops, no host sync), then dz = w dl/dz from z and lse (``_ce_grad_tile_kernel``). z is read once after the
    GEMM writes it, where the row kernel read it twice."""
    M, K = h.shape
    N = weight.shape[0]
    wt = weight.t()
    lowp = wt.dtype in (torch.bfloat16, torch.float16)
    blocks, warps, stages = mm_config(lowp)
    n_tiles = triton.cdiv(N, blocks["BN"])
    st = stats[: 4 * M * n_tiles].view(4, M, n_tiles)
    softcap = cfg["softcap"]
    grid = (triton.cdiv(M, blocks["BM"]) * n_tiles,)
    _logits_stats_kernel[grid](h, wt, z, bias if bias is not None else z, target, st, M, N, K, h.stride(0),
                               h.stride(1), wt.stride(0), wt.stride(1), z.stride(0), z.stride(1), n_tiles,
                               float(softcap or 1.0), HAS_BIAS=bias is not None, HAS_SOFTCAP=softcap is not None,
                               LOWP=lowp, UPCAST=INTERPRET, num_warps=warps, num_stages=stages, **blocks)
    m, srow, zt, zsum = st.unbind(0)
    mx = m.amax(1)
    lse.copy_(mx + (srow * torch.exp(m - mx.unsqueeze(1))).sum(1).log())
    loss.copy_(_row_loss(lse, zt.sum(1), zsum.sum(1), target, w, cfg, N))
    if write_grad:
        _grad_tile_triton(z, g, target, w, lse, cfg)


def stats_elements(rows: int, v: int, dtype: torch.dtype) -> int:
    """fp32 elements of the statistics buffer ``_logits_rows_triton`` needs for ``rows`` rows of V=v logits
    with GEMM operands of ``dtype`` (the column tile, and so the number of tiles, depends on it)."""
    return 4 * rows * triton.cdiv(v, mm_config(dtype in (torch.bfloat16, torch.float16))[0]["BN"])


def _rows_triton(z, g, target, w, loss, lse, cfg, write_grad: bool) -> None:
    n_rows, n_cols = z.shape
    softcap = cfg["softcap"]
    _ce_rows_kernel[(triton.cdiv(n_rows, ROWS_BLOCK_N),)](
        z, z.stride(0), g, g.stride(0), target, w, loss, lse, n_rows, n_cols, cfg["ignore_index"],
        float(cfg["label_smoothing"]), float(cfg["z_loss"]), float(softcap or 1.0),
        HAS_SOFTCAP=softcap is not None, WRITE_GRAD=write_grad, BLOCK_N=ROWS_BLOCK_N, BLOCK_V=ROWS_BLOCK_V,
        num_warps=ROWS_WARPS)


def _rows_torch(z: torch.Tensor, target, w, cfg, write_grad: bool, inplace: bool = False):
    """The row math of ``_ce_rows_kernel`` in PyTorch (fp32 or fp64): (w * loss, lse, w * dloss/dz or None).

    With ``inplace`` (``z`` is a scratch chunk the caller owns) and a gradient to make, ``z`` becomes the
    gradient with one pass of ``exp``: p = exp(z - max) / sum, lse = max + log(sum). That single pass is what
    makes the chunked CPU path cheaper than PyTorch's unfused log_softmax + its backward (two passes).
    """
    eps, lam, cap, n_cols = cfg["label_smoothing"], cfg["z_loss"], cfg["softcap"], z.shape[1]
    valid = target != cfg["ignore_index"]
    t = torch.where(valid, target, 0).unsqueeze(1)
    if cap is not None:
        z = cap * torch.tanh(z / cap)  # kept: its derivative needs it (the one-pass path is for cap=None)
    zt = z.gather(1, t).squeeze(1)
    zsum = z.sum(1) if eps else None
    if write_grad and inplace and cap is None:
        m = z.amax(1, keepdim=True)
        g = z.sub_(m).exp_()
        ssum = g.sum(1, keepdim=True)
        lse = (m + ssum.log()).squeeze(1)
        g.div_(ssum)
    else:
        lse = torch.logsumexp(z, dim=1)
        g = torch.exp(z - lse.unsqueeze(1)) if write_grad else None
    loss = _row_loss(lse, zt, zsum, target, w, cfg, n_cols)
    if not write_grad:
        return loss, lse, None
    return loss, lse, _dlogits_torch(g, z, lse, target, w, cfg)


def _row_loss(lse, zt, zsum, target, w, cfg, vocab: int):
    """w_i * l_i of the module docstring from each row's lse, target logit and (with smoothing) sum of logits."""
    eps, lam = cfg["label_smoothing"], cfg["z_loss"]
    loss = lse - (1.0 - eps) * zt + lam * lse * lse
    if eps:
        loss = loss - (eps / vocab) * zsum
    return torch.where(target != cfg["ignore_index"], w * loss, 0.0)


def _dlogits_torch(p: torch.Tensor, z: torch.Tensor, lse, target, w, cfg, col0: int = 0, vocab: int | None = None):
    """The math of ``_dlogits`` in PyTorch, in place on p = exp(z - lse) [rows, cols] (z: the capped logits of
    vocabulary columns col0.., of a vocabulary of ``vocab``, default all of them): returns w * dloss/da."""
    eps, lam, cap = cfg["label_smoothing"], cfg["z_loss"], cfg["softcap"]
    cols = p.shape[1]
    valid = target != cfg["ignore_index"]
    if lam:
        p.mul_(1.0 + 2.0 * lam * lse.unsqueeze(1))
    if eps:
        p.sub_(eps / (vocab or cols))
    local = target - col0
    hit = valid & (local >= 0) & (local < cols)
    p.scatter_add_(1, torch.where(hit, local, 0).unsqueeze(1),
                   torch.where(hit, -(1.0 - eps), 0.0).to(p.dtype).unsqueeze(1))
    if cap is not None:
        p.mul_(1.0 - (z / cap) ** 2)
    return p.mul_(torch.where(valid, w, 0.0).to(p.dtype).unsqueeze(1))


def _default_chunk(n: int, v: int, on_gpu: bool, low_memory: bool = False) -> int:
    """Rows per chunk. GPU: the fp32 logits + bf16 dz buffers (6 bytes x C x V) take <= 2 GiB, which at
    V=152064 gives C=2304: enough rows that the dW GEMM (which reads and writes the fp32 [V, H]
    accumulator once per chunk, 8VH bytes for 2CVH FLOPs) stays compute-bound on an H100 (needs
    C/4 FLOP/byte >= 295, C >= ~1200; bench/RESULTS.md has the arithmetic). GPU, ``low_memory``: 512
    rows, the fewest that keep the logits and dh GEMMs (which have no accumulator to stream) above the
    H100's 295 FLOP/byte at H=5120 (6 x 512 x 152064 B = 0.47 GB of buffers). CPU: 64 MiB of fp32 logits."""
    if on_gpu and low_memory:
        c = 512
    elif on_gpu:
        c = (2 * 2**30) // (6 * v) // 128 * 128
    else:
        c = (64 * 2**20) // (4 * v) // 16 * 16
    return max(1, min(n, max(16, c)))


def _linear_ce_chunks(h, weight, bias, target, w, cfg, want_grad: bool, chunk: int, needs=(True, True, True)):
    """The chunk loop of the module docstring. Returns (w * loss [N], lse [N], dh, dW fp32, db fp32);
    with ``want_grad``, ``needs`` says which of dh, dW, db to compute (a frozen weight skips its GEMM)."""
    need_dh, need_dw, need_db = (want_grad and x for x in needs)
    n, hid = h.shape
    v = weight.shape[0]
    dev = h.device
    loss = torch.empty(n, dtype=torch.float32, device=dev)
    lse = torch.empty(n, dtype=torch.float32, device=dev)
    dh = torch.empty_like(h) if need_dh else None
    dw = torch.zeros((v, hid), dtype=torch.float32, device=dev) if need_dw else None
    db = torch.zeros(v, dtype=torch.float32, device=dev) if (need_db and bias is not None) else None
    triton_path = use_triton(h)
    if not triton_path:  # CPU: fp32 math on an fp32 copy of the (input-sized) weight
        wf = weight.float()
        bf = bias.float() if bias is not None else None
    else:  # one fp32 logits buffer and one gradient buffer in the GEMM operand dtype, reused by every chunk
        z_buf = torch.empty((min(n, chunk), v), dtype=torch.float32, device=dev)
        g_buf = torch.empty((min(n, chunk), v), dtype=weight.dtype, device=dev) if want_grad else z_buf
        stats = torch.empty(stats_elements(min(n, chunk), v, weight.dtype), dtype=torch.float32, device=dev)
    for s in range(0, n, chunk):
        e = min(n, s + chunk)
        hc = h[s:e]
        if triton_path:
            z, g = z_buf[: e - s], g_buf[: e - s]
            _logits_rows_triton(hc, weight, bias, z, g, target[s:e], w[s:e], loss[s:e], lse[s:e], stats, cfg,
                                want_grad)
            if need_dh:
                _mm(g, weight, dh[s:e])
            if need_dw:
                _mm(g.t(), hc, dw, accumulate=True)
        else:
            z = hc.float() @ wf.t()
            if bf is not None:
                z += bf
            loss[s:e], lse[s:e], g = _rows_torch(z, target[s:e], w[s:e], cfg, want_grad, inplace=True)
            if need_dh:
                dh[s:e] = g @ wf
            if need_dw:
                dw.addmm_(g.t(), hc.float())
        if db is not None:
            db += g.sum(0, dtype=torch.float32)
    return loss, lse, dh, dw, db


# The low-memory backward's row tile: at most this many tokens per dW tile (tests lower it to reach the
# path that accumulates a vocabulary block's dW over several token tiles).
DW_ROWS = 16384


def _dw_tiles(n: int, v: int, hid: int, chunk: int, elem_bytes: int) -> tuple[int, int]:
    """(token rows, vocabulary rows) of the low-memory backward's tiles: the tile buffers (``elem_bytes`` per
    element: the gradient tile in the weight's dtype on a GPU, the fp32 logits on a CPU) plus, when the
    tokens take several tiles, the block's fp32 dW accumulator (4 B x H per vocabulary row) take no more
    than the forward's chunk buffers (6 x chunk x V bytes)."""
    rows = max(1, min(n, DW_ROWS))
    acc = 4 * hid if rows < n else 0
    vrows = (6 * chunk * v) // (elem_bytes * rows + acc)
    return rows, max(16, min(v, vrows // 16 * 16))


def _linear_ce_dweight(h, weight, bias, target, w, lse, cfg, chunk: int):
    """The low-memory backward's weight gradient (the bias gradient comes from the chunk loop), with w the
    effective weights already times the
    incoming gradient: for each block of vocabulary rows, recompute the logits of every token against it
    (tiles of ``_dw_tiles``), turn them into w * dloss/dz with the saved ``lse`` (no row reduction), and
    dW_block = dz^T h with the reduction over tokens inside the GEMM's fp32 accumulator (one rounding to the
    weight's dtype, no [V, H] fp32 buffer). Returns dW in the weight's dtype."""
    n, hid = h.shape
    v = weight.shape[0]
    triton_path = use_triton(h)
    cap = cfg["softcap"]
    # GPU: one gradient tile in the weight's dtype; CPU: fp32 logits, exp'd in place (a second copy with softcap)
    rows, vrows = _dw_tiles(n, v, hid, chunk, weight.element_size() if triton_path else 4 * (1 + (cap is not None)))
    dev = h.device
    dw = torch.empty_like(weight) if n else torch.zeros_like(weight)  # no tokens: a zero gradient
    buf = torch.empty((rows, vrows), dtype=weight.dtype if triton_path else torch.float32, device=dev)
    acc = torch.empty((vrows, hid), dtype=torch.float32, device=dev) if rows < n else None
    hf = h if triton_path else h.float()  # CPU: fp32 math, h converted once (not once per vocabulary block)
    for vs in range(0, v, vrows):
        ve = min(v, vs + vrows)
        wb = weight[vs:ve]
        wf = wb.float() if not triton_path else None
        bb = bias[vs:ve] if bias is not None else None
        for s in range(0, n, rows):
            e = min(n, s + rows)
            hc = hf[s:e]
            if triton_path:
                g = buf[: e - s, : ve - vs]
                _logits_grad_triton(hc, wb, bb, g, target[s:e], w[s:e], lse[s:e], cfg, vs, v)
            else:
                z = buf[: e - s, : ve - vs]
                torch.mm(hc, wf.t(), out=z)
                if bb is not None:
                    z += bb.float()
                zc = z if cap is None else cap * torch.tanh(z / cap)
                p = (zc if cap is None else zc.clone()).sub_(lse[s:e].unsqueeze(1)).exp_()
                g = _dlogits_torch(p, zc, lse[s:e], target[s:e], w[s:e], cfg, vs, v)
            if acc is None:  # every token in one tile: the GEMM writes the block's gradient directly
                if triton_path:
                    _mm(g.t(), hc, dw[vs:ve])
                else:
                    dw[vs:ve] = (g.t() @ hc).to(dw.dtype)
            elif triton_path:
                _mm(g.t(), hc, acc[: ve - vs], accumulate=s > 0)
            elif s == 0:
                torch.mm(g.t(), hc, out=acc[: ve - vs])
            else:
                acc[: ve - vs].addmm_(g.t(), hc)
        if acc is not None:
            dw[vs:ve] = acc[: ve - vs]
    return dw


def _logits_grad_triton(h, wb, bb, g, target, w, lse, cfg, col0: int, vocab: int) -> None:
    """g = w * dloss/dz of the logits h wb^T (+ bb), columns col0.. of the vocabulary (``_logits_grad_kernel``)."""
    M, K = h.shape
    N = wb.shape[0]
    wt = wb.t()
    lowp = wt.dtype in (torch.bfloat16, torch.float16)
    blocks, warps, stages = mm_config(lowp)
    softcap = cfg["softcap"]
    grid = (triton.cdiv(M, blocks["BM"]) * triton.cdiv(N, blocks["BN"]),)
    _logits_grad_kernel[grid](h, wt, g, bb if bb is not None else g, target, w, lse, M, N, K, h.stride(0),
                              h.stride(1), wt.stride(0), wt.stride(1), g.stride(0), g.stride(1), col0, vocab,
                              cfg["ignore_index"], float(cfg["label_smoothing"]), float(cfg["z_loss"]),
                              float(softcap or 1.0), HAS_BIAS=bb is not None, HAS_SOFTCAP=softcap is not None,
                              LOWP=lowp, UPCAST=INTERPRET, num_warps=warps, num_stages=stages, **blocks)


def _grad_tile_triton(z, g, target, w, lse, cfg) -> None:
    softcap = cfg["softcap"]
    n_rows, n_cols = z.shape
    grid = (triton.cdiv(n_rows, TILE_BLOCK_N), triton.cdiv(n_cols, TILE_BLOCK_V))
    _ce_grad_tile_kernel[grid](z, z.stride(0), g, g.stride(0), target, w, lse, n_rows, n_cols,
                               cfg["ignore_index"], float(cfg["label_smoothing"]), float(cfg["z_loss"]),
                               float(softcap or 1.0), HAS_SOFTCAP=softcap is not None, BLOCK_N=TILE_BLOCK_N,
                               BLOCK_V=TILE_BLOCK_V, num_warps=4)


# ------------------------------------------------------------------------------ weights and checks
_REDUCTIONS = ("mean", "sum", "none")


def _effective_weights(target, cfg, token_weight, normalizer, reduction):
    """w_i of the module docstring, already divided by D for "mean" (fp32, 0 at ignored tokens)."""
    valid = target != cfg["ignore_index"]
    w = valid.float() if token_weight is None else torch.where(valid, token_weight.float(), 0.0)
    if reduction == "mean":
        d = w.sum() if normalizer is None else torch.as_tensor(normalizer, dtype=torch.float32,
                                                               device=w.device)
        w = torch.where(d != 0, w / d, 0.0)
    return w.contiguous()


def _check_args(name, n, target, reduction, token_weight, normalizer, label_smoothing, softcap):
    if reduction not in _REDUCTIONS:
        raise ValueError(f"{name}: reduction={reduction!r}; use one of {_REDUCTIONS}")
    if normalizer is not None and reduction != "mean":
        raise ValueError(f"{name}: normalizer is only meaningful with reduction='mean' (got {reduction!r}); "
                         f"for 'sum' fold it into token_weight")
    if target.dim() != 1 or target.shape[0] != n:
        raise ValueError(f"{name}: target {tuple(target.shape)} must be [N={n}] (flatten batch and sequence)")
    if token_weight is not None and tuple(token_weight.shape) != (n,):
        raise ValueError(f"{name}: token_weight {tuple(token_weight.shape)} must be [N={n}]")
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"{name}: label_smoothing={label_smoothing} must lie in [0, 1]")
    if softcap is not None and not softcap > 0:
        raise ValueError(f"{name}: softcap={softcap} must be positive (or None)")


def _full(t):
    """A sharded DTensor (FSDP2 parameter) -> the full local tensor: an all-gather forward, and in backward
    a reduce-scatter that SUMS the ranks' gradients (grad placement Partial). ``full_tensor()`` would
    instead hand each rank only the slice of its own gradient, silently dropping the other ranks' data."""
    if t is None or not hasattr(t, "placements"):
        return t
    from torch.distributed.tensor import Partial, Replicate
    n = t.device_mesh.ndim
    return t.redistribute(t.device_mesh, [Replicate()] * n).to_local(grad_placements=[Partial()] * n)


# -------------------------------------------------------------------------------- autograd functions
def _scale_(x: torch.Tensor, g: torch.Tensor, rows: int = 4096) -> torch.Tensor:
    """x *= g in place, g a 0-dim fp32 tensor (the incoming gradient; no host sync), the product made in fp32
    and rounded once to x's dtype; a bf16 x is scaled ``rows`` rows at a time, so the fp32 temporary stays a
    chunk, not a copy of x (the memory the fused loss exists to save)."""
    if x.dtype in (torch.float32, torch.float64):
        return x.mul_(g.to(x.dtype))
    for s in range(0, x.shape[0], rows):
        x[s:s + rows].copy_(x[s:s + rows].float().mul_(g))
    return x


class FusedLinearCrossEntropyFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, weight, bias, target, w, cfg, want_grad, chunk):
        eager = want_grad and cfg["reduction"] != "none"
        ctx.needs = ctx.needs_input_grad[:3]
        ctx.low = cfg["low_memory"] and ctx.needs[1]  # dW by the low-memory backward, not in the chunk loop
        needs = (ctx.needs[0], ctx.needs[1] and not ctx.low, ctx.needs[2])
        loss_rows, lse, dh, dw, db = _linear_ce_chunks(h, weight, bias, target, w, cfg, eager, chunk, needs)
        ctx.cfg, ctx.chunk, ctx.dtypes = cfg, chunk, (weight.dtype, bias.dtype if bias is not None else None)
        ctx.grads = (dh, dw, db) if eager else None
        if not eager or ctx.low:
            ctx.save_for_backward(h, weight, bias, target, w, lse)
        out = loss_rows if cfg["reduction"] == "none" else loss_rows.sum()
        ctx.mark_non_differentiable(lse)
        return out, lse

    @staticmethod
    def backward(ctx, g, _glse):
        wdt, bdt = ctx.dtypes
        g = g.float()
        if ctx.cfg["reduction"] == "none":
            h, weight, bias, target, w, lse = ctx.saved_tensors
            w = (w * g).contiguous()
            needs = (ctx.needs[0], ctx.needs[1] and not ctx.low, ctx.needs[2])
            _, _, dh, dw, db = _linear_ce_chunks(h, weight, bias, target, w, ctx.cfg, True, ctx.chunk, needs)
        else:
            if ctx.grads is None:
                raise RuntimeError("fused_linear_cross_entropy: backward ran twice over one forward "
                                   "(retain_graph); run the forward again instead")
            dh, dw, db = ctx.grads
            ctx.grads = None  # scaled in place below: a second backward must not reuse them
            if dh is not None:
                _scale_(dh, g)
            if dw is not None:
                dw.mul_(g)
            if db is not None:
                db.mul_(g)
            if ctx.low:
                h, weight, bias, target, w, lse = ctx.saved_tensors
                w = (w * g).contiguous()
        if ctx.low:
            dw = _linear_ce_dweight(h, weight, bias, target, w, lse, ctx.cfg, ctx.chunk)
        return (dh, dw.to(wdt) if dw is not None else None, db.to(bdt) if db is not None else None,
                None, None, None, None, None)


class CrossEntropyFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, target, w, cfg, want_grad):
        eager = want_grad and cfg["reduction"] != "none"
        loss, lse, grad = _ce_rows(logits, target, w, cfg, eager)
        ctx.cfg = cfg
        if eager:
            ctx.grads = grad
        else:
            ctx.save_for_backward(logits, target, w)
        ctx.mark_non_differentiable(lse)
        return (loss if cfg["reduction"] == "none" else loss.sum()), lse

    @staticmethod
    def backward(ctx, g, _glse):
        if ctx.cfg["reduction"] == "none":
            logits, target, w = ctx.saved_tensors
            _, _, grad = _ce_rows(logits, target, (w * g.float()).contiguous(), ctx.cfg, True)
        else:
            if ctx.grads is None:
                raise RuntimeError("cross_entropy: backward ran twice over one forward (retain_graph)")
            grad, ctx.grads = ctx.grads, None
            _scale_(grad, g)
        return grad, None, None, None, None


def _ce_rows(logits, target, w, cfg, write_grad):
    n = logits.shape[0]
    if use_triton(logits):
        loss = torch.empty(n, dtype=torch.float32, device=logits.device)
        lse = torch.empty_like(loss)
        grad = torch.empty_like(logits) if write_grad else logits
        _rows_triton(logits, grad, target, w, loss, lse, cfg, write_grad)
        return loss, lse, (grad if write_grad else None)
    loss, lse, grad = _rows_torch(logits.float(), target, w, cfg, write_grad)
    return loss, lse, (grad.to(logits.dtype) if grad is not None else None)


# --------------------------------------------------------------------------------- functional API
def prepare_linear_ce(hidden, weight, target, bias, *, ignore_index, label_smoothing, z_loss, softcap, reduction,
                      token_weight, normalizer, chunk_size, low_memory=False):
    """Check and normalise the arguments (shared with the custom op in ``custom_ops``).

    Returns (hidden [N, H], weight, bias, target [N], w_eff [N] fp32, cfg, want_grad, chunk).
    """
    weight, bias = _full(weight), _full(bias)
    hidden = hidden.reshape(-1, hidden.shape[-1])
    target = target.reshape(-1)
    n, hid = hidden.shape
    _check_args("fused_linear_cross_entropy", n, target, reduction, token_weight, normalizer, label_smoothing,
                softcap)
    if weight.dim() != 2 or weight.shape[1] != hid:
        raise ValueError(f"fused_linear_cross_entropy: weight {tuple(weight.shape)} must be [V, H={hid}] "
                         f"(the lm_head layout: vocab rows), for hidden {tuple(hidden.shape)}")
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(f"fused_linear_cross_entropy: bias {tuple(bias.shape)} must be [V={weight.shape[0]}]")
    if use_triton(hidden):
        hidden = hidden if hidden.stride(-1) == 1 else hidden.contiguous()
        if weight.dtype != hidden.dtype:  # one operand dtype for the GEMMs (fp32 weight under bf16 autocast)
            weight = weight.to(hidden.dtype)
    cfg = dict(ignore_index=int(ignore_index), label_smoothing=float(label_smoothing), z_loss=float(z_loss),
               softcap=None if softcap is None else float(softcap), reduction=reduction, low_memory=bool(low_memory))
    w = _effective_weights(target, cfg, token_weight, normalizer, reduction)
    want_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (hidden, weight, bias))
    chunk = int(chunk_size) if chunk_size else _default_chunk(n, weight.shape[0], hidden.is_cuda, low_memory)
    return hidden, weight, bias, target.contiguous(), w, cfg, want_grad, chunk


def fused_linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, target: torch.Tensor,
                               bias: torch.Tensor | None = None, *, ignore_index: int = -100,
                               label_smoothing: float = 0.0, z_loss: float = 0.0, softcap: float | None = None,
                               reduction: str = "mean", token_weight: torch.Tensor | None = None,
                               normalizer: float | torch.Tensor | None = None, return_lse: bool = False,
                               chunk_size: int | None = None, low_memory: bool = False):
    """Cross-entropy of ``hidden @ weight.T (+ bias)`` against ``target`` without the [N, V] logits.

    hidden [N, H] (any leading dims are flattened), weight [V, H] (may be an FSDP2 DTensor), target [N].
    Semantics of every keyword: module docstring. Returns the loss (fp32), or (loss, lse) with return_lse.
    ``low_memory=True``: no [V, H] fp32 weight-gradient accumulator and small chunks, for a third more
    matmul FLOPs (the module docstring's "Two modes").
    """
    args = prepare_linear_ce(hidden, weight, target, bias, ignore_index=ignore_index,
                             label_smoothing=label_smoothing, z_loss=z_loss, softcap=softcap, reduction=reduction,
                             token_weight=token_weight, normalizer=normalizer, chunk_size=chunk_size,
                             low_memory=low_memory)
    loss, lse = FusedLinearCrossEntropyFunction.apply(*args)
    return (loss, lse) if return_lse else loss


def cross_entropy(logits: torch.Tensor, target: torch.Tensor, *, ignore_index: int = -100,
                  label_smoothing: float = 0.0, z_loss: float = 0.0, softcap: float | None = None,
                  reduction: str = "mean", token_weight: torch.Tensor | None = None,
                  normalizer: float | torch.Tensor | None = None, return_lse: bool = False):
    """Cross-entropy over given logits [N, V] (any leading dims flattened), one fused row kernel.

    Same semantics as ``fused_linear_cross_entropy``; the gradient is computed in the forward into a
    tensor shaped like the logits (and in their dtype), so no fp32 softmax copy is kept.
    """
    logits = logits.reshape(-1, logits.shape[-1])
    if logits.stride(-1) != 1:
        logits = logits.contiguous()
    target = target.reshape(-1)
    _check_args("cross_entropy", logits.shape[0], target, reduction, token_weight, normalizer, label_smoothing,
                softcap)
    cfg = dict(ignore_index=int(ignore_index), label_smoothing=float(label_smoothing), z_loss=float(z_loss),
               softcap=None if softcap is None else float(softcap), reduction=reduction)
    w = _effective_weights(target, cfg, token_weight, normalizer, reduction)
    want_grad = torch.is_grad_enabled() and logits.requires_grad
    loss, lse = CrossEntropyFunction.apply(logits, target.contiguous(), w, cfg, want_grad)
    return (loss, lse) if return_lse else loss


def fused_linear_cross_entropy_reference(hidden, weight, target, bias=None, *, ignore_index=-100,
                                         label_smoothing=0.0, z_loss=0.0, softcap=None, reduction="mean",
                                         token_weight=None, normalizer=None):
    """The unfused definition (full logits), in the inputs' dtype: the tests' reference and baseline."""
    logits = hidden.reshape(-1, hidden.shape[-1]) @ weight.t()
    if bias is not None:
        logits = logits + bias
    target = target.reshape(-1)
    if softcap is not None:
        logits = softcap * torch.tanh(logits / softcap)
    valid = target != ignore_index
    t = torch.where(valid, target, 0)
    lse = torch.logsumexp(logits, dim=-1)
    nll = lse - logits.gather(1, t[:, None]).squeeze(1)
    smooth = lse - logits.mean(-1)
    loss = (1 - label_smoothing) * nll + label_smoothing * smooth + z_loss * lse * lse
    w = valid.to(loss.dtype) if token_weight is None else torch.where(valid, token_weight.to(loss.dtype), 0.0)
    loss = torch.where(valid, loss * w, 0.0)
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    d = w.sum() if normalizer is None else torch.as_tensor(normalizer, dtype=loss.dtype)
    return torch.where(d != 0, loss.sum() / d, 0.0)


class FusedLinearCrossEntropy(torch.nn.Module):
    """Module form: ``FusedLinearCrossEntropy(**options)(hidden, weight, target, bias=None)`` (hidden first)."""

    def __init__(self, **options):
        super().__init__()
        self.options = options

    def forward(self, hidden, weight, target, bias=None):
        return fused_linear_cross_entropy(hidden, weight, target, bias, **self.options)
