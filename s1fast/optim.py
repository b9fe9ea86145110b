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


def param_groups(model: torch.nn.Module, weight_decay: float, decay_norms: bool = False) -> list[dict]:
    """AdamW's two groups: decayed and not. By default the weight matrices are decayed and the 1-D parameters
    (biases, norm weights) are not. ``decay_norms``: as s1's trainer made them (transformers 4.46.1,
    ``Trainer.get_decay_parameter_names``), every parameter but those whose name contains "bias" and those of
    ``nn.LayerNorm`` modules, so Qwen2's RMSNorm weights are decayed (4.46.1 skips only ``nn.LayerNorm``
    instances; newer transformers skip norms by name). docs/recipe.md, "s1 / s1.1 supervised"."""
    layer_norm = {f"{m_name}.{p_name}" if m_name else p_name
                  for m_name, m in model.named_modules() if isinstance(m, torch.nn.LayerNorm)
                  for p_name, _ in m.named_parameters(recurse=False)}
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            skip = ("bias" in name or name in layer_norm) if decay_norms else p.ndim < 2
            (no_decay if skip else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def apply_hyperparameters(cfg, saved: dict, optimizer, scheduler, schedule, rank: int) -> None:
    """The optimizer state restores the checkpoint's hyperparameters; set this run's instead (identical
    values when nothing changed, so an unchanged resume stays bitwise exact) and say what changed."""
    for g in optimizer.param_groups:
        g["betas"], g["eps"], g["initial_lr"] = (cfg.beta1, cfg.beta2), cfg.eps, cfg.lr
        g["lr"] = cfg.lr * schedule(scheduler.last_epoch)
    optimizer.param_groups[0]["weight_decay"] = cfg.weight_decay  # the decayed group (param_groups)
    scheduler.base_lrs = [cfg.lr] * len(optimizer.param_groups)
    scheduler._last_lr = [g["lr"] for g in optimizer.param_groups]
    changed = [f"--{k.replace('_', '-')} {saved[k]!r} -> {getattr(cfg, k)!r}" for k in HYPERPARAMETERS
               if k in saved and saved[k] != getattr(cfg, k)]
    if changed and rank == 0:
        print(f"[s1fast] notice: changed on resume, applied from step {scheduler.last_epoch + 1}: "
              f"{', '.join(changed)}", flush=True)
