"""The GRPO objective: group-relative advantages, the clipped policy-gradient loss, the k3 KL penalty, and
the per-token weights of each normalisation (derivation and references: docs/rl.md).

    adv = group_advantages(rewards [B*G], G, scale="std")          # per completion
    w   = token_weights(lengths, norm="token", max_len=C)           # per completion, for each of its tokens
    loss, stats = grpo_token_loss(logp, old_logp, adv_tok, w_tok, ref_logp=..., clip=(0.2, 0.2), kl_coef=0.04)

Per sampled token t of completion i: r = exp(logp - old_logp),
    l = -min(r A_i, clip(r, 1 - eps_low, 1 + eps_high) A_i) + beta * (exp(ref - logp) - (ref - logp) - 1),
and the loss is sum_t w_t l_t, where w folds in the normalisation over the WHOLE batch (all ranks):
"token" 1 / (sampled tokens in the batch), "sequence" 1 / (B |o_i|), "constant" 1 / (B C). So every rank
sums its own tokens and the step objective is exact with a plain gradient sum, as in the trainer.
"""
from __future__ import annotations

import torch

NORMS = ("token", "sequence", "constant")


def group_advantages(rewards: torch.Tensor, group_size: int, scale: str = "std", eps: float = 1e-4) -> torch.Tensor:
    """A_i = r_i - mean(group), divided by (std(group) + eps) with ``scale="std"`` (unbiased std, as TRL and
    DeepSeekMath), left as is with ``scale="none"`` (Dr. GRPO). rewards: [B * G], groups contiguous."""
    if rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not form groups of {group_size}")
    r = rewards.reshape(-1, group_size).to(torch.float64)
    a = r - r.mean(1, keepdim=True)
    if scale == "std":
        a = a / ((r.std(1, keepdim=True) if group_size > 1 else torch.zeros_like(a)) + eps)
    elif scale != "none":
        raise ValueError(f"advantage scale {scale!r}: use 'std' or 'none'")
    return a.reshape(-1)


def token_weights(lengths: torch.Tensor, norm: str, max_len: int | None = None) -> torch.Tensor:
    """Weight of each token of completion i ([B] sampled-token counts of the whole batch -> [B] float64)."""
    lengths = lengths.to(torch.float64)
    b = lengths.numel()
    if norm == "token":
        total = lengths.sum()
        return torch.full_like(lengths, 0.0) if total == 0 else torch.full_like(lengths, 1.0) / total
    if norm == "sequence":
        return torch.where(lengths > 0, 1.0 / (b * lengths.clamp(min=1)), 0.0)
    if norm == "constant":
        if not max_len:
            raise ValueError("normalisation 'constant' needs max_len (the completion budget in tokens)")
        return torch.full_like(lengths, 1.0 / (b * max_len))
    raise ValueError(f"normalisation {norm!r}: use one of {NORMS}")


def grpo_token_loss(logp, old_logp, adv, weight, *, ref_logp=None, clip=(0.2, 0.2), kl_coef: float = 0.0):
    """(sum_t w_t l_t, stats) over one micro-batch's tokens (weight 0 where a token is not sampled).

    All inputs are per token [T]; ``old_logp`` and ``ref_logp`` carry no gradient. ``clip=None`` drops the
    clipping (plain importance-weighted policy gradient). stats: sums over the tokens with weight > 0 of
    the clipped indicator, the KL estimate and the count (detached, for metrics)."""
    mask = weight != 0
    w = weight.to(logp.dtype)
    a = adv.to(logp.dtype)
    ratio = torch.exp(logp - old_logp.to(logp.dtype))
    pg = ratio * a
    if clip is not None:
        clipped = torch.clamp(ratio, 1.0 - clip[0], 1.0 + clip[1]) * a
        pg_used = torch.minimum(pg, clipped)
        was_clipped = (clipped < pg) & mask
    else:
        pg_used, was_clipped = pg, torch.zeros_like(mask)
    loss_tok = -pg_used
    kl = None
    if ref_logp is not None:
        d = ref_logp.to(logp.dtype) - logp
        kl = torch.exp(d) - d - 1.0
        if kl_coef:
            loss_tok = loss_tok + kl_coef * kl
    loss = (torch.where(mask, loss_tok, 0.0) * w).sum()
    stats = {"clipped": was_clipped.sum().detach(), "tokens": mask.sum().detach(),
             "kl": (torch.where(mask, kl, 0.0).sum().detach() if kl is not None else None)}
    return loss, stats
