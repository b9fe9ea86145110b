"""s1fast.model against transformers 5.x: same function, same checkpoints.

Reference: random-init Qwen2ForCausalLM / LlamaForCausalLM built by transformers from its own
config classes and written with its own save_pretrained. transformers honours packed
position_ids only in special set-ups (platform.md), so the reference runs every document alone
(batch of one, positions from 0) and concatenates: exactly the packed semantics we claim.
"""
import json
import os

import pytest
import torch
import transformers

from s1fast import attention as attn
from s1fast import model as M

HF_CONFIGS = {
    # Field names are transformers' own; the tiny shapes of CONFIGS["tiny-*"].
    "qwen2": dict(model_type="qwen2", vocab_size=151936, hidden_size=64, intermediate_size=128,
                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                  rms_norm_eps=1e-6, rope_theta=1e6, max_position_embeddings=32768,
                  tie_word_embeddings=True, initializer_range=0.1),
    "llama": dict(model_type="llama", vocab_size=128256, hidden_size=64, intermediate_size=128,
                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                  rms_norm_eps=1e-5, rope_theta=500000.0, max_position_embeddings=131072,
                  rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
                  tie_word_embeddings=False, initializer_range=0.1),
}
LENS = [7, 19, 1, 12]   # several documents, one of a single token


@pytest.fixture(autouse=True)
def pytorch_path(monkeypatch):
    """The plain PyTorch path of the kernels (the interpreter path is compared separately)."""
    monkeypatch.setenv("S1FAST_DISABLE_TRITON", "1")


@pytest.fixture(scope="module", params=["qwen2", "llama"])
def hf_dir(request, tmp_path_factory):
    arch = request.param
    kw = dict(HF_CONFIGS[arch])
    cls = transformers.Qwen2Config if kw.pop("model_type") == "qwen2" else transformers.LlamaConfig
    torch.manual_seed(0)
    hf = transformers.AutoModelForCausalLM.from_config(cls(**kw), dtype=torch.float32)
    with torch.no_grad():  # non-trivial norms and biases, so a swapped tensor would show
        for n, p in hf.named_parameters():
            if "norm" in n or "bias" in n:
                p.add_(torch.randn_like(p) * 0.1)
    d = tmp_path_factory.mktemp(f"hf_{arch}")
    hf.save_pretrained(d)
    return arch, str(d)


def packed_batch(vocab, lens=LENS, seed=1):
    g = torch.Generator().manual_seed(seed)
    docs = [torch.randint(0, vocab, (n,), generator=g) for n in lens]
    cu = torch.tensor([0] + list(torch.tensor(lens).cumsum(0)), dtype=torch.int32)
    pos = torch.cat([torch.arange(n) for n in lens])
    return docs, torch.cat(docs), pos, cu, max(lens)


def packed_labels(docs):
    """Next token within each document; the last token of a document predicts nothing."""
    return torch.cat([torch.cat([d[1:], torch.tensor([-100])]) for d in docs])


def hf_model(path):
    return transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def test_config_from_hf_reads_what_transformers_wrote(hf_dir):
    arch, path = hf_dir
    cfg = M.ModelConfig.from_hf(path)
    ref = M.CONFIGS[f"tiny-{arch}"]
    for f in ("arch", "vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads",
              "num_kv_heads", "head_dim", "rms_norm_eps", "rope_theta", "rope_scaling",
              "tie_word_embeddings", "qkv_bias"):
        assert getattr(cfg, f) == getattr(ref, f), f
    assert cfg.initializer_range == 0.1


def test_logits_loss_and_grads_match_transformers(hf_dir):
    arch, path = hf_dir
    ours, ref = M.from_pretrained(path), hf_model(path)
    docs, ids, pos, cu, mx = packed_batch(ours.cfg.vocab_size)
    labels = packed_labels(docs)
    with attn.use_backend("sdpa_doc"):
        logits = ours.logits(ids, pos, cu, mx)
    ref_logits = torch.cat([ref(d[None]).logits[0] for d in docs])
    assert logits.shape == (ids.numel(), ours.cfg.vocab_size)
    assert (logits - ref_logits).abs().max().item() < 1e-5

    loss = torch.nn.functional.cross_entropy(logits, labels)
    ref_loss = torch.nn.functional.cross_entropy(ref_logits, labels)
    assert abs(loss.item() - ref_loss.item()) < 1e-6
    loss.backward()
    ref_loss.backward()
    ref_params = dict(ref.named_parameters())
    n = 0
    for name, p in ours.named_parameters():
        g_ref = ref_params[M.hf_name(name)].grad
        assert p.grad is not None and g_ref is not None, name
        scale = g_ref.abs().max().item() + 1e-12
        assert (p.grad - g_ref).abs().max().item() <= 1e-5 * max(1.0, scale), name
        n += 1
    assert n == len(ref_params)  # every transformers parameter has its twin


