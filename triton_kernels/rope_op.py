"""Rotary position embedding for packed sequences, Q and K together.

Layouts: varlen ``q`` [T, Hq, D], ``k`` [T, Hk, D] with ``position_ids`` [T] (restarting at 0 per
document), or batched [B, S, H, D] with ``position_ids`` [B, S]. ``cos``/``sin`` are
[max_positions, rotary_dim] tables in transformers' layout (the two halves repeated), so any RoPE
scaling the caller computed is honoured. ``rotary_dim < head_dim`` rotates the first ``rotary_dim``
channels and passes the rest through (partial rotary).

Math (rotate_half convention, r = rotary_dim, x1 = x[:r/2], x2 = x[r/2:r]):
    out[:r/2]  = x1 * cos[:r/2] - x2 * sin[:r/2]
    out[r/2:r] = x2 * cos[r/2:] + x1 * sin[r/2:]
Backward is the same rotation by -theta.

PyTorch path for now; the Triton kernel lands with the kernels issue (#4) behind the same signature.
"""
from __future__ import annotations

import torch


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def rope_reference(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                   position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    r = cos.shape[-1]
    c = cos[position_ids].unsqueeze(-2).float()  # [..., 1, r]
    s = sin[position_ids].unsqueeze(-2).float()

    def apply(x):
        xr, xp = x[..., :r].float(), x[..., r:]
        out = (xr * c + _rotate_half(xr) * s).to(x.dtype)
        return torch.cat((out, xp), dim=-1) if xp.shape[-1] else out

    return apply(q), apply(k)


def rope(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
         position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return rope_reference(q, k, cos, sin, position_ids)
