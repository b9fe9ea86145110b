"""What a run shows: a progress bar, ``metrics.jsonl``, a loss-curve PNG, and optional TensorBoard.

Only rank 0 writes. ``metrics.jsonl`` is appended line by line and flushed, so a crash loses nothing
already logged (a last line it cut short is dropped before the next run appends); after a resume, steps
that are run again are appended again and the plot keeps the last entry of each step. Every line is strict
JSON (a non-finite number is written as ``null``). The plot is optional: without matplotlib, or on a full
disk, it is skipped with a one-line notice and no partial file is left.
"""
from __future__ import annotations

import json
import math
import os

from .figure import pyplot, save_figure
from .jsonl import end_cut_line


def finite_or_none(row: dict) -> dict:
    """``row`` with NaN and infinities as None, so ``json.dumps`` writes valid JSON (``null``)."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}


class Metrics:
    def __init__(self, output_dir: str, total_steps: int, *, enabled: bool, progress: bool = True,
                 tensorboard: bool = False, start_step: int = 0):
        self.enabled = enabled
        self.path = os.path.join(output_dir, "metrics.jsonl")
        self.bar = self.tb = None
        if not enabled:
            return
        os.makedirs(output_dir, exist_ok=True)
        if os.path.exists(self.path):
            end_cut_line(self.path)   # a line a crash cut short: appended to, it would swallow the next step
        self.file = open(self.path, "a", buffering=1)
        if progress:
            from tqdm import tqdm
            self.bar = tqdm(total=total_steps, initial=start_step, desc="training", unit="step", dynamic_ncols=True)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self.tb = SummaryWriter(os.path.join(output_dir, "tensorboard"))
            except ImportError:
                print("[s1fast] --tensorboard asked for but tensorboard is not installed (pip install tensorboard); "
                      "continuing with metrics.jsonl only")

    def log(self, row: dict) -> None:
        if not self.enabled:
            return
        self.file.write(json.dumps(finite_or_none(row), allow_nan=False) + "\n")
        if self.bar is not None:
            self.bar.update(row["step"] - self.bar.n)
            post = dict(loss=f"{row['loss']:.4f}", lr=f"{row['lr']:.2e}", tok_s=f"{row['tokens_per_s']:.0f}",
                        step_s=f"{row['step_time']:.2f}")
            if row.get("mfu") is not None:  # None where the device's peak is unknown (CPUs)
                post["mfu"] = f"{100 * row['mfu']:.1f}%"
            self.bar.set_postfix(post)
        if self.tb is not None:
            for k, v in row.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "step":
                    self.tb.add_scalar(k, v, row["step"])

    def message(self, text: str) -> None:
        if not self.enabled:
            return
        (self.bar.write if self.bar is not None else print)(text)

    def close(self, plot: bool = True) -> str | None:
        if not self.enabled:
            return None
        if self.bar is not None:
            self.bar.close()
        if self.tb is not None:
            self.tb.close()
        self.file.close()
        return plot_loss(self.path) if plot else None


def read_metrics(path: str) -> list[dict]:
    """The rows of a metrics file, the last entry of each step kept, in step order."""
    by_step = {}
    with open(path) as f:
        for line in f:
            try:
                row = json.loads(line) if line.strip() else None
            except json.JSONDecodeError:  # a line cut short by a crash
                continue
            if isinstance(row, dict) and "step" in row:
                by_step[row["step"]] = row
    return [by_step[k] for k in sorted(by_step)]


def plot_loss(metrics_path: str, out: str | None = None) -> str | None:
    """``loss_curve.png`` beside the metrics: loss per step, learning rate on a second axis."""
    rows = [r for r in read_metrics(metrics_path) if r.get("loss") is not None]
    out = out or os.path.join(os.path.dirname(metrics_path), "loss_curve.png")
    plt = pyplot(out, "metrics.jsonl has every step") if rows else None
    if plt is None:
        return None
    steps = [r["step"] for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    ax.plot(steps, [r["loss"] for r in rows], color="tab:blue", lw=1.6, label="train loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (step objective)")
    ax.grid(alpha=0.3)
    ax2 = ax.twinx()
    ax2.plot(steps, [r["lr"] for r in rows], color="tab:orange", lw=1, ls="--", label="learning rate")
    ax2.set_ylabel("learning rate")
    lines = ax.get_lines() + ax2.get_lines()
    ax.legend(lines, [ln.get_label() for ln in lines], loc="upper right")
    ax.set_title(f"s1fast: {rows[-1].get('run', '')} loss {rows[0]['loss']:.3f} -> {rows[-1]['loss']:.3f}")
    return save_figure(plt, fig, out, "metrics.jsonl has every step")
