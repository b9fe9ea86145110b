"""Load the native extension ``s1fast._C`` (built by setup.py) and say clearly when it is missing."""
from __future__ import annotations

import torch

_ERR: Exception | None = None
try:
    from . import _C  # noqa: F401  (registers torch.ops.s1fast.*)
except ImportError as e:  # pragma: no cover - exercised when the extension was not built
    _ERR = e


def available() -> bool:
    return _ERR is None


def ops():
    """``torch.ops.s1fast``, or an error telling how to build the extension."""
    if _ERR is not None:
        raise ImportError("s1fast's native extension is not built. From the repository root run "
                          "`pip install --no-build-isolation -e .` (or `python setup.py build_ext --inplace`)."
                          f" Import error: {_ERR}")
    return torch.ops.s1fast
