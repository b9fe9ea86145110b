"""One stack's projected run: its plan's straggler factor, the layers it checkpoints, the time of compute,
exposed communication and the optimizer, and its memory (docs/projection.md, "Time of a run")."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from s1fast.hardware import GPU
from s1fast.memory import (Shape, budget_gb, checkpoint_limit_gb, layers_to_checkpoint, max_fit_tokens,
                           memory_gb)

from .assumptions import Assumptions
from .plans import comm_per_microstep, micro_step_loads, optimizer_seconds, projection_plan
from .presets import Preset


MEMORY_TABLE_BLOCKS = (4096, 8192, 16384, 20000, 24576, 32768)


def memory_table(s: Shape, A: Assumptions, gpu: GPU, world: int) -> list[dict]:
    """Per-GPU memory of both stacks (FSDP full shard over ``world``) at several block sizes, with every
    layer checkpointed and with none: which block sizes fit."""
    budget = budget_gb(gpu.memory_gb, A)
    rows = []
    for stack in ("reference", "s1fast"):
        for L in MEMORY_TABLE_BLOCKS:
            m = memory_gb(s, A, stack=stack, tokens=L, shard=world)
            m0 = memory_gb(s, A, stack=stack, tokens=L, shard=world, ckpt_layers=0)
            rows.append(dict(stack=stack, tokens=L, **{k: round(v, 2) for k, v in m.items()},
                             peak_no_ckpt=round(m0["peak"], 2), fits=m["peak"] <= budget,
                             fits_no_ckpt=m0["peak"] <= budget, fit=_fit(m["peak"], budget, gpu.memory_gb),
                             fit_no_ckpt=_fit(m0["peak"], budget, gpu.memory_gb)))
    return rows


# ----------------------------------------------------------------------------------------------------------
# Runs
# ----------------------------------------------------------------------------------------------------------
@dataclass
class Run:
    stack: str
    block: int
    gpus: int
    sharding: str
    ckpt_layers: int           # decoder layers with activation checkpointing
    steps: int
    micro_steps: int
    straggler: float
    hfu: float                 # hardware FLOPs (recompute included) / peak
    mfu: float                 # model FLOPs / peak
    compute_min: float
    balanced_compute_min: float
    comm_exposed_min: float
    optimizer_min: float
    minutes: float
    peak_tokens: int           # longest pack (tokens on one rank in one micro-step) this data gives
    peak_memory_gb: float      # at peak_tokens
    memory_at_block_gb: float  # at a full block, every layer checkpointed: fits any data at this block
    memory_budget_gb: float
    fits: bool                 # peak within the budget (device memory less the runtime reserve)
    fit: str                   # "yes", "edge" (only within the reserve: the model cannot call it) or "OOM"
    max_fit_tokens: int        # most tokens on one rank that fit, every layer checkpointed
    memory: dict = field(repr=False)
    ckpt_mean: float = 0.0     # adaptive checkpointing: mean layers checkpointed on the slowest rank


def _check_batch(stack: str, world: int, global_batch: int) -> None:
    if stack == "reference" and global_batch % world:
        raise SystemExit(f"s1's stack runs one sequence per GPU: the global batch ({global_batch}) must be a "
                         f"multiple of --gpus ({world}); pick --gpus from the divisors of {global_batch}")


def _fit(peak: float, budget: float, device: float) -> str:
    return "yes" if peak <= budget else ("edge" if peak <= device else "OOM")


def layer_fraction(s: Shape, lens) -> float:
    """The share of the training FLOPs (per token, over these lengths) spent in the decoder layers, attention
    included; the rest is the lm_head, which sits outside the checkpointed layers."""
    head = 6.0 * s.vocab * s.h
    layers = s.a - head + s.b * sum(x * x for x in lens) / sum(lens)
    return layers / (layers + head)


def recompute_factor(s: Shape, lens, ckpt_layers: int) -> float:
    """Hardware FLOPs / model FLOPs: a checkpointed layer runs its forward (1/3 of its work) twice."""
    return 1 + layer_fraction(s, lens) * ckpt_layers / s.layers / 3


@dataclass
class _Setup:
    """Everything about a run that does not depend on the assumed efficiency."""
    stack: str
    block: int
    world: int
    lens: list
    work: float
    steps: int
    straggler: float
    micro: int
    peak_tokens: int
    loads: list = field(default_factory=list, repr=False)  # micro_step_loads of the plan


def _setup(stack: str, lengths, preset: Preset, block: int, world: int, gpu: GPU, A: Assumptions,
           s: Shape) -> _Setup:
    _check_batch(stack, world, preset.global_batch)
    lens = [min(x, block) for x in lengths]
    work = preset.epochs * sum(s.cost(x) for x in lens)
    pack_cap = block
    if stack != "reference":
        # s1fast caps a pack at what fits in memory (every layer checkpointed, headroom kept), never below
        # the longest sequence, which must stay whole: beyond that the run does not fit, and says so.
        limit = checkpoint_limit_gb(gpu.memory_gb, A)
        pack_cap = max(max(lens), max_fit_tokens(s, A, stack=stack, shard=world, limit_gb=limit))
    plan = projection_plan(lens, s, world_size=world, micro_tokens=pack_cap, global_batch=preset.global_batch,
                      epochs=preset.epochs, seed=A.seed, mode="none" if stack == "reference" else "balanced",
                      group_window=None if stack == "reference" else A.group_window)
    ps = plan.stats
    steps = preset.epochs * math.ceil(len(lens) / preset.global_batch)
    return _Setup(stack, block, world, lens, work, steps, ps["sync_straggler_factor"], ps["micro_steps_per_rank"],
                  ps["max_micro_tokens"], micro_step_loads(plan, lens, s))


def adaptive_recompute(st: _Setup, s: Shape, A: Assumptions, *, shard: int, limit_gb: float) -> tuple[float, float]:
    """(effective recompute factor, mean layers checkpointed on the slowest rank) when every rank checkpoints,
    per micro-step, only the first layers its own tokens need. FSDP's per-layer collectives couple the ranks
    layer by layer, so a micro-step is charged, layer by layer, the slowest rank's time at that layer (a
    checkpointed layer costs 4/3 of its work, its forward running twice), plus the slowest lm_head: the
    sum of maxima, which is never less than the slowest rank's total."""
    cache: dict[int, int] = {}

    def k_of(tokens):
        if tokens not in cache:
            k = layers_to_checkpoint(s, A, tokens=tokens, shard=shard, limit_gb=limit_gb)
            cache[tokens] = s.layers if k is None else k
        return cache[tokens]
    in_layers = layer_fraction(s, st.lens)
    plain = timed = ks = 0.0
    for ranks in st.loads:
        plain += max(w for w, _ in ranks)
        per_layer = sorted(((w * in_layers / s.layers, k_of(n)) for w, n in ranks), key=lambda x: -x[1])
        # layer i: max over ranks of c_r * (4/3 if i < k_r else 1); ranks sorted by k, largest first
        t, best_ckpt, j = max(w for w, _ in ranks) * (1 - in_layers), 0.0, 0
        slowest = max(c for c, _ in per_layer)
        for i in reversed(range(s.layers)):  # from the last layer down, more ranks checkpoint layer i
            while j < len(per_layer) and per_layer[j][1] > i:
                best_ckpt = max(best_ckpt, per_layer[j][0])
                j += 1
            t += max(slowest, best_ckpt * 4 / 3)
        timed += t
        ks += max(k for _, k in per_layer)
    return timed / plain, ks / max(1, len(st.loads))


