"""``torchrun --nproc_per_node N -m s1fast.train --preset s1 --model DIR --data FILE``: the training loop.

It reads top to bottom: configuration -> process group -> data (token cache) -> packing plan ->
model (activation checkpointing -> compile -> FSDP2) -> optimizer and schedule -> resume -> steps ->
final checkpoint and Hugging Face export. ``python -m s1fast.train --help`` lists every flag.

The objective of one optimizer step is fixed by the plan: every supervised token t of example i
carries a weight w_t (s1's per-sequence mean: 1 / (n_i * S); per-token: 1 / N_step), so the step's
loss is sum_t w_t * l_t over all ranks and micro-batches, exactly, with no collective to count tokens.
Each rank backpropagates its local sum times the world size, because FSDP averages gradients over
ranks and we want their sum.
"""
from __future__ import annotations

import math
import os
import signal
import sys
import time

import torch

from . import attention, checkpoint, distributed, hardware, memory
from .config import ConfigError, TrainConfig, parse_config, validate
from .data import DEFAULT_TOKENIZER, DataError, prepare
from .metrics import Metrics


class TrainingDiverged(RuntimeError):
    pass


def loss_head(targets: torch.Tensor, weights: torch.Tensor):
    """The fused loss, run by the model inside its forward (where FSDP2 has the lm_head weight gathered).

    Full logits never exist: the fused linear cross-entropy reads hidden states and the weight in chunks.
    """
    from s1fast_kernels import fused_linear_cross_entropy

    def head(hidden, weight):
        return fused_linear_cross_entropy(hidden, weight, targets, token_weight=weights, reduction="sum")
    return head


def lr_lambda(total: int, warmup: int):
    """Linear warmup from 0, then cosine decay to 0 (the schedule of HF's cosine-with-warmup)."""
    def f(step: int) -> float:
        if step < warmup:
            return step / max(1, warmup)
        progress = (step - warmup) / max(1, total - warmup)
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))
    return f


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices only; biases and norm weights (the 1-D parameters) get none, as in HF Trainer."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def resolve_model(cfg: TrainConfig):
    """(model config, weights folder or None, tokenizer folder) for --model / --tokenizer."""
    from .model import CONFIGS, ModelConfig
    if os.path.isdir(cfg.model):
        if not os.path.exists(os.path.join(cfg.model, "config.json")):
            raise ConfigError(f"--model {cfg.model} has no config.json: pass a Hugging Face model folder")
        mcfg, weights = ModelConfig.from_hf(os.path.join(cfg.model, "config.json")), cfg.model
    elif cfg.model in CONFIGS:
        mcfg, weights = CONFIGS[cfg.model], None
    else:
        raise ConfigError(f"--model {cfg.model!r} is neither a folder nor a named config; named configs: "
                          f"{', '.join(sorted(CONFIGS))}")
    tok = cfg.tokenizer or (weights if weights and os.path.exists(os.path.join(weights, "tokenizer_config.json"))
                            else DEFAULT_TOKENIZER)
    if not os.path.isdir(tok):
        raise ConfigError(f"--tokenizer {tok} is not a folder")
    return mcfg, weights, tok


def rank0_first(fn, rank: int):
    """Run ``fn`` on rank 0 first; other ranks wait, then run it too (e.g. open the cache rank 0 built).

    An error on rank 0 is sent to every rank, so no rank hangs at a barrier while rank 0 has failed.
    """
    import torch.distributed as dist
    err = [None]
    result = None
    if rank == 0:
        try:
            result = fn()
        except (ConfigError, DataError, FileNotFoundError, ValueError) as e:
            err = [f"{type(e).__name__}: {e}"]
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.broadcast_object_list(err, src=0)
    if err[0] is not None:
        raise ConfigError(err[0]) if rank == 0 else SystemExit(2)
    return result if rank == 0 else fn()


def kernel_path(device: torch.device) -> str:
    """Which implementation of the kernels this run uses (s1fast_kernels decides by device)."""
    from s1fast_kernels._runtime import INTERPRET, use_triton
    if not use_triton(torch.empty(0, device=device)):
        return "pytorch"
    return "triton (interpreter)" if INTERPRET and device.type == "cpu" else "triton"


def peak_flops(device: torch.device) -> float | None:
    """Dense bf16 peak of the GPU (s1fast.hardware), for MFU; None where no honest figure is known (CPUs)."""
    gpu = hardware.gpu_for_device_name(torch.cuda.get_device_name(device)) if device.type == "cuda" else None
    return gpu.peak_flops if gpu else None


