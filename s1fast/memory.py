"""The memory model of one s1fast rank, shared by the trainer and the projection.

A decoder's shape (:func:`model_shape`, from a ``ModelConfig``), per-GPU memory at a number of tokens
(:func:`memory_gb`), the budget a run keeps (device memory less a runtime reserve, less a headroom), the fewest
layers to checkpoint (:func:`layers_to_checkpoint`) and the trainer's adaptive policy built on it
(:func:`checkpoint_policy`). The derivation of every term is in docs/projection.md ("Memory of one GPU").
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from s1fast.hardware import GB

RUNTIME_RESERVE_GB = 2.0   # CUDA context, NCCL buffers, allocator fragmentation: an assumption
MEMORY_HEADROOM = 0.1      # the fraction of the budget kept free when choosing what to checkpoint


@dataclass(frozen=True)
class MemoryAssumptions:
    """What the memory model assumes. The projection's ``Assumptions`` carries the same fields."""
    runtime_reserve_gb: float = RUNTIME_RESERVE_GB
    memory_headroom: float = MEMORY_HEADROOM
    loss_chunk: int | None = None   # tokens per chunk of the fused loss (None: its GPU default)


def budget_gb(device_gb: float, A) -> float:
    """The memory a run may use: the device's less the runtime reserve (what 'fits' is judged against)."""
    return device_gb - A.runtime_reserve_gb


def checkpoint_limit_gb(device_gb: float, A) -> float:
    """The budget less the headroom: what s1fast's checkpointing choices aim to stay within."""
    return budget_gb(device_gb, A) * (1 - A.memory_headroom)


@dataclass(frozen=True)
class Shape:
    """What the memory and time models need of a decoder: sizes, stored parameters, cost c(L) = a*L + b*L^2."""
    name: str
    h: int
    ffn: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    layer_params: int   # stored per decoder layer (biases and norms included): memory
    embed_params: int
    head_params: int    # 0 when tied to the embedding
    a: float            # training FLOPs per token, linear part (6 x matmul parameters)
    b: float            # training FLOPs per token per token of context (causal attention)

    @property
    def params(self) -> int:
        return self.layers * self.layer_params + self.embed_params + self.head_params + self.h  # + final norm

    @property
    def kv(self) -> int:
        return self.kv_heads * self.head_dim

    def cost(self, L: float) -> float:
        return self.a * L + self.b * L * L


def model_shape(name_or_dir) -> Shape:
    """A config name of s1fast.model.CONFIGS, a Hugging Face model folder (only config.json is read), or a
    ``s1fast.model.ModelConfig``."""
    from s1fast.model_config import ModelConfig, cost_coefficients, get_config
    cfg = name_or_dir if isinstance(name_or_dir, ModelConfig) else get_config(name_or_dir)
    h, f, d = cfg.hidden_size, cfg.intermediate_size, cfg.head_dim
    q, kv = cfg.num_heads * d, cfg.num_kv_heads * d
    layer = (h * q + 2 * h * kv + (q + 2 * kv) * cfg.qkv_bias + q * h + h * cfg.o_bias
             + 3 * h * f + (2 * f + h) * cfg.mlp_bias + 2 * h)
    emb = cfg.vocab_size * h
    a, b = cost_coefficients(cfg)
    name = f"{cfg.arch} {cfg.num_layers}x{h}" if isinstance(name_or_dir, ModelConfig) else str(name_or_dir)
    return Shape(name, h, f, cfg.num_layers, cfg.num_heads, cfg.num_kv_heads, d, cfg.vocab_size,
                 layer, emb, 0 if cfg.tie_word_embeddings else emb, a, b)


