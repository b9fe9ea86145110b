"""Every number the projection assumes rather than derives; each is a flag of ``python -m s1fast.project``, but
the calibration anchor (the public s1 figure), which is a fact, not an assumption."""
from __future__ import annotations

from dataclasses import dataclass

from s1fast.memory import MEMORY_HEADROOM, RUNTIME_RESERVE_GB


@dataclass(frozen=True)
class Assumptions:
    """Every number the projection assumes rather than derives. Each is a command-line flag, but ``calib_*``."""
    nic_gbit: float = 400.0            # per NIC (InfiniBand NDR), one NIC per GPU
    nics_per_node: int = 8
    link_efficiency: float = 0.8       # achieved / nominal bandwidth of NVLink and NICs in collectives
    hbm_efficiency: float = 0.7        # achieved / nominal HBM bandwidth in the optimizer step
    runtime_reserve_gb: float = RUNTIME_RESERVE_GB # CUDA context, NCCL buffers, allocator fragmentation
    memory_headroom: float = MEMORY_HEADROOM # s1fast keeps this fraction of the budget free when it picks checkpointing
    loss_chunk: int | None = None      # tokens per chunk of the fused loss (None: its GPU default, C*V*6 <= 2 GiB)
    s1fast_mfu: float | None = None    # None: anchored (reference HFU x torchtitan's compile gain)
    seed: int = 0                      # order of the sequences in the plans
    group_window: int | None = None    # s1fast's plan: steps per grouping window (None: the planner's default)
    adaptive_checkpointing: bool = True  # s1fast checkpoints, per micro-step, only the layers its tokens need
    #                                      (train --checkpoint-budget-gb); False: the longest pack's count always
    calib_minutes: float = 26.0        # the public s1 figure
    calib_steps: int = 315
    calib_gpus: int = 16
