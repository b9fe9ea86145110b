"""Toy reasoning tasks for a tiny transformer on a CPU, in the exact s1 / s1.1 format.

``chain`` (the demo's task; ``docs/toy.md`` says why this shape)::

    question: "Start at 4 and add 7, three times (mod 10)."
    thinking: "3: 4+7=1\\n2: 1+7=8\\n1: 8+7=5"      one line per addition, labelled by the additions left
    attempt:  "Final Answer: 5"                    the last line's value

The trace grows linearly with the difficulty, a budget that cuts it leaves a value that is never the answer,
and a quarter of the training traces re-check their last line after a ``Wait`` (docs/toy.md says why).
Held-out problems are chosen by a hash of the question: never in training, whatever the seeds.

    >>> rows = make_problems("chain", 3200, seed=0, split="train")
    >>> render(rows[0]); check("chain", "Final Answer: 5", rows[0]["answer"])
"""
from __future__ import annotations

import hashlib
import json
import os
import random
from dataclasses import dataclass

from ..whole_folder import sibling
from .format import render as _render
from .readers import DataError

SPLITS = ("train", "test")
HELD_OUT_PERCENT = 20   # share of all questions (by hash) reserved for evaluation


@dataclass(frozen=True)
class Task:
    name: str
    min_steps: int
    max_steps: int
    wait_rate: float   # share of training traces that re-check their last line after "Wait"
    doc: str


TASKS: dict[str, Task] = {
    "chain": Task("chain", 1, 9, 0.25, "add a step (1, 3, 7 or 9) to a start digit n times mod 10, one line per "
                  "addition: every line reads only the line before it"),
    "sum": Task("sum", 2, 8, 0.25, "running sum mod 10 of 2-8 labelled digits, one line of thinking per digit"),
}
LABELS = "abcdefghijkl"
WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
CHAIN_STEPS = (1, 3, 7, 9)   # coprime to 10: the chain never returns to a value early, so a cut trace is wrong


def _task(name: str) -> Task:
    if name not in TASKS:
        raise DataError(f"unknown toy task '{name}'; choose one of {', '.join(TASKS)}")
    return TASKS[name]


def split_of(question: str) -> str:
    """'test' for the held-out share of all possible questions (by a hash of the text), else 'train'."""
    h = int.from_bytes(hashlib.sha256(question.encode()).digest()[:4], "big")
    return "test" if h % 100 < HELD_OUT_PERCENT else "train"


def solve(task: str, spec) -> tuple[str, list[str], int]:
    """(question, thinking lines, answer) of one problem: ``spec`` is the digits (sum) or (start, step, n) (chain)."""
    t = _task(task)
    lines = []
    if task == "sum":
        digits = list(spec)
        if not t.min_steps <= len(digits) <= t.max_steps or not all(0 <= d <= 9 for d in digits):
            raise DataError(f"toy task 'sum' takes {t.min_steps}-{t.max_steps} digits 0-9, got {digits}")
        question = "Add mod 10:\n" + "\n".join(f"{label}={d}" for label, d in zip(LABELS, digits))
        total = 0
        for label, d in zip(LABELS, digits):
            new = (total + d) % 10
            lines.append(f"{label}={d}: {total}+{d}={new}")
            total = new
        return question, lines, total
    start, step, n = spec
    if not (0 <= start <= 9 and step in CHAIN_STEPS and t.min_steps <= n <= t.max_steps):
        raise DataError(f"toy task 'chain' takes a start digit, a step in {CHAIN_STEPS} and {t.min_steps}-"
                        f"{t.max_steps} steps, got {spec}")
    question = f"Start at {start} and add {step}, {WORDS[n]} time{'s' if n > 1 else ''} (mod 10)."
    x = start
    for left in range(n, 0, -1):   # the label counts the additions left: stop after the line labelled 1
        lines.append(f"{left}: {x}+{step}={(x + step) % 10}")
        x = (x + step) % 10
    return question, lines, x


def _draw(task: str, rng: random.Random):
    t = _task(task)
    n = rng.randint(t.min_steps, t.max_steps)
    if task == "sum":
        return [rng.randrange(10) for _ in range(n)]
    return (rng.randrange(10), rng.choice(CHAIN_STEPS), n)