def _timed(st: _Setup, s: Shape, gpu: GPU, A: Assumptions, *, shard: int, sharding: str, ckpt_layers: int,
           hfu: float, adaptive_limit_gb: float | None = None) -> Run:
    """``adaptive_limit_gb``: each micro-step checkpoints only the layers its tokens need within this limit
    (``ckpt_layers`` is then the count at the longest pack, and ``ckpt_mean`` the mean on the slowest rank)."""
    peak = gpu.peak_tflops * 1e12
    ckpt_mean = float(ckpt_layers)
    if adaptive_limit_gb is None:
        mfu = hfu / recompute_factor(s, st.lens, ckpt_layers)
    else:
        factor, ckpt_mean = adaptive_recompute(st, s, A, shard=shard, limit_gb=adaptive_limit_gb)
        mfu = hfu / factor
    balanced = st.work / (st.world * peak * mfu)
    compute = st.straggler * balanced
    comm_ms = comm_per_microstep(s, gpu, A, st.world, shard, 2 if st.stack == "reference" else 4)["seconds"]
    exposed = st.micro * (max(0.0, comm_ms - compute / st.micro) + comm_ms * 2 / (s.layers + 2))
    opt = st.steps * optimizer_seconds(s, gpu, A, shard)
    mem = memory_gb(s, A, stack=st.stack, tokens=st.peak_tokens, shard=shard, ckpt_layers=ckpt_layers)
    at_block = memory_gb(s, A, stack=st.stack, tokens=st.block, shard=shard)["peak"]
    budget = budget_gb(gpu.memory_gb, A)
    return Run(st.stack, st.block, st.world, sharding, ckpt_layers, st.steps, st.micro, st.straggler, hfu, mfu,
               compute / 60, balanced / 60, exposed / 60, opt / 60, (compute + exposed + opt) / 60,
               st.peak_tokens, mem["peak"], at_block, budget, mem["peak"] <= budget,
               _fit(mem["peak"], budget, gpu.memory_gb),
               max_fit_tokens(s, A, stack=st.stack, shard=shard, limit_gb=budget), mem, ckpt_mean)


