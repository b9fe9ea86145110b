"""Cross-entropy over given logits [N, V]: one fused row kernel (loss, lse, and the gradient made in the
forward), with label smoothing, z-loss, softcap, token weights and the reductions.

    loss = cross_entropy(logits [N, V], target [N], *, ignore_index=-100, label_smoothing=0.0, z_loss=0.0,
                         softcap=None, reduction="mean", token_weight=None, normalizer=None, return_lse=False)

The row math (``_dlogits``, ``_rows_torch``) and the argument checks are shared with the fused linear
cross-entropy (``linear_cross_entropy_op``), and so is ``scale_unit_grads``, the backward of both losses.
``cross_entropy`` goes through its registered op ``torch.ops.s1fast_kernels.cross_entropy`` (fake
implementation, autograd formula). Formulas, reductions and semantics: docs/kernels.md.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from ._runtime import INTERPRET, use_triton
from .targets import check_target_dtype, check_targets


@triton.jit
def _tanh(x):
    """tanh to fp32 accuracy (the interpreter has no tanh): (1 - e) / (1 + e) with e = exp(-2|x|) cancels for
    small |x|, so below 0.3 an odd Taylor polynomial (truncation < 1e-9 relative there) is used instead."""
    ax = tl.abs(x)
    e = tl.exp(-2.0 * ax)
    big = (1.0 - e) / (1.0 + e)
    x2 = ax * ax
    p = -1382.0 / 155925.0
    p = p * x2 + 62.0 / 2835.0
    p = p * x2 - 17.0 / 315.0
    p = p * x2 + 2.0 / 15.0
    p = p * x2 - 1.0 / 3.0
    small = ax + ax * x2 * p
    t = tl.where(ax < 0.3, small, big)
    return tl.where(x < 0, -t, t)


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


# rows kernel: one row per program on a GPU (C ~ 400 rows per chunk fill 132 SMs; 16 fp32 values per
# thread: no spills); 16 rows per program under the interpreter, where each program costs milliseconds
ROWS_BLOCK_N, ROWS_BLOCK_V, ROWS_WARPS = (16, 1024, 8) if INTERPRET else (1, 4096, 8)


# gradient tiles of the low-memory backward (elementwise): 32 x 128 per program, 4 warps (32 values a thread)
TILE_BLOCK_N, TILE_BLOCK_V = (64, 256) if INTERPRET else (32, 128)


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


def _grad_tile_triton(z, g, target, w, lse, cfg) -> None:
    softcap = cfg["softcap"]
    n_rows, n_cols = z.shape
    grid = (triton.cdiv(n_rows, TILE_BLOCK_N), triton.cdiv(n_cols, TILE_BLOCK_V))
    _ce_grad_tile_kernel[grid](z, z.stride(0), g, g.stride(0), target, w, lse, n_rows, n_cols,
                               cfg["ignore_index"], float(cfg["label_smoothing"]), float(cfg["z_loss"]),
                               float(softcap or 1.0), HAS_SOFTCAP=softcap is not None, BLOCK_N=TILE_BLOCK_N,
                               BLOCK_V=TILE_BLOCK_V, num_warps=4)


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


def flatten_like_target(token_weight, target):
    """A ``token_weight`` shaped like the target before it is flattened (e.g. [B, T]), flattened alike."""
    if token_weight is not None and token_weight.shape == target.shape:
        return token_weight.reshape(-1)
    return token_weight


def check_chunk_size(name: str, chunk_size) -> None:
    """``chunk_size``: None (or 0) for the default, else a positive whole number of token rows."""
    if chunk_size is not None and (isinstance(chunk_size, bool) or not float(chunk_size).is_integer()
                                   or chunk_size < 0):
        raise ValueError(f"{name}: chunk_size={chunk_size!r} must be a positive whole number of token rows "
                         f"(or None for the default)")


def _check_args(name, n, target, reduction, token_weight, normalizer, label_smoothing, softcap):
    if reduction not in _REDUCTIONS:
        raise ValueError(f"{name}: reduction={reduction!r}; use one of {_REDUCTIONS}")
    if normalizer is not None and reduction != "mean":
        raise ValueError(f"{name}: normalizer is only meaningful with reduction='mean' (got {reduction!r}); "
                         f"for 'sum' fold it into token_weight")
    check_target_dtype(name, target)
    if target.dim() != 1 or target.shape[0] != n:
        raise ValueError(f"{name}: target {tuple(target.shape)} must be [N={n}] (flatten batch and sequence)")
    if token_weight is not None and tuple(token_weight.shape) != (n,):
        raise ValueError(f"{name}: token_weight {tuple(token_weight.shape)} must be [N={n}]")
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"{name}: label_smoothing={label_smoothing} must lie in [0, 1]")
    if softcap is not None and not softcap > 0:
        raise ValueError(f"{name}: softcap={softcap} must be positive (or None)")


def _scale_(x: torch.Tensor, g: torch.Tensor, rows: int = 4096) -> torch.Tensor:
    """x *= g in place, g a 0-dim fp32 tensor (the incoming gradient; no host sync), the product made in fp32
    and rounded once to x's dtype; a bf16 x is scaled ``rows`` rows at a time, so the fp32 temporary stays a
    chunk, not a copy of x (the memory the fused loss exists to save)."""
    if x.dtype in (torch.float32, torch.float64):
        return x.mul_(g.to(x.dtype))
    for s in range(0, x.shape[0], rows):
        x[s:s + rows].copy_(x[s:s + rows].float().mul_(g))
    return x


def _functionalized(t: torch.Tensor) -> bool:
    """True while AOTAutograd (torch.compile, opcheck) traces a backward under functionalization."""
    from torch._subclasses.functional_tensor import FunctionalTensor
    return isinstance(t, FunctionalTensor) or \
        torch._C._get_dispatch_mode(torch._C._TorchDispatchModeKey.FUNCTIONAL) is not None


def scale_unit_grads(ctx, name: str, g: torch.Tensor, *grads: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Gradients a forward made for a unit incoming gradient, times the incoming gradient g (the registered
    losses' backward). Eager: in place (no second buffer the size of dlogits, dh or dW), so once per forward.
    Traced: out of place, as functionalization (and AOTAutograd's partitioner) admits no mutation of a saved
    tensor; Inductor then fuses the product with the cast."""
    if _functionalized(grads[0]):
        return tuple((x.float() * g).to(x.dtype) for x in grads)
    refuse_second_backward(ctx, name)
    ctx.scaled = True
    return tuple(_scale_(x, g) for x in grads)