def memory_gb(s: Shape, A, *, stack: str, tokens: int, shard: int, ckpt_layers: int | None = None) -> dict:
    """Per-GPU memory components in GB at ``tokens`` tokens on the rank (docs/projection.md).

    ``stack``: "s1fast" or "reference" (s1's transformers stack); ``ckpt_layers``: how many decoder layers use
    activation checkpointing (default: all)."""
    from s1fast_kernels.linear_cross_entropy_op import _default_chunk as default_chunk
    k = s.layers if ckpt_layers is None else ckpt_layers
    h, f, kv, V, L = s.h, s.ffn, s.kv, s.vocab, tokens
    ref = stack == "reference"
    act_layer = (2 * 6 * h + 3 * 2 * h + 2 * 2 * h + 4 * 2 * f) if ref else (4 * 2 * h + 2 * h + 2 * 2 * kv
                                                                           + 2 * h + 3 * 2 * f)
    work_layer = (3 * 2 * f) if ref else (2 * 2 * f)
    grad_bytes = 2 if ref else 4
    states = 16.0 * s.params / shard
    saved = k * L * 2 * h + (s.layers - k) * L * act_layer
    layer_phase = (2 * 2 * s.layer_params + grad_bytes * s.layer_params
                   + L * ((act_layer if k else 0) + work_layer))
    if ref:
        # gathered lm_head, then the larger of: the log-softmax backward (3 fp32 L x V tensors), and the
        # lm_head backward that follows (bf16 logit gradient, lm_head gradient, hidden-state gradient)
        loss_phase = 2 * V * h + max(12.0 * L * V, 2.0 * L * V + 2 * V * h + 2 * L * h)
    else:
        # gathered lm_head + fp32 weight-gradient accumulator + one chunk's fp32 logits and bf16 gradient +
        # the bf16 hidden-state gradient, all live together (the fused loss makes its gradients in forward)
        chunk = A.loss_chunk or default_chunk(L, V, on_gpu=True)  # the kernel's own GPU default
        loss_phase = 2 * V * h + 4 * V * h + 6.0 * min(chunk, L) * V + 2.0 * L * h
    parts = {
        "states": states,
        "saved_activations": saved,
        "loss_phase": loss_phase,
        "layer_phase": layer_phase,
        "fp32_logits_full": 4.0 * L * V,
    }
    parts = {k: v / GB for k, v in parts.items()}
    parts["peak"] = parts["states"] + parts["saved_activations"] + max(parts["loss_phase"], parts["layer_phase"])
    return parts


def max_fit_tokens(s: Shape, A, *, stack: str, shard: int, limit_gb: float, ckpt_layers: int | None = None) -> int:
    """Largest number of tokens on one rank whose peak memory stays within ``limit_gb`` (0 if none)."""
    lo, hi = 0, 1 << 22
    while lo < hi:  # peak memory grows with tokens: bisection
        mid = (lo + hi + 1) // 2
        ok = memory_gb(s, A, stack=stack, tokens=mid, shard=shard, ckpt_layers=ckpt_layers)["peak"] <= limit_gb
        lo, hi = (mid, hi) if ok else (lo, mid - 1)
    return lo


def layers_to_checkpoint(s: Shape, A, *, tokens: int, shard: int, limit_gb: float) -> int | None:
    """The fewest decoder layers to checkpoint (the first ones) so that ``tokens`` tokens on one rank stay
    within ``limit_gb``; None if even every layer checkpointed does not fit."""
    if memory_gb(s, A, stack="s1fast", tokens=tokens, shard=shard, ckpt_layers=s.layers)["peak"] > limit_gb:
        return None
    lo, hi = 0, s.layers  # peak falls as layers are checkpointed: the fewest that fit, by bisection
    while lo < hi:
        mid = (lo + hi) // 2
        if memory_gb(s, A, stack="s1fast", tokens=tokens, shard=shard, ckpt_layers=mid)["peak"] <= limit_gb:
            hi = mid
        else:
            lo = mid + 1
    return lo


def checkpoint_policy(s: Shape, A, *, shard: int, limit_gb: float,
                      on_overflow: Callable[[int], None] | None = None) -> Callable[[int], int]:
    """The adaptive policy: tokens on the rank -> layers to checkpoint (every layer where nothing fits, after
    calling ``on_overflow(tokens)`` once). Cached per token count, as the trainer asks before every micro-step."""
    cache: dict[int, int] = {}
    warned: list[int] = []

    def layers_for(tokens: int) -> int:
        if tokens not in cache:
            k = layers_to_checkpoint(s, A, tokens=tokens, shard=shard, limit_gb=limit_gb)
            if k is None and on_overflow is not None and not warned:
                warned.append(tokens)
                on_overflow(tokens)
            cache[tokens] = s.layers if k is None else k
        return cache[tokens]
    return layers_for
