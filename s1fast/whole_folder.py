"""A folder written whole: into ``out.tmp-HOST-PID`` beside it, then swapped in, so a reader sees the old folder
or the new one, never a partial one; and what a killed writer left beside ``out`` cleaned by the next writer.

Used by the Hugging Face export (s1fast.checkpoint) and the token cache (s1fast.data.cache). The one home of
the ``NAME.KIND-HOST-PID`` names (:func:`sibling`, :func:`parse_sibling`): a process id says whether a writer
is gone only on its own host, so a folder of another host (a filesystem shared by nodes) is never removed,
only named in a notice. Names without a host (``NAME.KIND-PID``, older versions) are taken as this host's.
"""
from __future__ import annotations

import os
import re
import shutil
import socket
from dataclasses import dataclass


def alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def host_tag() -> str:
    """This host's name as it goes into a sibling's name: [A-Za-z0-9._-] only (anything else becomes ``_``)."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", socket.gethostname()) or "unknown-host"


def sibling(path: str, kind: str = "tmp") -> str:
    """``path.KIND-HOST-PID``: a name beside ``path`` that is this process's alone, on every host."""
    return f"{path}.{kind}-{host_tag()}-{os.getpid()}"


@dataclass(frozen=True)
class Sibling:
    """A parsed ``base.KIND-HOST-PID`` (``host`` None: an older ``base.KIND-PID`` name, this host's)."""
    base: str
    kind: str
    host: str | None
    pid: int

    @property
    def here(self) -> bool:
        """Written on this host (or by an older version, which named no host), so ``pid`` can be checked."""
        return self.host is None or self.host == host_tag()


_SIBLING = re.compile(r"^(?P<base>.+)\.(?P<kind>tmp|old)-(?:(?P<host>[A-Za-z0-9._-]+)-)?(?P<pid>\d+)$")


def parse_sibling(name: str) -> Sibling | None:
    """The parts of a name :func:`sibling` made (kinds ``tmp`` and ``old``), or None for any other name."""
    m = _SIBLING.match(name)
    return m and Sibling(m["base"], m["kind"], m["host"], int(m["pid"]))


def _notice(msg: str) -> None:
    print(msg, flush=True)


def write_whole(out: str, fill, log=_notice) -> None:
    """Have ``fill(tmp)`` write the folder ``tmp`` (it may not exist yet), then swap it in for ``out``. Any
    failure (a full disk, a Ctrl-C) removes ``tmp``, leaves a previous ``out`` as it was, and goes on. What a
    killed writer left beside ``out`` is cleaned first (:func:`clean_stale`)."""
    out = os.path.normpath(out)
    clean_stale(out, log)
    tmp = sibling(out)
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        fill(tmp)
        swap_in(tmp, out)
    except BaseException:  # KeyboardInterrupt too
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def swap_in(tmp: str, out: str) -> None:
    """Rename ``tmp`` to ``out``; a previous ``out`` is moved aside to ``out.old-HOST-PID`` first, put back if the
    rename fails, and deleted once the new one is in place."""
    if not os.path.exists(out):
        os.replace(tmp, out)
        return
    aside = sibling(out, "old")
    os.replace(out, aside)
    try:
        os.replace(tmp, out)
    except BaseException:
        os.replace(aside, out)
        raise
    shutil.rmtree(aside, ignore_errors=True)


def clean_stale(out: str, log=_notice) -> None:
    """Remove the ``out.tmp-HOST-PID`` (partial) and ``out.old-HOST-PID`` (replaced) folders a writer on this
    host left when it was killed, those of processes that are gone; an ``out.old-...`` is the previous complete
    folder and is put back when ``out`` itself is missing (killed between the two renames of :func:`swap_in`).
    Another host's are left as they are (its process cannot be checked from here), named in one notice."""
    parent, base = os.path.split(os.path.normpath(out))
    try:
        names = sorted(os.listdir(parent or "."))
    except OSError:
        return
    elsewhere = []
    for name in names:
        sib = parse_sibling(name)
        if sib is None or sib.base != base:
            continue
        if not sib.here:
            elsewhere.append(name)
            continue
        if sib.pid == os.getpid() or alive(sib.pid):
            continue
        path = os.path.join(parent, name)
        if sib.kind == "old" and not os.path.exists(out):
            os.replace(path, out)
            log(f"[s1fast] notice: {out} was missing and {path} (a complete folder moved aside by a process "
                f"that is gone) was put back")
            continue
        shutil.rmtree(path, ignore_errors=True)
        log(f"[s1fast] notice: removed {path}, left by process {sib.pid}, which is gone")
    if elsewhere:
        log(f"[s1fast] notice: left {len(elsewhere)} folder(s) beside {out} written on other hosts, whose processes "
            f"cannot be checked from {host_tag()}: {', '.join(elsewhere)}; delete them by hand once no process "
            f"on those hosts writes {out}")
