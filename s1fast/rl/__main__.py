"""``torchrun --nproc_per_node N -m s1fast.rl [--preset NAME] [--key value ...]`` (``--help`` lists every flag)."""
from __future__ import annotations

import os
import signal
import sys

from .. import distributed
from ..checkpoint import CheckpointError
from ..config import ConfigError
from ..data import DataError
from ..stopping import INTERRUPTED
from ..train import TrainingDiverged
from ..train_export import RankFollows
from .config import parse_config, validate
from .loop import VerifierError, run


def main(argv=None) -> int:
    cfg = parse_config(argv)
    rank, ended = int(os.environ.get("RANK", "0")), False
    try:
        device, rank, world = distributed.init(cfg.device)
        validate(cfg, world)
        result = run(cfg, device, rank, world)
        ended = True
        return 128 + result["signal"] if "signal" in result else 0  # a stopped run did not finish: non-zero
    except (ConfigError, DataError, CheckpointError, TrainingDiverged, VerifierError, FileNotFoundError) as e:
        if rank == 0:
            print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:  # outside the steps (they stop cleanly): set-up, the export
        if rank == 0:
            print(f"error: {INTERRUPTED}", file=sys.stderr)
        return 128 + getattr(e, "signum", signal.SIGINT)
    except RankFollows as e:  # rank 0 reported the failure (the export)
        return e.code
    finally:
        distributed.shutdown(together=ended)


if __name__ == "__main__":
    distributed.exit_rank(main())
