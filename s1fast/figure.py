"""A figure (PNG) as s1fast's commands write them: matplotlib is optional, and the file is written whole.

Without matplotlib (the ``plot`` extra) a figure is skipped with a one-line notice saying where the numbers
are, and the command goes on; so is one a full disk or a folder without permission refuses. A figure is
saved beside its name and renamed over it, so neither a failed write nor a killed one leaves a partial PNG
(or truncates the last good one).
"""
from __future__ import annotations

import os

from .whole_folder import sibling


def pyplot(out: str, instead: str, file=None):
    """matplotlib's pyplot (the Agg backend: no display), or None after a notice that ``out`` is skipped
    (matplotlib is optional; ``instead``: where the numbers are; ``file``: where the notice goes, stdout by
    default)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"[s1fast] notice: {os.path.basename(out)} skipped: matplotlib is not installed (pip install "
              f"matplotlib); {instead}", file=file, flush=True)
        return None
    return plt


def save_figure(plt, fig, out: str, instead: str, file=None) -> str | None:
    """``fig`` written to ``out`` whole (to a sibling, then renamed) and closed: ``out``, or None after a notice
    on a full disk or a folder without permission, with no partial PNG left."""
    tmp = f"{sibling(out)}.png"
    fig.tight_layout()
    try:
        fig.savefig(tmp)
        os.replace(tmp, out)
    except OSError as e:
        print(f"[s1fast] notice: {os.path.basename(out)} skipped: {e.strerror or e}; {instead}", file=file,
              flush=True)
        return None
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.remove(tmp)
    return out
