"""``python -m s1fast.project`` (or ``-m s1fast.projection``): the projection's command line (docs/projection.md)."""
from __future__ import annotations

import argparse
import json
import sys

from s1fast.hardware import PROJECTED_GPUS

from .assumptions import Assumptions
from .presets import CALIBRATION_MODEL, PROJECTED
from .report import format_report, plot, project

DESCRIPTION = "Projection of a recipe's wall time and per-GPU memory on H100 / H200 GPUs: s1's stack against s1fast."


def main(argv=None) -> int:
    d = Assumptions()
    ap = argparse.ArgumentParser(prog="python -m s1fast.project", description=DESCRIPTION)
    ap.add_argument("--preset", choices=sorted(PROJECTED), default="s1",
                    help="the recipe: its model, data lengths, batch, epochs and GPU count (default: %(default)s)")
    ap.add_argument("--gpus", type=int, default=None, help="GPUs (default: the recipe's)")
    ap.add_argument("--gpu", choices=sorted(PROJECTED_GPUS), default="h100",
                    help="the GPU whose peaks (bf16 FLOP/s, HBM, NVLink) and memory the projection uses (default: %(default)s)")
    ap.add_argument("--model", default=CALIBRATION_MODEL,
                    help="a config name of s1fast.model.CONFIGS or a Hugging Face model folder (default: %(default)s)")
    ap.add_argument("--lengths", default=None, help="a file of token lengths, one integer per line (default: the recipe's bundled lengths)")
    ap.add_argument("--json", action="store_true", help="print the projection as JSON")
    ap.add_argument("--plot", default=None, metavar="OUT.png", help="also draw the projection to this PNG")
    ap.add_argument("--nic-gbit", type=float, default=d.nic_gbit, help="per NIC, Gbit/s (default: %(default)s)")
    ap.add_argument("--nics-per-node", type=int, default=d.nics_per_node, help="NICs per 8-GPU node (default: %(default)s)")
    ap.add_argument("--link-efficiency", type=float, default=d.link_efficiency,
                    help="achieved / nominal bandwidth of NVLink and NICs in collectives (default: %(default)s)")
    ap.add_argument("--hbm-efficiency", type=float, default=d.hbm_efficiency,
                    help="achieved / nominal HBM bandwidth in the optimizer step (default: %(default)s)")
    ap.add_argument("--runtime-reserve-gb", type=float, default=d.runtime_reserve_gb,
                    help="GB per GPU (1e9 bytes) held by the CUDA context, NCCL buffers and fragmentation "
                         "(default: %(default)s)")
    ap.add_argument("--memory-headroom", type=float, default=d.memory_headroom,
                    help="fraction of the memory budget s1fast keeps free when it picks checkpointing (default: %(default)s)")
    ap.add_argument("--loss-chunk", type=int, default=d.loss_chunk,
                    help="tokens per chunk of the fused loss (default: the GPU default, chunk x vocab x 6 B <= 2 GiB)")
    ap.add_argument("--s1fast-mfu", type=float, default=None, help="override the anchored MFU assumption (default: reference HFU x torchtitan's compile gain)")
    ap.add_argument("--seed", type=int, default=d.seed, help="order of the sequences in the plans (default: %(default)s)")
    ap.add_argument("--group-window", type=int, default=None,
                    help="s1fast's plan: steps per grouping window (1 keeps s1's random step composition; default: "
                         "the planner's)")
    ap.add_argument("--static-checkpointing", action="store_true",
                    help="s1fast checkpoints the longest pack's layer count at every micro-step (train "
                         "--checkpoint-layers K) instead of only what each micro-step's tokens need")
    args = ap.parse_args(argv)
    try:
        check(args)
        return run(args)
    except (ValueError, OSError) as e:
        why = f"{e.strerror}: {e.filename}" if isinstance(e, OSError) and e.filename else str(e)
    except SystemExit as e:
        if not isinstance(e.code, str):
            raise
        why = e.code
    print(f"error: {why}", file=sys.stderr)
    return 2


def check(args) -> None:
    """Refuse, before any arithmetic, an assumption the projection would divide by or could not mean."""
    for name, lo, hi, lo_open in (("nic_gbit", 0, None, True), ("nics_per_node", 1, None, False),
                                  ("link_efficiency", 0, 1, True), ("hbm_efficiency", 0, 1, True),
                                  ("s1fast_mfu", 0, 1, True), ("runtime_reserve_gb", 0, None, False),
                                  ("loss_chunk", 1, None, False), ("group_window", 1, None, False)):
        v = getattr(args, name)
        if v is None:
            continue
        if not (v > lo if lo_open else v >= lo) or (hi is not None and v > hi) or v != v:
            rng = f"in {'(' if lo_open else '['}{lo}, {hi}]" if hi is not None else f"{'>' if lo_open else '>='} {lo}"
            raise ValueError(f"--{name.replace('_', '-')} must be {rng}, got {v}")
    if not 0 <= args.memory_headroom < 1:
        raise ValueError(f"--memory-headroom must be in [0, 1), got {args.memory_headroom}")


def run(args) -> int:
    A = Assumptions(nic_gbit=args.nic_gbit, nics_per_node=args.nics_per_node, link_efficiency=args.link_efficiency,
                    hbm_efficiency=args.hbm_efficiency, runtime_reserve_gb=args.runtime_reserve_gb,
                    memory_headroom=args.memory_headroom,
                    loss_chunk=args.loss_chunk, s1fast_mfu=args.s1fast_mfu, seed=args.seed,
                    group_window=args.group_window, adaptive_checkpointing=not args.static_checkpointing)
    p = project(args.preset, gpus=args.gpus, gpu_name=args.gpu, lengths_path=args.lengths, model=args.model, A=A)
    if args.plot:
        plot(p, args.plot)
    print(json.dumps(p, indent=1) if args.json else format_report(p))
    return 0


if __name__ == "__main__":
    sys.exit(main())
