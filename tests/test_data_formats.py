""".json and .parquet inputs streamed like .jsonl: the same rows give byte-identical outputs of every step in each
format; a .json is read with ijson a row at a time and falls back to a whole-file read only where ijson cannot
stream it (NaN, a lone surrogate escape, a shape or a syntax it refuses), with the same rows and messages;
parquet comes in batches, numbered across them; verify's spill file is removed."""
import importlib.util
import json
import math
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from s1fast.data import json_stream, readers
from s1fast.data.__main__ import main as data_main
from s1fast.data.readers import DataError

needs_ijson = pytest.mark.skipif(importlib.util.find_spec("ijson") is None,
                                 reason="ijson streams .json files; scripts/requirements-cpu.txt installs it")


def rows_of_every_kind() -> list[dict]:
    """Samples of 5 questions (one asked twice, one in the eval file, one row without a question): every key in
    every row, so parquet holds them as they are."""
    out = []
    for q in range(5):
        text = f"Question {q} (ünïcödé 🙂, \\frac{{1}}{{{q + 2}}}): what is {q} + {q}, in \"words\"?"
        for s in range(2):
            out.append({"question": text if q != 4 else out[0]["question"].upper(), "answer": str(2 * q), "sample": s,
                        "domain": f"D{q % 2}", "score": q / 7, "meta": {"id": q, "tags": ["a", "b\\c"]},
                        "thinking_trajectories": [f"think {q} " * (10 + 3 * q + s)],
                        "attempt": f"so \\boxed{{{2 * q if s == 0 or q == 1 else 99}}}"})
    out.append(dict(out[0], question=None, sample=0))
    return out


def write(path, rows):
    if path.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq
        pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=4)
    elif path.suffix == ".json":
        path.write_text(json.dumps({"train": rows} if "obj" in path.name else rows, indent=1, ensure_ascii=False))
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def outputs(folder) -> dict:
    """Every file a run wrote, by name; stats.md's title (the input's name) left out."""
    got = {}
    for root, _, files in os.walk(folder):
        for f in files:
            if f.endswith(".png"):
                continue
            text = open(os.path.join(root, f), "rb").read()
            got[os.path.relpath(os.path.join(root, f), folder)] = text.split(b"\n", 1)[1] if f == "stats.md" else text
    return got


@pytest.fixture(scope="module")
def tokenizer():
    from s1fast.data import cache
    return cache.load_tokenizer()


@needs_ijson
def test_every_step_writes_the_same_bytes_from_jsonl_json_and_parquet(tmp_path, monkeypatch, tokenizer):
    from s1fast.data import cache
    monkeypatch.setattr(cache, "load_tokenizer", lambda path=None: tokenizer)
    monkeypatch.setattr(readers, "PARQUET_BATCH_BYTES", 600)        # batches of a few rows, across row groups
    monkeypatch.setattr(readers, "_json_whole", lambda path: pytest.fail(f"{path} was read whole"))
    rows = rows_of_every_kind()
    ev = write(tmp_path / "eval.jsonl", [{"problem": rows[6]["question"]}])
    got = {}
    for name in ("d.jsonl", "d.json", "d_obj.json", "d.parquet"):
        data, out = write(tmp_path / name, rows), tmp_path / name.replace(".", "_")
        for step, flags in (("verify", ["--keep", "first-k", "--k", "1", "--graded", out / "graded.jsonl"]),
                            ("decontaminate", ["--no-builtin-eval", "--eval", ev]),
                            ("select", ["--size", "3", "--length", "chars"]), ("stats", [])):
            dest = out / "stats" if step == "stats" else out / f"{step}.jsonl"
            argv = [step, "--data", data, "--out", dest, "--summary", out / f"{step}.summary.json", "--no-progress"]
            assert data_main([str(a) for a in argv + flags]) == 0, (name, step)
        got[name] = outputs(out)
    want = got.pop("d.jsonl")
    assert len(want) == 11 and all(want.values()), sorted(want)
    assert [json.loads(x)["verdict"] for x in want["graded.jsonl"].splitlines()].count("correct") == 6
    assert b"eval_overlap" in want["decontaminate.removed.jsonl"] and b"duplicate_exact" in want[
        "decontaminate.removed.jsonl"]
    for name, files in got.items():
        assert files == want, (name, [f for f in want if files.get(f) != want[f]])


