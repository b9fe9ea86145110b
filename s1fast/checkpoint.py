"""Sharded, atomic, resumable checkpoints, the run folder's lock, and the final Hugging Face export.

A checkpoint ``checkpoints/step_00000040/`` holds the sharded model and optimizer
(``torch.distributed.checkpoint``), ``trainer.pt`` (step, scheduler, run id, config), one ``rng_rank{r}.pt``
per rank and ``manifest.json`` (every file's size, written last). It is written into ``step_00000040.tmp/``
and renamed only once every rank has finished; ``checkpoints/latest`` is then replaced atomically. A
folder is complete only when its manifest matches its files, so a crash or a full disk mid-save leaves
nothing that is ever loaded, and retention counts and deletes only complete checkpoints, never the newest.
One run owns an output folder at a time (``run.lock``: pid and host; a dead owner's lock is taken over).
Guarantees and their limits: docs in README (Checkpoints).
"""
from __future__ import annotations

import json
import os
import random
import re
import shutil
import socket
import time

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict, get_state_dict,
                                                     set_state_dict)

from .distributed import all_gather_objects
# clean_stale: for callers
from .whole_folder import alive, clean_stale, parse_sibling, sibling, swap_in, write_whole  # noqa: F401

_STEP_DIR = re.compile(r"^step_(\d{8})$")
MANIFEST = "manifest.json"
LOCK = "run.lock"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be written or read; the message names it and the intact one to use."""


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def _write_atomic(path: str, text: str) -> None:
    tmp = sibling(path)
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


# -- the run lock ----------------------------------------------------------------------------------
def acquire_lock(output_dir: str) -> str:
    """Own ``output_dir`` (rank 0 only): ``run.lock`` holds this process's pid and host.

    A lock left by a dead process on this host is taken over (with a notice); a live owner, or one on
    another host (whose liveness cannot be checked), is refused with what to do.
    """
    path = os.path.join(output_dir, LOCK)
    me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                owner = json.load(open(path))
            except (OSError, ValueError):
                owner = {}
            if owner.get("host") == me["host"] and isinstance(owner.get("pid"), int) and not alive(owner["pid"]):
                print(f"[s1fast] notice: {path} was left by process {owner['pid']}, which is gone; taking it over",
                      flush=True)
                os.remove(path)
                continue
            who = f"process {owner.get('pid', '?')} on host {owner.get('host', '?')} (since {owner.get('since', '?')})"
            raise CheckpointError(f"{output_dir} is in use by another run: {who}. Wait for it, use another "
                                  f"--output-dir, or, if that run is dead, delete {path}")
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
        return path
    raise CheckpointError(f"could not take the lock {path}; delete it if no run uses {output_dir}")


def release_lock(path: str | None) -> None:
    """Remove the lock if this process still owns it."""
    if not path:
        return
    try:
        if json.load(open(path)).get("pid") == os.getpid():
            os.remove(path)
    except (OSError, ValueError):
        pass


def remove_run(output_dir: str, names) -> None:
    """``--replace`` (rank 0): delete the previous run's files ``names`` (checkpoints/, final/, metrics...)."""
    for name in names:
        path = os.path.join(output_dir, name)
        shutil.rmtree(path) if os.path.isdir(path) else os.path.exists(path) and os.remove(path)
    print(f"[s1fast] --replace: removed the previous run's {', '.join(names)} from {output_dir}", flush=True)


# -- what is on disk -------------------------------------------------------------------------------
def step_of(path: str) -> int | None:
    m = _STEP_DIR.match(os.path.basename(os.path.normpath(path)))
    return int(m.group(1)) if m else None


def is_complete(path: str) -> bool:
    """A folder whose manifest lists exactly the sizes of its files (written last, so a save finished); a
    checkpoint of an s1fast from before manifests: its ``.metadata`` and ``trainer.pt``."""
    if step_of(path) is not None and not os.path.exists(os.path.join(path, MANIFEST)):
        return all(os.path.exists(os.path.join(path, n)) for n in (".metadata", "trainer.pt"))
    try:
        manifest = json.load(open(os.path.join(path, MANIFEST)))
        return all(os.path.getsize(os.path.join(path, n)) == s for n, s in manifest.items()) \
            and "trainer.pt" in manifest and ".metadata" in manifest
    except (OSError, ValueError, AttributeError):
        return False


