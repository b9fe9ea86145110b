"""The lean Qwen2 / Llama decoder s1fast trains, read and written as Hugging Face checkpoints.

Features
- One block class for both families: RMSNorm -> GQA attention (qkv bias for Qwen2; Llama's
  ``attention_bias`` / ``mlp_bias`` honoured) with RoPE (plain theta, or Llama-3 "llama3" scaling)
  -> residual -> RMSNorm -> SwiGLU MLP -> residual. Tied or untied ``lm_head``.
- Packed input only: ``input_ids`` [T], ``position_ids`` [T] (restarting at 0 per document),
  ``cu_seqlens`` int32 [D+1], ``max_seqlen``. ``forward`` returns the final-normed hidden states
  [T, H] so the trainer's fused linear cross-entropy never materialises [T, V] logits;
  ``logits`` gives them for tests and evaluation. Attention backends live in ``s1fast.attention``.
- The norms, RoPE and the SwiGLU activation are ``s1fast_kernels`` ops (Triton on CUDA, PyTorch on
  CPU, the same Triton code on CPU under ``TRITON_INTERPRET=1``).
- Parameter names are Hugging Face's minus the ``model.`` prefix, so checkpoints map 1:1.
- ``from_pretrained`` streams safetensors shard by shard; ``build_model(cfg, "meta")`` +
  ``load_weights`` loads after FSDP sharding, reading only each rank's slice of every tensor.
  ``save_pretrained`` / ``save_state_dict_hf`` write config.json, generation_config.json,
  (sharded) safetensors with an index and the tokenizer files: transformers loads the result.
- KV-cache decoding (``new_kv_cache`` / ``decode``) for generation with right-padded rows.
- Per-block activation checkpointing (full, or selective: keep attention, recompute the MLP) and
  per-block ``torch.compile``, applied from outside; ``flops_per_token`` / ``mfu``.

Usage::

    model = from_pretrained("Qwen2.5-0.5B-Instruct", dtype=torch.bfloat16, device="cuda")
    hidden = model(input_ids, position_ids, cu_seqlens, max_seqlen)      # [T, H]
    model.save_pretrained("out", tokenizer_dir="Qwen2.5-0.5B-Instruct")
"""
from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import asdict, dataclass, field, replace

import torch
import torch.nn as nn
import torch.nn.functional as F

import s1fast_kernels as tk
from s1fast import attention as attn


