"""s1fast's Triton kernels, usable by any trainer (imports nothing of ``s1fast``).

    from s1fast_kernels import rms_norm, rope, swiglu, fused_linear_cross_entropy, cross_entropy, patch_hf
    y = rms_norm(x, weight, eps)                              # Qwen2/Llama RMSNorm
    q, k = rope(q, k, cos, sin, position_ids)                 # packed [T,H,D] + [T], or [B,S,H,D] + [B,S]
    a = swiglu(gate, up)                                      # silu(gate) * up
    loss = fused_linear_cross_entropy(h, lm_head.weight, target, token_weight=w, reduction="sum")
    patch_hf(model)                                           # a transformers Qwen2 / Llama model
    o = packed_attention(q, k, v, cu_seqlens, max_seqlen)     # causal inside packed documents, GQA

Each kernel has its own file: math, ``@triton.jit`` code, launcher, its registered ``torch.library`` op (the
one autograd path: eager, ``torch.compile(fullgraph=True)`` and fake tensors), functional API and reference;
the fused loss's and log-probabilities' ops are in ``*_custom_op.py``. CUDA tensors run the Triton kernels;
CPU tensors run PyTorch unless ``TRITON_INTERPRET=1``.
"""
from .attention_op import packed_attention, packed_attention_reference
from .cross_entropy_op import cross_entropy
from .logprob_op import token_logprobs
from .linear_cross_entropy_op import (FusedLinearCrossEntropy, fused_linear_cross_entropy,
                                      fused_linear_cross_entropy_reference)
from . import linear_cross_entropy_custom_op, logprob_custom_op  # noqa: F401  (register their ops)
from .hf import patch_hf
from .rms_norm_op import RMSNorm, rms_norm, rms_norm_reference
from .rope_op import rope, rope_reference
from .swiglu_op import SwiGLU, swiglu, swiglu_reference

__all__ = ["swiglu", "swiglu_reference", "SwiGLU", "rms_norm", "rms_norm_reference", "RMSNorm",
           "rope", "rope_reference", "fused_linear_cross_entropy", "fused_linear_cross_entropy_reference",
           "cross_entropy", "FusedLinearCrossEntropy", "patch_hf", "packed_attention", "packed_attention_reference",
           "token_logprobs"]
