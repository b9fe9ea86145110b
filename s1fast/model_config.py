"""The shape of a Qwen2 / Llama decoder (``ModelConfig``, read from a Hugging Face config.json), the named
published shapes (``CONFIGS``), and the one home of the training-FLOP formula (``flops_per_token``, its
``a*L + b*L^2`` form ``cost_coefficients``, ``mfu``). No torch at import: the planner and the memory model
read shapes without loading the model code. ``s1fast.model`` re-exports every name here.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace


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

    def to_hf(self, dtype=None) -> dict:
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
    # the demo's model: untied, since with a tied 151,936-row table it learns the toy task's format but not its
    # digits (bench/RESULTS.md, the demo's toy task)
    "tiny-qwen2-untied": _qwen(64, 128, 2, 4, 2, 151936, False),
    "tiny-llama": _llama31(64, 128, 2, 4, 2, 16),
}


def get_config(name_or_dir: str | os.PathLike) -> ModelConfig:
    """A CONFIGS name (``tiny-qwen2``, ``Qwen2.5-32B-Instruct``) or a Hugging Face model folder."""
    key = os.fspath(name_or_dir)
    if key in CONFIGS:
        return CONFIGS[key]
    if os.path.isdir(key):
        return ModelConfig.from_hf(key)
    raise FileNotFoundError(f"model {key!r} is neither a named config ({', '.join(CONFIGS)}) nor a "
                            "folder with a config.json")


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


def cost_coefficients(cfg: ModelConfig) -> tuple[float, float]:
    """(a, b) of the training cost of one document of L tokens, ``c(L) = L * flops_per_token(cfg, L) = a*L + b*L^2``
    (the packing planner's and the projection's cost model)."""
    a = flops_per_token(cfg, 0)
    return a, flops_per_token(cfg, 1) - a


def mfu(tokens_per_s: float, cfg: ModelConfig, seq_len: float, peak_flops: float) -> float:
    """Model FLOPs utilisation: achieved model FLOP/s over the hardware peak (per device: pass
    per-device tokens/s with one device's peak, e.g. H100 SXM dense bf16 989e12)."""
    return tokens_per_s * flops_per_token(cfg, seq_len) / peak_flops