# =========================================================================== configuration
@dataclass
class ModelConfig:
    """The shape of a Qwen2 or Llama decoder (the fields of a Hugging Face config.json we use)."""
    arch: str = "qwen2"                   # "qwen2" | "llama"
    vocab_size: int = 151936
    hidden_size: int = 896
    intermediate_size: int = 4864
    num_layers: int = 24
    num_heads: int = 14
    num_kv_heads: int = 2
    head_dim: int = 64
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1e6
    rope_scaling: dict | None = None      # {"rope_type": "llama3", "factor", "low_freq_factor", ...}
    max_position_embeddings: int = 32768
    tie_word_embeddings: bool = False
    qkv_bias: bool = True
    o_bias: bool = False
    mlp_bias: bool = False
    initializer_range: float = 0.02
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    pad_token_id: int | None = None
    extra: dict = field(default_factory=dict)  # other config.json keys, written back unchanged

    _ARCHS = {"qwen2": "Qwen2ForCausalLM", "llama": "LlamaForCausalLM"}

    @classmethod
    def from_hf(cls, cfg: dict | str | os.PathLike) -> "ModelConfig":
        """From a config.json dict, a path to one, or a model folder holding one."""
        where = "config dict"
        if not isinstance(cfg, dict):
            path = os.fspath(cfg)
            if os.path.isdir(path):
                path = os.path.join(path, "config.json")
            if not os.path.isfile(path):
                raise FileNotFoundError(f"{path}: no config.json; pass a Hugging Face model folder")
            where = path
            with open(path) as f:
                cfg = json.load(f)
        cfg = dict(cfg)
        mt = cfg.get("model_type")
        archs = cfg.get("architectures") or []
        if mt not in cls._ARCHS:
            raise ValueError(f"{where}: model_type {mt!r} (architectures {archs}) is not supported; "
                             f"s1fast's decoder covers {sorted(cls._ARCHS)} (Qwen2/Qwen2.5, Llama)")
        if cfg.get("use_sliding_window"):
            raise ValueError(f"{where}: use_sliding_window=true is not supported (Qwen2.5 ships it off)")
        if set(cfg.get("layer_types") or ["full_attention"]) != {"full_attention"}:
            raise ValueError(f"{where}: layer_types {sorted(set(cfg['layer_types']))}; only "
                             "full_attention layers are supported")
        if cfg.get("hidden_act", "silu") != "silu":
            raise ValueError(f"{where}: hidden_act {cfg['hidden_act']!r}; only silu (SwiGLU) is supported")
        # transformers 5 nests theta and scaling in rope_parameters; 4.x keeps them at top level.
        rp = dict(cfg.get("rope_parameters") or cfg.get("rope_scaling") or {})
        theta = float(cfg.get("rope_theta", rp.get("rope_theta", 10000.0)))
        rtype = rp.get("rope_type", rp.get("type", "default"))
        if rtype not in ("default", "llama3"):
            raise ValueError(f"{where}: rope type {rtype!r} is not supported (default, llama3)")
        scaling = None
        if rtype == "llama3":
            scaling = {"rope_type": "llama3", "factor": float(rp["factor"]),
                       "low_freq_factor": float(rp["low_freq_factor"]),
                       "high_freq_factor": float(rp["high_freq_factor"]),
                       "original_max_position_embeddings": int(rp["original_max_position_embeddings"])}
        heads = cfg["num_attention_heads"]
        qwen = mt == "qwen2"
        used = {"model_type", "architectures", "vocab_size", "hidden_size", "intermediate_size",
                "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim",
                "rms_norm_eps", "rope_theta", "rope_scaling", "rope_parameters",
                "max_position_embeddings", "tie_word_embeddings", "attention_bias", "mlp_bias",
                "initializer_range", "bos_token_id", "eos_token_id", "pad_token_id", "hidden_act",
                "torch_dtype", "dtype", "transformers_version", "use_cache",
                "layer_types"}  # all full attention (checked above); derived again by transformers
        return cls(
            arch=mt, vocab_size=cfg["vocab_size"], hidden_size=cfg["hidden_size"],
            intermediate_size=cfg["intermediate_size"], num_layers=cfg["num_hidden_layers"],
            num_heads=heads, num_kv_heads=cfg.get("num_key_value_heads") or heads,
            head_dim=(None if qwen else cfg.get("head_dim")) or cfg["hidden_size"] // heads,
            rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)), rope_theta=theta, rope_scaling=scaling,
            max_position_embeddings=cfg.get("max_position_embeddings", 32768),
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            qkv_bias=True if qwen else bool(cfg.get("attention_bias", False)),
            o_bias=False if qwen else bool(cfg.get("attention_bias", False)),
            mlp_bias=False if qwen else bool(cfg.get("mlp_bias", False)),
            initializer_range=float(cfg.get("initializer_range", 0.02)),
            bos_token_id=cfg.get("bos_token_id"), eos_token_id=cfg.get("eos_token_id"),
            pad_token_id=cfg.get("pad_token_id"),
            extra={k: v for k, v in cfg.items() if k not in used})

    def to_hf(self, dtype: torch.dtype | None = None) -> dict:
        """A config.json dict (theta/scaling at top level: read by transformers 4.x and 5.x)."""
        d = dict(self.extra)
        d.update({
            "architectures": [self._ARCHS[self.arch]], "model_type": self.arch,
            "vocab_size": self.vocab_size, "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size, "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads, "num_key_value_heads": self.num_kv_heads,
            "hidden_act": "silu", "rms_norm_eps": self.rms_norm_eps, "rope_theta": self.rope_theta,
            "rope_scaling": dict(self.rope_scaling) if self.rope_scaling else None,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "initializer_range": self.initializer_range,
            "bos_token_id": self.bos_token_id, "eos_token_id": self.eos_token_id,
            "use_cache": True,
        })
        if self.pad_token_id is not None:
            d["pad_token_id"] = self.pad_token_id
        if self.arch == "llama":
            d.update(head_dim=self.head_dim, attention_bias=self.qkv_bias, mlp_bias=self.mlp_bias)
        elif self.head_dim * self.num_heads != self.hidden_size:
            raise ValueError("Qwen2 configs derive head_dim = hidden_size / num_attention_heads; "
                             f"head_dim={self.head_dim} cannot be written")
        if dtype is not None:
            d["torch_dtype"] = str(dtype).removeprefix("torch.")
        return d

    def with_(self, **kw) -> "ModelConfig":
        return replace(self, **kw)


