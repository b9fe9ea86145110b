"""Packed causal attention (s1fast_kernels.attention_op): the Triton kernels (interpreter on CPU) forward and
backward against float64 on packed batches of odd document lengths, head dims 64/80/128, GQA 1/4/7, bf16 and
fp32 (tolerance rule of kernel_testing); no attention across documents; the device-built block table; the
torch.library op (opcheck); sm_90 compile (registers, spills, shared memory, wgmma)."""
import pytest
import torch

from s1fast_kernels import _runtime
from s1fast_kernels.attention_op import block_table, packed_attention, packed_attention_reference
from kernel_testing import check_against_reference, on_kernel_device

needs_kernels = pytest.mark.skipif(
    not (_runtime.INTERPRET or torch.cuda.is_available()),
    reason="runs the Triton kernels: needs a GPU or TRITON_INTERPRET=1 (tests/conftest.py sets it without a GPU)")


def cu_of(lengths):
    return torch.tensor([0] + list(torch.tensor(lengths).cumsum(0)), dtype=torch.int32)


def run(fn, q, k, v, cu, dout, dtype):
    """(out, dq, dk, dv) of ``fn`` on copies of q, k, v in ``dtype``, for incoming gradient ``dout``."""
    q, k, v = (x.detach().to(dtype).requires_grad_() for x in (q, k, v))
    out = fn(q, k, v, cu)
    out.backward(dout.to(out.dtype))
    return out, q.grad, k.grad, v.grad


def kernel(q, k, v, cu):
    return on_kernel_device(packed_attention)(q, k, v, cu, int((cu[1:] - cu[:-1]).max()))


# many short documents: 40 of 1..12 tokens, one empty (a repeated boundary)
SHORT = [int(x) for x in torch.randint(1, 13, (40,), generator=torch.Generator().manual_seed(5))]
SHORT[7] = 0
CASES = {  # name: (document lengths, query heads, key/value heads, head dim)
    "lengths 1,2,17,129,300; gqa 4; d 64": ([1, 2, 17, 129, 300], 4, 1, 64),
    "lengths 1,2,17,129,300; gqa 1; d 64": ([1, 2, 17, 129, 300], 1, 1, 64),
    "40 short documents; gqa 1; d 64": (SHORT, 2, 2, 64),
    "one long document of 520; gqa 7; d 64": ([520], 7, 1, 64),
    "lengths 33,100; gqa 1; d 80 (padded)": ([33, 100], 2, 2, 80),
    "lengths 50,90; gqa 4; d 128": ([50, 90], 4, 1, 128),
}
MATRIX = [("lengths 1,2,17,129,300; gqa 1; d 64", torch.float32),  # fp32's small tiles are slow to interpret
          ("lengths 1,2,17,129,300; gqa 4; d 64", torch.bfloat16),
          ("40 short documents; gqa 1; d 64", torch.bfloat16),
          ("one long document of 520; gqa 7; d 64", torch.bfloat16),
          ("lengths 33,100; gqa 1; d 80 (padded)", torch.bfloat16),
          ("lengths 50,90; gqa 4; d 128", torch.bfloat16)]


@needs_kernels
@pytest.mark.parametrize("case,dtype", MATRIX, ids=[f"{c} {str(d)[6:]}" for c, d in MATRIX])
def test_attention_fwd_bwd_match_float64(case, dtype):
    lengths, hq, hk, d = CASES[case]
    g = torch.Generator().manual_seed(len(lengths) + d)
    T = sum(lengths)
    q, k, v = torch.randn(T, hq, d, generator=g), torch.randn(T, hk, d, generator=g), torch.randn(T, hk, d, generator=g)
    dout = torch.randn(T, hq, d, generator=g)
    cu = cu_of(lengths)
    got = run(kernel, q, k, v, cu, dout, dtype)
    ref = run(packed_attention_reference, q, k, v, cu, dout, torch.float64)
    base = run(packed_attention_reference, q, k, v, cu, dout, dtype)  # PyTorch's own error in this dtype
    for name, o, r, b in zip(("out", "dq", "dk", "dv"), got, ref, base):
        assert o.dtype == dtype
        check_against_reference(f"attention {case} {name}", o, r, b)


