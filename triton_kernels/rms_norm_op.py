"""RMSNorm (Qwen2/Llama): ``y = x / sqrt(mean(x^2) + eps) * weight``, statistics in fp32.

PyTorch path for now; the Triton forward/backward kernels land with the kernels issue (#4) behind
the same ``rms_norm`` signature.
"""
from __future__ import annotations

import torch


def rms_norm_reference(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """transformers' Qwen2RMSNorm: normalise in fp32, cast back, then scale by the weight."""
    xf = x.float()
    y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * y.to(x.dtype)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    return rms_norm_reference(x, weight, eps)


class RMSNorm(torch.nn.Module):
    def __init__(self, hidden: int, eps: float = 1e-6):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(hidden))
        self.eps = eps

    def forward(self, x):
        return rms_norm(x, self.weight, self.eps)
