"""Per-token log-probabilities (and entropy) of given targets from hidden states and the lm_head weight,
without the [N, V] logits: the quantity every policy-gradient trainer (GRPO, PPO) needs.

    logp, ent = token_logprobs(hidden [N, H], weight [V, H], target [N], *, temperature=1.0,
                               entropy=False, ignore_index=-100, chunk_size=None)

With z = h W^T / T: logp_i = z_it - lse_i, ent_i = lse_i - sum_j p_ij z_ij (fp32 [N]; ``ent`` only with
``entropy=True``); ignored targets give 0 and no gradient. GPU: a flash-style forward in O(N) memory and a
backward that recomputes the logits by token chunks and vocabulary blocks, no host sync; CPU: the same math in
fp32 (fp64 for fp64 inputs). The backward formula and the tiling: docs/rl.md; memory: bench/RESULTS.md.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._runtime import INTERPRET, _full, use_triton
# the matmul helpers of the fused loss, imported in this one place
from .matmul_tiles import _logits_tile, _mm, _mm_loop, mm_config
from .cross_entropy_op import check_chunk_size
from .targets import check_target_dtype, check_targets

# Scratch budget of the GPU backward's gradient tiles (bytes): 256 MiB, under 0.5% of the full-logits
# path at N=32768, V=152064; enough rows per tile that the recompute GEMMs stay compute-bound.
BUFFER_BYTES = 256 * 2**20
DW_ROWS = 16384  # token rows per dW tile (tests lower it to reach the fp32 accumulation over tiles)


# ----------------------------------------------------------------------------------------- kernels
@triton.jit
def _logprob_fwd_kernel(a_ptr, b_ptr, t_ptr, logp_ptr, ent_ptr, lse_ptr, M, N, K, sam, sak, sbk, sbn,
                        ignore_index, inv_temp, ENTROPY: tl.constexpr, LOWP: tl.constexpr, UPCAST: tl.constexpr,
                        BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    """One program per BM rows of h [M, K]; walks the vocabulary (b = W^T [K, N]) in BN-column tiles with an
    online log-sum-exp. Writes logp, lse and (ENTROPY) the entropy of each row: fp32 [M]."""
    pid_m = tl.program_id(0)
    rm = pid_m * BM + tl.arange(0, BM)
    rmask = rm < M
    tgt = tl.load(t_ptr + rm, mask=rmask, other=ignore_index).to(tl.int64)
    m = tl.full((BM,), float("-inf"), dtype=tl.float32)
    s = tl.zeros((BM,), dtype=tl.float32)
    u = tl.zeros((BM,), dtype=tl.float32)
    zt = tl.zeros((BM,), dtype=tl.float32)
    for pid_n in range(0, tl.cdiv(N, BN)):
        acc = _mm_loop(a_ptr, b_ptr, M, N, K, sam, sak, sbk, sbn, pid_m, pid_n,
                       tl.zeros((BM, BN), dtype=tl.float32), LOWP, UPCAST, BM, BN, BK)
        z = acc * inv_temp
        rn = pid_n * BN + tl.arange(0, BN)
        cmask = (rn < N)[None, :]
        m_new = tl.maximum(m, tl.max(tl.where(cmask, z, float("-inf")), axis=1))
        scale = tl.exp(m - m_new)
        e = tl.where(cmask, tl.exp(z - m_new[:, None]), 0.0)
        s = s * scale + tl.sum(e, axis=1)
        if ENTROPY:
            u = u * scale + tl.sum(e * tl.where(cmask, z, 0.0), axis=1)
        zt += tl.sum(tl.where(rn[None, :] == tgt[:, None], z, 0.0), axis=1)
        m = m_new
    lse = m + tl.log(s)
    valid = rmask & (tgt != ignore_index)
    tl.store(logp_ptr + rm, tl.where(valid, zt - lse, 0.0), mask=rmask)
    tl.store(lse_ptr + rm, lse, mask=rmask)
    if ENTROPY:
        tl.store(ent_ptr + rm, tl.where(valid, lse - u / s, 0.0), mask=rmask)


@triton.jit
def _logprob_grad_kernel(a_ptr, b_ptr, g_ptr, t_ptr, glp_ptr, gent_ptr, lse_ptr, ent_ptr, M, N, K, sam, sak, sbk,
                         sbn, sgm, sgn, col0, ignore_index, inv_temp, ENTROPY: tl.constexpr, LOWP: tl.constexpr,
                         UPCAST: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
                         GROUP_M: tl.constexpr):
    """A tile of the logits h W_block^T and, in the GEMM's epilogue, g = d(sum a logp + b ent)/d(hW^T) for
    vocabulary columns col0.. from the saved lse (and entropy), stored in g's dtype."""
    acc, pid_m, pid_n, rm, rn = _logits_tile(a_ptr, b_ptr, a_ptr, M, N, K, sam, sak, sbk, sbn, False, LOWP,
                                             UPCAST, BM, BN, BK, GROUP_M)
    rmask = rm < M
    tgt = tl.load(t_ptr + rm, mask=rmask, other=ignore_index).to(tl.int64)
    valid = rmask & (tgt != ignore_index)
    ga = tl.load(glp_ptr + rm, mask=valid, other=0.0)
    lse = tl.load(lse_ptr + rm, mask=rmask, other=0.0)
    z = acc * inv_temp
    p = tl.exp(z - lse[:, None])
    g = tl.where((col0 + rn)[None, :] == tgt[:, None], ga[:, None] * (1.0 - p), -ga[:, None] * p)
    if ENTROPY:
        gb = tl.load(gent_ptr + rm, mask=valid, other=0.0)
        ent = tl.load(ent_ptr + rm, mask=rmask, other=0.0)
        g -= gb[:, None] * p * (z - lse[:, None] + ent[:, None])
    g = tl.where(valid[:, None], g * inv_temp, 0.0)
    g_bp = tl.make_block_ptr(g_ptr, (M, N), (sgm, sgn), (pid_m * BM, pid_n * BN), (BM, BN), (1, 0))
    tl.store(g_bp, g.to(g_ptr.dtype.element_ty), boundary_check=(0, 1))


