"""The optimizer side of the s1 recipe against the code s1 ran (transformers' Trainer, accelerate's sharding),
not against a restatement of s1fast's own: AdamW's decay groups, the warmup rounding, the cosine schedule, the
number of optimizer steps."""
import types

import numpy as np
import pytest
import torch
from torch import nn

from s1fast.config import parse_config
from s1fast.model import build_model
from s1fast.optim import lr_lambda, param_groups
from s1fast.packing import make_plan

transformers = pytest.importorskip("transformers")


def hf_446_decay_names(model):
    """transformers 4.46.1 (s1's pin, simplescaling/s1 requirements.txt) Trainer.get_decay_parameter_names:
    ``get_parameter_names(model, ALL_LAYERNORM_LAYERS)`` with ALL_LAYERNORM_LAYERS = [nn.LayerNorm], then drop
    names containing "bias". get_parameter_names is transformers' own (unchanged since)."""
    from transformers.trainer_pt_utils import get_parameter_names
    return {n for n in get_parameter_names(model, [nn.LayerNorm]) if "bias" not in n}


def decayed_names(model, groups):
    ids = {id(p) for p in groups[0]["params"]}
    assert not ids & {id(p) for p in groups[1]["params"]}
    assert groups[0]["weight_decay"] == 1e-4 and groups[1]["weight_decay"] == 0.0
    return {n for n, p in model.named_parameters() if id(p) in ids}


def tiny_hf_qwen2():
    cfg = transformers.Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)
    return transformers.Qwen2ForCausalLM(cfg)


@pytest.mark.parametrize("make", [tiny_hf_qwen2, lambda: build_model("tiny-qwen2")], ids=["hf-qwen2", "s1fast"])
def test_weight_decay_groups_are_those_of_s1s_trainer(make):
    model = make()
    names = decayed_names(model, param_groups(model, 1e-4, decay_norms=True))
    by_name = dict(model.named_parameters(remove_duplicate=False))   # tied weights: one parameter, two names
    assert {id(by_name[n]) for n in names} == {id(by_name[n]) for n in hf_446_decay_names(model)}
    # s1 decayed the RMSNorm weights (4.46.1 only skips nn.LayerNorm); biases it did not
    assert any("layernorm" in n for n in names) and any(n.endswith("norm.weight") for n in names)
    assert not any("bias" in n for n in names)


def test_a_layernorm_module_is_not_decayed():
    model = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4), nn.Linear(4, 2, bias=False))
    assert decayed_names(model, param_groups(model, 1e-4, decay_norms=True)) == hf_446_decay_names(model) == {"0.weight", "2.weight"}


def test_by_default_only_the_weight_matrices_are_decayed():
    model = build_model("tiny-qwen2")
    names = decayed_names(model, param_groups(model, 1e-4))
    assert names == {n for n, p in model.named_parameters() if p.ndim >= 2}
    assert not any("norm" in n or "bias" in n for n in names)


@pytest.mark.parametrize("preset,expected", [("s1", True), ("s1.1", True), ("sky-t1", True), ("tiny", False),
                                             ("tiny-toy", False)])
def test_the_recipe_presets_decay_the_norms_as_s1s_trainer_did(preset, expected):
    assert parse_config(["--preset", preset]).decay_norms is expected
    assert parse_config(["--preset", preset, "--decay-norms", str(not expected).lower()]).decay_norms is not expected


def test_warmup_rounds_up_as_transformers_does():
    from transformers import TrainingArguments
    cfg = parse_config(["--preset", "s1"])
    for total in (315, 625, 100, 7, 1):   # s1 on 16 GPUs, the recorded 8-GPU run, and small runs
        for ratio in (0.05, 0.1, 0.03):
            cfg.warmup_ratio = ratio
            want = TrainingArguments.get_warmup_steps(types.SimpleNamespace(warmup_steps=ratio), total)
            assert cfg.warmup_steps(total) == want
    cfg.warmup_ratio = 0.05
    assert cfg.warmup_steps(315) == 16


@pytest.mark.parametrize("total,warmup", [(315, 16), (625, 32), (10, 1), (5, 0)])
def test_schedule_is_transformers_cosine_with_warmup_step_for_step(total, warmup):
    """Both drive torch's LambdaLR: the lr each optimizer step uses, and where it ends (0 after the last step)."""
    def lrs(make):
        opt = torch.optim.AdamW([nn.Parameter(torch.zeros(1))], lr=1e-5)
        sched = make(opt)
        out = []
        for _ in range(total):
            out.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        return out + [opt.param_groups[0]["lr"]]
    ours = lrs(lambda o: torch.optim.lr_scheduler.LambdaLR(o, lr_lambda(total, warmup)))
    theirs = lrs(lambda o: transformers.get_cosine_schedule_with_warmup(o, warmup, total))
    assert ours == theirs
    assert ours[-1] == 0.0 and ours[-2] > 0.0   # the last step still learns; the schedule reaches 0 after it
    if warmup:
        assert ours[0] == 0.0                   # HF's first step runs at lr 0


@pytest.mark.parametrize("n,world,epochs", [(1000, 16, 5), (1000, 8, 5), (37, 4, 2)])
def test_steps_per_epoch_match_accelerates_sharded_loader(n, world, epochs):
    """s1: per_device_train_batch_size 1, no accumulation, world = global batch. HF's Trainer counts
    len(dataloader) per rank as accelerate's BatchSamplerShard (even_batches) makes it, times the epochs."""
    from accelerate.data_loader import BatchSamplerShard
    from torch.utils.data import BatchSampler, SequentialSampler
    per_rank = len(BatchSamplerShard(BatchSampler(SequentialSampler(range(n)), 1, False), world, 0))
    plan = make_plan(np.full(n, 100), np.full(n, 50), world_size=world, micro_tokens=4096, global_batch=world,
                     epochs=epochs, mode="none")
    assert len(plan.steps) == per_rank * epochs
    if (n, world) == (1000, 16):
        assert len(plan.steps) == 315
