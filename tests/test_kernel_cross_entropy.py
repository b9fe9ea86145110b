"""Fused linear cross-entropy and cross_entropy: interpreter (Triton) and PyTorch paths against float64,
the reduction / weight / normaliser semantics, ignored tokens, DTensor weights, memory, sm_90 compile.

Shapes: the Triton kernels run under the interpreter at N=93, H=40, V=611 with 32-row chunks (three
chunks, the last one partial); the issue's N=777, H=96, V=5003 takes 10-50 s per case there, so those
sizes test the PyTorch path (the same chunked algorithm), which is also what CPU users run.
"""
import os

import pytest
import torch

import s1fast_kernels
import s1fast_kernels.linear_cross_entropy_op as ce
from s1fast_kernels import cross_entropy, fused_linear_cross_entropy
from s1fast_kernels.linear_cross_entropy_op import fused_linear_cross_entropy_reference as flce_ref
from gloo_ranks import one_process_group, run_ranks
from kernel_testing import check_against_reference, on_kernel_device
from s1fast.model import CONFIGS
from s1fast_kernels.memory_count import gpu_plan_extra, peak_bytes as _peak_bytes

_QWEN32 = CONFIGS["Qwen2.5-32B-Instruct"]
S1_SHAPES = dict(n=32768, hdim=_QWEN32.hidden_size, v=_QWEN32.vocab_size)  # s1's block, Qwen2.5-32B's sizes

OPTIONS = {
    "mean": dict(),
    "sum+weights+bias+smoothing+zloss+softcap": dict(bias=True, label_smoothing=0.1, z_loss=1e-3, softcap=4.0,
                                                     reduction="sum", weights=True),
    "none+weights": dict(reduction="none", weights=True),
    "mean+normalizer+bias": dict(bias=True, normalizer=50.0),
}


def _inputs(n, h, v, dtype, opts, seed=0):
    g = torch.Generator().manual_seed(seed)
    hid = torch.randn(n, h, generator=g, dtype=torch.float64).to(dtype)
    w = (torch.randn(v, h, generator=g, dtype=torch.float64) * 0.3).to(dtype)
    b = (torch.randn(v, generator=g, dtype=torch.float64) * 0.5).to(dtype) if opts.get("bias") else None
    t = torch.randint(0, v, (n,), generator=g)
    t[::5] = -100
    tw = None
    if opts.get("weights"):
        tw = torch.rand(n, generator=g)
        tw[::5] = float("nan")  # ignored tokens must not care what their weight holds
    kw = {k: opts[k] for k in ("label_smoothing", "z_loss", "softcap", "reduction", "normalizer") if k in opts}
    return hid, w, b, t, tw, kw


def _run(fn, hid, w, b, t, tw, kw, dtype=None, **extra):
    """Loss and gradients of fn; dtype=float64 for the reference, None for the inputs' dtype."""
    def leaf(x):
        return None if x is None else x.detach().clone().to(dtype or x.dtype).requires_grad_()
    h2, w2, b2 = leaf(hid), leaf(w), leaf(b)
    tw2 = None if tw is None else tw.to(dtype or torch.float32)
    loss = fn(h2, w2, t, b2, token_weight=tw2, **kw, **extra)
    gout = torch.linspace(0.5, 1.5, loss.numel(), dtype=torch.float64).reshape(loss.shape)
    loss.backward(gout.to(loss.dtype))
    return [loss, h2.grad, w2.grad] + ([b2.grad] if b is not None else [])


def _compare(label, hid, w, b, t, tw, kw, **extra):
    out = _run(on_kernel_device(fused_linear_cross_entropy), hid, w, b, t, tw, kw, **extra)
    ref = _run(flce_ref, hid, w, b, t, tw, kw, torch.float64)
    base = _run(flce_ref, hid, w, b, t, tw, kw)
    for name, o, r, bb in zip(("loss", "dhidden", "dweight", "dbias"), out, ref, base):
        assert name != "loss" or o.dtype == torch.float32, "the loss is an fp32 tensor"
        check_against_reference(f"{label} {name}", o, r, bb)


def _low_memory_tiles(monkeypatch, dtype, low_memory, rows):
    """Low-memory mode: in bf16 the backward's token tiles are cut to ``rows`` so that a vocabulary block's
    dW is accumulated over several tiles (the fp32 block accumulator); in fp32 every token fits one tile
    and the GEMM writes the block's gradient directly. Both paths are thus checked in every option."""
    if low_memory and dtype == torch.bfloat16:
        monkeypatch.setattr(ce, "DW_ROWS", rows)
    return dict(low_memory=True) if low_memory else {}