def test_verify_spills_json_rows_beside_its_output_and_removes_them(tmp_path):
    data = write(tmp_path / "d.json", rows_of_every_kind())
    out = tmp_path / "o" / "kept.jsonl"
    assert data_main(["verify", "--data", str(data), "--out", str(out), "--no-progress"]) == 0
    assert sorted(os.listdir(out.parent)) == ["kept.jsonl"]
    assert data_main(["verify", "--data", str(data), "--out", str(tmp_path / "o" / "k2.jsonl"), "--answer-field",
                      "nowhere", "--no-progress"]) == 2           # fails after the spill was written
    assert sorted(os.listdir(out.parent)) == ["kept.jsonl"]



def test_verify_removes_the_spill_a_killed_verify_left(tmp_path, capsys):
    """A verify killed while it graded (SIGTERM from a scheduler's time limit, the OOM killer) cannot remove its
    spill, a copy of the whole --data: the next verify beside that --out removes it (a process of this host
    that is gone), as an export's leftovers are; it stayed for good, hidden."""
    import subprocess
    import sys

    from s1fast.whole_folder import host_tag
    p = subprocess.Popen([sys.executable, "-c", ""])
    p.wait()
    data = write(tmp_path / "d.json", rows_of_every_kind())
    out = tmp_path / "o" / "kept.jsonl"
    left = out.parent / f".s1fast-rows.tmp-{host_tag()}-{p.pid}"
    left.mkdir(parents=True)
    (left / "rows.pickle").write_bytes(b"x" * 100)
    assert data_main(["verify", "--data", str(data), "--out", str(out), "--no-progress"]) == 0
    assert sorted(os.listdir(out.parent)) == ["kept.jsonl"]
    assert f"removed {left}" in capsys.readouterr().err

# a JSON value's text: strings with escapes, lone surrogates, backslashes before "u", non-BMP characters
_piece = st.sampled_from(["\ud83d", "\udc00", "\ud83d\ude00", "\\", "\\u", "\\ud83d", "\"", "é", "\n", "𝑥", "a"])
_text = st.lists(st.one_of(_piece, st.text(max_size=5)), max_size=6).map("".join)
_value = st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | _text,
                      lambda v: st.lists(v, max_size=3) | st.dictionaries(_text, v, max_size=3), max_leaves=8)
_row = st.dictionaries(_text, _value, max_size=4)


@needs_ijson
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(_row, max_size=5), shape=st.sampled_from(["list", "train", "bom"]), ascii=st.booleans(),
       indent=st.sampled_from([None, 0, 2]), chunk=st.integers(1, 40))
def test_a_streamed_json_file_reads_as_pythons_json_reads_it(tmp_path, monkeypatch, rows, shape, ascii, indent,
                                                            chunk):
    """Any rows, written by json.dumps, in a chunk size small enough that escapes straddle chunks: the rows
    come back as json.loads gives them, streamed unless a NaN / infinity or a lone surrogate forced the
    whole-file read."""
    monkeypatch.setattr(json_stream, "CHUNK", chunk)
    text = json.dumps({"train": rows} if shape == "train" else rows, ensure_ascii=ascii, indent=indent)
    path = tmp_path / "h.json"
    path.write_bytes((b"\xef\xbb\xbf" if shape == "bom" else b"") + text.encode("utf-8", "surrogatepass"))
    whole = []
    real = readers._json_whole
    monkeypatch.setattr(readers, "_json_whole", lambda p: whole.append(p) or real(p))
    try:
        loaded = json.loads(text)
        expect = list(enumerate(loaded["train"] if shape == "train" else loaded, 1))
        got = list(readers.read_rows(str(path)))
    except DataError as e:          # a lone surrogate written raw (ensure_ascii=False) is not UTF-8: as before
        assert not ascii and "not UTF-8" in str(e), e
        return
    assert repr(got) == repr(expect)
    awkward = "NaN" in text or "Infinity" in text or any(0xD800 <= ord(c) < 0xE000 for s in _strings(rows) for c in s)
    assert awkward or not whole, text


def _strings(v):
    if isinstance(v, str):
        yield v
    elif isinstance(v, dict):
        for k, x in v.items():
            yield k
            yield from _strings(x)
    elif isinstance(v, list):
        for x in v:
            yield from _strings(x)


