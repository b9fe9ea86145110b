"""One JSON-lines parser (s1fast.jsonl.parse_lines) under both readers: read_jsonl (any JSON value, ValueErrors
``FILE:LINE: ...``) and the data module's jsonl_rows (objects only, DataErrors ``file F, row N: ...``) number the
same lines, skip the same blanks and byte-order mark, drop the same cut last line, and say the same thing about
a bad line."""
import json

import pytest

from s1fast.data.pipeline import rows as R
from s1fast.data.readers import DataError, jsonl_rows
from s1fast.jsonl import BOM, end_cut_line, partial_tail, read_jsonl


def _both(path, **kw):
    with open(path, "rb") as f:
        return list(read_jsonl(str(path), **kw)), list(jsonl_rows(f, str(path), **kw))


def test_both_readers_number_lines_alike_past_blanks_and_a_byte_order_mark(tmp_path):
    f = tmp_path / "a.jsonl"
    f.write_bytes(BOM + b'{"q": 1}\n\n   \n{"q": "\\u00e9"}\r\n{"q": 3}')     # no newline after a whole last row
    want = [(1, {"q": 1}), (4, {"q": "\u00e9"}), (5, {"q": 3})]
    assert _both(f) == (want, want)


@pytest.mark.parametrize("line,says", [(b"not json", "not valid JSON (Expecting value at column 1)"),
                                       (b'{"q": 1} x', "not valid JSON (Extra data at column 10)"),
                                       (b'{"q": "caf\xe9"}', "not UTF-8 (byte 0xe9 at column 11): re-save the file "
                                                             "as UTF-8")])
def test_a_bad_line_is_named_by_both_readers_each_in_its_contract(tmp_path, line, says):
    f = tmp_path / "b.jsonl"
    f.write_bytes(b'{"q": 1}\n{"q": 2}\n' + line + b'\n{"q": 4}\n')
    with pytest.raises(ValueError) as e:
        list(read_jsonl(str(f)))
    assert str(e.value) == f"{f}:3: {says}" and not isinstance(e.value, DataError)
    with pytest.raises(DataError) as e, open(f, "rb") as fh:
        list(jsonl_rows(fh, str(f)))
    assert str(e.value) == f"file {f}, row 3: {says}" and e.value.row == 3


def test_only_the_data_reader_wants_objects(tmp_path):
    f = tmp_path / "c.jsonl"
    f.write_text('"a prompt"\n[1, 2]\n')
    assert list(read_jsonl(str(f))) == [(1, "a prompt"), (2, [1, 2])]
    with pytest.raises(DataError, match="row 1: expected a JSON object, got str"), open(f, "rb") as fh:
        list(jsonl_rows(fh, str(f)))


def test_a_cut_last_line_is_dropped_by_every_reader_only_when_asked_and_only_the_last(tmp_path, capsys):
    f = tmp_path / "d.jsonl"
    for cut in (b'{"q": "half', b'{"q": "caf\xc3'):           # cut inside JSON, and inside a UTF-8 character
        f.write_bytes(b'{"q": 1}\n' + cut)
        assert _both(f, cut_tail_ok=True) == ([(1, {"q": 1})], [(1, {"q": 1})])
        assert partial_tail(str(f)) == (f.stat().st_size, 9)
        assert [r for _, r in R.read(str(f))] == [{"q": 1}]
        assert f"ignoring a partial last line ({len(cut)} bytes" in capsys.readouterr().err
        with pytest.raises(ValueError, match="d.jsonl:2: not "):
            list(read_jsonl(str(f)))                            # not asked: a cut line is an error
    f.write_bytes(b'{"q": "half\n{"q": 2}')                     # a bad line before the last is never "cut"
    with pytest.raises(DataError, match="row 1: not valid JSON"):
        list(R.read(str(f)))
    f.write_bytes(b'{"q": 1}\n{"q": 2}')
    assert partial_tail(str(f)) == (f.stat().st_size, None) and end_cut_line(str(f)) == 0
    assert [json.loads(x) for x in f.read_text().splitlines()] == [{"q": 1}, {"q": 2}]
