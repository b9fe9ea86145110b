"""Checkpoints in one process (issue 14): completeness by manifest, retention over complete checkpoints only,
a failed save that removes its partial folder and names the intact one, a damaged checkpoint named with the
intact one to use, the run lock (live owner refused, dead owner's lock taken over), and what a killed or
interrupted export or save leaves behind (removed, the previous complete folder kept)."""
import errno
import json
import os
import socket
import subprocess
import sys

import pytest
import torch

from s1fast import checkpoint as C


def _model():
    torch.manual_seed(0)
    m = torch.nn.Linear(4, 3)
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
    m(torch.randn(2, 4)).sum().backward()
    opt.step()
    return m, opt


def _save(root, step, keep=2):
    m, opt = _model()
    return C.save(str(root), step, m, opt, {"run_id": "r"}, keep)


def test_newest_broken_checkpoint_is_named_not_loaded_and_retention_keeps_the_intact_one(tmp_path, capsys):
    root = tmp_path / "checkpoints"
    for s in (1, 2, 3):
        _save(root, s)
    assert sorted(os.listdir(root)) == ["latest", "step_00000002", "step_00000003"]
    os.remove(root / "step_00000003" / "trainer.pt")  # bug 2: the newest one broken
    assert C.latest(str(root)) == str(root / "step_00000002")
    assert C.broken(str(root)) == [str(root / "step_00000003")]
    # the same step saved again replaces the broken folder; the intact step 2 is kept (keep=2 counts complete ones)
    _save(root, 3)
    assert C.is_complete(str(root / "step_00000003")) and C.is_complete(str(root / "step_00000002"))
    # retention never deletes the newest complete checkpoint, even when older ones have larger step numbers
    # (another run's leftovers)
    _save(root, 10)
    _save(root, 4, keep=1)
    assert C.is_complete(str(root / "step_00000004")), os.listdir(root)
    assert C.latest(str(root)) == str(root / "step_00000004")  # the last one saved, not the largest number
    assert not (root / "step_00000003").exists() and not (root / "step_00000002").exists()


def test_disk_full_during_save_removes_the_partial_folder_and_names_the_intact_checkpoint(tmp_path, monkeypatch):
    root = tmp_path / "checkpoints"
    intact = _save(root, 1)
    real = torch.save

    def full(obj, f, *a, **k):
        if str(f).endswith("trainer.pt"):
            raise OSError(errno.ENOSPC, "No space left on device", str(f))
        return real(obj, f, *a, **k)
    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(C.CheckpointError) as e:
        _save(root, 2)
    msg = str(e.value)
    assert "No space left on device" in msg and f"The intact checkpoint is {intact}" in msg
    assert sorted(os.listdir(root)) == ["latest", "step_00000001"]  # no partial step_00000002.tmp left
    assert C.latest(str(root)) == intact


def test_damaged_checkpoint_is_named_with_the_intact_one_to_use(tmp_path):
    root = tmp_path / "checkpoints"
    _save(root, 1)
    bad = _save(root, 2)
    tp = os.path.join(bad, "trainer.pt")
    size = os.path.getsize(tp)
    with open(tp, "r+b") as f:  # the same size, garbage content: the manifest matches, loading fails
        f.write(b"\0" * size)
    m, opt = _model()
    with pytest.raises(C.CheckpointError, match=r"checkpoint .*step_00000002 is damaged .*resume from "
                                                r".*step_00000001 with --resume .*step_00000001"):
        C.load(bad, m, opt)
    with open(tp, "ab") as f:  # a size that no longer matches the manifest
        f.write(b"x")
    with pytest.raises(C.CheckpointError, match="not a complete s1fast checkpoint"):
        C.load(bad, m, opt)
    assert C.latest(str(root)) == str(root / "step_00000001")
    # a mistyped --resume path: said "no older intact checkpoint is there" of its parent folder
    with pytest.raises(C.CheckpointError, match="step_00000009: no such folder; pass a step_\\* folder"):
        C.load(str(root / "step_00000009"), m, opt)


def test_run_lock_refuses_a_live_owner_and_takes_over_a_dead_ones(tmp_path, capsys):
    lock = C.acquire_lock(str(tmp_path))
    with pytest.raises(C.CheckpointError, match=f"in use by another run: process {os.getpid()} on host"):
        C.acquire_lock(str(tmp_path))
    C.release_lock(lock)
    assert not os.path.exists(lock)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    with open(tmp_path / C.LOCK, "w") as f:
        json.dump({"pid": int(dead), "host": socket.gethostname()}, f)
    lock = C.acquire_lock(str(tmp_path))
    assert f"left by process {dead}, which is gone" in capsys.readouterr().out
    assert json.load(open(lock))["pid"] == os.getpid()
    C.release_lock(lock)
    with open(tmp_path / C.LOCK, "w") as f:  # another host: its liveness cannot be checked, so it is refused
        json.dump({"pid": 1, "host": "elsewhere"}, f)
    with pytest.raises(C.CheckpointError, match="host elsewhere.*if that run is dead, delete"):
        C.acquire_lock(str(tmp_path))


