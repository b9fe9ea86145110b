"""RMSNorm (Qwen2/Llama): ``y = weight * (x / sqrt(mean(x^2) + eps)).to(x.dtype)``, statistics in fp32.

The forward saves only ``rstd`` [rows]; the backward recomputes ``x * rstd`` and reduces the weight
gradient through fp32 per-program partials (no atomics: deterministic). ``xh`` is rounded to the input
dtype before the weight, as Qwen2RMSNorm does, so bf16 outputs match transformers; the output dtype is
``promote(x.dtype, weight.dtype)``. The functional API goes through the registered op
``torch.ops.s1fast_kernels.rms_norm`` (fake implementation, autograd formula). Math and design: docs/kernels.md.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from ._runtime import INTERPRET, like_fake, row_block, use_triton


@triton.jit
def _rms_norm_fwd_kernel(x_ptr, w_ptr, y_ptr, rstd_ptr, n_rows, n_cols, x_stride, y_stride, eps,
                         BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_D)
    rmask = rows < n_rows
    mask = rmask[:, None] & (cols < n_cols)[None, :]
    rows64 = rows.to(tl.int64)
    x_raw = tl.load(x_ptr + rows64[:, None] * x_stride + cols[None, :], mask=mask, other=0.0)
    x = x_raw.to(tl.float32)
    w = tl.load(w_ptr + cols, mask=cols < n_cols, other=0.0).to(tl.float32)
    rstd = 1.0 / tl.sqrt(tl.sum(x * x, axis=1) / n_cols + eps)
    # round x_hat to the input dtype before the weight, as Qwen2RMSNorm does
    xh = (x * rstd[:, None]).to(x_raw.dtype).to(tl.float32)
    y = xh * w[None, :]
    tl.store(y_ptr + rows64[:, None] * y_stride + cols[None, :], y.to(y_ptr.dtype.element_ty), mask=mask)
    tl.store(rstd_ptr + rows, rstd, mask=rmask)


@triton.jit
def _rms_norm_bwd_kernel(x_ptr, w_ptr, dy_ptr, rstd_ptr, dx_ptr, dw_part_ptr, n_rows, n_cols, x_stride,
                         dy_stride, dx_stride, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    pid = tl.program_id(0)
    n_prog = tl.num_programs(0)
    cols = tl.arange(0, BLOCK_D)
    cmask = cols < n_cols
    w = tl.load(w_ptr + cols, mask=cmask, other=0.0).to(tl.float32)
    dw_acc = tl.zeros((BLOCK_D,), dtype=tl.float32)
    n_blocks = tl.cdiv(n_rows, BLOCK_M)
    for blk in range(pid, n_blocks, n_prog):
        rows = blk * BLOCK_M + tl.arange(0, BLOCK_M)
        rmask = rows < n_rows
        mask = rmask[:, None] & cmask[None, :]
        rows64 = rows.to(tl.int64)
        x_raw = tl.load(x_ptr + rows64[:, None] * x_stride + cols[None, :], mask=mask, other=0.0)
        x = x_raw.to(tl.float32)
        dy = tl.load(dy_ptr + rows64[:, None] * dy_stride + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        rstd = tl.load(rstd_ptr + rows, mask=rmask, other=0.0)
        xh = x * rstd[:, None]
        g = dy * w[None, :]
        c = tl.sum(g * xh, axis=1) / n_cols
        dx = rstd[:, None] * (g - xh * c[:, None])
        tl.store(dx_ptr + rows64[:, None] * dx_stride + cols[None, :], dx.to(dx_ptr.dtype.element_ty), mask=mask)
        dw_acc += tl.sum(dy * xh.to(x_raw.dtype).to(tl.float32), axis=0)
    tl.store(dw_part_ptr + pid * n_cols + cols, dw_acc, mask=cmask)


def rms_norm_reference(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """transformers' Qwen2RMSNorm: normalise in fp32, cast back, then scale by the weight."""
    xf = x.to(torch.promote_types(x.dtype, torch.float32))  # fp64 stays fp64 for a reference
    y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * y.to(x.dtype)


