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
from torch.distributed.checkpoint.api import CheckpointException

from . import checkpoint
from .checkpoint import CheckpointError
from .config import ConfigError


def run_config(path: str) -> tuple[dict, str]:
    """(the run config saved with checkpoint ``path``, the folder the run started in, or "" if not recorded)."""
    if not os.path.isdir(path):
        raise CheckpointError(f"{path}: no such folder; pass a step_* folder under a run's checkpoints/")
    if not checkpoint.is_complete(path):
        root = path if os.path.basename(os.path.normpath(path)) == "checkpoints" else os.path.join(path, "checkpoints")
        done = [p for _, p, ok in checkpoint.step_folders(root) if ok]
        hint = (f"; the complete ones there: {', '.join(done[-3:])}" if done else
                "; pass a step_* folder under a run's checkpoints/")
        raise CheckpointError(f"{path} is not a complete s1fast checkpoint (a step_* folder with a manifest.json "
                              f"that matches its files){hint}")
    state = torch.load(os.path.join(path, "trainer.pt"), weights_only=False)
    if "config" not in state:
        raise CheckpointError(f"{path}/trainer.pt holds no run config: it was not saved by s1fast.train or s1fast.rl")
    return state["config"], state.get("cwd", "")


def check_out(out: str) -> None:
    """``out`` is replaced whole: refuse a file, or a folder that is neither empty nor a model folder (a run
    folder, a home folder), which would be deleted with everything in it."""
    if not os.path.exists(out):
        return
    names = set(os.listdir(out)) if os.path.isdir(out) else None
    if names is None or (names and not ("config.json" in names and any(
            n.startswith("model") and n.endswith((".safetensors", ".index.json")) for n in names))):
        raise CheckpointError(f"--out {out} exists and is not a Hugging Face model folder: the export replaces its "
                              f"--out whole, so it would be deleted; pass a new folder (or an earlier export's)")


def _from(value: str, cwd: str) -> str:
    """A relative path of the run's config, read from the folder the run started in when it is not here."""
    if value and cwd and not os.path.isabs(value) and not os.path.exists(value) \
            and os.path.exists(os.path.join(cwd, value)):
        return os.path.join(cwd, value)
    return value


def export(path: str, out: str, model: str = "", tokenizer: str = "") -> str:
    """Write ``out`` (a Hugging Face folder: config, safetensors, tokenizer) from checkpoint ``path``; ``model``
    and ``tokenizer`` replace the run's own where those have moved."""
    import torch.distributed.checkpoint as dcp

    from .model import build_model
    from .train import resolve_model
    cfg, cwd = run_config(path)
    check_out(out)
    spec = SimpleNamespace(model=model or _from(cfg["model"], cwd),
                           tokenizer=tokenizer or _from(cfg.get("tokenizer", ""), cwd))
    try:
        mcfg, _, tok = resolve_model(spec)
    except ConfigError as e:
        if model and tokenizer:
            raise
        raise ConfigError(f"{e} (the run of {path} had --model {cfg['model']!r} --tokenizer "
                          f"{cfg.get('tokenizer', '')!r}, started in {cwd or 'a folder not recorded'}): pass "
                          f"--model (that model's folder or named config) and --tokenizer as they are now") from None
    model = build_model(mcfg, device="cpu", dtype=torch.float32, init=False)
    state = {"model": model.state_dict()}
    with warnings.catch_warnings():  # "assuming the intent is to load in a single process": it is
        warnings.simplefilter("ignore", UserWarning)
        try:
            dcp.load(state, checkpoint_id=path, no_dist=True)
        except (Exception, CheckpointException) as e:  # noqa: BLE001 -- dcp's: a missing key, a shape
            raise CheckpointError(f"{path} does not load as the run's model ({spec.model}): "
                                  f"{checkpoint.last_line(e)[:300]}. Pass the --model it was trained as, or check "
                                  f"that the checkpoint is intact") from None
    return checkpoint.write_hf_folder(state["model"], mcfg, out, tok)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m s1fast.export", description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", help="a step_* folder under a run's checkpoints/")
    p.add_argument("--out", default="", help="output folder (default: <run>/export_<step folder name>)")
    p.add_argument("--model", default="", help="the run's model folder or named config, where it has moved since "
                   "(default: the run's --model)")
    p.add_argument("--tokenizer", default="", help="the tokenizer folder, where it has moved (default: the run's)")
    a = p.parse_args(argv)
    ck = os.path.normpath(a.checkpoint)
    out = a.out or os.path.join(os.path.dirname(os.path.dirname(ck)), f"export_{os.path.basename(ck)}")
    try:
        print(f"[s1fast] exported {export(ck, out, a.model, a.tokenizer)} (Hugging Face format)")
    except (CheckpointError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a full disk, no permission: nothing partial is left, an older export is intact
        print(f"error: writing {out} failed ({e.strerror or e}); free the space or fix the permissions and run "
              f"again", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"error: interrupted: {out} was not written (nothing partial is left; an earlier export there is "
              f"intact)", file=sys.stderr)
        return 128 + 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