def step_folders(root: str) -> list[tuple[int, str, bool]]:
    """(step, path, complete) of every ``step_*`` folder under ``root``, oldest first."""
    if not os.path.isdir(root):
        return []
    out = []
    for d in os.listdir(root):
        if (s := step_of(d)) is not None:
            out.append((s, os.path.join(root, d), is_complete(os.path.join(root, d))))
    return sorted(out)


def latest(root: str) -> str | None:
    """The checkpoint ``latest`` names (the last one saved) when it is complete, else the newest complete one."""
    try:
        cand = os.path.join(root, open(os.path.join(root, "latest")).read().strip())
        if step_of(cand) is not None and is_complete(cand):
            return cand
    except OSError:
        pass
    done = [p for _, p, ok in step_folders(root) if ok]
    return done[-1] if done else None


def broken(root: str) -> list[str]:
    """Step folders newer than the checkpoint a resume would load that are not complete (damaged)."""
    folders = step_folders(root)
    newest = step_of(latest(root) or "") or -1
    return [p for s, p, ok in folders if not ok and s > newest]


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


def _agree(ok: bool) -> bool:
    """True on every rank when ``ok`` is true on every rank (one tiny collective)."""
    return all(all_gather_objects(ok))


def retain(root: str, keep: int, newest: str) -> None:
    """Keep the ``keep`` newest complete checkpoints (``newest`` always); remove older ones and damaged
    folders older than ``newest``."""
    done = [(s, p) for s, p, ok in step_folders(root) if ok]
    keep_paths = {p for _, p in done[-keep:]} if keep > 0 else {p for _, p in done}
    keep_paths.add(newest)
    limit = step_of(newest)
    for s, p, ok in step_folders(root):
        if p not in keep_paths and s <= limit:
            shutil.rmtree(p, ignore_errors=True)


def save(root: str, step: int, model, optimizer, trainer_state: dict, keep: int = 2) -> str:
    """Save a complete checkpoint for ``step`` (collective: every rank calls it).

    A failure on any rank (a full disk) removes the partial folder and raises CheckpointError naming the
    intact checkpoint; the previous checkpoints are untouched until the new one is complete.
    """
    name = f"step_{step:08d}"
    final, tmp = os.path.join(root, name), os.path.join(root, name + ".tmp")
    intact = latest(root)
    err = None
    try:
        if _rank() == 0:
            os.makedirs(root, exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)
            os.makedirs(tmp)
    except OSError as e:
        err = e
    if _agree(err is None):
        try:
            model_sd, optim_sd = get_state_dict(model, optimizer)
            dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=tmp)
            torch.save(_rng_state(), os.path.join(tmp, f"rng_rank{_rank()}.pt"))
            if _rank() == 0:
                torch.save(dict(trainer_state, step=step,
                                world_size=dist.get_world_size() if dist.is_initialized() else 1),
                           os.path.join(tmp, "trainer.pt"))
        except (OSError, RuntimeError) as e:
            err = e
    ok = _agree(err is None)
    if ok and _rank() == 0:
        try:
            _finish(root, name, final, tmp, keep)
        except OSError as e:
            err, ok = e, False
    ok = _agree(ok)
    if not ok:
        if _rank() == 0:
            shutil.rmtree(tmp, ignore_errors=True)
        why = f" ({type(err).__name__}: {err})" if err is not None else " (on another rank)"
        raise CheckpointError(f"saving the checkpoint of step {step} failed{why}; the partial folder {tmp} was "
                              f"removed. The intact checkpoint is {intact or 'none (none was saved yet)'}: free the "
                              f"space or fix the folder, then run again with the same --output-dir to resume")
    return final


