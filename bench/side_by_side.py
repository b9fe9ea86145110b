"""CPU side by side, in one invocation: s1fast against the stack s1 used (transformers + TRL SFTTrainer).

    python -m bench.side_by_side --steps 10 --ranks 2 --global-batch 8 --max-tokens 1024

Every stack trains the same tiny Qwen2-architecture model on the same token sequences and loss masks, for
the same steps, global batch, optimizer and schedule, each with ``--ranks`` processes under torchrun (gloo):
``trl`` (s1's stack: SFTTrainer, one sequence per device), ``trl_padding_free``, ``s1fast_none`` (s1fast with
s1's one-sequence-per-rank plan) and ``s1fast`` (the balanced plan). It records step times, tokens/s, peak RSS
of every rank and the loss per step into ``bench/out/`` (ignored by git) and prints a table for
bench/RESULTS.md. The step composition, the objective each stack optimises and what is timed:
docs/side_by_side.md.
"""
from __future__ import annotations

if __name__ == "__main__" and not __package__:  # run as python bench/X.py: import as python -m bench.X
    import _path  # noqa: F401  (bench/_path.py)

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import time

from bench._args import positive_int

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STACKS = ("trl", "trl_padding_free", "s1fast_none", "s1fast")
LABELS = {"trl": "s1's stack: TRL SFTTrainer, 1 seq/device + accumulation",
          "trl_padding_free": "TRL SFTTrainer, padding_free=True",
          "s1fast_none": "s1fast, --packing none (s1's plan)",
          "s1fast": "s1fast, --packing balanced"}


