"""A folder written whole: into ``out.tmp-PID`` beside it, then swapped in, so a reader sees the old folder or
the new one, never a partial one; and what a killed writer left beside ``out`` cleaned by the next writer.

Used by the Hugging Face export (s1fast.checkpoint) and the token cache (s1fast.data.cache). The PIDs are this
host's: a folder shared with other hosts may see another host's live writer as gone.
"""
from __future__ import annotations

import os
import re
import shutil


def alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _notice(msg: str) -> None:
    print(msg, flush=True)


def write_whole(out: str, fill, log=_notice) -> None:
    """Have ``fill(tmp)`` write the folder ``tmp`` (it may not exist yet), then swap it in for ``out``. Any
    failure (a full disk, a Ctrl-C) removes ``tmp``, leaves a previous ``out`` as it was, and goes on. What a
    killed writer left beside ``out`` is cleaned first (:func:`clean_stale`)."""
    out = os.path.normpath(out)
    clean_stale(out, log)
    tmp = f"{out}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        fill(tmp)
        swap_in(tmp, out)
    except BaseException:  # KeyboardInterrupt too
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def swap_in(tmp: str, out: str) -> None:
    """Rename ``tmp`` to ``out``; a previous ``out`` is moved aside to ``out.old-PID`` first, put back if the
    rename fails, and deleted once the new one is in place."""
    if not os.path.exists(out):
        os.replace(tmp, out)
        return
    aside = f"{out}.old-{os.getpid()}"
    os.replace(out, aside)
    try:
        os.replace(tmp, out)
    except BaseException:
        os.replace(aside, out)
        raise
    shutil.rmtree(aside, ignore_errors=True)


def clean_stale(out: str, log=_notice) -> None:
    """Remove the ``out.tmp-PID`` (partial) and ``out.old-PID`` (replaced) folders a writer left when it was
    killed, those of processes that are gone; an ``out.old-PID`` is the previous complete folder and is put
    back when ``out`` itself is missing (killed between the two renames of :func:`swap_in`)."""
    parent, base = os.path.split(os.path.normpath(out))
    pattern = re.compile(re.escape(base) + r"\.(tmp|old)-(\d+)$")
    try:
        names = sorted(os.listdir(parent or "."))
    except OSError:
        return
    for name in names:
        m = pattern.match(name)
        if not m or int(m.group(2)) == os.getpid() or alive(int(m.group(2))):
            continue
        path = os.path.join(parent, name)
        if m.group(1) == "old" and not os.path.exists(out):
            os.replace(path, out)
            log(f"[s1fast] notice: {out} was missing and {path} (a complete folder moved aside by a process "
                f"that is gone) was put back")
            continue
        shutil.rmtree(path, ignore_errors=True)
        log(f"[s1fast] notice: removed {path}, left by process {m.group(2)}, which is gone")
