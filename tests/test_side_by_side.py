"""bench/side_by_side.py gives TRL exactly what s1fast trains on, in the same steps on the same ranks.

- TRL's own preparation and collators (one sequence per device, and padding-free), fed by the benchmark's
  conversion, produce the same input ids and the same next-token targets as s1fast's packed collate.
- The benchmark's example order, cut by accelerate's batch sharding the way HF Trainer's sequential sampler
  deals it, gives every rank the examples the ``none`` plan assigns it, micro-step by micro-step.
- ``--help`` works. No timings are asserted.
"""
import json
import os
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def _side_by_side():
    """bench/side_by_side.py loaded from its path (bench/ is a folder of scripts, not a package to import)."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("side_by_side_script", os.path.join(ROOT, "bench", "side_by_side.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    from s1fast.data import DEFAULT_DATA, prepare, read_rows
    tmp = tmp_path_factory.mktemp("sbs")
    rows = [r for _, r in read_rows(DEFAULT_DATA)][:3]
    data = tmp / "three.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    # 600 tokens: rows are cut, so truncation is part of what must agree, and prompts stay inside
    ds = prepare(str(data), "s1", None, 600, str(tmp / "tokens"), "truncate", progress=False, log=lambda *_: None)
    return tmp, ds


def s1fast_view(ds, ids):
    """What s1fast's trainer computes on: packed ids, positions and next-token targets of examples ``ids``."""
    from s1fast.packing import collate
    b = collate([ds[i] for i in ids], [1.0] * len(ids))
    return b.input_ids, b.position_ids, b.targets


def test_trl_sees_the_same_ids_and_loss_masks(cache):
    from transformers import AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    sft_config, trl_examples = _side_by_side().sft_config, _side_by_side().trl_examples
    from s1fast import model as modeling
    from s1fast.data import DEFAULT_TOKENIZER
    tmp, ds = cache
    assert len(ds) == 3 and int(ds.lengths.max()) == 600  # at least one row was truncated
    torch.manual_seed(0)
    mdir = str(tmp / "model")
    modeling.build_model("tiny-qwen2").save_pretrained(mdir, DEFAULT_TOKENIZER)
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(mdir, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(mdir, local_files_only=True)
    order = [2, 0, 1]
    for padding_free in (False, True):
        cfg = dict(output_dir=str(tmp / f"trl{padding_free}"), per_device=3 if padding_free else 1, accum=1,
                   lr=1e-3, warmup=0, seed=0, padding_free=padding_free, max_length=None if padding_free else 600)
        trainer = SFTTrainer(model=model, args=sft_config(cfg, SFTConfig),
                             train_dataset=Dataset.from_list(trl_examples(ds, order)), processing_class=tok)
        rows = [trainer.train_dataset[k] for k in range(len(order))]
        assert len(trainer.train_dataset) == 3
        if padding_free:
            batches, groups = [trainer.data_collator(rows)], [order]
        else:
            batches, groups = [trainer.data_collator([r]) for r in rows], [[i] for i in order]
        for batch, ids in zip(batches, groups):
            ref_ids, ref_pos, ref_targets = s1fast_view(ds, ids)
            assert torch.equal(batch["input_ids"][0], ref_ids)
            # HF shifts inside the loss: position t predicts labels[t + 1]; s1fast stores targets[t] = labels[t + 1]
            labels = batch["labels"][0]
            assert torch.equal(labels[1:], ref_targets[:-1]), f"loss masks differ (padding_free={padding_free})"
            assert ref_targets[-1] == -100 and (ref_targets != -100).sum() > 100
            if padding_free:
                assert torch.equal(batch["position_ids"][0], ref_pos)


def test_example_order_deals_the_none_plan_to_the_same_ranks():
    import numpy as np
    from accelerate.data_loader import BatchSamplerShard
    from torch.utils.data import BatchSampler, SequentialSampler

    trl_order = _side_by_side().trl_order
    from s1fast.packing import make_plan
    rng = np.random.default_rng(0)
    lengths = rng.integers(50, 900, size=24)
    W, G = 2, 8
    plan = make_plan(lengths, lengths // 2, world_size=W, micro_tokens=1024, global_batch=G, epochs=2, seed=3,
                     mode="none")
    for per_device in (1, G // W):
        order = trl_order(plan, per_device)
        assert sorted(order) == sorted(list(range(24)) * 2)
        sampler = BatchSampler(SequentialSampler(order), per_device, drop_last=False)
        for r in range(W):
            got = [order[j] for b in BatchSamplerShard(sampler, num_processes=W, process_index=r) for j in b]
            want = [i for st in plan.steps for mb in st.micro_batches[r] for i in mb]
            assert got == want, (per_device, r)


def test_help():
    p = subprocess.run([sys.executable, "-m", "bench.side_by_side", "--help"], cwd=ROOT, capture_output=True,
                       text=True, env=dict(os.environ, PYTHONPATH=ROOT), timeout=60)
    assert p.returncode == 0, p.stderr
    for flag in ("--steps", "--ranks", "--global-batch", "--max-tokens", "--stacks"):
        assert flag in p.stdout
