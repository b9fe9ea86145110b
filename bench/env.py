"""What every benchmark records next to its numbers: hardware, versions, commit and the exact command."""
from __future__ import annotations

import os
import platform
import shlex
import subprocess
import sys
from importlib import metadata


def _version(pkg: str) -> str:
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return "not installed"


def _cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def commit() -> str:
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


# Variables that change what a benchmark measures: recorded before the command line when set.
SETTINGS = ("OMP_NUM_THREADS", "TRITON_INTERPRET", "CUDA_VISIBLE_DEVICES", "TOKENIZERS_PARALLELISM")


def command_line() -> str:
    """The command as typed: the settings above and S1FAST_* variables, then the interpreter and its arguments
    (before, ``OMP_NUM_THREADS=1 python bench/penalty_step.py`` was recorded without its thread count)."""
    env = [f"{k}={shlex.quote(v)}" for k, v in sorted(os.environ.items()) if k in SETTINGS or k.startswith("S1FAST_")]
    return " ".join(env + [os.path.basename(sys.executable)] + [shlex.quote(a) for a in sys.argv])


def environment(command: str | None = None) -> dict:
    import torch
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    try:
        mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError):
        mem_gb = 0.0
    return {
        "hardware": f"{gpu} GPU" if gpu else f"CPU only: {_cpu_name()}, {os.cpu_count()} cores, {mem_gb:.0f} GiB",
        "versions": {p: _version(p) for p in ("torch", "triton", "transformers", "trl", "liger-kernel",
                                               "safetensors", "numpy")} | {"python": platform.python_version()},
        "commit": commit(),
        "command": command or command_line(),
    }


def markdown_header(env: dict) -> str:
    v = ", ".join(f"{k} {val}" for k, val in env["versions"].items())
    return (f"- hardware: {env['hardware']}\n- versions: {v}\n- commit: `{env['commit']}`\n"
            f"- command: `{env['command']}`\n")