MAX_COLS = 65536  # one program holds a whole row: wider rows take the PyTorch path (the kernel would drop the rest)


def _blocks(n_cols: int) -> tuple[int, int, int]:
    """(BLOCK_M, BLOCK_D, num_warps): ~4K elements per program on a GPU, larger tiles under the interpreter."""
    block_d = row_block(n_cols, cap=MAX_COLS)
    budget = 16384 if INTERPRET else 4096
    block_m = max(1, min(64, budget // block_d))
    num_warps = 4 if block_d * block_m <= 4096 else 8
    return block_m, block_d, num_warps


def _as_rows(t: torch.Tensor) -> torch.Tensor:
    t2 = t.reshape(-1, t.shape[-1])
    return t2 if t2.stride(-1) == 1 else t2.contiguous()


def _launch_fwd(x2: torch.Tensor, w: torch.Tensor, eps: float):
    n_rows, n_cols = x2.shape
    y = torch.empty((n_rows, n_cols), dtype=torch.promote_types(x2.dtype, w.dtype), device=x2.device)
    rstd = torch.empty(n_rows, dtype=torch.float32, device=x2.device)
    bm, bd, nw = _blocks(n_cols)
    _rms_norm_fwd_kernel[(triton.cdiv(n_rows, bm),)](x2, w, y, rstd, n_rows, n_cols, x2.stride(0), y.stride(0),
                                                     eps, BLOCK_M=bm, BLOCK_D=bd, num_warps=nw)
    return y, rstd


def _num_programs(x: torch.Tensor, n_blocks: int) -> int:
    sms = torch.cuda.get_device_properties(x.device).multi_processor_count if x.is_cuda else 2
    return max(1, min(n_blocks, 4 * sms))


def _launch_bwd(x2, w, dy2, rstd):
    n_rows, n_cols = x2.shape
    bm, bd, nw = _blocks(n_cols)
    n_prog = _num_programs(x2, triton.cdiv(n_rows, bm))
    dx = torch.empty_like(x2)
    dw_part = torch.empty((n_prog, n_cols), dtype=torch.float32, device=x2.device)
    _rms_norm_bwd_kernel[(n_prog,)](x2, w, dy2, rstd, dx, dw_part, n_rows, n_cols, x2.stride(0), dy2.stride(0),
                                    dx.stride(0), BLOCK_M=bm, BLOCK_D=bd, num_warps=nw)
    return dx, dw_part.sum(0).to(w.dtype)


def _stat_dtype(x: torch.Tensor) -> torch.dtype:
    """rstd's dtype: fp32 (the kernel's), fp64 on the PyTorch path for fp64 inputs (reference precision)."""
    return torch.float64 if x.dtype == torch.float64 and not use_triton(x) else torch.float32


def _kernel(x2: torch.Tensor) -> bool:
    return use_triton(x2) and x2.numel() > 0 and x2.shape[-1] <= MAX_COLS


def forward_rows(x2: torch.Tensor, w: torch.Tensor, eps: float):
    """(y, rstd) for rows x2 [M, D]: the Triton kernel, or the same math in PyTorch."""
    if _kernel(x2):
        return _launch_fwd(x2, w, eps)
    xf = x2.to(_stat_dtype(x2))
    rstd = torch.rsqrt(xf.pow(2).mean(-1) + eps)
    return w * (xf * rstd[:, None]).to(x2.dtype), rstd


def backward_rows(x2, w, dy2, rstd):
    """(dx, dw) for rows: the Triton kernel, or the module docstring's formulas in PyTorch."""
    if _kernel(x2):
        return _launch_bwd(x2, w, dy2, rstd)
    acc = rstd.dtype
    xh = x2.to(acc) * rstd[:, None]
    g = dy2.to(acc) * w.to(acc)
    dx = rstd[:, None] * (g - xh * (g * xh).mean(-1, keepdim=True))
    dw = (dy2.to(acc) * xh.to(x2.dtype).to(acc)).sum(0)
    return dx.to(x2.dtype), dw.to(w.dtype)


def sm90_variants(hidden: int = 5120) -> list[dict]:
    """Launch configurations at s1's hidden size, for ``compile_check.compile_variants``."""
    bm, bd, nw = _blocks(hidden)
    out = []
    for x, w in (("*bf16", "*bf16"), ("*bf16", "*fp32"), ("*fp32", "*fp32")):
        y = "*fp32" if "fp32" in (x, w) else x
        out.append(dict(name=f"rms_norm fwd (x {x[1:]}, w {w[1:]})", fn=_rms_norm_fwd_kernel,
                        signature=dict(x_ptr=x, w_ptr=w, y_ptr=y, rstd_ptr="*fp32", n_rows="i32", n_cols="i32",
                                       x_stride="i32", y_stride="i32", eps="fp32"),
                        constexprs=dict(BLOCK_M=bm, BLOCK_D=bd), num_warps=nw, num_stages=3,
                        divisible=("n_cols", "x_stride", "y_stride")))
        out.append(dict(name=f"rms_norm bwd (x {x[1:]}, w {w[1:]})", fn=_rms_norm_bwd_kernel,
                        signature=dict(x_ptr=x, w_ptr=w, dy_ptr=y, rstd_ptr="*fp32", dx_ptr=x, dw_part_ptr="*fp32",
                                       n_rows="i32", n_cols="i32", x_stride="i32", dy_stride="i32",
                                       dx_stride="i32"),
                        constexprs=dict(BLOCK_M=bm, BLOCK_D=bd), num_warps=nw, num_stages=3,
                        divisible=("n_cols", "x_stride", "dy_stride", "dx_stride")))
    return out


# ------------------------------------------------------------------ the op (torch.library, fake, autograd)
@torch.library.custom_op("s1fast_kernels::rms_norm", mutates_args=())
def _rms_norm_op(x: Tensor, weight: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """(y, rstd [rows])."""
    y, rstd = forward_rows(_as_rows(x), weight, eps)
    return y.view(*x.shape[:-1], y.shape[-1]), rstd


@_rms_norm_op.register_fake
def _(x, weight, eps):
    y = x.new_empty(x.shape, dtype=torch.promote_types(x.dtype, weight.dtype))
    return y, x.new_empty(x.numel() // x.shape[-1], dtype=_stat_dtype(x))


@torch.library.custom_op("s1fast_kernels::rms_norm_backward", mutates_args=())
def _rms_norm_backward(x: Tensor, weight: Tensor, dy: Tensor, rstd: Tensor) -> tuple[Tensor, Tensor]:
    dx, dw = backward_rows(_as_rows(x), weight, _as_rows(dy), rstd)
    return like_fake(x, dx.view(x.shape)), dw


@_rms_norm_backward.register_fake
def _(x, weight, dy, rstd):
    return torch.empty_like(x), torch.empty_like(weight)


def _setup(ctx, inputs, output):
    x, weight, _ = inputs
    ctx.save_for_backward(x, weight, output[1])


def _grad(ctx, dy, _drstd):
    x, weight, rstd = ctx.saved_tensors
    dx, dw = torch.ops.s1fast_kernels.rms_norm_backward(x, weight, dy, rstd)
    return dx, dw, None


_rms_norm_op.register_autograd(_grad, setup_context=_setup)


def rms_norm(x: Tensor, weight: Tensor, eps: float = 1e-6) -> Tensor:
    """RMSNorm over the last dimension of ``x`` with a [D] ``weight``, through the registered op (fused
    forward and backward kernels on GPU and under the interpreter, the same math in PyTorch otherwise)."""
    if weight.dim() != 1 or x.shape[-1] != weight.shape[0]:
        raise ValueError(f"rms_norm: x {tuple(x.shape)} needs a weight of shape [{x.shape[-1]}], got "
                         f"{tuple(weight.shape)}")
    return torch.ops.s1fast_kernels.rms_norm(x, weight, float(eps))[0]


class RMSNorm(torch.nn.Module):
    def __init__(self, hidden: int, eps: float = 1e-6):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(hidden))
        self.eps = eps

    def forward(self, x):
        return rms_norm(x, self.weight, self.eps)
