"""Cross-entropy kernels: targets outside [0, V) fail loudly on both paths (issue #14, item 10), and softcap's
tanh keeps fp32 accuracy for small arguments (item 11), against float64 references."""
import dataclasses

import pytest
import torch
import triton
import triton.language as tl

from s1fast_kernels import cross_entropy, fused_linear_cross_entropy, token_logprobs
from s1fast_kernels.cross_entropy_op import _tanh
from s1fast_kernels.linear_cross_entropy_op import fused_linear_cross_entropy_reference as flce_ref
from kernel_testing import KERNEL_DEVICE, have_cuobjdump

V, H, N = 10, 8, 7


def _inputs(bad):
    g = torch.Generator().manual_seed(0)
    h = torch.randn(N, H, generator=g)
    w = torch.randn(V, H, generator=g)
    t = torch.randint(0, V, (N,), generator=g)
    t[1] = -100
    t[4] = bad
    return h, w, t


@pytest.mark.parametrize("path", ["triton", "pytorch"])
@pytest.mark.parametrize("bad", [12, 10, -5])
def test_target_outside_vocab_raises_a_clear_error(path, bad, monkeypatch):
    if path == "pytorch":
        monkeypatch.setenv("S1FAST_DISABLE_TRITON", "1")
    h, w, t = _inputs(bad)
    with pytest.raises(ValueError, match=rf"fused_linear_cross_entropy: target\[4\] = {bad} is outside \[0, 10\)"):
        fused_linear_cross_entropy(h, w, t)
    with pytest.raises(ValueError, match=rf"cross_entropy: target\[4\] = {bad} is outside \[0, 10\)"):
        cross_entropy(h @ w.t(), t)
    # token_logprobs did not check: the kernel returned -lse for a target matching no column, silently
    with pytest.raises(ValueError, match=rf"token_logprobs: target\[4\] = {bad} is outside \[0, 10\)"):
        token_logprobs(h, w, t)
    t[4] = 3  # the same call with a valid target (and one ignore_index row) goes through
    assert torch.isfinite(fused_linear_cross_entropy(h, w, t)) and torch.isfinite(cross_entropy(h @ w.t(), t))



@pytest.mark.parametrize("path", ["triton", "pytorch"])
def test_a_float_target_is_refused_with_its_dtype(path, monkeypatch):
    """A float target was cast to indices by the kernels and failed inside torch.gather on the PyTorch path."""
    if path == "pytorch":
        monkeypatch.setenv("S1FAST_DISABLE_TRITON", "1")
    h, w, t = _inputs(3)
    t = t.clamp(min=0).float()
    for name, call in (("fused_linear_cross_entropy", lambda: fused_linear_cross_entropy(h, w, t)),
                       ("cross_entropy", lambda: cross_entropy(h @ w.t(), t)),
                       ("token_logprobs", lambda: token_logprobs(h, w, t))):
        with pytest.raises(ValueError, match=rf"{name}: target has dtype torch.float32; it must hold integer"):
            call()

GPU_ASSERT_DRIVER = """
import sys, torch
from s1fast_kernels.targets import CHECK_BLOCK, _check_targets_kernel
t = torch.tensor([0, int(sys.argv[1]), 1], device="cuda")
_check_targets_kernel[(1,)](t, 3, %d, -100, BLOCK=CHECK_BLOCK)
torch.cuda.synchronize()
print("no assert")
""" % V


@pytest.mark.skipif(not torch.cuda.is_available(), reason="a real device assert needs a CUDA GPU (the "
                    "interpreter's version of this check is the test below)")
def test_target_check_kernel_asserts_on_a_gpu():
    """On a GPU the check's device assert stops the process (a fresh one: the CUDA context is lost) and names
    the rule; a valid target passes."""
    import os
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=root)
    env.pop("TRITON_INTERPRET", None)
    for bad, fails in ((12, True), (-5, True), (3, False)):
        p = subprocess.run([sys.executable, "-c", GPU_ASSERT_DRIVER, str(bad)], env=env, capture_output=True,
                           text=True, timeout=120)
        out = p.stdout + p.stderr
        if fails:
            assert p.returncode != 0 and "outside [0, vocab)" in out, (bad, p.returncode, out[-2000:])
        else:
            assert p.returncode == 0 and "no assert" in out, (bad, out[-2000:])


@pytest.mark.skipif(torch.cuda.is_available(), reason="the interpreter's debug option: this machine has a GPU, "
                    "where test_target_check_kernel_asserts_on_a_gpu runs the real assert")