def _llama31(h, i, n, heads, kv, head_dim):
    return ModelConfig(arch="llama", vocab_size=128256, hidden_size=h, intermediate_size=i, num_layers=n,
                       num_heads=heads, num_kv_heads=kv, head_dim=head_dim, rms_norm_eps=1e-5, rope_theta=500000.0,
                       rope_scaling=dict(_LLAMA31_ROPE), max_position_embeddings=131072,
                       tie_word_embeddings=False, qkv_bias=False, bos_token_id=128000, eos_token_id=128001)


def _qwen(h, i, n, heads, kv, vocab, tied, eos=151645):
    return ModelConfig(arch="qwen2", vocab_size=vocab, hidden_size=h, intermediate_size=i,
                       num_layers=n, num_heads=heads, num_kv_heads=kv, head_dim=h // heads,
                       rms_norm_eps=1e-6, rope_theta=1e6, max_position_embeddings=32768,
                       tie_word_embeddings=tied, qkv_bias=True, bos_token_id=151643,
                       eos_token_id=eos, extra={"sliding_window": 131072, "max_window_layers": n,
                                                "use_sliding_window": False})


_LLAMA31_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                 "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}

# The published config.json shapes (Qwen/Qwen2.5-*-Instruct, meta-llama/Llama-3.1-8B).
CONFIGS: dict[str, ModelConfig] = {
    "Qwen2.5-0.5B-Instruct": _qwen(896, 4864, 24, 14, 2, 151936, True),
    "Qwen2.5-1.5B-Instruct": _qwen(1536, 8960, 28, 12, 2, 151936, True),
    "Qwen2.5-3B-Instruct": _qwen(2048, 11008, 36, 16, 2, 151936, True),
    "Qwen2.5-7B-Instruct": _qwen(3584, 18944, 28, 28, 4, 152064, False),
    "Qwen2.5-14B-Instruct": _qwen(5120, 13824, 48, 40, 8, 152064, False),
    "Qwen2.5-32B-Instruct": _qwen(5120, 27648, 64, 40, 8, 152064, False),
    "Llama-3.1-8B": _llama31(4096, 14336, 32, 32, 8, 128),
    # Tiny models of the same architectures with the real vocabularies (tests, CPU demo).
    "tiny-qwen2": _qwen(64, 128, 2, 4, 2, 151936, True),
    "tiny-llama": _llama31(64, 128, 2, 4, 2, 16),
}


# =========================================================================== rotary embedding
def rope_inv_freq(cfg: ModelConfig, device=None) -> torch.Tensor:
    """Inverse frequencies theta^(-2i/d), with Llama-3's wavelength-dependent scaling if set.

    llama3: wavelengths w = 2 pi / f shorter than L/high_freq_factor keep f; longer than
    L/low_freq_factor use f/factor; in between s = (L/w - low) / (high - low) blends
    (1 - s) f/factor + s f (L = original_max_position_embeddings).
    """
    d = cfg.head_dim
    inv = 1.0 / (cfg.rope_theta ** (torch.arange(0, d, 2, dtype=torch.int64, device=device)
                                    .float() / d))
    sc = cfg.rope_scaling
    if sc:
        factor, lo, hi = sc["factor"], sc["low_freq_factor"], sc["high_freq_factor"]
        old = sc["original_max_position_embeddings"]
        wavelen = 2 * math.pi / inv
        scaled = torch.where(wavelen > old / lo, inv / factor, inv)
        s = (old / wavelen - lo) / (hi - lo)
        smooth = (1 - s) * scaled / factor + s * scaled
        medium = (wavelen >= old / hi) & (wavelen <= old / lo)
        inv = torch.where(medium, smooth, scaled)
    return inv