def test_llama3_rope_frequencies_match_transformers():
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
    for name in ("Llama-3.1-8B", "tiny-llama"):
        cfg = M.CONFIGS[name]
        hf_cfg = transformers.LlamaConfig(**{k: v for k, v in cfg.to_hf().items()
                                            if k not in ("architectures", "model_type")})
        ref, _ = ROPE_INIT_FUNCTIONS["llama3"](hf_cfg)
        ours = M.rope_inv_freq(cfg)
        assert torch.equal(ours, ref), name
        plain = M.rope_inv_freq(cfg.with_(rope_scaling=None))
        assert not torch.equal(ours, plain)  # the scaling really changes some frequencies


def test_long_document_positions_match_transformers(hf_dir):
    """Positions up to a few hundred, so every RoPE frequency band is exercised."""
    arch, path = hf_dir
    ours, ref = M.from_pretrained(path), hf_model(path)
    docs, ids, pos, cu, mx = packed_batch(ours.cfg.vocab_size, lens=[300, 5], seed=3)
    with torch.no_grad(), attn.use_backend("sdpa_mask"):
        logits = ours.logits(ids, pos, cu, mx)
        ref_logits = torch.cat([ref(d[None]).logits[0] for d in docs])
    assert (logits - ref_logits).abs().max().item() < 1e-5


def test_round_trip_and_sharded_checkpoints(hf_dir, tmp_path):
    arch, path = hf_dir
    ours = M.from_pretrained(path)
    tok = os.path.join(os.path.dirname(M.__file__), "assets", "tokenizer", "qwen2.5")
    # A tiny shard limit forces many files + an index.
    ours.save_pretrained(tmp_path / "sharded", tokenizer_dir=tok, max_shard_bytes=200_000)
    files = sorted(os.listdir(tmp_path / "sharded"))
    shards = [f for f in files if f.endswith(".safetensors")]
    assert len(shards) > 2 and "model.safetensors.index.json" in files
    assert {"config.json", "generation_config.json", "tokenizer.json", "vocab.json"} <= set(files)
    with open(tmp_path / "sharded" / "model.safetensors.index.json") as f:
        assert set(json.load(f)["weight_map"].values()) == set(shards)

    docs, ids, pos, cu, mx = packed_batch(ours.cfg.vocab_size, seed=5)
    with torch.no_grad():
        want = ours.logits(ids, pos, cu, mx)
        back = hf_model(tmp_path / "sharded")          # transformers reads our sharded folder
        got = torch.cat([back(d[None]).logits[0] for d in docs])
        again = M.from_pretrained(tmp_path / "sharded")  # and so do we
        assert torch.equal(again.logits(ids, pos, cu, mx), want)
    assert (got - want).abs().max().item() < 1e-5
    assert transformers.AutoTokenizer.from_pretrained(tmp_path / "sharded")("Wait").input_ids == [14190]

    ours.save_pretrained(tmp_path / "single")              # default limit: one file, no index
    files = os.listdir(tmp_path / "single")
    assert "model.safetensors" in files and "model.safetensors.index.json" not in files
    for a, b in zip(M.from_pretrained(tmp_path / "single").state_dict().values(),
                    ours.state_dict().values()):
        assert torch.equal(a, b)


