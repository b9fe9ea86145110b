"""The memory tables of bench/RESULTS.md's Kernels section, counted on meta tensors
(``s1fast_kernels.memory_count``), so the fused linear cross-entropy's memory shows at V=151936 on a CPU.

    python -m bench.kernel_memory        # fused vs unfused at 4K and 32K tokens, V=151936, H=16;
                                         # and the GPU path's buffers at s1's shapes, both modes

How a real run compares with the counts: ``RSS_CHECK`` below (printed into RESULTS.md by bench/kernel_table.py).
"""
from __future__ import annotations

if __name__ == "__main__" and not __package__:  # run as python bench/X.py: import as python -m bench.X
    import _path  # noqa: F401  (bench/_path.py)

import argparse

from bench.env import environment, markdown_header
from s1fast.model import CONFIGS
from s1fast_kernels.memory_count import gpu_plan_extra, peak_bytes

# A real run against the counts (fp32, V=151936, H=16; peak RSS above the RSS after a 16-token warm-up call).
RSS_CHECK = ("a real run on the 2-core CPU box at `0905100` agreed with the counts: 4096 tokens fused 65 MiB of "
             "peak RSS growth (counted 65 MiB), 32768 tokens fused 67 MiB (counted 67 MiB), 1024 tokens unfused "
             "2967 MiB (counted 11870 / 4 = 2968 MiB).")
_QWEN32 = CONFIGS["Qwen2.5-32B-Instruct"]
S1_SHAPES = dict(n=32768, hdim=_QWEN32.hidden_size, v=_QWEN32.vocab_size)  # s1's block, Qwen2.5-32B's sizes


def table() -> str:
    from s1fast_kernels import fused_linear_cross_entropy, fused_linear_cross_entropy_reference
    rows = ["| tokens (V=151936, H=16, fp32, fwd+bwd) | fused (PyTorch path) | unfused |", "|---|---|---|"]
    for n in (4096, 32768):
        f, u = peak_bytes(fused_linear_cross_entropy, n), peak_bytes(fused_linear_cross_entropy_reference, n)
        rows.append(f"| {n} | {f / 2**20:.0f} MiB | {u / 2**20:.0f} MiB |")
    return "\n".join(rows)


def gpu_plan_table(n: int = S1_SHAPES["n"], hdim: int = S1_SHAPES["hdim"], v: int = S1_SHAPES["v"]) -> str:
    unfused = gpu_plan_extra(None, n, hdim, v)
    rows = [f"| loss at N={n}, H={hdim}, V={v}, bf16 (fwd+bwd) | extra beyond inputs and gradients | "
            "% of the unfused path |", "|---|---|---|",
            f"| reference stack (transformers: bf16 logits, fp32 upcast, F.cross_entropy) | {unfused / 1e9:.2f} GB "
            "| 100% |"]
    for low, label in ((False, "s1fast default (chunk 2304, fp32 dW accumulator)"),
                       (True, "s1fast `low_memory=True` (chunk 512, dW by vocabulary blocks)")):
        x = gpu_plan_extra(low, n, hdim, v)
        rows.append(f"| {label} | {x / 1e9:.3f} GB | {100 * x / unfused:.2f}% |")
    return "\n".join(rows)


def main(argv=None) -> int:
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args(argv)
    print(markdown_header(environment()))
    print(table())
    print()
    print(gpu_plan_table())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
