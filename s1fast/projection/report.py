"""The whole projection of one preset as a JSON-able dict (:func:`project`), its text report and its plot."""
from __future__ import annotations

import dataclasses
import os
from dataclasses import asdict

from s1fast.hardware import GB, GPUS
from s1fast.memory import model_shape

from .assumptions import Assumptions
from .calibration import (MEGATRON_BEST_MFU, TORCHTITAN_COMPILED, TORCHTITAN_PLAIN, anchored_s1fast_hfu,
                          calibrate)
from .plans import comm_per_microstep
from .presets import CALIBRATION_MODEL, get_preset, preset_lengths
from .runs import _setup, memory_table, project_run


def project(preset_name: str, *, gpus: int | None = None, gpu_name: str = "h100", lengths_path: str | None = None,
            model: str = CALIBRATION_MODEL, A: Assumptions = Assumptions()) -> dict:
    """The whole projection for one preset, as a JSON-able dict (see :func:`format_report`).

    ``model`` other than the calibration's (Qwen2.5-32B-Instruct) assumes the same hardware efficiency."""
    preset = get_preset(preset_name)
    gpu = GPUS[gpu_name]
    world = preset.gpus if gpus is None else gpus
    if world < 1:
        raise SystemExit(f"--gpus must be at least 1, got {world}")
    lengths, path = preset_lengths(preset, lengths_path)
    calib = calibrate(A, gpu, lengths if preset_name == "s1" else None)
    s = model_shape(model)
    blocks = sorted(set(preset.blocks) | {preset.s1fast_block})
    setups = {(stack, blk): _setup(stack, lengths, preset, blk, world, gpu, A, s)
              for blk in blocks for stack in ("reference", "s1fast")}

    def fast(blk, **eff):
        return project_run("s1fast", s, lengths, preset, block=blk, world=world, gpu=gpu, A=A,
                           _st=setups[("s1fast", blk)], **eff)

    def fast_anchored(blk):
        if A.s1fast_mfu is not None:
            return fast(blk, mfu=A.s1fast_mfu)
        r = fast(blk, hfu=anchored_s1fast_hfu(calib["reference_hfu"]))
        return r if r.mfu <= MEGATRON_BEST_MFU else fast(blk, mfu=MEGATRON_BEST_MFU)

    runs = []
    for blk in blocks:
        runs.append(project_run("reference", s, lengths, preset, block=blk, world=world, gpu=gpu, A=A,
                                hfu=calib["reference_hfu"], _st=setups[("reference", blk)]))
        runs.append(fast_anchored(blk))
    ref = next(r for r in runs if r.stack == "reference" and r.block == preset.blocks[0])
    head = next(r for r in runs if r.stack == "s1fast" and r.block == preset.s1fast_block)
    blk = preset.s1fast_block
    sens = {"reference HFU, no kernel gain": fast(blk, hfu=calib["reference_hfu"]), "anchored": head,
            "anchored, every layer checkpointed": fast(blk, hfu=anchored_s1fast_hfu(calib["reference_hfu"]),
                                                       all_checkpointed=True),
            "anchored, the longest pack's layers checkpointed at every step":
                project_run("s1fast", s, lengths, preset, block=blk, world=world, gpu=gpu,
                            A=dataclasses.replace(A, adaptive_checkpointing=False), _st=setups[("s1fast", blk)],
                            hfu=anchored_s1fast_hfu(calib["reference_hfu"])),
            "torchtitan compiled": fast(blk, mfu=0.39), "Megatron low": fast(blk, mfu=0.41),
            "Megatron best": fast(blk, mfu=MEGATRON_BEST_MFU)}
    sens = {k: dict(mfu=r.mfu, minutes=r.minutes) for k, r in sens.items()}
    comm = []
    g = gpu.gpus_per_node
    options = [(world, "FSDP full shard")] + ([(g, f"HSDP {g}x{world // g}")] if world > g and world % g == 0 else [])
    for stack, rb, run in (("reference", 2, ref), ("s1fast", 4, head)):
        for shard, name in options:
            c = comm_per_microstep(s, gpu, A, world, shard, rb)
            comm.append(dict(stack=stack, sharding=name, reduce_bytes=rb, **c, states_gb=16 * s.params / shard / GB,
                             compute_seconds=run.compute_min * 60 / run.micro_steps))
    target = preset.target_minutes
    need = None  # MFU s1fast would need to reach the target; None when there is none or 100% does not
    if target is not None and fast(blk, mfu=1.0).minutes <= target:
        lo, hi = 1e-3, 1.0
        for _ in range(50):
            mid = (lo + hi) / 2
            lo, hi = (lo, mid) if fast(blk, mfu=mid).minutes <= target else (mid, hi)
        need = hi
    return dict(
        preset=preset.name, gpus=world, gpu=gpu.name, lengths_file=path,
        lengths_note=preset.note if lengths_path is None else "given with --lengths",
        rows=len(lengths), mean_tokens=sum(lengths) / len(lengths), max_tokens=max(lengths),
        model=s.name, params=s.params, global_batch=preset.global_batch, epochs=preset.epochs,
        assumptions=asdict(A) | dict(nvlink_gbps=gpu.nvlink_gbps, peak_tflops=gpu.peak_tflops,
                                     memory_gb=round(gpu.memory_gb, 1), hbm_tbps=gpu.hbm_tbps),
        calibration=calib, s1fast_mfu=head.mfu, s1fast_hfu=head.hfu,
        runs=[asdict(r) for r in runs],
        reference_minutes=ref.minutes, s1fast_minutes=head.minutes, speedup=ref.minutes / head.minutes,
        peak_memory_gb=head.peak_memory_gb, peak_memory_at_block_gb=head.memory_at_block_gb,
        reference_peak_memory_gb=ref.peak_memory_gb, target_minutes=target,
        mfu_needed_for_target=need, sensitivity=sens, memory_table=memory_table(s, A, gpu, world),
        communication=comm,
    )


