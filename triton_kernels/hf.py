"""Make a transformers (5.x) Qwen2 or Llama model use these kernels, with no per-model copy of its code.

    import s1fast_kernels
    model = AutoModelForCausalLM.from_pretrained(...)
    s1fast_kernels.patch_hf(model)                 # this model only
    s1fast_kernels.patch_hf("qwen2")               # every Qwen2 model, including ones built later

Replaced (each switch can be turned off): the ``*RMSNorm`` and ``*MLP`` forwards, the modeling module's
``apply_rotary_pos_emb`` (only inside a patched model's attention), and the causal-LM forward, whose loss
with labels comes from ``fused_linear_cross_entropy`` exactly as transformers' ``ForCausalLMLoss`` (logits
are then None in training mode). What each replacement does in detail: docs/kernels.md.
"""
from __future__ import annotations

import contextvars
import functools
import importlib
import types

import torch

from .linear_cross_entropy_op import fused_linear_cross_entropy
from .rms_norm_op import rms_norm
from .rope_op import rope
from .swiglu_op import swiglu

SUPPORTED = ("qwen2", "llama")
_ROPE_ON = contextvars.ContextVar("triton_kernels_rope_on", default=False)
_GLOBAL_ROPE: set[str] = set()  # modeling modules patched for every model (patch_hf("qwen2"))


# ------------------------------------------------------------------------------ replacement pieces
def _rms_norm_forward(self, hidden_states):
    return rms_norm(hidden_states, self.weight, self.variance_epsilon)


def _mlp_forward(self, x):
    return self.down_proj(swiglu(self.gate_proj(x), self.up_proj(x)))


SILU = ("silu", "swish")  # the activations swiglu computes


def _make_mlp_switch(original):
    """The class-level MLP forward of ``patch_hf("qwen2")``: swiglu when the model's ``hidden_act`` is silu, the
    original otherwise (a gelu config built later would otherwise silently get silu)."""
    @functools.wraps(original)
    def forward(self, x):
        if getattr(getattr(self, "config", None), "hidden_act", "silu") in SILU:
            return _mlp_forward(self, x)
        return original(self, x)
    forward._triton_kernels_original = original
    return forward


def _rope_hf_layout(q, k, cos, sin, unsqueeze_dim=1):
    """transformers' apply_rotary_pos_emb(q, k, cos [B,S,D], sin [B,S,D], unsqueeze_dim) through ``rope``."""
    b, s, d = cos.shape  # b is 1 when every sequence of the batch has the same positions
    if unsqueeze_dim == 1:  # q, k: [B, H, S, D] -> strided [B, S, H, D] views
        q, k = q.transpose(1, 2), k.transpose(1, 2)
    pos = torch.arange(b * s, device=q.device).view(b, s).expand(q.shape[0], s)
    qo, ko = rope(q, k, cos.reshape(b * s, d), sin.reshape(b * s, d), pos)
    if unsqueeze_dim == 1:
        qo, ko = qo.transpose(1, 2), ko.transpose(1, 2)
    return qo, ko


def _make_rope_switch(original, module_name):
    @functools.wraps(original)
    def apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=1, **kwargs):
        if (_ROPE_ON.get() or module_name in _GLOBAL_ROPE) and not kwargs and cos.dim() == 3:
            return _rope_hf_layout(q, k, cos, sin, unsqueeze_dim)
        return original(q, k, cos, sin, unsqueeze_dim, **kwargs)
    apply_rotary_pos_emb._triton_kernels_original = original
    return apply_rotary_pos_emb


def _with_rope_on(forward):
    @functools.wraps(forward)
    def attention_forward(*args, **kwargs):
        token = _ROPE_ON.set(True)
        try:
            return forward(*args, **kwargs)
        finally:
            _ROPE_ON.reset(token)
    attention_forward._triton_kernels_rope = True
    return attention_forward


