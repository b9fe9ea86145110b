"""Projection of a recipe's wall time and per-GPU memory on H100s: s1's stack against s1fast.

Usage::

    python -m s1fast.project --preset s1 --gpus 16 --gpu h100 [--lengths FILE] [--json] [--plot OUT.png]

Nothing here is measured: every output is PROJECTED from the arithmetic below, calibrated against the
one public timing (s1: 315 optimizer steps in 26 minutes on 16 H100). Every input that is an assumption
is a field of :class:`Assumptions` (and a command-line flag), and is printed with the result.

Work (model FLOPs, no recomputation counted)
--------------------------------------------
A sequence of L tokens costs ``c(L) = a*L + b*L^2`` FLOPs for forward + backward, with
``a = 6 * N_matmul`` (N_matmul = parameters of the decoder layers + lm_head; the embedding is a lookup)
and ``b = 6 * n_layers * n_heads * head_dim`` (causal attention: QK^T and PV each cost L^2*d/2 multiply-adds
per layer forward, so 2*L^2*d FLOPs forward, times 3 for forward + backward). Sequences longer than the
block size are truncated to it, as both stacks do. Qwen2.5-32B-Instruct: a = 1.92e11, b = 1.97e6.

MFU here is model FLOPs / (GPUs * peak * wall time), peak = 989 TFLOP/s dense bf16 (H100 SXM).
Activation checkpointing re-runs each layer's forward, so the hardware does about 4/3 of the model FLOPs
in the layers (HFU is printed beside MFU).

Time of a run
-------------
``T = sum over micro-steps of (slowest rank's work) / (peak * MFU) + exposed communication + optimizer``.
The first term is ``straggler * total work / (W * peak * MFU)``, with the straggler factor of the plan that
``s1fast.packing.make_plan`` makes for the data (its ``sync_straggler_factor``: sum over micro-steps of the
slowest rank's work / sum of the balanced work, step work / W; FSDP synchronises every micro-step).
- s1's stack: plan mode "none": one sequence per GPU per micro-step (global batch / W micro-steps of
  accumulation), sequences in random order, every rank waits for the slowest at each micro-step.
- s1fast: plan mode "balanced": the same steps with the same number of sequences each, but sequences of similar
  cost grouped into a step inside windows of ``group_window`` steps (the planner's default; ``--group-window 1``
  keeps s1's random step composition, and then only placement inside a step can help), packs capped at
  what fits in memory (never below the longest sequence). Since the plan is made before training, its
  longest pack is known, and with it the memory peak. s1fast checkpoints, before each micro-step, only the
  first layers that micro-batch's tokens need to stay within the budget less a headroom (adaptive
  checkpointing, the trainer's ``--checkpoint-budget-gb``; ``layers_to_checkpoint``): a micro-step then
  lasts max over ranks of work x its recompute factor; ``--static-checkpointing`` instead charges every
  micro-step the longest pack's count (``--checkpoint-layers K``). It picks FSDP full shard or HSDP,
  whichever is faster among those that fit.
Communication per micro-step (ring collectives, bf16 parameter gathers, gradient reduce-scatter):
- FSDP full shard over W GPUs on k nodes: 2 all-gathers of the bf16 parameters (forward, and again in the
  backward since parameters are freed after forward) and 1 reduce-scatter of the gradients, each moving
  (W-1)/W * bytes per GPU. Across nodes, a ring with one channel per NIC puts (W-1)/W * bytes / n_NIC on
  each NIC, so the bus bandwidth is min(NVLink, n_NIC * NIC) per GPU (times the link efficiency).
- HSDP (shard within a node of G GPUs, replicate across k nodes): the gathers and reduce-scatters run on
  NVLink over G GPUs, and each GPU all-reduces its 1/G gradient shard across the k nodes over its own NIC;
  the two use different links and are pipelined across units, so the longer of the two sets the time.
FSDP prefetching overlaps communication with compute; the exposed part is the communication beyond the
compute of the same micro-step, plus one unit's gather and one unit's reduce-scatter that cannot overlap.
The optimizer step (AdamW over the local fp32 shard) is memory-bound: 28 bytes per local parameter
(read parameter, gradient, two moments; write parameter, two moments) at HBM bandwidth * efficiency.

Calibration
-----------
The s1 run (s1K lengths, 16 H100, block 32768, global batch 16, 5 epochs = 315 steps) took 26 minutes.
The reference's hardware efficiency (HFU) is the value that makes the model above give 26 minutes; it absorbs
everything the model does not name (HF Trainer overhead, kernel efficiency, and whatever evaluation and
checkpoint saving s1's script ran inside those minutes: ``--eval_steps 50 --save_steps 100``), so it is a
lower bound on the kernels' efficiency. s1fast's efficiency is an argued assumption
(:func:`anchored_s1fast_hfu`): the reference's HFU times torchtitan's measured gain from torch.compile on
FSDP2 (6,667 / 5,762 tokens/s/GPU, Llama 3.1 8B, 8 H100), its MFU capped at Megatron's best published 48%;
``--s1fast-mfu`` replaces it.

Memory of one GPU (GB = 1e9 bytes)
----------------------------------
- states: fp32 master weights (4 B), fp32 gradients (4 B), AdamW moments (8 B) per parameter, sharded over
  the shard group: 16 * N / shard.
- in-flight units: two decoder layers gathered in bf16 (current + prefetched), and one layer's unsharded
  gradient (bf16 for the reference's reduce dtype, fp32 for s1fast's).
- saved activations with checkpointing: each layer's input, L * h * 2 bytes, for every layer;
  without checkpointing: every layer keeps its full set, L * A_layer (below) per layer.
- the layer being recomputed in the backward: L * (A_layer + backward working set).
  A_layer (bytes per token): reference (transformers Qwen2, unfused): two RMSNorms at 6h each (fp32 upcast
  saved by pow/mul + bf16 normed saved by the weight multiply), q/k/v after repeat_kv (3 * 2h), the SDPA
  output and the o_proj input (2 * 2h), MLP: gate, silu(gate), up, product (4 * 2*ffn); working set 3 * 2*ffn.
  s1fast (fused RMSNorm/SwiGLU, varlen flash attention without repeat_kv): the two norms' inputs (the residual
  stream) and outputs 4 * 2h, q 2h, k/v 2 * 2kv, output 2h, gate/up/product 3 * 2*ffn; working set 2 * 2*ffn.
  Both checked against PyTorch's memory tracker on one block of the 32B shape (tests/test_fake_cuda.py).
- the loss. Reference (transformers' loss: ``logits.float()`` then ``F.cross_entropy``): bf16 logits (2LV),
  their fp32 upcast (4LV) and the fp32 log-softmax output saved for backward (4LV) live in the forward; in
  the backward the log-softmax output, its incoming gradient and the outgoing gradient (3 * 4LV) are live:
  peak 12 * L * V bytes (fp32 logits alone are 4 * 32768 * 152064 = 19.9 GB at block 32768), plus the
  gathered lm_head (2Vh).
  s1fast (s1fast_kernels' fused linear cross-entropy in chunks of C tokens, its GPU default: 6CV <= 2 GiB,
  C = 2304 for V = 152064): the fp32 chunk logits and the bf16 chunk gradient (6CV), the bf16
  hidden-state gradient (2Lh), the fp32 lm_head weight-gradient accumulator (4Vh); plus the gathered lm_head.
- The card sold as "80 GB" holds 81,559 MiB = 85.5 GB (nvidia-smi); a runtime reserve (CUDA context, NCCL
  buffers, allocator fragmentation; an assumption) is left out of the budget.
The peak is states + saved activations + the larger of the loss phase and the layer-backward phase.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import dataclasses
from dataclasses import asdict, dataclass, field

from s1fast.config import PRESETS as RECIPES
from s1fast_kernels.cross_entropy_op import _default_chunk

GB = 1e9
ASSETS = os.path.join(os.path.dirname(__file__), "assets", "data")


# ----------------------------------------------------------------------------------------------------------
# Hardware
# ----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GPU:
    name: str
    peak_tflops: float      # dense bf16
    memory_gb: float        # total device memory, 1e9 bytes
    hbm_tbps: float
    nvlink_gbps: float      # per GPU, per direction
    gpus_per_node: int = 8


GPUS = {
    # anchors.md: 989 TFLOP/s dense bf16, HBM3 3.35 TB/s; NVLink 4 on H100 SXM: 900 GB/s total = 450 per
    # direction; 81,559 MiB total memory as nvidia-smi reports for the 80 GB card.
    "h100": GPU("H100 SXM 80GB", 989.0, 81559 * 2**20 / GB, 3.35, 450.0),
    # NVIDIA H200 SXM datasheet: same compute and NVLink as H100, 141 GB HBM3e at 4.8 TB/s.
    "h200": GPU("H200 SXM 141GB", 989.0, 141.0, 4.8, 450.0),
}


@dataclass(frozen=True)
class Assumptions:
    """Every number the projection assumes rather than derives. Each is a command-line flag."""
    nic_gbit: float = 400.0            # per NIC (InfiniBand NDR), one NIC per GPU
    nics_per_node: int = 8
    link_efficiency: float = 0.8       # achieved / nominal bandwidth of NVLink and NICs in collectives
    hbm_efficiency: float = 0.7        # achieved / nominal HBM bandwidth in the optimizer step
    runtime_reserve_gb: float = 2.0    # CUDA context, NCCL buffers, allocator fragmentation
    memory_headroom: float = 0.1       # s1fast keeps this fraction of the budget free when it picks checkpointing
    loss_chunk: int | None = None      # tokens per chunk of the fused loss (None: its GPU default, C*V*6 <= 2 GiB)
    s1fast_mfu: float | None = None    # None: anchored (reference HFU x torchtitan's compile gain)
    seed: int = 0                      # order of the sequences in the plans
    group_window: int | None = None    # s1fast's plan: steps per grouping window (None: the planner's default)
    adaptive_checkpointing: bool = True  # s1fast checkpoints, per micro-step, only the layers its tokens need
    #                                      (train --checkpoint-budget-gb); False: the longest pack's count always
    calib_minutes: float = 26.0        # the public s1 figure
    calib_steps: int = 315
    calib_gpus: int = 16


# ----------------------------------------------------------------------------------------------------------
# Recipes
# ----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Preset:
    """A recipe (block size, global batch, epochs from :data:`s1fast.config.PRESETS`) plus what the
    projection needs besides: default lengths, GPUs, the block s1fast is projected at, the issue's target."""
    name: str
    lengths_file: str | None   # default token lengths (one integer a line), in s1fast/assets/data
    blocks: tuple              # block sizes to show; the first is the reference recipe's
    s1fast_block: int          # the block s1fast is projected at (the headline)
    global_batch: int          # sequences per optimizer step
    epochs: int
    gpus: int
    note: str = ""
    target_minutes: float | None = None   # issue #8's target, where it sets one