def rope_tables(cfg: ModelConfig, n_positions: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 cos/sin tables [n_positions, head_dim] (halves repeated, transformers' layout).

    Built per batch up to ``max_seqlen`` rather than kept as a buffer: a few KB of work, exact
    (pos * f in fp32, as transformers does), and nothing to re-create after a meta-device build.
    """
    inv = rope_inv_freq(cfg, device)
    freqs = torch.arange(n_positions, device=device, dtype=torch.float32)[:, None] * inv[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()


# =========================================================================== the decoder
class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.nh, self.nkv, self.hd = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        self.q_proj = nn.Linear(cfg.hidden_size, self.nh * self.hd, bias=cfg.qkv_bias)
        self.k_proj = nn.Linear(cfg.hidden_size, self.nkv * self.hd, bias=cfg.qkv_bias)
        self.v_proj = nn.Linear(cfg.hidden_size, self.nkv * self.hd, bias=cfg.qkv_bias)
        self.o_proj = nn.Linear(self.nh * self.hd, cfg.hidden_size, bias=cfg.o_bias)

    def forward(self, x, position_ids, cos, sin, meta):
        lead = x.shape[:-1]  # [T] packed, or [B, t] when decoding
        q = self.q_proj(x).view(*lead, self.nh, self.hd)
        k = self.k_proj(x).view(*lead, self.nkv, self.hd)
        v = self.v_proj(x).view(*lead, self.nkv, self.hd)
        q, k = tk.rope(q, k, cos, sin, position_ids)
        if isinstance(meta, _DecodeStep):
            out = meta.attend(q, k, v)
        else:
            out = attn.attention(q, k, v, meta)
        return self.o_proj(out.reshape(*lead, self.nh * self.hd))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=cfg.mlp_bias)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=cfg.mlp_bias)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=cfg.mlp_bias)

    def forward(self, x):
        return self.down_proj(tk.swiglu(self.gate_proj(x), self.up_proj(x)))


class Block(nn.Module):
    """Pre-norm decoder layer. ``checkpoint`` ("none" | "full" | "selective") is set from outside by
    ``apply_activation_checkpointing`` so parameter names (and checkpoints) never change."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.input_layernorm = tk.RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = tk.RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg)
        self.checkpoint = "none"

    def _attn(self, x, position_ids, cos, sin, meta):
        return x + self.self_attn(self.input_layernorm(x), position_ids, cos, sin, meta)

    def _mlp(self, x):
        return x + self.mlp(self.post_attention_layernorm(x))

    def _forward(self, x, position_ids, cos, sin, meta):
        return self._mlp(self._attn(x, position_ids, cos, sin, meta))

    def forward(self, x, position_ids, cos, sin, meta):
        ck = self.checkpoint if torch.is_grad_enabled() else "none"
        if ck == "full":
            return _checkpoint(self._forward, x, position_ids, cos, sin, meta)
        if ck == "selective":  # attention output kept; the MLP (most of the activations) recomputed
            return _checkpoint(self._mlp, self._attn(x, position_ids, cos, sin, meta))
        return self._forward(x, position_ids, cos, sin, meta)


def _checkpoint(fn, *args):
    return torch.utils.checkpoint.checkpoint(fn, *args, use_reentrant=False)


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.num_layers))
        self.norm = tk.RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.tie_weights()

    def tie_weights(self):
        """Tied models share one Parameter (safe to call again after ``to_empty``)."""
        if self.cfg.tie_word_embeddings:
            self.lm_head.weight = self.embed_tokens.weight

    @torch.no_grad()
    def init_weights(self):
        """transformers' initialisation: N(0, initializer_range) matrices, zero biases, unit norms."""
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                m.weight.normal_(0.0, self.cfg.initializer_range)
                if getattr(m, "bias", None) is not None:
                    m.bias.zero_()
            elif isinstance(m, tk.RMSNorm):
                m.weight.fill_(1.0)

    # ---- packed forward (training, evaluation)
    def forward(self, input_ids, position_ids, cu_seqlens, max_seqlen: int, head=None):
        """Packed batch -> final-normed hidden states [T, H]. ``position_ids`` must be < max_seqlen
        (they restart at 0 in every document).

        ``head(hidden, lm_head_weight)``, if given, is applied here and its result returned: the
        trainer's fused linear cross-entropy runs inside ``forward`` so that FSDP2's hooks have
        all-gathered the root's parameters (lm_head / tied embedding) when it reads them."""
        meta = attn.prepare(cu_seqlens, max_seqlen, input_ids.shape[0], device=input_ids.device)
        cos, sin = rope_tables(self.cfg, int(max_seqlen), input_ids.device)
        h = self.embed_tokens(input_ids)
        for layer in self.layers:
            h = layer(h, position_ids, cos, sin, meta)
        h = self.norm(h)
        return h if head is None else head(h, self.lm_head.weight)

    def logits(self, input_ids, position_ids, cu_seqlens, max_seqlen: int) -> torch.Tensor:
        """[T, V] logits in the model's dtype (tests, evaluation; training uses the fused loss).
        Goes through ``__call__`` so FSDP2's hooks run."""
        return self(input_ids, position_ids, cu_seqlens, max_seqlen, head=F.linear)

    # ---- KV-cache decoding (generation)
    def new_kv_cache(self, batch_size: int, max_len: int, dtype=None, device=None) -> "KVCache":
        p = self.embed_tokens.weight
        return KVCache.empty(self.cfg, batch_size, max_len, dtype or p.dtype, device or p.device)

    @torch.no_grad()
    def decode(self, input_ids: torch.Tensor, cache: "KVCache", lengths=None,
               last_only: bool = False) -> torch.Tensor:
        """Append ``input_ids`` [B, t] (right-padded; ``lengths`` [B] valid tokens per row, default
        t) to the cache and return their logits [B, t, V] in fp32 (padded entries: garbage); with
        ``last_only``, only each row's last valid position: [B, V] (rows of length 0: garbage).

        Row b's tokens take positions ``cache.seqlens[b] + i``; query i sees cached keys
        ``0 .. seqlens[b] + i``; padded entries are neither attended nor written; afterwards
        ``cache.seqlens += lengths``."""
        B, t = input_ids.shape
        dev = input_ids.device
        if lengths is None:
            lengths = torch.full((B,), t, dtype=torch.long, device=dev)
        lengths = torch.as_tensor(lengths, device=dev).long()
        seq = cache.seqlens.to(dev)
        # One sync per call: the longest key prefix to read and the table size (never the whole cache).
        kmax, top = (int(x) for x in torch.stack([(seq + lengths).max(), (seq + t).max()]).tolist())
        if kmax > cache.max_len:
            raise ValueError(f"KV cache full: a row needs {kmax} positions but the cache holds "
                             f"{cache.max_len}; allocate new_kv_cache(..., max_len>={kmax})")
        i = torch.arange(t, device=dev)
        pos = seq[:, None] + i[None, :]                                 # [B, t]
        valid = i[None, :] < lengths[:, None]
        step = _DecodeStep(cache, torch.where(valid, pos, cache.max_len), pos, max(kmax, 1))
        cos, sin = rope_tables(self.cfg, top, dev)
        h = self.embed_tokens(input_ids)
        for li, layer in enumerate(self.layers):
            step.layer = li
            h = layer(h, pos, cos, sin, step)
        cache.seqlens.copy_(seq + lengths)
        if last_only:
            h = h[torch.arange(B, device=dev), (lengths - 1).clamp(min=0)]
        return self.lm_head(self.norm(h)).float()

    # ---- checkpoints
    def save_pretrained(self, out_dir, tokenizer_dir=None, max_shard_bytes: int = 5 * 2**30,
                        dtype: torch.dtype | None = None):
        """Write a Hugging Face folder. DTensor parameters are gathered (collective: every rank of
        an FSDP job must call it); prefer the trainer's gathered state dict + save_state_dict_hf."""
        sd = {k: (v.full_tensor() if hasattr(v, "full_tensor") else v).detach()
              for k, v in self.state_dict().items()}
        save_state_dict_hf(sd, self.cfg, out_dir, tokenizer_dir, max_shard_bytes, dtype)

    def num_params(self) -> int:
        """Parameter count, tied weights once (``matmul_params(cfg)`` counts FLOP-bearing ones)."""
        return sum(p.numel() for p in self.parameters())