def test_target_check_kernel_asserts_on_the_device(monkeypatch):
    """The GPU path's check is a device assert; the interpreter honours it once its options enable debug."""
    from triton.runtime import interpreter
    from s1fast_kernels.targets import CHECK_BLOCK, _check_targets_kernel
    b = interpreter.interpreter_builder
    monkeypatch.setattr(b, "options", dataclasses.replace(b.options, debug=True))
    ok = torch.tensor([0, 9, -100, 3])
    _check_targets_kernel[(1,)](ok, 4, V, -100, BLOCK=CHECK_BLOCK)
    for bad in (12, -5):
        with pytest.raises(BaseException, match="outside \\[0, vocab\\)"):
            _check_targets_kernel[(1,)](torch.tensor([0, bad, 1]), 3, V, -100, BLOCK=CHECK_BLOCK)


@pytest.mark.skipif(not have_cuobjdump(), reason="cuobjdump (shipped with the triton wheel) not found")
def test_target_check_kernel_compiles_for_sm90_with_its_assert():
    from s1fast_kernels.compile_check import kernel_reports
    (rep,) = kernel_reports()["targets"]
    assert rep.registers > 0 and rep.spill_stores == 0 and rep.spill_loads == 0, rep.row()
    assert "__assertfail" in rep.ptx, "the device assert was compiled out"


def _softcap_case(scale, cap):
    g = torch.Generator().manual_seed(1)
    h = torch.randn(33, 16, generator=g, dtype=torch.float64) * scale
    w = torch.randn(50, 16, generator=g, dtype=torch.float64) / 4
    t = torch.randint(0, 50, (33,), generator=g)
    return h, w, t, cap


def _loss_and_grad(fn, h, w, t, cap, dtype):
    hh = h.detach().clone().to(dtype).requires_grad_()
    loss = fn(hh, w.to(dtype), t, softcap=cap, reduction="sum")
    loss.backward()
    return loss.double(), hh.grad.double()


@pytest.mark.parametrize("path", ["triton", "pytorch"])
@pytest.mark.parametrize("scale,cap", [(5.0, 1e4), (1.0, 30.0)], ids=["small_x", "moderate_x"])
def test_softcap_small_argument_keeps_fp32_accuracy(path, scale, cap, monkeypatch):
    """x = logit / cap ~ 1e-4 .. 1e-1: the capped logits, loss and gradient stay within fp32 tolerance of the
    float64 reference, as PyTorch's own fp32 tanh does (the old 1 - 2/(exp(2x)+1) was off by ~1e-4 here)."""
    if path == "pytorch":
        monkeypatch.setenv("S1FAST_DISABLE_TRITON", "1")
    h, w, t, cap = _softcap_case(scale, cap)
    ref_loss, ref_grad = _loss_and_grad(flce_ref, h, w, t, cap, torch.float64)
    base_loss, base_grad = _loss_and_grad(flce_ref, h, w, t, cap, torch.float32)
    for fn in (fused_linear_cross_entropy,
               lambda hh, ww, tt, **kw: cross_entropy(hh @ ww.t(), tt, **kw)):
        loss, grad = _loss_and_grad(fn, h, w, t, cap, torch.float32)
        gscale = ref_grad.abs().max()
        assert abs(loss - ref_loss) <= abs(base_loss - ref_loss) + 1e-6 * abs(ref_loss)
        assert (grad - ref_grad).abs().max() <= (base_grad - ref_grad).abs().max() + 1e-5 * gscale


@triton.jit
def _tanh_kernel(x_ptr, y_ptr, n, BLOCK: tl.constexpr):
    o = tl.arange(0, BLOCK)
    m = o < n
    tl.store(y_ptr + o, _tanh(tl.load(x_ptr + o, mask=m, other=0.0)), mask=m)


def test_softcap_tanh_matches_float64_over_its_range():
    """The kernel's tanh over |x| in [1e-6, 20] and 0: within 2 fp32 ulps of float64 (relative)."""
    mag = torch.logspace(-6, 1.3, 200, dtype=torch.float64)
    x = torch.cat([mag, -mag, torch.zeros(1, dtype=torch.float64)]).float().to(KERNEL_DEVICE)
    y = torch.empty_like(x)
    _tanh_kernel[(1,)](x, y, x.numel(), BLOCK=512)
    x, y = x.cpu(), y.cpu()
    ref = torch.tanh(x.double())
    rel = ((y.double() - ref).abs() / ref.abs().clamp_min(1e-30)).max().item()
    assert rel <= 2 * 2.0 ** -23, rel
