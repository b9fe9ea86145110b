"""SkyThought's output files as samples: the ``skythought`` CLI's results.json (today's list of responses and
the older by-temperature object), a JSON-lines file of its problems, and the Qwen2.5-Math harness rows it
ships; one row per response, through verify and select; malformed entries named by file, row and field; a
repeated problem id one error, streamed or read whole.

The example files follow SkyThought's writer (skythought/evals/inference_and_check.py: problem id -> dataset
fields, prompt, input_conversation, responses [{content, correctness, reason}], token_usages
[{completion_tokens, prompt_tokens}]); the contents are made up."""
import importlib.util
import json
import sys

import pytest

from s1fast.data import readers
from s1fast.data.__main__ import main as data_main
from s1fast.data.pipeline import rows as R
from s1fast.data.readers import DataError
from s1fast.data.reasoning import split_content


def sky(thought, solution=None):
    """A reply in Sky-T1's format (solution None: cut inside the thought)."""
    text = f"<|begin_of_thought|>\n\n{thought}\n\n"
    return text if solution is None else text + f"<|end_of_thought|>\n\n<|begin_of_solution|>\n\n{solution}\n\n" \
                                                "<|end_of_solution|>"


def problem(question, answer, replies, correct):
    return {"problem": question, "answer": answer, "level": "Level 2", "unique_id": "test/x.json",
            "prompt": f"Return your final response within \\boxed{{}}. {question}",
            "input_conversation": [{"role": "system", "content": "You are Sky-T1..."},
                                   {"role": "user", "content": question}],
            "responses": [{"content": c, "correctness": ok, "reason": ""} for c, ok in zip(replies, correct)],
            "token_usages": [{"completion_tokens": 100 + i, "prompt_tokens": 40} for i in range(len(replies))]}


RESULTS = {
    "0": problem("What is 6 times 7?", "42", [sky("6*7 is 42.", "The answer is \\boxed{42}."),
                                              sky("6*7... maybe 41.", "\\boxed{41}")], [True, False]),
    "1": problem("What is the square root of 81?", "9", [sky("81 = 9^2, so the root is 9.", "\\boxed{9}"),
                                                         sky("Hmm, 81 is 9 times 9, so")], [True, False]),
}


def write_json(path, value):
    path.write_text(json.dumps(value, indent=4))
    return str(path)


def test_split_content_knows_sky_t1_markers():
    assert split_content(sky("think", "\\boxed{1}")) == ("think", "\\boxed{1}", "sky_t1")
    assert split_content(sky("cut off")) == ("cut off", "", "sky_t1_unclosed")
    # a solution block never closed, and no solution block at all: the text after the thought is the answer
    assert split_content("a<|end_of_thought|><|begin_of_solution|>\\boxed{2}")[:2] == ("a", "\\boxed{2}")
    assert split_content("a<|end_of_thought|>so 3")[:2] == ("a", "so 3")
    assert split_content("<think>x</think>y") == ("x", "y", "think_tags")


def test_results_json_is_one_row_per_response(tmp_path):
    rows = [(i, r) for i, r in R.read(write_json(tmp_path / "results.json", RESULTS))]
    assert [i for i, _ in rows] == [1, 1, 2, 2]
    first, cut = rows[0][1], rows[3][1]
    assert first["problem"] == "What is 6 times 7?" and first["answer"] == "42"
    assert first["thinking_trajectories"] == ["6*7 is 42."] and first["attempt"] == "The answer is \\boxed{42}."
    assert (first["sample"], first["key"], first["skythought_id"]) == (0, "0:0", "0")
    assert first["skythought_correct"] is True and first["completion_tokens"] == 100
    assert not {"responses", "token_usages", "input_conversation"} & set(first)    # bulky lists are not repeated
    assert cut["thinking_trajectories"] == ["Hmm, 81 is 9 times 9, so"] and cut["attempt"] == ""
    assert (cut["key"], cut["skythought_correct"], cut["completion_tokens"]) == ("1:1", False, 101)
    # the same problems as JSON lines (one problem object per line) read the same, numbered by line
    lines = tmp_path / "results.jsonl"
    lines.write_text("".join(json.dumps(dict(p, _index=k)) + "\n" for k, p in RESULTS.items()))
    again = [(i, r) for i, r in R.read(str(lines))]
    assert [i for i, _ in again] == [1, 1, 2, 2]
    assert [r["attempt"] for _, r in again] == [r["attempt"] for _, r in rows]
    assert [r["key"] for _, r in again] == ["0:0", "0:1", "1:0", "1:1"]


