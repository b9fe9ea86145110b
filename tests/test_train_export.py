"""The trainer's final export when rank 0 alone fails while writing final/: every rank leaves at once with rank
0's outcome (its error line; 128 + the signal for a Ctrl-C or SIGTERM, 2 for a full disk, 1 and rank 0's
traceback for a bug), no partial folder is left, the checkpoint is intact and a rerun exports. Before, the other
rank waited in the broadcast of the error until torchrun killed it. End to end on two ranks (torchrun, gloo) for
a Ctrl-C and a full disk; each outcome in process on one rank."""
import os
import signal
import subprocess
import sys

import pytest
import torch
from signal_ranks import end, exit_codes

from s1fast import checkpoint
from s1fast.train_export import RankFollows, export_final
from s1fast.data import DEFAULT_TOKENIZER
from s1fast.stopping import Interrupted

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
ENV.pop("TRITON_INTERPRET", None)  # the trainer's CPU path: PyTorch kernels (the interpreter is tested elsewhere)
ARGS = ["--preset", "tiny", "--max-tokens", "256", "--global-batch", "4", "--max-steps", "1", "--progress", "false",
        "--plot", "false"]


def failing_run(how: str, out: str, timeout: float = 240) -> tuple[dict, str]:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "--monitor-interval", "3", os.path.join(ROOT, "tests", "fail_in_export.py"), how, *ARGS,
           "--output-dir", out]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        text, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:  # a rank hangs in a collective
        text = end(proc)
        raise AssertionError(f"the ranks did not leave within {timeout} s:\n{text[-4000:]}") from None
    return exit_codes(text), text


def test_rank_0_failing_in_the_export_ends_every_rank_alike_and_a_rerun_exports(tmp_path):
    """One run folder, failed twice in turn (the second resumes the finished training and fails in the export
    again: the token cache and the checkpoint are reused), then a plain rerun exports."""
    out = str(tmp_path / "run")
    final = os.path.join(out, "final")
    for how, code, line in (
            ("sigint", 130, "error: interrupted (the checkpoints and a final/ already there are intact)"),
            ("enospc", 2, f"error: exporting {final} failed (OSError: [Errno 28] No space left on device")):
        codes, text = failing_run(how, out)
        assert codes == {0: code, 1: code}, f"{how}: {text[-4000:]}"
        assert text.count(line) == 1, f"{how}: {text[-4000:]}"
        assert text.count("Traceback") == 1, f"{how}: {text[-4000:]}"  # torchrun's own (ChildFailedError)
        assert not [f for f in os.listdir(out) if f.startswith("final")], (how, os.listdir(out))
        ck = checkpoint.latest(os.path.join(out, "checkpoints"))
        assert checkpoint.is_complete(ck) and checkpoint.step_of(ck) == 1, how
    p = subprocess.run([sys.executable, "-m", "s1fast.train", *ARGS, "--output-dir", out], cwd=ROOT, env=ENV,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0 and f"resumed from {ck} at step 1" in p.stdout, p.stdout[-2000:] + p.stderr[-3000:]
    assert os.path.exists(os.path.join(final, "model.safetensors"))


@pytest.mark.parametrize("how, raised", [("sigint", Interrupted), ("sigterm", Interrupted), ("bug", RankFollows)])
def test_each_outcome_of_the_write_is_what_every_rank_raises(tmp_path, monkeypatch, capfd, how, raised):
    """One rank (no collective to wait on): a signal mid-write is ``Interrupted`` with its number (SIGTERM too,
    which would otherwise kill the process and leave the partial folder), a bug prints its traceback and is
    ``RankFollows(1)``; the partial folder is removed every time."""
    from s1fast import model as M
    from s1fast.model import Transformer
    from s1fast.model_config import CONFIGS

    def failing(state_dict, cfg, out_dir, *a, **k):
        os.makedirs(out_dir)
        open(os.path.join(out_dir, "model.safetensors"), "w").close()
        if how == "bug":
            raise RuntimeError("an unexpected failure")
        os.kill(os.getpid(), signal.SIGINT if how == "sigint" else signal.SIGTERM)
    monkeypatch.setattr(M, "save_state_dict_hf", failing)
    mcfg = CONFIGS["tiny-qwen2"]
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(raised) as e:
        export_final(str(tmp_path), Transformer(mcfg), mcfg, DEFAULT_TOKENIZER, torch.device("cpu"), 0)
    assert signal.getsignal(signal.SIGTERM) is before
    code = {"sigint": 130, "sigterm": 143, "bug": 1}[how]
    assert (128 + e.value.signum if raised is Interrupted else e.value.code) == code
    assert os.listdir(tmp_path) == []
    err = capfd.readouterr().err
    assert ("RuntimeError: an unexpected failure" in err) == (how == "bug"), err
