"""The model calls its kernels through the registered ``torch.ops.s1fast_kernels`` ops (the one autograd path):
a training step's forward and backward under the interpreter dispatches each forward op and its backward op,
and a decoder block with the trainer's fused loss compiles with ``torch.compile(fullgraph=True)``."""
import pytest
import torch

from kernel_testing import RegisteredOpCalls
from s1fast import attention as attn
from s1fast import model as M
from s1fast.train import loss_head


def _tiny(seed=0):
    torch.manual_seed(seed)
    cfg = M.CONFIGS["tiny-qwen2"].with_(vocab_size=256, num_layers=1)
    lens = [3, 6]
    cu = torch.tensor([0, 3, 9], dtype=torch.int32)
    pos = torch.cat([torch.arange(n) for n in lens])
    ids = torch.randint(0, 256, (9,))
    targets = torch.randint(0, 256, (9,))
    targets[2] = -100
    return M.build_model(cfg), ids, pos, cu, max(lens), targets, torch.full((9,), 1 / 8)


def test_training_step_dispatches_every_kernel_as_its_registered_op():
    from s1fast_kernels import _runtime
    if not _runtime.INTERPRET:
        pytest.skip("needs TRITON_INTERPRET=1 (set by tests/conftest.py) to run the kernels' path on CPU")
    model, ids, pos, cu, max_len, targets, weights = _tiny()
    with RegisteredOpCalls() as calls:
        loss = model(ids, pos, cu, max_len, head=loss_head(targets, weights))
        loss.backward()
    assert torch.isfinite(loss) and all(p.grad is not None for p in model.parameters())
    norms = 2 * len(model.layers) + 1
    expect = {"rms_norm": norms, "rms_norm_backward": norms, "rope": 1, "rope_backward": 1, "swiglu": 1,
              "swiglu_backward": 1, "fused_linear_cross_entropy": 1}
    assert {k: calls.counts.get(k, 0) for k in expect} == expect, calls.counts


def test_block_and_fused_loss_compile_fullgraph_and_match_eager(monkeypatch):
    monkeypatch.setenv("S1FAST_DISABLE_TRITON", "1")  # the PyTorch implementations inside the ops: fast
    torch._dynamo.reset()
    model, ids, pos, cu, max_len, targets, weights = _tiny(1)
    block = model.layers[0]
    x = torch.randn(ids.shape[0], model.cfg.hidden_size)
    cos, sin = M.rope_tables(model.cfg, max_len, x.device)
    meta = attn.prepare(cu, max_len, ids.shape[0], device=x.device)
    head = loss_head(targets, weights)

    def step(x):
        return head(model.norm(block(x, pos, cos, sin, meta)), model.lm_head.weight)

    def grads(fn):
        model.zero_grad()
        xx = x.clone().requires_grad_()
        loss = fn(xx)
        loss.backward()
        return [loss, xx.grad] + [p.grad.clone() for p in model.parameters() if p.grad is not None]

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    out, ref = grads(compiled), grads(step)
    assert len(out) == len(ref) > 3
    for a, b in zip(out, ref):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