def make_row(task: str, spec, *, wait: bool = False, index: int = 0, split: str = "train") -> dict:
    """One problem as a data row: s1 and s1.1 fields, the reference answer, the difficulty (thinking lines)."""
    question, lines, answer = solve(task, spec)
    difficulty = len(lines)
    if wait:
        lines.append("Wait, " + lines[-1])
    thinking = "\n".join(lines)
    attempt = f"Final Answer: {answer}"
    return {"id": f"{task}-{split}-{index}", "task": task, "question": question, "thinking": thinking,
            "answer": str(answer), "solution": attempt, "difficulty": difficulty,
            "thinking_trajectories": [thinking], "attempt": attempt,             # s1 (s1K) fields
            "deepseek_thinking_trajectory": thinking, "deepseek_attempt": attempt}  # s1.1 fields


def make_problems(task: str, n: int, seed: int = 0, split: str = "train") -> list[dict]:
    """``n`` problems of ``split``, seeded; item counts uniform over the task's range.

    Held-out (``test``) problems are distinct questions; training ones may repeat (short lists have few
    distinct questions). No training question is ever a test question (``split_of``)."""
    t = _task(task)
    if split not in SPLITS:
        raise DataError(f"unknown split '{split}'; choose train or test")
    rng = random.Random(f"{task}/{split}/{seed}")
    rows, seen = [], set()
    tries = 0
    while len(rows) < n:
        tries += 1
        if tries > 1000 * (n + 10):
            raise DataError(f"could not draw {n} distinct {split} problems of toy task '{task}': ask for fewer")
        spec = _draw(task, rng)
        wait = split == "train" and rng.random() < t.wait_rate
        row = make_row(task, spec, wait=wait, index=len(rows), split=split)
        if split_of(row["question"]) != split or (split == "test" and row["question"] in seen):
            continue
        seen.add(row["question"])
        rows.append(row)
    return rows


def render(row: dict, recipe: str = "s1") -> str:
    """The exact training string of a toy row (``s1fast.data.format``'s renderer, no tokenizer needed)."""
    return _render(row, recipe)


def check(task: str, predicted: str | None, reference: str) -> bool:
    """Whether a predicted answer (text such as "9", " 9 ", "Final Answer: 9") equals the reference."""
    _task(task)
    if predicted is None:
        return False
    text = str(predicted).strip()
    if "Answer:" in text:
        text = text.rsplit("Answer:", 1)[1].strip()
    return text.rstrip(".") == str(reference).strip()


# ---- the --data toy:NAME[:N] source ---------------------------------------------------------------------
DEFAULT_N = 4000


def parse_spec(spec: str) -> tuple[str, int]:
    """'toy:sum' -> ('sum', 4000); 'toy:sum:2000' -> ('sum', 2000)."""
    parts = spec.split(":")
    if parts[0] != "toy" or len(parts) not in (2, 3):
        raise DataError(f"--data {spec}: a toy source is toy:NAME or toy:NAME:N (tasks: {', '.join(TASKS)})")
    _task(parts[1])
    try:
        n = int(parts[2]) if len(parts) == 3 else DEFAULT_N
    except ValueError:
        raise DataError(f"--data {spec}: N must be a whole number of training problems") from None
    if n <= 0:
        raise DataError(f"--data {spec}: N must be positive")
    return parts[1], n


def is_spec(data: str | None) -> bool:
    return bool(data) and data.startswith("toy:")


def materialize(spec: str, folder: str, seed: int = 0, split: str = "train") -> str:
    """Write the problems of ``spec`` as jsonl in ``folder`` (once) and return the path."""
    task, n = parse_spec(spec)
    path = os.path.join(folder, f"toy-{task}-{split}-{n}-seed{seed}.jsonl")
    if not os.path.exists(path):
        os.makedirs(folder, exist_ok=True)
        tmp = sibling(path)
        with open(tmp, "w", encoding="utf-8") as f:
            for row in make_problems(task, n, seed, split):
                f.write(json.dumps(row) + "\n")
        os.replace(tmp, path)
    return path