def test_meta_build_then_load_and_bf16(hf_dir):
    arch, path = hf_dir
    cfg = M.ModelConfig.from_hf(path)
    model = M.build_model(cfg, device="meta")
    assert all(p.is_meta for p in model.parameters())
    M.load_weights(model, path)
    ref = M.from_pretrained(path)
    for (n, a), b in zip(model.state_dict().items(), ref.state_dict().values()):
        assert torch.equal(a, b), n
    if cfg.tie_word_embeddings:
        assert model.lm_head.weight is model.embed_tokens.weight
    half = M.from_pretrained(path, dtype=torch.bfloat16)
    assert half.lm_head.weight.dtype == torch.bfloat16
    docs, ids, pos, cu, mx = packed_batch(cfg.vocab_size)
    with torch.no_grad():
        err = (half.logits(ids, pos, cu, mx).float() - ref.logits(ids, pos, cu, mx)).abs().max()
    assert err.item() < 0.1  # bf16 weights and activations, same function


def test_state_dict_saver_strips_wrappers_and_skips_tied_copy(tmp_path):
    cfg = M.CONFIGS["tiny-qwen2"]
    torch.manual_seed(0)
    model = M.build_model(cfg)
    sd = {"_orig_mod." + k: v for k, v in model.state_dict().items()}
    M.save_state_dict_hf(sd, cfg, tmp_path)
    from safetensors import safe_open
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert "lm_head.weight" not in keys and "model.embed_tokens.weight" in keys
    assert json.load(open(tmp_path / "config.json"))["torch_dtype"] == "float32"
    assert json.load(open(tmp_path / "generation_config.json"))["eos_token_id"] == 151645
    M.save_state_dict_hf(sd, cfg, tmp_path / "bf16", dtype=torch.bfloat16)
    half = M.from_pretrained(tmp_path / "bf16", dtype=torch.bfloat16)
    assert json.load(open(tmp_path / "bf16" / "config.json"))["torch_dtype"] == "bfloat16"
    assert torch.equal(half.embed_tokens.weight, model.embed_tokens.weight.bfloat16())


def test_clear_errors(hf_dir, tmp_path):
    arch, path = hf_dir
    with pytest.raises(FileNotFoundError, match="config.json"):
        M.from_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="named config"):
        M.build_model("Qwen9-1T")
    assert M.get_config(path) == M.ModelConfig.from_hf(os.path.join(path, "config.json"))
    cfg = json.load(open(os.path.join(path, "config.json")))
    os.makedirs(tmp_path / "bad_arch")
    json.dump(dict(cfg, model_type="mistral"), open(tmp_path / "bad_arch" / "config.json", "w"))
    with pytest.raises(ValueError, match="mistral"):
        M.from_pretrained(tmp_path / "bad_arch")
    os.makedirs(tmp_path / "no_weights")
    json.dump(cfg, open(tmp_path / "no_weights" / "config.json", "w"))
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        M.from_pretrained(tmp_path / "no_weights")
    os.makedirs(tmp_path / "shape")
    json.dump(dict(cfg, intermediate_size=96), open(tmp_path / "shape" / "config.json", "w"))
    os.symlink(os.path.join(path, "model.safetensors"), tmp_path / "shape" / "model.safetensors")
    with pytest.raises(ValueError, match=r"mlp\.(gate|up|down)_proj\.weight.*shape"):
        M.from_pretrained(tmp_path / "shape")


def test_named_configs_have_the_published_shapes():
    c32 = M.CONFIGS["Qwen2.5-32B-Instruct"]
    assert (c32.num_layers, c32.hidden_size, c32.intermediate_size, c32.num_heads,
            c32.num_kv_heads, c32.head_dim, c32.vocab_size) == (64, 5120, 27648, 40, 8, 128, 152064)
    assert not c32.tie_word_embeddings and c32.qkv_bias
    assert M.CONFIGS["Qwen2.5-0.5B-Instruct"].tie_word_embeddings
    for name, cfg in M.CONFIGS.items():  # every config round-trips through config.json
        assert M.ModelConfig.from_hf(cfg.to_hf()) == cfg, name
    # Parameter counts of the meta-built models match the published sizes.
    for name, billions in (("Qwen2.5-0.5B-Instruct", 0.494), ("Qwen2.5-7B-Instruct", 7.62),
                           ("Qwen2.5-32B-Instruct", 32.76), ("Llama-3.1-8B", 8.03)):
        n = M.build_model(name, device="meta").num_params()
        assert abs(n / 1e9 - billions) < 0.01, (name, n)
