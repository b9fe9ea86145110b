"""Fused linear cross-entropy: ``hidden @ weight.T (+ bias)`` -> loss without the full [N, V] logits.

    loss = fused_linear_cross_entropy(hidden [N, H], weight [V, H], target [N], bias=None, *,
                                      ignore_index=-100, label_smoothing=0.0, z_loss=0.0, softcap=None,
                                      reduction="mean", token_weight=None, normalizer=None,
                                      return_lse=False, chunk_size=None, low_memory=False)

Tokens run in chunks of C rows (on a GPU: cuBLAS GEMMs and a row kernel, or with ``GEMM = "triton"`` Triton
tiles with the row statistics in the logits GEMM's epilogue): the gradients are made during the forward, and
the backward only scales them; ``low_memory=True`` instead recomputes the logits by vocabulary blocks in the
backward (no fp32 [V, H] accumulator). A sharded FSDP2 weight is gathered.
The autograd formula is the registered op's (``linear_cross_entropy_custom_op``).
Algorithm, both modes and the FSDP2 contract: docs/kernels.md; costs: bench/RESULTS.md.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._runtime import INTERPRET, _full, use_triton
from .cross_entropy_op import (_check_args, _dlogits, _dlogits_torch, _effective_weights, _grad_tile_triton,
                               _row_loss, _rows_torch, _rows_triton, _tanh, check_chunk_size,
                               flatten_like_target)
from .matmul_tiles import _logits_tile, _matmul_kernel, _mm, mm_config
from .targets import check_targets


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
    check_targets("fused_linear_cross_entropy", target, v, cfg["ignore_index"])
    dev = h.device
    loss = torch.empty(n, dtype=torch.float32, device=dev)
    lse = torch.empty(n, dtype=torch.float32, device=dev)
    dh = torch.empty_like(h) if need_dh else None
    dw = torch.zeros((v, hid), dtype=torch.float32, device=dev) if need_dw else None
    db = torch.zeros(v, dtype=torch.float32, device=dev) if (need_db and bias is not None) else None
    triton_path = use_triton(h)
    cublas = triton_path and _use_cublas(h)
    z_buf = torch.empty((min(n, chunk), v), dtype=torch.float32, device=dev)   # every chunk's fp32 logits
    if not triton_path:  # CPU: fp32 math on an fp32 copy of the (input-sized) weight
        wf = weight.float()
        bf = bias.float() if bias is not None else None
    else:  # and a gradient buffer in the GEMM operand dtype, reused by every chunk
        g_buf = torch.empty((min(n, chunk), v), dtype=weight.dtype, device=dev) if want_grad else z_buf
        if not cublas:  # the Triton logits GEMM's per-tile row statistics
            stats = torch.empty(stats_elements(min(n, chunk), v, weight.dtype), dtype=torch.float32, device=dev)
    for s in range(0, n, chunk):
        e = min(n, s + chunk)
        hc = h[s:e]
        if cublas:
            _chunk_cublas(hc, weight, bias, z_buf[: e - s], g_buf[: e - s], target[s:e], w[s:e], loss[s:e],
                          lse[s:e], cfg, want_grad, dh[s:e] if need_dh else None, dw if need_dw else None)
            g = g_buf[: e - s]
        elif triton_path:
            z, g = z_buf[: e - s], g_buf[: e - s]
            _logits_rows_triton(hc, weight, bias, z, g, target[s:e], w[s:e], loss[s:e], lse[s:e], stats, cfg,
                                want_grad)
            if need_dh:
                _mm(g, weight, dh[s:e])
            if need_dw:
                _mm(g.t(), hc, dw, accumulate=True)
        else:
            z = torch.mm(hc.float(), wf.t(), out=z_buf[: e - s])   # no [C, V] allocation per chunk
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


# Which GEMMs the chunk loop uses on a GPU: "cublas" (torch.mm/addmm with fp32 outputs, then the row kernel of
# cross_entropy_op) or "triton" (the logits GEMM with the row statistics in its epilogue, dh and dW through
# matmul_tiles). cuBLAS is the default: it was measured faster on an H200 at s1's shape (bench/RESULTS.md);
# both are tested against float64 on the GPU.
GEMM = "cublas"


def _use_cublas(h: torch.Tensor) -> bool:
    return GEMM == "cublas" and h.is_cuda


def _mm_f32(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor, accumulate: bool = False) -> None:
    """out (+)= a @ b in fp32 from bf16/fp16 operands through cuBLAS (aten mm/addmm with ``out_dtype``)."""
    if accumulate:
        torch.addmm(out, a, b, out_dtype=torch.float32, out=out)
    else:
        torch.mm(a, b, out_dtype=torch.float32, out=out)


def _chunk_cublas(hc, weight, bias, z, g, target, w, loss, lse, cfg, want_grad, dh, dw):
    """One chunk with cuBLAS GEMMs: z = hc W^T (fp32), the row kernel's loss, lse and dz, then dh and dW."""
    _mm_f32(hc, weight.t(), z)
    if bias is not None:
        z += bias
    _rows_triton(z, g, target, w, loss, lse, cfg, want_grad)
    if dh is not None:
        torch.mm(g, weight, out=dh)
    if dw is not None:
        _mm_f32(g.t(), hc, dw, accumulate=True)


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


