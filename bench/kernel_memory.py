"""Peak memory of a function's forward + backward, counted on meta tensors (same ops and sizes as a
real run, no compute), so the fused linear cross-entropy's memory can be shown at V=151936 on a CPU.

    python -m bench.kernel_memory        # fused vs unfused at 4K and 32K tokens, V=151936, H=16;
                                         # and the GPU path's buffers at s1's shapes, both modes

``gpu_plan_extra`` runs the fused loss's GPU code path on meta tensors: ``use_triton`` answers yes and
the three kernel launchers do nothing, so every buffer that path allocates on an H100 is allocated here
at its real size (bf16, N=32768, H=5120, V=152064) and nothing is computed. What it measures is the
allocation plan of the code a GPU runs, not a formula.

``PeakLiveBytes`` is a TorchDispatchMode that adds up the storages created inside it while they are
alive (a storage dies when the last tensor using it does) and keeps the maximum. Inputs are excluded.
On the 2-core CPU box a real run agreed (4096 tokens fused: 108 MiB of RSS growth beyond a warm-up call,
meta count 121 MiB; 1024 tokens unfused: 2964 MiB RSS, meta count 11870 / 4 = 2968 MiB).
"""
from __future__ import annotations

import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class PeakLiveBytes(TorchDispatchMode):
    """``peak``: the most bytes alive at once among storages created inside the mode (inputs excluded).
    ``peak_extra``: the same, not counting storages whose first tensor ``is_gradient(tensor)`` says is an
    input's gradient (the memory every implementation of the function must hold)."""

    def __init__(self, *inputs: torch.Tensor, is_gradient=None):
        super().__init__()
        self.external = {x.untyped_storage()._cdata for x in inputs}
        self.is_gradient = is_gradient or (lambda t: False)
        self.count, self.size, self.refs, self.grad_keys = {}, {}, {}, set()
        self.cur = self.peak = self.cur_extra = self.peak_extra = 0

    def _drop(self, key, tid):
        self.refs.pop(tid, None)
        self.count[key] -= 1
        if not self.count[key]:
            del self.count[key]
            size = self.size.pop(key)
            self.cur -= size
            if key in self.grad_keys:
                self.grad_keys.discard(key)
            else:
                self.cur_extra -= size

    def _track(self, x: torch.Tensor):
        key = x.untyped_storage()._cdata
        if id(x) in self.refs or key in self.external:
            return
        if key not in self.count:
            self.count[key], self.size[key] = 0, x.untyped_storage().nbytes()
            self.cur += self.size[key]
            self.peak = max(self.peak, self.cur)
            if self.is_gradient(x):
                self.grad_keys.add(key)
            else:
                self.cur_extra += self.size[key]
                self.peak_extra = max(self.peak_extra, self.cur_extra)
        self.count[key] += 1
        self.refs[id(x)] = weakref.ref(x, lambda _, key=key, tid=id(x): self._drop(key, tid))

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for x in tree_flatten(out)[0]:
            if isinstance(x, torch.Tensor):
                self._track(x)
        return out


def peak_bytes(fn, n: int, v: int = 151936, hdim: int = 16) -> int:
    """Peak extra bytes of ``fn(hidden [n, hdim], weight [v, hdim], target [n]).backward()`` (fp32)."""
    h = torch.empty(n, hdim, device="meta", requires_grad=True)
    w = torch.empty(v, hdim, device="meta", requires_grad=True)
    t = torch.empty(n, dtype=torch.long, device="meta")
    with PeakLiveBytes(h, w, t) as mode:
        fn(h, w, t).backward()
    return mode.peak


def table() -> str:
    from s1fast_kernels import fused_linear_cross_entropy, fused_linear_cross_entropy_reference
    rows = ["| tokens (V=151936, H=16, fp32, fwd+bwd) | fused (PyTorch path) | unfused |", "|---|---|---|"]
    for n in (4096, 32768):
        f, u = peak_bytes(fused_linear_cross_entropy, n), peak_bytes(fused_linear_cross_entropy_reference, n)
        rows.append(f"| {n} | {f / 2**20:.0f} MiB | {u / 2**20:.0f} MiB |")
    return "\n".join(rows)


S1_SHAPES = dict(n=32768, hdim=5120, v=152064)  # s1's block, Qwen2.5-32B's hidden size and vocabulary


def transformers_unfused(h, w, t):
    """The reference stack's loss (transformers' ForCausalLMLoss): bf16 logits, upcast to fp32, cross-entropy."""
    return torch.nn.functional.cross_entropy((h @ w.t()).float(), t, ignore_index=-100, reduction="sum")


def gpu_plan_extra(low_memory: bool | None, n: int, hdim: int, v: int, dtype=torch.bfloat16) -> int:
    """Peak bytes beyond the inputs and their gradients of forward + backward at [n, hdim] x [v, hdim] in
    ``dtype``: the fused loss's GPU path (``low_memory`` False or True, its default chunk), or with
    ``low_memory=None`` the reference stack's unfused loss."""
    import s1fast_kernels.linear_cross_entropy_op as ce
    from s1fast_kernels import fused_linear_cross_entropy

    h = torch.empty(n, hdim, device="meta", dtype=dtype, requires_grad=True)
    w = torch.empty(v, hdim, device="meta", dtype=dtype, requires_grad=True)
    t = torch.empty(n, dtype=torch.long, device="meta")

    def is_gradient(x):
        return x.dtype == dtype and tuple(x.shape) in (tuple(h.shape), tuple(w.shape))
    launchers = ("_mm", "_logits_rows_triton", "_logits_grad_triton")  # every kernel launch of the fused loss
    saved = {k: getattr(ce, k) for k in ("use_triton", *launchers)}
    try:
        if low_memory is not None:
            ce.use_triton = lambda *_: True
            for k in launchers:
                setattr(ce, k, lambda *a, **k: None)
        with PeakLiveBytes(h, w, t, is_gradient=is_gradient) as mode:
            if low_memory is None:
                loss = transformers_unfused(h, w, t)
            else:
                loss = fused_linear_cross_entropy(h, w, t, reduction="sum", low_memory=low_memory,
                                                  chunk_size=ce._default_chunk(n, v, True, low_memory))
            loss.backward()
    finally:
        for k, f in saved.items():
            setattr(ce, k, f)
    return mode.peak_extra


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


if __name__ == "__main__":
    print(table())
    print()
    print(gpu_plan_table())