def adaptive_checkpointing(cfg: TrainConfig, mcfg, device: torch.device, world: int, rank: int):
    """``--checkpoint-budget-gb``: a function tokens -> how many blocks (the first ones) to checkpoint, the
    fewest that keep this rank's projected peak within the budget (``s1fast.memory``'s model of an s1fast rank).
    The model is a projection, not a measurement: the default budget keeps ``--runtime-reserve-gb`` and
    ``--memory-headroom`` below the GPU's memory. None when the flag is off."""
    if not cfg.checkpoint_budget_gb:
        return None
    A = memory.MemoryAssumptions(runtime_reserve_gb=cfg.runtime_reserve_gb, memory_headroom=cfg.memory_headroom)
    if cfg.checkpoint_budget_gb == -1:
        if device.type != "cuda":
            raise ConfigError("--checkpoint-budget-gb -1 reads the GPU's memory; on a CPU run give the budget in GB")
        limit = memory.checkpoint_limit_gb(torch.cuda.get_device_properties(device).total_memory / memory.GB, A)
    else:
        limit = cfg.checkpoint_budget_gb
    shape = memory.model_shape(mcfg)

    def overflow(tokens):
        if rank == 0:
            print(f"[s1fast] warning: {tokens} tokens on a rank exceed --checkpoint-budget-gb {limit:.4g} by the "
                  f"memory model even with every block checkpointed; checkpointing every block", flush=True)
    layers_for = memory.checkpoint_policy(shape, A, shard=cfg.shard_size or world, limit_gb=limit,
                                          on_overflow=overflow)
    if rank == 0 and cfg.dtype != "bf16":
        print(f"[s1fast] warning: --checkpoint-budget-gb's memory model assumes bf16 activations; with --dtype "
              f"{cfg.dtype} they take twice the bytes, so give a budget with that in mind", flush=True)
    if rank == 0:
        print(f"[s1fast] adaptive checkpointing: budget {limit:.4g} GB per GPU; at {cfg.micro_budget} tokens "
              f"{layers_for(cfg.micro_budget)} of {shape.layers} blocks are checkpointed", flush=True)
    return layers_for


