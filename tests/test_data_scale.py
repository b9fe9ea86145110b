"""The pipeline at scale: verify, decontaminate and select hold what they decide by, not the traces they read
(a distilled set of 1M+ rows of 10-30 KB traces is tens of GB). Peak Python memory is measured against the
input's size on a file of many rows of ~20 KB traces; holding every row (as the steps did) costs more than
the whole file."""
import json
import random
import tracemalloc

import pytest

from s1fast.data.__main__ import main as data_main

N_QUESTIONS, SAMPLES, TRACE_CHARS = 200, 3, 20_000


def _words(rng, n):
    return " ".join(rng.choice(("apple", "blue", "seven", "prime", "circle", "sum", "river", "grid", "lamp", "tile",
                                "coin", "edge", "cube", "root")) + str(rng.randrange(1000)) for _ in range(n))


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    """A JSON-lines file of N_QUESTIONS x SAMPLES rows, each with a ~20 KB trace; its size in bytes."""
    rng = random.Random(0)
    path = tmp_path_factory.mktemp("scale") / "samples.jsonl"
    with open(path, "w") as f:
        for q in range(N_QUESTIONS):
            question = f"Question {q}: {_words(rng, 30)}?"
            for s in range(SAMPLES):
                f.write(json.dumps({"question": question, "answer": "42", "sample": s, "domain": f"D{q % 5}",
                                    "thinking_trajectories": [_words(rng, 8) + "x" * TRACE_CHARS],
                                    "attempt": f"so \\boxed{{{42 if s else 41}}}"}) + "\n")
    return str(path), path.stat().st_size


def _peak(argv) -> int:
    tracemalloc.start()
    try:
        assert data_main([str(a) for a in argv] + ["--no-progress"]) == 0
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def _warm(tmp_path):
    """Import the graders and tokenizer-free paths once, so their one-time allocations are not counted."""
    small = tmp_path / "warm.jsonl"
    small.write_text("".join(json.dumps({"question": "What is 6*7 in base ten?", "answer": "42", "sample": s,
                                         "attempt": f"\\boxed{{{a}}}", "thinking_trajectories": ["t"]}) + "\n"
                             for s, a in enumerate((42, 41))))
    for step in ("verify", "decontaminate"):
        assert data_main([step, "--data", str(small), "--out", str(tmp_path / f"warm_{step}.jsonl"),
                          "--no-progress"]) == 0


@pytest.mark.parametrize("step,flags,kept", [
    ("verify", ["--keep", "first-k", "--k", "1"], N_QUESTIONS),
    ("decontaminate", ["--no-builtin-eval"], N_QUESTIONS * SAMPLES),
    ("select", ["--size", "5", "--length", "chars"], 5),
])
def test_a_step_holds_far_less_than_its_input(big, tmp_path, step, flags, kept):
    data, size = big
    _warm(tmp_path)
    out = tmp_path / "out.jsonl"
    peak = _peak([step, "--data", data, "--out", out] + flags)
    rows = [json.loads(x) for x in open(out)]
    assert len(rows) == kept
    written = out.stat().st_size
    # what a step may hold: its indexes and one row at a time (select: the rows it chose), not the input
    assert peak < 0.1 * size + (written if step == "select" else 0), (step, peak, size)
