"""The kernels as ``torch.library`` custom ops, so ``torch.compile(fullgraph=True)`` traces through them.

    from s1fast_kernels import custom_ops as ops
    y = ops.rms_norm(x, w, eps); q, k = ops.rope(q, k, cos, sin, pos); a = ops.swiglu(g, u)
    loss = ops.fused_linear_cross_entropy(h, W, t, token_weight=w, reduction="sum")

Each op has a fake (meta) implementation giving output shapes, and an autograd formula registered with
``register_autograd`` whose backward is itself a custom op, so the compiled graph keeps the kernels as
opaque calls (Inductor does not try to trace into Triton's launcher or the interpreter). Inside each op
the usual device rule applies (``_runtime.use_triton``): Triton on CUDA and under the interpreter, the
PyTorch implementation otherwise. The functional API in each kernel file (autograd.Function) stays the
eager entry point; these wrappers are the same math behind a graph-safe boundary. Namespace:
``torch.ops.s1fast_kernels``.
"""
from __future__ import annotations

import torch
from torch import Tensor

from . import linear_cross_entropy_op as ce
from . import rms_norm_op, rope_op, swiglu_op
from ._runtime import use_triton

NS = "s1fast_kernels"


# -------------------------------------------------------------------------------------------- swiglu
@torch.library.custom_op(f"{NS}::swiglu", mutates_args=())
def _swiglu(gate: Tensor, up: Tensor) -> Tensor:
    if use_triton(gate):
        return swiglu_op._launch_fwd(gate.contiguous(), up.contiguous())
    return swiglu_op.swiglu_reference(gate, up)


@_swiglu.register_fake
def _(gate, up):
    return torch.empty_like(gate)


@torch.library.custom_op(f"{NS}::swiglu_backward", mutates_args=())
def _swiglu_backward(gate: Tensor, up: Tensor, dy: Tensor) -> tuple[Tensor, Tensor]:
    if use_triton(gate):
        return swiglu_op._launch_bwd(gate.contiguous(), up.contiguous(), dy.contiguous())
    return swiglu_op.backward_reference(gate, up, dy)


@_swiglu_backward.register_fake
def _(gate, up, dy):
    return torch.empty_like(gate), torch.empty_like(up)


def _swiglu_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _swiglu_grad(ctx, dy):
    return tuple(torch.ops.s1fast_kernels.swiglu_backward(*ctx.saved_tensors, dy))


_swiglu.register_autograd(_swiglu_grad, setup_context=_swiglu_setup)