def train(cfg: TrainConfig, device: torch.device, rank: int, world: int) -> dict:
    from . import model as modeling
    from .packing import CostModel, collate, make_plan

    # -- model config and data (all checks before any compute) ---------------------------------------
    if cfg.cpu_offload and device.type != "cuda":
        raise ConfigError("--cpu-offload moves GPU parameters and optimizer states to CPU memory; this run is on "
                          "the CPU already: drop --cpu-offload")
    mcfg, weights, tok_dir = resolve_model(cfg)
    cache_dir = os.path.join(cfg.output_dir, "tokens")
    ds = rank0_first(lambda: prepare(cfg.data or None, cfg.recipe, tok_dir, cfg.max_tokens, cache_dir, cfg.policy,
                                     progress=cfg.progress and rank == 0,
                                     log=print if rank == 0 else (lambda *_: None)), rank)
    plan = make_plan(ds.lengths, ds.supervised, world_size=world, max_tokens=cfg.micro_budget,
                     global_batch=cfg.global_batch, epochs=cfg.epochs, seed=cfg.seed, mode=cfg.packing,
                     cost=CostModel.from_hf_config(mcfg.to_hf()), weighting=cfg.weighting)
    total = len(plan.steps) if cfg.max_steps < 0 else min(cfg.max_steps, len(plan.steps))
    warmup = cfg.warmup_steps(len(plan.steps))

    # -- model: build, checkpointing, compile, shard, load ---------------------------------------------
    compute_dtype = torch.bfloat16 if cfg.dtype == "bf16" else torch.float32
    master_dtype = torch.bfloat16 if cfg.master_dtype == "bf16" else torch.float32
    if weights is None:  # a named config: the same seeded random init on every rank, then sharded
        torch.manual_seed(cfg.seed)
        model = modeling.build_model(mcfg, device="cpu", dtype=master_dtype)
    else:  # a checkpoint folder: build on the meta device, shard, then stream the weights into the shards
        model = modeling.build_model(mcfg, device="meta", dtype=master_dtype)
    if cfg.attention != "auto":
        attention.set_backend({"sdpa": "sdpa_doc"}.get(cfg.attention, cfg.attention))
    if cfg.activation_checkpointing != "none":
        try:
            modeling.apply_activation_checkpointing(model, mode=cfg.activation_checkpointing,
                                                    layers=cfg.checkpoint_layers or None)
        except ValueError as e:
            raise ConfigError(f"--checkpoint-layers: {e}") from None
    if cfg.compile:
        modeling.compile_blocks(model)
    mesh = distributed.make_mesh(device, world, cfg.shard_size)
    distributed.shard_model(model, mesh, param_dtype=compute_dtype, cpu_offload=cfg.cpu_offload)
    if weights is None:
        if not cfg.cpu_offload:
            model.to(device)
    else:
        model.to_empty(device="cpu" if cfg.cpu_offload else device)
        modeling.load_weights(model, weights)
    layers_for = adaptive_checkpointing(cfg, mcfg, device, world, rank)
    optimizer = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2),
                                  eps=cfg.eps, fused=device.type == "cuda" and not cfg.cpu_offload)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(len(plan.steps), warmup))

    # -- resume ---------------------------------------------------------------------------------------
    ckpt_root = os.path.join(cfg.output_dir, "checkpoints")
    start, last_ckpt = 0, None
    # what must match for a resume to continue the same trajectory (the world size may change: the step
    # composition of a plan does not depend on it, and the checkpoint is resharded on load)
    signature = {"data": ds.meta["key"], "global_batch": cfg.global_batch, "epochs": cfg.epochs, "seed": cfg.seed,
                 "packing": cfg.packing, "weighting": cfg.weighting, "micro_tokens": cfg.micro_budget}
    if cfg.resume != "never":
        path = checkpoint.latest(ckpt_root) if cfg.resume == "auto" else cfg.resume
        if path is not None:
            state = checkpoint.load(path, model, optimizer)
            if state.get("plan_signature", signature) != signature:
                raise ConfigError(f"{path} was saved by a run with another data/plan ({state['plan_signature']}); "
                                  f"this run has {signature}. Pass --resume never or a new --output-dir.")
            scheduler.load_state_dict(state["scheduler"])
            start, last_ckpt = state["step"], path
            if rank == 0:
                print(f"[s1fast] resumed from {path} at step {start}")

    # -- stop cleanly on Ctrl-C / SIGTERM: finish the step, save, exit ---------------------------------
    stop = {"signal": None}

    def on_signal(signum, _frame):
        stop["signal"] = signum
    old_handlers = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}

    metrics = Metrics(cfg.output_dir, total, enabled=rank == 0, progress=cfg.progress,
                      tensorboard=cfg.tensorboard, start_step=start)
    if rank == 0:
        metrics.message(f"[s1fast] {cfg.preset or 'custom'}: {len(ds)} examples, {len(plan.steps)} steps "
                        f"({total} to run), {world} rank(s), packing {cfg.packing} (straggler factor "
                        f"{plan.straggler_factor:.3f}), weighting {cfg.weighting}, warmup {warmup} steps, "
                        f"kernels: {kernel_path(device)}")
    peak = peak_flops(device)
    eff_len = float((ds.lengths.astype("float64") ** 2).sum() / ds.lengths.sum())  # attention: sum L^2 / sum L
    params = [p for p in model.parameters() if p.requires_grad]
    scale = distributed.grad_scale()

    def save(step):
        return checkpoint.save(ckpt_root, step, model, optimizer,
                               {"scheduler": scheduler.state_dict(), "config": cfg.to_dict(),
                                "plan_signature": signature}, cfg.keep_checkpoints)

    step = start
    try:
        for step in range(start, total):
            t0 = time.perf_counter()
            plan_step = plan.steps[step]
            mine = plan_step.micro_batches[rank]
            n_micro = max(len(m) for m in plan_step.micro_batches)
            local_loss = torch.zeros((), dtype=torch.float64, device=device)
            local_tokens = 0
            ckpt_used = None
            for k in range(n_micro):
                ids = mine[k] if k < len(mine) else []
                # a rank with no work in this micro-step still joins FSDP's collectives, on one dummy token
                # that carries no loss
                batch = collate([ds[i] for i in ids], [plan_step.example_weight[i] for i in ids], device=device,
                                pad_to_nonempty=True)
                local_tokens += int(batch.input_ids.numel()) if ids else 0
                if layers_for is not None:  # checkpoint only the blocks this micro-batch's tokens need
                    n_ckpt = layers_for(int(batch.input_ids.numel()))
                    modeling.apply_activation_checkpointing(model, mode=cfg.activation_checkpointing, layers=n_ckpt)
                    ckpt_used = (n_ckpt, n_ckpt) if ckpt_used is None else (min(ckpt_used[0], n_ckpt),
                                                                             max(ckpt_used[1], n_ckpt))
                loss = model(batch.input_ids, batch.position_ids, batch.cu_seqlens, batch.max_seqlen,
                             head=loss_head(batch.targets, batch.loss_weight))
                (loss * scale).backward()
                local_loss += loss.detach().double()
            grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
            if hasattr(grad_norm, "full_tensor"):
                grad_norm = grad_norm.full_tensor()
            lr = scheduler.get_last_lr()[0]  # the rate this step uses (HF's schedule: 0 at the first step)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            # with adaptive checkpointing each rank also writes its (fewest, most) checkpointed blocks into its
            # own two slots, so the one sum gathers every rank's counts
            slots = [0.0] * (2 * world if ckpt_used is not None else 0)
            if ckpt_used is not None:
                slots[2 * rank: 2 * rank + 2] = ckpt_used
            loss_sum, tokens, *slots = distributed.all_reduce_sum([local_loss.item(), local_tokens, *slots], device)
            dt = time.perf_counter() - t0
            if not math.isfinite(loss_sum) or not math.isfinite(float(grad_norm)):
                raise TrainingDiverged(
                    f"loss {loss_sum} / grad norm {float(grad_norm)} at step {step + 1}: training stopped. "
                    f"Last good checkpoint: {last_ckpt or 'none (no checkpoint was saved yet)'}. "
                    "Lower --lr, check the data, or resume from that checkpoint.")
            tok_s = tokens / dt
            row = {"step": step + 1, "epoch": plan_step.epoch, "loss": loss_sum, "lr": lr,
                   "grad_norm": float(grad_norm), "tokens": int(tokens),
                   "supervised_tokens": int(plan_step.supervised_tokens), "examples": plan_step.num_examples,
                   "tokens_per_s": tok_s, "step_time": dt,
                   "mfu": (tok_s / world) * modeling.flops_per_token(mcfg, eff_len) / peak if peak else None,
                   "peak_memory_gb": (torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda"
                                      else _rss_gb()), "run": cfg.preset or "custom"}
            if slots:  # the fewest and the most blocks any rank checkpointed in a micro-step of this step
                row["checkpointed_layers_min"], row["checkpointed_layers"] = int(min(slots[0::2])), int(max(slots[1::2]))
            if (step + 1) % cfg.log_every == 0 or step + 1 == total:
                metrics.log(row)
            if cfg.save_every and (step + 1) % cfg.save_every == 0 and step + 1 < total:
                last_ckpt = save(step + 1)
            if stop["signal"] is not None:
                last_ckpt = save(step + 1)
                metrics.message(f"[s1fast] signal {stop['signal']}: saved {last_ckpt} at step {step + 1}; "
                                f"run again with the same --output-dir to resume")
                return {"stopped": step + 1, "checkpoint": last_ckpt}
        step = total
        if total > start or last_ckpt is None:
            last_ckpt = save(total)
        final = os.path.join(cfg.output_dir, "final")
        if cfg.export:
            sd = checkpoint.full_state_dict(model)
            if rank == 0:
                modeling.save_state_dict_hf(sd, mcfg, final, tok_dir)
                metrics.message(f"[s1fast] exported {final} (Hugging Face format)")
            distributed.barrier()
        return {"steps": total, "checkpoint": last_ckpt, "final": final if cfg.export else None}
    finally:
        plot = metrics.close(plot=cfg.plot)
        if plot and rank == 0:
            print(f"[s1fast] loss curve: {plot}")
        for s, h in old_handlers.items():
            signal.signal(s, h)


def _rss_gb() -> float:
    """Peak resident memory of this process (CPU runs)."""
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def main(argv=None) -> int:
    cfg = parse_config(argv)
    device, rank, world = distributed.init(cfg.device)
    try:
        validate(cfg, world)
        train(cfg, device, rank, world)
        return 0
    except (ConfigError, DataError, TrainingDiverged, FileNotFoundError) as e:
        if rank == 0:
            print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        distributed.shutdown()


if __name__ == "__main__":
    sys.exit(main())
