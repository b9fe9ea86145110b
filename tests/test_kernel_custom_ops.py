"""The torch.library custom ops: opcheck (schema, fake, autograd registration) and
torch.compile(fullgraph=True) forward + backward over all four on CPU with the PyTorch implementations."""
import pytest
import torch

from s1fast_kernels import custom_ops as ops
from s1fast_kernels.linear_cross_entropy_op import fused_linear_cross_entropy_reference as flce_ref
from s1fast_kernels.rope_op import rope_reference
from s1fast_kernels.rms_norm_op import rms_norm_reference
from s1fast_kernels.swiglu_op import swiglu_reference


def _inputs():
    g = torch.Generator().manual_seed(6)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    x = r(2, 9, 24)
    emb = torch.cat([torch.outer(torch.arange(16.0), 1e-1 ** torch.arange(8.0))] * 2, -1)
    return dict(x=x, w_norm=1 + 0.1 * r(24), gate=r(2, 9, 40), up=r(2, 9, 40), q=r(2, 9, 3, 16), k=r(2, 9, 1, 16),
                cos=emb.cos(), sin=emb.sin(), pos=torch.arange(9).repeat(2, 1), head=r(53, 24) * 0.2,
                target=torch.randint(0, 53, (18,), generator=g), tw=torch.rand(18, generator=g))


def model(p, rms, rope, swiglu, flce):
    """A miniature block: norm -> RoPE on q/k -> SwiGLU -> norm -> weighted fused CE (trainer's call)."""
    h = rms(p["x"], p["w_norm"], 1e-6)
    q, k = rope(p["q"] * h[..., :1, None], p["k"], p["cos"], p["sin"], p["pos"])
    a = swiglu(p["gate"], p["up"]) + q.sum(-1).sum(-1, keepdim=True) + k.sum((-1, -2))[..., None]
    h2 = rms(h + a[..., :24], p["w_norm"], 1e-6).reshape(-1, 24)
    t = p["target"].clone()
    t[::4] = -100
    return flce(h2, p["head"], t, token_weight=p["tw"] / 13.0, reduction="sum")


def _leaves(p):
    return {k: (v.clone().requires_grad_() if v.is_floating_point() else v) for k, v in p.items()}


def _ref_flce(h, w, t, **kw):
    return flce_ref(h, w, t, **kw)


def test_custom_ops_pass_opcheck():
    p = _inputs()
    req = lambda t: t.clone().requires_grad_()  # noqa: E731
    torch.library.opcheck(torch.ops.s1fast_kernels.swiglu, (req(p["gate"]), req(p["up"])))
    torch.library.opcheck(torch.ops.s1fast_kernels.rms_norm, (req(p["x"]), req(p["w_norm"]), 1e-6))
    torch.library.opcheck(torch.ops.s1fast_kernels.rope, (req(p["q"]), req(p["k"]), p["cos"], p["sin"], p["pos"]))
    w = torch.ones(18) / 18
    for low_memory in (False, True):
        torch.library.opcheck(torch.ops.s1fast_kernels.fused_linear_cross_entropy,
                              (req(p["x"].reshape(18, 24)), req(p["head"]), None, p["target"], w, -100, 0.0, 0.0,
                               None, "sum", True, 8, low_memory))
    lse = torch.logsumexp(p["x"].reshape(18, 24) @ p["head"].t(), -1)
    torch.library.opcheck(torch.ops.s1fast_kernels.fused_linear_cross_entropy_dweight,
                          (p["x"].reshape(18, 24), p["head"], None, p["target"], w, lse, -100, 0.0, 0.0, None, 8))


