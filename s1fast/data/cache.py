"""The token cache: tokenise a data file once, keep flat token arrays on disk, reuse them.

Layout of a cache folder::

    tokens.npy   int32 [total_tokens]   every kept example's ids, back to back
    labels.npy   int32 [total_tokens]   the same positions' labels (-100 = no loss)
    offsets.npy  int64 [rows + 1]       example i is tokens[offsets[i]:offsets[i+1]]
    rows.npy     int64 [rows]           the source file's row number of each kept example
    summary.json                        the key (hash of data, tokenizer, recipe, budget, policy) + statistics

A run with the same key is served from the cache; any change rebuilds it. A rebuild is written to a
temporary folder and swapped in only when complete, so an interrupted run never leaves a broken cache
and never destroys the previous one.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import numpy as np

from . import toy
from .format import IGNORE, encode
from .readers import DataError, read_rows

FORMAT_VERSION = 1
POLICIES = ("error", "drop", "truncate")
ASSETS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets")
DEFAULT_TOKENIZER = os.path.join(ASSETS, "tokenizer", "qwen2.5")
DEFAULT_DATA = os.path.join(ASSETS, "data", "sample_s1k.jsonl")


def load_tokenizer(path: str | None = None):
    """The tokenizer in ``path`` (default: the bundled Qwen2.5 tokenizer), loaded offline."""
    from transformers import AutoTokenizer
    path = path or DEFAULT_TOKENIZER
    if not os.path.isdir(path):
        raise DataError(f"tokenizer folder {path} does not exist; pass --tokenizer with a Hugging Face "
                        "tokenizer folder (tokenizer.json + tokenizer_config.json)")
    return AutoTokenizer.from_pretrained(path, local_files_only=True)


def _file_hash(h, path: str) -> None:
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)


def cache_key(data: str, tokenizer_dir: str, recipe: str, max_tokens: int | None, policy: str) -> str:
    h = hashlib.sha256()
    h.update(json.dumps([FORMAT_VERSION, recipe, max_tokens, policy]).encode())
    _file_hash(h, data)
    for name in sorted(os.listdir(tokenizer_dir)):
        if name.endswith((".json", ".txt", ".model")) and name != "SOURCES.md":
            h.update(name.encode())
            _file_hash(h, os.path.join(tokenizer_dir, name))
    return h.hexdigest()[:32]


# -- tokenising in worker processes ---------------------------------------------------------------
_TOK = None


def _init_worker(tokenizer_dir: str) -> None:
    global _TOK
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    _TOK = load_tokenizer(tokenizer_dir)


def _encode_chunk(args):
    rows, recipe, path = args
    out = []
    for row_id, row in rows:
        enc = encode(row, _TOK, recipe, None, path=path, row_id=row_id)
        out.append((row_id, enc.input_ids, enc.labels))
    return out


@dataclass
class Summary:
    rows_read: int
    rows_kept: int
    rows_dropped: int
    rows_truncated: int
    rows_over_budget: int
    tokens: int
    supervised_tokens: int
    length_p50: int
    length_p90: int
    length_p99: int
    length_max: int

    def lines(self) -> str:
        return "\n".join(f"  {k:<18} {v:,}" for k, v in self.__dict__.items())


def prepare(data: str | None = None, recipe: str = "s1", tokenizer_dir: str | None = None,
            max_tokens: int | None = None, out: str = "runs/tokens", policy: str = "error",
            workers: int | None = None, progress: bool = True, log=print) -> "TokenDataset":
    """Tokenise ``data`` for ``recipe`` into the cache folder ``out`` (or reuse it) and open it."""
    data = data or DEFAULT_DATA
    if toy.is_spec(data):   # --data toy:NAME[:N]: generated problems, written next to the cache once
        data = toy.materialize(data, os.path.join(os.path.dirname(os.path.abspath(out)), "toy-data"))
    tokenizer_dir = tokenizer_dir or DEFAULT_TOKENIZER
    if policy not in POLICIES:
        raise DataError(f"unknown over-length policy '{policy}'; choose one of {', '.join(POLICIES)}")
    if not os.path.exists(data):
        raise DataError("no such file; pass --data with a .json, .jsonl or .parquet file", path=data)
    if not os.path.isdir(tokenizer_dir):
        raise DataError(f"tokenizer folder {tokenizer_dir} does not exist; pass --tokenizer with a Hugging Face "
                        "tokenizer folder (tokenizer.json + tokenizer_config.json)")
    key = cache_key(data, tokenizer_dir, recipe, max_tokens, policy)
    meta_path = os.path.join(out, "summary.json")
    if os.path.exists(meta_path):
        try:
            meta = json.load(open(meta_path))
        except (OSError, json.JSONDecodeError):
            meta = {}
        if meta.get("key") == key:
            log(f"[s1fast.data] cache hit: {out} (key {key})")
            log(Summary(**meta["summary"]).lines())
            return TokenDataset(out)
    t0 = time.time()
    rows = list(read_rows(data))
    workers = workers or max(1, min(os.cpu_count() or 1, 8, len(rows) // 8 or 1))
    chunk = max(1, min(256, len(rows) // (workers * 4) or 1))
    jobs = [(rows[i:i + chunk], recipe, data) for i in range(0, len(rows), chunk)]
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=len(rows), desc=f"tokenising {os.path.basename(data)}", unit="row")
    encoded = []
    if workers == 1:
        _init_worker(tokenizer_dir)
        results = map(_encode_chunk, jobs)
        pool = None
    else:
        pool = ProcessPoolExecutor(workers, initializer=_init_worker, initargs=(tokenizer_dir,))
        results = pool.map(_encode_chunk, jobs)
    try:
        for part in results:
            encoded.extend(part)
            if bar is not None:
                bar.update(len(part))
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
        if bar is not None:
            bar.close()

    over = [(r, len(ids)) for r, ids, _ in encoded if max_tokens is not None and len(ids) > max_tokens]
    if over and policy == "error":
        listing = ", ".join(f"row {r} ({n} tokens)" for r, n in over)
        raise DataError(f"{len(over)} example(s) longer than --max-tokens {max_tokens}: {listing}. "
                        "Raise --max-tokens, or pass --policy drop (skip them, counted) or --policy truncate.",
                        path=data)
    kept, truncated = [], 0
    for r, ids, labels in encoded:
        if max_tokens is not None and len(ids) > max_tokens:
            if policy == "drop":
                continue
            ids, labels = ids[:max_tokens], labels[:max_tokens]
            truncated += 1
        kept.append((r, ids, labels))
    if not kept:
        raise DataError(f"no examples left (read {len(rows)}, all over the budget of {max_tokens} tokens)", path=data)
    if over and policy == "drop":
        log(f"[s1fast.data] dropped {len(over)} example(s) over {max_tokens} tokens: rows "
            + ", ".join(str(r) for r, _ in over))
    if truncated:
        log(f"[s1fast.data] WARNING: truncated {truncated} example(s) to {max_tokens} tokens")

    lengths = np.array([len(ids) for _, ids, _ in kept], dtype=np.int64)
    offsets = np.zeros(len(kept) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    tokens = np.fromiter((t for _, ids, _ in kept for t in ids), dtype=np.int32, count=int(offsets[-1]))
    labels = np.fromiter((t for _, _, lab in kept for t in lab), dtype=np.int32, count=int(offsets[-1]))
    row_ids = np.array([r for r, _, _ in kept], dtype=np.int64)
    summary = Summary(
        rows_read=len(rows), rows_kept=len(kept), rows_dropped=len(over) if policy == "drop" else 0,
        rows_truncated=truncated, rows_over_budget=len(over), tokens=int(offsets[-1]),
        supervised_tokens=int((labels != IGNORE).sum() - (labels[offsets[:-1]] != IGNORE).sum()),
        length_p50=int(np.percentile(lengths, 50)), length_p90=int(np.percentile(lengths, 90)),
        length_p99=int(np.percentile(lengths, 99)), length_max=int(lengths.max()))

    tmp = f"{out.rstrip(os.sep)}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    np.save(os.path.join(tmp, "tokens.npy"), tokens)
    np.save(os.path.join(tmp, "labels.npy"), labels)
    np.save(os.path.join(tmp, "offsets.npy"), offsets)
    np.save(os.path.join(tmp, "rows.npy"), row_ids)
    with open(os.path.join(tmp, "summary.json"), "w") as f:
        json.dump({"key": key, "data": os.path.abspath(data), "recipe": recipe, "max_tokens": max_tokens,
                   "policy": policy, "tokenizer": os.path.abspath(tokenizer_dir), "summary": summary.__dict__,
                   "seconds": round(time.time() - t0, 2)}, f, indent=1)
    old = f"{out.rstrip(os.sep)}.old-{os.getpid()}"
    if os.path.exists(out):
        os.replace(out, old)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)
    log(f"[s1fast.data] wrote {out} in {time.time() - t0:.1f}s (key {key})")
    log(summary.lines())
    return TokenDataset(out)


class TokenDataset:
    """A token cache folder opened read-only (memory-mapped).

    ``ds[i] -> (input_ids, labels)`` as int32 numpy arrays; ``ds.lengths`` and ``ds.supervised``
    are int64 arrays of per-example token and supervised-token counts (what the packer plans with).
    """

    def __init__(self, path: str):
        need = ["tokens.npy", "labels.npy", "offsets.npy", "rows.npy", "summary.json"]
        missing = [n for n in need if not os.path.exists(os.path.join(path, n))]
        if missing:
            raise DataError(f"not a complete token cache (missing {', '.join(missing)}); "
                            "run `python -m s1fast.data prepare --out DIR` to build it", path=path)
        self.path = path
        self.meta = json.load(open(os.path.join(path, "summary.json")))
        self.tokens = np.load(os.path.join(path, "tokens.npy"), mmap_mode="r")
        self.labels = np.load(os.path.join(path, "labels.npy"), mmap_mode="r")
        self.offsets = np.load(os.path.join(path, "offsets.npy"))
        self.rows = np.load(os.path.join(path, "rows.npy"))
        self.lengths = np.diff(self.offsets)
        # supervised = predicted tokens: an example's first label has no position before it to predict it
        is_sup = np.asarray(self.labels) != IGNORE
        sup = np.concatenate([[0], np.cumsum(is_sup, dtype=np.int64)])
        first = is_sup[self.offsets[:-1]] if len(self.offsets) > 1 and self.offsets[-1] > 0 else 0
        self.supervised = sup[self.offsets[1:]] - sup[self.offsets[:-1]] - first

    def __len__(self) -> int:
        return len(self.lengths)

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        a, b = int(self.offsets[i]), int(self.offsets[i + 1])
        return np.asarray(self.tokens[a:b]), np.asarray(self.labels[a:b])
