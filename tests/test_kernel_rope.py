"""Packed RoPE: the Triton kernel (interpreter) against float64 for both layouts, partial rotary, in place,
strided inputs, backward; sm_90 compile."""
import pytest
import torch

import s1fast_kernels
from s1fast_kernels.rope_op import rope_reference
from kernel_testing import check_against_reference, on_kernel_device


def tables(max_pos, rotary_dim, dtype):
    inv = 1.0 / (1e6 ** (torch.arange(0, rotary_dim, 2, dtype=torch.float64) / rotary_dim))
    freqs = torch.outer(torch.arange(max_pos, dtype=torch.float64), inv)
    emb = torch.cat([freqs, freqs], -1)  # transformers' layout: the two halves repeated
    return emb.cos().to(dtype), emb.sin().to(dtype)


def packed_positions(lengths):
    return torch.cat([torch.arange(n) for n in lengths])


def _grads(fn, q, k, cos, sin, pos, dq, dk, dtype=None):
    q = q.detach().clone().to(dtype or q.dtype).requires_grad_()
    k = k.detach().clone().to(dtype or k.dtype).requires_grad_()
    cos, sin = (cos.to(dtype), sin.to(dtype)) if dtype else (cos, sin)
    qo, ko = fn(q, k, cos, sin, pos)
    (qo * dq.to(qo.dtype)).sum().add((ko * dk.to(ko.dtype)).sum()).backward()
    return qo, ko, q.grad, k.grad


