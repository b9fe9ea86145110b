"""The data pipeline: exact s1 / s1.1 / Sky-T1 text, loss masks by token id, every error path, the cache."""
import json
import os

import numpy as np
import pytest

from s1fast import data
from s1fast.data import DataError

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
S1K = json.load(open(os.path.join(FIXTURES, "s1k_head.json"), encoding="utf-8"))
SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."


@pytest.fixture(scope="module")
def tok():
    return data.load_tokenizer()


def reference_s1(question, trace, answer):
    """recipe.md's format, written out literally."""
    return (f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n{question}<|im_end|>\n"
            f"<|im_start|>assistant\n<|im_start|>think\n{trace}\n<|im_start|>answer\n{answer}<|im_end|>\n")


def s1_tokenization_py(question, thinking_trajectory, answer, tok):
    """The text column s1K_tokenized holds, as simplescaling/s1 data/tokenization.py (process_cot_example, commit
    77272c6) makes it: the attempt gets "Answer: " unless it has "Answer:", the whole is stripped after, and the
    real Qwen2.5 chat template renders the user and assistant turns (no system turn given)."""
    prefixed = answer if "Answer:" in answer else "Answer: " + answer
    body = ("<|im_start|>think\n" + "\n".join(thinking_trajectory).strip() + "\n<|im_start|>answer\n"
            + prefixed.strip())
    return tok.apply_chat_template([{"role": "user", "content": question},
                                    {"role": "assistant", "content": body}], tokenize=False)


def s1_row(r, k=0):
    steps = [f"Step {i}: consider the problem carefully." for i in range(3)]
    return {"question": r["problem"], "thinking_trajectories": ["  "] + steps + [" "], "attempt": r["solution"]}


@pytest.mark.parametrize("k", range(len(S1K)))
def test_s1_render_equals_reference_on_real_questions(tok, k):
    r = S1K[k]
    row = s1_row(r)
    want = s1_tokenization_py(row["question"], row["thinking_trajectories"], row["attempt"], tok)
    assert want == reference_s1(r["problem"], "\n".join(row["thinking_trajectories"]).strip(),
                                (row["attempt"] if "Answer:" in row["attempt"] else "Answer: " + row["attempt"]).strip())
    assert data.render(row, "s1") == want                    # built-in renderer
    assert data.render(row, "s1", tok) == want               # through the tokenizer's own chat template


@pytest.mark.parametrize("attempt", ["  42", "\n\nThe sum is 42.\n", "", " \t", "Answer: 5", "  Final Answer: 5 ",
                                     "x\n Answer:", "The answer is\n\n  42"])
def test_s1_answer_is_prefixed_before_it_is_stripped_as_s1_did(tok, attempt):
    """s1 prefixed "Answer: " to the attempt as stored and stripped afterwards: leading whitespace stays
    after the prefix, an empty attempt gives "Answer:" (issue: s1fast stripped first)."""
    row = {"question": "What is 6 x 7?", "thinking_trajectories": ["six sevens", "are 42"], "attempt": attempt}
    want = s1_tokenization_py(row["question"], row["thinking_trajectories"], attempt, tok)
    assert data.render(row, "s1") == want == data.render(row, "s1", tok)


def test_s11_render_and_answer_rule(tok):
    q = S1K[0]["problem"]
    row = {"question": q, "deepseek_thinking_trajectory": "\n  Let me think.\nOkay.  \n",
           "deepseek_attempt": "So the result is 3.\n\nFinal Answer: 3"}
    want = reference_s1(q, "Let me think.\nOkay.", "So the result is 3.\n\nFinal Answer: 3")
    assert data.render(row, "s1.1") == want == data.render(row, "s1.1", tok)
    row["deepseek_attempt"] = "  The result is 3. "  # s1's rule: prefixed, then stripped (the spaces stay)
    assert data.render(row, "s1.1").endswith("<|im_start|>answer\nAnswer:   The result is 3.<|im_end|>\n")


