"""Kill a training run with SIGKILL at random moments of its checkpoint saves, resume it each time, and check
that nothing is lost: after every kill the newest complete checkpoint loads, and the run, finished, equals an
uninterrupted one bitwise (losses and exported weights).

    python -m bench.fault_injection --kills 20 --seed 0          # the figure in bench/RESULTS.md

A kill lands while a save is under way: the script waits for a ``step_*.tmp`` folder (or, at random, a
fresh ``step_*`` rename) to appear and then sleeps a seeded random fraction of a typical save. Not CI: the
test suite runs a 3-kill version (tests/test_train.py).
"""
from __future__ import annotations

if __name__ == "__main__" and not __package__:  # run as python bench/X.py: import as python -m bench.X
    import _path  # noqa: F401  (bench/_path.py)

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time

from bench._args import positive_int

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARGS = ["--preset", "tiny", "--max-tokens", "256", "--global-batch", "4", "--max-steps", "4", "--progress", "false",
        "--lr", "2e-3"]


def env() -> dict:
    e = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    e.pop("TRITON_INTERPRET", None)
    return e


def train(args: list[str], out: str, timeout: float = 900) -> subprocess.CompletedProcess:
    p = subprocess.run([sys.executable, "-m", "s1fast.train", *args, "--output-dir", out], cwd=ROOT, env=env(),
                       capture_output=True, text=True, timeout=timeout)
    if p.returncode != 0:
        raise RuntimeError(f"run in {out} failed ({p.returncode}):\n{p.stderr[-3000:]}")
    return p


def _saving(root: str) -> bool:
    try:
        return any(d.endswith(".tmp") for d in os.listdir(root))
    except OSError:
        return False


def kill_during_save(args: list[str], out: str, rng: random.Random, max_delay: float) -> str:
    """Start the run, SIGKILL it at a random moment of one of its saves; 'killed' or 'finished'."""
    proc = subprocess.Popen([sys.executable, "-m", "s1fast.train", *args, "--output-dir", out], cwd=ROOT,
                            env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    root = os.path.join(out, "checkpoints")
    skip = rng.randrange(2)  # which of the next saves to hit
    seen = 0
    try:
        while proc.poll() is None:
            if _saving(root):
                if seen == skip:
                    time.sleep(rng.uniform(0, max_delay))
                    proc.send_signal(signal.SIGKILL)
                    proc.wait()
                    return "killed"
                seen += 1
                while _saving(root) and proc.poll() is None:
                    time.sleep(0.002)
            time.sleep(0.002)
        return "finished"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def newest_loads(out: str) -> str | None:
    """The newest complete checkpoint, loaded into a fresh model and optimizer in this process (None if none)."""
    import torch

    from s1fast import checkpoint
    from s1fast.model import build_model
    path = checkpoint.latest(os.path.join(out, "checkpoints"))
    if path is None:
        return None
    model = build_model("tiny-qwen2", device="cpu", dtype=torch.float32)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    state = checkpoint.load(path, model, opt)
    assert state["step"] == checkpoint.step_of(path)
    return path


def losses(out: str) -> dict:
    from s1fast.metrics import read_metrics
    return {r["step"]: r["loss"] for r in read_metrics(os.path.join(out, "metrics.jsonl"))}


def weights(out: str) -> dict:
    from safetensors.torch import load_file
    sd = {}
    for f in sorted(os.listdir(os.path.join(out, "final"))):
        if f.endswith(".safetensors"):
            sd.update(load_file(os.path.join(out, "final", f)))
    return sd


def same_run(ref: str, out: str) -> bool:
    a, b = weights(ref), weights(out)
    return losses(ref) == losses(out) and a.keys() == b.keys() and all(bool((a[k] == b[k]).all()) for k in a)


WORK_ENTRIES = ("reference", "killed")  # all a campaign writes in its folder


def campaign(work: str, kills: int, seed: int, ref: str | None = None, max_delay: float = 0.5,
             log=print) -> dict:
    """``kills`` SIGKILLs during saves of one run (``--save-every 1``), resumed each time, then finished."""
    rng = random.Random(seed)
    if ref is None:
        ref = os.path.join(work, WORK_ENTRIES[0])
        train(ARGS, ref)
    out = os.path.join(work, WORK_ENTRIES[1])
    args = ARGS + ["--save-every", "1"]
    done, loaded = 0, []
    while done < kills:
        what = kill_during_save(args, out, rng, max_delay)
        if what == "finished":  # every save of the run happened before a kill could land: start again
            for name in ("final", "checkpoints", "metrics.jsonl", "run.lock"):
                subprocess.run(["rm", "-rf", os.path.join(out, name)], check=True)
            continue
        done += 1
        loaded.append(newest_loads(out))
        log(f"kill {done}/{kills}: " + (f"newest complete checkpoint {loaded[-1]} loads" if loaded[-1] else
                                         "killed during the run's first save: no checkpoint yet, none half-written"))
    train(args, out)
    ok = same_run(ref, out)
    log(f"finished after {kills} kills: {'bitwise equal to' if ok else 'DIFFERENT from'} the uninterrupted run")
    return {"kills": kills, "seed": seed, "loaded": loaded, "bitwise_equal": ok}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.fault_injection", description=__doc__.split("\n\n")[0])
    ap.add_argument("--kills", type=positive_int, default=20, help="SIGKILLs, each during a save (default: 20)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the kill moments (default: 0)")
    ap.add_argument("--work", default="runs/fault_injection",
                    help="folder for the runs: new, empty, or an earlier campaign's (then emptied first)")
    ap.add_argument("--json", help="write the result here")
    ap.add_argument("--reference", help="an uninterrupted run of the same arguments to compare with (default: run one)")
    a = ap.parse_args(argv)
    other = sorted(set(os.listdir(a.work)) - set(WORK_ENTRIES)) if os.path.isdir(a.work) else []
    if other or (os.path.exists(a.work) and not os.path.isdir(a.work)):
        ap.error(f"--work {a.work}: holds other files ({', '.join(other[:3]) or 'not a folder'}), which emptying it "
                 "would delete; pass a new or empty folder")
    if a.reference and not os.path.isdir(os.path.join(a.reference, "final")):
        ap.error(f"--reference {a.reference}: no finished run there (no final/); omit it to run one")
    subprocess.run(["rm", "-rf", a.work], check=True)
    os.makedirs(a.work)
    from bench.env import environment, markdown_header
    t0 = time.time()
    res = campaign(a.work, a.kills, a.seed, ref=a.reference, log=lambda m: print(m, flush=True))
    res.update(seconds=round(time.time() - t0, 1), environment=environment(" ".join(["python -m bench.fault_injection",
                                                                                      *(argv or sys.argv[1:])])))
    print(markdown_header(res["environment"]), flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)
    return 0 if res["bitwise_equal"] else 1


if __name__ == "__main__":
    sys.exit(main())
