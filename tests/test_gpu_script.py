"""bench/run_gpu.sh, the one command a GPU node runs, checked on a CPU: its --dry-run runs every stage at toy
sizes with the CPU stand-ins and must write every stage's file; its arguments fail clearly; the wheel list
names exact pins of what the node lacks."""
import json
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "bench", "run_gpu.sh")
# what the GPU node has (platform.md); torch brings sympy
NODE_HAS = {"torch", "triton", "transformers", "safetensors", "numpy", "pytest", "pytest-benchmark", "hypothesis",
            "matplotlib", "tqdm", "ninja", "pyarrow", "sympy"}
STAGE_FILES = {"install": "environment.json", "kernel_tests": "kernel_tests.txt", "correctness": "correctness.json",
               "kernels": "kernels.json", "attention": "attention.json", "throughput": "throughput.json"}


def _env(**kw):
    env = dict(os.environ, PYTHON=sys.executable, OMP_NUM_THREADS="1", **kw)
    env.pop("TRITON_INTERPRET", None)
    return env


def test_dry_run_writes_every_stage_file(tmp_path):
    out = tmp_path / "out"
    p = subprocess.run(["bash", SCRIPT, "--dry-run", str(out)], cwd=ROOT, env=_env(), capture_output=True,
                       text=True, timeout=1200)  # about 90 s on 2 idle cores; the script's own caps end it first
    summary = (out / "summary.txt").read_text() if (out / "summary.txt").exists() else ""
    assert p.returncode == 0, f"dry run failed ({p.returncode}):\n{summary}\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}"
    lines = summary.splitlines()
    for stage, fn in STAGE_FILES.items():
        assert any(line.startswith(f"{stage}: ok") for line in lines), f"stage {stage}: no ok line in\n{summary}"
        assert (out / fn).stat().st_size > 0, f"stage {stage} wrote no {fn}"
    files = [f for f in os.listdir(out) if not f.startswith(".")]
    assert len(files) <= 8 and all((out / f).stat().st_size < 16 * 2**20 for f in files), files
    corr = json.loads((out / "correctness.json").read_text())
    names = {c["name"] for c in corr["checks"]}
    assert {"collate", "generation (budget forcing)", "generation (seeded sampling)",
            "generation (server's continuous batcher)"} <= names and any(n.startswith("training ") for n in names)
    assert all(c["ok"] for c in corr["checks"]), corr
    tp = json.loads((out / "throughput.json").read_text())
    run = tp["runs"][-1]
    assert "error" not in run and run["steps"] == 2 and run["model_prediction_gib"]["peak"] > 0, run
    env = json.loads((out / "environment.json").read_text())
    assert env["native_extension"] is True and "versions" in env


def test_a_failing_stage_is_recorded_and_the_next_runs(tmp_path):
    """A --wheels folder without the wheels: the install stage fails, the others still run (one cut short by the
    script's total clock is recorded as skipped)."""
    out = tmp_path / "out"
    empty = tmp_path / "wheels"
    empty.mkdir()
    p = subprocess.run(["bash", SCRIPT, "--dry-run", "--wheels", str(empty), str(out)], cwd=ROOT,
                       env=_env(S1FAST_GPU_TOTAL_S="20", S1FAST_DRY_CAP_SCALE="1"), capture_output=True, text=True, timeout=300)
    summary = (out / "summary.txt").read_text()
    assert p.returncode == 1, summary
    assert re.search(r"^install: FAILED \(exit \d+\)", summary, re.M), summary
    assert "math-verify" in (out / "log.txt").read_text()  # pip names the missing wheel
    assert re.search(r"^throughput: SKIPPED", summary, re.M), summary


@pytest.mark.parametrize("args, message", [([], "OUT_DIR is missing"), (["--bogus", "x"], "unknown option --bogus"),
                                           (["--wheels", "/nonexistent", "x"], "is not a folder"),
                                           (["a", "b"], "one OUT_DIR only")])
def test_bad_arguments_fail_with_one_line_and_exit_2(args, message):
    p = subprocess.run(["bash", SCRIPT, *args], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert p.returncode == 2 and p.stderr.startswith("error: ") and message in p.stderr, p.stderr


def test_wheel_list_pins_exactly_what_the_node_lacks():
    pins = {}
    for n, line in enumerate(open(os.path.join(ROOT, "bench", "gpu-wheels.txt")), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        m = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([0-9][0-9A-Za-z.+!-]*)", line)
        assert m, f"bench/gpu-wheels.txt line {n}: {line!r} is not NAME==VERSION"
        name = re.sub(r"[-_.]+", "-", m.group(1)).lower()
        assert name not in pins, f"line {n}: {name} pinned twice"
        pins[name] = m.group(2)
    assert not NODE_HAS & set(pins), f"the node has these already: {NODE_HAS & set(pins)}"
    # every core dependency of s1fast (setup.py) is on the node or in the list, with math-verify's own deps
    setup = open(os.path.join(ROOT, "setup.py")).read()
    core = re.search(r"core = \[(.*?)\]", setup).group(1)
    for req in re.findall(r'"([A-Za-z0-9_.-]+)', core):
        req = re.sub(r"[-_.]+", "-", req).lower()
        assert req in NODE_HAS or req in pins, f"setup.py needs {req}: neither on the node nor in gpu-wheels.txt"
    assert {"latex2sympy2-extended", "antlr4-python3-runtime"} <= set(pins)
    assert pins["antlr4-python3-runtime"] == "4.13.2"  # math-verify's antlr4_13_2 extra