def test_s1_label_mask_by_token_id(tok):
    row = s1_row(S1K[1])
    enc = data.encode(row, tok, "s1")
    ids, labels = enc.input_ids, enc.labels
    header = [151644, 77091, 198]
    h = next(i for i in range(len(ids)) if ids[i:i + 3] == header)
    assert all(x == -100 for x in labels[:h + 3]), "prompt and assistant header must be masked"
    assert labels[h + 3:] == ids[h + 3:], "everything after the header is trained"
    assert ids[h + 3:h + 5] == [151644, 26865], "<|im_start|>think starts the trained span"
    assert ids[-2:] == [151645, 198] and labels[-2:] == [151645, 198], "final <|im_end|> and \\n are trained"
    assert [151644, 9217] in [ids[i:i + 2] for i in range(len(ids))]
    # tokenised once: the ids are exactly the tokenizer's ids of the rendered string
    assert ids == tok(data.render(row, "s1"), add_special_tokens=False)["input_ids"]
    assert enc.supervised == len(ids) - (h + 3)


def trl_completion_only_labels(ids, response=(151644, 77091, 198), instruction=(151644, 872)):
    """s1's loss mask: trl 0.12.0 DataCollatorForCompletionOnlyLM.torch_call (the instruction_template branch),
    transcribed, with s1's templates "<|im_start|>assistant\\n" and "<|im_start|>user" (train/sft.py) as Qwen2.5's
    tokenizer encodes them. The pad token <|fim_pad|> never occurs, so the parent collator masks nothing."""
    labels = list(ids)
    starts = [i + len(response) for i in range(len(ids)) if tuple(ids[i:i + len(response)]) == response]
    humans = [i for i in range(len(ids)) if tuple(ids[i:i + len(instruction)]) == instruction]
    if not starts or not humans:
        return [-100] * len(ids)
    if humans[0] > starts[0]:
        humans = [0] + humans
    for k, (start, end) in enumerate(zip(humans, starts)):
        for j in range(0 if k == 0 else start, end):
            labels[j] = -100
    if len(starts) < len(humans):
        labels[humans[-1]:] = [-100] * (len(ids) - humans[-1])
    return labels


@pytest.mark.parametrize("k", range(3))
def test_s1_labels_are_trls_completion_only_labels(tok, k):
    enc = data.encode(s1_row(S1K[k]), tok, "s1")
    assert enc.labels == trl_completion_only_labels(enc.input_ids)
    cut = data.encode(s1_row(S1K[k]), tok, "s1", max_tokens=40, policy="truncate")  # template cut off: nothing
    assert cut.labels == trl_completion_only_labels(cut.input_ids) == [-100] * 40


def test_chat_multi_turn_labels_are_trls_completion_only_labels(tok):
    row = {"messages": [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4"},
                        {"role": "user", "content": "And 3+3?"}, {"role": "assistant", "content": "6, so 12."}]}
    enc = data.encode(row, tok, "chat")
    assert enc.labels == trl_completion_only_labels(enc.input_ids)


def llamafactory_qwen25(tok, system, turns, cutoff_len=10 ** 9):
    """Ids and labels as SkyThought's LLaMA-Factory fork made Sky-T1's (commit 0751518, the Sky-T1-32B-Preview
    release; skythought/train/LLaMA-Factory/src/llamafactory/data/): template ``qwen25`` encodes every slot
    on its own (system, separator, user turn with the assistant header, response), the response followed by
    the EOS id, which replace_eos made <|endoftext|>; the prompt of each turn pair is masked, the response and
    EOS trained; cutoff_len is shared out pair by pair as processor_utils.infer_seqlen does."""
    eos = tok.convert_tokens_to_ids("<|endoftext|>")
    enc = lambda text: tok.encode(text, add_special_tokens=False) if text else []  # noqa: E731
    per_turn = []
    for i, m in enumerate(turns):
        head = enc(f"<|im_start|>system\n{system}<|im_end|>\n") if i == 0 else []
        sep = enc("\n") if i and i % 2 == 0 else []
        body = (enc(f"<|im_start|>user\n{m['content']}<|im_end|>\n<|im_start|>assistant\n") if m["role"] == "user"
                else enc(m["content"]) + [eos])
        per_turn.append(head + sep + body)
    ids, labels, used = [], [], 0
    for prompt, reply in zip(per_turn[0::2], per_turn[1::2]):
        if used >= cutoff_len:
            break
        room = cutoff_len - used
        if 2 * len(reply) < room:              # a short reply stays whole; the prompt gives way
            keep_reply = len(reply)
        elif 2 * len(prompt) < room:           # a short prompt stays whole; the reply gives way
            keep_reply = min(room - len(prompt), len(reply))
        else:                                  # both long: shares in proportion to their lengths
            keep_reply = min(int(room * (len(reply) / (len(prompt) + len(reply)))), len(reply))
        keep_prompt = min(max(room - keep_reply, 0), len(prompt))
        ids += prompt[:keep_prompt] + reply[:keep_reply]
        labels += [-100] * keep_prompt + reply[:keep_reply]
        used += keep_prompt + keep_reply
    return ids, labels


