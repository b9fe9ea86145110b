"""Extra memory of the per-token log-prob kernel (``s1fast_kernels.logprob_op``) against the full-logits path,
at s1's shapes, counted on meta tensors exactly as ``bench.kernel_memory`` counts the fused loss: the GPU code
path runs with its kernel launches skipped, so every buffer it allocates on an H100 is allocated at its real
size and nothing is computed.

    python -m bench.logprob_memory       # N=32768, H=5120, V=152064, bf16, forward + backward with entropy
"""
from __future__ import annotations

if __name__ == "__main__" and not __package__:  # run as python bench/X.py: import as python -m bench.X
    import _path  # noqa: F401  (bench/_path.py)

import argparse

from bench.env import environment, markdown_header
from bench.kernel_memory import S1_SHAPES
from s1fast_kernels.memory_count import logprob_plan_extra as plan_extra


def table(n: int = S1_SHAPES["n"], hdim: int = S1_SHAPES["hdim"], v: int = S1_SHAPES["v"]) -> str:
    full, fused = plan_extra(False, n, hdim, v), plan_extra(True, n, hdim, v)
    return "\n".join([
        f"| log-probs + entropy at N={n}, H={hdim}, V={v}, bf16 (fwd+bwd) | extra beyond inputs and gradients "
        "| % of the full-logits path |", "|---|---|---|",
        f"| full logits (bf16 logits, fp32 log_softmax, gather) | {full / 1e9:.2f} GB | 100% |",
        f"| `s1fast_kernels.logprob_op.token_logprobs` | {fused / 1e9:.3f} GB | {100 * fused / full:.2f}% |"])


def main(argv=None) -> int:
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args(argv)
    print(markdown_header(environment()))
    print(table())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
