"""Argument types of bench/'s scripts: a bad value is argparse's one ``error:`` line (exit 2), before any work.

Without them ``--repeat 0`` ended in a ``statistics.StatisticsError`` traceback after the warm-up,
``--batch-sizes x`` in a ``ValueError`` traceback after the model was built, ``--questions 0`` quietly meant
"every question" (``limit=0``), and ``rl_toy --seeds x`` failed only after its 4-minute SFT run.
"""
from __future__ import annotations

import argparse

from s1fast.data.pipeline.rows import non_negative_int, positive_int

__all__ = ["non_negative_int", "positive_int", "positive_ints", "whole_numbers"]


def _comma_list(parse, want: str):
    def f(text: str) -> list[int]:
        try:
            out = [parse(x.strip()) for x in text.split(",") if x.strip()]
        except (ValueError, argparse.ArgumentTypeError):
            out = []
        if not out:
            raise argparse.ArgumentTypeError(f"expected comma-separated {want}, got {text!r}")
        return out
    return f


positive_ints = _comma_list(positive_int, "positive whole numbers (e.g. 1,16)")
whole_numbers = _comma_list(int, "whole numbers (e.g. 0,1,2)")
