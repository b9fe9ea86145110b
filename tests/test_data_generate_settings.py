"""`python -m s1fast.data generate` resumes only a run made with the same sampling settings: each row records
them (``settings``), a rerun with other ones is refused (exit 2, the file untouched), a rerun that changes
only how the run is batched or paced resumes, and rows written before rows recorded settings still resume."""
import json

import pytest

from fake_openai import FakeEndpoint
from s1fast.data.__main__ import main as data_main


def questions(path, qs):
    path.write_text("".join(json.dumps({"question": q, "answer": "42"}) + "\n" for q in qs))
    return str(path)


def lines(path):
    return [json.loads(x) for x in open(path)]


def gen(tmp_path, url, data, *extra):
    summary = tmp_path / "summary.json"
    summary.unlink(missing_ok=True)
    rc = data_main(["generate", "--teacher", "openai", "--model", "teacher", "--base-url", url, "--data", data,
                    "--out", str(tmp_path / "gen.jsonl"), "--no-progress", "--summary", str(summary), *extra])
    return rc, (json.load(open(summary)) if summary.exists() else None)


def refused(capsys, path, before, rc, *says):
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: generate: ") and len(err.strip().splitlines()) == 1, err
    assert f"file {path}, row 1: 2 row(s) of 2 were generated with other settings" in err, err
    assert "delete the file, or pass another --out" in err
    for s in says:
        assert s in err, err
    assert path.read_bytes() == before                      # nothing appended, nothing cut


def test_openai_rows_record_what_is_sent_and_a_resume_at_other_settings_is_refused(tmp_path, capsys):
    data = questions(tmp_path / "q.jsonl", ["q one", "q two", "q three"])
    out = tmp_path / "gen.jsonl"
    first = ("--temperature", "0.6", "--max-tokens", "900", "--extra-body", '{"num_wait": 1}')
    with FakeEndpoint() as ep:
        assert gen(tmp_path, ep.url, data, "--limit", "2", *first)[0] == 0
        body = ep.bodies["q one"]
    rows = lines(out)
    want = {"temperature": 0.6, "top_p": 0.95, "max_tokens": 900, "extra_body": {"num_wait": 1}}
    assert all(r["settings"] == want for r in rows)
    assert (body["temperature"], body["top_p"], body["max_tokens"], body["num_wait"]) == (0.6, 0.95, 900, 1)
    before = out.read_bytes()
    capsys.readouterr()
    with FakeEndpoint() as ep:
        for flags, says in (((), ("--temperature 0.6 there, 0.7 now", "--max-tokens 900 there, unset now",
                                  "--extra-body {'num_wait': 1} there, unset now")),
                            ((*first, "--top-p", "0.9"), ("--top-p 0.95 there, 0.9 now",)),
                            ((*first[:4], "--extra-body", '{"num_wait": 2}'),
                             ("--extra-body {'num_wait': 1} there, {'num_wait': 2} now",)),
                            ((*first, "--system", "Be brief."), ("--system unset there, 'Be brief.' now",))):
            rc, _ = gen(tmp_path, ep.url, data, *flags)
            refused(capsys, out, before, rc, *says)
        assert not ep.seen                                   # refused before any request
        # what does not change a sample does not block: pacing, retries, timeout, another address
        rc, s = gen(tmp_path, ep.url, data, *first, "--concurrency", "1", "--retries", "0", "--timeout", "30",
                    "--backoff", "0.5")
    assert rc == 0 and dict(ep.seen) == {"q three": 1} and s["other"]["already_done"] == 2
    rows = lines(out)
    assert out.read_bytes().startswith(before) and len(rows) == 3 and rows[2]["settings"] == want


def test_rows_without_settings_resume_with_a_warning_and_the_rows_added_are_checked(tmp_path, capsys):
    """A file written before rows recorded settings: accepted as it was (its settings cannot be known), and
    the rows the resume adds carry theirs, so a later rerun at other settings is refused."""
    data = questions(tmp_path / "q.jsonl", ["q one", "q two", "q three"])
    out = tmp_path / "gen.jsonl"
    with FakeEndpoint() as ep:
        assert gen(tmp_path, ep.url, data, "--limit", "2")[0] == 0
    old = [{k: v for k, v in r.items() if k != "settings"} for r in lines(out)]
    out.write_text("".join(json.dumps(r) + "\n" for r in old))          # as this command wrote them before
    capsys.readouterr()
    with FakeEndpoint() as ep:
        rc, s = gen(tmp_path, ep.url, data)
    err = capsys.readouterr().err
    assert rc == 0 and dict(ep.seen) == {"q three": 1} and s["other"]["already_done"] == 2
    assert "2 row(s) were written before rows recorded their sampling settings" in err, err
    rows = lines(out)
    assert rows[:2] == old and rows[2]["settings"] == {"temperature": 0.7, "top_p": 0.95}
    before = out.read_bytes()
    with FakeEndpoint() as ep:
        rc, _ = gen(tmp_path, ep.url, data, "--temperature", "1.0")
    err = capsys.readouterr().err
    assert rc == 2 and "row 3: 1 row(s) of 3 were generated with other settings" in err, err
    assert "--temperature 0.7 there, 1.0 now" in err and out.read_bytes() == before and not ep.seen


