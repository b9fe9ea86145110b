"""Kernel benchmarks at s1's shapes (GPU only): forward, backward and full-pass time plus peak memory,
s1fast against plain PyTorch, torch.compile, torch.nn.functional.linear_cross_entropy (where present)
and Liger-Kernel (where installed).

    pytest bench/bench_kernels.py --benchmark-columns=median,min,max --benchmark-json=bench/kernels.json
    S1FAST_BENCH_TOKENS=8192 pytest bench/bench_kernels.py      # smaller token count
    S1FAST_BENCH_ROUNDS=5 pytest bench/bench_kernels.py         # fewer timed rounds (run_gpu.sh's choice)

Shapes (Qwen2.5-32B, 32768-token packs): fused linear CE N=32768, H=5120, V=152064; RoPE 40/8 heads,
head_dim 128; RMSNorm [N, 5120]; SwiGLU [N, 27648]; all bf16. Each benchmark records the peak CUDA
memory of one call above what its inputs hold (``extra_info["peak_extra_gib"]``) and the environment
(hardware, versions, commit). A baseline that runs out of memory is recorded as such, not skipped.
On a CPU the whole file is skipped: the projected costs are in bench/RESULTS.md.
"""
from __future__ import annotations

import os

import pytest
import torch

from s1fast.model import CONFIGS

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="kernel benchmarks need a CUDA GPU (H100); bench/RESULTS.md has the "
                                       "projected costs and `python -m bench.kernel_table` regenerates them")

N = int(os.environ.get("S1FAST_BENCH_TOKENS", 32768))
_QWEN32 = CONFIGS["Qwen2.5-32B-Instruct"]
HIDDEN, VOCAB, INTER = _QWEN32.hidden_size, _QWEN32.vocab_size, _QWEN32.intermediate_size
HQ, HK, HEAD_DIM = _QWEN32.num_heads, _QWEN32.num_kv_heads, _QWEN32.head_dim
MODES = ["forward", "backward", "full"]
ROUNDS = int(os.environ.get("S1FAST_BENCH_ROUNDS", 10))  # timed rounds per benchmark, after one warm-up


def _env(benchmark, command="pytest bench/bench_kernels.py"):
    from bench.env import environment
    benchmark.extra_info.update(environment(command))


def _bench(benchmark, impls: dict, impl: str, make_inputs, mode):
    """Benchmark ``impls[impl]``; an implementation missing here (e.g. Liger not installed) is skipped, named."""
    if impl not in impls:
        pytest.skip(f"{impl} is not available in this environment")
    _run(benchmark, make_inputs, impls[impl], mode)


def _with_baselines(ours, reference, liger=None, **more) -> dict:
    """s1fast, the PyTorch reference, torch.compile of it, any ``more``, and Liger-Kernel's version when the
    package is installed (``liger``: liger_kernel.transformers.functional -> the callable to time)."""
    impls = {"s1fast": ours, "pytorch": reference, "torch.compile": torch.compile(reference), **more}
    try:
        import liger_kernel.transformers.functional as liger_functional
    except ImportError:
        return impls
    if liger is not None:
        impls["liger"] = liger(liger_functional)
    return impls


def _run(benchmark, make_inputs, fn, mode):
    """Time ``fn`` in one mode. forward: no grad; backward: only the backward of a fresh forward
    (timed with CUDA events around .backward()); full: forward + backward."""
    import s1fast_kernels  # noqa: F401  (compile Triton lazily, outside the timing)
    _env(benchmark)
    inputs = make_inputs()
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()

    def scalar(out):  # a loss to call backward on: the sum of every output
        outs = out if isinstance(out, tuple) else (out,)
        return sum(o.float().sum() for o in outs)

    try:
        if mode == "forward":
            def step():
                with torch.no_grad():
                    fn(*inputs)
                torch.cuda.synchronize()
            benchmark.pedantic(step, rounds=ROUNDS, warmup_rounds=1)
        elif mode == "full":
            def step():
                scalar(fn(*inputs)).backward()
                for t in inputs:
                    if isinstance(t, torch.Tensor):
                        t.grad = None
                torch.cuda.synchronize()
            benchmark.pedantic(step, rounds=ROUNDS, warmup_rounds=1)
        else:
            def setup():
                for t in inputs:
                    if isinstance(t, torch.Tensor):
                        t.grad = None
                loss = scalar(fn(*inputs))
                torch.cuda.synchronize()
                return (loss,), {}

            def step(loss):
                loss.backward()
                torch.cuda.synchronize()
            benchmark.pedantic(step, setup=setup, rounds=ROUNDS, warmup_rounds=1)
    except torch.OutOfMemoryError as e:
        benchmark.extra_info["result"] = f"out of memory: {str(e)[:200]}"
        pytest.xfail(f"{fn} ran out of GPU memory at these shapes (recorded)")
    benchmark.extra_info["peak_extra_gib"] = (torch.cuda.max_memory_allocated() - base) / 2**30


