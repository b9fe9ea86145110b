"""Stopping a run cleanly on SIGINT / SIGTERM, every rank together (the trainer and RL).

A signal may reach one rank only (a scheduler signalling one process, a Ctrl-C in one terminal). Each rank
records it instead of dying (``StopOnSignal``), and the loop asks at a point every rank reaches in step
(``agreed``, one collective): every rank then gets the same answer, so all finish the same step, take part
in the same save and exit with the same 128 + signal.
"""
from __future__ import annotations

import signal

import torch
import torch.distributed as dist

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopOnSignal:
    """Record SIGINT / SIGTERM instead of dying (a second one too: a save under way is not interrupted)."""

    def __enter__(self):
        self.signum = None
        self.old = {s: signal.signal(s, self._on) for s in SIGNALS}
        return self

    def _on(self, signum, _frame):
        self.signum = signum

    def __exit__(self, *exc):
        for s, h in self.old.items():
            signal.signal(s, h)

    def agreed(self, device: torch.device) -> int | None:
        """The signal any rank has received (the highest number when ranks got different ones), or None: the
        same on every rank. Collective: every rank calls it at the same point of the loop."""
        got = self.signum or 0
        if dist.is_initialized() and dist.get_world_size() > 1:
            t = torch.tensor([got], dtype=torch.int64, device=device)
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
            got = int(t.item())
        return got or None