def test_sky_t1_is_llamafactorys_qwen25_template_token_for_token(tok):
    system = "Your role as an assistant involves thoroughly exploring questions."
    turns = [{"role": "user", "content": "What is 2+2?"},
             {"role": "assistant", "content": "<|begin_of_thought|>\n\n4\n\n<|end_of_thought|>"},
             {"role": "user", "content": "And 3+3?"},
             {"role": "assistant", "content": "\n\n6 "}]   # leading newlines: tokenised apart from the header
    row = {"system": system, "conversations": [{"from": m["role"], "value": m["content"]} for m in turns]}
    enc = data.encode(row, tok, "sky-t1")
    assert (enc.input_ids, enc.labels) == llamafactory_qwen25(tok, system, turns)
    for cutoff in (30, 45, 60):   # cut inside the first pair, at its end, inside the second
        enc_cut = data.encode(row, tok, "sky-t1", max_tokens=cutoff, policy="truncate")
        assert (enc_cut.input_ids, enc_cut.labels) == llamafactory_qwen25(tok, system, turns, cutoff)
    text = data.render(row, "sky-t1")
    assert text == data.render(row, "sky-t1", tok)   # the tokenizer's own (ChatML) template is not Sky-T1's
    assert text == (f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
                    "<|im_start|>assistant\n<|begin_of_thought|>\n\n4\n\n<|end_of_thought|><|endoftext|>\n"
                    "<|im_start|>user\nAnd 3+3?<|im_end|>\n<|im_start|>assistant\n\n\n6 <|endoftext|>")
    trained = tok.decode([t for t, lab in zip(enc.input_ids, enc.labels) if lab != -100])
    assert trained == "<|begin_of_thought|>\n\n4\n\n<|end_of_thought|><|endoftext|>\n\n6 <|endoftext|>"
    # no system field: LLaMA-Factory's qwen25 default system prompt, which is Qwen2.5's
    enc = data.encode({"conversations": row["conversations"][:2]}, tok, "sky-t1")
    assert (enc.input_ids, enc.labels) == llamafactory_qwen25(tok, SYSTEM, turns[:2])


@pytest.mark.parametrize("q_words,a_words,cutoff", [(300, 300, 400), (20, 300, 200), (300, 20, 200),
                                                   (250, 30, 120), (40, 40, 90)])
def test_sky_t1_truncation_is_llamafactorys_cutoff(tok, q_words, a_words, cutoff):
    """A long prompt and a long response both shrink in proportion, a short response keeps whole and the
    prompt loses its end, a short prompt keeps whole: LLaMA-Factory's infer_seqlen, not s1's first N tokens."""
    system = "Solve it."
    turns = [{"role": "user", "content": " ".join(f"q{i}" for i in range(q_words))},
             {"role": "assistant", "content": " ".join(f"a{i}" for i in range(a_words))}]
    row = {"system": system, "conversations": [{"from": m["role"], "value": m["content"]} for m in turns]}
    enc = data.encode(row, tok, "sky-t1", max_tokens=cutoff, policy="truncate")
    assert enc.truncated and len(enc.input_ids) <= cutoff
    assert (enc.input_ids, enc.labels) == llamafactory_qwen25(tok, system, turns, cutoff)


def test_chat_rows_keep_qwens_chatml_and_train_im_end(tok):
    msgs = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    assert data.render(msgs, "chat") == (f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n"
                                         "<|im_start|>assistant\nhello<|im_end|>\n")
    enc = data.encode(msgs, tok, "chat")
    assert tok.decode([t for t, lab in zip(enc.input_ids, enc.labels) if lab != -100]) == "hello<|im_end|>\n"


