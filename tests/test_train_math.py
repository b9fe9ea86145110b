"""One s1fast optimizer step is the textbook step: transformers' model, plain PyTorch cross-entropy over each
example, the recipe's weighting, full-norm clipping and torch.optim.AdamW, for both loss weightings.

Also: a checkpoint interrupted while being written leaves the previous one the loadable latest.
"""
import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from s1fast import checkpoint, data

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
ENV.pop("TRITON_INTERPRET", None)
LR, WD, BETAS, EPS = 1e-3, 1e-4, (0.9, 0.95), 1e-8


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from transformers import Qwen2Config, Qwen2ForCausalLM
    d = tmp_path_factory.mktemp("ref")
    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=151936, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                      tie_word_embeddings=False, rope_theta=1e6, rms_norm_eps=1e-6)
    model = Qwen2ForCausalLM(cfg).float()
    mdir = str(d / "model")
    model.save_pretrained(mdir)
    rows = [{"question": f"What is {a} + {b}?", "thinking_trajectories": [f"I add {a} and {b}." + " Check." * k],
             "attempt": f"{a + b}"} for a, b, k in ((2, 3, 1), (10, 7, 9), (1, 1, 30))]
    src = d / "rows.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return mdir, str(src), rows


def reference_step(mdir, rows, weighting):
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(mdir, dtype=torch.float32)
    tok = data.load_tokenizer()
    encs = [data.encode(r, tok, "s1") for r in rows]
    n_total = sum(sum(1 for x in e.labels[1:] if x != -100) for e in encs)
    from transformers.loss.loss_utils import ForCausalLMLoss
    loss = 0.0
    for e in encs:
        ids, labels = torch.tensor(e.input_ids), torch.tensor(e.labels)
        logits = model(ids[None]).logits
        if weighting == "sequence":  # s1: one sequence per GPU, transformers 4.46.1's loss with num_items_in_batch
            # = that rank's own labels[..., 1:] != -100 (Trainer.get_batch_samples), then DDP's mean over ranks
            n_rank = (labels[1:] != -100).sum()
            loss = loss + ForCausalLMLoss(logits, labels[None], model.config.vocab_size,
                                          num_items_in_batch=n_rank) / len(encs)
        else:
            tgt = labels[1:]
            per_tok = torch.nn.functional.cross_entropy(logits[0, :-1].float(), tgt, ignore_index=-100,
                                                        reduction="sum")
            loss = loss + per_tok / n_total
    loss.backward()
    params = list(model.parameters())
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    # s1's groups: transformers 4.46.1 Trainer.get_decay_parameter_names (no nn.LayerNorm, no "bias" names)
    from transformers.trainer_pt_utils import get_parameter_names
    names = {n for n in get_parameter_names(model, [torch.nn.LayerNorm]) if "bias" not in n}
    decay = [p for n, p in model.named_parameters() if n in names]
    no_decay = [p for n, p in model.named_parameters() if n not in names]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": WD}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=LR, betas=BETAS, eps=EPS)
    opt.step()
    return float(loss.detach()), {k: v.detach() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("weighting", ["sequence", "token"])
def test_one_step_equals_transformers_plus_adamw(setup, tmp_path, weighting):
    mdir, src, rows = setup
    out = str(tmp_path / "run")
    cmd = [sys.executable, "-m", "s1fast.train", "--model", mdir, "--data", src, "--recipe", "s1",
           "--max-tokens", "512", "--policy", "error", "--global-batch", "3", "--epochs", "1", "--max-steps", "1",
           "--dtype", "fp32", "--lr", str(LR), "--warmup-ratio", "0", "--weight-decay", str(WD), "--beta1", "0.9",
           "--beta2", "0.95", "--eps", str(EPS), "--grad-clip", "1.0", "--weighting", weighting,
           "--output-dir", out, "--progress", "false", "--plot", "false"]
    p = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    ref_loss, ref_sd = reference_step(mdir, rows, weighting)
    got = json.loads(open(os.path.join(out, "metrics.jsonl")).readline())
    assert abs(got["loss"] - ref_loss) <= 1e-5 * ref_loss, (got["loss"], ref_loss)
    sd = load_file(os.path.join(out, "final", "model.safetensors"))
    init = load_file(os.path.join(mdir, "model.safetensors"))
    moved = max((ref_sd[k] - init[k]).abs().max().item() for k in sd)
    assert moved > 5e-4, "the step must move the weights (else this test proves nothing)"
    worst = max((sd[k] - ref_sd[k]).abs().max().item() for k in sd)
    assert worst < 2e-6, f"s1fast's step differs from the reference step by {worst:.2e} (step size {moved:.2e})"


def test_interrupted_checkpoint_leaves_previous_one_loadable(tmp_path, monkeypatch):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
    root = str(tmp_path / "ckpt")
    first = checkpoint.save(root, 1, model, opt, {"scheduler": {}, "note": "first"})
    saved = {k: v.clone() for k, v in model.state_dict().items()}

    real_save = checkpoint.dcp.save

    def crash(state, checkpoint_id):
        real_save(state, checkpoint_id=checkpoint_id)  # shards on disk, but the run dies before completing
        raise KeyboardInterrupt("power cut")
    monkeypatch.setattr(checkpoint.dcp, "save", crash)
    with torch.no_grad():
        model.weight.add_(1.0)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save(root, 2, model, opt, {"scheduler": {}, "note": "second"})
    assert os.path.isdir(os.path.join(root, "step_00000002.tmp"))
    assert checkpoint.latest(root) == first
    os.remove(os.path.join(root, "latest"))  # even without the pointer, a scan never picks the .tmp
    assert checkpoint.latest(root) == first
    state = checkpoint.load(checkpoint.latest(root), model, opt)
    assert state["note"] == "first" and state["step"] == 1
    assert all(torch.equal(model.state_dict()[k], v) for k, v in saved.items())
    with pytest.raises(checkpoint.CheckpointError, match="not a complete s1fast checkpoint"):
        checkpoint.load(os.path.join(root, "step_00000002.tmp"), model, opt)
    monkeypatch.setattr(checkpoint.dcp, "save", real_save)
    assert checkpoint.save(root, 2, model, opt, {"scheduler": {}}) == os.path.join(root, "step_00000002")
    assert not os.path.exists(os.path.join(root, "step_00000002.tmp"))