def project_run(stack: str, s: Shape, lengths, preset: Preset, *, block: int, world: int, gpu: GPU,
                A: Assumptions, hfu: float | None = None, mfu: float | None = None, all_checkpointed: bool = False,
                _st: _Setup | None = None) -> Run:
    """One stack's projected run. Give the efficiency as ``hfu`` or (s1fast only) a fixed ``mfu``.

    The reference is FSDP full shard with every layer checkpointed (s1's scripts). s1fast tries FSDP full
    shard and, on several nodes, HSDP (shard inside a node: gathers on NVLink); for each it checkpoints the
    fewest layers that keep the longest pack of the plan within the memory budget less the headroom (the
    plan is made before training, so its longest pack is known), and keeps the faster configuration.
    ``all_checkpointed``: s1fast checkpoints every layer as s1's stack does.
    """
    st = _st or _setup(stack, lengths, preset, block, world, gpu, A, s)
    if stack == "reference":
        return _timed(st, s, gpu, A, shard=world, sharding="FSDP full shard", ckpt_layers=s.layers, hfu=hfu)
    limit = checkpoint_limit_gb(gpu.memory_gb, A)
    shards = [(world, "FSDP full shard")]
    g = gpu.gpus_per_node
    if world > g and world % g == 0:
        shards.append((g, f"HSDP {g}x{world // g}"))
    best = None
    # adaptive checkpointing changes the time only where an efficiency (HFU) is assumed: a fixed MFU is an
    # end result that already includes whatever recompute the run does
    adaptive = A.adaptive_checkpointing and mfu is None and not all_checkpointed
    for shard, name in shards:
        k = layers_to_checkpoint(s, A, tokens=st.peak_tokens, shard=shard, limit_gb=limit)
        if k is None:
            continue
        k = s.layers if all_checkpointed else k
        h = hfu if mfu is None else mfu * recompute_factor(s, st.lens, k)
        r = _timed(st, s, gpu, A, shard=shard, sharding=name, ckpt_layers=k, hfu=h,
                   adaptive_limit_gb=limit if adaptive else None)
        if best is None or r.minutes < best.minutes:
            best = r
    if best is None:  # nothing fits: report full shard, every layer checkpointed, marked as not fitting
        h = hfu if mfu is None else mfu * recompute_factor(s, st.lens, s.layers)
        best = _timed(st, s, gpu, A, shard=world, sharding="FSDP full shard", ckpt_layers=s.layers, hfu=h)
    return best