@pytest.mark.parametrize("row,recipe,match", [
    ({"thinking_trajectories": ["x"], "attempt": "a"}, "s1", "field 'question': missing"),
    ({"question": "q", "thinking_trajectories": ["x"]}, "s1", "field 'attempt': missing"),
    ({"question": "q", "thinking_trajectories": ["x"], "attempt": None}, "s1", "field 'attempt': is null"),
    # the row is another recipe's: the error says which
    ({"question": "q", "deepseek_thinking_trajectory": "t", "deepseek_attempt": "a"}, "s1",
     "field 'thinking_trajectories': missing .*; the row has the fields of --recipe s1.1"),
    ({"question": "q", "thinking_trajectories": ["t"], "attempt": "a"}, "s1.1", "the fields of --recipe s1$"),
    ({"conversations": [{"from": "human", "value": "q"}]}, "s1", "the fields of --recipe sky-t1"),
    ({"question": "q", "thinking_trajectories": ["t"], "attempt": "a"}, "chat", "the fields of --recipe s1$"),
    ({"problem": "q", "solution": "4"}, "s1",
     "no reasoning trace: make traces first \\(python -m s1fast.data generate"),
    ({"question": "q", "thinking_trajectories": 7, "attempt": "a"}, "s1", "field 'thinking_trajectories': must be"),
    ({"question": "q", "thinking_trajectories": [" ", ""], "attempt": "a"}, "s1", "empty reasoning trace"),
    ({"question": "q", "thinking_trajectories": ["x", 3], "attempt": "a"}, "s1", "list of strings"),
    ({"question": "q", "deepseek_thinking_trajectory": "", "deepseek_attempt": "a"}, "s1.1", "empty reasoning"),
    ({"question": "q"}, "sky-t1", "needs 'conversations'"),
    ({"conversations": [{"from": "alien", "value": "x"}]}, "sky-t1", "unknown speaker"),
    ({"conversations": [{"from": "user", "value": "x"}]}, "sky-t1", "user turn with no answer"),
    ({"conversations": [{"from": "user", "value": "x"}, {"from": "gpt", "value": " "}]}, "sky-t1",
     "no non-empty assistant turn"),
    # turn order (issue 14): assistant first, two user turns in a row, a late system turn
    ({"conversations": [{"from": "gpt", "value": "a"}, {"from": "user", "value": "q"}]}, "sky-t1",
     "turn 1 is assistant where user was expected"),
    ({"messages": [{"role": "user", "content": "q"}, {"role": "user", "content": "q"},
                   {"role": "assistant", "content": "a"}]}, "chat", "turn 2 is user where assistant"),
    ({"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "q"},
                   {"role": "system", "content": "s"}, {"role": "assistant", "content": "a"}]}, "chat",
     "turn 3 is a system turn after the conversation began"),
    ({"question": "q"}, "s2", "unknown recipe"),
])
def test_malformed_rows_name_file_row_field(row, recipe, match):
    with pytest.raises(DataError, match=match) as e:
        data.render(row, recipe, path="train.jsonl", row_id=17)
    if "unknown recipe" not in match:
        assert "file train.jsonl, row 17" in str(e.value)


def test_readers_json_jsonl_parquet_and_errors(tmp_path):
    rows = [s1_row(S1K[i]) for i in range(3)]
    (tmp_path / "a.json").write_text(json.dumps(rows))
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    import pyarrow as pa
    import pyarrow.parquet as pq
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "a.parquet")
    for name in ("a.json", "a.jsonl", "a.parquet"):
        got = list(data.read_rows(str(tmp_path / name)))
        assert [i for i, _ in got] == [1, 2, 3] and [r["question"] for _, r in got] == [r["question"] for r in rows]
    (tmp_path / "bad.jsonl").write_text(json.dumps(rows[0]) + "\n{not json\n")
    with pytest.raises(DataError, match=r"bad.jsonl, row 2: not valid JSON"):
        list(data.read_rows(str(tmp_path / "bad.jsonl")))
    (tmp_path / "list.jsonl").write_text("[1, 2]\n")
    with pytest.raises(DataError, match="row 1: expected a JSON object"):
        list(data.read_rows(str(tmp_path / "list.jsonl")))
    with pytest.raises(DataError, match="no such file"):
        list(data.read_rows(str(tmp_path / "missing.jsonl")))
    with pytest.raises(DataError, match="unknown extension '.csv'"):
        (tmp_path / "x.csv").write_text("a")
        list(data.read_rows(str(tmp_path / "x.csv")))


