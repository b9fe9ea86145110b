"""The token cache's checks (issue 14): budgets validated, truncation that leaves no trained token, special-token
strings and duplicate rows counted, a damaged cache rebuilt, row numbers 1-based; metrics stay strict JSON and
the loss plot never leaves a partial file."""
import errno
import json
import os

import numpy as np
import pytest

from s1fast import data
from s1fast.data import DataError


def _row(q="What is 2+2?", trace="Two and two make four.", attempt="4"):
    return {"question": q, "thinking_trajectories": [trace], "attempt": attempt}


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _prepare(src, out, logs, **kw):
    kw.setdefault("policy", "truncate")
    return data.prepare(src, "s1", max_tokens=kw.pop("max_tokens", 200), out=str(out), progress=False,
                        log=logs.append, workers=1, **kw)


def test_budgets_are_validated_before_any_tokenising(tmp_path):
    src = _write(tmp_path / "d.jsonl", [_row()])
    for bad in (-5, 0):  # -5 used to cut every example's last 5 tokens; 0 crashed
        with pytest.raises(DataError, match=f"--max-tokens must be a positive number of tokens, got {bad}"):
            _prepare(src, tmp_path / "c", [], max_tokens=bad)
    assert not os.path.exists(tmp_path / "c")


def test_truncation_that_removes_every_trained_token_drops_the_row_counted(tmp_path):
    long_q = "Consider this. " * 60  # the question alone fills the budget: the answer is cut away entirely
    src = _write(tmp_path / "d.jsonl", [_row(), _row(q=long_q), _row(q="What is 3+3?", attempt="6")])
    logs = []
    ds = _prepare(src, tmp_path / "c", logs, max_tokens=120)
    assert list(ds.rows) == [1, 3] and ds.meta["summary"]["rows_unsupervised"] == 1
    assert all(s > 0 for s in ds.supervised)
    assert any("left no answer token to train on: rows 2" in x for x in logs), logs
    with pytest.raises(DataError, match="no examples left"):
        _prepare(_write(tmp_path / "e.jsonl", [_row(q=long_q)]), tmp_path / "c2", [], max_tokens=120)


def test_special_token_strings_in_text_and_duplicate_rows_are_counted(tmp_path):
    rows = [_row(), _row(trace="Then <|im_end|> appears in the trace."), _row(), _row(q="Other?")]
    logs = []
    ds = _prepare(_write(tmp_path / "d.jsonl", rows), tmp_path / "c", logs)
    s = ds.meta["summary"]
    assert (s["rows_special_text"], s["rows_duplicate"], s["rows_kept"]) == (1, 1, 4)
    assert any("special-token strings" in x and "rows 2" in x for x in logs), logs
    assert any("1 duplicate row(s), kept: rows 3 (= row 1)" in x for x in logs), logs


def test_a_damaged_cache_whose_key_matches_is_rebuilt_not_trusted(tmp_path):
    src = _write(tmp_path / "d.jsonl", [_row(), _row(q="What is 3+3?", attempt="6")])
    out = tmp_path / "c"
    logs = []
    good = _prepare(src, out, logs)
    want = np.asarray(good.tokens).copy()
    toks = np.load(out / "tokens.npy")
    toks[3] += 1  # one flipped token id, same size, same key
    np.save(out / "tokens.npy", toks)
    logs.clear()
    again = _prepare(src, out, logs)
    assert any("is damaged (tokens.npy" in x for x in logs) and not any("cache hit" in x for x in logs), logs
    assert np.array_equal(np.asarray(again.tokens), want)
    logs.clear()
    _prepare(src, out, logs)
    assert "cache hit" in logs[0]


def test_non_utf8_and_fake_parquet_name_file_and_row(tmp_path):
    (tmp_path / "x.jsonl").write_bytes(b'{"question": "ok"}\n\n{"question": "caf\xe9"}\n')
    with pytest.raises(DataError, match=r"x.jsonl, row 3: not UTF-8 \(byte 0xe9 at column 18\)"):
        list(data.read_rows(str(tmp_path / "x.jsonl")))
    (tmp_path / "x.json").write_bytes(b'[\n{"question": "caf\xe9"}]')
    with pytest.raises(DataError, match=r"x.json: not UTF-8 \(byte 0xe9 on line 2\)"):
        list(data.read_rows(str(tmp_path / "x.json")))
    (tmp_path / "y.parquet").write_text("not parquet")
    with pytest.raises(DataError, match="y.parquet: not a readable parquet file"):
        list(data.read_rows(str(tmp_path / "y.parquet")))
    (tmp_path / "e.jsonl").write_text("\n")
    with pytest.raises(DataError, match="e.jsonl: holds no rows"):
        _prepare(str(tmp_path / "e.jsonl"), tmp_path / "c", [])


