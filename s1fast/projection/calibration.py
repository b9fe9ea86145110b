"""The reference stack's efficiency that reproduces s1's public figure (26 minutes), and s1fast's anchored
efficiency (docs/projection.md, "Calibration")."""
from __future__ import annotations

import os

from s1fast.hardware import GPU
from s1fast.memory import model_shape

from .assumptions import Assumptions
from .presets import ASSETS, CALIBRATION_MODEL, get_preset, load_lengths
from .runs import _setup, project_run


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


# torchtitan, Llama 3.1 8B on 8 H100 at 8192 tokens, FSDP2 (docs/projection.md, "Calibration"): tokens/s/GPU plain and compiled.
TORCHTITAN_PLAIN, TORCHTITAN_COMPILED = 5762.0, 6667.0
MEGATRON_BEST_MFU = 0.48


def anchored_s1fast_hfu(reference_hfu: float) -> float:
    """s1fast's assumed hardware efficiency: the calibrated reference's times torchtitan's measured
    torch.compile gain on FSDP2 (6667/5762 = 1.157 at the same checkpointing). The reference already runs
    flash attention (SDPA, one sequence per GPU), so the gain argued is compile + fused kernels only; the
    straggler factor and the recompute that selective checkpointing avoids are accounted for separately.
    The resulting MFU is capped at Megatron's best published 48% (see :func:`project`)."""
    return reference_hfu * TORCHTITAN_COMPILED / TORCHTITAN_PLAIN