def prepare_linear_ce(hidden, weight, target, bias, *, ignore_index, label_smoothing, z_loss, softcap, reduction,
                      token_weight, normalizer, chunk_size, low_memory=False):
    """Check and normalise the arguments of ``fused_linear_cross_entropy``.

    Returns (hidden [N, H], weight, bias, target [N], w_eff [N] fp32, cfg, want_grad, chunk).
    """
    weight, bias = _full(weight), _full(bias)
    hidden = hidden.reshape(-1, hidden.shape[-1])
    token_weight = flatten_like_target(token_weight, target)
    target = target.reshape(-1)
    n, hid = hidden.shape
    if target.shape[0] != n and weight.dim() == 2 and weight.shape == (target.shape[0], hid):
        raise ValueError(f"fused_linear_cross_entropy: hidden {tuple(hidden.shape)} and weight {tuple(weight.shape)} "
                         f"look swapped (target has {target.shape[0]} tokens): pass hidden [N, H] first, then "
                         f"the lm_head weight [V, H] (Liger's module takes the weight first; this one does not)")
    _check_args("fused_linear_cross_entropy", n, target, reduction, token_weight, normalizer, label_smoothing,
                softcap)
    check_chunk_size("fused_linear_cross_entropy", chunk_size)
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

    hidden [N, H] (any leading dims are flattened), weight [V, H] (may be an FSDP2 DTensor), target [N] (or the
    leading dims of hidden, flattened alike, and so is a ``token_weight`` shaped like it).
    Semantics of every keyword: module docstring. Returns the loss (fp32), or (loss, lse) with return_lse.
    ``low_memory=True``: no [V, H] fp32 weight-gradient accumulator and small chunks, for a third more
    matmul FLOPs (the module docstring's "Two modes").
    """
    args = prepare_linear_ce(hidden, weight, target, bias, ignore_index=ignore_index,
                             label_smoothing=label_smoothing, z_loss=z_loss, softcap=softcap, reduction=reduction,
                             token_weight=token_weight, normalizer=normalizer, chunk_size=chunk_size,
                             low_memory=low_memory)
    h, w, b, t, w_eff, cfg, want_grad, chunk = args
    needs = [want_grad and x is not None and x.requires_grad for x in (h, w, b)]  # a frozen input: no GEMM
    # the registered op of linear_cross_entropy_custom_op (imported by the package): its autograd formula
    loss, lse, *_ = torch.ops.s1fast_kernels.fused_linear_cross_entropy(
        h, w, b, t, w_eff, cfg["ignore_index"], cfg["label_smoothing"], cfg["z_loss"], cfg["softcap"],
        cfg["reduction"], want_grad and cfg["reduction"] != "none", chunk, cfg["low_memory"], *needs)
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
    return out
