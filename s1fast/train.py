"""``torchrun --nproc_per_node N -m s1fast.train --preset s1 --model DIR --data FILE``: the training loop.

``train()`` reads top to bottom: checks (model, output folder claimed and locked) -> data (token cache) ->
packing plan -> model (activation checkpointing -> compile -> FSDP2) -> optimizer and schedule -> resume
(trajectory kept, hyperparameters applied) -> steps -> final checkpoint and Hugging Face export. Expected
failures end as one ``error:`` line, exit 2; a signal stop saves and exits 128 + the signal. ``python -m s1fast.train --help`` lists every flag.

The objective of one optimizer step is fixed by the plan: every supervised token t of example i
carries a weight w_t (s1's per-sequence mean: 1 / (n_i * S); per-token: 1 / N_step), so the step's
loss is sum_t w_t * l_t over all ranks and micro-batches, exactly, with no collective to count tokens.
Each rank backpropagates its local sum times the world size, because FSDP averages gradients over
ranks and we want their sum.
"""
from __future__ import annotations

import json
import math
import os
import time
import uuid

import torch

from . import attention, checkpoint, distributed, hardware, memory
from .checkpoint import CheckpointError
from .collate import rows_with_target
from .config import ConfigError, TrainConfig, parse_config, validate
from .data import DEFAULT_TOKENIZER, DataError, prepare
from .entry import exit_status
from .metrics import Metrics
from .optim import apply_hyperparameters, lr_lambda, param_groups
from .stopping import StopOnSignal, stopped
from .train_export import export_final


class TrainingDiverged(RuntimeError):
    pass


def loss_head(targets: torch.Tensor, weights: torch.Tensor):
    """The fused loss (no full logits), run by the model inside its forward (where FSDP2 has gathered the
    lm_head weight). Off a GPU the rows without a target are dropped first (exact: ``rows_with_target``)."""
    from s1fast_kernels import fused_linear_cross_entropy

    def head(hidden, weight):
        t, w = targets, weights
        keep = rows_with_target(t, hidden)
        if keep is not None:
            hidden, t, w = hidden.index_select(0, keep), t[keep], w[keep]
        return fused_linear_cross_entropy(hidden, weight, t, token_weight=w, reduction="sum")
    return head


def resolve_model(cfg: TrainConfig):
    """(model config, weights folder or None, tokenizer folder) for --model / --tokenizer."""
    from .model import CONFIGS, ModelConfig
    if os.path.isdir(cfg.model):
        path = os.path.join(cfg.model, "config.json")
        if not os.path.exists(path):
            raise ConfigError(f"--model {cfg.model} has no config.json: pass a Hugging Face model folder")
        try:
            mcfg, weights = ModelConfig.from_hf(path), cfg.model
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path} is not valid JSON ({e.msg} at line {e.lineno}): repair or re-download "
                              f"it") from None
        except KeyError as e:
            raise ConfigError(f"{path} lacks the field {e}: repair or re-download it") from None
        except (ValueError, TypeError) as e:
            raise ConfigError(f"{path}: {e}") from None
    elif cfg.model in CONFIGS:
        mcfg, weights = CONFIGS[cfg.model], None
    else:
        raise ConfigError(f"--model {cfg.model!r} is neither a folder nor a named config; named configs: "
                          f"{', '.join(sorted(CONFIGS))}")
    tok = cfg.tokenizer or (weights if weights and os.path.exists(os.path.join(weights, "tokenizer_config.json"))
                            else DEFAULT_TOKENIZER)
    if not os.path.isdir(tok):
        raise ConfigError(f"--tokenizer {tok} is not a folder")
    if not any(os.path.exists(os.path.join(tok, n)) for n in ("tokenizer.json", "tokenizer.model", "vocab.json")):
        raise ConfigError(f"tokenizer folder {tok} has no tokenizer.json, tokenizer.model or vocab.json: pass "
                          f"--tokenizer with a Hugging Face tokenizer folder")
    return mcfg, weights, tok


