"""Extra memory of the per-token log-prob kernel (``s1fast_kernels.logprob_op``) against the full-logits path,
at s1's shapes, counted on meta tensors exactly as ``bench.kernel_memory`` counts the fused loss: the GPU code
path runs with its kernel launches skipped, so every buffer it allocates on an H100 is allocated at its real
size and nothing is computed.

    python -m bench.logprob_memory       # N=32768, H=5120, V=152064, bf16, forward + backward with entropy
"""
from __future__ import annotations

import torch

from bench.kernel_memory import S1_SHAPES, PeakLiveBytes


def full_logits_logprobs(h, w, t):
    """The usual RL-trainer path: bf16 logits, fp32 upcast, log_softmax, gather; entropy from the softmax."""
    lsm = torch.log_softmax((h @ w.t()).float(), -1)
    return lsm.gather(1, t[:, None]).squeeze(1), -(lsm.exp() * lsm).sum(1)


def plan_extra(fused: bool, n: int, hdim: int, v: int, dtype=torch.bfloat16) -> int:
    """Peak bytes beyond the inputs and their gradients of logp and entropy, forward + backward with a
    per-token incoming gradient: the kernel's GPU path (``fused``) or the full-logits path."""
    import s1fast_kernels.logprob_op as lp

    h = torch.empty(n, hdim, device="meta", dtype=dtype, requires_grad=True)
    w = torch.empty(v, hdim, device="meta", dtype=dtype, requires_grad=True)
    t = torch.empty(n, dtype=torch.long, device="meta")
    a = torch.empty(n, device="meta")

    def is_gradient(x):
        return x.dtype == dtype and tuple(x.shape) in (tuple(h.shape), tuple(w.shape))
    launchers = ("_logprob_fwd_kernel", "_logprob_grad_kernel", "_mm")
    saved = {k: getattr(lp, k) for k in ("_triton_path", *launchers)}
    try:
        if fused:
            lp._triton_path = lambda *_: True
            lp._mm = lambda *a, **k: None
            for k in launchers[:2]:
                setattr(lp, k, _NoLaunch())
        with PeakLiveBytes(h, w, t, a, is_gradient=is_gradient) as mode:
            if fused:
                logp, ent = lp.token_logprobs(h, w, t, entropy=True)
            else:
                logp, ent = full_logits_logprobs(h, w, t)
            (logp * a + ent * a).sum().backward()
    finally:
        for k, f in saved.items():
            setattr(lp, k, f)
    return mode.peak_extra


class _NoLaunch:
    def __getitem__(self, grid):
        return lambda *a, **k: None


def table(n: int = S1_SHAPES["n"], hdim: int = S1_SHAPES["hdim"], v: int = S1_SHAPES["v"]) -> str:
    full, fused = plan_extra(False, n, hdim, v), plan_extra(True, n, hdim, v)
    return "\n".join([
        f"| log-probs + entropy at N={n}, H={hdim}, V={v}, bf16 (fwd+bwd) | extra beyond inputs and gradients "
        "| % of the full-logits path |", "|---|---|---|",
        f"| full logits (bf16 logits, fp32 log_softmax, gather) | {full / 1e9:.2f} GB | 100% |",
        f"| `s1fast_kernels.logprob_op.token_logprobs` | {fused / 1e9:.3f} GB | {100 * fused / full:.2f}% |"])


if __name__ == "__main__":
    print(table())