# =========================================================================== KV cache
@dataclass
class KVCache:
    """Per-layer keys/values [L, B, max_len + 1, Hk, D]; the extra slot receives the writes of
    padded entries so that writing needs no data-dependent indexing (it is never read)."""
    k: torch.Tensor
    v: torch.Tensor
    seqlens: torch.Tensor  # int64 [B]: valid cached tokens per row

    @property
    def max_len(self) -> int:
        return self.k.shape[2] - 1

    @classmethod
    def empty(cls, cfg: ModelConfig, batch_size, max_len, dtype, device):
        shape = (cfg.num_layers, batch_size, max_len + 1, cfg.num_kv_heads, cfg.head_dim)
        return cls(torch.zeros(shape, dtype=dtype, device=device),
                   torch.zeros(shape, dtype=dtype, device=device),
                   torch.zeros(batch_size, dtype=torch.long, device=device))

    def reset(self, rows=None):
        """Forget rows (all by default) so they can take new prompts."""
        if rows is None:
            self.seqlens.zero_()
        else:
            self.seqlens[rows] = 0


class _DecodeStep:
    """What one ``decode`` call hands to every layer instead of a PackedBatch."""

    def __init__(self, cache: KVCache, write_pos, pos, kmax: int):
        self.cache, self.write_pos, self.pos, self.kmax, self.layer = cache, write_pos, pos, kmax, 0
        rows = torch.arange(pos.shape[0], device=pos.device)[:, None]
        self.rows = rows
        j = torch.arange(kmax, device=pos.device)
        self.mask = (j[None, None, :] <= pos[:, :, None])[:, None]      # [B, 1, t, kmax]

    def attend(self, q, k, v):  # q [B, t, Hq, D], k/v [B, t, Hk, D]
        ck, cv = self.cache.k[self.layer], self.cache.v[self.layer]
        ck[self.rows, self.write_pos] = k.to(ck.dtype)
        cv[self.rows, self.write_pos] = v.to(cv.dtype)
        K, V = ck[:, :self.kmax].transpose(1, 2), cv[:, :self.kmax].transpose(1, 2)
        out = F.scaled_dot_product_attention(q.transpose(1, 2), K.to(q.dtype), V.to(q.dtype),
                                             attn_mask=self.mask, enable_gqa=q.shape[2] != k.shape[2])
        return out.transpose(1, 2)