def test_parquet_without_pyarrow_says_what_to_install(tmp_path, monkeypatch):
    import builtins
    real = builtins.__import__

    def fake(name, *a, **k):
        if name.startswith("pyarrow"):
            raise ImportError("no pyarrow")
        return real(name, *a, **k)

    (tmp_path / "x.parquet").write_bytes(b"PAR1")
    monkeypatch.setattr(builtins, "__import__", fake)
    with pytest.raises(DataError, match="pip install pyarrow"):
        list(data.read_rows(str(tmp_path / "x.parquet")))


def test_encode_over_budget_policies(tok):
    row = s1_row(S1K[0])
    n = len(data.encode(row, tok, "s1").input_ids)
    with pytest.raises(DataError, match=f"row 3: {n} tokens, over the 50-token budget"):
        data.encode(row, tok, "s1", 50, path="f.jsonl", row_id=3)
    t = data.encode(row, tok, "s1", 50, policy="truncate")
    assert t.truncated and len(t.input_ids) == 50 and all(x == -100 for x in t.labels)


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_prepare_cache_policies_and_atomic_rebuild(tmp_path):
    rows = [s1_row(S1K[i]) for i in range(6)]
    rows[2]["thinking_trajectories"] = ["long " * 3000]
    src = tmp_path / "d.jsonl"
    _write_jsonl(src, rows)
    out = str(tmp_path / "cache")
    logs = []
    with pytest.raises(DataError, match=r"1 example\(s\) longer than --max-tokens 2000: row 3 \(\d+ tokens\)"):
        data.prepare(str(src), "s1", max_tokens=2000, out=out, progress=False, log=logs.append, workers=1)
    assert not os.path.exists(out)

    ds = data.prepare(str(src), "s1", max_tokens=2000, out=out, policy="drop", progress=False, log=logs.append,
                      workers=2)
    assert len(ds) == 5 and list(ds.rows) == [1, 2, 4, 5, 6]
    assert any("dropped 1 example(s)" in line for line in logs)
    assert ds.meta["summary"]["rows_dropped"] == 1 and ds.meta["summary"]["rows_over_budget"] == 1
    tok = data.load_tokenizer()
    for i, r in enumerate(ds.rows):
        ids, labels = ds[i]
        enc = data.encode(rows[r - 1], tok, "s1")
        assert ids.tolist() == enc.input_ids and labels.tolist() == enc.labels
        assert ds.lengths[i] == len(enc.input_ids) and ds.supervised[i] == enc.supervised

    logs.clear()
    again = data.prepare(str(src), "s1", max_tokens=2000, out=out, policy="drop", progress=False, log=logs.append)
    assert "cache hit" in logs[0] and len(again) == 5

    # a change of budget rebuilds; a failing rebuild leaves the previous cache intact
    with pytest.raises(DataError):
        data.prepare(str(src), "s1", max_tokens=1000, out=out, policy="error", progress=False, log=logs.append)
    assert len(data.TokenDataset(out)) == 5
    logs.clear()
    t = data.prepare(str(src), "s1", max_tokens=1000, out=out, policy="truncate", progress=False, log=logs.append)
    assert "cache hit" not in logs[0] and int(t.lengths.max()) == 1000
    assert any("truncated" in line for line in logs)
    # a change of data rebuilds too
    _write_jsonl(src, rows[:4])
    logs.clear()
    assert len(data.prepare(str(src), "s1", max_tokens=1000, out=out, policy="truncate", progress=False,
                            log=logs.append)) == 4


def test_prepare_cli_on_bundled_sample(tmp_path, capsys):
    from s1fast.data.__main__ import main
    out = str(tmp_path / "c")
    assert main(["prepare", "--max-tokens", "16384", "--out", out, "--no-progress"]) == 0
    first = capsys.readouterr().out
    assert "supervised_tokens" in first and "rows_kept          59" in first
    assert main(["prepare", "--max-tokens", "16384", "--out", out, "--no-progress"]) == 0
    assert "cache hit" in capsys.readouterr().out
    assert main(["prepare", "--data", str(tmp_path / "nope.jsonl"), "--out", out]) == 2
    assert "no such file" in capsys.readouterr().err
    ds = data.TokenDataset(out)
    assert np.all(ds.supervised > 0) and np.all(ds.lengths > ds.supervised)