# ------------------------------------------------------------------------------------------ rms_norm
@torch.library.custom_op(f"{NS}::rms_norm", mutates_args=())
def _rms_norm(x: Tensor, weight: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    y, rstd = rms_norm_op.forward_rows(rms_norm_op._as_rows(x), weight, eps)
    return y.view(*x.shape[:-1], y.shape[-1]), rstd


@_rms_norm.register_fake
def _(x, weight, eps):
    y = x.new_empty(x.shape, dtype=torch.promote_types(x.dtype, weight.dtype))
    return y, x.new_empty(x.numel() // x.shape[-1], dtype=torch.float32)


@torch.library.custom_op(f"{NS}::rms_norm_backward", mutates_args=())
def _rms_norm_backward(x: Tensor, weight: Tensor, dy: Tensor, rstd: Tensor) -> tuple[Tensor, Tensor]:
    dx, dw = rms_norm_op.backward_rows(rms_norm_op._as_rows(x), weight, rms_norm_op._as_rows(dy), rstd)
    return dx.view(x.shape), dw


@_rms_norm_backward.register_fake
def _(x, weight, dy, rstd):
    return torch.empty_like(x), torch.empty_like(weight)


def _rms_setup(ctx, inputs, output):
    x, weight, _ = inputs
    ctx.save_for_backward(x, weight, output[1])


def _rms_grad(ctx, dy, _drstd):
    x, weight, rstd = ctx.saved_tensors
    dx, dw = torch.ops.s1fast_kernels.rms_norm_backward(x, weight, dy, rstd)
    return dx, dw, None


_rms_norm.register_autograd(_rms_grad, setup_context=_rms_setup)


# ---------------------------------------------------------------------------------------------- rope
def _rope_launch(q, k, cos, sin, pos, backward):
    q, k = rope_op.unit_last(q), rope_op.unit_last(k)
    qo, ko = torch.empty_like(q), torch.empty_like(k)
    rope_op._launch(q, k, qo, ko, cos, sin, pos.reshape(-1).contiguous(), backward=backward, copy_rest=True)
    return qo, ko


@torch.library.custom_op(f"{NS}::rope", mutates_args=())
def _rope(q: Tensor, k: Tensor, cos: Tensor, sin: Tensor, position_ids: Tensor) -> tuple[Tensor, Tensor]:
    rope_op._check(q, k, cos, sin, position_ids, kernel=use_triton(q))
    if use_triton(q):
        return _rope_launch(q, k, cos, sin, position_ids, backward=False)
    return rope_op.rope_reference(q, k, cos, sin, position_ids)


@_rope.register_fake
def _(q, k, cos, sin, position_ids):
    return torch.empty_like(q), torch.empty_like(k)


@torch.library.custom_op(f"{NS}::rope_backward", mutates_args=())
def _rope_backward(dq: Tensor, dk: Tensor, cos: Tensor, sin: Tensor, position_ids: Tensor) -> tuple[Tensor, Tensor]:
    if use_triton(dq):
        return _rope_launch(dq, dk, cos, sin, position_ids, backward=True)
    return rope_op.rope_reference_backward(dq, dk, cos, sin, position_ids)


@_rope_backward.register_fake
def _(dq, dk, cos, sin, position_ids):
    return torch.empty_like(dq), torch.empty_like(dk)


def _rope_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs[2:])


def _rope_grad(ctx, dq, dk):
    cos, sin, pos = ctx.saved_tensors
    gq, gk = torch.ops.s1fast_kernels.rope_backward(dq, dk, cos, sin, pos)
    return gq, gk, None, None, None


_rope.register_autograd(_rope_grad, setup_context=_rope_setup)


# ------------------------------------------------------------------------- fused linear cross-entropy
@torch.library.custom_op(f"{NS}::fused_linear_cross_entropy", mutates_args=())
def _flce(hidden: Tensor, weight: Tensor, bias: Tensor | None, target: Tensor, w_eff: Tensor, ignore_index: int,
          label_smoothing: float, z_loss: float, softcap: float | None, reduction: str, want_grad: bool,
          chunk: int, low_memory: bool) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(loss, lse, dhidden, dweight fp32, dbias fp32): gradients for a unit incoming gradient, or empty.
    With ``low_memory`` dweight is left empty: the backward makes it (``fused_linear_cross_entropy_dweight``)."""
    cfg = dict(ignore_index=ignore_index, label_smoothing=label_smoothing, z_loss=z_loss, softcap=softcap,
               reduction=reduction)
    rows, lse, dh, dw, db = ce._linear_ce_chunks(hidden, weight, bias, target, w_eff, cfg, want_grad, chunk,
                                                 (True, not low_memory, True))
    loss = rows if reduction == "none" else rows.sum()
    def empty(dtype):  # a fresh tensor each: outputs may not alias one another
        return hidden.new_empty(0, dtype=dtype)
    return loss, lse, (dh if dh is not None else empty(hidden.dtype)), \
        (dw if dw is not None else empty(torch.float32)), (db if db is not None else empty(torch.float32))


@_flce.register_fake
def _(hidden, weight, bias, target, w_eff, ignore_index, label_smoothing, z_loss, softcap, reduction, want_grad,
      chunk, low_memory):
    n, v = hidden.shape[0], weight.shape[0]
    f32 = dict(dtype=torch.float32)
    loss = hidden.new_empty((n,) if reduction == "none" else (), **f32)
    grads = (torch.empty_like(hidden), weight.new_empty((0,) if low_memory else weight.shape, **f32),
             weight.new_empty((v,) if bias is not None else (0,), **f32)) if want_grad else \
        (hidden.new_empty(0), hidden.new_empty(0, **f32), hidden.new_empty(0, **f32))
    return (loss, hidden.new_empty((n,), **f32), *grads)


@torch.library.custom_op(f"{NS}::fused_linear_cross_entropy_dweight", mutates_args=())
def _flce_dweight(hidden: Tensor, weight: Tensor, bias: Tensor | None, target: Tensor, w_eff: Tensor, lse: Tensor,
                  ignore_index: int, label_smoothing: float, z_loss: float, softcap: float | None,
                  chunk: int) -> Tensor:
    """The low-memory backward's weight gradient (in the weight's dtype), for effective weights w_eff that
    already include the incoming gradient."""
    cfg = dict(ignore_index=ignore_index, label_smoothing=label_smoothing, z_loss=z_loss, softcap=softcap)
    return ce._linear_ce_dweight(hidden, weight, bias, target, w_eff, lse, cfg, chunk)


@_flce_dweight.register_fake
def _(hidden, weight, bias, target, w_eff, lse, ignore_index, label_smoothing, z_loss, softcap, chunk):
    return torch.empty_like(weight)


def _flce_setup(ctx, inputs, output):
    hidden, weight, bias, target, w_eff, *rest = inputs
    ctx.rest = rest
    ctx.has_bias = bias is not None
    ctx.dtypes = (weight.dtype, bias.dtype if bias is not None else None)
    low_memory = rest[-1]
    if rest[4] == "none":  # the per-token incoming gradient is only known in backward: recompute then
        ctx.save_for_backward(hidden, weight, bias, target, w_eff, output[1])
    elif low_memory:
        ctx.save_for_backward(hidden, weight, bias, target, w_eff, output[1], output[2], output[4])
    else:
        ctx.save_for_backward(*output[2:])


def _flce_grad(ctx, g, _glse, _gdh, _gdw, _gdb):
    ignore_index, smoothing, z_loss, softcap, reduction, _, chunk, low_memory = ctx.rest
    g = g.float()
    if reduction == "none":
        hidden, weight, bias, target, w_eff, lse = ctx.saved_tensors
        w_eff = w_eff * g
        _, _, dh, dw, db = torch.ops.s1fast_kernels.fused_linear_cross_entropy(
            hidden, weight, bias, target, w_eff, ignore_index, smoothing, z_loss, softcap, reduction, True, chunk,
            low_memory)
        g = torch.ones((), dtype=torch.float32, device=dh.device)
    elif low_memory:
        hidden, weight, bias, target, w_eff, lse, dh, db = ctx.saved_tensors
        w_eff = w_eff * g
    else:
        dh, dw, db = ctx.saved_tensors
    if low_memory:
        dw = torch.ops.s1fast_kernels.fused_linear_cross_entropy_dweight(  # g is already inside w_eff
            hidden, weight, bias, target, w_eff, lse, ignore_index, smoothing, z_loss, softcap, chunk)
    wdt, bdt = ctx.dtypes
    dw = dw if low_memory else (dw * g).to(wdt)
    return ((dh.float() * g).to(dh.dtype), dw, (db * g).to(bdt) if ctx.has_bias else None,
            None, None, None, None, None, None, None, None, None, None)


_flce.register_autograd(_flce_grad, setup_context=_flce_setup)


# --------------------------------------------------------------------------------- functional forms
def swiglu(gate: Tensor, up: Tensor) -> Tensor:
    return torch.ops.s1fast_kernels.swiglu(gate, up)


def rms_norm(x: Tensor, weight: Tensor, eps: float = 1e-6) -> Tensor:
    return torch.ops.s1fast_kernels.rms_norm(x, weight, float(eps))[0]


def rope(q: Tensor, k: Tensor, cos: Tensor, sin: Tensor, position_ids: Tensor) -> tuple[Tensor, Tensor]:
    return tuple(torch.ops.s1fast_kernels.rope(q, k, cos, sin, position_ids))


def fused_linear_cross_entropy(hidden, weight, target, bias=None, *, ignore_index=-100, label_smoothing=0.0,
                               z_loss=0.0, softcap=None, reduction="mean", token_weight=None, normalizer=None,
                               return_lse=False, chunk_size=None, low_memory=False):
    """``linear_cross_entropy_op.fused_linear_cross_entropy`` (same semantics) behind the custom op."""
    h, w, b, t, w_eff, cfg, want_grad, chunk = ce.prepare_linear_ce(
        hidden, weight, target, bias, ignore_index=ignore_index, label_smoothing=label_smoothing, z_loss=z_loss,
        softcap=softcap, reduction=reduction, token_weight=token_weight, normalizer=normalizer,
        chunk_size=chunk_size, low_memory=low_memory)
    loss, lse, *_ = torch.ops.s1fast_kernels.fused_linear_cross_entropy(
        h, w, b, t, w_eff, cfg["ignore_index"], cfg["label_smoothing"], cfg["z_loss"], cfg["softcap"],
        cfg["reduction"], want_grad, chunk, cfg["low_memory"])
    return (loss, lse) if return_lse else loss
