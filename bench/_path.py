"""``python bench/X.py`` imports as ``python -m bench.X`` does: every runnable script of bench/ imports this
module first when it runs as a path (``if __name__ == "__main__" and not __package__``).

Run as a path, Python puts bench/ itself first on ``sys.path``, not the repository root, so ``bench.env`` and
the other ``bench.`` modules did not import (ModuleNotFoundError: bench), and the ``s1fast`` imported was the
installed one rather than this checkout's. This puts the root in bench/'s place (bench/'s own files then do
not shadow top-level modules: ``env``, ``peak_rss``...). Under ``-m`` and when tests load a script by its file,
nothing runs: ``__package__`` is set, or the script is not ``__main__``.
"""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path[:] = [ROOT if p and os.path.abspath(p) == HERE else p for p in sys.path]
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
