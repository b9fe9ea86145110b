"""patch_hf: a patched tiny Qwen2 / Llama (random weights, transformers 5.x) gives the unpatched model's
loss, logits and gradients, and a few AdamW steps follow the same loss curve. Under the interpreter the
patched model runs the Triton kernels; fp32 so that the comparison is tight."""
import copy

import pytest
import torch

import s1fast_kernels

transformers = pytest.importorskip("transformers", reason="patch_hf patches transformers models")


def tiny(model_type):
    tied = model_type.endswith("-tied")  # lm_head shares the embedding: both gradients must add up
    model_type = model_type.removesuffix("-tied")
    kw = dict(vocab_size=331, hidden_size=48, intermediate_size=80, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=tied)
    cfg = (transformers.Qwen2Config if model_type == "qwen2" else transformers.LlamaConfig)(**kw)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa").float()
    return model


def batch():
    g = torch.Generator().manual_seed(5)
    ids = torch.randint(0, 331, (2, 13), generator=g)
    labels = ids.clone()
    labels[0, :4] = -100  # a prompt without loss
    return ids, labels


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("model_type,ce_mode", [("qwen2", True), ("llama", True), ("qwen2-tied", True),
                                                ("qwen2-tied", "low_memory")])
def test_patched_model_matches_unpatched(model_type, ce_mode, monkeypatch):
    import s1fast_kernels.hf as hf
    calls = {"rope": 0, "rms_norm": 0, "swiglu": 0}

    def spy(name, fn):
        def wrapped(*a, **k):
            calls[name] += 1
            return fn(*a, **k)
        monkeypatch.setattr(hf, name, wrapped)
    for name in calls:
        spy(name, getattr(hf, name))
    ref = tiny(model_type)
    pat = s1fast_kernels.patch_hf(copy.deepcopy(ref), cross_entropy=ce_mode)
    ids, labels = batch()
    # logits (no labels: the original forward with patched norms, MLP and RoPE)
    with torch.no_grad():
        logits_ref = ref(ids).logits
        assert calls == {"rope": 0, "rms_norm": 0, "swiglu": 0}, "the unpatched model must not use the kernels"
        torch.testing.assert_close(pat(ids).logits, logits_ref, rtol=1e-5, atol=1e-5)
    assert calls == {"rope": 2, "rms_norm": 5, "swiglu": 2}, calls  # 2 layers: 2 norms each + the final norm
    # loss and every gradient, through the fused linear cross-entropy
    l_ref = ref(ids, labels=labels).loss
    l_pat = pat(ids, labels=labels).loss
    l_ref.backward()
    l_pat.backward()
    torch.testing.assert_close(l_pat, l_ref, rtol=1e-5, atol=1e-6)
    g_ref, g_pat = _grads(ref), _grads(pat)
    assert g_ref.keys() == g_pat.keys() and len(g_ref) > 10
    if model_type.endswith("-tied"):
        assert pat.lm_head.weight is pat.model.embed_tokens.weight
    for name in g_ref:
        torch.testing.assert_close(g_pat[name], g_ref[name], rtol=1e-4, atol=1e-6, msg=name)
    # the HF Trainer's num_items_in_batch: sum / count, as ForCausalLMLoss
    n = torch.tensor(7)
    torch.testing.assert_close(pat(ids, labels=labels, num_items_in_batch=n).loss,
                               ref(ids, labels=labels, num_items_in_batch=n).loss, rtol=1e-5, atol=1e-6)
    # the kernels really ran: in training mode the fused loss skips the logits
    assert pat.train()(ids, labels=labels).logits is None


def test_patch_hf_rejects_an_unknown_loss_mode():
    with pytest.raises(ValueError, match="cross_entropy='fast'"):
        s1fast_kernels.patch_hf(tiny("qwen2"), cross_entropy="fast")


@pytest.mark.parametrize("model_type", ["qwen2", "llama"])
def test_training_curves_match(model_type):
    ref = tiny(model_type)
    pat = s1fast_kernels.patch_hf(copy.deepcopy(ref))
    ids, labels = batch()
    curves = []
    for model in (ref, pat):
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
        losses = []
        for _ in range(4):
            loss = model(ids, labels=labels).loss
            loss.backward()
            opt.step()
            opt.zero_grad()
            losses.append(loss.item())
        curves.append(losses)
    assert curves[0][-1] < curves[0][0], "the loss must fall for the comparison to mean something"
    torch.testing.assert_close(torch.tensor(curves[1]), torch.tensor(curves[0]), rtol=1e-4, atol=1e-5)


