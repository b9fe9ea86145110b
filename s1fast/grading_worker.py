"""A grade with a wall-clock bound from any thread: a worker process (``python -m s1fast.grading_worker``).

math-verify's time limits, and the sympy backend's, are SIGALRM alarms, and only a process's main thread may
set one: math-verify raises from any other thread (which read as "wrong" for every answer: rewards stuck at
zero), and sympy had no limit there at all. ``call`` hands the grade to one worker process, kept between
calls, where it runs in the main thread under those alarms; a call that overruns ``timeout`` seconds anyway
(work in C that no alarm interrupts) kills the worker and raises ``TimeoutError``; the next call starts a new
one. Calls from several threads take turns. The protocol is one JSON line each way on stdin / stdout.
"""
from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import threading

# the functions a caller may name, as "module:function"
ALLOWED = ("s1fast.grading:_is_equiv", "s1fast.grading:_mv_reads", "s1fast.grading:mv_equal",
           "s1fast.protocols:_mv_extract")
_lock = threading.Lock()
_proc: subprocess.Popen | None = None


def _start() -> subprocess.Popen:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([root] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    return subprocess.Popen([sys.executable, "-m", "s1fast.grading_worker"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, env=env, text=True, bufsize=1)


def _stop() -> None:
    global _proc
    if _proc is not None:
        _proc.kill()
        _proc.wait()
        _proc = None


def call(name: str, args: tuple, timeout: float):
    """``<module>.<function>(*args)`` (``name``: "module:function", one of ``ALLOWED``) in the worker process; ``TimeoutError`` past ``timeout`` seconds,
    ``RuntimeError`` when it raised there or died."""
    global _proc
    if name not in ALLOWED:
        raise ValueError(f"grading_worker: {name!r} is not one of {ALLOWED}")
    with _lock:
        if _proc is None or _proc.poll() is not None:
            _proc = _start()
        try:
            _proc.stdin.write(json.dumps([name, list(args)]) + "\n")
            _proc.stdin.flush()
        except BrokenPipeError:
            _stop()
            raise RuntimeError("grading worker died") from None
        ready, _, _ = select.select([_proc.stdout], [], [], timeout)
        if not ready:
            _stop()
            raise TimeoutError(f"grading took over {timeout:g} s (killed)")
        line = _proc.stdout.readline()
        if not line:
            _stop()
            raise RuntimeError("grading worker died")
    ok, value = json.loads(line)
    if not ok:
        raise RuntimeError(f"grader raised: {value}")
    return value


def _serve() -> None:
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)                   # anything the graders print goes to stderr, not into the replies
    import importlib
    for line in sys.stdin:
        name, args = json.loads(line)
        try:
            if name not in ALLOWED:
                raise ValueError(f"{name!r} is not one of {ALLOWED}")
            mod, _, fn = name.partition(":")
            reply = [True, getattr(importlib.import_module(mod), fn)(*args)]
        except Exception as e:  # noqa: BLE001 -- handed back to the caller, which counts it
            reply = [False, f"{type(e).__name__}: {e}"]
        out.write(json.dumps(reply) + "\n")


if __name__ == "__main__":
    _serve()