def test_a_failed_hugging_face_export_keeps_the_previous_folder_and_leaves_nothing_partial(tmp_path, monkeypatch):
    from s1fast import model as M
    cfg = M.CONFIGS["tiny-qwen2"].with_(vocab_size=64, hidden_size=16, intermediate_size=32, num_layers=1,
                                        num_heads=2, num_kv_heads=1, head_dim=8)
    sd = M.build_model(cfg).state_dict()
    out = str(tmp_path / "final")
    assert C.write_hf_folder(sd, cfg, out, None) == out
    before = sorted(os.listdir(out))
    assert "model.safetensors" in before and "config.json" in before
    real = M.save_state_dict_hf

    def full_disk(state_dict, mcfg, folder, tokenizer_dir):
        real(state_dict, mcfg, folder, tokenizer_dir)              # the files are written, then the disk fills
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(M, "save_state_dict_hf", full_disk)
    with pytest.raises(OSError, match="No space"):
        C.write_hf_folder({k: v + 1 for k, v in sd.items()}, cfg, out, None)
    assert sorted(os.listdir(tmp_path)) == ["final"] and sorted(os.listdir(out)) == before
    from safetensors.torch import load_file
    kept = load_file(os.path.join(out, "model.safetensors"))["model.embed_tokens.weight"]
    assert torch.equal(kept, sd["embed_tokens.weight"])                # the first export's weights, not the +1


def test_the_trainer_refuses_to_resume_an_rl_checkpoint(tmp_path):
    """An --output-dir holding an RL run: the trainer loaded its checkpoint (no plan signature, so nothing
    differed) and went on from the RL iteration as if it were its own step."""
    from s1fast.config import ConfigError, TrainConfig
    from s1fast.train import TRAJECTORY, start_or_resume
    root = tmp_path / "checkpoints"
    m, opt = _model()
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 1.0)
    C.save(str(root), 3, m, opt, {"scheduler": sched.state_dict(), "rl_signature": {"seed": 0}}, 2)
    cfg = TrainConfig(model="tiny-qwen2", output_dir=str(tmp_path))
    with pytest.raises(ConfigError, match="was saved by s1fast.rl, not by the trainer"):
        start_or_resume(cfg, str(root), m, opt, sched, lambda i: 1.0, dict.fromkeys(TRAJECTORY, 0), 0, 10)


def test_rl_refuses_to_resume_a_trainer_checkpoint(tmp_path):
    """RL in a trainer's --output-dir called the trainer's checkpoint "saved by another RL run" with every
    setting "checkpoint None"."""
    from types import SimpleNamespace

    from s1fast.config import ConfigError
    from s1fast.rl.config import RLConfig
    from s1fast.rl.loop import resume
    root = tmp_path / "checkpoints"
    m, opt = _model()
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 1.0)
    C.save(str(root), 3, m, opt, {"scheduler": sched.state_dict(), "plan_signature": {"seed": 0}}, 2)
    s = SimpleNamespace(cfg=RLConfig(model="x", output_dir=str(tmp_path)), rank=0, ckpt_root=str(root), model=m,
                        optimizer=opt, scheduler=sched, signature={"seed": 0})
    with pytest.raises(ConfigError, match="was saved by s1fast.train, not by s1fast.rl"):
        resume(s)


def test_export_refuses_an_out_folder_it_would_delete_and_a_checkpoint_of_another_model(tmp_path, capsys):
    """``python -m s1fast.export CK --out RUN`` deleted the whole run folder (checkpoints included) to put the
    export in its place."""
    from s1fast.export import main
    root = tmp_path / "run" / "checkpoints"
    m, opt = _model()
    ck = C.save(str(root), 1, m, opt, {"config": {"model": "tiny-qwen2"}}, 2)
    for out in (tmp_path / "run", tmp_path / "run" / "checkpoints" / "latest"):
        assert main([ck, "--out", str(out)]) == 2
        assert os.path.exists(out) and C.is_complete(ck)
    # a checkpoint whose weights are not the run config's model: one error line, not dcp's traceback
    assert main([ck, "--out", str(tmp_path / "hf")]) == 2
    assert "does not load as the run's model (tiny-qwen2)" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "hf")


