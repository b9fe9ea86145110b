"""Gloo process groups for tests, with no TCP port to collide on and no C++ teardown to abort in.

* The group meets through a file store in the test's ``tmp_path`` (``file://``), never a fixed
  ``MASTER_PORT``: a port made from the pid can be taken by another job on a shared box.
* A spawned rank that succeeded waits for its peers, destroys the group and leaves with ``os._exit(0)``, as
  ``s1fast.distributed.exit_rank`` does: PyTorch's C++ teardown has aborted a finished rank now and then on a
  loaded box ("terminate called without an active exception"), failing CI once. A rank that raised still
  raises, so ``torch.multiprocessing`` reports its traceback.
"""
import contextlib
import os
import sys


def _entry(rank, fn, world, init_file, args):
    import torch.distributed as dist
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        fn(rank, *args)
        dist.barrier()
    finally:
        dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def run_ranks(fn, world: int, tmp_path, *args) -> None:
    """``fn(rank, *args)`` on ``world`` spawned processes, each in one gloo group; raises if any rank failed."""
    import torch.multiprocessing as mp
    init_file = os.path.join(str(tmp_path), "gloo-init")
    mp.start_processes(_entry, args=(fn, world, init_file, args), nprocs=world, start_method="spawn")


@contextlib.contextmanager
def one_process_group(tmp_path):
    """A gloo group of this process alone, for the length of the ``with``."""
    import torch.distributed as dist
    dist.init_process_group("gloo", init_method=f"file://{os.path.join(str(tmp_path), 'gloo-init')}",
                            rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()