# --------------------------------------------------------------------------------------- launchers
def fwd_config(lowp: bool) -> tuple[dict, int, int]:
    """(tiles, num_warps, num_stages) of the forward kernel, for 0 spills on sm_90: the fused loss's GEMM
    tiles in bf16 (wgmma); in fp32 128x64x32 (its 64x64 tile spilled 8 bytes with 8 warps, 2 stages)."""
    if lowp or INTERPRET:
        return mm_config(lowp)
    return dict(BM=128, BN=64, BK=32), 8, 2


def _fwd_triton(h, weight, target, cfg):
    n, k = h.shape
    v = weight.shape[0]
    wt = weight.t()
    lowp = wt.dtype in (torch.bfloat16, torch.float16)
    blocks, warps, stages = fwd_config(lowp)
    logp = torch.empty(n, dtype=torch.float32, device=h.device)
    lse = torch.empty_like(logp)
    ent = torch.empty_like(logp) if cfg["entropy"] else logp
    _logprob_fwd_kernel[(triton.cdiv(n, blocks["BM"]),)](
        h, wt, target, logp, ent, lse, n, v, k, h.stride(0), h.stride(1), wt.stride(0), wt.stride(1),
        cfg["ignore_index"], 1.0 / cfg["temperature"], ENTROPY=cfg["entropy"], LOWP=lowp, UPCAST=INTERPRET,
        BM=blocks["BM"], BN=blocks["BN"], BK=blocks["BK"], num_warps=warps, num_stages=stages)
    return logp, (ent if cfg["entropy"] else None), lse


def _grad_triton(h, wb, g, target, glp, gent, lse, ent, cfg, col0: int) -> None:
    m, k = h.shape
    nb = wb.shape[0]
    wt = wb.t()
    lowp = wt.dtype in (torch.bfloat16, torch.float16)
    blocks, warps, stages = mm_config(lowp)
    grid = (triton.cdiv(m, blocks["BM"]) * triton.cdiv(nb, blocks["BN"]),)
    _logprob_grad_kernel[grid](h, wt, g, target, glp, gent if gent is not None else glp, lse,
                               ent if ent is not None else lse, m, nb, k, h.stride(0), h.stride(1), wt.stride(0),
                               wt.stride(1), g.stride(0), g.stride(1), col0, cfg["ignore_index"],
                               1.0 / cfg["temperature"], ENTROPY=gent is not None, LOWP=lowp, UPCAST=INTERPRET,
                               num_warps=warps, num_stages=stages, **blocks)


