"""Run a module as ``__main__`` and record this process's peak resident memory when it ends.

    torchrun --nproc_per_node 2 -m bench.peak_rss OUT_PREFIX -m s1fast.train --preset tiny ...

Each rank writes ``OUT_PREFIX.rank{RANK}.json`` = {"rank", "ru_maxrss_gb", "exit"}: ``ru_maxrss`` of the
rank's own process (Linux reports KiB), read after the module returned or raised. Wrapping every stack the
same way measures them the same way, whatever each one logs about itself.
"""
from __future__ import annotations

if __name__ == "__main__" and not __package__:  # run as python bench/X.py: import as python -m bench.X
    import _path  # noqa: F401  (bench/_path.py)

import json
import os
import resource
import runpy
import sys


def main() -> None:
    usage = "usage: python -m bench.peak_rss OUT_PREFIX -m MODULE [ARGS...]"
    if sys.argv[1:2] in (["-h"], ["--help"]):
        print(f"{usage}\n\n{__doc__}")
        sys.exit(0)
    if len(sys.argv) < 4 or sys.argv[2] != "-m":
        print(f"{usage}\nerror: give the output prefix, then -m and the module to run", file=sys.stderr)
        sys.exit(2)
    prefix, module, args = sys.argv[1], sys.argv[3], sys.argv[4:]
    sys.argv = [module] + args
    code = 0
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as e:  # the module's own sys.exit(main()): keep its status
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        rank = int(os.environ.get("RANK", "0"))
        with open(f"{prefix}.rank{rank}.json", "w") as f:
            json.dump({"rank": rank, "ru_maxrss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
                       "exit": code}, f)
    sys.exit(code)


if __name__ == "__main__":
    main()
