"""The toy reasoning tasks: s1 format byte for byte, answers that verify, held-out never in training."""
import json
import re

import pytest

from s1fast.data import DataError, encode, load_tokenizer, to_messages, toy
from s1fast.data.format import IGNORE


def test_render_is_byte_exact_s1_format():
    row = toy.make_row("sum", [3, 5, 1])
    expected = ("<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
                "<|im_start|>user\nAdd mod 10:\na=3\nb=5\nc=1<|im_end|>\n<|im_start|>assistant\n"
                "<|im_start|>think\na=3: 0+3=3\nb=5: 3+5=8\nc=1: 8+1=9\n<|im_start|>answer\nFinal Answer: 9<|im_end|>\n")
    assert toy.render(row, "s1") == expected
    assert toy.render(row, "s1.1") == expected
    waited = toy.make_row("sum", [3, 5, 1], wait=True)
    assert "c=1: 8+1=9\nWait, c=1: 8+1=9\n<|im_start|>answer\n" in toy.render(waited)


def test_chain_labels_count_down_to_a_local_stop():
    """The demo's task: each line's label is the additions left, so the stop (after the line labelled 1)
    never needs the question; the count is read once, for the first label."""
    row = toy.make_row("chain", (4, 7, 3))
    assert row["question"] == "Start at 4 and add 7, three times (mod 10)."
    assert row["thinking"] == "3: 4+7=1\n2: 1+7=8\n1: 8+7=5" and row["answer"] == "5"
    assert toy.render(row).endswith("<|im_start|>think\n3: 4+7=1\n2: 1+7=8\n1: 8+7=5\n<|im_start|>answer\n"
                                    "Final Answer: 5<|im_end|>\n")
    assert toy.make_row("chain", (4, 7, 3), wait=True)["thinking"].endswith("1: 8+7=5\nWait, 1: 8+7=5")


def test_tokenizer_template_and_mask_match():
    tok = load_tokenizer()
    row = toy.make_problems("sum", 1, seed=3)[0]
    assert tok.apply_chat_template(to_messages(row, "s1"),
                                   tokenize=False) == toy.render(row)
    enc = encode(row, tok, "s1")
    trained = tok.decode([t for t in enc.labels if t != IGNORE])
    assert trained == f"<|im_start|>think\n{row['thinking']}\n<|im_start|>answer\nFinal Answer: {row['answer']}" \
                      "<|im_end|>\n"


def _check_trace(task, row):
    """Recompute every thinking line and the answer from the question alone."""
    lines = [ln for ln in row["thinking"].split("\n") if not ln.startswith("Wait")]
    if task == "sum":
        digits = [int(x) for x in re.findall(r"=(\d)", row["question"])]
        assert row["answer"] == str(sum(digits) % 10)
        total = 0
        for line, d in zip(lines, digits):
            e, a, b, c = map(int, re.fullmatch(r"[a-l]=(\d): (\d)\+(\d)=(\d)", line).groups())
            assert (e, a, b, c) == (d, total, d, (total + d) % 10)
            total = c
        return len(digits)
    m = re.fullmatch(r"Start at (\d) and add (\d), (\w+) times? \(mod 10\)\.", row["question"])
    start, step, n = int(m.group(1)), int(m.group(2)), toy.WORDS.index(m.group(3))
    assert row["answer"] == str((start + n * step) % 10)
    x = start
    for k, line in enumerate(lines):
        assert line == f"{n - k}: {x}+{step}={(x + step) % 10}"
        x = (x + step) % 10
    return n


@pytest.mark.parametrize("task", list(toy.TASKS))
def test_answers_verify_and_traces_grow_with_difficulty(task):
    t = toy.TASKS[task]
    tok = load_tokenizer()
    think_len = {}
    for row in toy.make_problems(task, 300, seed=1):
        n = _check_trace(task, row)
        lines = [ln for ln in row["thinking"].split("\n") if not ln.startswith("Wait")]
        assert len(lines) == row["difficulty"] == n and t.min_steps <= n <= t.max_steps
        if "Wait" not in row["thinking"]:
            think_len.setdefault(n, set()).add(len(tok.encode(row["thinking"])))
        assert toy.check(task, row["solution"], row["answer"]) and toy.check(task, row["answer"], row["answer"])
        assert not toy.check(task, str((int(row["answer"]) + 1) % 10), row["answer"])
        assert not toy.check(task, None, row["answer"])
    # every line has the same token count: the trace grows linearly with the difficulty
    per_line = {(length + 1) / n for n, lens in think_len.items() for length in lens}   # n lines, n - 1 newlines
    assert len(think_len) >= 5 and len(per_line) == 1


def test_cut_trace_gives_a_wrong_answer():
    """chain steps are coprime to 10: stopping after k < n lines leaves a value that is not the answer."""
    for start in range(10):
        for step in toy.CHAIN_STEPS:
            for n in range(1, 10):
                _, lines, answer = toy.solve("chain", (start, step, n))
                assert all(line.split("=")[-1] != str(answer) for line in lines[:-1])


def test_held_out_never_in_training_and_seeded():
    train = toy.make_problems("sum", 3000, seed=0, split="train")
    test = toy.make_problems("sum", 300, seed=0, split="test")
    chain_test = {r["question"] for r in toy.make_problems("chain", 50, seed=0, split="test")}
    assert not chain_test & {r["question"] for r in toy.make_problems("chain", 3000, seed=0, split="train")}
    assert not {r["question"] for r in train} & {r["question"] for r in test}
    assert len({r["question"] for r in test}) == 300
    assert all(toy.split_of(r["question"]) == "train" for r in train)
    assert toy.make_problems("sum", 50, seed=0) == train[:50]
    assert toy.make_problems("sum", 50, seed=1) != train[:50]
    waits = sum(r["thinking"].count("Wait") for r in train) / len(train)
    assert 0.2 < waits < 0.3 and not any("Wait" in r["thinking"] for r in test)


def test_spec_and_errors(tmp_path):
    assert toy.parse_spec("toy:sum") == ("sum", toy.DEFAULT_N)
    assert toy.parse_spec("toy:sum:12") == ("sum", 12)
    for bad in ("toy:nope", "toy:sum:x", "toy:sum:0", "toy"):
        with pytest.raises(DataError, match="toy"):
            toy.parse_spec(bad)
    with pytest.raises(DataError, match="digits"):
        toy.make_row("sum", [1])
    with pytest.raises(DataError, match="step"):
        toy.make_row("chain", (1, 5, 3))
    with pytest.raises(DataError, match="distinct"):
        toy.make_problems("chain", 500, split="test")
    path = toy.materialize("toy:sum:7", str(tmp_path))
    rows = [json.loads(x) for x in open(path)]
    assert rows == toy.make_problems("sum", 7)


def test_prepare_reads_a_toy_source(tmp_path):
    from s1fast.data import prepare
    ds = prepare("toy:sum:16", "s1", max_tokens=256, out=str(tmp_path / "tokens"), progress=False, workers=1,
                 log=lambda *_: None)
    assert len(ds.lengths) == 16
