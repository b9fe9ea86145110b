"""The RL target on the embedded default (issue #16), in one invocation:

    python -m bench.rl_toy [--seeds 0,1,2] [--ranks 2] [--out bench/out/rl_toy]

1. The SFT start, unless ``--sft`` names one: ``s1fast.rl.config.TOY_SFT_COMMAND`` (the demo's run stopped at
   step 350 of its 550, the schedule unchanged), which still has room to improve.
2. Each seed: ``torchrun --nproc_per_node R -m s1fast.rl --preset toy --seed S --model <the start>``, timed
   whole (start-up, the held-out evaluations, generation, training, checkpoint and export).
3. A markdown table: held-out accuracy of the start (the run's own first evaluation) and after RL, the gain,
   minutes; the mean over seeds. Written to OUT/table.md with the environment, and printed; OUT/heldout.png
   plots each seed's held-out accuracy against the iteration.
"""
from __future__ import annotations

if __name__ == "__main__" and not __package__:  # run as python bench/X.py: import as python -m bench.X
    import _path  # noqa: F401  (bench/_path.py)

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import time

from bench._args import positive_int, whole_numbers
from bench.env import environment, markdown_header
from s1fast.metrics import read_metrics
from s1fast.rl.config import TOY_SFT_COMMAND

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def sft_args(output_dir: str) -> list[str]:
    """The trainer's flags of TOY_SFT_COMMAND, writing into ``output_dir``."""
    words = shlex.split(TOY_SFT_COMMAND)
    args = words[words.index("s1fast.train") + 1:]
    at = args.index("--output-dir")
    return args[:at] + args[at + 2:] + ["--output-dir", output_dir, "--progress", "false"]


def torchrun(ranks: int, module: str, args: list[str], log: str) -> float:
    """Run ``module`` on ``ranks`` processes; seconds taken. The log keeps its output; a failure shows its tail."""
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"), TOKENIZERS_PARALLELISM="false")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(ranks), "-m",
           module, *args]
    t0 = time.perf_counter()
    with open(log, "w") as f:
        p = subprocess.run(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT)
    if p.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed ({p.returncode}); its output: {log}\n"
                         + "".join(open(log).readlines()[-20:]))
    return time.perf_counter() - t0


def seed_row(out: str, seconds: float) -> dict:
    start = next(r["eval_accuracy"] for r in read_metrics(os.path.join(out, "metrics.jsonl"))
                 if r.get("eval_accuracy") is not None)
    final = json.load(open(os.path.join(out, "eval_final.json")))
    return {"start": start, "end": final["eval_accuracy"], "problems": final["eval_problems"],
            "iterations": final["iterations"], "minutes": seconds / 60}


def plot(out: str, seeds: list[int]) -> str:
    """Held-out accuracy against RL iteration, one line per seed: OUT/heldout.png."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=110)
    for s in seeds:
        d = os.path.join(out, f"seed{s}")
        ev = [(r["step"] - 1, r["eval_accuracy"]) for r in read_metrics(os.path.join(d, "metrics.jsonl"))
              if r.get("eval_accuracy") is not None]  # row k's evaluation is of the weights before iteration k
        final = json.load(open(os.path.join(d, "eval_final.json")))
        ev.append((final["iterations"], final["eval_accuracy"]))
        ax.plot([i for i, _ in ev], [100 * a for _, a in ev], "o-", label=f"seed {s}")
    ax.set_xlabel("RL iteration (8 prompts x 8 samples)")
    ax.set_ylabel("held-out accuracy, greedy (%)")
    ax.set_title("GRPO on the toy task from the step-350 SFT start")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = os.path.join(out, "heldout.png")
    fig.savefig(path)
    plt.close(fig)
    return path


def table(rows: dict[int, dict]) -> str:
    lines = ["| seed | held-out at the start | after RL | gain (points) | RL wall time (min) |",
             "|---:|---:|---:|---:|---:|"]
    for s, r in rows.items():
        lines.append(f"| {s} | {100 * r['start']:.1f}% | {100 * r['end']:.1f}% | {100 * (r['end'] - r['start']):+.1f} "
                     f"| {r['minutes']:.2f} |")
    n = len(rows)
    mean = lambda k: sum(r[k] for r in rows.values()) / n  # noqa: E731
    lines.append(f"| mean | {100 * mean('start'):.1f}% | {100 * mean('end'):.1f}% | "
                 f"{100 * (mean('end') - mean('start')):+.1f} | {mean('minutes'):.2f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.rl_toy", description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=whole_numbers, default=[0, 1, 2], help="RL seeds, comma-separated (default: 0,1,2)")
    p.add_argument("--ranks", type=positive_int, default=2, help="processes per run under torchrun (default: 2)")
    p.add_argument("--out", default=os.path.join(ROOT, "bench", "out", "rl_toy"),
                   help="folder for the runs and the table (default: bench/out/rl_toy)")
    p.add_argument("--sft", default="", help="an SFT start (Hugging Face folder); default: train it into OUT/sft")
    p.add_argument("rl_args", nargs=argparse.REMAINDER, help="after --: extra flags for s1fast.rl")
    a = p.parse_args(argv)
    os.makedirs(a.out, exist_ok=True)
    extra = [x for x in a.rl_args if x != "--"]
    sft = a.sft or os.path.join(a.out, "sft", "final")
    if not os.path.isdir(sft):
        secs = torchrun(a.ranks, "s1fast.train", sft_args(os.path.dirname(sft)), os.path.join(a.out, "sft.log"))
        print(f"[rl_toy] SFT start ({TOY_SFT_COMMAND}) in {secs / 60:.2f} min -> {sft}", flush=True)
    rows = {}
    for s in a.seeds:
        out = os.path.join(a.out, f"seed{s}")
        shutil.rmtree(out, ignore_errors=True)  # a fresh run each time (no resume of an older one)
        secs = torchrun(a.ranks, "s1fast.rl", ["--preset", "toy", "--model", sft, "--seed", str(s), "--output-dir",
                                               out, "--progress", "false", *extra],
                        os.path.join(a.out, f"seed{s}.log"))
        rows[s] = seed_row(out, secs)
        print(f"[rl_toy] seed {s}: {rows[s]}", flush=True)
    text = markdown_header(environment()) + "\n" + table(rows) + "\n"
    with open(os.path.join(a.out, "table.md"), "w") as f:
        f.write(text)
    print(text)
    print(f"[rl_toy] wrote {os.path.join(a.out, 'table.md')}, {plot(a.out, list(rows))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