def rank0_first(fn, rank: int, others=None):
    """Run ``fn`` on rank 0 first; other ranks wait, then run ``others`` (default: ``fn`` too, e.g. open the
    cache rank 0 built).

    An expected error on rank 0 is sent to every rank, so no rank hangs at a barrier while rank 0 has
    failed, and only rank 0 reports it (the real error, not another rank's lost connection).
    """
    import torch.distributed as dist
    err = [None]
    result = None
    if rank == 0:
        try:
            result = fn()
        except (ConfigError, DataError, CheckpointError) as e:
            err = [str(e)]
        except OSError as e:
            err = [f"{type(e).__name__}: {e}"]
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.broadcast_object_list(err, src=0)
    if err[0] is not None:
        if rank == 0:
            raise ConfigError(err[0])
        time.sleep(3.0)  # let rank 0 exit first, so a launcher reports its error as the root cause
        raise SystemExit(2)
    if rank == 0:
        return result
    return (others or fn)()


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


# a resume must keep these (they decide which examples make up each step): a change is refused
TRAJECTORY = ("data", "global_batch", "epochs", "seed", "packing", "weighting", "micro_tokens")
RUN_FILES = ("checkpoints", "final", "metrics.jsonl", "loss_curve.png", "tensorboard")


def train(cfg: TrainConfig, device: torch.device, rank: int, world: int) -> dict:
    from .packing import CostModel, make_plan

    # -- everything that can be checked before compute -------------------------------------------------
    if cfg.cpu_offload and device.type != "cuda":
        raise ConfigError("--cpu-offload moves GPU parameters and optimizer states to CPU memory; this run is on "
                          "the CPU already: drop --cpu-offload")
    mcfg, weights, tok_dir = resolve_model(cfg)
    lock = rank0_first(lambda: claim_output_dir(cfg), rank, others=lambda: None)
    try:
        ds = rank0_first(lambda: prepare(cfg.data or None, cfg.recipe, tok_dir, cfg.max_tokens,
                                         os.path.join(cfg.output_dir, "tokens"), cfg.policy,
                                         progress=cfg.progress and rank == 0,
                                         log=print if rank == 0 else (lambda *_: None)), rank)
        plan = make_plan(ds.lengths, ds.supervised, world_size=world, micro_tokens=cfg.micro_budget,
                         global_batch=cfg.global_batch, epochs=cfg.epochs, seed=cfg.seed, mode=cfg.packing,
                         cost=CostModel.from_hf_config(mcfg.to_hf()), weighting=cfg.weighting)
        total = len(plan.steps) if cfg.max_steps < 0 else min(cfg.max_steps, len(plan.steps))
        schedule = lr_lambda(len(plan.steps), cfg.warmup_steps(len(plan.steps)))

        # -- model, optimizer, resume ------------------------------------------------------------------
        model, layers_for = build_model(cfg, mcfg, weights, device, world, rank)
        optimizer = torch.optim.AdamW(param_groups(model, cfg.weight_decay, cfg.decay_norms), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2),
                                      eps=cfg.eps, fused=not cfg.cpu_offload)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        signature = {"data": ds.meta["key"], "global_batch": cfg.global_batch, "epochs": cfg.epochs,
                     "seed": cfg.seed, "packing": cfg.packing, "weighting": cfg.weighting,
                     "micro_tokens": cfg.micro_budget}
        ckpt_root = os.path.join(cfg.output_dir, "checkpoints")
        start, last_ckpt, run_id = start_or_resume(cfg, ckpt_root, model, optimizer, scheduler, schedule,
                                                   signature, rank, total)

        def save(step):
            state = {"scheduler": scheduler.state_dict(), "config": cfg.to_dict(), "plan_signature": signature,
                     "run_id": run_id, "cwd": os.getcwd()}
            path = checkpoint.save(ckpt_root, step, model, optimizer, state, cfg.keep_checkpoints)
            metrics.message(f"[s1fast] saved {path}")
            return path

        # -- steps: log each, save every --save-every, stop cleanly on SIGINT / SIGTERM ------------------
        metrics = Metrics(cfg.output_dir, total, enabled=rank == 0, progress=cfg.progress,
                          tensorboard=cfg.tensorboard, start_step=start)
        metrics.message(f"[s1fast] {cfg.preset or 'custom'} (run {run_id}): {len(ds)} examples, {len(plan.steps)} "
                        f"steps ({total - start} to run), {world} rank(s), packing {cfg.packing} (straggler factor "
                        f"{plan.straggler_factor:.3f}), weighting {cfg.weighting}, warmup "
                        f"{cfg.warmup_steps(len(plan.steps))} steps, kernels: {kernel_path(device)}")
        stepper = Stepper(cfg, model, optimizer, scheduler, ds, mcfg, layers_for, device, rank, world)
        saved = start if last_ckpt else None
        try:
            with StopOnSignal() as stop:
                for step in range(start, total):
                    row, stopping = stepper.step(plan.steps[step], step, stop)
                    if not all(math.isfinite(row[k]) for k in ("loss", "grad_norm")):
                        metrics.log(row)  # the step that diverged, its non-finite values as null
                        raise TrainingDiverged(f"loss {row['loss']} / grad norm {row['grad_norm']} at step "
                                               f"{step + 1}: training stopped. {divergence_advice(ckpt_root, step)}")
                    if (step + 1) % cfg.log_every == 0 or step + 1 == total:
                        metrics.log(row)
                    if cfg.save_every and (step + 1) % cfg.save_every == 0 and step + 1 < total:
                        last_ckpt, saved = save(step + 1), step + 1
                    if stopping:  # every rank: the same step, the same save, the same signal (even one
                        if saved != step + 1:  # that reached another rank only); a periodic save of this
                            last_ckpt, saved = save(step + 1), step + 1  # step is already complete
                        return stopped(metrics.message, stop.agreed(device), last_ckpt, "step", step + 1)
                if saved != total:
                    last_ckpt = save(total)
                if (signum := stop.agreed(device)) is not None:  # one during the last save: no export
                    return stopped(metrics.message, signum, last_ckpt, "step", total, then="export it")
            final = export_final(cfg.output_dir, model, mcfg, tok_dir, device, rank) if cfg.export else None
            if final:
                metrics.message(f"[s1fast] exported {final} (Hugging Face format)")
            return {"steps": total, "checkpoint": last_ckpt, "final": final}
        finally:
            plot = metrics.close(plot=cfg.plot)
            if plot:
                print(f"[s1fast] loss curve: {plot}")
    finally:
        if rank == 0:
            checkpoint.release_lock(lock)


