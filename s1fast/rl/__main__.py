"""``torchrun --nproc_per_node N -m s1fast.rl [--preset NAME] [--key value ...]`` (``--help`` lists every flag)."""
from __future__ import annotations

from .. import distributed
from ..checkpoint import CheckpointError
from ..config import ConfigError
from ..data import DataError
from ..entry import exit_status
from ..train import TrainingDiverged
from .config import parse_config, validate
from .loop import VerifierError, run


def main(argv=None) -> int:
    cfg = parse_config(argv)

    def start() -> dict:
        device, rank, world = distributed.init(cfg.device)
        validate(cfg, world)
        return run(cfg, device, rank, world)
    return exit_status(start, (ConfigError, DataError, CheckpointError, TrainingDiverged, VerifierError,
                               FileNotFoundError))


if __name__ == "__main__":
    distributed.exit_rank(main())