@needs_kernels
def test_no_attention_across_documents():
    """Huge values planted in the middle document move nothing in its neighbours, forward or backward:
    their outputs and gradients are bit-for-bit those of the batch without them, and a loss on the
    neighbours alone sends exactly zero gradient into the middle document."""
    lengths = [70, 37, 25]
    cu = cu_of(lengths)
    s, e = 70, 107
    g = torch.Generator().manual_seed(11)
    q, k, v = torch.randn(132, 2, 64, generator=g), torch.randn(132, 1, 64, generator=g), torch.randn(132, 1, 64,
                                                                                                     generator=g)
    dout = torch.randn(132, 2, 64, generator=g)
    dout[s:e] = 0
    planted = [x.clone() for x in (q, k, v)]
    for x in planted:
        x[s:e] = 1e4
    base = run(kernel, q, k, v, cu, dout, torch.float32)
    hot = run(kernel, *planted, cu, dout, torch.float32)
    keep = torch.ones(132, dtype=torch.bool)
    keep[s:e] = False
    for name, a, b in zip(("out", "dq", "dk", "dv"), base, hot):
        assert torch.equal(a[keep], b[keep]), f"{name}: a neighbour document changed it"
        if name != "out":
            assert torch.equal(b[~keep], torch.zeros_like(b[~keep])), f"{name}: gradient leaked into the middle"
    assert torch.isfinite(hot[0]).all()


@needs_kernels
def test_a_recomputed_score_over_the_forward_max_gives_no_nan():
    """The backward recomputes P = exp2(s - lse). At |s| ~ 1e9 (fp32 ulp 128) the recomputed s can exceed the
    forward's by a few ulps (another dot order: other CPUs' BLAS, the GPU's tiles): exp2 of +128 or more is
    inf, and inf * 0 = NaN where dO is 0. P <= 1 exactly, so the kernels clamp the exponent at 0. Here the
    lse of the middle document is lowered by 300 (base 2) to stand for that rounding, on every CPU alike."""
    cu = cu_of([20, 17, 9])
    g = torch.Generator().manual_seed(3)
    q, k, v, dout = (torch.randn(46, h, 32, generator=g) for h in (2, 1, 1, 2))
    dout[20:37] = 0
    bwd = on_kernel_device(torch.ops.s1fast_kernels.packed_attention_backward)
    out, lse = on_kernel_device(torch.ops.s1fast_kernels.packed_attention)(q, k, v, cu, 20)
    low = lse.clone()
    low[:, 20:37] -= 300.0
    dq, dk, dv = bwd(q, k, v, out, low, dout, cu)
    for name, x in (("dq", dq), ("dk", dk), ("dv", dv)):
        assert torch.isfinite(x).all(), f"{name}: NaN/inf from an overflowing recomputed P"
        assert torch.equal(x[20:37], torch.zeros_like(x[20:37])), f"{name}: the middle document has dO = 0"
    ref = bwd(q, k, v, out, lse, dout, cu)
    for name, a, b in zip(("dq", "dk", "dv"), (dq, dk, dv), ref):  # the neighbours are untouched
        keep = torch.ones(46, dtype=torch.bool)
        keep[20:37] = False
        assert torch.equal(a[keep], b[keep]), name


@needs_kernels
def test_tokens_past_the_last_document_get_zero_output_and_gradient():
    g = torch.Generator().manual_seed(8)
    q, k, v, dout = (torch.randn(23, h, 16, generator=g) for h in (2, 1, 1, 2))
    got = run(kernel, q, k, v, cu_of([5, 15]), dout, torch.float32)  # 3 trailing tokens in no document
    ref = run(packed_attention_reference, q[:20], k[:20], v[:20], cu_of([5, 15]), dout[:20], torch.float64)
    for name, o, r in zip(("out", "dq", "dk", "dv"), got, ref):
        assert torch.equal(o[20:], torch.zeros_like(o[20:])), name
        check_against_reference(f"attention {name} with trailing tokens", o[:20], r)


