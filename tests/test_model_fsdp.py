"""Meta-device build -> FSDP2 sharding -> load_weights -> gathered save, on 2 CPU ranks (gloo).

This is the path a 32B model takes: no rank ever materialises the full model; each reads only
its rows of every tensor from the (sharded) safetensors folder.
"""
import os

import torch
from gloo_ranks import run_ranks
from s1fast import model as M

CFG = M.CONFIGS["tiny-qwen2"].with_(vocab_size=515)  # odd row count: unequal FSDP shards


def _worker(rank, world, ckpt, out):
    os.environ["S1FAST_DISABLE_TRITON"] = "1"
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from torch.distributed.fsdp import fully_shard

    ref = M.from_pretrained(ckpt)
    model = M.build_model(CFG, device="meta")
    for block in model.layers:
        fully_shard(block)
    fully_shard(model)
    M.load_weights(model, ckpt)
    assert model.lm_head.weight is model.embed_tokens.weight  # still tied after to_empty
    ref_sd = ref.state_dict()
    for name, p in model.named_parameters():
        rows = ref_sd[name].shape[0]
        per = -(-rows // world)  # FSDP2 shards dim 0 like torch.chunk
        assert torch.equal(p.to_local(), ref_sd[name][rank * per:(rank + 1) * per]), name
    lens = [4, 6]
    ids = torch.arange(10) * 37 % CFG.vocab_size
    pos = torch.cat([torch.arange(n) for n in lens])
    cu = torch.tensor([0, 4, 10], dtype=torch.int32)
    with torch.no_grad():
        assert (model(ids, pos, cu, 6) - ref(ids, pos, cu, 6)).abs().max().item() < 1e-6
    # The loss computed inside forward (the trainer's fused-CE hook) gets the same gradients.
    labels = torch.roll(ids, -1)

    def ce(h, w):
        return torch.nn.functional.cross_entropy(torch.nn.functional.linear(h, w), labels)

    model(ids, pos, cu, 6, head=ce).backward()
    ref(ids, pos, cu, 6, head=ce).backward()
    for (name, p), q in zip(model.named_parameters(), ref.parameters()):
        assert (p.grad.full_tensor() - q.grad).abs().max().item() < 1e-6, name
    sd = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True,
                                                              cpu_offload=True))
    if rank == 0:
        M.save_state_dict_hf(sd, CFG, out, max_shard_bytes=100_000)


def test_meta_fsdp_load_and_gathered_save(tmp_path):
    torch.manual_seed(0)
    ref = M.build_model(CFG)
    ckpt = tmp_path / "ckpt"
    ref.save_pretrained(ckpt, max_shard_bytes=60_000)  # several shards + index
    assert len([f for f in os.listdir(ckpt) if f.endswith(".safetensors")]) > 2
    run_ranks(_worker, 2, tmp_path, 2, str(ckpt), str(tmp_path / "out"))
    back = M.from_pretrained(tmp_path / "out")
    for (name, a), b in zip(back.state_dict().items(), ref.state_dict().values()):
        assert torch.equal(a, b), name