def test_prepare_on_a_folder_blames_the_data_not_the_cache(tmp_path, capsys):
    """--data naming a folder (a dataset saved in shards) was reported as 'cannot write the cache ... (Is a
    directory)': the wrong flag blamed."""
    from s1fast.data.__main__ import main
    (tmp_path / "shards").mkdir()
    assert main(["prepare", "--data", str(tmp_path / "shards"), "--out", str(tmp_path / "c"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "shards: is a folder; pass --data with a .json, .jsonl or .parquet file" in err and "cache" not in err


def test_a_utf8_byte_order_mark_is_not_taken_for_data(tmp_path):
    """Files saved by Windows tools start with a BOM: 'row 1: not valid JSON (Unexpected UTF-8 BOM ...)'."""
    rows = [{"question": "¿Cuánto es 2+2? 你好 🙂", "thinking_trajectories": ["t"], "attempt": "4"}] * 2
    (tmp_path / "b.jsonl").write_bytes(b"\xef\xbb\xbf" + "".join(json.dumps(r, ensure_ascii=False) + "\n"
                                                                 for r in rows).encode())
    (tmp_path / "b.json").write_bytes(b"\xef\xbb\xbf" + json.dumps(rows, ensure_ascii=False).encode())
    for name in ("b.jsonl", "b.json"):
        assert [r for _, r in data.read_rows(str(tmp_path / name))] == rows


def test_prepare_never_deletes_a_folder_that_is_not_its_cache(tmp_path, capsys):
    """`prepare --out runs` (a folder of other things) swapped the cache in for the folder and deleted
    everything that was in it."""
    from s1fast.data.__main__ import main
    mine = tmp_path / "runs"
    (mine / "s1").mkdir(parents=True)
    (mine / "notes.txt").write_text("keep me")
    small = tmp_path / "d.jsonl"
    _write_jsonl(small, [s1_row(S1K[i]) for i in range(2)])
    assert main(["prepare", "--data", str(small), "--out", str(mine), "--no-progress", "--workers", "1"]) == 2
    err = capsys.readouterr().err
    assert "holds other files (notes.txt, s1)" in err and "pass --out with a new or empty folder" in err
    assert (mine / "notes.txt").read_text() == "keep me" and (mine / "s1").is_dir()
    cache = tmp_path / "cache"
    for _ in range(2):   # a new folder, then the cache it holds: built, then reused (or rebuilt) in place
        assert main(["prepare", "--data", str(small), "--out", str(cache), "--no-progress", "--workers", "1"]) == 0
    _write_jsonl(small, [s1_row(S1K[i]) for i in range(3)])
    assert main(["prepare", "--data", str(small), "--out", str(cache), "--no-progress", "--workers", "1"]) == 0
    assert len(data.TokenDataset(str(cache))) == 3


def test_a_tokenizer_without_qwens_chat_markers_is_refused_not_trained_on_nothing(tmp_path):
    """With another family's tokenizer the mask finds no <|im_start|>assistant: the cache was built with
    supervised_tokens 0 and no warning, and training had nothing to learn."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    tok = tmp_path / "tok"
    tok.mkdir()
    t = Tokenizer(models.WordLevel({"[UNK]": 0, "the": 1}, unk_token="[UNK]"))
    t.pre_tokenizer = pre_tokenizers.Whitespace()
    t.save(str(tok / "tokenizer.json"))
    (tok / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "PreTrainedTokenizerFast",
                                                           "unk_token": "[UNK]"}))
    src = tmp_path / "d.jsonl"
    _write_jsonl(src, [s1_row(S1K[i]) for i in range(2)])
    with pytest.raises(DataError, match=r"2 example\(s\) have no token to train on \(rows 1, 2\).*pass --tokenizer"):
        data.prepare(str(src), "s1", str(tok), out=str(tmp_path / "c"), progress=False, workers=1, log=lambda *_: None)
    assert not (tmp_path / "c").exists()
