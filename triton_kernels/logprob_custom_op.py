"""``token_logprobs`` as a ``torch.library`` custom op (``torch.ops.s1fast_kernels.token_logprobs``), with fake
implementations and an autograd formula whose backward is itself a custom op, so ``torch.compile`` keeps the
kernel an opaque call. This is the one autograd path: ``logprob_op.token_logprobs`` calls the op.

Inside the op the usual device rule applies (``_runtime.use_triton``). A DTensor weight is gathered before the
op (``logprob_op.prepare``).
"""
from __future__ import annotations

import torch
from torch import Tensor

from .logprob_op import logprob_backward, logprob_forward

NS = "s1fast_kernels"


def _cfg(ignore_index: int, temperature: float, entropy: bool) -> dict:
    return dict(ignore_index=ignore_index, temperature=temperature, entropy=entropy)


@torch.library.custom_op(f"{NS}::token_logprobs", mutates_args=())
def _token_logprobs(hidden: Tensor, weight: Tensor, target: Tensor, ignore_index: int, temperature: float,
                    entropy: bool, chunk: int | None = None, need_dh: bool = True,
                    need_dw: bool = True) -> tuple[Tensor, Tensor, Tensor]:
    """(logp, entropy or zeros, lse); ``need_*`` say which gradients the backward makes (a frozen weight
    skips its GEMMs)."""
    logp, ent, lse = logprob_forward(hidden, weight, target, _cfg(ignore_index, temperature, entropy), chunk)
    return logp, (ent if ent is not None else torch.zeros_like(logp)), lse


@_token_logprobs.register_fake
def _(hidden, weight, target, ignore_index, temperature, entropy, chunk=None, need_dh=True, need_dw=True):
    dt = torch.float64 if hidden.dtype == torch.float64 else torch.float32
    return tuple(hidden.new_empty(hidden.shape[0], dtype=dt) for _ in range(3))


@torch.library.custom_op(f"{NS}::token_logprobs_backward", mutates_args=())
def _token_logprobs_backward(hidden: Tensor, weight: Tensor, target: Tensor, lse: Tensor, ent: Tensor,
                             glp: Tensor, gent: Tensor, ignore_index: int, temperature: float,
                             entropy: bool, chunk: int | None = None, need_dh: bool = True,
                             need_dw: bool = True) -> tuple[Tensor, Tensor]:
    """(dh, dW), each an empty tensor when not needed."""
    cfg = _cfg(ignore_index, temperature, entropy)
    dh, dw = logprob_backward(hidden, weight, target, lse, ent if entropy else None, glp,
                              gent if entropy else None, cfg, need_dh, need_dw, chunk)
    return (dh if dh is not None else hidden.new_empty(0)), (dw if dw is not None else weight.new_empty(0))


@_token_logprobs_backward.register_fake
def _(hidden, weight, target, lse, ent, glp, gent, ignore_index, temperature, entropy, chunk=None, need_dh=True,
      need_dw=True):
    return (torch.empty_like(hidden) if need_dh else hidden.new_empty(0),
            torch.empty_like(weight) if need_dw else weight.new_empty(0))


def _setup(ctx, inputs, output):
    hidden, weight, target, *args = inputs
    ctx.save_for_backward(hidden, weight, target, output[2], output[1])
    ctx.args = args  # ignore_index, temperature, entropy, chunk, need_dh, need_dw


def _grad(ctx, glp, gent, _glse):
    hidden, weight, target, lse, ent = ctx.saved_tensors
    dh, dw = torch.ops.s1fast_kernels.token_logprobs_backward(hidden, weight, target, lse, ent, glp, gent,
                                                              *ctx.args)
    need_dh, need_dw = ctx.args[-2:]
    return (dh if need_dh else None), (dw if need_dw else None), None, None, None, None, None, None, None


_token_logprobs.register_autograd(_grad, setup_context=_setup)