@pytest.fixture
def native_args(tiny_export, tmp_path, monkeypatch):
    monkeypatch.setenv("S1FAST_DISABLE_TRITON", "1")
    data = questions(tmp_path / "q.jsonl", ["1+1?", "2+3?", "7*6?"])
    return ["generate", "--teacher", "native", "--model", tiny_export, "--data", data, "--samples", "2",
            "--max-thinking-tokens", "4", "--max-answer-tokens", "2", "--temperature", "1.0", "--no-progress",
            "--out", str(tmp_path / "gen.jsonl")]


def test_native_resume_refuses_a_penalty_budget_or_wait_and_takes_another_batch_size(native_args, tmp_path,
                                                                                    capsys):
    out = tmp_path / "gen.jsonl"
    assert data_main(native_args + ["--limit", "1", "--batch-size", "2"]) == 0
    rows = lines(out)
    assert len(rows) == 2 and rows[0]["settings"] == {
        "max_thinking_tokens": 4, "min_thinking_tokens": 0, "num_wait": 0, "extension": "Wait",
        "max_answer_tokens": 2, "max_total_tokens": None, "temperature": 1.0, "top_p": 0.95}
    before = out.read_bytes()
    capsys.readouterr()
    for flags, says in ((["--presence-penalty", "0.5"], "--presence-penalty unset there, 0.5 now"),
                        (["--repetition-penalty", "1.2"], "--repetition-penalty unset there, 1.2 now"),
                        (["--max-thinking-tokens", "5"], "--max-thinking-tokens 4 there, 5 now"),
                        (["--num-wait", "1"], "--num-wait 0 there, 1 now"),
                        (["--temperature", "0.5"], "--temperature 1.0 there, 0.5 now")):
        refused(capsys, out, before, data_main(native_args + flags), says)
    # another batch size (and no --limit): the two samples of the first question are kept, four are added
    assert data_main(native_args + ["--batch-size", "1"]) == 0
    rows = lines(out)
    assert out.read_bytes().startswith(before) and len(rows) == 6 and len({r["key"] for r in rows}) == 6
    assert all(r["settings"] == rows[0]["settings"] for r in rows)


def test_native_rows_record_the_tokenizer_given_by_folder_name(native_args, tmp_path, capsys):
    """--tokenizer makes the prompts' ids: a row records its folder's name (only when given, as the teacher
    names the model by its folder's name), and a resume without it, or with another folder, is refused."""
    import shutil

    from s1fast.generate import BUNDLED_TOKENIZER
    out = tmp_path / "gen.jsonl"
    here, moved = tmp_path / "a" / "qwen-tok", tmp_path / "b" / "qwen-tok"
    for d in (here, moved):
        shutil.copytree(BUNDLED_TOKENIZER, d)
    assert data_main(native_args + ["--limit", "1", "--tokenizer", str(here)]) == 0
    rows = lines(out)
    assert len(rows) == 2 and all(r["settings"]["tokenizer"] == "qwen-tok" for r in rows)
    before = out.read_bytes()
    capsys.readouterr()
    refused(capsys, out, before, data_main(native_args + ["--limit", "1"]), "--tokenizer 'qwen-tok' there, unset now")
    other = tmp_path / "other-tok"
    shutil.copytree(BUNDLED_TOKENIZER, other)
    refused(capsys, out, before, data_main(native_args + ["--limit", "1", "--tokenizer", str(other)]),
            "--tokenizer 'qwen-tok' there, 'other-tok' now")
    # the same folder name elsewhere (a run moved to another machine) resumes
    assert data_main(native_args + ["--tokenizer", str(moved) + "/"]) == 0
    rows = lines(out)
    assert out.read_bytes().startswith(before) and len(rows) == 6
    assert all(r["settings"] == rows[0]["settings"] for r in rows)


def test_a_base_url_with_credentials_is_recorded_without_them_and_resumes(tmp_path):
    """``--base-url http://user:secret@host/v1``: rows recorded the password in ``teacher`` (a secret written into
    a data file that gets shared), and the resume's teacher check split the address at the password's ``@``
    and refused the very run that wrote them."""
    from s1fast.data.pipeline.teacher_openai import without_credentials
    assert without_credentials("http://u:p@[::1]:8000/v1") == "http://[::1]:8000/v1"
    assert without_credentials("https://api.example.com/v1") == "https://api.example.com/v1"
    data = questions(tmp_path / "q.jsonl", ["q one", "q two"])
    with FakeEndpoint() as ep:
        url = ep.url.replace("://", "://user:s3cret@", 1)
        assert gen(tmp_path, url, data, "--limit", "1")[0] == 0
        assert gen(tmp_path, url, data)[0] == 0
    rows = lines(tmp_path / "gen.jsonl")
    assert [r["question"] for r in rows] == ["q one", "q two"]
    assert "s3cret" not in (tmp_path / "gen.jsonl").read_text() and rows[0]["teacher"] == f"openai:teacher@{ep.url}"
