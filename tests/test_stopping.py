"""A signal while a checkpoint is being saved (a second one too) is recorded, not acted on: the save completes,
the run is told to stop, each signal is reported on stderr, and the handlers before the run come back after it.
End to end: the trainer signalled twice while writing its last checkpoint completes it and stops before the
export, which the rerun does. (The agreement between ranks runs end to end in test_train.py and test_rl_cli.py.)"""
import os
import signal
import subprocess
import sys

import pytest
import torch

from s1fast import checkpoint as C
from s1fast.stopping import StopOnSignal, stopped

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
ENV.pop("TRITON_INTERPRET", None)  # the trainer's CPU path: PyTorch kernels (the interpreter is tested elsewhere)


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


@pytest.mark.slow
def test_sigterm_twice_during_the_last_save_completes_it_and_stops_before_the_export(tmp_path):
    """The trainer's last save ran outside its signal handler: a SIGTERM there killed the save under way."""
    out = str(tmp_path / "run")
    args = ["--preset", "tiny", "--max-tokens", "256", "--global-batch", "4", "--max-steps", "1", "--progress",
            "false", "--plot", "false", "--output-dir", out]
    p = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "signal_in_save.py"), "s1fast.train", "1", *args],
                       cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    ck = os.path.join(out, "checkpoints", "step_00000001")
    assert p.returncode == 128 + signal.SIGTERM, p.stdout[-2000:] + p.stderr[-3000:]
    assert f"signal 15: saved {ck} at step 1; run again with the same --output-dir to export it" in p.stdout
    assert "signal 15 again: the work under way and its save finish first" in p.stderr
    assert C.is_complete(ck) and not os.path.exists(os.path.join(out, "final"))
    p = subprocess.run([sys.executable, "-m", "s1fast.train", *args], cwd=ROOT, env=ENV, capture_output=True,
                       text=True, timeout=600)
    assert p.returncode == 0 and f"resumed from {ck} at step 1" in p.stdout, p.stderr[-3000:]
    assert os.path.exists(os.path.join(out, "final", "model.safetensors"))


def test_rl_signalled_during_its_last_save_stops_before_the_evaluation_and_export(monkeypatch):
    """RL's last save ran with the signal recorded and never read: the run went on to evaluate and export, and
    exited 0 as if no signal had come."""
    from types import SimpleNamespace

    from s1fast.rl import loop

    def save(s, it):
        os.kill(os.getpid(), signal.SIGTERM)
        return f"checkpoints/step_{it:08d}"
    monkeypatch.setattr(loop, "save", save)
    said = []
    s = SimpleNamespace(device=torch.device("cpu"), metrics=SimpleNamespace(message=said.append))
    with StopOnSignal() as stop:
        assert loop.last_save(s, 3, 3, "checkpoints/step_00000003", stop) == ("checkpoints/step_00000003", None)
        assert loop.last_save(s, 2, 3, "checkpoints/step_00000002", stop) == (
            "checkpoints/step_00000003", {"stopped": 3, "checkpoint": "checkpoints/step_00000003",
                                          "signal": int(signal.SIGTERM)})
    assert said == ["[s1fast] signal 15: saved checkpoints/step_00000003 at iteration 3; run again with the same "
                    "--output-dir to evaluate and export it"]