@pytest.mark.parametrize("backend,low_memory", [("aot_eager", False), ("inductor", False), ("aot_eager", True)])
def test_compile_fullgraph_matches_eager_reference(backend, low_memory, monkeypatch):
    monkeypatch.setenv("S1FAST_DISABLE_TRITON", "1")  # the PyTorch implementations inside the ops
    torch._dynamo.reset()
    p = _inputs()

    def flce(*a, **kw):
        return ops.fused_linear_cross_entropy(*a, low_memory=low_memory, **kw)
    compiled = torch.compile(lambda p: model(p, ops.rms_norm, ops.rope, ops.swiglu, flce), fullgraph=True,
                             backend=backend)
    a = _leaves(p)
    loss = compiled(a)
    loss.backward()
    b = _leaves(p)
    loss_ref = model(b, rms_norm_reference, rope_reference, swiglu_reference, _ref_flce)
    loss_ref.backward()
    torch.testing.assert_close(loss, loss_ref, rtol=1e-5, atol=1e-6)
    for name in ("x", "w_norm", "gate", "up", "q", "k", "head"):
        torch.testing.assert_close(a[name].grad, b[name].grad, rtol=1e-4, atol=1e-6, msg=name)


def test_cross_entropy_op_passes_opcheck_and_compiles_fullgraph(monkeypatch):
    """The cross-entropy over logits: its op's schema, fake and autograd, then compiled forward + backward of
    every reduction against the reference (the per-token incoming gradient of reduction="none" included)."""
    from s1fast_kernels import cross_entropy
    p = _inputs()
    logits = (p["x"].reshape(18, 24) @ p["head"].t()).requires_grad_()
    w = torch.ones(18) / 18
    for reduction, want_grad in (("sum", True), ("none", False)):
        torch.library.opcheck(torch.ops.s1fast_kernels.cross_entropy,
                              (logits, p["target"], w, -100, 0.1, 1e-3, 4.0, reduction, want_grad))
    monkeypatch.setenv("S1FAST_DISABLE_TRITON", "1")
    torch._dynamo.reset()
    t = p["target"].clone()
    t[::4] = -100
    kw = dict(label_smoothing=0.1, z_loss=1e-3, softcap=4.0, token_weight=p["tw"])
    for reduction in ("sum", "mean", "none"):
        def loss(z, fn):
            out = fn(z, t, reduction=reduction, **kw)
            return (out * p["tw"]).sum() if reduction == "none" else out
        compiled = torch.compile(lambda z: loss(z, cross_entropy), fullgraph=True, backend="aot_eager")
        a, b = logits.detach().clone().requires_grad_(), logits.detach().clone().requires_grad_()
        compiled(a).backward()
        ref = loss(b, lambda z, t, **k: flce_ref(z, torch.eye(53), t, **k))
        ref.backward()
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-6, msg=reduction)


@pytest.mark.parametrize("path", ["kernel", "pytorch"])
def test_fakes_promise_the_real_layouts_for_strided_inputs(path, monkeypatch):
    """Transposed / strided inputs (a column-major gate, RoPE on transformers' [B, H, S, D] transposed to
    [B, S, H, D], partial rotary): each op's real output has the strides its fake promises. They used not to
    (swiglu, rms_norm's backward, rope's PyTorch path): torch.compile then failed in Inductor's
    assert_size_stride ("expected ... stride")."""
    if path == "pytorch":
        monkeypatch.setenv("S1FAST_DISABLE_TRITON", "1")
    g = torch.Generator().manual_seed(3)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    T = lambda *s: r(*s).transpose(0, 1)  # noqa: E731  (dense, not contiguous)
    O = torch.ops.s1fast_kernels
    torch.library.opcheck(O.swiglu, (T(24, 10), T(24, 10)))
    torch.library.opcheck(O.swiglu_backward, (T(24, 10), T(24, 10), r(10, 24)))
    torch.library.opcheck(O.rms_norm_backward, (T(24, 10), r(24), r(10, 24), torch.rand(10, generator=g) + 0.5))
    emb = torch.cat([torch.outer(torch.arange(16.0), 1e-1 ** torch.arange(4.0))] * 2, -1)  # rotary_dim 8
    pos = torch.arange(7).repeat(2, 1)
    hf = lambda h, d: r(2, h, 7, d).transpose(1, 2)  # noqa: E731
    for d in (8, 16):  # full and partial rotary
        torch.library.opcheck(O.rope, (hf(4, d), hf(2, d), emb.cos(), emb.sin(), pos))
        torch.library.opcheck(O.rope_backward, (hf(4, d), hf(2, d), emb.cos(), emb.sin(), pos))