# name: (lengths file, GPUs of the published run, s1fast's block or None for the recipe's, note, target)
_PROJECTED = {
    "s1": ("s1k_lengths_derived.txt", 16, None,
           "s1K lengths DERIVED from the published thinking-length histogram (SOURCES.md)", 10.0),
    "s1.1": ("s1k-1.1_lengths_derived.txt", 16, 32768,
             "s1K-1.1 lengths DERIVED from the published histogram; the reference ran at 20000 to avoid OOM", None),
    "sky-t1": (None, 8, None, "17K rows; no lengths file ships with s1fast: pass --lengths", None),
}


def get_preset(name: str) -> Preset:
    recipe = RECIPES[name]
    lengths_file, gpus, fast_block, note, target = _PROJECTED[name]
    block = recipe["max_tokens"]
    fast_block = fast_block or block
    blocks = (block,) + ((fast_block,) if fast_block != block else ())
    return Preset(name, lengths_file, blocks, fast_block, recipe["global_batch"], recipe["epochs"], gpus, note, target)


def load_lengths(path: str) -> list[int]:
    """Token lengths, one positive integer per line (blank lines and '#' comments skipped)."""
    out = []
    with open(path) as f:
        for i, line in enumerate(f, 1):
            s = line.split("#", 1)[0].strip()
            if not s:
                continue
            try:
                v = int(s)
            except ValueError:
                raise ValueError(f"{path}:{i}: expected one integer token length per line, got {s!r}") from None
            if v <= 0:
                raise ValueError(f"{path}:{i}: token length must be positive, got {v}")
            out.append(v)
    if not out:
        raise ValueError(f"{path}: no token lengths found (expected one integer per line)")
    return out


