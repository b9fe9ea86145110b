"""The token cache: tokenise a data file once, keep flat token arrays on disk, reuse them.

Layout of a cache folder::

    tokens.npy   int32 [total_tokens]   every kept example's ids, back to back
    labels.npy   int32 [total_tokens]   the same positions' labels (-100 = no loss)
    offsets.npy  int64 [rows + 1]       example i is tokens[offsets[i]:offsets[i+1]]
    rows.npy     int64 [rows]           the source file's row number of each kept example
    summary.json                        the key (hash of data, tokenizer, recipe, budget, policy), each
                                        array file's sha256, and statistics

A run with the same key is served from the cache once its files match their hashes; any change, or a damaged
file, rebuilds it, in a temporary folder swapped in only when complete (s1fast.whole_folder: an interrupted
run never leaves a broken cache nor a partial folder, and never destroys the previous one; what a killed run
left beside the cache is removed by the next prepare).
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import numpy as np

from ..whole_folder import clean_stale, write_whole
from .format import IGNORE, IM_START, encode
from .readers import DataError, read_rows, row_list as _rows
from .toy import is_spec as is_toy_spec, materialize as materialize_toy

FORMAT_VERSION = 4  # 2: 1-based row numbers, file hashes, unsupervised / special / duplicate counts; 3: s1 answers
#                    prefixed then stripped as s1 did (format._answer); 4: sky-t1 as LLaMA-Factory's qwen25
#                    text and cut (format.sky_t1_pieces, llamafactory_cutoff)
POLICIES = ("error", "drop", "truncate")
ASSETS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets")
DEFAULT_TOKENIZER = os.path.join(ASSETS, "tokenizer", "qwen2.5")
DEFAULT_DATA = os.path.join(ASSETS, "data", "sample_s1k.jsonl")


def load_tokenizer(path: str | None = None):
    """The tokenizer in ``path`` (default: the bundled Qwen2.5 tokenizer), loaded offline."""
    from transformers import AutoTokenizer
    path = path or DEFAULT_TOKENIZER
    check_tokenizer_dir(path)
    try:
        return AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DataError(f"tokenizer folder {path} cannot be loaded ({type(e).__name__}: {str(e)[:200]}); pass "
                        f"--tokenizer with a Hugging Face tokenizer folder") from None


def check_tokenizer_dir(path: str) -> None:
    """A folder holding a tokenizer's vocabulary file, or a DataError saying what to pass."""
    if not os.path.isdir(path):
        raise DataError(f"tokenizer folder {path} does not exist; pass --tokenizer with a Hugging Face "
                        "tokenizer folder (tokenizer.json + tokenizer_config.json)")
    if not any(os.path.exists(os.path.join(path, n)) for n in ("tokenizer.json", "tokenizer.model", "vocab.json")):
        raise DataError(f"tokenizer folder {path} has no tokenizer.json, tokenizer.model or vocab.json; pass "
                        f"--tokenizer with a Hugging Face tokenizer folder")


ARRAYS = ("tokens.npy", "labels.npy", "offsets.npy", "rows.npy")


def file_sha256(path: str) -> str:
    h = hashlib.sha256()
    _file_hash(h, path)
    return h.hexdigest()


def damaged_files(folder: str, hashes: dict) -> list[str]:
    """The cache's array files that are missing or do not match the hashes stored at build time."""
    return [n for n in ARRAYS if not os.path.exists(os.path.join(folder, n))
            or file_sha256(os.path.join(folder, n)) != hashes.get(n)]


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
        out.append((row_id, enc.input_ids, enc.labels, enc.special_in_text))
    return out


@dataclass
class Summary:
    rows_read: int
    rows_kept: int
    rows_dropped: int
    rows_truncated: int
    rows_over_budget: int
    rows_unsupervised: int  # truncation removed every trained token: dropped
    rows_special_text: int  # special-token strings inside the data's text (they become real special tokens)
    rows_duplicate: int  # identical to an earlier row (kept, counted)
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
    data, tokenizer_dir = _check_inputs(data, tokenizer_dir, max_tokens, out, policy)
    key = cache_key(data, tokenizer_dir, recipe, max_tokens, policy)
    clean_stale(out, log)     # what a killed prepare left beside ``out``
    if _cache_hit(out, key, log):
        return TokenDataset(out)
    t0 = time.time()
    rows = _read(data)
    encoded = _tokenize(rows, recipe, data, tokenizer_dir, workers, progress)
    _check_masks(encoded, tokenizer_dir, data)
    kept, over, truncated, unsupervised = _apply_budget(encoded, max_tokens, policy, data, log)
    special, dups = _flag_rows(encoded, log)
    if not kept:
        why = (f"every example is over the budget of {max_tokens} tokens or has no answer token left after "
               f"truncation" if over else "no example is left")
        raise DataError(f"no examples left (read {len(rows)} rows; {why}): raise --max-tokens", path=data)
    arrays = _to_arrays(kept)
    summary = _summarize(
        arrays, rows_read=len(rows), rows_kept=len(kept), rows_dropped=len(over) if policy == "drop" else 0,
        rows_truncated=truncated, rows_over_budget=len(over), rows_unsupervised=len(unsupervised),
        rows_special_text=len(special), rows_duplicate=len(dups))
    _write(out, arrays, key, t0, {"data": os.path.abspath(data), "recipe": recipe, "max_tokens": max_tokens,
                                  "policy": policy, "tokenizer": os.path.abspath(tokenizer_dir),
                                  "summary": summary.__dict__}, log)
    log(f"[s1fast.data] wrote {out} in {time.time() - t0:.1f}s (key {key})")
    log(summary.lines())
    return TokenDataset(out)