# =========================================================================== building, loading
def get_config(name_or_dir: str | os.PathLike) -> ModelConfig:
    """A CONFIGS name (``tiny-qwen2``, ``Qwen2.5-32B-Instruct``) or a Hugging Face model folder."""
    key = os.fspath(name_or_dir)
    if key in CONFIGS:
        return CONFIGS[key]
    if os.path.isdir(key):
        return ModelConfig.from_hf(key)
    raise FileNotFoundError(f"model {key!r} is neither a named config ({', '.join(CONFIGS)}) nor a "
                            "folder with a config.json")


def build_model(cfg: ModelConfig | str, device="cpu", dtype=torch.float32, init: bool = True):
    """A model of ``cfg`` (a ModelConfig, a CONFIGS name or a model folder: only its config is read).
    On ``"meta"`` nothing is allocated: shard it (fully_shard), then ``load_weights`` (or
    ``to_empty`` + ``tie_weights`` + ``init_weights``)."""
    if not isinstance(cfg, ModelConfig):
        cfg = get_config(cfg)
    with torch.device("meta"):
        model = Transformer(cfg).to(dtype)
    if str(device) != "meta":
        model.to_empty(device=device)
        model.tie_weights()
        if init:
            model.init_weights()
    return model


def hf_name(name: str) -> str:
    """Our parameter name -> the Hugging Face checkpoint key."""
    return name if name.startswith("lm_head.") else "model." + name


def _clean_name(name: str) -> str:
    # Wrappers (torch.compile's OptimizedModule, checkpoint wrappers) insert these into names.
    for w in ("_orig_mod.", "_checkpoint_wrapped_module.", "_fsdp_wrapped_module."):
        name = name.replace(w, "")
    return name


def _weight_files(ckpt_dir: str) -> dict[str, list[str]]:
    """{file: [keys]} of a folder's safetensors (single file or an index of shards)."""
    from safetensors import safe_open
    index = os.path.join(ckpt_dir, "model.safetensors.index.json")
    single = os.path.join(ckpt_dir, "model.safetensors")
    if os.path.isfile(index):
        with open(index) as f:
            wmap = json.load(f)["weight_map"]
        files: dict[str, list[str]] = {}
        for key, fn in wmap.items():
            files.setdefault(os.path.join(ckpt_dir, fn), []).append(key)
        for fn in files:
            if not os.path.isfile(fn):
                raise FileNotFoundError(f"{index} names shard {os.path.basename(fn)}, "
                                        f"which is missing from {ckpt_dir}")
        return files
    if os.path.isfile(single):
        with safe_open(single, "pt") as f:
            return {single: list(f.keys())}
    raise FileNotFoundError(f"{ckpt_dir}: no model.safetensors or model.safetensors.index.json "
                            "(only safetensors checkpoints are read; convert .bin files first)")


def _local_slice(param, shape):
    """The index of this rank's shard of a DTensor parameter in the full tensor (None: whole)."""
    if not hasattr(param, "device_mesh"):
        return None
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset
    lshape, offset = compute_local_shape_and_global_offset(shape, param.device_mesh, param.placements)
    return tuple(slice(o, o + s) for o, s in zip(offset, lshape))


