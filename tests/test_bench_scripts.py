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


# Values a user can mistype, each refused by one `error:` line (exit 2) before any work. Before bench/_args.py
# they ended in tracebacks after minutes of work (rl_toy --seeds x after the SFT run), ran something else
# (bench_generate --questions 0: every question), or printed a 0.00x result with exit 0 (bench_serve --clients 0).
BAD_VALUES = [
    ("penalty_step", ["--repeat", "0"]), ("penalty_step", ["--lengths", "-5"]), ("op_overhead", ["--repeat", "0"]),
    ("bench_generate", ["--questions", "0"]), ("bench_generate", ["--batch-sizes", "x"]),
    ("bench_generate", ["--dtype", "fp7"]), ("bench_generate", ["--repeats", "0"]),
    ("bench_generate", ["--model", "/nonexistent-model"]), ("bench_serve", ["--clients", "0"]),
    ("bench_data_memory", ["--questions", "0"]), ("side_by_side_profile", ["--repeat", "0"]),
    ("side_by_side", ["--replot", "/nonexistent.json"]), ("fault_injection", ["--kills", "0"]),
    ("rl_toy", ["--seeds", "x"]), ("bench_attention", ["--dry-run", "--reps", "0"]), ("gpu_memory", ["--tokens", "x"]),
]


def run_script(name: str, args: list[str], cwd: str, timeout: int = 120):
    return subprocess.run([sys.executable, os.path.join(BENCH, f"{name}.py"), *args], cwd=cwd, env=ENV,
                          capture_output=True, text=True, timeout=timeout)


def test_bad_values_are_one_error_line_before_any_work(tmp_path):
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda c: (c, run_script(*c, str(tmp_path))), BAD_VALUES))
    bad = [f"python bench/{n}.py {' '.join(a)}: exit {p.returncode}\n{p.stdout[-300:]}{p.stderr[-800:]}"
           for (n, a), p in results
           if p.returncode != 2 or "Traceback" in p.stderr or not re.search(r"(^|: )error: ", p.stderr.strip()
                                                                             .splitlines()[-1] if p.stderr.strip() else "")]
    assert not bad, "\n\n".join(bad)
    assert not os.listdir(tmp_path)  # nothing written: refused before any work


def test_fault_injection_refuses_to_empty_a_folder_of_other_files(tmp_path):
    """--work is emptied first (rm -rf): given a checkout or a home folder by mistake, it deleted it."""
    (tmp_path / "keep.txt").write_text("mine")
    p = run_script("fault_injection", ["--work", str(tmp_path)], str(tmp_path))
    assert p.returncode == 2 and "holds other files (keep.txt)" in p.stderr and "Traceback" not in p.stderr
    assert (tmp_path / "keep.txt").read_text() == "mine"


def test_every_bench_script_records_hardware_versions_commit_and_command():
    """bench/env.py's header in each script's output (run_gpu.sh's stages get it in OUT/environment.json)."""
    stages = {"gpu_correctness", "gpu_throughput", "peak_rss"}  # run_gpu.sh's stages; a wrapper of other modules
    missing = [n for n in scripts() if n not in stages
               and "markdown_header(" not in open(os.path.join(BENCH, f"{n}.py")).read()]
    assert not missing, f"print bench.env.markdown_header(environment()) in: {missing}"
    p = run_script("logprob_memory", [], ROOT)
    assert p.returncode == 0, p.stderr
    assert re.match(r"- hardware: .*\n- versions: .*torch .*\n- commit: `[0-9a-f]{7,}(\+dirty)?`\n- command: `",
                    p.stdout), p.stdout[:500]
    # the command as typed, with the thread count it ran under (it was recorded without its variables)
    assert re.search(r"^- command: `(\S+=\S* )*OMP_NUM_THREADS=1 (\S+=\S* )*python\S* \S*logprob_memory\.py`$",
                     p.stdout, re.M), p.stdout[:500]


def test_bench_packing_prints_the_collate_figure_it_is_cited_for():
    """RESULTS.md's "Collate" figure cites `python bench/bench_packing.py`, which did not measure collate."""
    p = run_script("bench_packing", ["--quick"], ROOT)
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("- hardware: ")
    assert re.search(r"^Collate, one 32768-token micro-batch of 4 documents: `collate` \(C\+\+ op\) [\d.]+ ms, the numpy "
                     r"reference [\d.]+ ms \(mean of 50\)$", p.stdout, re.M), p.stdout[-500:]