def _make_causal_lm_forward(original_forward, low_memory: bool = False):
    """The causal-LM forward with the fused loss; ``original_forward`` is the class's unbound forward."""
    from transformers.modeling_outputs import CausalLMOutputWithPast
    from transformers.utils.generic import can_return_tuple

    @can_return_tuple  # return_dict=False: a tuple, as the original (whose own wrapper this one replaces)
    @functools.wraps(original_forward)
    def forward(self, input_ids=None, attention_mask=None, position_ids=None, inputs_embeds=None, labels=None,
                logits_to_keep=0, **kwargs):
        # cache arguments (use_cache and the cache itself, whose keyword transformers is renaming) travel in
        # kwargs exactly as the caller named them: this wrapper never names them itself
        shift_labels = kwargs.pop("shift_labels", None)
        if labels is None and shift_labels is None:
            return original_forward(self, input_ids=input_ids, attention_mask=attention_mask,
                                    position_ids=position_ids, inputs_embeds=inputs_embeds,
                                    logits_to_keep=logits_to_keep, **kwargs)
        num_items = kwargs.pop("num_items_in_batch", None)
        ignore_index = kwargs.pop("ignore_index", -100)
        outputs = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                             inputs_embeds=inputs_embeds, **kwargs)
        hidden = outputs.last_hidden_state
        if shift_labels is None:  # tokens < n predict n, as transformers' ForCausalLMLoss
            shift_labels = torch.nn.functional.pad(labels, (0, 1), value=ignore_index)[..., 1:]
        head = self.lm_head
        loss = fused_linear_cross_entropy(hidden.reshape(-1, hidden.shape[-1]), head.weight,
                                          shift_labels.reshape(-1).to(hidden.device), head.bias,
                                          ignore_index=ignore_index, normalizer=num_items, low_memory=low_memory)
        logits = None if self.training else head(hidden)
        return CausalLMOutputWithPast(loss=loss, logits=logits, past_key_values=getattr(outputs, "past_key_values", None),
                                      hidden_states=outputs.hidden_states, attentions=outputs.attentions)

    forward._triton_kernels_original = original_forward
    return forward


# ------------------------------------------------------------------------------------- patch_hf
def _modeling_module(model_type: str):
    if model_type not in SUPPORTED:
        raise ValueError(f"patch_hf: model type {model_type!r} is not supported; supported: {SUPPORTED}")
    return importlib.import_module(f"transformers.models.{model_type}.modeling_{model_type}")


def _classes(mod, suffix):
    return [c for n, c in vars(mod).items() if isinstance(c, type) and n.endswith(suffix)
            and c.__module__ == mod.__name__]


def _install_rope_switch(mod) -> None:
    current = mod.apply_rotary_pos_emb
    if not hasattr(current, "_triton_kernels_original"):
        mod.apply_rotary_pos_emb = _make_rope_switch(current, mod.__name__)


def patch_hf(model_or_model_type, rope: bool = True, rms_norm: bool = True, swiglu: bool = True,
             cross_entropy: bool | str = True):
    """Patch one model instance, or (given "qwen2"/"llama") every model of that type. Returns the argument.

    ``cross_entropy="low_memory"`` uses the fused loss's low-memory mode (no fp32 [V, H] accumulator, the
    logits recomputed in the backward); ``True`` its default, fastest mode."""
    if cross_entropy not in (True, False, "low_memory"):
        raise ValueError(f"patch_hf: cross_entropy={cross_entropy!r}; use True, False or 'low_memory'")
    low_memory = cross_entropy == "low_memory"
    if isinstance(model_or_model_type, str):
        mod = _modeling_module(model_or_model_type)
        if rms_norm:
            for c in _classes(mod, "RMSNorm"):
                c.forward = _rms_norm_forward
        if swiglu:
            for c in _classes(mod, "MLP"):
                if not hasattr(c.forward, "_triton_kernels_original"):
                    c.forward = _make_mlp_switch(c.forward)
        if rope:
            _install_rope_switch(mod)
            _GLOBAL_ROPE.add(mod.__name__)
        if cross_entropy:
            for c in _classes(mod, "ForCausalLM"):
                if not hasattr(c.forward, "_triton_kernels_original"):
                    c.forward = _make_causal_lm_forward(c.forward, low_memory)
        return model_or_model_type

    model = model_or_model_type
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    mod = _modeling_module(model_type)
    act = getattr(config, "hidden_act", "silu")
    for sub in model.modules():
        name = type(sub).__name__
        if rms_norm and name.endswith("RMSNorm") and hasattr(sub, "variance_epsilon"):
            sub.forward = types.MethodType(_rms_norm_forward, sub)
        elif swiglu and name.endswith("MLP") and act in SILU and hasattr(sub, "gate_proj"):
            sub.forward = types.MethodType(_mlp_forward, sub)
        elif rope and name.endswith("Attention") and not hasattr(sub.forward, "_triton_kernels_rope"):
            _install_rope_switch(mod)
            sub.forward = _with_rope_on(sub.forward)
    if cross_entropy and hasattr(model, "lm_head") and hasattr(model, "model"):
        cls_forward = type(model).forward
        cls_forward = getattr(cls_forward, "_triton_kernels_original", cls_forward)
        model.forward = types.MethodType(_make_causal_lm_forward(cls_forward, low_memory), model)
    return model


__all__ = ["patch_hf", "SUPPORTED"]