def _tiles(n: int, v: int, hid: int, elem: int, chunk: int | None) -> tuple[int, int, int]:
    """(token rows of the dh pass, token rows and vocabulary rows of the dW pass) within BUFFER_BYTES."""
    c = max(16, min(n, chunk or BUFFER_BYTES // (elem * v)))
    rows = max(1, min(n, DW_ROWS))
    acc = 4 * hid if rows < n else 0
    vrows = max(16, min(v, BUFFER_BYTES // (elem * rows + acc) // 16 * 16))
    return c, rows, vrows


def _bwd_triton(h, weight, target, lse, ent, glp, gent, cfg, need_dh: bool, need_dw: bool, chunk):
    n, hid = h.shape
    v = weight.shape[0]
    c, rows, vrows = _tiles(n, v, hid, weight.element_size(), chunk)
    dh = dw = None
    if need_dh:  # pass A: dh = dz W by token chunks, each against the whole vocabulary
        dh = torch.empty_like(h)
        buf = torch.empty((min(n, c), v), dtype=weight.dtype, device=h.device)
        for s in range(0, n, c):
            e = min(n, s + c)
            g = buf[: e - s]
            _grad_triton(h[s:e], weight, g, target[s:e], glp[s:e], _sl(gent, s, e), lse[s:e], _sl(ent, s, e), cfg, 0)
            _mm(g, weight, dh[s:e])
        g = buf = None  # pass B's tiles take the same budget
    if need_dw:  # pass B: dW = dz^T h by vocabulary blocks, the tokens reduced inside the GEMMs
        dw = torch.empty_like(weight) if n else torch.zeros_like(weight)
        buf = torch.empty((rows, vrows), dtype=weight.dtype, device=h.device)
        acc = torch.empty((vrows, hid), dtype=torch.float32, device=h.device) if rows < n else None
        for vs in range(0, v, vrows):
            ve = min(v, vs + vrows)
            for s in range(0, n, rows):
                e = min(n, s + rows)
                g = buf[: e - s, : ve - vs]
                _grad_triton(h[s:e], weight[vs:ve], g, target[s:e], glp[s:e], _sl(gent, s, e), lse[s:e],
                             _sl(ent, s, e), cfg, vs)
                _mm(g.t(), h[s:e], dw[vs:ve] if acc is None else acc[: ve - vs], accumulate=acc is not None and s > 0)
            if acc is not None:
                dw[vs:ve] = acc[: ve - vs]
    return dh, dw


def _sl(x, s, e):
    return None if x is None else x[s:e]


# --------------------------------------------------------------------------------- PyTorch path
def _cpu_chunk(n: int, v: int, chunk: int | None) -> int:
    return max(1, min(n, chunk or max(16, (64 * 2**20) // (4 * v))))  # 64 MiB of fp32 logits


def _fwd_torch(h, weight, target, cfg, chunk):
    n = h.shape[0]
    dt = torch.float64 if h.dtype == torch.float64 else torch.float32
    wf = weight.to(dt)
    logp = torch.empty(n, dtype=dt, device=h.device)
    lse = torch.empty_like(logp)
    ent = torch.empty_like(logp) if cfg["entropy"] else None
    valid = target != cfg["ignore_index"]
    t = torch.where(valid, target, 0)
    c = _cpu_chunk(n, weight.shape[0], chunk)
    for s in range(0, n, c):
        e = min(n, s + c)
        z = (h[s:e].to(dt) @ wf.t()).div_(cfg["temperature"])
        ls = torch.logsumexp(z, 1)
        lse[s:e] = ls
        logp[s:e] = torch.where(valid[s:e], z.gather(1, t[s:e, None]).squeeze(1) - ls, 0.0)
        if ent is not None:
            p = torch.exp(z - ls[:, None])
            ent[s:e] = torch.where(valid[s:e], ls - (p * z).sum(1), 0.0)
    return logp, ent, lse


def _bwd_torch(h, weight, target, lse, ent, glp, gent, cfg, need_dh, need_dw, chunk):
    n = h.shape[0]
    dt = lse.dtype
    wf = weight.to(dt)
    valid = target != cfg["ignore_index"]
    t = torch.where(valid, target, 0)
    a = torch.where(valid, glp.to(dt), 0.0)
    b = torch.where(valid, gent.to(dt), 0.0) if gent is not None else None
    dh = torch.empty(h.shape, dtype=dt, device=h.device) if need_dh else None
    dw = torch.zeros(weight.shape, dtype=dt, device=h.device) if need_dw else None
    c = _cpu_chunk(n, weight.shape[0], chunk)
    for s in range(0, n, c):
        e = min(n, s + c)
        hc = h[s:e].to(dt)
        z = (hc @ wf.t()).div_(cfg["temperature"])
        p = torch.exp(z - lse[s:e, None])
        g = p * -a[s:e, None]
        g.scatter_add_(1, t[s:e, None], a[s:e, None])
        if b is not None:
            g -= b[s:e, None] * p * (z - lse[s:e, None] + ent[s:e, None])
        g /= cfg["temperature"]
        if need_dh:
            dh[s:e] = g @ wf
        if need_dw:
            dw.addmm_(g.t(), hc)
    return (dh.to(h.dtype) if need_dh else None), (dw.to(weight.dtype) if need_dw else None)


# --------------------------------------------------------------------------- dispatch and autograd
def _triton_path(h) -> bool:
    return use_triton(h) and h.dtype != torch.float64  # fp64: the reference precision, PyTorch path


def logprob_forward(h, weight, target, cfg, chunk=None):
    """(logp [N], entropy [N] or None, lse [N]) in fp32 (fp64 for fp64 inputs)."""
    # a target outside the vocabulary matched no column: the kernel gave -lse as its log-probability, silently
    check_targets("token_logprobs", target, weight.shape[0], cfg["ignore_index"])
    if _triton_path(h):
        return _fwd_triton(h, weight, target, cfg)
    return _fwd_torch(h, weight, target, cfg, chunk)


def logprob_backward(h, weight, target, lse, ent, glp, gent, cfg, need_dh=True, need_dw=True, chunk=None):
    """(dh in h's dtype or None, dW in the weight's dtype or None) for incoming gradients glp (and gent)."""
    glp = glp.float().contiguous() if glp.dtype != torch.float64 else glp.contiguous()
    gent = None if gent is None else gent.to(glp.dtype).contiguous()
    if _triton_path(h):
        return _bwd_triton(h, weight, target, lse, ent, glp, gent, cfg, need_dh, need_dw, chunk)
    return _bwd_torch(h, weight, target, lse, ent, glp, gent, cfg, need_dh, need_dw, chunk)


def prepare(hidden, weight, target, *, temperature, entropy, ignore_index):
    """Check and normalise the arguments: (h [N, H], weight [V, H], target [N], cfg)."""
    weight = _full(weight)
    h = hidden.reshape(-1, hidden.shape[-1])
    target = target.reshape(-1).contiguous()
    if weight.dim() != 2 or weight.shape[1] != h.shape[1]:
        raise ValueError(f"token_logprobs: weight {tuple(weight.shape)} must be [V, H={h.shape[1]}] (the lm_head "
                         f"layout) for hidden {tuple(hidden.shape)}")
    check_target_dtype("token_logprobs", target)
    if target.shape[0] != h.shape[0]:
        raise ValueError(f"token_logprobs: target has {target.shape[0]} tokens, hidden {h.shape[0]}")
    if not temperature > 0:
        raise ValueError(f"token_logprobs: temperature={temperature} must be positive")
    if _triton_path(h):
        h = h if h.stride(-1) == 1 else h.contiguous()
        if weight.dtype != h.dtype:
            weight = weight.to(h.dtype)
    cfg = dict(temperature=float(temperature), entropy=bool(entropy), ignore_index=int(ignore_index))
    return h, weight, target, cfg


def token_logprobs(hidden: torch.Tensor, weight: torch.Tensor, target: torch.Tensor, *, temperature: float = 1.0,
                   entropy: bool = False, ignore_index: int = -100, chunk_size: int | None = None):
    """log softmax(hidden @ weight.T / temperature)[target] per token, and the entropy with ``entropy=True``.

    hidden [..., H] (flattened to [N, H]), weight [V, H] (may be an FSDP2 DTensor), target [N]. Returns
    (logp [N], entropy [N] or None), fp32 (fp64 for fp64 inputs), differentiable in hidden and weight.
    """
    check_chunk_size("token_logprobs", chunk_size)
    h, w, t, cfg = prepare(hidden, weight, target, temperature=temperature, entropy=entropy,
                           ignore_index=ignore_index)
    # the registered op of logprob_custom_op (imported by the package): its autograd formula
    logp, ent, _ = torch.ops.s1fast_kernels.token_logprobs(h, w, t, cfg["ignore_index"], cfg["temperature"],
                                                           cfg["entropy"], chunk_size and int(chunk_size),
                                                           h.requires_grad, w.requires_grad)
    return logp, (ent if entropy else None)


def token_logprobs_reference(hidden, weight, target, *, temperature=1.0, entropy=False, ignore_index=-100):
    """The full-logits definition in the inputs' dtype: the tests' reference and the memory baseline."""
    z = (hidden.reshape(-1, hidden.shape[-1]) @ weight.t()) / temperature
    target = target.reshape(-1)
    valid = target != ignore_index
    lsm = torch.log_softmax(z.float() if z.dtype in (torch.bfloat16, torch.float16) else z, -1)
    logp = torch.where(valid, lsm.gather(1, torch.where(valid, target, 0)[:, None]).squeeze(1), 0.0)
    if not entropy:
        return logp, None
    return logp, torch.where(valid, -(lsm.exp() * lsm).sum(1), 0.0)


# ------------------------------------------------------------------------------------ sm_90 variants
def sm90_variants() -> list[dict]:
    """The forward and gradient-tile kernels at s1's shapes (for ``compile_check.compile_variants``)."""
    out = []
    for dt, name in (("*bf16", "bf16"), ("*fp32", "fp32")):
        lowp = dt == "*bf16"
        blocks, warps, stages = fwd_config(lowp)
        ints = ("M", "N", "K", "sam", "sbn")
        out.append(dict(name=f"logprob forward, online lse + entropy ({name})", fn=_logprob_fwd_kernel,
                        signature=dict(a_ptr=dt, b_ptr=dt, t_ptr="*i64", logp_ptr="*fp32", ent_ptr="*fp32",
                                       lse_ptr="*fp32", **{k: "i32" for k in ints}, ignore_index="i32",
                                       inv_temp="fp32"),
                        constexprs=dict(ENTROPY=True, LOWP=lowp, UPCAST=False, sak=1, sbk=1, BM=blocks["BM"],
                                        BN=blocks["BN"], BK=blocks["BK"]),
                        divisible=ints, num_warps=warps, num_stages=stages))
        blocks, warps, stages = mm_config(lowp)
        ints = ("M", "N", "K", "sam", "sbn", "sgm", "col0")
        out.append(dict(name=f"logprob gradient tile (logits -> dz), entropy ({name})", fn=_logprob_grad_kernel,
                        signature=dict(a_ptr=dt, b_ptr=dt, g_ptr=dt, t_ptr="*i64", glp_ptr="*fp32",
                                       gent_ptr="*fp32", lse_ptr="*fp32", ent_ptr="*fp32",
                                       **{k: "i32" for k in ints}, ignore_index="i32", inv_temp="fp32"),
                        constexprs=dict(ENTROPY=True, LOWP=lowp, UPCAST=False, sak=1, sbk=1, sgn=1, **blocks),
                        divisible=ints, num_warps=warps, num_stages=stages))
    return out
