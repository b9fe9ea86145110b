"""The sampling-penalty flags of the generation CLIs (``s1fast.generate``, ``s1fast.eval``, ``s1fast.data
generate``): their names, defaults (no penalty) and ranges, which the server's request fields share (OpenAI's
presence / frequency penalties in [-2, 2], vLLM's repetition penalty > 0, 1 being none). Torch-free, so a
parser that offers them imports nothing heavy; ``s1fast.sampling.Penalties`` applies them."""
from __future__ import annotations

import argparse
import math

# flag dest -> (Penalties field, default: no penalty)
PENALTY_FLAGS = {"presence_penalty": ("presence", 0.0), "frequency_penalty": ("frequency", 0.0),
                 "repetition_penalty": ("repetition", 1.0)}


def add_penalty_args(p) -> None:
    """``--presence-penalty``, ``--frequency-penalty``, ``--repetition-penalty`` on parser (or group) ``p``."""
    p.add_argument("--presence-penalty", type=float, default=0.0,
                   help="subtracted from the logit of every token already in the output, in [-2, 2] (default: 0)")
    p.add_argument("--frequency-penalty", type=float, default=0.0,
                   help="subtracted once per earlier occurrence in the output, in [-2, 2] (default: 0)")
    p.add_argument("--repetition-penalty", type=float, default=1.0,
                   help="divides the positive (multiplies the negative) logits of tokens in the prompt or the "
                        "output, > 0 (default: 1, none); the native and vllm backends (the other two: native only)")


def penalty_values(args: argparse.Namespace) -> dict[str, float]:
    """{flag dest: value} of ``args`` (the defaults where a parser offered none)."""
    return {k: float(getattr(args, k, d)) for k, (_, d) in PENALTY_FLAGS.items()}


def set_penalties(args: argparse.Namespace) -> list[str]:
    """The penalty flags set away from their defaults (``--presence-penalty`` ...)."""
    return [f"--{k.replace('_', '-')}" for k, v in penalty_values(args).items() if v != PENALTY_FLAGS[k][1]]


def check_penalties(args: argparse.Namespace, backend: str, flag: str = "--backend") -> None:
    """ValueError naming the flag when a penalty is out of range, or set with a backend other than native."""
    v = penalty_values(args)
    for k in ("presence_penalty", "frequency_penalty"):
        if not -2.0 <= v[k] <= 2.0:
            raise ValueError(f"--{k.replace('_', '-')} must be in [-2, 2], got {v[k]}")
    if not (0 < v["repetition_penalty"] < math.inf):
        raise ValueError(f"--repetition-penalty must be a finite number > 0 (1 is no penalty), got "
                         f"{v['repetition_penalty']}")
    refused = set_penalties(args) if backend != "native" else []
    if backend == "vllm":    # vLLM's repetition penalty is s1fast's under re-prompting; the other two are not
        from s1fast.vllm_backend import UNSUPPORTED_PENALTIES
        refused = [f for f in refused if f[2:].replace("-", "_") in UNSUPPORTED_PENALTIES]
        if refused:
            why = UNSUPPORTED_PENALTIES[refused[0][2:].replace("-", "_")]
            raise ValueError(f"{', '.join(refused)} needs {flag} native ({why}): drop it or use {flag} native")
    if refused:
        raise ValueError(f"{', '.join(refused)} needs {flag} native (s1fast's engine applies the penalties; the "
                         f"{backend} {flag[2:]} does not): drop it or use {flag} native")