# -- prepare()'s steps: check, reuse, read, tokenise, apply the budget, count, write ---------------
def _check_inputs(data: str | None, tokenizer_dir: str | None, max_tokens: int | None, out: str,
                  policy: str) -> tuple[str, str]:
    """The data file and tokenizer folder to use (defaults filled in), or a DataError saying what to pass."""
    data = data or DEFAULT_DATA
    if is_toy_spec(data):   # --data toy:NAME[:N]: generated problems, written next to the cache once
        data = materialize_toy(data, os.path.join(os.path.dirname(os.path.abspath(out)), "toy-data"))
    tokenizer_dir = tokenizer_dir or DEFAULT_TOKENIZER
    if policy not in POLICIES:
        raise DataError(f"unknown over-length policy '{policy}'; choose one of {', '.join(POLICIES)}")
    if max_tokens is not None and max_tokens <= 0:
        raise DataError(f"--max-tokens must be a positive number of tokens, got {max_tokens}")
    if not os.path.exists(data):
        raise DataError("no such file; pass --data with a .json, .jsonl or .parquet file", path=data)
    if os.path.isdir(data):
        raise DataError("is a folder; pass --data with a .json, .jsonl or .parquet file (of a dataset saved in "
                        "shards, join them into one file first)", path=data)
    check_tokenizer_dir(tokenizer_dir)
    if os.path.exists(out) and not os.path.isdir(out):
        raise DataError(f"cache folder {out} is a file: pass --out with a folder")
    other = sorted(set(os.listdir(out)) - set(ARRAYS) - {"summary.json"}) if os.path.isdir(out) else []
    if other:   # a (re)build replaces the whole folder
        raise DataError(f"cache folder {out} holds other files ({', '.join(other[:5])}"
                        f"{', ...' if len(other) > 5 else ''}), which building the cache there would delete: pass "
                        f"--out with a new or empty folder, or one that prepare wrote")
    return data, tokenizer_dir


def _cache_hit(out: str, key: str, log) -> bool:
    """Whether ``out`` holds an undamaged cache built with ``key`` (said in the log either way)."""
    meta_path = os.path.join(out, "summary.json")
    if not os.path.exists(meta_path):
        return False
    try:
        meta = json.load(open(meta_path))
    except (OSError, json.JSONDecodeError):
        meta = {}
    if meta.get("key") != key:
        return False
    bad = damaged_files(out, meta.get("sha256", {}))
    if not bad:
        log(f"[s1fast.data] cache hit: {out} (key {key})")
        log(Summary(**meta["summary"]).lines())
        return True
    log(f"[s1fast.data] notice: cache {out} is damaged ({', '.join(bad)} missing or not matching its "
        f"hash): rebuilding it")
    return False


def _read(data: str) -> list:
    rows = list(read_rows(data))
    if not rows:
        raise DataError("holds no rows: pass --data with a file of examples", path=data)
    return rows


