"""``python -m s1fast.export CHECKPOINT [--out DIR]``: a checkpoint of the trainer or of RL (a ``step_*`` folder,
saved by any number of ranks) as a Hugging Face folder, on one process with no GPU.

The run's own ``final/`` is its last step; this gives any earlier one, e.g. to evaluate it or to start RL from
a model that still has room to improve. The model shape and tokenizer come from the checkpoint's run config.
"""
from __future__ import annotations

import argparse
import os
import sys
import warnings
from types import SimpleNamespace

import torch

from . import checkpoint
from .checkpoint import CheckpointError
from .config import ConfigError


def run_config(path: str) -> dict:
    if not checkpoint.is_complete(path):
        raise CheckpointError(f"{path} is not a complete s1fast checkpoint (a step_* folder with a manifest.json "
                              "that matches its files)")
    state = torch.load(os.path.join(path, "trainer.pt"), weights_only=False)
    if "config" not in state:
        raise CheckpointError(f"{path}/trainer.pt holds no run config: it was not saved by s1fast.train or s1fast.rl")
    return state["config"]


def export(path: str, out: str) -> str:
    """Write ``out`` (a Hugging Face folder: config, safetensors, tokenizer) from checkpoint ``path``."""
    import torch.distributed.checkpoint as dcp

    from .model import build_model
    from .train import resolve_model
    cfg = run_config(path)
    mcfg, _, tok = resolve_model(SimpleNamespace(model=cfg["model"], tokenizer=cfg.get("tokenizer", "")))
    model = build_model(mcfg, device="cpu", dtype=torch.float32, init=False)
    state = {"model": model.state_dict()}
    with warnings.catch_warnings():  # "assuming the intent is to load in a single process": it is
        warnings.simplefilter("ignore", UserWarning)
        dcp.load(state, checkpoint_id=path, no_dist=True)
    return checkpoint.write_hf_folder(state["model"], mcfg, out, tok)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m s1fast.export", description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", help="a step_* folder under a run's checkpoints/")
    p.add_argument("--out", default="", help="output folder (default: <run>/export_<step folder name>)")
    a = p.parse_args(argv)
    ck = os.path.normpath(a.checkpoint)
    out = a.out or os.path.join(os.path.dirname(os.path.dirname(ck)), f"export_{os.path.basename(ck)}")
    try:
        print(f"[s1fast] exported {export(ck, out)} (Hugging Face format)")
    except (CheckpointError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a full disk, no permission: nothing partial is left, an older export is intact
        print(f"error: writing {out} failed ({e.strerror or e}); free the space or fix the permissions and run "
              f"again", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
