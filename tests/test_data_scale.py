"""The pipeline at scale: verify, decontaminate, select and stats hold what they decide by (stats: lengths), not
the traces they read (a distilled set of 1M+ rows of 10-30 KB traces is tens of GB). Peak Python memory is
measured against the input's size on a file of many rows of ~20 KB traces (bench/bench_data_memory.py), as JSON
lines, one JSON list and parquet (and Arrow's own memory for parquet); holding every row, as the steps did (and
as a whole-file parse of .json / .parquet does), costs more than the whole file. Streaming keeps the guarantees:
Ctrl-C keeps what was written."""
import json

import pytest

from bench.bench_data_memory import arrow_peak, make, out_path, peak, warm
from s1fast.data.__main__ import main as data_main
from s1fast.data.pipeline import decontaminate, verify

QUESTIONS = 200     # x 3 samples of ~20 KB: a 12 MB file
FORMATS = ["jsonl", "json", "parquet"]


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    """The same rows as samples.jsonl, samples.json and samples.parquet (row groups of 64 rows, as a writer
    that bounds them writes: Arrow decodes a page whole, and a page can hold a row group of such rows)."""
    d = tmp_path_factory.mktemp("scale")
    for fmt in FORMATS:
        make(d / f"samples.{fmt}", QUESTIONS, row_group_size=64)
    warm(d)
    return d / "samples.jsonl"


def measure(step: str, data, out) -> tuple[int, int]:
    """(peak Python memory, peak of Arrow's memory pool: 0 but for parquet)."""
    if data.suffix == ".parquet":
        pytest.importorskip("pyarrow", reason="parquet needs pyarrow")
        return arrow_peak(step, data, out)
    if data.suffix == ".json":
        pytest.importorskip("ijson", reason=".json streams with ijson (scripts/requirements-cpu.txt installs it)")
    return peak(step, data, out), 0


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("step,kept", [("verify", QUESTIONS), ("decontaminate", 3 * QUESTIONS), ("select", 5)])
def test_a_step_holds_far_less_than_its_input(big, tmp_path, step, kept, fmt):
    out = tmp_path / "out.jsonl"
    p, arrow = measure(step, big.with_suffix(f".{fmt}"), out)
    assert len([json.loads(x) for x in open(out)]) == kept
    # what a step may hold: its indexes and one row at a time (select: the rows it chose), not the input (its
    # rows' size as JSON lines: a parquet file is smaller than its rows)
    allowed = 0.1 * big.stat().st_size + (out.stat().st_size if step == "select" else 0)
    assert p < allowed, (step, fmt, p, big.stat().st_size)
    assert arrow < 0.25 * big.stat().st_size, (step, fmt, arrow, big.stat().st_size)


@pytest.mark.parametrize("fmt", FORMATS)
def test_stats_holds_lengths_not_rows(big, tmp_path, monkeypatch, fmt):
    """stats keeps a few numbers a row: what it holds on a file of long traces stays far below the file (holding
    every row exceeded it) above what it holds on the warm two-row file (the figure's drawing). The tokenizer is
    loaded once, outside the measure (its load, the same for any input, is most of stats's peak and seconds),
    and the file is smaller than ``big``: stats tokenises every trace."""
    from s1fast.data import cache
    tokenizer = cache.load_tokenizer()
    monkeypatch.setattr(cache, "load_tokenizer", lambda path=None: tokenizer)
    data, lines = tmp_path / f"samples.{fmt}", tmp_path / "twin.jsonl"
    make(data, QUESTIONS // 4, row_group_size=16)
    make(lines, QUESTIONS // 4)
    base = peak("stats", big.parent / "warm.jsonl", out_path(tmp_path, "stats", "warm"))
    p, arrow = measure("stats", data, out_path(tmp_path, "stats", "big"))
    assert json.load(open(out_path(tmp_path, "stats", "big") / "stats.json"))["rows"] == 3 * (QUESTIONS // 4)
    # 0.15: stats's peak above the warm run's varies by about 0.1 MB from run to run (0.13 to 0.23 MB here);
    # holding the rows costs 0.7 MB (parquet in row groups of 16) to 7 MB (.json) above it
    assert p - base < 0.15 * lines.stat().st_size, (p, base, lines.stat().st_size)
    assert arrow < 0.25 * lines.stat().st_size, (arrow, lines.stat().st_size)


@pytest.mark.parametrize("step", ["verify", "decontaminate"])
def test_an_interrupted_step_keeps_what_it_wrote_and_the_rerun_finishes_it(tmp_path, monkeypatch, step):
    """Rows are written as they are decided: Ctrl-C (exit 130) leaves a prefix of the full output, and the same
    command then writes the rest, byte for byte what an uninterrupted run writes."""
    data = tmp_path / "d.jsonl"
    make(data, 6, trace_chars=50)
    argv = [step, "--data", str(data), "--no-progress"] + (["--keep", "all"] if step == "verify" else [])
    assert data_main(argv + ["--out", str(tmp_path / "clean.jsonl")]) == 0
    calls = []

    def stop_at_the_fifth(fn):
        def wrapped(*a, **k):
            calls.append(1)
            if len(calls) == 5:
                raise KeyboardInterrupt
            return fn(*a, **k)
        return wrapped
    if step == "verify":
        monkeypatch.setattr(verify, "grade_row", stop_at_the_fifth(verify.grade_row))
    else:
        real = decontaminate.decider
        monkeypatch.setattr(decontaminate, "decider", lambda *a: stop_at_the_fifth(real(*a)))
    out = tmp_path / "out.jsonl"
    assert data_main(argv + ["--out", str(out)]) == 130
    clean = (tmp_path / "clean.jsonl").read_text()
    assert out.read_text().count("\n") == 4 and clean.startswith(out.read_text())
    monkeypatch.undo()
    assert data_main(argv + ["--out", str(out)]) == 0
    assert out.read_text() == clean
    if step == "decontaminate":
        assert (tmp_path / "out.removed.jsonl").read_text() == (tmp_path / "clean.removed.jsonl").read_text()


def test_a_cut_last_line_is_warned_about_once_though_the_file_is_read_twice(tmp_path, capsys):
    data = tmp_path / "d.jsonl"
    make(data, 4, trace_chars=50)
    with open(data, "a") as f:
        f.write('{"question": "cut by a kil')
    out = tmp_path / "o.jsonl"
    for argv in (["select", "--size", "2", "--length", "chars", "--out", str(out)],
                 ["decontaminate", "--out", str(tmp_path / "c.jsonl")],
                 ["decontaminate", "--out", str(tmp_path / "c.jsonl")]):    # the rerun checks --out first
        assert data_main(argv + ["--data", str(data), "--no-progress"]) == 0
        assert capsys.readouterr().err.count("ignoring a partial last line") == 1, argv