def test_block_table_is_built_on_device_and_covers_each_block_once():
    lengths = [1, 0, 17, 129, 64, 300, 0]
    cu = cu_of(lengths)
    T = sum(lengths)
    doc, idx = block_table(cu, T, 64)
    assert doc.numel() == -(-T // 64) + len(lengths)  # from shapes alone: no host sync to size the grid
    want = [(d, b) for d, n in enumerate(lengths) for b in range(-(-n // 64))]
    live = doc >= 0
    assert list(zip(doc[live].tolist(), idx[live].tolist())) == want
    assert not live[len(want):].any() and live[:len(want)].all()


@needs_kernels
def test_op_schema_fake_and_autograd_registration():
    g = torch.Generator().manual_seed(3)
    q = torch.randn(21, 4, 16, generator=g).requires_grad_()
    k = torch.randn(21, 2, 16, generator=g).requires_grad_()
    v = torch.randn(21, 2, 16, generator=g).requires_grad_()
    torch.library.opcheck(torch.ops.s1fast_kernels.packed_attention, (q, k, v, cu_of([5, 16]), 16))


@needs_kernels
def test_torch_compile_fullgraph_traces_the_op_forward_and_backward():
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(21, h, 16, generator=g).requires_grad_() for h in (4, 2, 2))
    cu = cu_of([5, 16])
    f = torch.compile(lambda q, k, v, cu: (packed_attention(q, k, v, cu, 16) ** 2).sum(), backend="aot_eager",
                      fullgraph=True)
    got = torch.autograd.grad(f(q, k, v, cu), (q, k, v))
    q64, k64, v64 = (x.detach().double().requires_grad_() for x in (q, k, v))
    ref = torch.autograd.grad((packed_attention_reference(q64, k64, v64, cu) ** 2).sum(), (q64, k64, v64))
    for name, a, r in zip(("dq", "dk", "dv"), got, ref):
        check_against_reference(f"compiled attention {name}", a, r)


def test_cpu_path_without_the_interpreter_matches(monkeypatch):
    """S1FAST_DISABLE_TRITON: the op's plain-PyTorch implementation (fp32, per document) forward and backward."""
    monkeypatch.setenv("S1FAST_DISABLE_TRITON", "1")
    g = torch.Generator().manual_seed(4)
    q, k, v, dout = (torch.randn(30, h, 16, generator=g) for h in (6, 2, 2, 6))
    cu = cu_of([1, 12, 17])
    got = run(lambda *a: packed_attention(*a, 17), q, k, v, cu, dout, torch.float32)
    ref = run(packed_attention_reference, q, k, v, cu, dout, torch.float64)
    base = run(packed_attention_reference, q, k, v, cu, dout, torch.float32)
    for name, o, r, b in zip(("out", "dq", "dk", "dv"), got, ref, base):
        check_against_reference(f"attention cpu path {name}", o, r, b)


def test_bad_shapes_say_what_is_wrong():
    q, k = torch.randn(8, 3, 16), torch.randn(8, 2, 16)
    with pytest.raises(ValueError, match="not a multiple"):
        packed_attention(q, k, k, cu_of([8]), 8)
    with pytest.raises(ValueError, match=r"q must be \[T, Hq, D\]"):
        packed_attention(q[None], k, k, cu_of([8]), 8)


@pytest.mark.parametrize("path", ["kernel", "pytorch"])
@pytest.mark.parametrize("cu,entry", [([0, 4, 13], r"cu_seqlens\[2\] = 13"), ([0, 6, 4, 11], r"cu_seqlens\[2\] = 4"),
                                      ([-1, 11], r"cu_seqlens\[0\] = -1")])
def test_cu_seqlens_outside_the_tokens_fail_clearly(path, cu, entry, monkeypatch):
    """cu_seqlens past T, decreasing or negative used to make the kernels read and write outside q/k/v (heap
    corruption under the interpreter) and the PyTorch path fail with a shape error; now both name the entry."""
    if path == "pytorch":
        monkeypatch.setenv("S1FAST_DISABLE_TRITON", "1")
    q, k = torch.randn(11, 2, 16), torch.randn(11, 1, 16)
    with pytest.raises(ValueError, match=rf"packed_attention: {entry} is outside \[0, T=11\]"):
        packed_attention(q, k, k, torch.tensor(cu, dtype=torch.int32), 11)


def test_attention_compiles_for_sm90_with_wgmma_and_no_spills():
    from s1fast_kernels.compile_check import kernel_reports
    reps = kernel_reports()["attention_op"]
    assert len(reps) == 13  # fwd, dq, dk/dv in bf16 at d 128, 64, 80 and in fp32 at d 64; the delta pre-pass
    for r in reps:
        assert r.registers > 0 and r.spill_stores == 0 and r.spill_loads == 0, r.row()
        assert r.shared_bytes <= 227 * 1024, f"{r.name}: {r.shared_bytes} bytes of shared memory > the H100's 227 KiB"
        if "bf16" in r.name and "delta" not in r.name:
            assert r.uses_wgmma, f"{r.name}: no wgmma in the PTX"


TRAIN_DRIVER = r"""
import json, os, sys
import s1fast_kernels.attention_op as attention_op
from s1fast import train
attention_op.use_triton = lambda *t: True  # only the attention kernels through the interpreter (the rest: PyTorch)
launches = {"fwd": 0, "bwd": 0}
for name in launches:
    def counted(*a, _f=getattr(attention_op, f"_launch_{name}"), _n=name):
        launches[_n] += 1
        return _f(*a)
    setattr(attention_op, f"_launch_{name}", counted)
for attention, out in json.loads(sys.argv[1]):
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        os.environ.pop(k, None)  # a fresh group of one for each run
    rc = train.main(["--preset", "tiny", "--device", "cpu", "--dtype", "fp32", "--max-tokens", "96", "--global-batch", "2", "--max-steps", "3",
                     "--progress", "false", "--export", "false", "--plot", "false", "--save-every", "0",
                     "--attention", attention, "--output-dir", out])
    assert rc == 0, (attention, rc)
    print(f"{attention}: triton attention launches {launches}")
"""


@pytest.mark.slow
@needs_kernels
def test_tiny_preset_trains_with_triton_attention_like_sdpa(tmp_path):
    """The trainer with --attention triton (the attention kernels under the interpreter; every other kernel on
    its PyTorch path, as in the sdpa run) gives the losses and gradient norms of --attention sdpa, step by step."""
    import json
    import os
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=root, OMP_NUM_THREADS="1", TRITON_INTERPRET="1", S1FAST_DISABLE_TRITON="1",
               TOKENIZERS_PARALLELISM="false")
    env.pop("S1FAST_ATTENTION", None)
    runs = [("sdpa", str(tmp_path / "sdpa")), ("triton", str(tmp_path / "triton"))]
    p = subprocess.run([sys.executable, "-c", TRAIN_DRIVER, json.dumps(runs)], cwd=root, env=env,
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-4000:]
    assert "sdpa: triton attention launches {'fwd': 0, 'bwd': 0}" in p.stdout, p.stdout[-2000:]
    counts = p.stdout.split("triton: triton attention launches ")[1].splitlines()[0]
    assert all(n >= 6 for n in json.loads(counts.replace("'", '"')).values()), counts  # >= 2 layers x 3 steps
    rows = {name: [json.loads(x) for x in open(os.path.join(out, "metrics.jsonl"))] for name, out in runs}
    assert len(rows["triton"]) == len(rows["sdpa"]) == 3
    for a, b in zip(rows["sdpa"], rows["triton"]):
        assert abs(a["loss"] - b["loss"]) <= 1e-5 * a["loss"], (a["step"], a["loss"], b["loss"])
        assert abs(a["grad_norm"] - b["grad_norm"]) <= 1e-4 * a["grad_norm"], (a["step"], a["grad_norm"],
                                                                                b["grad_norm"])


@needs_kernels
def test_bench_dry_run_projects_and_runs_the_backends(tmp_path, capsys):
    """bench/bench_attention.py without a GPU: the PROJECTED floors at s1's shapes, and a smoke run whose
    outputs agree across backends (its times are no figure)."""
    import json
    from bench_scripts import load
    ba = load("bench_attention")
    out = tmp_path / "att.json"
    assert ba.main(["--dry-run", "--lengths", "3,20", "--backends", "triton,sdpa_doc", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "PROJECTED" in text and "NOT a performance figure" in text
    res = json.loads(out.read_text())
    fwd = res["projected"]["3+20"][0]
    assert fwd["phase"] == "fwd" and fwd["flops"] == 4 * (3 * 4 / 2 + 20 * 21 / 2) * 128 * 40  # s1: Hq 40, d 128
    smoke = {r["backend"]: r for r in res["cpu_smoke"]}
    assert smoke["sdpa_doc"]["max_abs_diff_vs_first"] < 1e-5
    assert ba.main(["--dry-run", "--backends", "bogus"]) == 2
