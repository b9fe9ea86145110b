"""Reasoning-trace data -> the exact token sequences and loss masks of the s1 / s1.1 / Sky-T1 recipes.

    >>> from s1fast import data
    >>> tok = data.load_tokenizer()                      # the bundled Qwen2.5 tokenizer
    >>> rows = data.read_rows("s1K.jsonl")               # json, jsonl or parquet; (row_number, dict)
    >>> text = data.render(row, "s1")                    # the exact training string
    >>> enc = data.encode(row, tok, "s1", max_tokens=32768)   # input_ids, labels (-100 = no loss)
    >>> ds = data.prepare("s1K.jsonl", "s1", max_tokens=32768, out="runs/tokens")  # cached, parallel

CLI: ``python -m s1fast.data prepare --help``.
"""
from .cache import (DEFAULT_DATA, DEFAULT_TOKENIZER, POLICIES, Summary, TokenDataset, cache_key,
                    load_tokenizer, prepare)
from .format import (DEFAULT_SYSTEM, IGNORE, RECIPES, Encoded, chatml, encode, label_mask, render,
                     to_messages)
from .readers import DataError, read_rows

__all__ = ["read_rows", "render", "encode", "label_mask", "to_messages", "chatml", "prepare", "TokenDataset",
           "load_tokenizer", "cache_key", "DataError", "Encoded", "Summary", "RECIPES", "POLICIES", "IGNORE",
           "DEFAULT_SYSTEM", "DEFAULT_DATA", "DEFAULT_TOKENIZER"]
