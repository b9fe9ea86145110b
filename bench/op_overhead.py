"""Eager overhead of the kernels' functional API, which the model calls and which goes through the registered
``torch.ops.s1fast_kernels`` ops (their autograd formulas), against plain PyTorch autograd over the same math
(the ``*_reference`` functions; for the fused loss, the full-logits definition), on the CPU's PyTorch path:
forward + backward per call, small shapes (where the per-call cost, not the math, dominates), median of
repeated, interleaved timings.

    OMP_NUM_THREADS=1 python bench/op_overhead.py [--repeat 200]

Prints a markdown table for bench/RESULTS.md. The interpreter is off (the PyTorch path is what a CPU runs).
"""
from __future__ import annotations

if __name__ == "__main__" and not __package__:  # run as python bench/X.py: import as python -m bench.X
    import _path  # noqa: F401  (bench/_path.py)

import argparse
import os
import statistics
import time

os.environ.setdefault("TRITON_INTERPRET", "0")

import torch

import s1fast_kernels as tk
from bench._args import positive_int
from bench.env import environment, markdown_header


def _time_pair(fns, make, repeat: int) -> list[float]:
    """Median seconds of fn(*make()) forward + backward for each of ``fns``, the calls interleaved (A, B, A,
    B, ...) so that a shared machine's changing load falls on both alike."""
    for _ in range(5):
        for fn in fns:
            fn(*make()).sum().backward()
    out = [[] for _ in fns]
    for _ in range(repeat):
        for fn, times in zip(fns, out):
            args = make()
            t = time.perf_counter()
            fn(*args).sum().backward()
            times.append(time.perf_counter() - t)
    return [statistics.median(t) for t in out]


def cases(T=256, H=512, I=1024, heads=8, kv=2, D=64, V=4096):
    def leaf(*shape):
        return torch.randn(*shape).requires_grad_()
    cos, sin = torch.randn(T, D), torch.randn(T, D)
    pos = torch.arange(T)
    tgt = torch.randint(0, V, (T,))
    return [
        (f"rms_norm [{T}, {H}]", tk.rms_norm_reference, tk.rms_norm, lambda: (leaf(T, H), leaf(H), 1e-6)),
        (f"swiglu [{T}, {I}]", tk.swiglu_reference, tk.swiglu, lambda: (leaf(T, I), leaf(T, I))),
        (f"rope q [{T}, {heads}, {D}], k [{T}, {kv}, {D}]",
         lambda q, k: sum(x.sum() for x in tk.rope_reference(q, k, cos, sin, pos)),
         lambda q, k: sum(x.sum() for x in tk.rope(q, k, cos, sin, pos)), lambda: (leaf(T, heads, D), leaf(T, kv, D))),
        (f"fused linear CE [{T}, {H}] x [{V}, {H}]", lambda h, w: tk.fused_linear_cross_entropy_reference(h, w, tgt),
         lambda h, w: tk.fused_linear_cross_entropy(h, w, tgt), lambda: (leaf(T, H), leaf(V, H))),
    ]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=positive_int, default=200, help="timed calls per case (median reported)")
    args = ap.parse_args(argv)
    print(markdown_header(environment()))
    rows = ["| op (fp32, CPU PyTorch path, fwd+bwd) | PyTorch autograd (reference) | functional API (registered op) "
            "| difference |",
            "|---|---|---|---|"]
    for name, reference, functional, make in cases():
        a, b = _time_pair((reference, functional), make, args.repeat)
        rows.append(f"| {name} | {a * 1e6:.0f} us | {b * 1e6:.0f} us | {(b - a) * 1e6:+.0f} us ({b / a - 1:+.0%}) |")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
