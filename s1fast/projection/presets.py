"""The recipes the projection knows: :data:`s1fast.config.PRESETS` (block, global batch, epochs) plus what
only the projection needs (bundled token lengths, the published run's GPUs, the block s1fast is projected at,
a target), and the reader of token-lengths files."""
from __future__ import annotations

import os
from dataclasses import dataclass

from s1fast.config import PRESETS as RECIPES
from s1fast.lengths_file import read_lengths

ASSETS = os.path.join(os.path.dirname(os.path.dirname(__file__)), "assets", "data")
CALIBRATION_MODEL = "Qwen2.5-32B-Instruct"   # the model of s1's public figure


@dataclass(frozen=True)
class Preset:
    """A recipe (block size, global batch, epochs from :data:`s1fast.config.PRESETS`) plus what the
    projection needs besides: default lengths, GPUs, the block s1fast is projected at, the issue's target."""
    name: str
    lengths_file: str | None   # default token lengths (one integer a line), in s1fast/assets/data
    blocks: tuple              # block sizes to show; the first is the reference recipe's
    s1fast_block: int          # the block s1fast is projected at (the headline)
    global_batch: int          # sequences per optimizer step
    epochs: int
    gpus: int
    note: str = ""
    target_minutes: float | None = None   # the target runtime, where it sets one


# preset name (a key of config.PRESETS): (lengths file, GPUs of the published run, s1fast's block or None for the recipe's, note, target)
PROJECTED = {
    "s1": ("s1k_lengths_derived.txt", 16, None,
           "s1K lengths DERIVED from the published thinking-length histogram (SOURCES.md)", 10.0),
    "s1.1": ("s1k-1.1_lengths_derived.txt", 16, 32768,
             "s1K-1.1 lengths DERIVED from the published histogram; the reference ran at 20000 to avoid OOM", None),
    "sky-t1": (None, 8, None, "17K rows; no lengths file ships with s1fast: pass --lengths", None),
}


def get_preset(name: str) -> Preset:
    recipe = RECIPES[name]
    lengths_file, gpus, fast_block, note, target = PROJECTED[name]
    block = recipe["max_tokens"]
    fast_block = fast_block or block
    blocks = (block,) + ((fast_block,) if fast_block != block else ())
    return Preset(name, lengths_file, blocks, fast_block, recipe["global_batch"], recipe["epochs"], gpus, note, target)


def load_lengths(path: str) -> list[int]:
    """Token lengths, one positive integer per line (``s1fast.lengths_file``; a supervised count is ignored)."""
    return read_lengths(path)[0]


def preset_lengths(preset: Preset, path: str | None) -> tuple[list[int], str]:
    if path is None:
        if preset.lengths_file is None:
            raise SystemExit(
                f"preset {preset.name!r} has no bundled token lengths ({preset.note}). Pass "
                "--lengths FILE with one token length per line (e.g. tokenise the training set with "
                "`python -m s1fast.data prepare` and write each row's length), or use --lengths "
                f"{os.path.join(ASSETS, 's1k-1.1_lengths_derived.txt')} as a labelled stand-in.")
        path = os.path.join(ASSETS, preset.lengths_file)
    rel = os.path.relpath(path)
    return load_lengths(path), (path if rel.startswith("..") else rel)