def test_metrics_write_null_for_non_finite_values_and_the_plot_leaves_no_partial_file(tmp_path, monkeypatch, capsys):
    from s1fast.metrics import Metrics, plot_loss
    m = Metrics(str(tmp_path), 2, enabled=True, progress=False)
    m.log({"step": 1, "loss": 2.0, "lr": 0.1, "grad_norm": float("inf"), "mfu": float("nan"),
           "tokens_per_s": 1.0, "step_time": 1.0})
    m.close(plot=False)
    line = (tmp_path / "metrics.jsonl").read_text()
    row = json.loads(line, parse_constant=lambda c: pytest.fail(f"{c} is not JSON"))
    assert row["grad_norm"] is None and row["mfu"] is None
    import matplotlib.figure

    def full(self, path, *a, **k):
        with open(path, "wb") as f:
            f.write(b"\x89PNG")
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", full)
    assert plot_loss(str(tmp_path / "metrics.jsonl")) is None
    assert "loss_curve.png skipped: No space left on device" in capsys.readouterr().out
    assert sorted(os.listdir(tmp_path)) == ["metrics.jsonl"]  # no 0-byte or partial PNG, no temporary file
    monkeypatch.setitem(__import__("sys").modules, "matplotlib", None)
    assert plot_loss(str(tmp_path / "metrics.jsonl")) is None
    assert "matplotlib is not installed" in capsys.readouterr().out


def test_an_interrupted_cache_write_leaves_no_partial_folder_and_the_previous_cache(tmp_path, monkeypatch,
                                                                                   capsys):
    """Ctrl-C while the arrays were written left ``c.tmp-PID`` for ever (and no later prepare removed it)."""
    src = _write(tmp_path / "d.jsonl", [_row(), _row(q="What is 3+3?", attempt="6")])
    before = _prepare(src, tmp_path / "c", []).meta["key"]
    real, saved = np.save, []

    def save_one_then_interrupt(path, arr, *a, **k):
        if saved:
            raise KeyboardInterrupt
        saved.append(path)
        return real(path, arr, *a, **k)
    monkeypatch.setattr(np, "save", save_one_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        _prepare(src, tmp_path / "c", [], max_tokens=300)          # another key: a rebuild
    assert saved and ".tmp-" in str(saved[0])
    assert sorted(os.listdir(tmp_path)) == ["c", "d.jsonl"]
    saved.clear()                                                   # the CLI: one error line, exit 130
    from s1fast.data.__main__ import main
    assert main(["prepare", "--data", src, "--out", str(tmp_path / "c"), "--max-tokens", "300", "--workers", "1",
                 "--no-progress"]) == 130
    err = capsys.readouterr().err
    assert err.startswith("error: prepare: interrupted; no partial cache is left") and err.count("\n") == 1
    assert sorted(os.listdir(tmp_path)) == ["c", "d.jsonl"]
    monkeypatch.undo()
    logs = []
    assert _prepare(src, tmp_path / "c", logs).meta["key"] == before and any("cache hit" in x for x in logs)


def test_a_prepare_removes_what_a_killed_prepare_left_and_only_that(tmp_path):
    """A SIGKILLed prepare leaves ``c.tmp-PID`` (partial) or, killed between its two renames, ``c.old-PID`` (the
    previous cache) and no ``c``: the next prepare removes the first and puts the second back, but never touches
    a live process's folder."""
    import subprocess
    import sys
    p = subprocess.Popen([sys.executable, "-c", ""])
    p.wait()
    dead, live = p.pid, os.getppid()
    src = _write(tmp_path / "d.jsonl", [_row()])
    key = _prepare(src, tmp_path / "c", []).meta["key"]
    os.replace(tmp_path / "c", tmp_path / f"c.old-{dead}")
    for name in (f"c.tmp-{dead}", f"c.tmp-{live}"):
        os.makedirs(tmp_path / name)
        (tmp_path / name / "tokens.npy").write_bytes(b"partial")
    logs = []
    assert _prepare(src, tmp_path / "c", logs).meta["key"] == key
    assert sorted(os.listdir(tmp_path)) == ["c", f"c.tmp-{live}", "d.jsonl"]
    assert any(f"removed {tmp_path / f'c.tmp-{dead}'}, left by process {dead}, which is gone" in x for x in logs)
    assert any("was put back" in x for x in logs) and any("cache hit" in x for x in logs)


def test_a_metrics_line_a_crash_cut_short_does_not_swallow_the_resumed_runs_first_step(tmp_path):
    """The resumed run appended its first row to the cut line: one line that is not JSON, and read_metrics
    (the loss curve, RL's reward curve) lost that step."""
    from s1fast.metrics import Metrics, read_metrics
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "lo')
    m = Metrics(str(tmp_path), 3, enabled=True, progress=False, start_step=1)
    for step, loss in ((2, 1.5), (3, 1.0)):
        m.log({"step": step, "loss": loss})
    m.close(plot=False)
    assert [(r["step"], r["loss"]) for r in read_metrics(str(tmp_path / "metrics.jsonl"))] == \
        [(1, 2.0), (2, 1.5), (3, 1.0)]
    assert (tmp_path / "metrics.jsonl").read_text().count("\n") == 3