def _tokenize(rows: list, recipe: str, data: str, tokenizer_dir: str, workers: int | None,
              progress: bool) -> list:
    """(row_id, input_ids, labels, special_in_text) of every row, in order, by ``workers`` processes."""
    global _TOK
    _TOK = load_tokenizer(tokenizer_dir)  # fails here, with its folder named, rather than inside a worker
    workers = workers or max(1, min(os.cpu_count() or 1, 8, len(rows) // 8 or 1))
    chunk = max(1, min(256, len(rows) // (workers * 4) or 1))
    jobs = [(rows[i:i + chunk], recipe, data) for i in range(0, len(rows), chunk)]
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=len(rows), desc=f"tokenising {os.path.basename(data)}", unit="row")
    encoded = []
    if workers == 1:
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
    return encoded


def _check_masks(encoded: list, tokenizer_dir: str, data: str) -> None:
    """Every example has a token to train on before any truncation (the recipes always have an assistant
    turn); none means the mask found no ``<|im_start|>assistant`` by Qwen2.5's token ids: another tokenizer."""
    empty = [r for r, _, labels, _ in encoded if not any(x != IGNORE for x in labels[1:])]
    if empty:
        raise DataError(f"{len(empty)} example(s) have no token to train on (rows {_rows(empty)}): the loss mask "
                        f"finds the assistant turn by Qwen2.5's ChatML token ids (<|im_start|> = {IM_START}), which "
                        f"the tokenizer {tokenizer_dir} does not produce; pass --tokenizer with a Qwen2.5-family "
                        f"tokenizer", path=data)


def _apply_budget(encoded: list, max_tokens: int | None, policy: str, data: str, log):
    """The over-length policy: (kept (row, ids, labels), over (row, length), truncated count, unsupervised rows)."""
    over = [(r, len(ids)) for r, ids, _, _ in encoded if max_tokens is not None and len(ids) > max_tokens]
    if over and policy == "error":
        listing = ", ".join(f"row {r} ({n} tokens)" for r, n in over)
        raise DataError(f"{len(over)} example(s) longer than --max-tokens {max_tokens}: {listing}. "
                        "Raise --max-tokens, or pass --policy drop (skip them, counted) or --policy truncate.",
                        path=data)
    kept, truncated, unsupervised = [], 0, []
    for r, ids, labels, _ in encoded:
        if max_tokens is not None and len(ids) > max_tokens:
            if policy == "drop":
                continue
            ids, labels = ids[:max_tokens], labels[:max_tokens]
            truncated += 1
            if not any(x != IGNORE for x in labels[1:]):  # nothing left to train on
                unsupervised.append(r)
                continue
        kept.append((r, ids, labels))
    if over and policy == "drop":
        log(f"[s1fast.data] dropped {len(over)} example(s) over {max_tokens} tokens: rows "
            + _rows(r for r, _ in over))
    if truncated:
        log(f"[s1fast.data] WARNING: truncated {truncated} example(s) to {max_tokens} tokens")
    if unsupervised:
        log(f"[s1fast.data] WARNING: dropped {len(unsupervised)} example(s) whose truncation to {max_tokens} tokens "
            f"left no answer token to train on: rows {_rows(unsupervised)}; raise --max-tokens to keep them")
    return kept, over, truncated, unsupervised


def _flag_rows(encoded: list, log) -> tuple[list, list]:
    """Rows with special-token strings in their text, and duplicate rows (both kept): logged and returned."""
    special = [r for r, _, _, n in encoded if n > 0]
    if special:
        log(f"[s1fast.data] WARNING: {len(special)} row(s) have special-token strings (e.g. <|im_end|>) inside "
            f"their text, which tokenise as real special tokens: rows {_rows(special)}")
    first_seen, dups = {}, []
    for r, ids, _, _ in encoded:
        h = hashlib.sha1(np.asarray(ids, dtype=np.int32).tobytes()).digest()
        if h in first_seen:
            dups.append(f"{r} (= row {first_seen[h]})")
        else:
            first_seen[h] = r
    if dups:
        log(f"[s1fast.data] notice: {len(dups)} duplicate row(s), kept: rows {_rows(dups)}")
    return special, dups


def _to_arrays(kept: list) -> dict[str, np.ndarray]:
    """The cache's arrays (named by their files, in ``ARRAYS`` order) for the kept (row, ids, labels)."""
    lengths = np.array([len(ids) for _, ids, _ in kept], dtype=np.int64)
    offsets = np.zeros(len(kept) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    tokens = np.fromiter((t for _, ids, _ in kept for t in ids), dtype=np.int32, count=int(offsets[-1]))
    labels = np.fromiter((t for _, _, lab in kept for t in lab), dtype=np.int32, count=int(offsets[-1]))
    row_ids = np.array([r for r, _, _ in kept], dtype=np.int64)
    return {"tokens.npy": tokens, "labels.npy": labels, "offsets.npy": offsets, "rows.npy": row_ids}


def _summarize(arrays: dict, **counts) -> Summary:
    """``counts`` (the rows_* fields) plus the token statistics of the cache's arrays."""
    offsets, labels = arrays["offsets.npy"], arrays["labels.npy"]
    lengths = np.diff(offsets)
    return Summary(
        **counts, tokens=int(offsets[-1]),
        supervised_tokens=int((labels != IGNORE).sum() - (labels[offsets[:-1]] != IGNORE).sum()),
        length_p50=int(np.percentile(lengths, 50)), length_p90=int(np.percentile(lengths, 90)),
        length_p99=int(np.percentile(lengths, 99)), length_max=int(lengths.max()))


def _write(out: str, arrays: dict, key: str, t0: float, info: dict, log) -> None:
    """Write the arrays and summary.json to ``out``, whole (s1fast.whole_folder): an interrupted write leaves no
    partial folder and the previous cache as it was."""
    def fill(tmp: str) -> None:
        os.makedirs(tmp)
        for name in ARRAYS:
            np.save(os.path.join(tmp, name), arrays[name])
        hashes = {n: file_sha256(os.path.join(tmp, n)) for n in ARRAYS}
        with open(os.path.join(tmp, "summary.json"), "w") as f:
            json.dump({"key": key, "sha256": hashes, **info, "seconds": round(time.time() - t0, 2)}, f, indent=1)
    write_whole(out, fill, log)


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