CASES = {  # name: (q shape, k shape, position_ids, rotary_dim)
    "varlen 777 tokens, 7/3 heads, d 64": ((777, 7, 64), (777, 3, 64), packed_positions([300, 1, 400, 76]), 64),
    "batched 3x41, 7/3 heads, d 80, rotary 64": ((3, 41, 7, 80), (3, 41, 3, 80),
                                                 torch.stack([torch.arange(41), torch.arange(5, 46),
                                                              packed_positions([20, 21])]), 64),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("case", list(CASES))
def test_rope_matches_float64(dtype, case):
    qs, ks, pos, r = CASES[case]
    g = torch.Generator().manual_seed(2)
    q = torch.randn(qs, generator=g).to(dtype)
    k = torch.randn(ks, generator=g).to(dtype)
    dq, dk = torch.randn(qs, generator=g), torch.randn(ks, generator=g)
    cos, sin = tables(512, r, dtype)
    out = _grads(on_kernel_device(s1fast_kernels.rope), q, k, cos, sin, pos, dq, dk)
    ref = _grads(rope_reference, q, k, cos, sin, pos, dq, dk, torch.float64)
    base = _grads(rope_reference, q, k, cos, sin, pos, dq, dk)
    for name, o, rr, b in zip(("q", "k", "dq", "dk"), out, ref, base):
        check_against_reference(f"rope {case} {name}", o, rr, b)
    # the pass-through channels are copied exactly, forward and backward
    assert torch.equal(out[0][..., r:], q[..., r:]) and torch.equal(out[2][..., r:], dq[..., r:].to(dtype))


def test_rope_in_place_and_strided_views():
    """A [B, H, S, D] tensor transposed to [B, S, H, D] is read through its strides, and in place works."""
    g = torch.Generator().manual_seed(3)
    qh = torch.randn(2, 5, 33, 64, generator=g)   # [B, H, S, D]: what attention code often holds
    kh = torch.randn(2, 3, 33, 64, generator=g)
    pos = torch.stack([torch.arange(33), packed_positions([10, 23])])
    cos, sin = tables(40, 64, torch.float32)
    q, k = qh.transpose(1, 2), kh.transpose(1, 2)
    assert not q.is_contiguous()
    qo, ko = s1fast_kernels.rope(q, k, cos, sin, pos)
    qr, kr = rope_reference(q.double(), k.double(), cos.double(), sin.double(), pos)
    check_against_reference("rope strided q", qo, qr, rope_reference(q, k, cos, sin, pos)[0])
    assert qo.stride() == q.stride(), "the output keeps the input's layout (no copy)"
    q2, k2 = q.clone(), k.clone()
    qi, ki = s1fast_kernels.rope(q2, k2, cos, sin, pos, inplace=True)
    assert qi.data_ptr() == q2.data_ptr() and torch.equal(qi, qo) and torch.equal(ki, ko)


def test_rope_unused_output_gets_zero_gradient():
    q = torch.randn(9, 2, 16, requires_grad=True)
    k = torch.randn(9, 1, 16, requires_grad=True)
    cos, sin = tables(9, 16, torch.float32)
    qo, _ = s1fast_kernels.rope(q, k, cos, sin, torch.arange(9))
    qo.sum().backward()  # an expanded (all strides 0) gradient: must be read as such, not as contiguous
    assert k.grad is None or torch.count_nonzero(k.grad) == 0
    q2 = q.detach().clone().requires_grad_()
    rope_reference(q2, k.detach(), cos, sin, torch.arange(9))[0].sum().backward()
    torch.testing.assert_close(q.grad, q2.grad)


def test_rope_shape_errors_are_clear():
    cos, sin = tables(8, 16, torch.float32)
    with pytest.raises(ValueError, match="position_ids"):
        s1fast_kernels.rope(torch.zeros(4, 2, 16), torch.zeros(4, 1, 16), cos, sin, torch.arange(5))
    with pytest.raises(ValueError, match="rotary_dim"):
        s1fast_kernels.rope(torch.zeros(4, 2, 8), torch.zeros(4, 1, 8), cos, sin, torch.arange(4))


@pytest.mark.parametrize("path", ["kernel", "pytorch"])
@pytest.mark.parametrize("bad", [8, -1])
def test_rope_positions_outside_the_tables_fail_clearly(path, bad, monkeypatch):
    """A position past the cos/sin tables (or negative) used to read outside them in the kernel (garbage) and
    wrap around silently on the PyTorch path; now both name the entry."""
    if path == "pytorch":
        monkeypatch.setenv("S1FAST_DISABLE_TRITON", "1")
    cos, sin = tables(8, 16, torch.float32)
    pos = torch.tensor([0, 1, bad, 2])
    with pytest.raises(ValueError, match=rf"rope: position_ids\[2\] = {bad} is outside \[0, 8\)"):
        s1fast_kernels.rope(torch.zeros(4, 2, 16), torch.zeros(4, 1, 16), cos, sin, pos)
    with pytest.raises(ValueError, match=r"position_ids\[1, 0\] = "):  # batched: the [b, s] of the entry
        s1fast_kernels.rope(torch.zeros(2, 2, 2, 16), torch.zeros(2, 2, 1, 16), cos, sin,
                            torch.tensor([[0, 1], [bad, 2]]))


def test_rope_takes_any_strides_on_every_path():
    """A cos/sin table or q whose head_dim is not unit-stride was refused on the kernel path only ("must be
    contiguous (stride 1)") while the PyTorch path took it; both now rotate it."""
    cos, sin = tables(8, 16, torch.float32)
    cos_t, sin_t = cos.t().contiguous().t(), sin.t().contiguous().t()  # column-major: head_dim stride 8
    g = torch.Generator().manual_seed(2)
    q = torch.randn(16, 4, 2, generator=g).transpose(0, 2)  # [2, 4, 16] with head_dim stride 8
    k = torch.randn(2, 1, 16, generator=g)
    pos = torch.tensor([0, 5])
    got = on_kernel_device(s1fast_kernels.rope)(q, k, cos_t, sin_t, pos)
    for o, r in zip(got, rope_reference(q, k, cos, sin, pos)):
        torch.testing.assert_close(o.cpu(), r, rtol=1e-5, atol=1e-6)

def test_rope_compiles_for_sm90_without_spills():
    from s1fast_kernels.compile_check import kernel_reports
    reps = kernel_reports()["rope_op"]
    assert len(reps) == 4
    for r in reps:
        assert r.registers > 0 and r.spill_stores == 0 and r.spill_loads == 0, r.row()