def refuse_second_backward(ctx, name: str) -> None:
    """The error for a second backward over one forward (``retain_graph``), which ``scale_unit_grads`` cannot
    serve: called before ``ctx.saved_tensors``, whose version check would otherwise fire first with autograd's
    "modified by an inplace operation", which does not say what to do."""
    if getattr(ctx, "scaled", False):
        raise RuntimeError(f"{name}: backward ran twice over one forward (retain_graph=True); the first backward "
                           f"scaled the saved gradients in place: run the forward again for each backward")


def _ce_rows(logits, target, w, cfg, write_grad):
    n = logits.shape[0]
    check_targets("cross_entropy", target, logits.shape[1], cfg["ignore_index"])
    if use_triton(logits):
        loss = torch.empty(n, dtype=torch.float32, device=logits.device)
        lse = torch.empty_like(loss)
        grad = torch.empty_like(logits) if write_grad else logits
        _rows_triton(logits, grad, target, w, loss, lse, cfg, write_grad)
        return loss, lse, (grad if write_grad else None)
    loss, lse, grad = _rows_torch(logits.float(), target, w, cfg, write_grad)
    return loss, lse, (grad.to(logits.dtype) if grad is not None else None)


# ------------------------------------------------------------------ the op (torch.library, fake, autograd)
@torch.library.custom_op("s1fast_kernels::cross_entropy", mutates_args=())
def _ce_op(logits: Tensor, target: Tensor, w_eff: Tensor, ignore_index: int, label_smoothing: float, z_loss: float,
           softcap: float | None, reduction: str, want_grad: bool) -> tuple[Tensor, Tensor, Tensor]:
    """(loss, lse, dlogits for a unit incoming gradient when ``want_grad``, else an empty tensor)."""
    cfg = dict(ignore_index=ignore_index, label_smoothing=label_smoothing, z_loss=z_loss, softcap=softcap,
               reduction=reduction)
    loss, lse, grad = _ce_rows(logits, target, w_eff, cfg, want_grad)
    return (loss if reduction == "none" else loss.sum()), lse, (grad if grad is not None else logits.new_empty(0))


@_ce_op.register_fake
def _(logits, target, w_eff, ignore_index, label_smoothing, z_loss, softcap, reduction, want_grad):
    n = logits.shape[0]
    loss = logits.new_empty((n,) if reduction == "none" else (), dtype=torch.float32)
    grad = torch.empty_like(logits) if want_grad else logits.new_empty(0)
    return loss, logits.new_empty((n,), dtype=torch.float32), grad


def _setup(ctx, inputs, output):
    logits, target, w_eff, *rest = inputs
    ctx.rest = rest
    ctx.mark_non_differentiable(*output[1:])  # no zeros materialised for the lse and the [N, V] gradient
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(*((logits, target, w_eff) if rest[4] == "none" else output[2:]))


def _grad(ctx, g, _glse, _ggrad):
    if ctx.rest[4] == "none":  # the per-token incoming gradient is only known now: recompute
        logits, target, w_eff = ctx.saved_tensors
        grad = torch.ops.s1fast_kernels.cross_entropy(logits, target, (w_eff * g.float()).contiguous(),
                                                      *ctx.rest[:-1], True)[2]
    else:
        refuse_second_backward(ctx, "cross_entropy")
        grad, = scale_unit_grads(ctx, "cross_entropy", g.float(), *ctx.saved_tensors)
    return grad, None, None, None, None, None, None, None, None


_ce_op.register_autograd(_grad, setup_context=_setup)


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
    token_weight = flatten_like_target(token_weight, target)
    target = target.reshape(-1)
    _check_args("cross_entropy", logits.shape[0], target, reduction, token_weight, normalizer, label_smoothing,
                softcap)
    cfg = dict(ignore_index=int(ignore_index), label_smoothing=float(label_smoothing), z_loss=float(z_loss),
               softcap=None if softcap is None else float(softcap), reduction=reduction)
    w = _effective_weights(target, cfg, token_weight, normalizer, reduction)
    want_grad = torch.is_grad_enabled() and logits.requires_grad
    loss, lse, _ = torch.ops.s1fast_kernels.cross_entropy(
        logits, target.contiguous(), w, cfg["ignore_index"], cfg["label_smoothing"], cfg["z_loss"], cfg["softcap"],
        reduction, want_grad and reduction != "none")
    return (loss, lse) if return_lse else loss


def sm90_variants() -> list[dict]:
    """The launch configurations of the row and tile kernels at s1's shapes, for
    ``compile_check.compile_variants``."""
    out = []
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