def divergence_advice(ckpt_root: str, step: int) -> str:
    """Which checkpoint to resume from after a non-finite loss at step ``step + 1``. A checkpoint saved right
    before it already carries the update that diverged, so the one before that is named."""
    done = [(s, p) for s, p, ok in checkpoint.step_folders(ckpt_root) if ok and s <= step]
    if not done:
        return "No checkpoint was saved yet: run again with a lower --lr (or check the data)."
    if done[-1][0] == step and len(done) > 1:
        s, p = done[-2]
        why = f" (step {step}'s checkpoint already carries the update that diverged)"
    else:
        s, p = done[-1]
        why = ""
    return (f"Last good checkpoint: {p}{why}. Run again with a lower --lr and --resume {p}: the new rate "
            f"applies from step {s + 1} (or check the data).")


def claim_output_dir(cfg: TrainConfig) -> str:
    """Rank 0, before any compute: the output folder is a writable folder, this run holds its lock, and a
    fresh start (``--resume never``) in a folder holding another run is refused unless ``--replace``."""
    out = cfg.output_dir
    if os.path.exists(out) and not os.path.isdir(out):
        raise ConfigError(f"--output-dir {out} is a file: pass a folder (it will hold checkpoints/, final/ and "
                          f"metrics.jsonl)")
    try:
        os.makedirs(out, exist_ok=True)
        probe = os.path.join(out, f".write-test-{os.getpid()}")
        open(probe, "w").close()
        os.remove(probe)
    except OSError as e:
        raise ConfigError(f"--output-dir {out} is not writable ({e.strerror}): pass a folder you can write to") \
            from None
    lock = checkpoint.acquire_lock(out)
    root = os.path.join(out, "checkpoints")
    folders = checkpoint.step_folders(root)
    if cfg.resume == "never" and not cfg.replace and (folders or os.path.exists(os.path.join(out, "final"))):
        checkpoint.release_lock(lock)
        newest = f"checkpoints up to step {folders[-1][0]}" if folders else "final/"
        raise ConfigError(f"--output-dir {out} holds another run ({newest}) and --resume never starts a new one: "
                          f"pass --replace true to delete that run first, --resume auto to continue it, or "
                          f"another --output-dir")
    for path in checkpoint.broken(root) if not cfg.replace else []:
        print(f"[s1fast] notice: {path} is incomplete or damaged (its manifest does not match its files); it is "
              f"not loaded, and is removed once a newer checkpoint is saved", flush=True)
    return lock


