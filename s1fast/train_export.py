"""The trainer's last act: ``final/`` in Hugging Face format, gathered from every rank and written by rank 0.

Rank 0 writes alone while the others wait for its outcome, then every rank acts on it, so all leave at once
and alike: a full disk -> rank 0's error line, exit 2 (``CheckpointError``); SIGINT / SIGTERM on rank 0 ->
exit 128 + the signal (``Interrupted``); a bug -> rank 0's traceback, exit 1 (``RankFollows``). Before, the
other ranks sat in the broadcast of an error that never came until torchrun killed them. The partial folder
is removed (``checkpoint.write_hf_folder``) and the checkpoints are not touched: a rerun exports.
"""
from __future__ import annotations

import os
import signal
import traceback

import torch
import torch.distributed as dist

from . import checkpoint, distributed
from .stopping import InterruptOnSignal, Interrupted, StopOnSignal


def export_final(output_dir: str, model, mcfg, tok_dir: str, device: torch.device, rank: int) -> str:
    """``final/`` written beside it and swapped in whole (collective); how each failure ends: the module's
    docstring. The collectives run with signals recorded (a signal there, on any rank, stops every rank before
    the write)."""
    final = os.path.join(output_dir, "final")
    outcome = [None]  # (exit status, error line) from rank 0
    with StopOnSignal() as stop:
        sd = checkpoint.full_state_dict(model)
        if (signum := stop.agreed(device)) is not None:
            raise Interrupted(signum)
        if rank == 0:
            try:
                with InterruptOnSignal():
                    checkpoint.write_hf_folder(sd, mcfg, final, tok_dir)
            except OSError as e:
                outcome = [(2, f"exporting {final} failed ({type(e).__name__}: {e}); the partial folder was removed; "
                               f"the last checkpoint is intact: free the space and run again with the same "
                               f"--output-dir to export it")]
            except KeyboardInterrupt as e:
                outcome = [(128 + getattr(e, "signum", signal.SIGINT), None)]
            except Exception:  # noqa: BLE001 -- a bug: its traceback here, and every rank leaves with 1
                traceback.print_exc()  # (raised on, rank 0 would leave last, after the others: torchrun
                outcome = [(1, None)]  # would end it with SIGTERM and name rank 1 the root cause)
        if distributed.world() > 1:
            dist.broadcast_object_list(outcome, src=0)
    # (a signal another rank recorded while rank 0 wrote came after the work: final/ is complete)
    if outcome[0] is None:
        return final
    code, line = outcome[0]
    if code == 2:
        raise checkpoint.CheckpointError(line)
    if code > 128:
        raise Interrupted(code - 128)
    raise RankFollows(code)


class RankFollows(Exception):
    """Rank 0 failed and reported it: every rank leaves with the same status (``code``), silently."""

    def __init__(self, code: int):
        super().__init__(code)
        self.code = code
