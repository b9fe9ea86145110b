"""The memory model that ``--checkpoint-budget-gb`` trusts, as the GPU checks read it: the one place they import it.

The model lives in ``s1fast.project`` today (``memory_gb``, ``model_shape``, ``Assumptions``); when it moves,
only the import below changes. ``predicted_gib`` gives its components in GiB (what
``torch.cuda.max_memory_allocated`` and the memory tracker count in) for one rank.
"""
from __future__ import annotations

from s1fast.project import GB, Assumptions, memory_gb, model_shape  # the memory model's home (repoint at merge)

GIB = 2 ** 30


def predicted_gib(model, tokens: int, *, shard: int = 1, ckpt_layers: int | None = None,
                  assumptions: Assumptions | None = None) -> dict:
    """The memory model's per-rank components (states, saved_activations, loss_phase, layer_phase, peak) in GiB
    for ``model`` (a CONFIGS name or ModelConfig) at ``tokens`` tokens, ``ckpt_layers`` blocks checkpointed."""
    parts = memory_gb(model_shape(model), assumptions or Assumptions(), stack="s1fast", tokens=tokens, shard=shard,
                      ckpt_layers=ckpt_layers)
    return {k: v * GB / GIB for k, v in parts.items()}


__all__ = ["GIB", "Assumptions", "model_shape", "predicted_gib"]