def preset_lengths(preset: Preset, path: str | None) -> tuple[list[int], str]:
    if path is None:
        if preset.lengths_file is None:
            raise SystemExit(
                f"preset {preset.name!r} has no bundled token lengths ({preset.note}). Pass "
                "--lengths FILE with one token length per line (e.g. tokenise the training set with "
                "`python -m s1fast.data prepare` and write each row's length), or use --lengths "
                f"{os.path.join(ASSETS, 's1k-1.1_lengths_derived.txt')} as a labelled stand-in.")
        path = os.path.join(ASSETS, preset.lengths_file)
    rel = os.path.relpath(path)
    return load_lengths(path), (path if rel.startswith("..") else rel)


# ----------------------------------------------------------------------------------------------------------
# The model: shape from s1fast.model's configs, training FLOPs from s1fast.model.flops_per_token
# ----------------------------------------------------------------------------------------------------------
CALIBRATION_MODEL = "Qwen2.5-32B-Instruct"   # the model of s1's public figure


@dataclass(frozen=True)
class Shape:
    """What the projection needs of a decoder: sizes, stored parameters, and the cost c(L) = a*L + b*L^2."""
    name: str
    h: int
    ffn: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    layer_params: int   # stored per decoder layer (biases and norms included): memory
    embed_params: int
    head_params: int    # 0 when tied to the embedding
    a: float            # training FLOPs per token, linear part (6 x matmul parameters)
    b: float            # training FLOPs per token per token of context (causal attention)

    @property
    def params(self) -> int:
        return self.layers * self.layer_params + self.embed_params + self.head_params + self.h  # + final norm

    @property
    def kv(self) -> int:
        return self.kv_heads * self.head_dim

    def cost(self, L: float) -> float:
        return self.a * L + self.b * L * L