# ------------------------------------------------------------------------------------------- inputs
def choose_rows(steps: int, global_batch: int, available: int) -> tuple[int, int]:
    """(rows, epochs) with rows x epochs = steps x global_batch, rows a multiple of the global batch and as
    many as the sample has: the schedule's total step count is then exactly ``steps`` for every stack."""
    for epochs in range(1, steps + 1):
        if steps % epochs == 0 and (steps // epochs) * global_batch <= available:
            return steps // epochs * global_batch, epochs
    raise SystemExit(f"side_by_side: global batch {global_batch} is larger than the {available} rows of the sample")


def trl_examples(ds, ids) -> list[dict]:
    """TRL's pre-tokenised rows for examples ``ids`` of a token cache: the exact ids s1fast trains on and a
    completion mask that is 1 exactly where s1fast's labels are not -100 (TRL turns it into labels)."""
    from s1fast.data import IGNORE
    out = []
    for i in ids:
        x, y = ds[int(i)]
        out.append({"input_ids": [int(t) for t in x], "completion_mask": [int(v != IGNORE) for v in y]})
    return out


def trl_order(plan, per_device: int) -> list[int]:
    """Example ids in the order that makes a sequential sampler + accelerate's batch sharding deal the steps
    of ``plan`` (mode none) to the same ranks: accelerate gives rank r the global batches r, r+W, r+2W, ...
    of ``per_device`` examples each. per_device = 1: step by step, micro by micro, rank by rank.
    per_device = G / W (padding-free, no accumulation): step by step, rank by rank, all of that rank's examples."""
    order = []
    for step in plan.steps:
        ranks = step.micro_batches
        if per_device == 1:
            for m in range(len(ranks[0])):
                order.extend(r[m][0] for r in ranks)
        else:
            for r in ranks:
                order.extend(i for mb in r for i in mb)
    return order


def prepare_inputs(work: str, args) -> dict:
    """Data subset, token cache, the saved random init and both plans."""
    import torch

    from s1fast import model as modeling
    from s1fast.data import DEFAULT_DATA, DEFAULT_TOKENIZER, prepare, read_rows
    from s1fast.packing import CostModel, make_plan

    rows = [r for _, r in read_rows(DEFAULT_DATA)]
    n, epochs = choose_rows(args.steps, args.global_batch, len(rows))
    data = os.path.join(work, "data.jsonl")
    with open(data, "w") as f:
        for r in rows[:n]:
            f.write(json.dumps(r) + "\n")
    cache = os.path.join(work, "tokens")
    ds = prepare(data, "s1", DEFAULT_TOKENIZER, args.max_tokens, cache, "truncate", progress=False,
                 log=lambda *_: None)
    mcfg = modeling.CONFIGS[args.model]
    model_dir = os.path.join(work, "model")
    torch.manual_seed(args.seed)
    modeling.build_model(mcfg, device="cpu", dtype=torch.float32).save_pretrained(model_dir, DEFAULT_TOKENIZER)
    cost = CostModel.from_hf_config(mcfg.to_hf())
    kw = dict(world_size=args.ranks, micro_tokens=args.max_tokens, global_batch=args.global_batch, epochs=epochs,
              seed=args.seed, cost=cost, weighting="token")
    plans = {m: make_plan(ds.lengths, ds.supervised, mode=m, **kw) for m in ("none", "balanced")}
    assert len(plans["none"].steps) == args.steps, (len(plans["none"].steps), args.steps)
    return dict(data=data, cache=cache, ds=ds, model=model_dir, epochs=epochs, rows=n, plans=plans)


# ------------------------------------------------------------------------------------------- TRL worker
def trl_worker(cfg: dict) -> None:
    """One rank of a TRL run (under torchrun). Writes ``{out}.steps.rank{R}.json``."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from s1fast.data import TokenDataset

    torch.manual_seed(cfg["seed"])
    rank = int(os.environ.get("RANK", "0"))
    data = Dataset.from_list(trl_examples(TokenDataset(cfg["cache"]), cfg["order"]))
    model = AutoModelForCausalLM.from_pretrained(cfg["model"], dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(cfg["model"], local_files_only=True)
    args = sft_config(cfg, SFTConfig)
    record = {"step_end": [], "micro": [], "loss_marks": []}

    class Timer(TrainerCallback):
        def on_train_begin(self, *_a, **_k):
            record["begin"] = time.perf_counter()

        def on_step_end(self, *_a, **_k):
            record["step_end"].append(time.perf_counter())
            record["loss_marks"].append(len(record["micro"]))  # micro-batches done by the end of this step

    class Recording(SFTTrainer):
        def training_step(self, model, inputs, num_items_in_batch=None):
            # what this rank trains on, and its share of the step loss (TRL's scaled micro loss)
            shape = (int(inputs["input_ids"].numel()), int((inputs["labels"] != -100).sum()))
            loss = super().training_step(model, inputs, num_items_in_batch)
            record["micro"].append((*shape, float(loss)))
            return loss

    trainer = Recording(model=model, args=args, train_dataset=data, processing_class=tok, callbacks=[Timer()])
    record["dataset_rows"] = len(trainer.train_dataset)
    trainer.train()
    record["world"] = int(os.environ.get("WORLD_SIZE", "1"))
    with open(f"{cfg['out']}.steps.rank{rank}.json", "w") as f:
        json.dump(record, f)


def sft_config(cfg: dict, SFTConfig):
    """The SFTConfig of a run: s1's settings (recipe.md) at the benchmark's scale."""
    return SFTConfig(
        output_dir=cfg["output_dir"], per_device_train_batch_size=cfg["per_device"],
        gradient_accumulation_steps=cfg["accum"], num_train_epochs=1, max_steps=-1,
        learning_rate=cfg["lr"], lr_scheduler_type="cosine", warmup_steps=cfg["warmup"],
        adam_beta1=0.9, adam_beta2=0.95, adam_epsilon=1e-8, weight_decay=1e-4, max_grad_norm=1.0,
        optim="adamw_torch", seed=cfg["seed"], data_seed=cfg["seed"], train_sampling_strategy="sequential",
        completion_only_loss=True, padding_free=cfg["padding_free"], packing=False, max_length=cfg["max_length"],
        use_cpu=True, ddp_backend="gloo" if int(os.environ.get("WORLD_SIZE", "1")) > 1 else None, bf16=False,
        fp16=False, logging_steps=1, save_strategy="no",
        report_to="none", disable_tqdm=True, dataloader_num_workers=0, average_tokens_across_devices=True)


# ------------------------------------------------------------------------------------------- launching
def torchrun(ranks: int, module_args: list[str], rss_prefix: str, log: str, timeout: int) -> dict:
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    env.pop("TRITON_INTERPRET", None)  # the trainers' CPU paths, not the Triton interpreter
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(ranks),
           "-m", "bench.peak_rss", rss_prefix, "-m", *module_args]
    t0 = time.perf_counter()
    with open(log, "w") as f:
        p = subprocess.run(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT, timeout=timeout)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"side_by_side: {' '.join(cmd)} failed ({p.returncode}); see {log}:\n"
                         + open(log).read()[-4000:])
    rss = [json.load(open(f"{rss_prefix}.rank{r}.json"))["ru_maxrss_gb"] for r in range(ranks)]
    return {"wall_s": wall, "rss_gb": rss, "command": " ".join(cmd[1:])}


def run_s1fast(work: str, inp: dict, args, packing: str) -> dict:
    out = os.path.join(work, f"s1fast_{packing}")
    shutil.rmtree(out, ignore_errors=True)
    # the trainer tokenises into OUT/tokens; hand it the same cache so it is a cache hit (and identical ids)
    shutil.copytree(inp["cache"], os.path.join(out, "tokens"))
    flags = ["--model", inp["model"], "--data", inp["data"], "--recipe", "s1", "--max-tokens", str(args.max_tokens),
             "--policy", "truncate", "--epochs", str(inp["epochs"]), "--global-batch", str(args.global_batch),
             "--packing", packing, "--weighting", "token", "--lr", str(args.lr), "--warmup-ratio",
             str(args.warmup_ratio), "--beta1", "0.9", "--beta2", "0.95", "--eps", "1e-8", "--weight-decay", "1e-4",
             "--grad-clip", "1.0", "--dtype", "fp32", "--master-dtype", "fp32", "--seed", str(args.seed),
             "--device", "cpu", "--output-dir", out, "--resume", "never", "--export", "false", "--plot", "false",
             "--progress", "false", "--save-every", "0"]
    res = torchrun(args.ranks, ["s1fast.train", *flags], os.path.join(work, f"s1fast_{packing}.rss"),
                   os.path.join(work, f"s1fast_{packing}.log"), args.timeout)
    rows = {}
    for line in open(os.path.join(out, "metrics.jsonl")):
        r = json.loads(line)
        rows[r["step"]] = r
    rows = [rows[k] for k in sorted(rows)]
    res.update(loss=[r["loss"] for r in rows], step_time=[r["step_time"] for r in rows],
               tokens=[r["tokens"] for r in rows])
    return res


def run_trl(work: str, inp: dict, args, padding_free: bool) -> dict:
    name = "trl_padding_free" if padding_free else "trl"
    per_device = args.global_batch // args.ranks if padding_free else 1
    accum = 1 if padding_free else args.global_batch // args.ranks
    cfg = dict(cache=inp["cache"], model=inp["model"], order=trl_order(inp["plans"]["none"], per_device),
               per_device=per_device, accum=accum, lr=args.lr, warmup=math.ceil(args.warmup_ratio * args.steps),
               seed=args.seed, padding_free=padding_free,
               # TRL refuses max_length with padding_free and no packing; the rows are already cut to the block
               max_length=None if padding_free else args.max_tokens,
               output_dir=os.path.join(work, name), out=os.path.join(work, name))
    cfg_path = os.path.join(work, f"{name}.json")
    json.dump(cfg, open(cfg_path, "w"))
    res = torchrun(args.ranks, ["bench.side_by_side", "--trl-worker", cfg_path], os.path.join(work, f"{name}.rss"),
                   os.path.join(work, f"{name}.log"), args.timeout)
    recs = [json.load(open(f"{cfg['out']}.steps.rank{r}.json")) for r in range(args.ranks)]
    r0 = recs[0]
    ends = [r0["begin"]] + r0["step_end"]
    step_time = [b - a for a, b in zip(ends, ends[1:])]
    # each rank's micro losses sum to W x (its token-loss sum) / N_step (DDP then averages ranks): the step
    # loss is their mean over ranks
    loss, tokens, supervised = [], [], []
    for k in range(len(r0["loss_marks"])):
        micro = [m for r in recs for m in r["micro"][(r["loss_marks"][k - 1] if k else 0):r["loss_marks"][k]]]
        loss.append(sum(m[2] for m in micro) / len(recs))
        tokens.append(sum(m[0] for m in micro))
        supervised.append(sum(m[1] for m in micro))
    res.update(loss=loss, step_time=step_time, tokens=tokens, supervised_targets=supervised,
               dataset_rows=r0["dataset_rows"], micro_per_rank=[[m[0] for m in r["micro"]] for r in recs])
    return res


# ------------------------------------------------------------------------------------------- report
def summarize(res: dict) -> dict:
    st = res["step_time"]
    rest = st[1:] if len(st) > 1 else st
    total = sum(st)
    return {"median_step_s": statistics.median(rest), "mean_step_s": statistics.fmean(rest),
            "first_step_s": st[0], "sum_step_s": total, "tokens": int(sum(res["tokens"])),
            "tokens_per_s": sum(res["tokens"][1:]) / sum(rest) if len(st) > 1 else sum(res["tokens"]) / total,
            "peak_rss_gb_per_rank": res["rss_gb"], "peak_rss_gb_max": max(res["rss_gb"]), "wall_s": res["wall_s"],
            "final_loss": res["loss"][-1]}


def loss_gap(a: list[float], b: list[float]) -> float:
    return max(abs(x - y) / abs(y) for x, y in zip(a, b))


def plot(results: dict, path: str, title: str) -> None:
    """Loss per step of every stack, and below it each stack's relative gap to s1's stack (log scale)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator
    fig, (ax, gap) = plt.subplots(2, 1, figsize=(7, 6), sharex=True, gridspec_kw={"height_ratios": [3, 2]})
    styles = {"trl": ("-", "o", "C0"), "trl_padding_free": (":", "x", "C1"), "s1fast_none": ("--", "s", "C2"),
              "s1fast": ("-", "^", "C3")}
    ref = results["trl"]["loss"]
    for name, res in results.items():
        ls, mk, color = styles[name]
        steps = range(1, len(res["loss"]) + 1)
        ax.plot(steps, res["loss"], ls, marker=mk, color=color, label=LABELS[name], ms=4)
        if name != "trl":
            gap.semilogy(steps, [max(abs(x - y) / abs(y), 1e-12) for x, y in zip(res["loss"], ref)], ls, marker=mk,
                         color=color, ms=4)
    ax.set_ylabel("loss (per-token mean over the step)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    gap.set_ylabel("|loss - s1's stack| / loss")
    gap.set_xlabel("optimizer step")
    gap.xaxis.set_major_locator(MaxNLocator(integer=True))
    for a in (ax, gap):
        a.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown(report: dict) -> str:
    s = report["summary"]
    ref = s["trl"]["sum_step_s"]  # every stack trains the same tokens: the summed step times compare directly
    lines = ["| stack | median step (s) | mean step (s) | first step (s) | sum of steps (s) | process wall (s) | "
             "tokens/s | peak RSS per rank (GB) | final loss | max rel. loss gap vs TRL | "
             "s1's stack / this (sum of steps) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name in report["stacks"]:
        x = s[name]
        gap = report["loss_gap_vs_trl"].get(name)
        lines.append(f"| {LABELS[name]} | {x['median_step_s']:.3f} | {x['mean_step_s']:.3f} | "
                     f"{x['first_step_s']:.3f} | "
                     f"{x['sum_step_s']:.2f} | {x['wall_s']:.1f} | {x['tokens_per_s']:,.0f} | "
                     f"{' / '.join(f'{v:.2f}' for v in x['peak_rss_gb_per_rank'])} | {x['final_loss']:.4f} | "
                     f"{'-' if gap is None else f'{gap:.1e}'} | {ref / x['sum_step_s']:.2f}x |")
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m bench.side_by_side", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=positive_int, default=10, help="optimizer steps (= the schedule's total) [10]")
    ap.add_argument("--ranks", type=positive_int, default=2, help="processes per stack (torchrun, gloo, CPU) [2]")
    ap.add_argument("--global-batch", type=positive_int, default=8, help="sequences per optimizer step, all ranks [8]")
    ap.add_argument("--max-tokens", type=positive_int, default=1024, help="block size; longer examples are truncated [1024]")
    ap.add_argument("--model", default="tiny-qwen2", help="s1fast.model CONFIGS name of the random init [tiny-qwen2]")
    ap.add_argument("--lr", type=float, default=3e-3, help="peak learning rate (the tiny preset's) [3e-3]")
    ap.add_argument("--warmup-ratio", type=float, default=0.1, help="linear warmup fraction [0.1]")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--stacks", default=",".join(STACKS), help=f"comma list of {', '.join(STACKS)}")
    ap.add_argument("--work-dir", default=os.path.join(ROOT, "runs", "side_by_side"), help="scratch folder")
    ap.add_argument("--json", default=os.path.join(ROOT, "bench", "out", "side_by_side.json"))
    ap.add_argument("--png", default=os.path.join(ROOT, "bench", "out", "side_by_side_loss.png"))
    ap.add_argument("--timeout", type=positive_int, default=1800, help="seconds allowed per stack")
    ap.add_argument("--replot", default="", metavar="JSON", help="only redraw --png from a report JSON")
    ap.add_argument("--trl-worker", default="", help=argparse.SUPPRESS)
    return ap


def main(argv=None) -> int:
    ap = parser()
    args = ap.parse_args(argv)
    if args.replot:
        try:
            rep = json.load(open(args.replot))
        except (OSError, ValueError) as e:
            ap.error(f"--replot {args.replot}: cannot read a report JSON ({e})")
        c = rep["config"]
        plot(rep["per_step"], args.png, f"tiny-qwen2, {c['ranks']} ranks, global batch {c['global_batch']}, block "
                                        f"{c['max_tokens']}, {c['steps']} steps (2-core CPU)")
        return 0
    if args.trl_worker:
        trl_worker(json.load(open(args.trl_worker)))
        return 0
    stacks = [s for s in args.stacks.split(",") if s]
    bad = [s for s in stacks if s not in STACKS] + ([] if "trl" in stacks else ["(trl is the reference: include it)"])
    if bad:
        ap.error(f"--stacks: {', '.join(bad)}; choose from {', '.join(STACKS)}")
    if args.global_batch % args.ranks:
        ap.error(f"--global-batch {args.global_batch} must be a multiple of --ranks {args.ranks} (one sequence per "
                 "device with accumulation)")

    sys.path.insert(0, ROOT)
    from bench.env import environment, markdown_header
    env = environment()
    load_start = os.getloadavg()
    work = os.path.abspath(args.work_dir)
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    inp = prepare_inputs(work, args)
    runners = {"trl": lambda: run_trl(work, inp, args, False),
               "trl_padding_free": lambda: run_trl(work, inp, args, True),
               "s1fast_none": lambda: run_s1fast(work, inp, args, "none"),
               "s1fast": lambda: run_s1fast(work, inp, args, "balanced")}
    results = {}
    for name in stacks:
        print(f"[side_by_side] {name} ...", flush=True)
        results[name] = runners[name]()
        print(f"[side_by_side] {name}: {summarize(results[name])}", flush=True)
    load_end = os.getloadavg()

    plans = inp["plans"]
    ds = inp["ds"]
    expected_tokens = [sum(int(ds.lengths[i]) for r in st.micro_batches for mb in r for i in mb)
                       for st in plans["none"].steps]
    checks = {name: res["tokens"] == expected_tokens for name, res in results.items() if name != "s1fast"}
    report = {
        "env": env, "loadavg_start": load_start, "loadavg_end": load_end,
        "config": {"steps": args.steps, "ranks": args.ranks, "global_batch": args.global_batch,
                   "max_tokens": args.max_tokens, "model": args.model, "lr": args.lr,
                   "warmup_ratio": args.warmup_ratio, "seed": args.seed, "rows": inp["rows"], "epochs": inp["epochs"],
                   "tokens_per_epoch": int(ds.lengths.sum()), "objective": "per-token mean over the optimizer step"},
        "straggler_factor": {m: p.straggler_factor for m, p in plans.items()},
        "sync_straggler_factor": {m: p.sync_straggler_factor for m, p in plans.items()},
        "stacks": stacks,
        "summary": {n: summarize(r) for n, r in results.items()},
        "loss_gap_vs_trl": {n: loss_gap(r["loss"], results["trl"]["loss"]) for n, r in results.items()
                            if n not in ("trl", "s1fast")},
        "same_tokens_per_step_as_plan_none": checks,
        "per_step": {n: {k: r[k] for k in ("loss", "step_time", "tokens")} for n, r in results.items()},
        "commands": {n: r["command"] for n, r in results.items()},
    }
    s = report["summary"]
    report["headline"] = {n: s["trl"]["sum_step_s"] / s[n]["sum_step_s"] for n in stacks}
    report["markdown"] = markdown(report)
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(report, f, indent=1)
    plot(report["per_step"], args.png, f"tiny-qwen2, {args.ranks} ranks, global batch {args.global_batch}, block "
                                       f"{args.max_tokens}, {args.steps} steps (2-core CPU)")
    print(markdown_header(env))
    print(report["markdown"])
    print(f"straggler factor: none {plans['none'].straggler_factor:.3f}, balanced "
          f"{plans['balanced'].straggler_factor:.3f}; load average {load_start} -> {load_end}")
    print(f"wrote {args.json} and {args.png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