@needs_ijson
def test_surrogate_pairs_escaped_backslashes_and_numbers_of_any_size_stream(tmp_path, monkeypatch):
    monkeypatch.setattr(readers, "_json_whole", lambda path: pytest.fail("read whole"))
    path = tmp_path / "p.json"
    text = ('[{"q": "\\ud83d\\ude00 \\\\ud83d \\\\\\\\udc00 \\\\", "id": 9223372036854775808, '
            '"n": -18446744073709551617, "big": 1e400, "z": -0.0, "f": 0.1, "e": 1E5, "t": 2.5e-320}]')
    path.write_text(text)
    got = list(readers.read_rows(str(path)))
    assert repr(got) == repr([(1, json.loads(text)[0])]) and got[0][1]["q"] == "😀 \\ud83d \\\\udc00 \\"


@needs_ijson
@pytest.mark.parametrize("text,says,row", [
    ('[{"question": "a"}, 3]', "expected a JSON object, got int", 2),
    ('{"train": [{"question": "a"}], "version": 2}', "a .json data file must hold a list of objects", None),
    ('{"version": 2, "train": [{"question": "a"}]}', "a .json data file must hold a list of objects", None),
    ('[{"question": "a"},\n {"question": "b"},\n {"question": ', "not valid JSON (Expecting value at line 3)", None),
    ('[{"question": "a", "score": NaN}, {"q": 1}] x', "not valid JSON (Extra data at line 1)", None),
])
def test_a_bad_json_file_is_named_with_its_row_as_before(tmp_path, text, says, row):
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(DataError) as e:
        list(readers.read_rows(str(path)))
    assert says in str(e.value) and (e.value.path, e.value.row) == (str(path), row), str(e.value)
    with pytest.raises(DataError) as old:
        list(readers._json_whole(str(path)))
    assert str(old.value) == str(e.value)


@needs_ijson
@pytest.mark.parametrize("text,check", [
    ('[{"q": 1}, {"q": 2, "s": NaN}, {"q": "\\ud83d"}, {"q": 1e999}]',
     lambda got: math.isnan(got[1]["s"]) and got[2]["q"] == "\ud83d" and got[3]["q"] == float("inf")),
    ('[{"q": 1}, {"q": "x\\ud83dy"}, {"q": "\\ud83d\\ude00"}]',   # yajl reads a lone surrogate as "?"
     lambda got: got[1]["q"] == "x\ud83dy" and got[2]["q"] == "\U0001f600"),
])
def test_a_json_file_that_needs_pythons_json_is_read_whole_from_where_the_stream_stopped(tmp_path, monkeypatch,
                                                                                         text, check):
    monkeypatch.setattr(json_stream, "CHUNK", 8)     # row 1 is read before what stops the stream
    path = tmp_path / "odd.json"
    path.write_text(text)
    streamed, whole = [], []
    monkeypatch.setattr(readers, "samples_of", lambda i, row, p, real=readers.samples_of: streamed.append(i) or
                        real(i, row, p))
    monkeypatch.setattr(readers, "_json_whole", lambda p, real=readers._json_whole: whole.append(p) or real(p))
    got = list(readers.read_rows(str(path)))
    assert [i for i, _ in got] == list(range(1, len(got) + 1)) and check([r for _, r in got])
    assert whole and streamed[:2] == [1, 1]      # row 1 streamed; the whole read skips it, yields the rest


def test_without_ijson_a_json_file_is_read_whole(tmp_path, monkeypatch):
    import builtins
    real = builtins.__import__

    def no_ijson(name, *a, **k):
        if name == "ijson":
            raise ImportError("no ijson")
        return real(name, *a, **k)
    whole = []
    monkeypatch.setattr(readers, "_json_whole", lambda p, real=readers._json_whole: whole.append(p) or real(p))
    monkeypatch.setattr(builtins, "__import__", no_ijson)
    rows = rows_of_every_kind()
    got = list(readers.read_rows(str(write(tmp_path / "d.json", rows))))
    assert whole and got == list(readers.read_rows(str(write(tmp_path / "d.jsonl", rows))))


def test_parquet_rows_are_numbered_across_batches_and_row_groups(tmp_path, monkeypatch):
    monkeypatch.setattr(readers, "PARQUET_BATCH_BYTES", 1)
    rows = [{"question": f"q{i}", "n": i} for i in range(10)]
    path = write(tmp_path / "d.parquet", rows)
    assert list(readers.read_rows(str(path))) == list(enumerate(rows, 1))