def start_or_resume(cfg, ckpt_root, model, optimizer, scheduler, schedule, signature, rank, total):
    """(first step, checkpoint resumed from or None, run id): a fresh start (after ``--replace`` has removed
    the folder's old run) or a resume that keeps the trajectory and applies changed hyperparameters; one
    past ``total`` (the last step to run) is refused."""
    if cfg.replace and rank == 0:
        checkpoint.remove_run(cfg.output_dir, RUN_FILES)
    distributed.barrier()
    path = None
    if cfg.resume == "auto" and not cfg.replace:
        path = checkpoint.latest(ckpt_root)
    elif cfg.resume not in ("auto", "never"):
        path = cfg.resume
    if path is None:
        return 0, None, uuid.uuid4().hex[:12]
    state = checkpoint.load(path, model, optimizer)
    if "rl_signature" in state:
        raise ConfigError(f"{path} was saved by s1fast.rl, not by the trainer: use another --output-dir (to train "
                          f"from it, export it with python -m s1fast.export and pass --model)")
    saved_sig = state.get("plan_signature", signature)
    diff = [f"{k}: checkpoint {saved_sig.get(k)!r}, now {signature[k]!r}" for k in TRAJECTORY
            if saved_sig.get(k) != signature[k]]
    if diff:
        raise ConfigError(f"{path} belongs to another trajectory ({'; '.join(diff)}): resuming it with these "
                          f"settings would mix two runs. Use its settings, pass --replace true to start a new run "
                          f"in {cfg.output_dir}, or use another --output-dir")
    saved_norms = state.get("config", {}).get("decay_norms", False)  # earlier runs decayed matrices only
    if saved_norms != cfg.decay_norms:
        raise ConfigError(f"{path} was trained with --decay-norms {str(saved_norms).lower()} (the optimizer's decay "
                          f"groups), this run asks for {str(cfg.decay_norms).lower()}: pass --decay-norms "
                          f"{str(saved_norms).lower()} to resume it, or --replace true to start a new run")
    if state["step"] > total:
        raise ConfigError(f"--max-steps {cfg.max_steps} is below the step this run resumes from ({state['step']}, "
                          f"{path}): pass a --max-steps above {state['step']} (or -1 for all steps), or "
                          f"--replace true to start a new run in {cfg.output_dir}")
    scheduler.load_state_dict(state["scheduler"])
    apply_hyperparameters(cfg, state.get("config", {}), optimizer, scheduler, schedule, rank)
    if rank == 0:
        print(f"[s1fast] resumed from {path} at step {state['step']}", flush=True)
    return state["step"], path, state.get("run_id") or uuid.uuid4().hex[:12]


def build_model(cfg, mcfg, weights, device, world, rank):
    """The model sharded with FSDP2 (activation checkpointing and compile applied) and the adaptive
    checkpointing function (or None)."""
    from . import model as modeling
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
    distributed.shard_model(model, mesh, param_dtype=torch.bfloat16 if cfg.dtype == "bf16" else torch.float32,
                            cpu_offload=cfg.cpu_offload)
    if weights is None:
        if not cfg.cpu_offload:
            model.to(device)
    else:
        model.to_empty(device="cpu" if cfg.cpu_offload else device)
        modeling.load_weights(model, weights)
    return model, adaptive_checkpointing(cfg, mcfg, device, world, rank)