def test_unpatched_models_are_untouched_and_bad_types_are_clear():
    import transformers.models.qwen2.modeling_qwen2 as mq
    ref = tiny("qwen2")
    s1fast_kernels.patch_hf(copy.deepcopy(ref))
    assert hasattr(mq.apply_rotary_pos_emb, "_triton_kernels_original")
    assert not hasattr(ref.model.layers[0].self_attn.forward, "_triton_kernels_rope")
    assert type(ref.model.norm).forward is mq.Qwen2RMSNorm.forward and "forward" not in vars(ref.model.norm)
    with pytest.raises(ValueError, match="not supported"):
        s1fast_kernels.patch_hf("gpt2")


_GLOBAL_PATCH_SCRIPT = r"""
import torch, transformers, s1fast_kernels
import transformers.models.qwen2.modeling_qwen2 as mq
cfg = transformers.Qwen2Config(vocab_size=331, hidden_size=48, intermediate_size=80, num_hidden_layers=2,
                               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
torch.manual_seed(0)
model = transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa").float()
ids = torch.randint(0, 331, (2, 13))
with torch.no_grad():
    before_logits, before_loss = model(ids).logits, model(ids, labels=ids).loss
s1fast_kernels.patch_hf("qwen2")
assert mq.Qwen2RMSNorm.forward is s1fast_kernels.hf._rms_norm_forward
assert hasattr(mq.apply_rotary_pos_emb, "_triton_kernels_original")
with torch.no_grad():
    torch.testing.assert_close(model(ids).logits, before_logits, rtol=1e-5, atol=1e-5)
    model.eval()
    out = model(ids, labels=ids)
torch.testing.assert_close(out.loss, before_loss, rtol=1e-5, atol=1e-6)
# a model whose activation is not silu keeps its own MLP (swiglu would silently compute silu)
cfg.hidden_act = "gelu"
gelu = transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa").float()
mlp, x = gelu.model.layers[0].mlp, torch.randn(3, 48)
with torch.no_grad():
    torch.testing.assert_close(mlp(x), mlp.down_proj(mlp.act_fn(mlp.gate_proj(x)) * mlp.up_proj(x)))
print("OK")
"""


def test_patch_by_model_type_in_a_fresh_process():
    """patch_hf("qwen2") patches the classes for every model (checked in a subprocess, since it is global)."""
    import os
    import subprocess
    import sys
    env = dict(os.environ, S1FAST_DISABLE_TRITON="1")  # the wiring is under test; kernels are tested above
    proc = subprocess.run([sys.executable, "-c", _GLOBAL_PATCH_SCRIPT], capture_output=True, text=True, env=env)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("OK"), proc.stderr[-3000:]


def test_return_dict_false_gives_the_unpatched_tuple(monkeypatch):
    """``return_dict=False`` (as older training loops pass it) returns a tuple, with labels too: the patched
    forward used to read ``.last_hidden_state`` off the inner model's tuple and crash."""
    monkeypatch.setenv("S1FAST_DISABLE_TRITON", "1")  # the wiring is under test; kernels are tested above
    ref = tiny("qwen2")
    pat = s1fast_kernels.patch_hf(copy.deepcopy(ref))
    ids, labels = batch()
    with torch.no_grad():
        out_ref = ref.eval()(ids, labels=labels, return_dict=False)
        out_pat = pat.eval()(ids, labels=labels, return_dict=False)
        logits_pat = pat(ids, return_dict=False)
    assert isinstance(out_pat, tuple) and isinstance(logits_pat, tuple)
    torch.testing.assert_close(out_pat[0], out_ref[0], rtol=1e-5, atol=1e-6)  # the loss
    torch.testing.assert_close(out_pat[1], out_ref[1], rtol=1e-5, atol=1e-5)  # the logits (eval mode)
    torch.testing.assert_close(logits_pat[0], out_ref[1], rtol=1e-5, atol=1e-5)