@torch.no_grad()
def load_weights(model: Transformer, ckpt_dir, strict: bool = True, device=None) -> Transformer:
    """Copy a Hugging Face folder's weights into ``model``, one shard file at a time.

    Parameters may be plain tensors, still on the meta device (materialised with ``to_empty`` on
    ``device``, default CPU), or DTensors (FSDP2): then only this rank's slice of each
    tensor is read from disk (safetensors slices), so no rank ever holds a full 32B model."""
    from safetensors import safe_open
    ckpt_dir = os.fspath(ckpt_dir)
    params = dict(model.named_parameters())  # tied lm_head appears once, as embed_tokens
    if any(p.is_meta for p in params.values()):
        model.to_empty(device=device or "cpu")
        if not any(hasattr(p, "device_mesh") for p in model.parameters()):
            model.tie_weights()
        params = dict(model.named_parameters())
    want = {hf_name(_clean_name(n)): p for n, p in params.items()}
    seen = set()
    for fn, keys in sorted(_weight_files(ckpt_dir).items()):
        with safe_open(fn, "pt") as f:
            for key in keys:
                if key not in want:
                    if key == "lm_head.weight" and model.cfg.tie_word_embeddings:
                        continue  # some tied checkpoints store the copy too
                    if key.endswith("rotary_emb.inv_freq"):
                        continue  # old checkpoints saved this buffer; it is recomputed
                    if strict:
                        raise KeyError(f"{fn}: tensor {key!r} has no place in a "
                                       f"{model.cfg.arch} model of this config")
                    continue
                p = want[key]
                sl = f.get_slice(key)
                shape = tuple(sl.get_shape())
                if shape != tuple(p.shape):
                    raise ValueError(f"{fn}: tensor {key!r} has shape {list(shape)} but the model "
                                     f"expects {list(p.shape)}; config.json and weights disagree")
                idx = _local_slice(p, shape)
                t = sl[idx] if idx is not None else f.get_tensor(key)
                dst = p.to_local() if hasattr(p, "to_local") else p
                dst.copy_(t.to(dst.dtype))
                seen.add(key)
    missing = sorted(set(want) - seen)
    if missing and strict:
        raise KeyError(f"{ckpt_dir}: checkpoint lacks {len(missing)} tensors, e.g. {missing[:4]}")
    return model


def from_pretrained(ckpt_dir, dtype=torch.float32, device="cpu") -> Transformer:
    """Read a Hugging Face Qwen2/Llama folder (config.json + safetensors) into a Transformer."""
    cfg = ModelConfig.from_hf(ckpt_dir)
    with torch.device("meta"):
        model = Transformer(cfg).to(dtype)
    model.to_empty(device=device)
    model.tie_weights()
    return load_weights(model, ckpt_dir)


# =========================================================================== saving
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt",
                    "special_tokens_map.json", "added_tokens.json", "tokenizer.model",
                    "chat_template.jinja", "chat_template.json")


def save_state_dict_hf(state_dict: dict, cfg: ModelConfig, out_dir, tokenizer_dir=None,
                       max_shard_bytes: int = 5 * 2**30, dtype: torch.dtype | None = None) -> None:
    """Write a full (gathered) state dict as a Hugging Face folder.

    Keys are ours (``layers.0.mlp.up_proj.weight``; wrapper prefixes are stripped). Tensors go
    into shards of at most ``max_shard_bytes`` (one file -> model.safetensors; several ->
    model-0000i-of-0000n.safetensors + model.safetensors.index.json). ``dtype`` casts on the way
    out (e.g. fp32 master weights saved as bf16, as s1 released its models)."""
    from safetensors.torch import save_file
    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    tensors = {}
    for k, v in state_dict.items():
        name = hf_name(_clean_name(k))
        if name == "lm_head.weight" and cfg.tie_word_embeddings:
            continue  # tied: transformers re-ties from embed_tokens
        tensors[name] = v.detach().to("cpu", dtype=dtype if v.is_floating_point() else None).contiguous()
    dtypes = {t.dtype for t in tensors.values()}
    shards: list[dict] = [{}]
    size = 0
    for name in sorted(tensors, key=_natural_key):
        nbytes = tensors[name].numel() * tensors[name].element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = tensors[name]
        size += nbytes
    for f in os.listdir(out_dir):  # stale shards of an earlier save would confuse loaders
        if f.startswith("model") and (f.endswith(".safetensors") or f.endswith(".index.json")):
            os.remove(os.path.join(out_dir, f))
    if len(shards) == 1:
        save_file(shards[0], os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})
    else:
        wmap, n = {}, len(shards)
        for i, shard in enumerate(shards):
            fn = f"model-{i + 1:05d}-of-{n:05d}.safetensors"
            save_file(shard, os.path.join(out_dir, fn), metadata={"format": "pt"})
            wmap.update({k: fn for k in shard})
        total = sum(t.numel() * t.element_size() for t in tensors.values())
        with open(os.path.join(out_dir, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {"total_size": total}, "weight_map": wmap}, f, indent=2)
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(cfg.to_hf(dtypes.pop() if len(dtypes) == 1 else None), f, indent=2)
    gen = {k: getattr(cfg, k) for k in ("bos_token_id", "eos_token_id", "pad_token_id")
           if getattr(cfg, k) is not None}
    with open(os.path.join(out_dir, "generation_config.json"), "w") as f:
        json.dump(gen, f, indent=2)
    if tokenizer_dir is not None:
        copied = [fn for fn in _TOKENIZER_FILES if os.path.isfile(os.path.join(tokenizer_dir, fn))]
        if not copied:
            raise FileNotFoundError(f"{tokenizer_dir}: no tokenizer files ({', '.join(_TOKENIZER_FILES)})")
        for fn in copied:
            shutil.copy2(os.path.join(tokenizer_dir, fn), os.path.join(out_dir, fn))


