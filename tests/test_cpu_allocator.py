"""keep_freed_memory: the memory of a freed 64 MiB buffer is reused without page faults (run in a fresh process,
since the setting is process-wide and cannot be undone)."""
import subprocess
import sys
import textwrap

PROBE = textwrap.dedent("""
    import ctypes, resource, sys, torch
    from s1fast.cpu_allocator import keep_freed_memory
    ctypes.CDLL(None).prctl(41, 1, 0, 0, 0)  # PR_SET_THP_DISABLE: 4 KiB pages, so the faults count pages
    if sys.argv[1] == "tuned":
        assert keep_freed_memory()
    def faults():
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    torch.empty(16 * 2**20).fill_(1.0)      # 64 MiB, allocated, touched and freed
    before = faults()
    torch.empty(15 * 2**20).fill_(2.0)      # 60 MiB: fits in the freed block (an exact same-size request may
    print(faults() - before)                # not, by the alignment padding of torch's aligned allocation)
""")


def _faults(mode):
    p = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    return int(p.stdout.split()[-1])


def test_freed_buffers_are_reused_without_page_faults():
    pages = 60 * 2**20 // 4096
    assert _faults("default") > pages // 2    # glibc unmaps the block on free: every page faults again
    assert _faults("tuned") < pages // 20     # kept in the heap: reused as it is