class Stepper:
    """One optimizer step over a plan step's micro-batches, and its metrics row."""

    def __init__(self, cfg, model, optimizer, scheduler, ds, mcfg, layers_for, device, rank, world):
        self.cfg, self.model, self.optimizer, self.scheduler, self.ds = cfg, model, optimizer, scheduler, ds
        self.mcfg, self.layers_for, self.device, self.rank, self.world = mcfg, layers_for, device, rank, world
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.scale = distributed.grad_scale()
        self.peak = peak_flops(device)
        self.eff_len = float((ds.lengths.astype("float64") ** 2).sum() / ds.lengths.sum())  # sum L^2 / sum L

    def step(self, plan_step, step: int, stop: "StopOnSignal") -> tuple[dict, bool]:
        """(metrics row, whether any rank was asked to stop by the end of this step's compute)."""
        from . import model as modeling
        from .packing import collate
        cfg, t0 = self.cfg, time.perf_counter()
        mine = plan_step.micro_batches[self.rank]
        n_micro = max(len(m) for m in plan_step.micro_batches)
        local_loss = torch.zeros((), dtype=torch.float64, device=self.device)
        local_tokens, ckpt_used = 0, None
        for k in range(n_micro):
            ids = mine[k] if k < len(mine) else []
            # a rank with no work in this micro-step still joins FSDP's collectives, on one dummy token
            # that carries no loss
            batch = collate([self.ds[i] for i in ids], [plan_step.example_weight[i] for i in ids],
                            device=self.device, pad_to_nonempty=True)
            local_tokens += int(batch.input_ids.numel()) if ids else 0
            if self.layers_for is not None:  # checkpoint only the blocks this micro-batch's tokens need
                n_ckpt = self.layers_for(int(batch.input_ids.numel()))
                modeling.apply_activation_checkpointing(self.model, mode=cfg.activation_checkpointing, layers=n_ckpt)
                ckpt_used = (n_ckpt, n_ckpt) if ckpt_used is None else (min(ckpt_used[0], n_ckpt),
                                                                         max(ckpt_used[1], n_ckpt))
            loss = self.model(batch.input_ids, batch.position_ids, batch.cu_seqlens, batch.max_seqlen,
                              head=loss_head(batch.targets, batch.loss_weight))
            (loss * self.scale).backward()
            local_loss += loss.detach().double()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
        if hasattr(grad_norm, "full_tensor"):
            grad_norm = grad_norm.full_tensor()
        lr = self.scheduler.get_last_lr()[0]  # the rate this step uses (HF's schedule: 0 at the first step)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        # one sum gathers the loss, the tokens, the stop flags and, with adaptive checkpointing, each
        # rank's (fewest, most) checkpointed blocks in its own two slots
        slots = [0.0] * (2 * self.world if ckpt_used is not None else 0)
        if ckpt_used is not None:
            slots[2 * self.rank: 2 * self.rank + 2] = ckpt_used
        loss_sum, tokens, stops, *slots = distributed.all_reduce_sum(
            [local_loss.item(), local_tokens, float(stop.signum is not None), *slots], self.device)
        dt = time.perf_counter() - t0
        tok_s = tokens / dt
        row = {"step": step + 1, "epoch": plan_step.epoch, "loss": loss_sum, "lr": lr,
               "grad_norm": float(grad_norm), "tokens": int(tokens),
               "supervised_tokens": int(plan_step.supervised_tokens), "examples": plan_step.num_examples,
               "tokens_per_s": tok_s, "step_time": dt,
               "mfu": (tok_s / self.world) * modeling.flops_per_token(self.mcfg, self.eff_len) / self.peak
               if self.peak else None,
               "peak_memory_gb": (torch.cuda.max_memory_allocated(self.device) / 2**30
                                  if self.device.type == "cuda" else _rss_gb()), "run": cfg.preset or "custom"}
        if slots:  # the fewest and the most blocks any rank checkpointed in a micro-step of this step
            row["checkpointed_layers_min"], row["checkpointed_layers"] = int(min(slots[0::2])), int(max(slots[1::2]))
        return row, stops > 0


def _rss_gb() -> float:
    """Peak resident memory of this process (CPU runs)."""
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def main(argv=None) -> int:
    cfg = parse_config(argv)

    def start() -> dict:
        validate(cfg, int(os.environ.get("WORLD_SIZE", "1")))
        device, rank, world = distributed.init(cfg.device)
        return train(cfg, device, rank, world)
    return exit_status(start, (ConfigError, DataError, CheckpointError, TrainingDiverged))


if __name__ == "__main__":
    distributed.exit_rank(main())
