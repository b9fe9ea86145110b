"""Stopping a run cleanly on SIGINT / SIGTERM, every rank together (the trainer and RL).

A signal may reach one rank only (a scheduler signalling one process, a Ctrl-C in one terminal). Each rank
records it instead of dying (``StopOnSignal``), and the loop asks at a point every rank reaches in step
(``agreed``, one collective): every rank then gets the same answer, so all finish the same step, take part
in the same save and exit with the same 128 + signal. A signal while a save is under way (a second one
included) does not interrupt it: the save completes, and the run stops after it. Work that one rank does alone
and may abandon (the export's write) runs under ``InterruptOnSignal`` instead: the signal raises ``Interrupted``.
"""
from __future__ import annotations

import os
import signal

import torch
import torch.distributed as dist

SIGNALS = (signal.SIGINT, signal.SIGTERM)
# a Ctrl-C outside the steps (set-up, the export), where it raises KeyboardInterrupt: the CLIs' error line
INTERRUPTED = ("interrupted (the checkpoints and a final/ already there are intact): run again with the same "
               "--output-dir to resume from its last complete checkpoint")


class StopOnSignal:
    """Record SIGINT / SIGTERM instead of dying (a second one too: a save under way is not interrupted)."""

    def __enter__(self):
        self.signum = None
        self.old = {s: signal.signal(s, self._on) for s in SIGNALS}
        return self

    def _on(self, signum, _frame):
        again, self.signum = self.signum is not None, signum
        who = f"rank {dist.get_rank()}: " if dist.is_initialized() and dist.get_world_size() > 1 else ""
        text = (f"signal {signum} again: the work under way and its save finish first (SIGKILL stops at once, "
                f"keeping the last complete checkpoint)" if again else
                f"signal {signum}: stopping after the step under way, once it is saved")
        os.write(2, f"[s1fast] {who}{text}\n".encode())  # not print: this may interrupt a print

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


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM (``signum``) during work abandoned on a signal: the CLIs' ``INTERRUPTED`` line, exit
    128 + ``signum``. A KeyboardInterrupt, so the clean-ups that catch one (a partial folder removed) run."""

    def __init__(self, signum: int = signal.SIGINT):
        super().__init__(signum)
        self.signum = int(signum)


class InterruptOnSignal:
    """SIGINT and SIGTERM raise ``Interrupted`` (SIGTERM would otherwise end the process with no clean-up); once:
    a second signal does not interrupt the clean-up the first one started."""

    def __enter__(self):
        self.signum = None
        self.old = {s: signal.signal(s, self._on) for s in SIGNALS}
        return self

    def _on(self, signum, _frame):
        if self.signum is None:
            self.signum = signum
            raise Interrupted(signum)
        os.write(2, f"[s1fast] signal {signum} again: the partial files are being removed first\n".encode())

    def __exit__(self, *exc):
        for s, h in self.old.items():
            signal.signal(s, h)


def stopped(say, signum: int, checkpoint: str, unit: str, n: int, then: str = "resume") -> dict:
    """The run's result and its message (``say``) when a signal stopped it after saving ``checkpoint``."""
    say(f"[s1fast] signal {signum}: saved {checkpoint} at {unit} {n}; run again with the same --output-dir to {then}")
    return {"stopped": n, "checkpoint": checkpoint, "signal": signum}
