"""A signal while a checkpoint is being saved (a second one too) is recorded, not acted on: the save completes,
the run is told to stop, each signal is reported on stderr, and the handlers before the run come back after it.
(The agreement between ranks runs end to end in test_train.py and test_rl_cli.py.)"""
import os
import signal

import torch

from s1fast import checkpoint as C
from s1fast.stopping import StopOnSignal, stopped


def test_signals_during_a_save_let_it_complete_and_are_reported(tmp_path, monkeypatch, capfd):
    torch.manual_seed(0)
    m = torch.nn.Linear(4, 3)
    opt = torch.optim.AdamW(m.parameters())
    real = torch.save

    def signalled_mid_save(obj, f, *a, **k):  # SIGTERM, then a second one (a Ctrl-C), while the files are written
        if str(f).endswith("trainer.pt"):
            os.kill(os.getpid(), signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGINT)
        return real(obj, f, *a, **k)
    monkeypatch.setattr(torch, "save", signalled_mid_save)
    before = signal.getsignal(signal.SIGTERM)
    with StopOnSignal() as stop:
        assert stop.agreed(torch.device("cpu")) is None
        path = C.save(str(tmp_path / "checkpoints"), 3, m, opt, {"run_id": "r"})
        assert C.is_complete(path) and C.latest(str(tmp_path / "checkpoints")) == path
        assert stop.agreed(torch.device("cpu")) == signal.SIGINT  # the last one received
        said = []
        assert stopped(said.append, stop.agreed(torch.device("cpu")), path, "step", 3) == \
            {"stopped": 3, "checkpoint": path, "signal": int(signal.SIGINT)}
    assert signal.getsignal(signal.SIGTERM) is before
    err = capfd.readouterr().err
    assert "[s1fast] signal 15: stopping after the step under way, once it is saved" in err
    assert "[s1fast] signal 2 again: the work under way and its save finish first" in err
    assert said == [f"[s1fast] signal 2: saved {path} at step 3; run again with the same --output-dir to resume"]


def test_a_ctrl_c_outside_the_steps_is_one_error_line_and_130(tmp_path, monkeypatch, capsys):
    """Outside the steps (set-up, the export) a Ctrl-C raises KeyboardInterrupt: the trainer and RL print one
    error line (not a traceback) and exit 130."""
    import s1fast.rl.__main__ as rl_main
    import s1fast.train as train_main

    def interrupted(*_a, **_k):
        raise KeyboardInterrupt
    for mod, fn in ((train_main, "train"), (rl_main, "run")):
        monkeypatch.setattr(mod.distributed, "init", lambda *_a: (torch.device("cpu"), 0, 1))
        monkeypatch.setattr(mod.distributed, "shutdown", lambda **_k: None)
        monkeypatch.setattr(mod, fn, interrupted)
        assert mod.main(["--model", "tiny-qwen2", "--output-dir", str(tmp_path), "--progress", "false"]) == 130
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: interrupted") and "--output-dir" in err[0], err