def _natural_key(name: str):
    # layers.10 after layers.9, so shards hold consecutive layers.
    return [int(p) if p.isdigit() else p for p in name.split(".")]


# =========================================================================== outside hooks
def apply_activation_checkpointing(model: Transformer, mode: str = "full", layers: int | None = None) -> Transformer:
    """Recompute each block in backward ("full"), or only its MLP half ("selective": the attention
    output is kept, the MLP's [T, intermediate] activations are recomputed); "none" turns it off.
    ``layers`` (default: all) checkpoints only the first ``layers`` blocks: memory left over after the
    weights buys back recompute time block by block. Apply before compile and fully_shard (torchtitan's order)."""
    if mode not in ("none", "full", "selective"):
        raise ValueError(f"activation checkpointing mode {mode!r}; use 'none', 'full' or 'selective'")
    n = len(model.layers) if layers is None else layers
    if not 0 <= n <= len(model.layers):
        raise ValueError(f"checkpoint layers {layers}: the model has {len(model.layers)} blocks")
    for i, block in enumerate(model.layers):
        block.checkpoint = mode if i < n else "none"
    return model


def compile_blocks(model: Transformer, **compile_kwargs) -> Transformer:
    """``torch.compile`` each block in place (``nn.Module.compile``: names and checkpoints unchanged);
    every block has the same code, so one compiled graph serves all layers."""
    for block in model.layers:
        block.compile(**compile_kwargs)
    return model


# =========================================================================== FLOPs and MFU
def matmul_params(cfg: ModelConfig) -> int:
    """Weights that take part in a matmul per token: attention and MLP projections + lm_head
    (the embedding is a lookup, norms and biases are negligible)."""
    h, d = cfg.hidden_size, cfg.head_dim
    attn_p = h * d * (2 * cfg.num_heads + 2 * cfg.num_kv_heads)
    mlp_p = 3 * h * cfg.intermediate_size
    return cfg.num_layers * (attn_p + mlp_p) + h * cfg.vocab_size


def flops_per_token(cfg: ModelConfig, seq_len: float, training: bool = True) -> float:
    """Model FLOPs per token (PaLM appendix B convention, causal attention).

    forward  = 2 N + 2 L Hq d S
    training = 3 x forward = 6 N + 6 L Hq d S

    N = matmul_params(cfg). Attention: Q K^T and P V each cost 2 Hq d per (query, key) pair; a
    causal document of length S has S(S+1)/2 pairs, so (2+2) Hq d (S+1)/2 ~ 2 Hq d S per token per
    layer. For packed batches pass S = sum(S_i^2) / sum(S_i) over the documents (the
    token-weighted mean length), since attention never crosses documents."""
    fwd = 2 * matmul_params(cfg) + 2 * cfg.num_layers * cfg.num_heads * cfg.head_dim * seq_len
    return 3 * fwd if training else fwd


def mfu(tokens_per_s: float, cfg: ModelConfig, seq_len: float, peak_flops: float) -> float:
    """Model FLOPs utilisation: achieved model FLOP/s over the hardware peak (per device: pass
    per-device tokens/s with one device's peak, e.g. H100 SXM dense bf16 989e12)."""
    return tokens_per_s * flops_per_token(cfg, seq_len) / peak_flops
