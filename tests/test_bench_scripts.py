"""Every runnable script of bench/ as a user runs it, both ways: ``python bench/X.py --help`` (from another
folder) and ``python -m bench.X --help`` (from the root) print the help and exit 0, without running the
benchmark. Run as a path, the ``bench.`` imports failed (ModuleNotFoundError: bench) before bench/_path.py;
bench_packing.py and kernel_memory.py ran their benchmark on --help."""
import os
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "bench")
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # as a user's shell: nothing on the path
ENV.update(OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")


def scripts() -> list[str]:
    """bench/'s runnable scripts: a ``__main__`` block (not the helpers, not the pytest benchmark files)."""
    return sorted(f[:-3] for f in os.listdir(BENCH) if f.endswith(".py") and not f.startswith("_")
                  and re.search(r'^if __name__ == "__main__":', open(os.path.join(BENCH, f)).read(), re.M))


def help_of(name: str, way: str, cwd: str):
    cmd = [sys.executable, os.path.join(BENCH, f"{name}.py")] if way == "path" else [sys.executable, "-m", f"bench.{name}"]
    t0 = time.time()
    try:
        p = subprocess.run([*cmd, "--help"], cwd=cwd if way == "path" else ROOT, env=ENV, capture_output=True,
                           text=True, timeout=120)
    except subprocess.TimeoutExpired:
        return name, way, None, "", "timed out after 120 s: it ran its benchmark", 120.0
    return name, way, p.returncode, p.stdout, p.stderr, time.time() - t0


def test_every_bench_script_prints_its_help_both_ways_without_running(tmp_path):
    names = scripts()
    assert {"bench_packing", "kernel_memory", "kernel_table", "logprob_memory", "rl_toy", "peak_rss"} <= set(names)
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda a: help_of(*a, str(tmp_path)), [(n, w) for n in names for w in ("path", "m")]))
    bad = [f"{'python bench/' + n + '.py' if w == 'path' else 'python -m bench.' + n} --help: exit {rc}, "
           f"{dt:.0f} s\n{out[-600:]}{err[-1500:]}"
           for n, w, rc, out, err, dt in results
           if rc != 0 or not out.startswith("usage:") or "Traceback" in err or len(out.splitlines()) > 80]
    assert not bad, "\n\n".join(bad)