def model_shape(name_or_dir) -> Shape:
    """A config name of s1fast.model.CONFIGS, a Hugging Face model folder (only config.json is read), or a
    ``s1fast.model.ModelConfig``."""
    from s1fast.model import ModelConfig, flops_per_token, get_config
    cfg = name_or_dir if isinstance(name_or_dir, ModelConfig) else get_config(name_or_dir)
    h, f, d = cfg.hidden_size, cfg.intermediate_size, cfg.head_dim
    q, kv = cfg.num_heads * d, cfg.num_kv_heads * d
    layer = (h * q + 2 * h * kv + (q + 2 * kv) * cfg.qkv_bias + q * h + h * cfg.o_bias
             + 3 * h * f + (2 * f + h) * cfg.mlp_bias + 2 * h)
    emb = cfg.vocab_size * h
    # c(L) = L * flops_per_token(cfg, L) (causal attention over a document of L tokens): read a and b off it.
    a = flops_per_token(cfg, 0)
    b = flops_per_token(cfg, 1) - a
    name = f"{cfg.arch} {cfg.num_layers}x{h}" if isinstance(name_or_dir, ModelConfig) else str(name_or_dir)
    return Shape(name, h, f, cfg.num_layers, cfg.num_heads, cfg.num_kv_heads, d, cfg.vocab_size,
                 layer, emb, 0 if cfg.tie_word_embeddings else emb, a, b)


