"""``token_logprobs`` as a ``torch.library`` custom op (``torch.ops.s1fast_kernels.token_logprobs``), with fake
implementations and an autograd formula whose backward is itself a custom op, so ``torch.compile`` keeps the
kernel an opaque call (the pattern of ``custom_ops``).

    from s1fast_kernels.logprob_custom_op import token_logprobs
    logp, ent = token_logprobs(h, W, target, temperature=1.0, entropy=True)

Inside the op the usual device rule applies (``_runtime.use_triton``). A DTensor weight is gathered before the
op (``logprob_op.prepare``), as the eager entry point does.
"""
from __future__ import annotations

import torch
from torch import Tensor

from . import logprob_op as lp

NS = "s1fast_kernels"


def _cfg(ignore_index: int, temperature: float, entropy: bool) -> dict:
    return dict(ignore_index=ignore_index, temperature=temperature, entropy=entropy)


@torch.library.custom_op(f"{NS}::token_logprobs", mutates_args=())
def _token_logprobs(hidden: Tensor, weight: Tensor, target: Tensor, ignore_index: int, temperature: float,
                    entropy: bool) -> tuple[Tensor, Tensor, Tensor]:
    logp, ent, lse = lp.logprob_forward(hidden, weight, target, _cfg(ignore_index, temperature, entropy))
    return logp, (ent if ent is not None else torch.zeros_like(logp)), lse


@_token_logprobs.register_fake
def _(hidden, weight, target, ignore_index, temperature, entropy):
    dt = torch.float64 if hidden.dtype == torch.float64 else torch.float32
    return tuple(hidden.new_empty(hidden.shape[0], dtype=dt) for _ in range(3))


@torch.library.custom_op(f"{NS}::token_logprobs_backward", mutates_args=())
def _token_logprobs_backward(hidden: Tensor, weight: Tensor, target: Tensor, lse: Tensor, ent: Tensor,
                             glp: Tensor, gent: Tensor, ignore_index: int, temperature: float,
                             entropy: bool) -> tuple[Tensor, Tensor]:
    cfg = _cfg(ignore_index, temperature, entropy)
    return lp.logprob_backward(hidden, weight, target, lse, ent if entropy else None, glp,
                               gent if entropy else None, cfg)


@_token_logprobs_backward.register_fake
def _(hidden, weight, target, lse, ent, glp, gent, ignore_index, temperature, entropy):
    return torch.empty_like(hidden), torch.empty_like(weight)


def _setup(ctx, inputs, output):
    hidden, weight, target, ignore_index, temperature, entropy = inputs
    ctx.save_for_backward(hidden, weight, target, output[2], output[1])
    ctx.args = (ignore_index, temperature, entropy)


def _grad(ctx, glp, gent, _glse):
    hidden, weight, target, lse, ent = ctx.saved_tensors
    dh, dw = torch.ops.s1fast_kernels.token_logprobs_backward(hidden, weight, target, lse, ent, glp, gent,
                                                              *ctx.args)
    return dh, dw, None, None, None, None


_token_logprobs.register_autograd(_grad, setup_context=_setup)


def token_logprobs(hidden: Tensor, weight: Tensor, target: Tensor, *, temperature: float = 1.0,
                   entropy: bool = False, ignore_index: int = -100):
    """The custom-op form of ``logprob_op.token_logprobs`` (same arguments and results)."""
    h, w, t, cfg = lp.prepare(hidden, weight, target, temperature=temperature, entropy=entropy,
                              ignore_index=ignore_index)
    logp, ent, _ = torch.ops.s1fast_kernels.token_logprobs(h, w, t, cfg["ignore_index"], cfg["temperature"],
                                                           cfg["entropy"])
    return logp, (ent if entropy else None)
