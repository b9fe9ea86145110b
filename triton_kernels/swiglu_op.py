"""SwiGLU: ``out = silu(gate) * up``, the gated MLP activation of Qwen2 and Llama.

Math (s = sigmoid(g)):
    y      = g * s * u
    dy/dg  = s * (1 + g * (1 - s)) * u
    dy/du  = g * s
Backward recomputes ``s`` from the saved inputs instead of saving activations (one read of g, u,
dy; one write of dg, du): 5 tensors of traffic, the memory-bandwidth floor for this op.

Kernels load in the input dtype and compute in fp32; results are cast on store. The functional API goes
through the registered op ``torch.ops.s1fast_kernels.swiglu`` (fake implementation, autograd formula).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from ._runtime import like_fake, use_triton

BLOCK = 1024


@triton.jit
def _swiglu_fwd_kernel(g_ptr, u_ptr, y_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    u = tl.load(u_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    y = g * tl.sigmoid(g) * u
    tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _swiglu_bwd_kernel(g_ptr, u_ptr, dy_ptr, dg_ptr, du_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    u = tl.load(u_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    dy = tl.load(dy_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    s = tl.sigmoid(g)
    dg = dy * u * s * (1.0 + g * (1.0 - s))
    du = dy * g * s
    tl.store(dg_ptr + offs, dg.to(dg_ptr.dtype.element_ty), mask=mask)
    tl.store(du_ptr + offs, du.to(du_ptr.dtype.element_ty), mask=mask)


def swiglu_reference(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """The plain PyTorch function (also the CPU path); fp32 math for low-precision inputs."""
    return (torch.nn.functional.silu(gate.float()) * up.float()).to(gate.dtype)


def _launch_fwd(g: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    y = torch.empty_like(g)
    n = g.numel()
    _swiglu_fwd_kernel[(triton.cdiv(n, BLOCK),)](g, u, y, n, BLOCK=BLOCK)
    return y


def _launch_bwd(g, u, dy):
    dg, du = torch.empty_like(g), torch.empty_like(u)
    n = g.numel()
    _swiglu_bwd_kernel[(triton.cdiv(n, BLOCK),)](g, u, dy, dg, du, n, BLOCK=BLOCK)
    return dg, du


def backward_reference(g, u, dy):
    """(dgate, dup) by the module docstring's formulas in PyTorch (fp32 math): dy/dg through aten's fused
    ``silu_backward`` (s * (1 + g * (1 - s))), dy/du = silu(g)."""
    gf, uf, dyf = g.float(), u.float(), dy.float()
    dg = torch.ops.aten.silu_backward(dyf * uf, gf)
    return dg.to(g.dtype), (dyf * torch.nn.functional.silu(gf)).to(u.dtype)


def sm90_variants() -> list[dict]:
    """Forward and backward in bf16 and fp32, for ``compile_check.compile_variants``."""
    out = []
    for dt in ("*bf16", "*fp32"):
        out.append(dict(name=f"swiglu fwd ({dt[1:]})", fn=_swiglu_fwd_kernel,
                        signature={"g_ptr": dt, "u_ptr": dt, "y_ptr": dt, "n": "i32"}, constexprs={"BLOCK": BLOCK},
                        num_warps=4, num_stages=3, divisible=("n",)))
        out.append(dict(name=f"swiglu bwd ({dt[1:]})", fn=_swiglu_bwd_kernel,
                        signature={"g_ptr": dt, "u_ptr": dt, "dy_ptr": dt, "dg_ptr": dt, "du_ptr": dt, "n": "i32"},
                        constexprs={"BLOCK": BLOCK}, num_warps=4, num_stages=3, divisible=("n",)))
    return out


# ------------------------------------------------------------------ the op (torch.library, fake, autograd)
@torch.library.custom_op("s1fast_kernels::swiglu", mutates_args=())
def _swiglu_op(gate: Tensor, up: Tensor) -> Tensor:
    if use_triton(gate):
        return like_fake(gate, _launch_fwd(gate.contiguous(), up.contiguous()))
    return like_fake(gate, swiglu_reference(gate, up))


@_swiglu_op.register_fake
def _(gate, up):
    return torch.empty_like(gate)


@torch.library.custom_op("s1fast_kernels::swiglu_backward", mutates_args=())
def _swiglu_backward(gate: Tensor, up: Tensor, dy: Tensor) -> tuple[Tensor, Tensor]:
    if use_triton(gate):
        dg, du = _launch_bwd(gate.contiguous(), up.contiguous(), dy.contiguous())
    else:
        dg, du = backward_reference(gate, up, dy)
    return like_fake(gate, dg), like_fake(up, du)


@_swiglu_backward.register_fake
def _(gate, up, dy):
    return torch.empty_like(gate), torch.empty_like(up)


def _setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _grad(ctx, dy):
    return tuple(torch.ops.s1fast_kernels.swiglu_backward(*ctx.saved_tensors, dy))


_swiglu_op.register_autograd(_grad, setup_context=_setup)


def swiglu(gate: Tensor, up: Tensor) -> Tensor:
    """``silu(gate) * up`` through the registered op: the fused kernels on GPU (and under the interpreter)."""
    if gate.shape != up.shape:
        raise ValueError(f"swiglu: gate {tuple(gate.shape)} and up {tuple(up.shape)} must have one shape")
    return torch.ops.s1fast_kernels.swiglu(gate, up)


class SwiGLU(torch.nn.Module):
    def forward(self, gate, up):
        return swiglu(gate, up)