# ----------------------------------------------------------------------------------------------------------
# Plans: s1fast.packing.make_plan, mode "none" for s1's stack and "balanced" for s1fast
# ----------------------------------------------------------------------------------------------------------
def projection_plan(lengths, s: Shape, *, world_size: int, max_tokens: int, global_batch: int, epochs: int,
                    seed: int, mode: str, group_window: int | None = None):
    """The packing plan a stack runs on these lengths (``s1fast.packing.make_plan`` with the model's cost).
    Its ``stats["sync_straggler_factor"]`` is the straggler factor: FSDP synchronises every micro-step, so a
    step lasts the sum over its micro-steps of the slowest rank's work."""
    from s1fast import _native
    from s1fast.packing import CostModel, make_plan
    window = {} if group_window is None else dict(group_window=group_window)
    # the lengths files carry no supervised counts; they do not change the plan (only its loss weights)
    return make_plan(lengths, [x - 1 for x in lengths], world_size=world_size, max_tokens=max_tokens,
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


def memory_gb(s: Shape, A: Assumptions, *, stack: str, tokens: int, shard: int, ckpt_layers: int | None = None) -> dict:
    """Per-GPU memory components in GB at ``tokens`` tokens on the rank (module docstring).

    ``ckpt_layers``: how many decoder layers use activation checkpointing (default: all)."""
    k = s.layers if ckpt_layers is None else ckpt_layers
    h, f, kv, V, L = s.h, s.ffn, s.kv, s.vocab, tokens
    ref = stack == "reference"
    act_layer = (2 * 6 * h + 3 * 2 * h + 2 * 2 * h + 4 * 2 * f) if ref else (4 * 2 * h + 2 * h + 2 * 2 * kv
                                                                           + 2 * h + 3 * 2 * f)
    work_layer = (3 * 2 * f) if ref else (2 * 2 * f)
    grad_bytes = 2 if ref else 4
    states = 16.0 * s.params / shard
    saved = k * L * 2 * h + (s.layers - k) * L * act_layer
    layer_phase = (2 * 2 * s.layer_params + grad_bytes * s.layer_params
                   + L * ((act_layer if k else 0) + work_layer))
    if ref:
        # gathered lm_head, then the larger of: the log-softmax backward (3 fp32 L x V tensors), and the
        # lm_head backward that follows (bf16 logit gradient, lm_head gradient, hidden-state gradient)
        loss_phase = 2 * V * h + max(12.0 * L * V, 2.0 * L * V + 2 * V * h + 2 * L * h)
    else:
        # gathered lm_head + fp32 weight-gradient accumulator + one chunk's fp32 logits and bf16 gradient +
        # the bf16 hidden-state gradient, all live together (the fused loss makes its gradients in forward)
        chunk = A.loss_chunk or _default_chunk(L, V, on_gpu=True)  # the kernel's own GPU default
        loss_phase = 2 * V * h + 4 * V * h + 6.0 * min(chunk, L) * V + 2.0 * L * h
    parts = {
        "states": states,
        "saved_activations": saved,
        "loss_phase": loss_phase,
        "layer_phase": layer_phase,
        "fp32_logits_full": 4.0 * L * V,
    }
    parts = {k: v / GB for k, v in parts.items()}
    parts["peak"] = parts["states"] + parts["saved_activations"] + max(parts["loss_phase"], parts["layer_phase"])
    return parts


def max_fit_tokens(s: Shape, A: Assumptions, *, stack: str, shard: int, limit_gb: float,
                   ckpt_layers: int | None = None) -> int:
    """Largest number of tokens on one rank whose peak memory stays within ``limit_gb`` (0 if none)."""
    lo, hi = 0, 1 << 22
    while lo < hi:  # peak memory grows with tokens: bisection
        mid = (lo + hi + 1) // 2
        ok = memory_gb(s, A, stack=stack, tokens=mid, shard=shard, ckpt_layers=ckpt_layers)["peak"] <= limit_gb
        lo, hi = (mid, hi) if ok else (lo, mid - 1)
    return lo


MEMORY_TABLE_BLOCKS = (4096, 8192, 16384, 20000, 24576, 32768)


def memory_table(s: Shape, A: Assumptions, gpu: GPU, world: int) -> list[dict]:
    """Per-GPU memory of both stacks (FSDP full shard over ``world``) at several block sizes, with every
    layer checkpointed and with none: which block sizes fit."""
    budget = gpu.memory_gb - A.runtime_reserve_gb
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
        limit = (gpu.memory_gb - A.runtime_reserve_gb) * (1 - A.memory_headroom)
        pack_cap = max(max(lens), max_fit_tokens(s, A, stack=stack, shard=world, limit_gb=limit))
    plan = projection_plan(lens, s, world_size=world, max_tokens=pack_cap, global_batch=preset.global_batch,
                      epochs=preset.epochs, seed=A.seed, mode="none" if stack == "reference" else "balanced",
                      group_window=None if stack == "reference" else A.group_window)
    ps = plan.stats
    steps = preset.epochs * math.ceil(len(lens) / preset.global_batch)
    return _Setup(stack, block, world, lens, work, steps, ps["sync_straggler_factor"], ps["micro_steps_per_rank"],
                  ps["max_micro_tokens"], micro_step_loads(plan, lens, s))


def layers_to_checkpoint(s: Shape, A: Assumptions, *, tokens: int, shard: int, limit_gb: float) -> int | None:
    """The fewest decoder layers to checkpoint (the first ones) so that ``tokens`` tokens on one rank stay
    within ``limit_gb``; None if even every layer checkpointed does not fit. The trainer's adaptive
    checkpointing (``--checkpoint-budget-gb``) calls this before every micro-step."""
    if memory_gb(s, A, stack="s1fast", tokens=tokens, shard=shard, ckpt_layers=s.layers)["peak"] > limit_gb:
        return None
    lo, hi = 0, s.layers  # peak falls as layers are checkpointed: the fewest that fit, by bisection
    while lo < hi:
        mid = (lo + hi) // 2
        if memory_gb(s, A, stack="s1fast", tokens=tokens, shard=shard, ckpt_layers=mid)["peak"] <= limit_gb:
            hi = mid
        else:
            lo = mid + 1
    return lo


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
    budget = gpu.memory_gb - A.runtime_reserve_gb
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
    limit = (gpu.memory_gb - A.runtime_reserve_gb) * (1 - A.memory_headroom)
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


def calibrate(A: Assumptions, gpu: GPU, lengths=None) -> dict:
    """The reference efficiency that reproduces s1's public figure, and what it means."""
    p = get_preset("s1")
    lens = lengths or load_lengths(os.path.join(ASSETS, p.lengths_file))
    s = model_shape(CALIBRATION_MODEL)
    st = _setup("reference", lens, p, 32768, A.calib_gpus, gpu, A, s)
    if st.steps != A.calib_steps:
        raise ValueError(f"calibration: the s1 preset gives {st.steps} steps, the public figure has {A.calib_steps}")
    target = A.calib_minutes
    lo, hi = 1e-3, 1.0
    for _ in range(60):  # total time falls as efficiency rises: bisection
        mid = (lo + hi) / 2
        r = project_run("reference", s, lens, p, block=32768, world=A.calib_gpus, gpu=gpu, A=A, hfu=mid, _st=st)
        lo, hi = (lo, mid) if r.minutes < target else (mid, hi)
    r = project_run("reference", s, lens, p, block=32768, world=A.calib_gpus, gpu=gpu, A=A, hfu=(lo + hi) / 2, _st=st)
    e2e = st.work / (A.calib_gpus * gpu.peak_tflops * 1e12 * target * 60)
    return dict(reference_mfu=r.mfu, reference_hfu=r.hfu, end_to_end_mfu=e2e,
                seconds_per_step=target * 60 / A.calib_steps, straggler=r.straggler,
                comm_exposed_min=r.comm_exposed_min, optimizer_min=r.optimizer_min)


# torchtitan, Llama 3.1 8B on 8 H100 at 8192 tokens, FSDP2 (anchors.md): tokens/s/GPU plain and compiled.
TORCHTITAN_PLAIN, TORCHTITAN_COMPILED = 5762.0, 6667.0
MEGATRON_BEST_MFU = 0.48


def anchored_s1fast_hfu(reference_hfu: float) -> float:
    """s1fast's assumed hardware efficiency: the calibrated reference's times torchtitan's measured
    torch.compile gain on FSDP2 (6667/5762 = 1.157 at the same checkpointing). The reference already runs
    flash attention (SDPA, one sequence per GPU), so the gain argued is compile + fused kernels only; the
    straggler factor and the recompute that selective checkpointing avoids are accounted for separately.
    The resulting MFU is capped at Megatron's best published 48% (see :func:`project`)."""
    return reference_hfu * TORCHTITAN_COMPILED / TORCHTITAN_PLAIN


# ----------------------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------------------
def project(preset_name: str, *, gpus: int | None = None, gpu_name: str = "h100", lengths_path: str | None = None,
            model: str = CALIBRATION_MODEL, A: Assumptions = Assumptions()) -> dict:
    """The whole projection for one preset, as a JSON-able dict (see :func:`format_report`).

    ``model`` other than the calibration's (Qwen2.5-32B-Instruct) assumes the same hardware efficiency."""
    preset = get_preset(preset_name)
    gpu = GPUS[gpu_name]
    world = gpus or preset.gpus
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
        ax1.axhline(p["target_minutes"], color="k", ls="--", lw=1, label="target (issue #8)")
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


def main(argv=None) -> int:
    d = Assumptions()
    ap = argparse.ArgumentParser(prog="python -m s1fast.project", description=__doc__.split("\n")[0])
    ap.add_argument("--preset", choices=sorted(_PROJECTED), default="s1")
    ap.add_argument("--gpus", type=int, default=None, help="GPUs (default: the recipe's)")
    ap.add_argument("--gpu", choices=sorted(GPUS), default="h100")
    ap.add_argument("--model", default=CALIBRATION_MODEL,
                    help="a config name of s1fast.model.CONFIGS or a Hugging Face model folder")
    ap.add_argument("--lengths", default=None, help="token lengths, one integer per line")
    ap.add_argument("--json", action="store_true", help="print the projection as JSON")
    ap.add_argument("--plot", default=None, metavar="OUT.png")
    ap.add_argument("--nic-gbit", type=float, default=d.nic_gbit, help="per NIC, Gbit/s")
    ap.add_argument("--nics-per-node", type=int, default=d.nics_per_node)
    ap.add_argument("--link-efficiency", type=float, default=d.link_efficiency)
    ap.add_argument("--hbm-efficiency", type=float, default=d.hbm_efficiency)
    ap.add_argument("--runtime-reserve-gb", type=float, default=d.runtime_reserve_gb)
    ap.add_argument("--memory-headroom", type=float, default=d.memory_headroom)
    ap.add_argument("--loss-chunk", type=int, default=d.loss_chunk)
    ap.add_argument("--s1fast-mfu", type=float, default=None, help="override the anchored MFU assumption")
    ap.add_argument("--seed", type=int, default=d.seed)
    ap.add_argument("--group-window", type=int, default=None,
                    help="s1fast's plan: steps per grouping window (1 keeps s1's random step composition)")
    ap.add_argument("--static-checkpointing", action="store_true",
                    help="s1fast checkpoints the longest pack's layer count at every micro-step (train "
                         "--checkpoint-layers K) instead of only what each micro-step's tokens need")
    args = ap.parse_args(argv)
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
