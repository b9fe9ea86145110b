"""The packing plans each stack runs (``s1fast.packing.make_plan``: mode "none" for s1's stack, "balanced"
for s1fast), and the per-micro-step costs of communication and the optimizer (docs/projection.md)."""
from __future__ import annotations

import math

from s1fast.hardware import GB, GPU
from s1fast.memory import Shape

from .assumptions import Assumptions


def projection_plan(lengths, s: Shape, *, world_size: int, micro_tokens: int, global_batch: int, epochs: int,
                    seed: int, mode: str, group_window: int | None = None):
    """The packing plan a stack runs on these lengths (``s1fast.packing.make_plan`` with the model's cost).
    Its ``stats["sync_straggler_factor"]`` is the straggler factor: FSDP synchronises every micro-step, so a
    step lasts the sum over its micro-steps of the slowest rank's work."""
    from s1fast import _native
    from s1fast.packing import CostModel, make_plan
    window = {} if group_window is None else dict(group_window=group_window)
    # the lengths files carry no supervised counts; they do not change the plan (only its loss weights)
    return make_plan(lengths, [x - 1 for x in lengths], world_size=world_size, micro_tokens=micro_tokens,
                     global_batch=global_batch, epochs=epochs, seed=seed, mode=mode, cost=CostModel(s.a, s.b),
                     backend="native" if _native.available() else "python", **window)


def micro_step_loads(plan, lengths, s: Shape) -> list[list[tuple[float, int]]]:
    """For every synchronised micro-step of the plan, each rank's (work in FLOPs, tokens)."""
    out = []
    for step in plan.steps:
        for m in range(max(len(r) for r in step.micro_batches)):
            out.append([(sum(s.cost(lengths[i]) for i in r[m]), sum(lengths[i] for i in r[m])) if m < len(r)
                        else (0.0, 0) for r in step.micro_batches])
    return out


# ----------------------------------------------------------------------------------------------------------
# Communication, optimizer, memory
# ----------------------------------------------------------------------------------------------------------
def comm_per_microstep(s: Shape, gpu: GPU, A: Assumptions, world: int, shard: int, reduce_bytes: int) -> dict:
    """Collectives of one micro-step (module docstring), before overlap: GB each GPU sends, GB each node
    sends over the network, and seconds."""
    n = s.params
    nvlink = gpu.nvlink_gbps * GB * A.link_efficiency
    nic = A.nic_gbit / 8 * GB * A.link_efficiency
    nodes = math.ceil(world / gpu.gpus_per_node)
    in_node = nodes == 1 or shard <= gpu.gpus_per_node
    bus = nvlink if in_node else min(nvlink, A.nics_per_node * nic)
    ring = (shard - 1) / shard * (2 * 2 * n + reduce_bytes * n)   # 2 bf16 gathers + 1 reduce-scatter
    net = 0.0 if in_node else ring
    seconds = ring / bus
    replicas = world // shard
    send = ring
    if replicas > 1:
        # HSDP: all-reduce of this GPU's gradient shard across replicas, over its own NIC. It uses other links
        # than the NVLink collectives and FSDP pipelines the two across units: the longer one sets the time.
        ar = 2 * (replicas - 1) / replicas * reduce_bytes * n / shard
        send, net, seconds = send + ar, net + ar * min(shard, gpu.gpus_per_node), max(seconds, ar / nic)
    return dict(gpu_send_gb=send / GB, node_network_gb=net / GB, bus_gbps=bus / GB, seconds=seconds)


def optimizer_seconds(s: Shape, gpu: GPU, A: Assumptions, shard: int) -> float:
    return 28.0 * s.params / shard / (gpu.hbm_tbps * 1e12 * A.hbm_efficiency)
