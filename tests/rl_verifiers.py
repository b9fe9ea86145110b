"""User verifiers named on the s1fast.rl command line by the RL tests (``--rewards rl_verifiers:NAME=W``)."""
import zlib


def text_hash(completion, row):
    """A reward that differs between samples (an untrained model never answers right): real advantages."""
    return (zlib.crc32(completion["thinking"].encode()) % 5) / 4.0


def fails(question):
    return zlib.crc32(question.encode()) % 3 == 0


def fails_on_some(completion, row):
    """Raises on about a third of the prompts (a bug in a user's verifier)."""
    if fails(row["question"]):
        raise KeyError("no reference for this one")
    return 0.0


def zero(completion, row):
    return 0.0