def _finish(root: str, name: str, final: str, tmp: str, keep: int) -> None:
    """Rank 0, once every rank has written: manifest, rename into place, ``latest``, retention."""
    sizes = {n: os.path.getsize(os.path.join(tmp, n)) for n in os.listdir(tmp)}
    _write_atomic(os.path.join(tmp, MANIFEST), json.dumps(sizes, sort_keys=True))
    swap_in(tmp, final)  # a damaged folder of the same step is moved aside first, dropped after
    _write_atomic(os.path.join(root, "latest"), name)
    retain(root, keep, final)
    for d in os.listdir(root):
        if _leftover(d):
            shutil.rmtree(os.path.join(root, d), ignore_errors=True)


def _leftover(name: str) -> bool:
    """What a killed save left: ``step_N.tmp``, or a ``step_N.old-HOST-PID`` that :func:`swap_in` moved aside.
    Any host's: the run's lock says no other save runs (unlike an export folder, which no lock guards)."""
    sib = parse_sibling(name)
    return name.endswith(".tmp") and bool(_STEP_DIR.match(name[:-4])) or \
        bool(sib and sib.kind == "old" and _STEP_DIR.match(sib.base))


def load(path: str, model, optimizer) -> dict:
    """Load a checkpoint saved by ``save`` into ``model`` and ``optimizer``; returns the trainer state.

    A damaged checkpoint raises CheckpointError naming it and the newest intact older one.
    """
    root = os.path.dirname(os.path.normpath(path))

    def older_intact():
        s = step_of(path)
        done = [p for t, p, ok in step_folders(root) if ok and (s is None or t < s)]
        return (f"resume from {done[-1]} with --resume {done[-1]}" if done else
                "no older intact checkpoint is there: pass --resume never --replace true to start again")
    if not os.path.isdir(path):
        raise CheckpointError(f"--resume {path}: no such folder; pass a step_* folder under a run's checkpoints/, or "
                              f"--resume auto for the last one saved in --output-dir")
    if not is_complete(path):
        raise CheckpointError(f"{path} is not a complete s1fast checkpoint (its manifest.json is missing or does "
                              f"not match its files); {older_intact()}")
    try:
        model_sd, optim_sd = get_state_dict(model, optimizer)
        state = {"model": model_sd, "optim": optim_sd}
        dcp.load(state, checkpoint_id=path)
        set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
        trainer = torch.load(os.path.join(path, "trainer.pt"), weights_only=False)
        rng = os.path.join(path, f"rng_rank{_rank()}.pt")
        if os.path.exists(rng):
            _set_rng_state(torch.load(rng, weights_only=False))
    except (Exception, CheckpointException) as e:  # noqa: BLE001 -- damaged, or saved from another model
        try:
            saved = torch.load(os.path.join(path, "trainer.pt"), weights_only=False)["config"]["model"]
            other = f"; it was saved by a run of --model {saved!r}: resume with that --model, or"
        except Exception:  # noqa: BLE001 -- trainer.pt itself is unreadable
            other = ";"
        raise CheckpointError(f"checkpoint {path} is damaged or is not of this model ({last_line(e)[:200]})"
                              f"{other} {older_intact()}") from e
    return trainer


def last_line(e: BaseException) -> str:
    """What went wrong, in one line: dcp's CheckpointException carries each rank's whole traceback."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return lines[-1] if isinstance(e, CheckpointException) and lines else f"{type(e).__name__}: {str(e)}"


def full_state_dict(model) -> dict:
    """The whole model as plain CPU tensors on rank 0 (an empty dict elsewhere); collective."""
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def write_hf_folder(state_dict: dict, mcfg, out: str, tokenizer_dir: str) -> str:
    """Write ``out`` as a Hugging Face folder (one process), whole (s1fast.whole_folder): any failure (a full
    disk, a Ctrl-C) leaves the previous ``out`` as it was and no partial folder (the exception goes on); what a
    killed export left beside ``out`` is cleaned first."""
    from .model import save_state_dict_hf
    write_whole(out, lambda tmp: save_state_dict_hf(state_dict, mcfg, tmp, tokenizer_dir))
    return out
