"""The optimizer's side of training: AdamW's parameter groups, the learning-rate schedule, and the
hyperparameters a resume applies."""
from __future__ import annotations

import math

import torch

# a resume may change these (the optimizer's hyperparameters): applied from the resumed step, with a notice
HYPERPARAMETERS = ("lr", "warmup_ratio", "beta1", "beta2", "eps", "weight_decay", "grad_clip")


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


def apply_hyperparameters(cfg, saved: dict, optimizer, scheduler, schedule, rank: int) -> None:
    """The optimizer state restores the checkpoint's hyperparameters; set this run's instead (identical
    values when nothing changed, so an unchanged resume stays bitwise exact) and say what changed."""
    for g in optimizer.param_groups:
        g["betas"], g["eps"], g["initial_lr"] = (cfg.beta1, cfg.beta2), cfg.eps, cfg.lr
        g["lr"] = cfg.lr * schedule(scheduler.last_epoch)
    optimizer.param_groups[0]["weight_decay"] = cfg.weight_decay  # the matrices' group (param_groups)
    scheduler.base_lrs = [cfg.lr] * len(optimizer.param_groups)
    scheduler._last_lr = [g["lr"] for g in optimizer.param_groups]
    changed = [f"--{k.replace('_', '-')} {saved[k]!r} -> {getattr(cfg, k)!r}" for k in HYPERPARAMETERS
               if k in saved and saved[k] != getattr(cfg, k)]
    if changed and rank == 0:
        print(f"[s1fast] notice: changed on resume, applied from step {scheduler.last_epoch + 1}: "
              f"{', '.join(changed)}", flush=True)
