"""The pipeline at scale: verify, decontaminate and select hold what they decide by, not the traces they read
(a distilled set of 1M+ rows of 10-30 KB traces is tens of GB). Peak Python memory is measured against the
input's size on a file of many rows of ~20 KB traces (bench/bench_data_memory.py); holding every row, as the
steps did, costs more than the whole file."""
import json

import pytest

from bench.bench_data_memory import make, peak, warm

QUESTIONS = 200     # x 3 samples of ~20 KB: a 12 MB file


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    d = tmp_path_factory.mktemp("scale")
    make(d / "samples.jsonl", QUESTIONS)
    warm(d)
    return d / "samples.jsonl"


@pytest.mark.parametrize("step,kept", [("verify", QUESTIONS), ("decontaminate", 3 * QUESTIONS), ("select", 5)])
def test_a_step_holds_far_less_than_its_input(big, tmp_path, step, kept):
    out = tmp_path / "out.jsonl"
    p = peak(step, big, out)
    assert len([json.loads(x) for x in open(out)]) == kept
    # what a step may hold: its indexes and one row at a time (select: the rows it chose), not the input
    allowed = 0.1 * big.stat().st_size + (out.stat().st_size if step == "select" else 0)
    assert p < allowed, (step, p, big.stat().st_size)