def _table(cols, rows) -> list[str]:
    """Text table: ``cols`` are (header, width, row -> text); text columns (TEXT_HEADERS) align left."""
    def line(cells):
        return "".join(f"{c:<{w}}" if h in TEXT_HEADERS else f"{c:>{w}}"
                       for c, (h, w, _) in zip(cells, cols)).rstrip()
    head = line([h for h, _, _ in cols])
    return [head, "-" * len(head)] + [line([f(r) for _, _, f in cols]) for r in rows]


TEXT_HEADERS = {"stack", "sharding", " sharding", " fits", "  fits (ckpt / none)"}


RUN_COLUMNS = [
    ("stack", 10, lambda r: r["stack"]), ("block", 6, lambda r: str(r["block"])),
    (" sharding", 17, lambda r: " " + r["sharding"]),
    ("ckpt", 8, lambda r: str(r["ckpt_layers"]) + (f"/{r['ckpt_mean']:.0f}" if r["ckpt_mean"] != r["ckpt_layers"]
                                                    else "")),
    ("steps", 6, lambda r: str(r["steps"])), ("strag", 6, lambda r: f"{r['straggler']:.2f}"),
    ("MFU", 7, lambda r: f"{r['mfu']:.1%}"), ("compute", 8, lambda r: f"{r['compute_min']:.2f}"),
    ("comm", 6, lambda r: f"{r['comm_exposed_min']:.2f}"), ("optim", 6, lambda r: f"{r['optimizer_min']:.2f}"),
    ("total", 7, lambda r: f"{r['minutes']:.2f}"), ("pack", 7, lambda r: str(r["peak_tokens"])),
    ("mem GB", 7, lambda r: f"{r['peak_memory_gb']:.1f}"), ("@block", 7, lambda r: f"{r['memory_at_block_gb']:.1f}"),
    ("max fit", 8, lambda r: str(r["max_fit_tokens"])), (" fits", 6, lambda r: " " + r["fit"]),
]
COMM_COLUMNS = [
    ("stack", 10, lambda c: c["stack"]), ("sharding", 17, lambda c: c["sharding"]),
    ("reduce", 7, lambda c: "bf16" if c["reduce_bytes"] == 2 else "fp32"),
    ("GPU GB", 8, lambda c: f"{c['gpu_send_gb']:.1f}"), ("net GB", 8, lambda c: f"{c['node_network_gb']:.1f}"),
    ("bus GB/s", 9, lambda c: f"{c['bus_gbps']:.0f}"), ("comm s", 8, lambda c: f"{c['seconds']:.2f}"),
    ("compute s", 10, lambda c: f"{c['compute_seconds']:.2f}"), ("states GB", 10, lambda c: f"{c['states_gb']:.1f}"),
]
MEMORY_COLUMNS = [
    ("stack", 10, lambda m: m["stack"]), ("tokens", 7, lambda m: str(m["tokens"])),
    ("states", 8, lambda m: f"{m['states']:.1f}"), ("saved", 7, lambda m: f"{m['saved_activations']:.1f}"),
    ("loss", 7, lambda m: f"{m['loss_phase']:.1f}"), ("layer", 7, lambda m: f"{m['layer_phase']:.1f}"),
    ("fp32 logits", 12, lambda m: f"{m['fp32_logits_full']:.1f}"), ("peak", 7, lambda m: f"{m['peak']:.1f}"),
    ("no ckpt", 9, lambda m: f"{m['peak_no_ckpt']:.1f}"),
    ("  fits (ckpt / none)", 20, lambda m: f"  {m['fit']} / {m['fit_no_ckpt']}"),
]


