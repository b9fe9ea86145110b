"""The fused linear cross-entropy as ``torch.library`` ops: the one autograd path of
``linear_cross_entropy_op.fused_linear_cross_entropy`` (which calls ``torch.ops.s1fast_kernels.*`` below).

The forward op returns the loss, the lse and, for a unit incoming gradient, the gradients made during the
forward (``need_*`` skip a frozen input's GEMM; ``low_memory`` leaves dW to the backward's own op). The
autograd formula scales those gradients by the incoming gradient (in place when eager: no second buffer),
recomputes them with the incoming per-token gradient for ``reduction="none"``, and makes dW by
``fused_linear_cross_entropy_dweight`` in low-memory mode. Each op has a fake implementation, so
``torch.compile(fullgraph=True)`` and fake tensors trace it.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .linear_cross_entropy_op import _linear_ce_chunks, _linear_ce_dweight
from .cross_entropy_op import refuse_second_backward, scale_unit_grads

NS = "s1fast_kernels"


@torch.library.custom_op(f"{NS}::fused_linear_cross_entropy", mutates_args=())
def _flce(hidden: Tensor, weight: Tensor, bias: Tensor | None, target: Tensor, w_eff: Tensor, ignore_index: int,
          label_smoothing: float, z_loss: float, softcap: float | None, reduction: str, want_grad: bool,
          chunk: int, low_memory: bool, need_dh: bool = True, need_dw: bool = True,
          need_db: bool = True) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(loss, lse, dhidden, dweight fp32, dbias fp32): gradients for a unit incoming gradient when
    ``want_grad``, each an empty tensor when not made (not wanted, not needed, or dW in low-memory mode)."""
    cfg = dict(ignore_index=ignore_index, label_smoothing=label_smoothing, z_loss=z_loss, softcap=softcap,
               reduction=reduction)
    rows, lse, dh, dw, db = _linear_ce_chunks(hidden, weight, bias, target, w_eff, cfg, want_grad, chunk,
                                                 (need_dh, need_dw and not low_memory, need_db))
    loss = rows if reduction == "none" else rows.sum()

    def empty(dtype):  # a fresh tensor each: outputs may not alias one another
        return hidden.new_empty(0, dtype=dtype)
    return loss, lse, (dh if dh is not None else empty(hidden.dtype)), \
        (dw if dw is not None else empty(torch.float32)), (db if db is not None else empty(torch.float32))


@_flce.register_fake
def _(hidden, weight, bias, target, w_eff, ignore_index, label_smoothing, z_loss, softcap, reduction, want_grad,
      chunk, low_memory, need_dh=True, need_dw=True, need_db=True):
    n, v = hidden.shape[0], weight.shape[0]
    f32 = dict(dtype=torch.float32)
    loss = hidden.new_empty((n,) if reduction == "none" else (), **f32)
    dh = torch.empty_like(hidden) if want_grad and need_dh else hidden.new_empty(0)
    dw = weight.new_empty(weight.shape if want_grad and need_dw and not low_memory else (0,), **f32)
    db = weight.new_empty((v,) if want_grad and need_db and bias is not None else (0,), **f32)
    return loss, hidden.new_empty((n,), **f32), dh, dw, db


@torch.library.custom_op(f"{NS}::fused_linear_cross_entropy_dweight", mutates_args=())
def _flce_dweight(hidden: Tensor, weight: Tensor, bias: Tensor | None, target: Tensor, w_eff: Tensor, lse: Tensor,
                  ignore_index: int, label_smoothing: float, z_loss: float, softcap: float | None,
                  chunk: int) -> Tensor:
    """The low-memory backward's weight gradient (in the weight's dtype), for effective weights w_eff that
    already include the incoming gradient."""
    cfg = dict(ignore_index=ignore_index, label_smoothing=label_smoothing, z_loss=z_loss, softcap=softcap)
    return _linear_ce_dweight(hidden, weight, bias, target, w_eff, lse, cfg, chunk)


@_flce_dweight.register_fake
def _(hidden, weight, bias, target, w_eff, lse, ignore_index, label_smoothing, z_loss, softcap, chunk):
    return torch.empty_like(weight)


def _setup(ctx, inputs, output):
    hidden, weight, bias, target, w_eff, *rest = inputs
    ctx.rest = rest  # ignore_index .. low_memory, need_dh, need_dw, need_db
    ctx.dtypes = (weight.dtype, bias.dtype if bias is not None else None)
    ctx.low = rest[7] and rest[9]  # low_memory and the weight needs a gradient: dW made in backward
    # the lse and the unit-gradient outputs take no gradient: autograd must not materialise zeros for them
    # (a [V, H] fp32 buffer for dW)
    ctx.mark_non_differentiable(*output[1:])
    ctx.set_materialize_grads(False)
    inputs_lse = (hidden, weight, bias, target, w_eff, output[1])
    if rest[4] == "none":  # the per-token incoming gradient is only known in backward: recompute then
        ctx.save_for_backward(*inputs_lse)
    else:
        ctx.save_for_backward(*output[2:], *(inputs_lse if ctx.low else ()))


def _grad(ctx, g, _glse, _gdh, _gdw, _gdb):
    ignore_index, smoothing, z_loss, softcap, reduction, _, chunk, low_memory, *needs = ctx.rest
    g = g.float()
    if reduction == "none":
        hidden, weight, bias, target, w_eff, lse = ctx.saved_tensors
        w_eff = (w_eff * g).contiguous()
        _, _, dh, dw, db = torch.ops.s1fast_kernels.fused_linear_cross_entropy(
            hidden, weight, bias, target, w_eff, ignore_index, smoothing, z_loss, softcap, reduction, True, chunk,
            low_memory, *needs)
    else:
        refuse_second_backward(ctx, "fused_linear_cross_entropy")
        dh, dw, db, *saved = ctx.saved_tensors
        dh, dw, db = scale_unit_grads(ctx, "fused_linear_cross_entropy", g, dh, dw, db)
        if ctx.low:
            hidden, weight, bias, target, w_eff, lse = saved
            w_eff = (w_eff * g).contiguous()
    if ctx.low:  # g is already inside w_eff
        dw = torch.ops.s1fast_kernels.fused_linear_cross_entropy_dweight(
            hidden, weight, bias, target, w_eff, lse, ignore_index, smoothing, z_loss, softcap, chunk)
    need_dh, need_dw, need_db = needs
    wdt, bdt = ctx.dtypes
    return (dh if need_dh else None, dw.to(wdt) if need_dw else None,
            db.to(bdt) if need_db and bdt is not None else None, *([None] * 13))


_flce.register_autograd(_grad, setup_context=_setup)
