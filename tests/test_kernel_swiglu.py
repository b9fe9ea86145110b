"""SwiGLU: the interpreter runs the Triton code against a float64 reference; sm_90 compile check."""
import pytest
import torch

import s1fast_kernels
from s1fast_kernels._runtime import INTERPRET, use_triton
from kernel_testing import check_against_reference, on_kernel_device


def test_interpreter_is_active_on_cpu():
    if not torch.cuda.is_available():
        assert INTERPRET and use_triton(torch.zeros(1)), "conftest must turn the interpreter on"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(777, 96), (3, 5, 131), (1,)])
def test_swiglu_matches_float64(dtype, shape):
    g64 = torch.randn(shape, dtype=torch.float64) * 3
    u64 = torch.randn(shape, dtype=torch.float64)
    g = g64.to(dtype).requires_grad_()
    u = u64.to(dtype).requires_grad_()
    y = on_kernel_device(s1fast_kernels.swiglu)(g, u)
    dy64 = torch.randn(shape, dtype=torch.float64)
    y.backward(dy64.to(dtype))

    # float64 reference on the same (rounded) inputs
    gr = g.detach().double().requires_grad_()
    ur = u.detach().double().requires_grad_()
    yr = torch.nn.functional.silu(gr) * ur
    yr.backward(dy64.to(dtype).double())
    # plain PyTorch in the same dtype, the baseline error
    gb = g.detach().clone().requires_grad_()
    ub = u.detach().clone().requires_grad_()
    yb = torch.nn.functional.silu(gb) * ub
    yb.backward(dy64.to(dtype))

    check_against_reference("swiglu fwd", y, yr, yb)
    check_against_reference("swiglu dgate", g.grad, gr.grad, gb.grad)
    check_against_reference("swiglu dup", u.grad, ur.grad, ub.grad)


def test_swiglu_shape_mismatch_is_clear():
    with pytest.raises(ValueError, match="one shape"):
        s1fast_kernels.swiglu(torch.zeros(3), torch.zeros(4))


def test_swiglu_compiles_for_sm90():
    from s1fast_kernels.compile_check import kernel_reports
    reps = kernel_reports()["swiglu_op"]  # fwd and bwd, bf16 and fp32 (swiglu_op.sm90_variants)
    assert len(reps) == 4
    for r in reps:
        assert 0 < r.registers <= 64 and r.spill_stores == 0 and r.spill_loads == 0, r.row()
