"""Per-token log-probs / entropy kernel (s1fast_kernels.logprob_op): Triton (interpreter) and PyTorch paths
against float64 on odd shapes in fp32 and bf16, ignored tokens, the custom op, a DTensor weight, the counted
memory at s1's shapes (< 1% of the full-logits path) and the sm_90 compile (0 spills, wgmma for bf16)."""
import os

import pytest
import torch

import s1fast_kernels.logprob_op as lp
from gloo_ranks import one_process_group
from kernel_testing import RegisteredOpCalls, check_against_reference, on_kernel_device
from s1fast_kernels.logprob_op import token_logprobs, token_logprobs_reference

N, H, V = 37, 45, 301  # odd everywhere; the vocabulary takes three 128-column tiles, the last partial


def _inputs(dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(N, H, generator=g, dtype=torch.float64)
    w = torch.randn(V, H, generator=g, dtype=torch.float64) * 0.3
    t = torch.randint(0, V, (N,), generator=g)
    t[::6] = -100
    a = torch.randn(N, generator=g, dtype=torch.float64)  # per-token incoming gradients
    b = torch.randn(N, generator=g, dtype=torch.float64)
    return h.to(dtype), w.to(dtype), t, a, b


def _run(fn, h, w, t, a, b, entropy, temperature, dtype=None, **kw):
    hh = h.detach().clone().to(dtype or h.dtype).requires_grad_()
    ww = w.detach().clone().to(dtype or w.dtype).requires_grad_()
    logp, ent = fn(hh, ww, t, entropy=entropy, temperature=temperature, **kw)
    out = (logp.double() * a).sum() + ((ent.double() * b).sum() if entropy else 0.0)
    out.backward()
    return [logp, hh.grad, ww.grad] + ([ent] if entropy else [])


def _compare(dtype, entropy, temperature, **kw):
    args = _inputs(dtype)
    out = _run(on_kernel_device(token_logprobs), *args, entropy, temperature, **kw)
    ref = _run(token_logprobs_reference, *args, entropy, temperature, torch.float64)
    base = _run(token_logprobs_reference, *args, entropy, temperature)
    for name, o, r, bb in zip(("logp", "dhidden", "dweight", "entropy"), out, ref, base):
        check_against_reference(f"token_logprobs {name}", o, r, bb)
    assert (out[0][args[2] == -100] == 0).all(), "ignored tokens give logp 0"
    assert out[0].dtype == (torch.float64 if dtype == torch.float64 else torch.float32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("entropy,temperature", [(True, 0.7), (False, 1.0)])
def test_triton_path_matches_float64(dtype, entropy, temperature):
    _compare(dtype, entropy, temperature, chunk_size=16)  # dh pass: three token chunks, the last partial


def test_triton_dweight_accumulates_over_token_tiles_and_vocabulary_blocks(monkeypatch):
    monkeypatch.setattr(lp, "DW_ROWS", 16)  # three token tiles per vocabulary block: the fp32 accumulator
    monkeypatch.setattr(lp, "BUFFER_BYTES", (4 * 16 + 4 * H) * 160)  # vocabulary blocks of 160 rows
    assert lp._tiles(N, V, H, 4, None)[1:] == (16, 160)
    _compare(torch.float32, True, 1.0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_pytorch_path_matches_float64(dtype, monkeypatch):
    monkeypatch.setenv("S1FAST_DISABLE_TRITON", "1")
    _compare(dtype, True, 0.7, chunk_size=16)


def test_frozen_weight_skips_dweight_and_gradient_of_logp_alone():
    h, w, t, a, _ = _inputs(torch.float32)
    hh = h.clone().requires_grad_()
    logp, ent = token_logprobs(hh, w, t, chunk_size=16)
    assert ent is None
    (logp * a.float()).sum().backward()
    h64 = h.double().requires_grad_()
    (token_logprobs_reference(h64, w.double(), t)[0] * a).sum().backward()
    check_against_reference("dhidden, frozen weight", hh.grad, h64.grad, margin=1e-5)


def test_custom_op_opcheck_and_the_functional_api_goes_through_it():
    h, w, t, a, b = _inputs(torch.float32)
    utils = ("test_schema", "test_faketensor", "test_autograd_registration")
    for entropy in (True, False):
        torch.library.opcheck(torch.ops.s1fast_kernels.token_logprobs,
                              (h.clone().requires_grad_(), w.clone().requires_grad_(), t, -100, 0.7, entropy),
                              test_utils=utils)
    # chunked, the weight frozen (its gradient is not made)
    torch.library.opcheck(torch.ops.s1fast_kernels.token_logprobs,
                          (h.clone().requires_grad_(), w, t, -100, 0.7, True, 16, True, False), test_utils=utils)
    with RegisteredOpCalls() as calls:
        _run(token_logprobs, h, w, t, a, b, True, 0.7)
    assert calls.counts == {"token_logprobs": 1, "token_logprobs_backward": 1}, calls.counts


def test_dtensor_weight_on_a_one_process_gloo_group(monkeypatch, tmp_path):
    """An FSDP2-sharded (DTensor) weight: gathered in forward, the gradient goes back to the shard."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor
    monkeypatch.setenv("S1FAST_DISABLE_TRITON", "1")
    with one_process_group(tmp_path):
        mesh = init_device_mesh("cpu", (1,))
        h, w, t, a, _ = _inputs(torch.float32)
        wd = torch.nn.Parameter(distribute_tensor(w.clone(), mesh, [Shard(0)]))
        (token_logprobs(h, wd, t)[0] * a.float()).sum().backward()
        w2 = w.clone().requires_grad_()
        (token_logprobs(h, w2, t)[0] * a.float()).sum().backward()
        assert hasattr(wd.grad, "full_tensor"), "the gradient of a DTensor parameter is a DTensor"
        torch.testing.assert_close(wd.grad.full_tensor(), w2.grad)


def test_extra_memory_at_s1_shapes_is_under_one_percent_of_full_logits():
    from s1fast.model import CONFIGS
    from s1fast_kernels.memory_count import logprob_plan_extra as plan_extra
    q = CONFIGS["Qwen2.5-32B-Instruct"]
    n, v = 32768, q.vocab_size  # s1's block, Qwen2.5-32B's vocabulary
    full, fused = plan_extra(False, n, q.hidden_size, v), plan_extra(True, n, q.hidden_size, v)
    assert full > 2 * n * v * 4, "fp32 log-softmax and its gradient at least"
    assert fused < 0.01 * full, (fused, full)
    assert fused <= lp.BUFFER_BYTES + 32 * n, "the scratch budget plus a few fp32 per-token vectors"


def test_compiles_for_sm90_without_spills_and_with_wgmma():
    from s1fast_kernels.compile_check import compile_variants
    reps = compile_variants(["s1fast_kernels.logprob_op"])
    assert len(reps) == 4
    for r in reps:
        assert r.registers > 0 and r.spill_stores == 0 and r.spill_loads == 0, r.row()
        assert r.uses_wgmma == ("bf16" in r.name), f"{r.name}: bf16 dots must use wgmma: {r.row()}"