def format_report(p: dict) -> str:
    c, A = p["calibration"], p["assumptions"]
    out = [f"PROJECTED (arithmetic, not measured): preset {p['preset']} on {p['gpus']} x {p['gpu']}, "
           f"{p['model']} ({p['params'] / 1e9:.2f}B params), global batch {p['global_batch']}, {p['epochs']} epochs",
           f"lengths: {p['lengths_file']} ({p['rows']} rows, mean {p['mean_tokens']:.0f}, max {p['max_tokens']}; "
           f"{p['lengths_note']})",
           "",
           f"calibration: s1 = {A['calib_steps']} steps in {A['calib_minutes']:g} min on {A['calib_gpus']} GPUs "
           f"({c['seconds_per_step']:.2f} s/step) implies",
           f"  end-to-end MFU {c['end_to_end_mfu']:.1%} (all model FLOPs / all GPU time);",
           f"  on the busiest rank {c['reference_mfu']:.1%} MFU = {c['reference_hfu']:.1%} HFU (checkpoint recompute "
           f"counted), once the straggler factor {c['straggler']:.2f}, exposed comm {c['comm_exposed_min']:.2f} min "
           f"and optimizer {c['optimizer_min']:.2f} min are taken out",
           f"s1fast: HFU {p['s1fast_hfu']:.1%} = reference HFU x torchtitan's compile gain "
           f"{TORCHTITAN_COMPILED:.0f}/{TORCHTITAN_PLAIN:.0f} (MFU capped at Megatron's {MEGATRON_BEST_MFU:.0%}) "
           "unless --s1fast-mfu; MFU then follows from the layers it checkpoints",
           ""]
    out += _table(RUN_COLUMNS, p["runs"])
    out += [f"(minutes; ckpt = layers checkpointed (A/B: A at the longest pack, B on average per micro-step, "
            f"with adaptive checkpointing); pack = longest pack on one rank; mem GB = peak there; "
            f"@block = at a full block with every layer checkpointed; max fit = most tokens per rank that fit "
            f"with every layer checkpointed; budget {p['runs'][0]['memory_budget_gb']:.1f} GB; edge = over the "
            f"budget but within the device's {A['memory_gb']} GB)", "",
            "communication per micro-step, before overlap (GB sent per GPU, GB per node over the network):"]
    out += _table(COMM_COLUMNS, p["communication"])
    out += ["(compute s = the busiest rank's compute in one micro-step of that stack's projected run; FSDP "
            "overlaps comm with it. states = fp32 weights + gradients + AdamW moments per GPU)", "",
            f"memory per GPU (GB), FSDP full shard over {p['gpus']} GPUs, tokens on the rank = block:"]
    out += _table(MEMORY_COLUMNS, p["memory_table"])
    out += ["(saved = checkpointed layer inputs; loss / layer = the two phases' transient memory; "
            "peak = states + saved + the larger phase)", "",
            f"reference {p['reference_minutes']:.1f} min -> s1fast {p['s1fast_minutes']:.1f} min "
            f"({p['speedup']:.2f}x)",
            "s1fast minutes by efficiency: " + ", ".join(f"{k} (MFU {v['mfu']:.0%}): {v['minutes']:.1f}"
                                                        for k, v in p["sensitivity"].items())]
    t = p["target_minutes"]
    if t is not None:
        out += [f"target {t:g} min: " + ("met" if p["s1fast_minutes"] <= t else "NOT met") + "; MFU s1fast would "
                "need for it: " + (f"{p['mfu_needed_for_target']:.1%}" if p["mfu_needed_for_target"] else "unreachable")]
    out += ["", "assumptions: " + ", ".join(f"{k}={v}" for k, v in A.items())]
    return "\n".join(out)


def plot(p: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    runs = p["runs"]
    labels = [f"{r['stack']}\n{r['block']}" for r in runs]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.5))
    x = range(len(runs))
    bal = [r["balanced_compute_min"] for r in runs]
    strag = [r["compute_min"] - r["balanced_compute_min"] for r in runs]
    comm = [r["comm_exposed_min"] + r["optimizer_min"] for r in runs]
    ax1.bar(x, bal, label="compute (balanced)")
    ax1.bar(x, strag, bottom=bal, label="straggler wait")
    ax1.bar(x, comm, bottom=[u + v for u, v in zip(bal, strag)], label="exposed comm + optimizer")
    if p["target_minutes"] is not None:
        ax1.axhline(p["target_minutes"], color="k", ls="--", lw=1, label="target")
    ax1.set_xticks(list(x), labels)
    ax1.set_ylabel("minutes (PROJECTED)")
    ax1.set_title(f"{p['preset']}: {p['gpus']} x {p['gpu']}")
    ax1.legend(fontsize=8)
    keys = ("states", "saved_activations")
    bottom = [0.0] * len(runs)
    for k in keys:
        vals = [r["memory"][k] for r in runs]
        ax2.bar(x, vals, bottom=bottom, label=k)
        bottom = [u + v for u, v in zip(bottom, vals)]
    top = [max(r["memory"]["loss_phase"], r["memory"]["layer_phase"]) for r in runs]
    ax2.bar(x, top, bottom=bottom, label="max(loss phase, layer phase)")
    ax2.axhline(runs[0]["memory_budget_gb"], color="r", ls="--", lw=1, label="budget")
    ax2.set_xticks(list(x), labels)
    ax2.set_ylabel("GB per GPU (PROJECTED)")
    ax2.set_title("peak memory at the longest pack")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