def test_older_results_keyed_by_temperature(tmp_path):
    old = {"What is 6 times 7?": {"problem": "What is 6 times 7?", "answer": "42",
                                  "responses": {"0.7": [{"content": sky("a", "\\boxed{42}"), "correctness": True}],
                                                "1.0": {"content": sky("b", "\\boxed{40}"), "correctness": False,
                                                        "reason": "wrong"}},
                                  "token_usages": {"0.7": [{"completion_tokens": 5, "prompt_tokens": 3}],
                                                   "1.0": {"completion_tokens": 6, "prompt_tokens": 3}}}}
    rows = [r for _, r in R.read(write_json(tmp_path / "old.json", old))]
    assert [(r["sample"], r["temperature"], r["attempt"], r["completion_tokens"], r["skythought_correct"])
            for r in rows] == [(0, "0.7", "\\boxed{42}", 5, True), (1, "1.0", "\\boxed{40}", 6, False)]


def test_the_harness_rows_skythought_ships(tmp_path):
    """Qwen2.5-Math's harness (skythought/Qwen2.5-Math/evaluation): code, pred, score per response."""
    row = {"idx": 7, "question": "Cities A and B are 45 miles apart...", "gt_cot": "None", "gt": "27", "answer": 27.0,
           "code": [sky("18t + 12t = 45", "\\boxed{27}"), "no markers: they meet at 30"], "pred": ["27", "30"],
           "report": [None, None], "score": [True, False]}
    data = tmp_path / "test_Sky-T1_-1_seed0_t0.0_s0_e-1.jsonl"
    data.write_text(json.dumps(row) + "\n")
    rows = [r for _, r in R.read(str(data))]
    assert [(r["key"], r["attempt"], r["skythought_pred"], r["skythought_correct"]) for r in rows] == \
        [("7:0", "\\boxed{27}", "27", True), ("7:1", "no markers: they meet at 30", "30", False)]
    assert rows[1]["thinking_trajectories"] == [""] and "code" not in rows[0] and rows[0]["gt"] == "27"


def test_verify_and_select_take_skythought_results(tmp_path):
    data = write_json(tmp_path / "results.json", RESULTS)
    out, graded = tmp_path / "kept.jsonl", tmp_path / "graded.jsonl"
    for _ in range(2):      # the rerun finds everything done
        assert data_main(["verify", "--data", data, "--out", str(out), "--graded", str(graded), "--no-progress"]) == 0
    kept = [json.loads(x) for x in open(out)]
    assert [r["key"] for r in kept] == sorted(["0:0", "1:0"], key=lambda k: R.qid(RESULTS[k[0]]["problem"]))
    assert [r["correct"] for r in map(json.loads, open(graded))].count(True) == 2
    # the same as JSON lines, read back row by row from their offsets: the same rows, the same order
    lines = tmp_path / "results.jsonl"
    lines.write_text("".join(json.dumps(p) + "\n" for p in RESULTS.values()))
    assert data_main(["verify", "--data", str(lines), "--out", str(tmp_path / "k2.jsonl"), "--no-progress"]) == 0
    assert [r["attempt"] for r in map(json.loads, open(tmp_path / "k2.jsonl"))] == [r["attempt"] for r in kept]
    # select: a question is represented by its longest sample, and SkyThought's grade of it reads as a
    # reference model's: question 0's longest is the wrong one (hard), question 1's the right one (easy)
    sel = tmp_path / "sel.jsonl"
    assert data_main(["select", "--data", data, "--out", str(sel), "--size", "2", "--length", "chars",
                      "--method", "difficulty", "--grade-field", "skythought_correct", "--no-progress"]) == 0
    assert [r["key"] for r in map(json.loads, open(sel))] == ["0:1"]
    assert data_main(["select", "--data", data, "--out", str(tmp_path / "s2.jsonl"), "--size", "1", "--length",
                      "chars", "--method", "length", "--no-progress"]) == 0
    assert [r["key"] for r in map(json.loads, open(tmp_path / "s2.jsonl"))] == ["1:0"]


