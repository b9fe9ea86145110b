"""GRPO loss (s1fast.rl.loss) through the log-prob kernel on a tiny model in float64 equals a direct
full-logits implementation, loss and every parameter's gradient, for each normalisation, with and without
clipping and the KL penalty; a case where ratios are clipped on both sides. Both heads: every row through the
kernel (the GPU path) and only the rows with a target (the trainer's CPU path, ``rl.loop.logprob_head``)."""
import pytest
import torch

from s1fast.model import CONFIGS, build_model
from s1fast.packing import collate
from s1fast.rl.loop import logprob_head
from s1fast.rl.loss import group_advantages, grpo_token_loss, token_weights
from s1fast_kernels.logprob_op import token_logprobs

T = 0.8  # sampling temperature: the policy is softmax(logits / T)
G = 3


def _batch(seed=0):
    """Two groups of three completions: (input_ids, labels) with -100 on the prompt and on forced tokens."""
    g = torch.Generator().manual_seed(seed)
    cfg = CONFIGS["tiny-qwen2"].with_(vocab_size=53, hidden_size=32, intermediate_size=48, num_heads=4,
                                      num_kv_heads=2, head_dim=8)
    torch.manual_seed(seed)
    model = build_model(cfg, dtype=torch.float64)
    with torch.no_grad():  # larger weights than the init, so ratios move
        for p in model.parameters():
            p.mul_(8.0)
    examples, lengths = [], []
    for i in range(2 * G):
        p_len, c_len = 4 + i % 2, 3 + (5 * i) % 7
        ids = torch.randint(0, 53, (p_len + c_len,), generator=g)
        lab = ids.clone()
        lab[:p_len] = -100
        lab[p_len + 1] = -100 if c_len > 4 else lab[p_len + 1]  # a forced token: not the policy's
        examples.append((ids, lab))
        lengths.append(int((lab != -100).sum()))
    rewards = torch.tensor([1.0, 0.0, 0.5, 0.2, 0.9, 0.0], dtype=torch.float64)
    return model, examples, torch.tensor(lengths), rewards


def _kernel_loss(model, examples, lengths, rewards, norm, clip, kl, old_shift, ref_shift, rows="all"):
    adv = group_advantages(rewards, G, "std")
    w = token_weights(lengths, norm, max_len=12)
    batch = collate(examples, w.tolist())  # loss_weight: the completion's weight at its sampled targets
    doc = torch.repeat_interleave(torch.arange(len(examples)), torch.diff(batch.cu_seqlens.long()))
    weight = torch.where(batch.targets != -100, w.to(torch.float64)[doc], 0.0)
    head = (logprob_head(batch.targets, T, entropy=True) if rows == "with-target" else
            lambda h, wt: token_logprobs(h, wt, batch.targets, temperature=T))
    logp, _ = model(batch.input_ids, batch.position_ids, batch.cu_seqlens, batch.max_seqlen, head=head)
    old = logp.detach() + old_shift(logp.shape)
    ref = logp.detach() + ref_shift(logp.shape)
    loss, stats = grpo_token_loss(logp, old, adv[doc], weight, ref_logp=ref if kl else None, clip=clip,
                                  kl_coef=kl)
    return loss, stats, batch


def _direct_loss(model, examples, rewards, norm, clip, kl, old_shift, ref_shift, batch):
    """Textbook GRPO, sequence by sequence, on full logits."""
    logits = model.logits(batch.input_ids, batch.position_ids, batch.cu_seqlens, batch.max_seqlen)
    lsm = torch.log_softmax(logits / T, -1)
    r = rewards.reshape(-1, G)
    adv = ((r - r.mean(1, keepdim=True)) / (r.std(1, keepdim=True) + 1e-4)).reshape(-1)
    cu = batch.cu_seqlens.tolist()
    old_all = ref_all = None
    seq_losses, tok_losses, n_tok = [], [], 0
    for i, (ids, lab) in enumerate(examples):
        s, e = cu[i], cu[i + 1]
        tgt = lab[1:]
        sampled = tgt != -100
        lp = lsm[s:e - 1].gather(1, torch.where(sampled, tgt, 0)[:, None]).squeeze(1)[sampled]
        shift_old = old_shift(lsm.shape[:1])[s:e - 1][sampled] if old_all is None else None
        shift_ref = ref_shift(lsm.shape[:1])[s:e - 1][sampled]
        ratio = torch.exp(lp - (lp.detach() + shift_old))
        obj = ratio * adv[i]
        if clip is not None:
            obj = torch.minimum(obj, torch.clamp(ratio, 1 - clip[0], 1 + clip[1]) * adv[i])
        per_tok = -obj
        if kl:
            d = (lp.detach() + shift_ref) - lp
            per_tok = per_tok + kl * (torch.exp(d) - d - 1)
        seq_losses.append(per_tok.mean())
        tok_losses.append(per_tok.sum())
        n_tok += int(sampled.sum())
    if norm == "sequence":
        return torch.stack(seq_losses).mean()
    if norm == "token":
        return torch.stack(tok_losses).sum() / n_tok
    return torch.stack(tok_losses).sum() / (len(examples) * 12)


def _shift(seed, scale):
    def f(shape):
        return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * scale
    return f


@pytest.mark.parametrize("rows", ["all", "with-target"])
@pytest.mark.parametrize("norm", ["token", "sequence", "constant"])
@pytest.mark.parametrize("clip,kl", [((0.2, 0.28), 0.05), ((0.2, 0.2), 0.0), (None, 0.1)])
def test_grpo_loss_and_gradients_equal_direct_full_logits_float64(norm, clip, kl, rows):
    model, examples, lengths, rewards = _batch()
    old_shift, ref_shift = _shift(1, 0.3), _shift(2, 0.5)
    loss, stats, batch = _kernel_loss(model, examples, lengths, rewards, norm, clip, kl, old_shift, ref_shift, rows)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    ref = _direct_loss(model, examples, rewards, norm, clip, kl, old_shift, ref_shift, batch)
    ref_grads = torch.autograd.grad(ref, list(model.parameters()))
    torch.testing.assert_close(loss, ref, rtol=1e-10, atol=1e-12)
    for (name, _), g, r in zip(model.named_parameters(), grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-9, atol=1e-12, msg=lambda m: f"{name}: {m}")
    assert int(stats["tokens"]) == int(lengths.sum())
    if clip is not None:  # ratios exp(-N(0, 0.3)) leave the clip range on both sides: some tokens clipped
        assert 0 < int(stats["clipped"]) < int(stats["tokens"])
    assert any(g.abs().sum() > 0 for g in grads)


def test_advantages_and_weights():
    a = group_advantages(torch.tensor([1.0, 0.0, 1.0, 1.0, 1.0, 1.0]), 3, "std")
    assert torch.allclose(a[3:], torch.zeros(3, dtype=torch.float64)), "an all-equal group carries no signal"
    assert abs(float(a[:3].sum())) < 1e-12
    assert torch.allclose(group_advantages(torch.tensor([2.0, 0.0]), 2, "none"), torch.tensor([1.0, -1.0],
                                                                                               dtype=torch.float64))
    w = token_weights(torch.tensor([2, 0, 6]), "sequence")
    assert torch.allclose(w, torch.tensor([1 / 6, 0.0, 1 / 18], dtype=torch.float64))
    assert torch.allclose(token_weights(torch.tensor([2, 6]), "token"), torch.tensor([0.125, 0.125],
                                                                                     dtype=torch.float64))
    with pytest.raises(ValueError, match="max_len"):
        token_weights(torch.tensor([2]), "constant")
