"""Packed collate: C++ op == pure-Python reference, layout properties, exact loss weights, opcheck, CLI."""
import json
import os
import shutil
import subprocess
import sysconfig

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import s1fast.collate as collate_module
from s1fast import _native, packing
from s1fast.packing import collate, collate_reference, make_plan

FIELDS = ("input_ids", "position_ids", "targets", "loss_weight", "cu_seqlens")


@st.composite
def micro_batches(draw):
    k = draw(st.integers(0, 5))
    ex, w = [], []
    for _ in range(k):
        L = draw(st.integers(1, 40))
        ids = np.array(draw(st.lists(st.integers(0, 151_000), min_size=L, max_size=L)), dtype=np.int32)
        prompt = draw(st.integers(0, L))
        labels = ids.copy()
        labels[:prompt] = -100
        ex.append((ids if draw(st.booleans()) else torch.from_numpy(ids), labels))
        w.append(draw(st.floats(1e-6, 1.0)))
    return ex, w


def _assert_same(a, b):
    for f in FIELDS:
        x, y = getattr(a, f), getattr(b, f)
        assert x.dtype == y.dtype and torch.equal(x, y), f
    assert a.max_seqlen == b.max_seqlen and a.num_docs == b.num_docs


@settings(max_examples=60, deadline=None)
@given(micro_batches())
def test_native_collate_equals_reference(mb):
    ex, w = mb
    out = collate(ex, w)
    _assert_same(out, collate_reference(ex, w))
    # layout properties, stated independently of either implementation
    lens = [len(x) for x, _ in ex]
    assert out.cu_seqlens.dtype == torch.int32 and out.cu_seqlens.tolist() == np.cumsum([0] + lens).tolist()
    assert out.max_seqlen == max(lens, default=0) and out.num_docs == len(ex)
    t = 0
    for (x, y), wt in zip(ex, w):
        y = np.asarray(y, np.int64)
        L = len(y)
        assert out.position_ids[t:t + L].tolist() == list(range(L))
        assert out.input_ids[t:t + L].tolist() == np.asarray(x).tolist()
        assert out.targets[t:t + L].tolist() == y[1:].tolist() + [-100]
        sup = int((y[1:] != -100).sum())
        assert float(out.loss_weight[t:t + L].sum()) == pytest.approx(sup * np.float32(wt), rel=1e-5)
        t += L
    assert ((out.loss_weight > 0) == (out.targets != -100)).all()


def test_empty_micro_batch():
    out = collate([], [])
    assert out.num_tokens == 0 and out.num_docs == 0 and out.max_seqlen == 0 and out.cu_seqlens.tolist() == [0]
    pad = collate([], [], pad_to_nonempty=True, pad_id=7)
    assert pad.input_ids.tolist() == [7] and pad.targets.tolist() == [-100] and pad.loss_weight.tolist() == [0.0]
    assert pad.cu_seqlens.tolist() == [0, 1] and pad.max_seqlen == 1
    _assert_same(pad, collate_reference([], [], pad_to_nonempty=True, pad_id=7))


def test_collate_errors():
    with pytest.raises(ValueError, match="example 1 has 3 input_ids and 2 labels"):
        collate([([1, 2], [1, 2]), ([1, 2, 3], [1, 2])], [1.0, 1.0])
    with pytest.raises(ValueError, match="2 examples but 1 weights"):
        collate([([1], [1]), ([2], [2])], [1.0])
    ops = _native.ops()
    with pytest.raises(RuntimeError, match="end at the token count 3"):
        ops.pack_collate(torch.arange(3), torch.arange(3), torch.tensor([0, 2], dtype=torch.int32),
                         torch.ones(1))


@pytest.mark.parametrize("weighting", packing.WEIGHTINGS)
def test_weights_give_the_exact_objective(weighting):
    """Summing w_t * loss_t over every rank's micro-batches (a gradient SUM across ranks and micro-steps) gives
    exactly the step objective: the mean of per-sequence token means ("sequence"), or the step's token mean."""
    rng = np.random.default_rng(0)
    n = 23
    data = []
    for _ in range(n):
        L = int(rng.integers(2, 30))
        ids = rng.integers(0, 1000, L).astype(np.int32)
        labels = ids.copy()
        labels[: int(rng.integers(0, L))] = -100
        data.append((ids, labels))
    lengths = np.array([len(x) for x, _ in data])
    sup = np.array([int((y[1:] != -100).sum()) for _, y in data])
    token_loss = {i: rng.random(len(data[i][0])) for i in range(n)}  # a stand-in per-token NLL by position
    plan = make_plan(lengths, sup, world_size=3, micro_tokens=40, global_batch=6, epochs=1, weighting=weighting,
                     group_window=2)
    for step in plan.steps:
        total = 0.0
        for rank in step.micro_batches:
            for mb in rank:
                b = collate([data[i] for i in mb], [step.example_weight[i] for i in mb])
                nll = np.concatenate([token_loss[i] for i in mb]) if mb else np.zeros(0)
                total += float((b.loss_weight.double().numpy() * nll).sum())
        ids = [i for r in step.micro_batches for mb in r for i in mb if sup[i]]
        # the objective from its definition; the target of position t is label t+1, so loss_t counts where
        # labels[t+1] != -100
        per_seq = {i: token_loss[i][:-1][data[i][1][1:] != -100] for i in ids}
        if weighting == "sequence":
            expect = np.mean([v.mean() for v in per_seq.values()]) if ids else 0.0
        else:
            expect = np.concatenate(list(per_seq.values())).mean() if ids else 0.0
        assert total == pytest.approx(expect, rel=1e-5)


