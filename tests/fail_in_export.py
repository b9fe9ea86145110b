"""``python tests/fail_in_export.py HOW ARGS...`` (under torchrun): run ``s1fast.train ARGS...`` with rank 0 alone
failing in the middle of writing final/ (its weights written into the temporary folder, before the swap):
HOW is ``sigint`` (a Ctrl-C in rank 0's terminal), ``enospc`` (a full disk) or ``bug`` (an unexpected error)."""
import errno
import os
import runpy
import signal
import sys

from s1fast import model

how, sys.argv = sys.argv[1], ["s1fast.train", *sys.argv[2:]]
real = model.save_state_dict_hf


def save_state_dict_hf(state_dict, cfg, out_dir, *args, **kwargs):
    real(state_dict, cfg, out_dir, *args, **kwargs)
    if os.environ.get("RANK") == "0":
        if how == "sigint":
            os.kill(os.getpid(), signal.SIGINT)
        elif how == "enospc":
            raise OSError(errno.ENOSPC, "No space left on device", out_dir)
        else:
            raise RuntimeError("an unexpected failure")


model.save_state_dict_hf = save_state_dict_hf
runpy.run_module("s1fast.train", run_name="__main__", alter_sys=True)