def _leaf(*shape, scale=1.0, dtype=torch.bfloat16):
    return (torch.randn(*shape, device="cuda", dtype=dtype) * scale).requires_grad_()


# ------------------------------------------------------------------------- fused linear cross-entropy
def _flce_inputs():
    h = _leaf(N, HIDDEN)
    w = _leaf(VOCAB, HIDDEN, scale=0.02)
    t = torch.randint(0, VOCAB, (N,), device="cuda")
    t[: N // 10] = -100
    return h, w, t


def _with_gemm(gemm: str):
    """s1fast's fused loss with its chunk GEMMs through ``gemm`` (linear_cross_entropy_op.GEMM)."""
    import s1fast_kernels
    import s1fast_kernels.linear_cross_entropy_op as ce

    def run(h, w, t):
        old, ce.GEMM = ce.GEMM, gemm
        try:
            return s1fast_kernels.fused_linear_cross_entropy(h, w, t)
        finally:
            ce.GEMM = old
    return run


def _flce_impls():
    import s1fast_kernels
    from s1fast_kernels.linear_cross_entropy_op import fused_linear_cross_entropy_reference

    def plain(h, w, t):  # transformers' ForCausalLMLoss: bf16 logits, fp32 upcast, F.cross_entropy
        return torch.nn.functional.cross_entropy((h @ w.t()).float(), t, ignore_index=-100)

    impls = _with_baselines(
        s1fast_kernels.fused_linear_cross_entropy, plain,
        lambda lf: lambda h, w, t: lf.liger_fused_linear_cross_entropy(h, w, t, ignore_index=-100),
        **{"s1fast low_memory": lambda h, w, t: s1fast_kernels.fused_linear_cross_entropy(h, w, t, low_memory=True),
           "s1fast triton-gemm": _with_gemm("triton"),
           "s1fast reference (unfused)": fused_linear_cross_entropy_reference})
    if hasattr(torch.nn.functional, "linear_cross_entropy"):
        impls["F.linear_cross_entropy"] = lambda h, w, t: torch.nn.functional.linear_cross_entropy(
            h, w, t, ignore_index=-100)
    return impls


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("impl", ["s1fast", "s1fast low_memory", "s1fast triton-gemm", "pytorch", "torch.compile", "F.linear_cross_entropy",
                                  "liger"])
def test_fused_linear_cross_entropy(benchmark, impl, mode):
    _bench(benchmark, _flce_impls(), impl, _flce_inputs, mode)


# ---------------------------------------------------------------------------------------------- RoPE
def _rope_inputs():
    q, k = _leaf(N, HQ, HEAD_DIM), _leaf(N, HK, HEAD_DIM)
    inv = 1.0 / (1e6 ** (torch.arange(0, HEAD_DIM, 2, device="cuda").float() / HEAD_DIM))
    f = torch.outer(torch.arange(N, device="cuda").float(), inv)
    emb = torch.cat([f, f], -1)
    pos = torch.cat([torch.arange(n, device="cuda") for n in (N // 2, N // 4, N - N // 2 - N // 4)])
    return q, k, emb.cos().bfloat16(), emb.sin().bfloat16(), pos


def _rope_impls():
    import s1fast_kernels
    from s1fast_kernels.rope_op import rope_reference
    def liger(lf):  # liger wants [B, H, S, D] and gathered cos/sin [1, S, D]
        return lambda q, k, cos, sin, pos: lf.liger_rope(q.permute(1, 0, 2).unsqueeze(0),
                                                         k.permute(1, 0, 2).unsqueeze(0),
                                                         cos[pos].unsqueeze(0), sin[pos].unsqueeze(0))
    return _with_baselines(s1fast_kernels.rope, rope_reference, liger)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("impl", ["s1fast", "pytorch", "torch.compile", "liger"])
def test_rope(benchmark, impl, mode):
    _bench(benchmark, _rope_impls(), impl, _rope_inputs, mode)


# ---------------------------------------------------------------------------------- RMSNorm / SwiGLU
def _norm_impls():
    import s1fast_kernels
    from s1fast_kernels.rms_norm_op import rms_norm_reference
    return _with_baselines(s1fast_kernels.rms_norm, rms_norm_reference,
                           lambda lf: lambda x, w, eps: lf.liger_rms_norm(x, w, eps, in_place=False))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("impl", ["s1fast", "pytorch", "torch.compile", "liger"])
def test_rms_norm(benchmark, impl, mode):
    _bench(benchmark, _norm_impls(), impl, lambda: (_leaf(N, HIDDEN), _leaf(HIDDEN), 1e-6), mode)


def _swiglu_impls():
    import s1fast_kernels
    from s1fast_kernels.swiglu_op import swiglu_reference
    return _with_baselines(s1fast_kernels.swiglu, swiglu_reference, lambda lf: lf.liger_swiglu)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("impl", ["s1fast", "pytorch", "torch.compile", "liger"])
def test_swiglu(benchmark, impl, mode):
    _bench(benchmark, _swiglu_impls(), impl, lambda: (_leaf(N, INTER), _leaf(N, INTER)), mode)
