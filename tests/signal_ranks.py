"""Signal one rank of a torchrun job, as a scheduler signalling one process or a Ctrl-C in one terminal does,
and read back every rank's exit status from torchrun's summary.

The signal is sent once the rank catches SIGTERM (``SigCgt`` in /proc), which Python leaves to its default
action until the run loop's ``StopOnSignal`` catches SIGINT and SIGTERM together: it lands mid-run.
torchrun runs with a long monitor interval: it ends the other ranks as soon as it sees one exit non-zero,
and ranks that stop together exit within a moment of each other, so both exits are seen before it looks.
"""
import os
import re
import signal
import subprocess
import sys
import time


def torchrun(module: str, args: list[str], nproc: int, cwd: str, env: dict) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
           "--monitor-interval", "3", "-m", module, *args]
    return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _children(pid: int) -> list[int]:
    out = []
    for d in os.listdir("/proc"):
        try:
            if d.isdigit() and int(open(f"/proc/{d}/stat").read().rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(d))
        except (OSError, IndexError, ValueError):
            pass
    return out


def _rank_of(pid: int) -> int | None:
    try:
        env = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
    except OSError:
        return None
    return next((int(e[5:]) for e in env if e.startswith(b"RANK=")), None)


def _catches(pid: int, sig: int) -> bool:
    try:
        line = next(x for x in open(f"/proc/{pid}/status") if x.startswith("SigCgt:"))
    except (OSError, StopIteration):
        return False
    return bool(int(line.split()[1], 16) >> (sig - 1) & 1)


def signal_rank_mid_run(proc: subprocess.Popen, rank: int, sig: int, timeout: float = 300) -> int:
    """Send ``sig`` to worker ``rank`` of the torchrun ``proc`` once its run loop has started; its pid."""
    t0 = time.time()
    while True:
        if proc.poll() is not None or time.time() - t0 > timeout:
            text = end(proc)
            raise AssertionError(f"rank {rank} did not start its loop within {timeout} s, or the run ended before "
                                 f"(exit {proc.returncode}):\n{text[-4000:]}")
        pid = next((p for p in _children(proc.pid) if _rank_of(p) == rank), None)
        if pid is not None and _catches(pid, signal.SIGTERM):
            os.kill(pid, sig)
            return pid
        time.sleep(0.01)


def end(proc: subprocess.Popen) -> str:
    """Kill the job (its ranks first, which torchrun started in sessions of their own); its output."""
    for pid in _children(proc.pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.kill()
    return proc.communicate()[0]


def exit_codes(text: str) -> dict[int, int]:
    """{rank: exit status} of the ranks torchrun's summary lists as failed (an exit status other than 0)."""
    return {int(r): int(c) for r, c in re.findall(r"rank\s*:\s*(\d+) \(local_rank: \d+\)\s*\n\s*exitcode\s*:\s*(-?\d+)",
                                                  text)}


def expect_both_stopped(proc: subprocess.Popen, sig: int, timeout: float = 300) -> str:
    """Wait for the job; every rank (of two) exited 128 + ``sig``; its output."""
    try:
        text, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:  # a rank hangs in a collective
        text = end(proc)
        raise AssertionError(f"the ranks did not stop within {timeout} s:\n{text[-4000:]}") from None
    assert exit_codes(text) == {0: 128 + sig, 1: 128 + sig}, text[-4000:]
    assert f"signal {int(signal.Signals(sig))}: saved" in text, text[-4000:]
    return text
