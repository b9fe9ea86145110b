"""Peak memory of a function's forward + backward, counted on meta tensors (same ops and sizes as a real
run, no compute): the tool the memory tests and ``bench/kernel_memory.py`` use.

``PeakLiveBytes`` adds up the storages created inside it while they are alive and keeps the maximum; the
kernels' registered ops are run through their Python implementations, so their buffers count too.
``gpu_plan_extra`` runs the fused loss's GPU code path on meta tensors (``use_triton`` answers yes and the
kernel launchers do nothing), so every buffer that path allocates on an H100 is counted at its real size.
How the counts were checked against a real run: docs/kernels.md.
"""
from __future__ import annotations

import weakref

import torch
from torch._library.custom_ops import _maybe_get_opdef
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
        opdef = _maybe_get_opdef(func) if func.namespace == "s1fast_kernels" else None
        if opdef is not None:  # a registered kernel op: run its implementation inside the mode, so what it
            with self:         # allocates is counted (dispatched whole, meta tensors would take its fake)
                out = opdef._init_fn(*args, **(kwargs or {}))
        else:
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


def transformers_unfused(h, w, t):
    """The reference stack's loss (transformers' ForCausalLMLoss): bf16 logits, upcast to fp32, cross-entropy."""
    return torch.nn.functional.cross_entropy((h @ w.t()).float(), t, ignore_index=-100, reduction="sum")


def gpu_plan_extra(low_memory: bool | None, n: int, hdim: int, v: int, dtype=torch.bfloat16) -> int:
    """Peak bytes beyond the inputs and their gradients of forward + backward at [n, hdim] x [v, hdim] in
    ``dtype``: the fused loss's GPU path (``low_memory`` False or True, its default chunk), or with
    ``low_memory=None`` the reference stack's unfused loss."""
    from . import linear_cross_entropy_op as ce
    from .linear_cross_entropy_op import fused_linear_cross_entropy

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


def full_logits_logprobs(h, w, t):
    """The usual RL-trainer path: bf16 logits, fp32 upcast, log_softmax, gather; entropy from the softmax."""
    lsm = torch.log_softmax((h @ w.t()).float(), -1)
    return lsm.gather(1, t[:, None]).squeeze(1), -(lsm.exp() * lsm).sum(1)


def logprob_plan_extra(fused: bool, n: int, hdim: int, v: int, dtype=torch.bfloat16) -> int:
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
