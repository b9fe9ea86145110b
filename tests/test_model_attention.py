"""Packed attention backends: every one that runs here equals per-document attention, and no
document can see its neighbour. Plus the Triton kernels in the loop (interpreter on CPU)."""
import importlib.util

import pytest
import torch

from s1fast import attention as attn
from s1fast import model as M

LENS = [5, 11, 1, 8]


def reference(q, k, v, lens):
    """Each document alone, explicit softmax with a causal mask, GQA by repeating heads."""
    rep = q.shape[1] // k.shape[1]
    out, s = [], 0
    for n in lens:
        qi, ki, vi = q[s:s + n], k[s:s + n].repeat_interleave(rep, 1), v[s:s + n].repeat_interleave(rep, 1)
        w = torch.einsum("qhd,khd->hqk", qi, ki) / q.shape[-1] ** 0.5
        w = w.masked_fill(~torch.ones(n, n, dtype=torch.bool).tril(), float("-inf")).softmax(-1)
        out.append(torch.einsum("hqk,khd->qhd", w, vi))
        s += n
    return torch.cat(out)


def cu(lens):
    return torch.tensor([0] + list(torch.tensor(lens).cumsum(0)), dtype=torch.int32)


CPU_BACKENDS = attn.available_backends("cpu")


def test_cpu_backends_and_selection(monkeypatch):
    assert CPU_BACKENDS == ["sdpa_doc", "sdpa_mask"]
    assert attn.select_backend("cpu") == "sdpa_doc"
    with attn.use_backend("sdpa_mask"):
        assert attn.select_backend("cpu") == "sdpa_mask"
    assert attn.select_backend("cpu") == "sdpa_doc"
    # On CUDA the fused kernels come first: flash-attn if installed, then torch's varlen, then flex.
    cuda = attn.available_backends("cuda")
    assert cuda[-2:] == ["sdpa_doc", "sdpa_mask"] and cuda.index("varlen") < cuda.index("flex")
    assert ("flash" in cuda) == (importlib.util.find_spec("flash_attn") is not None)
    monkeypatch.setenv("S1FAST_ATTENTION", "flex")
    assert attn.select_backend("cpu") == "flex"
    monkeypatch.setenv("S1FAST_ATTENTION", "bogus")
    with pytest.raises(ValueError, match="bogus"):
        attn.select_backend("cpu")


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_backend_equals_each_document_alone_fwd_bwd(backend):
    torch.manual_seed(0)
    T = sum(LENS)
    q = torch.randn(T, 4, 16, requires_grad=True)
    k = torch.randn(T, 2, 16, requires_grad=True)
    v = torch.randn(T, 2, 16, requires_grad=True)
    meta = attn.prepare(cu(LENS), max(LENS), T, backend=backend)
    out = attn.attention(q, k, v, meta)
    ref = reference(q, k, v, LENS)
    assert (out - ref).abs().max().item() < 1e-5
    dout = torch.randn_like(out)
    g = torch.autograd.grad(out, (q, k, v), dout)
    g_ref = torch.autograd.grad(ref, (q, k, v), dout)
    for a, b in zip(g, g_ref):
        assert (a - b).abs().max().item() < 1e-5


def test_flex_forward_on_cpu():
    """FlexAttention runs forward only on CPU (platform.md); its document mask is checked here,
    its backward runs on CUDA."""
    torch.manual_seed(0)
    T = sum(LENS)
    q, k, v = torch.randn(T, 4, 16), torch.randn(T, 2, 16), torch.randn(T, 2, 16)
    meta = attn.prepare(cu(LENS), max(LENS), T, backend="flex")
    out = attn.attention(q, k, v, meta)
    assert (out - reference(q, k, v, LENS)).abs().max().item() < 1e-5


@pytest.mark.parametrize("backend", CPU_BACKENDS + ["flex"])
def test_model_isolation_packed_equals_alone(backend, monkeypatch):
    """Changing one document leaves the others' outputs bit-for-bit unmoved, and the packed
    forward equals each document run alone."""
    monkeypatch.setenv("S1FAST_DISABLE_TRITON", "1")
    torch.manual_seed(0)
    cfg = M.CONFIGS["tiny-llama"].with_(vocab_size=512)
    model = M.build_model(cfg)
    g = torch.Generator().manual_seed(0)
    docs = [torch.randint(0, 512, (n,), generator=g) for n in LENS]
    pos = torch.cat([torch.arange(n) for n in LENS])
    with torch.no_grad(), attn.use_backend(backend):
        packed = model(torch.cat(docs), pos, cu(LENS), max(LENS))
        changed = [d.clone() for d in docs]
        changed[1] = (changed[1] + 1) % 512
        moved = model(torch.cat(changed), pos, cu(LENS), max(LENS))
        bounds = cu(LENS).tolist()
        for i, d in enumerate(docs):
            s, e = bounds[i], bounds[i + 1]
            alone = model(d, torch.arange(len(d)), cu([len(d)]), len(d))
            assert (packed[s:e] - alone).abs().max().item() < 1e-5, i
            if i != 1:
                assert torch.equal(moved[s:e], packed[s:e]), i
            else:
                assert not torch.allclose(moved[s:e], packed[s:e])


def test_kernels_in_the_loop_equal_pytorch_path(monkeypatch):
    """Under TRITON_INTERPRET=1 (conftest) CPU tensors go through the Triton kernels; forward and
    backward must equal the plain PyTorch path."""
    from s1fast_kernels import _runtime
    if not _runtime.INTERPRET:
        pytest.skip("needs TRITON_INTERPRET=1 (set by tests/conftest.py) to run Triton on CPU")
    torch.manual_seed(0)
    cfg = M.CONFIGS["tiny-qwen2"].with_(vocab_size=256, num_layers=1)
    model = M.build_model(cfg)
    lens = [3, 5]
    ids = torch.randint(0, 256, (8,))
    pos = torch.cat([torch.arange(n) for n in lens])

    def run(disable):
        monkeypatch.setenv("S1FAST_DISABLE_TRITON", disable)
        model.zero_grad()
        out = model.logits(ids, pos, cu(lens), max(lens))
        out.square().mean().backward()
        return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    from s1fast_kernels import swiglu_op
    launches = []
    real = swiglu_op._launch_fwd
    monkeypatch.setattr(swiglu_op, "_launch_fwd", lambda *a: launches.append(1) or real(*a))
    (a, ga) = run("0")
    assert launches, "the Triton kernel path was not taken"
    (b, gb) = run("1")
    assert (a - b).abs().max().item() < 1e-5
    for n in ga:
        assert (ga[n] - gb[n]).abs().max().item() < 1e-5, n