@pytest.mark.parametrize("low_memory", [False, True], ids=["fast", "low_memory"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("opt", list(OPTIONS))
def test_fused_linear_ce_triton_matches_float64(dtype, opt, low_memory, monkeypatch):
    monkeypatch.setattr(ce, "GEMM", "triton")  # the Triton GEMM tiles (on a GPU the default is cuBLAS)
    hid, w, b, t, tw, kw = _inputs(93, 40, 611, dtype, OPTIONS[opt])
    extra = _low_memory_tiles(monkeypatch, dtype, low_memory, 40)
    _compare(f"flce[triton] {opt} {extra}", hid, w, b, t, tw, kw, chunk_size=32, **extra)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("opt", ["mean", "sum+weights+bias+smoothing+zloss+softcap"])
def test_fused_linear_ce_cublas_gemms_match_float64(dtype, opt, monkeypatch):
    """The GEMM = "cublas" chunk loop (torch.mm/addmm with fp32 outputs, then the row kernel): on a CPU the
    cuBLAS calls are stood in by fp32 matmuls, so the loop's slicing, bias and accumulation are what is tested
    here; on a GPU (no stand-in) the real cuBLAS calls run."""
    monkeypatch.setattr(ce, "GEMM", "cublas")
    if not torch.cuda.is_available():
        def mm_f32(a, b, out, accumulate=False):
            r = a.float() @ b.float()
            out.add_(r) if accumulate else out.copy_(r)
        monkeypatch.setattr(ce, "_use_cublas", lambda h: True)
        monkeypatch.setattr(ce, "_mm_f32", mm_f32)
    hid, w, b, t, tw, kw = _inputs(93, 40, 611, dtype, OPTIONS[opt])
    _compare(f"flce[cublas] {opt}", hid, w, b, t, tw, kw, chunk_size=32)


@pytest.mark.parametrize("low_memory", [False, True], ids=["fast", "low_memory"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("opt", ["mean", "sum+weights+bias+smoothing+zloss+softcap", "none+weights"])
def test_fused_linear_ce_pytorch_path_matches_float64(dtype, opt, low_memory, monkeypatch):
    monkeypatch.setenv("S1FAST_DISABLE_TRITON", "1")
    hid, w, b, t, tw, kw = _inputs(777, 96, 5003, dtype, OPTIONS[opt], seed=1)
    extra = _low_memory_tiles(monkeypatch, dtype, low_memory, 300)
    _compare(f"flce[pytorch] {opt} {extra}", hid, w, b, t, tw, kw, chunk_size=256, **extra)


def test_sum_with_token_weight_is_the_weighted_sum_and_ignored_tokens_are_inert():
    """The trainer's call: reduction="sum", w already normalised, w irrelevant where target == -100."""
    hid, w, _, t, _, _ = _inputs(93, 40, 611, torch.float32, {})
    tw = torch.rand(93)
    tw[t == -100] = float("nan")
    h = hid.clone().requires_grad_()
    loss = fused_linear_cross_entropy(h, w, t, token_weight=tw, reduction="sum", chunk_size=32)
    per_token = fused_linear_cross_entropy(hid, w, t, reduction="none", chunk_size=32)
    valid = t != -100
    expect = (per_token[valid].double() * tw[valid].double()).sum()
    assert abs(loss.item() - expect.item()) <= 1e-5 * abs(expect.item())
    loss.backward()  # the weight is frozen here: its GEMM is skipped, dhidden must not change
    assert torch.isfinite(h.grad).all() and torch.count_nonzero(h.grad[~valid]) == 0
    assert torch.count_nonzero(per_token[~valid]) == 0
    h2, w2 = hid.clone().requires_grad_(), w.clone().requires_grad_()
    fused_linear_cross_entropy(h2, w2, t, token_weight=tw, reduction="sum", chunk_size=32).backward()
    torch.testing.assert_close(h.grad, h2.grad)
    assert w.grad is None and torch.count_nonzero(w2.grad) > 0


def test_mean_semantics_and_normalizer():
    hid, w, _, t, _, _ = _inputs(93, 40, 611, torch.float32, {})
    total = fused_linear_cross_entropy(hid, w, t, reduction="sum", chunk_size=32)
    n_valid = (t != -100).sum()
    mean = fused_linear_cross_entropy(hid, w, t, chunk_size=32)
    torch.testing.assert_close(mean, total / n_valid)
    torch.testing.assert_close(fused_linear_cross_entropy(hid, w, t, normalizer=1000, chunk_size=32), total / 1000)
    tw = torch.rand(93)
    wmean = fused_linear_cross_entropy(hid, w, t, token_weight=tw, chunk_size=32)
    wsum = fused_linear_cross_entropy(hid, w, t, token_weight=tw, reduction="sum", chunk_size=32)
    torch.testing.assert_close(wmean, wsum / tw[t != -100].sum())
    everything_ignored = torch.full_like(t, -100)
    h = hid.clone().requires_grad_()
    zero = fused_linear_cross_entropy(h, w, everything_ignored, chunk_size=32)
    zero.backward()
    assert zero.item() == 0.0 and torch.count_nonzero(h.grad) == 0, "no supervised token: loss 0, not NaN"
    with pytest.raises(ValueError, match="normalizer is only meaningful"):
        fused_linear_cross_entropy(hid, w, t, reduction="sum", normalizer=5)


@pytest.mark.parametrize("path", ["triton", "pytorch"])
def test_no_host_sync(path, monkeypatch):
    """No .item(), bool(), int(), float() or .tolist() of a tensor anywhere in forward or backward: each
    would be a device sync on a GPU. They are made to raise while the loss runs."""
    if path == "pytorch":
        monkeypatch.setenv("S1FAST_DISABLE_TRITON", "1")
    hid, w, b, t, tw, _ = _inputs(93, 40, 611, torch.float32, {"bias": True, "weights": True})
    leaves = [x.clone().requires_grad_() for x in (hid, w, b)]
    nd = torch.tensor(41.0)

    def sync(*_a, **_k):
        raise AssertionError("host sync inside fused_linear_cross_entropy")
    with monkeypatch.context() as m:
        for name in ("item", "__bool__", "__int__", "__float__", "tolist", "__index__"):
            m.setattr(torch.Tensor, name, sync)
        for red, kw in (("mean", dict(normalizer=nd)), ("sum", {}), ("none", {}), ("sum", dict(low_memory=True)),
                        ("none", dict(low_memory=True))):
            loss = fused_linear_cross_entropy(*leaves[:2], t, leaves[2], token_weight=tw, reduction=red,
                                              z_loss=1e-3, chunk_size=32, **kw)
            loss.backward(torch.ones_like(loss))


@pytest.mark.parametrize("path", ["triton", "pytorch"])
@pytest.mark.parametrize("low_memory", [False, True], ids=["fast", "low_memory"])
def test_no_tokens_give_a_zero_loss_and_zero_gradients(path, low_memory, monkeypatch):
    if path == "pytorch":
        monkeypatch.setenv("S1FAST_DISABLE_TRITON", "1")
    for red in ("mean", "sum", "none"):
        h, w = torch.zeros(0, 8, requires_grad=True), torch.randn(50, 8, requires_grad=True)
        loss = fused_linear_cross_entropy(h, w, torch.zeros(0, dtype=torch.long), reduction=red, low_memory=low_memory)
        loss.backward(torch.ones_like(loss))
        assert loss.sum().item() == 0.0 and torch.count_nonzero(w.grad) == 0, (red, w.grad.abs().max())


@pytest.mark.parametrize("path", ["triton", "pytorch"])
def test_a_second_backward_over_one_forward_says_what_to_do(path, monkeypatch):
    """retain_graph=True then a second backward: the saved gradients were scaled in place by the first, so it is
    refused; the error used to be autograd's "modified by an inplace operation", which names no argument."""
    if path == "pytorch":
        monkeypatch.setenv("S1FAST_DISABLE_TRITON", "1")
    hid, w, _, t, _, _ = _inputs(9, 8, 21, torch.float32, {})
    hid.requires_grad_()
    logits = (hid @ w.t()).detach().requires_grad_()
    for name, loss in (("fused_linear_cross_entropy", fused_linear_cross_entropy(hid, w, t)),
                       ("cross_entropy", cross_entropy(logits, t))):
        (2 * loss).backward(retain_graph=True)
        with pytest.raises(RuntimeError, match=rf"{name}: backward ran twice over one forward \(retain_graph"):
            (2 * loss).backward()


def test_batched_token_weight_is_flattened_like_the_target():
    """hidden [B, T, H] and target [B, T] are flattened; a token_weight [B, T] used to be refused as not [N]."""
    hid, w, _, t, tw, _ = _inputs(12, 8, 21, torch.float32, dict(weights=True))
    tw = tw.nan_to_num(0.0)
    flat = fused_linear_cross_entropy(hid, w, t, token_weight=tw, reduction="sum")
    batched = fused_linear_cross_entropy(hid.view(3, 4, 8), w, t.view(3, 4), token_weight=tw.view(3, 4),
                                         reduction="sum")
    torch.testing.assert_close(batched, flat)
    logits = hid @ w.t()
    torch.testing.assert_close(cross_entropy(logits.view(3, 4, 21), t.view(3, 4), token_weight=tw.view(3, 4)),
                               cross_entropy(logits, t, token_weight=tw))


@pytest.mark.parametrize("chunk", [-1, 2.5])
def test_a_bad_chunk_size_is_named(chunk):
    """chunk_size=-1 failed deep inside ("negative dimension -1") and 2.5 was truncated silently."""
    hid, w, _, t, _, _ = _inputs(9, 8, 21, torch.float32, {})
    for name, call in (("fused_linear_cross_entropy", fused_linear_cross_entropy),
                       ("token_logprobs", s1fast_kernels.token_logprobs)):
        with pytest.raises(ValueError, match=rf"{name}: chunk_size={chunk} must be a positive whole number"):
            call(hid, w, t, chunk_size=chunk)

def test_hidden_and_weight_swapped_as_in_liger_are_named():
    """LigerFusedLinearCrossEntropyLoss takes (weight, hidden, target); the same order here used to fail on the
    target's length with no hint."""
    hid, w, _, t, _, _ = _inputs(9, 8, 21, torch.float32, {})
    with pytest.raises(ValueError, match=r"hidden \(21, 8\) and weight \(9, 8\) look swapped"):
        s1fast_kernels.FusedLinearCrossEntropy()(w, hid, t)

def test_return_lse_and_module_form():
    hid, w, _, t, _, _ = _inputs(93, 40, 611, torch.float32, {})
    loss, lse = fused_linear_cross_entropy(hid, w, t, return_lse=True, chunk_size=32)
    torch.testing.assert_close(lse, torch.logsumexp(hid @ w.t(), -1), rtol=1e-5, atol=1e-5)
    module = s1fast_kernels.FusedLinearCrossEntropy(chunk_size=32)
    torch.testing.assert_close(module(hid, w, t), loss)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cross_entropy_over_logits_matches_float64(dtype):
    g = torch.Generator().manual_seed(4)
    logits = (torch.randn(61, 1031, generator=g) * 3).to(dtype)
    t = torch.randint(0, 1031, (61,), generator=g)
    t[::4] = -100
    kw = dict(label_smoothing=0.05, z_loss=1e-4, softcap=8.0)

    def run(fn, x):
        x = x.detach().clone().requires_grad_()
        loss = fn(x, t, **kw)
        loss.backward()
        return loss, x.grad

    def ref(x, t, **kw):  # unfused definition over logits: identity weight
        return flce_ref(x, torch.eye(x.shape[1], dtype=x.dtype), t, **kw)

    out, r64, base = run(on_kernel_device(cross_entropy), logits), run(ref, logits.double()), run(ref, logits)
    for name, o, r, b in zip(("loss", "dlogits"), out, r64, base):
        check_against_reference(f"cross_entropy {name}", o, r, b)
    assert out[1].dtype == dtype


def test_dtensor_weight_on_a_one_process_gloo_group(tmp_path):
    """An FSDP2-style vocab-sharded DTensor weight: all-gathered, gradient back to the shard as a DTensor
    (one process, so the reduce-scatter is an identity here; its Partial placement is checked in code)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor
    with one_process_group(tmp_path):
        mesh = init_device_mesh("cpu", (1,))
        hid, w, _, t, _, _ = _inputs(93, 40, 611, torch.float32, {})
        wd = torch.nn.Parameter(distribute_tensor(w.clone(), mesh, [Shard(0)]))
        loss = fused_linear_cross_entropy(hid, wd, t, chunk_size=32)
        loss.backward()
        w2 = w.clone().requires_grad_()
        loss2 = fused_linear_cross_entropy(hid, w2, t, chunk_size=32)
        loss2.backward()
        torch.testing.assert_close(loss, loss2)
        assert hasattr(wd.grad, "full_tensor"), "the gradient of a DTensor parameter is a DTensor"
        torch.testing.assert_close(wd.grad.full_tensor(), w2.grad)


def _two_rank_worker(rank, out_dir):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor
    os.environ["S1FAST_DISABLE_TRITON"] = "1"
    mesh = init_device_mesh("cpu", (2,))
    w = torch.randn(61, 8, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(100 + rank)  # each rank its own tokens
    h, t = torch.randn(37, 8, generator=g), torch.randint(0, 61, (37,), generator=g)
    wd = torch.nn.Parameter(distribute_tensor(w, mesh, [Shard(0)]))
    fused_linear_cross_entropy(h, wd, t, reduction="sum", chunk_size=16).backward()
    torch.save(wd.grad.to_local(), os.path.join(out_dir, f"{rank}.pt"))


def test_dtensor_weight_gradient_is_summed_over_two_ranks(tmp_path):
    """Two gloo ranks, different tokens, a vocab-sharded weight: each rank's shard of the gradient must be
    the sum over BOTH ranks' tokens (full_tensor() would give only the local tokens' part)."""
    run_ranks(_two_rank_worker, 2, tmp_path, str(tmp_path))
    w = torch.randn(61, 8, generator=torch.Generator().manual_seed(0)).requires_grad_()
    for rank in (0, 1):
        g = torch.Generator().manual_seed(100 + rank)
        h, t = torch.randn(37, 8, generator=g), torch.randint(0, 61, (37,), generator=g)
        flce_ref(h, w, t, reduction="sum").backward()
    shards = [torch.load(tmp_path / f"{r}.pt") for r in (0, 1)]
    torch.testing.assert_close(torch.cat(shards), w.grad, rtol=1e-5, atol=1e-6)


def test_memory_stays_bounded_by_the_chunk_as_tokens_grow():
    """4K vs 32K tokens at V=151936, H=16, forward + backward, on the CPU (PyTorch) path, counted on
    meta tensors (s1fast_kernels.memory_count; a real run on this box agreed: 108 MiB of RSS growth, 121 counted)."""
    fused_4k, fused_32k = _peak_bytes(fused_linear_cross_entropy, 4096), _peak_bytes(fused_linear_cross_entropy, 32768)
    unfused_4k, unfused_32k = _peak_bytes(flce_ref, 4096), _peak_bytes(flce_ref, 32768)
    # what may grow with N: dhidden (H fp32... here 16 x 4 bytes) and a few per-token vectors (loss, lse,
    # weights, mask: < 64 bytes a token); nothing of size V
    per_token_growth = (32768 - 4096) * (16 * 4 + 64)
    assert fused_32k - fused_4k <= per_token_growth, (fused_4k, fused_32k)
    assert unfused_32k > 7 * unfused_4k, "the unfused path holds [N, V] tensors"
    assert fused_32k < 0.01 * unfused_32k, (fused_32k, unfused_32k)  # the 1% target
    assert fused_4k < 300 * 2**20


def test_gpu_path_memory_at_s1_shapes_both_modes():
    """The buffers the GPU path allocates at s1's shapes (bf16, N=32768, H=5120, V=152064), counted on meta
    tensors with the kernel launches skipped (s1fast_kernels.memory_count.gpu_plan_extra). low_memory=True meets the
    issue's 1% of the unfused path; the default holds the fp32 [V, H] dW accumulator and its chunk buffers."""
    n, hdim, v = S1_SHAPES["n"], S1_SHAPES["hdim"], S1_SHAPES["v"]
    unfused = gpu_plan_extra(None, **S1_SHAPES)
    fast, low = gpu_plan_extra(False, **S1_SHAPES), gpu_plan_extra(True, **S1_SHAPES)
    assert unfused > 10 * n * v * 1.0, "bf16 logits + fp32 upcast + fp32 log-softmax at least"
    assert low < 0.01 * unfused, (low, unfused)
    chunk = ce._default_chunk(n, v, True)
    assert fast >= 4 * v * hdim + 6 * chunk * v, "fp32 accumulator + fp32 logits and bf16 dz chunk buffers"
    assert fast < 0.1 * unfused
    low_chunk = ce._default_chunk(n, v, True, low_memory=True)
    bufs = 6 * low_chunk * v + 4 * ce.stats_elements(low_chunk, v, torch.bfloat16)
    assert low <= bufs * 1.01, "no more than the forward's chunk buffers and row statistics"


def test_fused_linear_ce_compiles_for_sm90_with_wgmma():
    from s1fast_kernels.compile_check import kernel_reports
    reps = kernel_reports()["linear_cross_entropy_op"] + kernel_reports()["cross_entropy_op"]
    mm = [r for r in reps if r.name.startswith("flce")]  # every GEMM of the fused loss
    assert len(mm) == 10 and len(reps) == 13
    for r in reps:
        assert r.registers > 0 and r.spill_stores == 0 and r.spill_loads == 0, r.row()
    for r in mm:
        assert r.uses_wgmma == ("bf16" in r.name), f"{r.name}: bf16 GEMMs must use wgmma: {r.row()}"
