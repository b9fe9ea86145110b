"""``python tests/signal_in_save.py MODULE STEP ARGS...``: run ``python -m MODULE ARGS...`` (s1fast.train or
s1fast.rl) with two SIGTERMs sent to the process in the middle of writing the checkpoint of step (RL: iteration)
STEP, after its model and optimizer shards and before its other files."""
import os
import runpy
import signal
import sys

from s1fast import checkpoint

module, target, sys.argv = sys.argv[1], int(sys.argv[2]), [sys.argv[1], *sys.argv[3:]]
real_save, real_rng, saving = checkpoint.save, checkpoint._rng_state, [None]


def save(root, step, *args, **kwargs):
    saving[0] = step
    try:
        return real_save(root, step, *args, **kwargs)
    finally:
        saving[0] = None


def rng_state():
    if saving[0] == target:
        for _ in range(2):
            os.kill(os.getpid(), signal.SIGTERM)
    return real_rng()


checkpoint.save, checkpoint._rng_state = save, rng_state
runpy.run_module(module, run_name="__main__", alter_sys=True)