def test_resuming_with_another_model_names_the_model_the_checkpoint_was_saved_with(tmp_path):
    """A resume with a changed --model died in a traceback from dcp (its CheckpointException is a BaseException,
    which the 'damaged' handler did not catch)."""
    root = tmp_path / "checkpoints"
    m, opt = _model()
    ck = C.save(str(root), 1, m, opt, {"config": {"model": "tiny-qwen2"}}, 2)
    other = torch.nn.Sequential(torch.nn.Linear(4, 3))
    with pytest.raises(C.CheckpointError, match=r"is not of this model \(.*Missing key.*\); it was saved by a run "
                                                r"of --model 'tiny-qwen2': resume with that --model"):
        C.load(ck, other, torch.optim.AdamW(other.parameters()))


def _tiny_hf_model():
    from s1fast import model as M
    cfg = M.CONFIGS["tiny-qwen2"].with_(vocab_size=64, hidden_size=16, intermediate_size=32, num_layers=2,
                                        num_heads=2, num_kv_heads=1, head_dim=8)
    return cfg, M.build_model(cfg).state_dict()


def _interrupt_after_the_first_file(monkeypatch):
    """The writer's first file is written, then a Ctrl-C arrives."""
    import safetensors.torch as st
    real = st.save_file

    def interrupted(tensors, path, *a, **k):
        real(tensors, path, *a, **k)
        raise KeyboardInterrupt
    monkeypatch.setattr(st, "save_file", interrupted)


def test_a_ctrl_c_mid_export_leaves_no_partial_folder_and_the_previous_export_intact(tmp_path, monkeypatch):
    """A KeyboardInterrupt (or any exception other than OSError) during the export left final.tmp-PID behind."""
    cfg, sd = _tiny_hf_model()
    out = str(tmp_path / "final")
    _interrupt_after_the_first_file(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        C.write_hf_folder(sd, cfg, out, None)
    assert os.listdir(tmp_path) == []                                   # no final/, no final.tmp-PID
    monkeypatch.undo()
    C.write_hf_folder(sd, cfg, out, None)
    before = {n: open(os.path.join(out, n), "rb").read() for n in os.listdir(out)}
    _interrupt_after_the_first_file(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        C.write_hf_folder({k: v + 1 for k, v in sd.items()}, cfg, out, None)
    assert os.listdir(tmp_path) == ["final"]
    assert {n: open(os.path.join(out, n), "rb").read() for n in os.listdir(out)} == before


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", ""])
    p.wait()
    return p.pid


def test_an_export_cleans_what_a_killed_export_left_and_only_that(tmp_path, capsys):
    cfg, sd = _tiny_hf_model()
    out = tmp_path / "final"
    dead, alive = _dead_pid(), os.getppid()
    for name in (f"final.tmp-{dead}", f"final.old-{dead}", f"final.tmp-{alive}", f"other.tmp-{dead}"):
        os.makedirs(tmp_path / name)
        (tmp_path / name / "model.safetensors").write_bytes(b"partial")
    C.write_hf_folder(sd, cfg, str(out), None)
    assert sorted(os.listdir(tmp_path)) == ["final", f"final.tmp-{alive}", f"other.tmp-{dead}"]
    assert f"removed {tmp_path / f'final.tmp-{dead}'}, left by process {dead}, which is gone" in capsys.readouterr().out
    # killed between its two renames: final/ is missing and final.old-PID is the previous complete export
    os.replace(out, tmp_path / f"final.old-{dead}")
    C.clean_stale(str(out))
    assert (out / "config.json").exists() and not (tmp_path / f"final.old-{dead}").exists()
    assert "was put back" in capsys.readouterr().out


def test_python_m_export_interrupted_exits_130_and_leaves_nothing(tmp_path, monkeypatch, capsys):
    from s1fast import model as M
    from s1fast.export import main
    torch.manual_seed(0)
    m = M.build_model(M.CONFIGS["tiny-qwen2"])
    ck = C.save(str(tmp_path / "run" / "checkpoints"), 1, m, torch.optim.AdamW(m.parameters()),
                {"config": {"model": "tiny-qwen2"}}, 2)
    _interrupt_after_the_first_file(monkeypatch)
    assert main([ck, "--out", str(tmp_path / "hf")]) == 130
    assert "error: interrupted: " in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == ["run"] and sorted(os.listdir(tmp_path / "run")) == ["checkpoints"]


def test_a_save_removes_what_a_killed_save_left(tmp_path):
    """A save SIGKILLed before its rename left step_N.tmp, kept for ever unless step N was saved again."""
    root = tmp_path / "checkpoints"
    os.makedirs(root / "step_00000007.tmp")
    os.makedirs(root / f"step_00000003.old-{_dead_pid()}")
    _save(root, 1)
    assert sorted(os.listdir(root)) == ["latest", "step_00000001"]
