"""Projection of a recipe's wall time and per-GPU memory on H100s: s1's stack against s1fast.

Nothing here is measured: every output is PROJECTED from arithmetic (docs/projection.md), calibrated against
the one public timing (s1: 315 optimizer steps in 26 minutes on 16 H100). Every assumed input is a field of
:class:`Assumptions` and a flag of ``python -m s1fast.project``. The memory model is :mod:`s1fast.memory`
(shared with the trainer), the GPUs :mod:`s1fast.hardware`; runtime code never imports this package.
"""
from s1fast.hardware import GB, GPU, GPUS
from s1fast.memory import Shape, layers_to_checkpoint, max_fit_tokens, memory_gb, model_shape

from .assumptions import Assumptions
from .calibration import MEGATRON_BEST_MFU, anchored_s1fast_hfu, calibrate
from .plans import comm_per_microstep, micro_step_loads, optimizer_seconds, projection_plan
from .presets import CALIBRATION_MODEL, PROJECTED, Preset, get_preset, load_lengths, preset_lengths
from .report import format_report, plot, project
from .runs import (MEMORY_TABLE_BLOCKS, Run, adaptive_recompute, layer_fraction, memory_table, project_run,
                   recompute_factor)
from .cli import main

__all__ = ["GB", "GPU", "GPUS", "Shape", "layers_to_checkpoint", "max_fit_tokens", "memory_gb", "model_shape",
           "Assumptions", "MEGATRON_BEST_MFU", "anchored_s1fast_hfu", "calibrate", "comm_per_microstep",
           "micro_step_loads", "optimizer_seconds", "projection_plan", "CALIBRATION_MODEL", "PROJECTED", "Preset",
           "get_preset", "load_lengths", "preset_lengths", "format_report", "plot", "project",
           "MEMORY_TABLE_BLOCKS", "Run", "adaptive_recompute", "layer_fraction", "memory_table", "project_run",
           "recompute_factor", "main"]
