"""One rank's training step on fake "cuda" tensors, with PyTorch's memory tracker: run as a subprocess by
tests/test_fake_cuda.py (an abort in a CPU build of torch is then a failure, not a crash of the test run).

    python tests/fake_cuda_step.py --backend varlen --tokens 4096,32768 [--layers 2] [--checkpoint none,full] --out R.json

Nothing is computed: parameters, batch and every intermediate are FakeTensors on device "cuda", so the step
goes through the GPU branches of s1fast's model and attention, fused AdamW, and the kernels' registered fake
implementations (the model calls its kernels as ``torch.ops.s1fast_kernels`` ops, whose fake implementations
stand in for the Triton launchers, which need real memory). The model has the Qwen2.5-32B shape with
``--layers`` blocks.
The JSON has, per run (tokens x checkpointing), what the tracker saw per block and in the loss (bytes).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


class NoTracker:
    """Stands in for MemTracker where it cannot follow the step (it has no rule for FlexAttention's op)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def track_external(self, *args):
        pass

    def reset_mod_stats(self):
        pass

    def get_tracker_snapshot(self, kind="current"):
        return {}


class LossHead(torch.nn.Module):
    """The trainer's fused loss as a module, so the tracker attributes its memory (a phase of its own)."""

    def __init__(self, targets, weights):
        super().__init__()
        from s1fast.train import loss_head
        self.fn = loss_head(targets, weights)

    def forward(self, hidden, weight):
        return self.fn(hidden, weight)


def run(backend: str, tokens: int, layers: int, checkpoint: str, n_docs: int = 4, device: str = "cuda") -> dict:
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.distributed._tools.mem_tracker import MemTracker, _ModState

    from s1fast import model as modeling
    from s1fast.attention import use_backend
    from s1fast.train import param_groups
    cfg = modeling.CONFIGS["Qwen2.5-32B-Instruct"].with_(num_layers=layers)
    dev = torch.device(device, 0) if device == "cuda" else torch.device(device)
    lengths = [tokens // n_docs] * (n_docs - 1)
    lengths.append(tokens - sum(lengths))
    cu = torch.tensor([0] + list(torch.tensor(lengths).cumsum(0)), dtype=torch.int32)
    pos = torch.cat([torch.arange(n) for n in lengths])
    model = modeling.build_model(cfg, device="meta", dtype=torch.bfloat16)
    modeling.apply_activation_checkpointing(model, mode=checkpoint)
    out = {"backend": backend, "tokens": tokens, "layers": layers, "checkpoint": checkpoint, "device": device}
    with FakeTensorMode(allow_non_fake_inputs=True) as fm, use_backend(backend):
        model.to_empty(device=dev)
        model.tie_weights()
        ids = torch.zeros(tokens, dtype=torch.long, device=dev)
        targets = torch.zeros(tokens, dtype=torch.long, device=dev)
        weights = torch.full((tokens,), 1.0 / tokens, device=dev)
        cu_d, pos_d = fm.from_tensor(cu).to(dev), fm.from_tensor(pos).to(dev)
        opt = torch.optim.AdamW(param_groups(model, 0.0), lr=1e-5, fused=True)
        head = LossHead(targets, weights)
        marks = {}

        def mark(name):
            snap = mt.get_tracker_snapshot("current")
            marks[name] = {k: v for k, v in snap.get(dev, {}).items()}

        hooks = [model.layers[i].register_forward_pre_hook(lambda m, a, i=i: mark(f"pre_fw_{i}"))
                 for i in range(layers)]
        hooks.append(head.register_forward_pre_hook(lambda m, a: mark("pre_loss")))
        track = backend != "flex"  # MemTracker has no rule for the flex_attention higher-order op
        mt = MemTracker() if track else NoTracker()
        mt.track_external(model, opt)
        with mt:
            def forward():
                return model(ids, pos_d, cu_d, max(lengths), head=lambda h, w: head(h, w))
            try:
                loss = forward()
                out["forward"] = "ran"
            except RuntimeError as e:
                # torch.compile'd FlexAttention traces its backward inside the forward: that too needs the
                # driver's primary context. Its forward then runs without autograd (the GPU branch's shapes,
                # dtypes and devices, the block mask included).
                if device != "cuda" or "hasPrimaryContext" not in str(e):
                    raise
                mt.reset_mod_stats()  # the tracker follows one forward per module
                with torch.no_grad():
                    loss = forward()
                out["forward"] = f"ran without autograd (with it: {e})"
            mark("after_forward")
            try:
                if not loss.requires_grad:
                    raise RuntimeError(out["forward"])
                loss.backward()
                out["backward"] = "ran"
            except RuntimeError as e:
                # A CUDA build of torch without a driver: the autograd engine asks for the device's primary
                # context. The backward is then checked on fake "cpu" tensors (--device cpu), which take the
                # same registered ops and attention backend; the optimizer runs on stand-in gradients.
                if device != "cuda" or "hasPrimaryContext" not in str(e):
                    raise
                out["backward"] = f"not runnable on fake cuda without a driver: {e}"
                for p in model.parameters():
                    p.grad = torch.empty_like(p)
            mark("after_backward")
            opt.step()
            opt.zero_grad(set_to_none=True)
        for h in hooks:
            h.remove()
        assert loss.device == dev and loss.dtype == torch.float32 and loss.dim() == 0, (loss.device, loss.dtype)
        bad = [n for n, p in model.named_parameters() if p.device != dev]
        assert not bad, f"parameters left the device: {bad[:3]}"
        if not track:
            out["memory"] = "not tracked (MemTracker has no rule for flex_attention)"
            return out
        stats = mt.memory_tracking

        def snap(mod, state):
            s = stats[mod].snapshots.get(state)
            return s[-1][dev] if s else None

        blocks = []
        for i in range(layers if out["backward"] == "ran" else 0):
            pre_bw, peak_bw = snap(model.layers[i], _ModState.PRE_BW), snap(model.layers[i], _ModState.PEAK_BW)
            nxt = marks[f"pre_fw_{i + 1}"] if i + 1 < layers else marks["pre_loss"]
            blocks.append({
                # what block i leaves alive for the backward, its output (the next block's input) included
                "saved_activations": nxt["Activation"] - marks[f"pre_fw_{i}"]["Activation"],
                # the block's backward: peak above its start, less the parameter gradients it creates
                "backward_transient": peak_bw["Total"] - pre_bw["Total"],
                "backward_gradients": peak_bw.get("Gradient", 0) - pre_bw.get("Gradient", 0),
            })
        if not blocks:  # forward only: what each block leaves for the backward
            blocks = [{"saved_activations": (marks[f"pre_fw_{i + 1}"] if i + 1 < layers else marks["pre_loss"])
                       ["Activation"] - marks[f"pre_fw_{i}"]["Activation"]} for i in range(layers)]
        lp_pre, lp_peak = snap(head, _ModState.PRE_FW), snap(head, _ModState.PEAK_FW)
        out.update(blocks=blocks, loss_transient=lp_peak["Total"] - lp_pre["Total"],
                   peak_total=mt.get_tracker_snapshot("peak")[dev]["Total"],
                   optimizer_states=marks["after_backward"].get("Optstate", 0))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", required=True)
    ap.add_argument("--tokens", default="32768", help="comma-separated token counts")
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"], help="the fake tensors' device")
    ap.add_argument("--checkpoint", default="none", help="comma-separated: none, full")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    res = []
    for tokens in (int(t) for t in a.tokens.split(",")):
        for ck in a.checkpoint.split(","):
            res.append(run(a.backend, tokens, a.layers, ck, device=a.device))
            with open(a.out, "w") as f:  # written after every run: a later failure keeps the earlier ones
                json.dump(res, f, indent=1)
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
