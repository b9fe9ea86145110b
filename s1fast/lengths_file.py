"""The one reader of token-lengths files (the projection's ``--lengths`` and ``python -m s1fast.packing``).

One example per line: ``length`` or ``length supervised`` (whitespace or comma separated); blank lines and
``#`` comments are skipped. Lengths are positive integers; errors name the file and line.
"""
from __future__ import annotations


def read_lengths(path: str) -> tuple[list[int], list[int | None]]:
    """(lengths, supervised counts or None where a line gives only the length)."""
    lengths, supervised = [], []
    with open(path) as f:
        for i, line in enumerate(f, 1):
            cells = line.split("#", 1)[0].replace(",", " ").split()
            if not cells:
                continue
            if len(cells) > 2:
                raise ValueError(f"{path}:{i}: expected 'length [supervised]', got {len(cells)} values")
            try:
                vals = [int(c) for c in cells]
            except ValueError:
                raise ValueError(f"{path}:{i}: expected integer token lengths ('length [supervised]'), got "
                                 f"{line.strip()!r}") from None
            if vals[0] <= 0:
                raise ValueError(f"{path}:{i}: token length must be positive, got {vals[0]}")
            lengths.append(vals[0])
            supervised.append(vals[1] if len(vals) > 1 else None)
    if not lengths:
        raise ValueError(f"{path}: no token lengths found (expected one integer per line)")
    return lengths, supervised
