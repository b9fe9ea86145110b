"""RMSNorm: the Triton kernels (interpreter) against float64, PyTorch-path parity, sm_90 compile."""
import pytest
import torch

import s1fast_kernels
from s1fast_kernels import rms_norm_op
from kernel_testing import MARGIN, check_against_reference, on_kernel_device


def _run(x, w, eps, dy):
    x = x.detach().clone().requires_grad_()
    w = w.detach().clone().requires_grad_()
    y = on_kernel_device(s1fast_kernels.rms_norm)(x, w, eps)
    y.backward(dy.to(y.dtype))
    return y, x.grad, w.grad


def _ref(x, w, eps, dy, dtype=None):
    """rms_norm_reference in float64 (dtype=None) or in the inputs' own dtype (the baseline)."""
    x = x.detach().clone().to(dtype or torch.float64).requires_grad_()
    w = w.detach().clone().to(dtype or torch.float64).requires_grad_()
    y = rms_norm_op.rms_norm_reference(x, w, eps)
    y.backward(dy.to(y.dtype))
    return y, x.grad, w.grad


@pytest.mark.parametrize("dtype,wdtype", [(torch.float32, torch.float32), (torch.bfloat16, torch.bfloat16),
                                          (torch.bfloat16, torch.float32)])
@pytest.mark.parametrize("shape", [(777, 96), (3, 5, 131)])
def test_rms_norm_matches_float64(dtype, wdtype, shape):
    g = torch.Generator().manual_seed(1)
    x = (torch.randn(shape, generator=g, dtype=torch.float64) * 2 + 0.5).to(dtype)
    w = (1 + 0.3 * torch.randn(shape[-1], generator=g, dtype=torch.float64)).to(wdtype)
    dy = torch.randn(shape, generator=g, dtype=torch.float64)
    eps = 1e-6
    out = _run(x, w, eps, dy)
    ref = _ref(x, w, eps, dy)
    # baseline: plain PyTorch in the same dtypes (x in its dtype, weight in its own)
    xb, wb = x.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    yb = rms_norm_op.rms_norm_reference(xb, wb, eps)
    yb.backward(dy.to(yb.dtype))
    assert out[0].dtype == yb.dtype, "output dtype must follow transformers (promote x and weight)"
    # y with a bf16 x and an fp32 weight is fp32 but carries transformers' bf16 rounding of x_hat: a
    # different rounding of a near-tie (rsqrt vs 1/sqrt) moves it by one bf16 ulp, so the bf16 margin applies
    margin = MARGIN[dtype]
    for name, o, r, b in zip(("y", "dx", "dw"), out, ref, (yb, xb.grad, wb.grad)):
        check_against_reference(f"rms_norm {name}", o, r, b, margin=margin)


def test_rms_norm_cpu_path_is_the_reference(monkeypatch):
    """With Triton disabled, CPU tensors take the PyTorch path (what the lean model runs on a CPU)."""
    monkeypatch.setenv("S1FAST_DISABLE_TRITON", "1")
    x, w = torch.randn(4, 10), torch.rand(10)
    y = s1fast_kernels.rms_norm(x, w, 1e-5)
    assert y.grad_fn is None and torch.equal(y, rms_norm_op.rms_norm_reference(x, w, 1e-5))


def test_rows_wider_than_one_program_are_normalised_whole():
    """A row wider than MAX_COLS takes the PyTorch path: the kernel holds one row per program and would
    normalise (and write) only its first MAX_COLS columns."""
    d = rms_norm_op.MAX_COLS + 3
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, d, generator=g, dtype=torch.float64)
    x[:, -3:] = 50.0  # the columns past the block move every output of the row
    w, dy = 1 + 0.1 * torch.randn(d, generator=g, dtype=torch.float64), torch.randn(2, d, generator=g, dtype=torch.float64)
    out = _run(x.float(), w.float(), 1e-6, dy)
    for name, o, r in zip(("y", "dx", "dw"), out, _ref(x, w, 1e-6, dy)):
        torch.testing.assert_close(o.double(), r, rtol=1e-4, atol=1e-5, msg=name)


def test_rms_norm_bad_weight_is_clear():
    with pytest.raises(ValueError, match=r"weight of shape \[8\]"):
        s1fast_kernels.rms_norm(torch.zeros(2, 8), torch.zeros(9))


def test_rms_norm_compiles_for_sm90_without_spills():
    from s1fast_kernels.compile_check import kernel_reports
    reps = kernel_reports()["rms_norm_op"]
    assert len(reps) == 6
    for r in reps:
        assert r.registers > 0 and r.spill_stores == 0 and r.spill_loads == 0, r.row()
