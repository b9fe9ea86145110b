"""Keep freed memory in the process on CPU runs (glibc's allocator), so a training step does not pay page faults.

glibc hands every block above 32 MiB straight back to the kernel on ``free`` (``mmap``/``munmap``), and the
next step's buffer of the same size comes back as fresh pages, zeroed by the kernel one 4 KiB fault at a time.
A CPU training step allocates several such buffers (FSDP2's all-gather and reduce-scatter buffers, the fused
loss's logits chunk, the embedding's gradient at a 151,936-row vocabulary): on the tiny model the faults took
about a third of the step (bench/RESULTS.md, the demo's toy task). ``keep_freed_memory`` turns ``mmap`` off
for the allocator (blocks come from the heap) and raises the trim threshold, so freed blocks are reused.
The resident size then stays at the step's peak instead of falling between steps, which a trainer holds anyway.
Reuse is not guaranteed for every buffer: a request must fit a freed block, and torch's aligned allocation asks
for a little more than the size (tests/test_cpu_allocator.py); the step time is what was measured.
"""
from __future__ import annotations

import ctypes
import ctypes.util

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4   # mallopt parameters (malloc.h)


def keep_freed_memory() -> bool:
    """Tune glibc's allocator for this process (see the module docstring). False where libc is not glibc."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, 2**31 - 1))
