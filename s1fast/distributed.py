"""Process groups, device meshes and FSDP2 sharding, applied from outside the model.

One code path for every size: a plain ``python -m s1fast.train`` starts a one-process group, so
single-process and multi-process runs execute the same FSDP2 code. NCCL on CUDA, gloo on CPU.

Sharding (``shard_size``): 0 or the world size gives full sharding (FSDP) on a 1-D mesh. A smaller
``shard_size`` (GPUs per node) gives hybrid sharding (HSDP) on a 2-D mesh ``(replicate, shard)``:
parameters are all-gathered inside a node over NVLink and only the gradient all-reduce crosses the
network between nodes.

Loss scale: FSDP averages gradients over all ranks. s1fast's losses are already normalised for the
whole step (each token carries its share of the step's objective), so the gradient we want is the SUM
over ranks; ``grad_scale()`` (= world size) is multiplied into each rank's loss before backward.
"""
from __future__ import annotations

import datetime
import os
import sys

import torch
import torch.distributed as dist

from .config import ConfigError
from .cpu_allocator import keep_freed_memory


def init(device: str = "auto") -> tuple[torch.device, int, int]:
    """Start (or join) the process group; returns (device, rank, world_size)."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but torch sees no CUDA GPU; use --device cpu or auto")
    store = None
    if "RANK" not in os.environ:  # plain `python -m s1fast.train`: a group of one, on an in-process store (a
        # TCP port picked as "free" can be picked by a second run started at the same moment: both then hang)
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
        store = dist.HashStore()
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "cuda":
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
    else:
        dev = torch.device("cpu")
        keep_freed_memory()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device == "cuda" else "gloo", rank=rank, world_size=world, store=store,
                                timeout=datetime.timedelta(minutes=30), device_id=dev if device == "cuda" else None)
    return dev, rank, world


def make_mesh(device: torch.device, world: int, shard_size: int = 0):
    """1-D mesh for full sharding, or a 2-D ``(replicate, shard)`` mesh for hybrid sharding."""
    from torch.distributed.device_mesh import init_device_mesh
    shard = shard_size or world
    if world % shard:
        raise ValueError(f"shard size {shard} must divide the world size {world}")
    if shard == world:
        return init_device_mesh(device.type, (world,), mesh_dim_names=("shard",))
    return init_device_mesh(device.type, (world // shard, shard), mesh_dim_names=("replicate", "shard"))


def shard_model(model: torch.nn.Module, mesh, *, param_dtype: torch.dtype, cpu_offload: bool = False):
    """``fully_shard`` each decoder block, then the root (embeddings, final norm, lm_head).

    Mixed precision: parameters are cast to ``param_dtype`` for compute; gradients are reduced in
    fp32 whatever the compute dtype (exact sums across ranks).
    """
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard
    mp = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
    offload = CPUOffloadPolicy() if cpu_offload else OffloadPolicy()
    blocks = list(model.layers)
    for i, block in enumerate(blocks):
        # the last block's parameters are needed again at once by backward: keep them gathered
        fully_shard(block, mesh=mesh, mp_policy=mp, offload_policy=offload,
                    reshard_after_forward=i < len(blocks) - 1)
    fully_shard(model, mesh=mesh, mp_policy=mp, offload_policy=offload)
    return model


def grad_scale() -> float:
    return float(dist.get_world_size()) if dist.is_initialized() else 1.0


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Sum a few scalars over ranks (metrics only: one small collective per logged step)."""
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t)
    return t.tolist()


def all_gather_objects(obj) -> list:
    """Every rank's ``obj`` (picklable), in rank order, on every rank."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def shutdown(together: bool = False) -> None:
    """Destroy the process group. ``together`` (a run that ended normally on every rank): first wait for
    every rank, so no rank tears its side down while a peer still works. Never on an error path, where a
    peer may be blocked in another collective."""
    if dist.is_initialized():
        if together:
            dist.barrier()
        dist.destroy_process_group()


def exit_rank(code: int):
    """Leave the process with ``code``: under torchrun with several ranks, without the interpreter's teardown
    (``os._exit``, after flushing stdout/stderr). By then the run has closed every file it wrote and destroyed
    its process group; what is left is PyTorch's C++ teardown, which has aborted a rank now and then on a loaded
    box ("terminate called without an active exception", no Python frame), turning a finished run into a failed
    one. A single process exits normally."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


def world() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1