def test_opcheck():
    ops = _native.ops()
    ex = [(np.arange(5), np.array([-100, -100, 3, 4, 5])), (np.arange(3), np.arange(3))]
    _, labels, cu, w, _ = collate_module._gather(ex, [0.5, 0.25], False, 0)
    ids = torch.from_numpy(np.concatenate([e[0] for e in ex]).astype(np.int32))
    torch.library.opcheck(ops.pack_collate, (ids, torch.from_numpy(labels), torch.from_numpy(cu),
                                             torch.from_numpy(w)))
    L = torch.tensor([5, 9, 3, 7, 2, 8])
    costs = torch.from_numpy(packing.DEFAULT_COST.cost(L.numpy()))
    torch.library.opcheck(ops.plan, (L, costs, costs, 2, 16, 4, 2, 0, 1, 1, 1),
                          test_utils=("test_schema", "test_faketensor"))


def test_device_fallback_copies_the_cpu_result():
    """A device with no native kernel (here "meta"; CUDA on a CPU-only build) gets the CPU op's result, copied."""
    if torch.version.cuda is None:
        assert not collate_module._has_cuda_kernel("pack_collate")
    ex, w = [(np.arange(4), np.arange(4))], [0.5]
    out = collate(ex, w, device="meta")
    assert out.input_ids.device.type == "meta" and out.cu_seqlens.device.type == "meta"
    assert out.max_seqlen == 4 and out.num_docs == 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (the CUDA collate kernel runs there)")
def test_cuda_collate_equals_cpu():
    rng = np.random.default_rng(1)
    ex, w = [], []
    for _ in range(7):
        L = int(rng.integers(1, 3000))
        ids = rng.integers(0, 150000, L).astype(np.int32)
        y = ids.copy()
        y[: int(rng.integers(0, L))] = -100
        ex.append((ids, y))
        w.append(float(rng.random()))
    assert collate_module._has_cuda_kernel("pack_collate"), "extension built without its CUDA kernel on a CUDA machine"
    gpu = collate(ex, w, device="cuda")
    assert gpu.input_ids.is_cuda and gpu.targets.is_cuda
    _assert_same(gpu.to("cpu"), collate(ex, w))


def test_cli(tmp_path, capsys):
    f = tmp_path / "lengths.txt"
    f.write_text("# length supervised\n5 3\n9\n3,2\n7\n2\n8\n")
    out = tmp_path / "plan.json"
    rc = packing.main(["--lengths", str(f), "--world-size", "2", "--micro-tokens", "16", "--global-batch", "2",
                       "--epochs", "3", "--mode", "balanced", "--plan-out", str(out)])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    for k in ("fill_efficiency", "straggler_factor", "steps", "micro_steps_per_rank", "plan_seconds"):
        assert k in summary
    assert summary["steps"] == 9
    plan = packing.Plan.from_json(out.read_text())
    assert plan.supervised.tolist() == [3, 8, 2, 6, 1, 7]
    rc = packing.main(["--lengths", str(f), "--world-size", "2", "--micro-tokens", "8", "--global-batch", "2"])
    assert rc == 2 and "example 1 has 9 tokens" in capsys.readouterr().err


def _cuda_include():
    for root in (os.environ.get("CUDA_HOME"), "/usr/local/cuda"):
        if root and os.path.exists(os.path.join(root, "include", "cuda_runtime.h")):
            return os.path.join(root, "include")
    return None


@pytest.mark.skipif(_cuda_include() is None or shutil.which("g++") is None,
                    reason="needs the CUDA headers (CUDA_HOME or /usr/local/cuda) and g++")
def test_cuda_wrapper_compiles(tmp_path):
    """The S1FAST_WITH_CUDA half of csrc/packing.cpp is built only against CUDA torch; check its syntax here
    against the CUDA headers. A CPU torch lacks one generated c10 header, stubbed in tmp_path."""
    from torch.utils import cpp_extension
    stub = tmp_path / "c10" / "cuda" / "impl"
    stub.mkdir(parents=True)
    (stub / "cuda_cmake_macros.h").write_text("#define C10_CUDA_BUILD_SHARED_LIBS\n")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cmd = (["g++", "-std=c++17", "-fsyntax-only", "-DS1FAST_WITH_CUDA", "-DTORCH_EXTENSION_NAME=_C",
            "-DTORCH_API_INCLUDE_EXTENSION_H", f"-I{_cuda_include()}", f"-I{tmp_path}",
            f"-I{sysconfig.get_paths()['include']}"]
           + [f"-I{p}" for p in cpp_extension.include_paths()] + [os.path.join(root, "csrc", "packing.cpp")])
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, f"packing.cpp with S1FAST_WITH_CUDA does not compile:\n{proc.stderr[-3000:]}"