@pytest.mark.parametrize("bad,row,field,says", [
    ({"0": {"problem": "q", "responses": "not a list"}}, 1, "responses", "must be a list of responses"),
    ({"0": RESULTS["0"], "1": dict(RESULTS["1"], responses=[{"content": "x"}, {"text": "y"}])}, 2,
     "responses[1]", "a response must be an object with a text 'content'"),
    ({"0": RESULTS["0"], "1": ["a list"]}, 2, None, "problem '1': expected an object with 'responses'"),
])
def test_a_malformed_results_file_names_the_file_row_and_field(tmp_path, capsys, bad, row, field, says):
    path = write_json(tmp_path / "results.json", bad)
    with pytest.raises(DataError) as e:
        list(R.read(path))
    assert (e.value.path, e.value.row, e.value.field) == (path, row, field) and says in str(e.value)
    assert data_main(["verify", "--data", path, "--out", str(tmp_path / "v.jsonl")]) == 2
    err = capsys.readouterr().err
    assert f"error: verify: file {path}, row {row}" in err and says in err


def test_another_datasets_responses_field_is_left_as_it_is(tmp_path):
    row = {"question": "Which reply is kinder?", "responses": ["yes", "no"], "chosen": 0}
    assert [r for _, r in R.read(write_json(tmp_path / "pref.json", [row]))] == [row]


def test_a_malformed_harness_line_names_its_line(tmp_path):
    data = tmp_path / "h.jsonl"
    data.write_text(json.dumps({"question": "q?", "gt": "1", "code": ["\\boxed{1}"]}) + "\n" +
                    json.dumps({"question": "r?", "gt": "2", "code": ["\\boxed{2}", 3]}) + "\n")
    with pytest.raises(DataError, match=r"row 2, field 'code\[1\]': problem '2': a response in 'code' must be text"):
        list(R.read(str(data)))


def json_object(pairs) -> str:
    """A JSON object of ``(key, value)`` pairs as written, a key repeated where it is."""
    return "{" + ", ".join(f"{json.dumps(k)}: {json.dumps(v)}" for k, v in pairs) + "}"


@pytest.mark.parametrize("how", ["streamed", "read whole", "streamed, then read whole"])
def test_a_repeated_problem_id_is_one_error_however_the_file_is_read(tmp_path, monkeypatch, capsys, how):
    """JSON leaves open which of two entries with one key counts: Python's json kept the last, ijson's stream
    both, so one file gave other rows without ijson. Either drops a problem's responses or counts them twice:
    every read stops at the repeated id, after the same rows, with the same error."""
    if how != "read whole" and importlib.util.find_spec("ijson") is None:
        pytest.skip("ijson streams .json files; scripts/requirements-cpu.txt installs it")
    if how == "read whole":
        monkeypatch.setitem(sys.modules, "ijson", None)         # as if it were not installed
    second = dict(RESULTS["1"], level=float("nan")) if how.endswith("then read whole") else RESULTS["1"]
    path = tmp_path / "results.json"      # NaN: ijson streams problem 1, then refuses; the rest is read whole
    path.write_text(json_object([("0", RESULTS["0"]), ("1", second), ("0", RESULTS["1"])]))
    whole = []
    monkeypatch.setattr(readers, "_json_whole", lambda p, real=readers._json_whole: whole.append(p) or real(p))
    got = []
    with pytest.raises(DataError) as e:
        for i, r in R.read(str(path)):
            got.append((i, r["key"]))
    assert got == [(1, "0:0"), (1, "0:1"), (2, "1:0"), (2, "1:1")] and bool(whole) == (how != "streamed")
    assert (e.value.path, e.value.row, e.value.field) == (str(path), 3, None)
    says = "row 3: problem id '0' is repeated (entries 1 and 3), and a JSON object's keys must be unique"
    assert says in str(e.value)
    assert data_main(["verify", "--data", str(path), "--out", str(tmp_path / "v.jsonl")]) == 2
    assert f"error: verify: file {path}, {says}" in capsys.readouterr().err


@pytest.mark.parametrize("ijson", [True, False])
def test_a_repeated_key_over_the_list_of_rows_is_refused(tmp_path, monkeypatch, ijson):
    """``{"train": [...], "train": [...]}``: the stream read the first list, then the whole read the second's
    rows after it (without ijson, the second's alone); now an object of more than its list, refused."""
    if not ijson:
        monkeypatch.setitem(sys.modules, "ijson", None)
    path = tmp_path / "d.json"
    path.write_text(json_object([("train", [{"question": "a"}]), ("train", [{"question": "b"}, {"question": "c"}])]))
    with pytest.raises(DataError, match="a .json data file must hold a list of objects"):
        list(R.read(str(path)))
