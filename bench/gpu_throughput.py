"""Stage "throughput" of ``bench/run_gpu.sh``: one-GPU training at the Qwen2.5-7B shape, one JSON file.

Runs ``python -m s1fast.train`` (random init, 32768-token packs of the bundled s1K sample, bf16 with fp32
master weights, ``--checkpoint-budget-gb -1``) and records tokens/s, MFU and the measured peak
(``torch.cuda.max_memory_allocated``) against the memory model's prediction for the same rank
(``bench.gpu_memory``). If the recipe's fp32 master weights do not fit (the 7B's states alone are 122 GB),
it records the error and runs again with ``--master-dtype bf16``.

    python -m bench.gpu_throughput --out OUT/throughput.json [--small]

``--small`` (the script's ``--dry-run``): the tiny model on the CPU with a budget in GB (peak = RSS there).
"""
from __future__ import annotations

if __name__ == "__main__" and not __package__:  # run as python bench/X.py: import as python -m bench.X
    import _path  # noqa: F401  (bench/_path.py)

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

import torch

from bench.gpu_memory import predicted_gib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_train(args: list[str], out_dir: str, timeout: float) -> tuple[list[dict], str]:
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), TOKENIZERS_PARALLELISM="false",
               PYTORCH_CUDA_ALLOC_CONF=os.environ.get("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True"))
    env.pop("TRITON_INTERPRET", None)
    cmd = [sys.executable, "-m", "s1fast.train", *args, "--output-dir", out_dir, "--progress", "false",
           "--export", "false", "--plot", "false", "--save-every", "0"]
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    log = (p.stdout + p.stderr)[-3000:]
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[1:])} exited {p.returncode}: {log[-1500:]}")
    return [json.loads(line) for line in open(os.path.join(out_dir, "metrics.jsonl"))], log


def summarise(rows: list[dict], model: str, tokens: int, cuda: bool, master: str) -> dict:
    steady = rows[1:] or rows  # the first step warms up (Triton compile, allocator)
    ckpt = max((r.get("checkpointed_layers", 0) for r in rows), default=None)
    pred = predicted_gib(model, tokens, ckpt_layers=ckpt)
    if master == "bf16":  # the model counts fp32 master weights and gradients (16 B/param); bf16: 8 B/param
        pred["peak"] -= pred["states"] / 2
        pred["states"] /= 2
    peak = max(r["peak_memory_gb"] for r in rows)
    return {"steps": len(rows), "tokens_per_s_median": statistics.median(r["tokens_per_s"] for r in steady),
            "mfu_median": (statistics.median(r["mfu"] for r in steady) if all(r["mfu"] for r in steady) else None),
            "step_time_median_s": statistics.median(r["step_time"] for r in steady),
            "losses": [r["loss"] for r in rows], "checkpointed_layers": ckpt,
            "measured_peak_gib": peak, "peak_kind": "torch.cuda.max_memory_allocated" if cuda else "CPU RSS (not comparable)",
            "model_prediction_gib": {k: round(v, 3) for k, v in pred.items()},
            "measured_over_model": peak / pred["peak"] if pred["peak"] else None}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--small", action="store_true", help="tiny model on the CPU (the --dry-run of bench/run_gpu.sh)")
    ap.add_argument("--model", default=None, help="default: Qwen2.5-7B-Instruct (tiny-qwen2 with --small)")
    ap.add_argument("--max-steps", type=int, default=None)
    ap.add_argument("--timeout", type=float, default=400.0, help="seconds allowed per training run")
    a = ap.parse_args(argv)
    cuda = torch.cuda.is_available() and not a.small
    model = a.model or ("tiny-qwen2" if a.small else "Qwen2.5-7B-Instruct")
    tokens = 256 if a.small else 32768
    steps = a.max_steps or (2 if a.small else 4)
    args = ["--model", model, "--recipe", "s1", "--max-tokens", str(tokens), "--policy", "truncate",
            "--global-batch", "2" if a.small else "4", "--epochs", "1", "--max-steps", str(steps),
            "--activation-checkpointing", "full", "--lr", "1e-5"]
    args += (["--device", "cuda", "--dtype", "bf16", "--checkpoint-budget-gb", "-1"] if cuda
             else ["--device", "cpu", "--dtype", "fp32", "--checkpoint-budget-gb", "2"])
    report = {"model": model, "tokens_per_pack": tokens, "command": "python -m s1fast.train " + " ".join(args),
              "runs": []}
    ok = False
    for master in ("fp32", "bf16"):
        run = {"master_dtype": master}
        try:
            with tempfile.TemporaryDirectory() as tmp:
                rows, log = run_train(args + ["--master-dtype", master], tmp, a.timeout)
            run.update(summarise(rows, model, tokens, cuda, master), log_tail=log[-600:])
            ok = True
        except Exception as e:
            run["error"] = f"{type(e).__name__}: {str(e)[-1500:]}"
        report["runs"].append(run)
        with open(a.out, "w") as f:
            json.dump(report, f, indent=1)
        print(json.dumps({k: v for k, v in run.items() if k != "log_tail"})[:1500], flush=True)
        if ok:
            break
    r = report["runs"][-1]
    if ok:
        mfu = f"{100 * r['mfu_median']:.1f}%" if r["mfu_median"] else "n/a"
        print(f"throughput {model} ({r['master_dtype']} master): {r['tokens_per_s_median']:.0f} tokens/s, MFU {mfu}, "
              f"peak {r['measured_peak_gib']:.2f} GiB vs model {r['model_prediction_gib']['peak']:.2f} GiB "
              f"({r['peak_kind']})")
    else:
        print(f"throughput {model}: every run failed; see throughput.json")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
