"""KV-cache decoding, activation checkpointing, per-block compile, FLOPs/MFU."""
import pytest
import torch

from s1fast import model as M


@pytest.fixture(autouse=True)
def pytorch_path(monkeypatch):
    monkeypatch.setenv("S1FAST_DISABLE_TRITON", "1")


@pytest.fixture(scope="module", params=["tiny-qwen2", "tiny-llama"])
def small(request):
    torch.manual_seed(0)
    cfg = M.CONFIGS[request.param].with_(vocab_size=512, initializer_range=0.2)
    return M.build_model(cfg).eval()


def full_logits(model, seq):
    """Last-position logits of one whole sequence, recomputed from scratch (packed path)."""
    n = len(seq)
    out = model.logits(torch.tensor(seq), torch.arange(n),
                       torch.tensor([0, n], dtype=torch.int32), n)
    return out[-1].float()


def pad(rows, width=None):
    width = width or max(len(r) for r in rows)
    return torch.tensor([r + [0] * (width - len(r)) for r in rows]), torch.tensor([len(r) for r in rows])


def test_greedy_decode_equals_recomputation(small):
    model = small
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(0, 512, (n,), generator=g).tolist() for n in (4, 9, 1)]
    cache = model.new_kv_cache(3, 32)
    ids, lens = pad(prompts)
    logits = model.decode(ids, cache, lens)                  # right-padded prefill
    assert logits.shape == (3, 9, 512) and logits.dtype == torch.float32
    assert cache.seqlens.tolist() == [4, 9, 1]
    seqs = [list(p) for p in prompts]
    last = torch.stack([logits[b, lens[b] - 1] for b in range(3)])
    with torch.no_grad():
        for step in range(6):
            for b in range(3):
                assert (last[b] - full_logits(model, seqs[b])).abs().max().item() < 1e-5, (step, b)
            nxt = last.argmax(-1)
            for b in range(3):
                seqs[b].append(int(nxt[b]))
            last = model.decode(nxt[:, None], cache)[:, 0]
    assert cache.seqlens.tolist() == [len(s) for s in seqs]


def test_ragged_steps_zero_length_rows_and_chunked_prefill(small):
    model = small
    g = torch.Generator().manual_seed(2)
    a = torch.randint(0, 512, (10,), generator=g).tolist()
    b = torch.randint(0, 512, (6,), generator=g).tolist()
    cache = model.new_kv_cache(2, 16)
    # Chunk 1: row 0 gets 4 tokens, row 1 gets 0 (untouched).
    ids, lens = pad([a[:4], []], 4)
    model.decode(ids, cache, lens)
    assert cache.seqlens.tolist() == [4, 0]
    k_row1 = cache.k[:, 1, :cache.max_len]  # (the spare last slot takes padded writes)
    assert torch.count_nonzero(k_row1) == 0  # a zero-length row is neither written nor moved
    # Chunk 2: row 0 its remaining 6 tokens, row 1 its whole prompt.
    ids, lens = pad([a[4:], b])
    out = model.decode(ids, cache, lens)
    assert cache.seqlens.tolist() == [10, 6]
    with torch.no_grad():
        assert (out[0, 5] - full_logits(model, a)).abs().max().item() < 1e-5
        assert (out[1, 5] - full_logits(model, b)).abs().max().item() < 1e-5
    # Reset a row and give it a new prompt: positions restart at 0.
    cache.reset([0])
    out = model.decode(torch.tensor([b[:3], [7, 0, 0]]), cache, torch.tensor([3, 1]))
    with torch.no_grad():
        assert (out[0, 2] - full_logits(model, b[:3])).abs().max().item() < 1e-5
        assert (out[1, 0] - full_logits(model, b + [7])).abs().max().item() < 1e-5
    with pytest.raises(ValueError, match="KV cache full"):
        model.decode(torch.zeros(2, 12, dtype=torch.long), cache)


@pytest.mark.parametrize("mode", ["full", "selective"])
def test_activation_checkpointing_same_grads(small, mode):
    model = small
    lens = [5, 7]
    ids = torch.randint(0, 512, (12,), generator=torch.Generator().manual_seed(3))
    pos = torch.cat([torch.arange(n) for n in lens])
    cu = torch.tensor([0, 5, 12], dtype=torch.int32)

    def grads():
        model.zero_grad()
        model.logits(ids, pos, cu, 7).logsumexp(-1).sum().backward()
        return [p.grad.clone() for p in model.parameters()]

    ref = grads()
    M.apply_activation_checkpointing(model, mode)
    try:
        assert all(b.checkpoint == mode for b in model.layers)
        got = grads()
    finally:
        M.apply_activation_checkpointing(model, "none")
    for a, b in zip(got, ref):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-5)
    with pytest.raises(ValueError, match="mode"):
        M.apply_activation_checkpointing(model, "some")


def test_compile_blocks_keeps_names_and_function():
    torch.manual_seed(0)
    cfg = M.CONFIGS["tiny-qwen2"].with_(vocab_size=256, num_layers=1)
    model = M.build_model(cfg)
    names = list(model.state_dict())
    lens = [3, 4]
    ids = torch.randint(0, 256, (7,))
    pos = torch.cat([torch.arange(n) for n in lens])
    cu = torch.tensor([0, 3, 7], dtype=torch.int32)
    with torch.no_grad():
        ref = model(ids, pos, cu, 4)
        M.compile_blocks(model, backend="eager")  # dynamo tracing without inductor's build time
        got = model(ids, pos, cu, 4)
    assert list(model.state_dict()) == names
    assert torch.allclose(got, ref, atol=1e-6)


def test_flops_per_token_formula():
    cfg = M.CONFIGS["Qwen2.5-32B-Instruct"]
    n = M.matmul_params(cfg)
    # Attention projections + MLP per layer + lm_head, from the published shapes.
    per_layer = 5120 * 128 * (2 * 40 + 2 * 8) + 3 * 5120 * 27648
    assert n == 64 * per_layer + 5120 * 152064
    s = 16384
    assert M.flops_per_token(cfg, s) == 6 * n + 6 * 64 * 40 * 128 * s
    assert M.flops_per_token(cfg, s, training=False) == 2 * n + 2 * 64 * 40 * 128 * s
    # 1 token/s at a peak of exactly one token's FLOPs is 100% MFU.
    assert M.mfu(1.0, cfg, s, M.flops_per_token(cfg, s)) == pytest.approx(1.0)
    # The matmul count is the full parameter count minus embeddings and norms/biases.
    model = M.build_model(cfg, device="meta")
    emb = cfg.vocab_size * cfg.hidden_size
    small_params = sum(p.numel() for name, p in model.named_parameters() if p.dim() == 1)
    assert model.num_params() - emb - small_params == n


def test_checkpoint_only_the_first_layers():
    from s1fast.model import CONFIGS, Transformer, apply_activation_checkpointing
    m = Transformer(CONFIGS["tiny-qwen2"])
    apply_activation_checkpointing(m, "full", layers=1)
    assert [b.checkpoint for b in m.layers] == ["full", "none"]
    apply_activation_checkpointing(m, "selective")
    assert [b.checkpoint for b in m.layers] == ["selective", "selective"]
    with pytest.raises(ValueError, match="the model has 2 blocks"):
        apply_activation_checkpointing(m, "full", layers=3)
