"""The kernels' functional API under its former name: each of these already goes through its registered
``torch.ops.s1fast_kernels`` op (fake implementation, autograd formula), so ``torch.compile(fullgraph=True)``
traces through it. Prefer ``import s1fast_kernels``; this module only keeps older callers working.
"""
from .linear_cross_entropy_op import fused_linear_cross_entropy
from .rms_norm_op import rms_norm
from .rope_op import rope
from .swiglu_op import swiglu

__all__ = ["fused_linear_cross_entropy", "rms_norm", "rope", "swiglu"]
