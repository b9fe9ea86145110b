"""Sharded, atomic, resumable checkpoints, and the final Hugging Face export.

A checkpoint ``checkpoints/step_00000040/`` holds the sharded model and optimizer
(``torch.distributed.checkpoint``), ``trainer.pt`` (step, scheduler, plan position, config) and one
``rng_rank{r}.pt`` per rank. It is written into ``step_00000040.tmp/`` and renamed only once every
rank has finished, and ``checkpoints/latest`` is then replaced atomically: a crash while saving leaves
a ``.tmp`` folder that is never loaded, and the previous checkpoint stays the latest. Older complete
checkpoints beyond ``keep`` are removed only after the new one is in place.
"""
from __future__ import annotations

import os
import random
import re
import shutil

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict, get_state_dict,
                                                     set_state_dict)

from .distributed import barrier as _barrier

_STEP_DIR = re.compile(r"^step_(\d{8})$")


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def _write_atomic(path: str, text: str) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def is_complete(path: str) -> bool:
    return os.path.isdir(path) and not path.endswith(".tmp") and os.path.exists(os.path.join(path, ".metadata")) \
        and os.path.exists(os.path.join(path, "trainer.pt"))


def latest(root: str) -> str | None:
    """The newest complete checkpoint under ``root`` (the ``latest`` pointer, else a scan)."""
    ptr = os.path.join(root, "latest")
    if os.path.exists(ptr):
        cand = os.path.join(root, open(ptr).read().strip())
        if is_complete(cand):
            return cand
    if not os.path.isdir(root):
        return None
    steps = sorted((int(m.group(1)), d) for d in os.listdir(root) if (m := _STEP_DIR.match(d))
                   and is_complete(os.path.join(root, d)))
    return os.path.join(root, steps[-1][1]) if steps else None


def _rng_state() -> dict:
    st = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state()
    return st


def _set_rng_state(st: dict) -> None:
    torch.set_rng_state(st["torch"])
    random.setstate(st["python"])
    np.random.set_state(st["numpy"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state(st["cuda"])


def save(root: str, step: int, model, optimizer, trainer_state: dict, keep: int = 2) -> str:
    """Save a complete checkpoint for ``step`` (collective: every rank calls it)."""
    name = f"step_{step:08d}"
    final, tmp = os.path.join(root, name), os.path.join(root, name + ".tmp")
    if _rank() == 0:
        os.makedirs(root, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
    _barrier()
    model_sd, optim_sd = get_state_dict(model, optimizer)
    dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=tmp)
    torch.save(_rng_state(), os.path.join(tmp, f"rng_rank{_rank()}.pt"))
    if _rank() == 0:
        torch.save(dict(trainer_state, step=step,
                        world_size=dist.get_world_size() if dist.is_initialized() else 1),
                   os.path.join(tmp, "trainer.pt"))
    _barrier()
    if _rank() == 0:
        if os.path.exists(final):  # the same step saved again (e.g. after a resume): replace it whole
            shutil.rmtree(final)
        os.replace(tmp, final)
        _write_atomic(os.path.join(root, "latest"), name)
        done = sorted(d for d in os.listdir(root) if _STEP_DIR.match(d))
        for old in done[:-keep] if keep > 0 else []:
            shutil.rmtree(os.path.join(root, old), ignore_errors=True)
    _barrier()
    return final


def load(path: str, model, optimizer) -> dict:
    """Load a checkpoint saved by ``save`` into ``model`` and ``optimizer``; returns the trainer state."""
    if not is_complete(path):
        raise FileNotFoundError(f"{path} is not a complete s1fast checkpoint (no .metadata or trainer.pt); "
                                f"pass --resume never, or another checkpoint folder")
    model_sd, optim_sd = get_state_dict(model, optimizer)
    state = {"model": model_sd, "optim": optim_sd}
    dcp.load(state, checkpoint_id=path)
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
    trainer = torch.load(os.path.join(path, "trainer.pt"), weights_only=False)
    rng = os.path.join(path, f"rng_rank{_rank()}.pt")
    if os.path.exists(rng):
        _set_rng_state(torch.load(rng, weights_only=False))
    return trainer


def full_state_dict(model) -> dict:
    """The whole model as plain CPU tensors on rank 0 (an empty dict elsewhere); collective."""
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
