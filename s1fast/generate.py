"""Generation with s1's budget forcing: batched, KV-cached, greedy or seeded sampling.

The protocol lives in ``s1fast.forcing`` (one state machine per prompt); this file feeds it tokens from a
model, through s1fast's own model (``native``) or vLLM (``vllm``, optional). Sampling is seeded per prompt,
so a prompt's output does not depend on its batch. Backends, sampling and the model interface:
docs/forcing.md, "The generation engine".

Usage::

    python -m s1fast.generate --model DIR --prompt "How many r in raspberry?" --num-wait 1 \\
        --max-thinking-tokens 2000
    python -m s1fast.generate --model DIR --prompts questions.jsonl --temperature 0.7 --top-p 0.95 --seed 1

Each prompt gives one JSON line: ``thinking``, ``answer``, ``thinking_tokens``, ``waits``, ``capped`` and more.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from dataclasses import asdict, dataclass
from typing import Sequence

import torch

from s1fast.data.format import DEFAULT_SYSTEM, generation_prompt
from s1fast.forcing import BudgetForcer, ForcingTokens
from s1fast.jsonl import end_cut_line, read_jsonl
from s1fast.penalty_args import PENALTY_FLAGS, add_penalty_args, check_penalties, penalty_values
from s1fast.sampling import Penalties, new_penalty_state, pick_tokens
from s1fast.vllm_backend import VLLMBackend, sampling_error

BUNDLED_TOKENIZER = os.path.join(os.path.dirname(__file__), "assets", "tokenizer", "qwen2.5")


@dataclass
class GenerationConfig:
    max_thinking_tokens: int | str = "auto"
    min_thinking_tokens: int = 0
    num_wait: int = 0
    extension: str = "Wait"
    max_answer_tokens: int | None = None   # None: whatever the context leaves
    max_total_tokens: int | None = None    # None: the model's max_position_embeddings, else 32768
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    batch_size: int = 8
    prefill_chunk: int = 256
    presence_penalty: float = 0.0     # the penalties: s1fast.penalty_args, the native backend only
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0

    @property
    def penalties(self) -> Penalties:
        return Penalties(self.presence_penalty, self.frequency_penalty, self.repetition_penalty)


def decoding_settings(cfg: GenerationConfig) -> dict:
    """``cfg`` as a dict, the penalties only where set (a record of what an output depends on: files written
    before the penalties existed still match a run without them)."""
    return {k: v for k, v in asdict(cfg).items()
            if k not in PENALTY_FLAGS or v != PENALTY_FLAGS[k][1]}


RUN_ONLY = ("batch_size", "prefill_chunk")   # how a run is batched: a prompt's output does not depend on it


def sample_settings(cfg: GenerationConfig) -> dict:
    """:func:`decoding_settings` less :data:`RUN_ONLY`: what one prompt's output depends on, which files of
    outputs record so that a rerun with other settings is refused rather than mixed in."""
    return {k: v for k, v in decoding_settings(cfg).items() if k not in RUN_ONLY}


def compared_settings(run: dict) -> dict:
    """A run's recorded settings (eval's run.json: paths, ``decoding``), flat (``decoding.K``), as a resume
    compares them: less how the run was batched (:data:`RUN_ONLY`), its paths however spelled (``m/``, ``./m``)."""
    flat = {k: os.path.normpath(v) if k in ("model", "data", "tokenizer") and isinstance(v, str) else v
            for k, v in run.items() if k != "decoding"}
    return {**flat, **{f"decoding.{k}": v for k, v in (run.get("decoding") or {}).items() if k not in RUN_ONLY}}


# ---- prompts --------------------------------------------------------------------------------------------
def prompt_ids(tokenizer, question: str, system: str | None = DEFAULT_SYSTEM) -> list[int]:
    """The chat prompt up to ``<|im_start|>assistant\\n`` (the forcer appends ``<|im_start|>think``).

    Written out as s1 does (the Qwen2.5 template with its default system prompt), so a tokenizer whose
    template differs cannot silently change the protocol."""
    return chat_prompt_ids(tokenizer, [{"role": "user", "content": question}], system)


def chat_prompt_ids(tokenizer, messages: Sequence[dict], system: str | None = DEFAULT_SYSTEM) -> list[int]:
    """``prompt_ids`` for a conversation: ``messages`` are ``{"role": "system"|"user"|"assistant",
    "content": str}``; a leading system message replaces ``system``."""
    return tokenizer.encode(generation_prompt(list(messages), system), add_special_tokens=False)


def _generators(seeds: Sequence[int], device: torch.device) -> list[torch.Generator]:
    return [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]


# ---- the native backend ---------------------------------------------------------------------------------
def _model_device(model) -> torch.device:
    try:
        return next(model.parameters()).device
    except (AttributeError, StopIteration):
        return torch.device("cpu")


@torch.no_grad()
def run_native(model, forcers: Sequence[BudgetForcer], *, temperature: float = 0.0, top_p: float = 1.0,
               seeds: Sequence[int] | None = None, vocab_limit: int, prefill_chunk: int = 256,
               penalties: Penalties = Penalties()) -> None:
    """Drive ``forcers`` (one batch) to the end with ``model``'s KV cache; ``penalties`` apply to every row
    (its output: everything after the prompt, the forced text included, as the server's engine counts it)."""
    n = len(forcers)
    device = _model_device(model)
    seeds = list(seeds) if seeds is not None else list(range(n))
    gens = _generators(seeds, device) if temperature > 0 else [None] * n
    cache = model.new_kv_cache(n, max(f.max_len for f in forcers), device=device)
    fed = [0] * n  # ids of each row already in the cache
    pen = [new_penalty_state(penalties, f.prompt_len) for f in forcers]   # each row's counts, kept across steps
    while True:
        chunks = [[] if f.done else f.ids[fed[b]:fed[b] + prefill_chunk] for b, f in enumerate(forcers)]
        lengths = [len(c) for c in chunks]
        if not any(lengths):
            return
        x = torch.zeros(n, max(lengths), dtype=torch.long)
        for b, c in enumerate(chunks):
            x[b, :len(c)] = torch.tensor(c, dtype=torch.long)
        # only each row's last position goes through the vocabulary-wide head: the only logits read
        logits = model.decode(x.to(device), cache, lengths=torch.tensor(lengths, device=device), last_only=True)
        for b in range(n):
            fed[b] += lengths[b]
        # A row picks its next token once everything the protocol put in its sequence is in the cache.
        ready = [b for b in range(n) if lengths[b] and fed[b] == len(forcers[b].ids)]
        if not ready:
            continue
        last = logits[torch.tensor(ready, device=device)]
        toks = pick_tokens(last, temperature=temperature, top_p=top_p, vocab_limit=vocab_limit,
                           banned=[forcers[b].stops if forcers[b].suppress_stop else None for b in ready],
                           generators=[gens[b] for b in ready],
                           penalties=[(pen[b], forcers[b].ids) if pen[b] else None for b in ready])
        for b, t in zip(ready, toks):
            forcers[b].push(t)


# ---- the API --------------------------------------------------------------------------------------------
def generate(model, tokenizer, questions: Sequence[str], config: GenerationConfig | None = None, *,
             backend: str | VLLMBackend = "native", system: str | None = DEFAULT_SYSTEM,
             seeds: Sequence[int] | None = None) -> list[dict]:
    """Budget-forced generation for each question; one result dict per question, in order.

    ``seeds``: one sampling seed per question (default ``config.seed`` + the question's index)."""
    cfg = config or GenerationConfig()
    tokens = ForcingTokens.from_tokenizer(tokenizer, extension=cfg.extension)
    max_total = context_tokens(model, cfg, backend)
    vocab_limit = len(tokenizer)
    results: list[dict] = []
    for start in range(0, len(questions), cfg.batch_size):
        batch = questions[start:start + cfg.batch_size]
        forcers = [BudgetForcer(prompt_ids(tokenizer, q, system), tokens,
                                max_thinking_tokens=cfg.max_thinking_tokens,
                                min_thinking_tokens=cfg.min_thinking_tokens, num_wait=cfg.num_wait,
                                max_answer_tokens=cfg.max_answer_tokens, max_total_tokens=max_total)
                   for q in batch]
        bseeds = (list(seeds[start:start + len(batch)]) if seeds is not None
                  else [cfg.seed + start + i for i in range(len(batch))])
        if isinstance(backend, VLLMBackend):
            if cfg.penalties.presence or cfg.penalties.frequency:
                raise ValueError("presence and frequency penalties need the native backend (vLLM counts only the "
                                 "current re-prompting round's output)")
            backend.run(forcers, temperature=cfg.temperature, top_p=cfg.top_p, seeds=bseeds, vocab_limit=vocab_limit,
                        repetition_penalty=cfg.penalties.repetition)
        elif backend == "native":
            run_native(model, forcers, temperature=cfg.temperature, top_p=cfg.top_p, seeds=bseeds,
                       vocab_limit=vocab_limit, prefill_chunk=cfg.prefill_chunk, penalties=cfg.penalties)
        else:
            raise ValueError(f"unknown backend {backend!r}: use 'native' or a VLLMBackend")
        results.extend(_record(tokenizer, f, start + i, q) for i, (f, q) in enumerate(zip(forcers, batch)))
    return results


def _record(tokenizer, f: BudgetForcer, index: int, question: str) -> dict:
    r = f.result()
    dec = lambda ids: tokenizer.decode(ids, skip_special_tokens=False)  # noqa: E731
    out = {"index": index, "question": question, "thinking": dec(r.pop("thinking_ids")),
           "answer": dec(r.pop("answer_ids")), "forced_end": dec(r.pop("forced_end_ids"))}
    out.update(r)
    # Everything after the prompt, special tokens included: what the model saw and said.
    out["completion"] = dec(f.ids[f.prompt_len:])
    return out


def context_tokens(model, cfg, backend=None) -> int:
    """--max-total-tokens, else the model's positions (vLLM: the engine's max_model_len, a bound too), else 32768."""
    if (engine := getattr(backend, "max_model_len", None)) and (cfg.max_total_tokens or 0) > engine:
        raise UsageError(f"--max-total-tokens {cfg.max_total_tokens} is over the vLLM engine's max_model_len {engine}")
    return cfg.max_total_tokens or _model_max_positions(model) or engine or 32768


def _model_max_positions(model) -> int | None:
    cfg = getattr(model, "cfg", None) or getattr(model, "config", None)   # s1fast's model: .cfg
    v = getattr(cfg, "max_position_embeddings", None) if cfg is not None else None
    return int(v) if v else None


DTYPES = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp32": torch.float32, "float32": torch.float32}


def load(model_dir: str, *, tokenizer_dir: str | None = None, dtype: str = "auto", device: str = "auto"):
    """(model, tokenizer) from an exported Hugging Face folder (tokenizer: the folder's, else the bundled Qwen2.5)."""
    from transformers import AutoTokenizer

    from s1fast import model as lean
    dev = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    dt = (torch.bfloat16 if dev.startswith("cuda") else torch.float32) if dtype == "auto" else DTYPES.get(dtype)
    if dt is None:
        raise ValueError(f"--dtype {dtype!r}: use auto, bf16 or fp32")
    m = lean.from_pretrained(model_dir, dtype=dt, device=dev)
    m.eval()
    tok_dir = tokenizer_dir or (model_dir if os.path.exists(os.path.join(model_dir, "tokenizer_config.json"))
                                else BUNDLED_TOKENIZER)
    return m, AutoTokenizer.from_pretrained(tok_dir)


# ---- the CLI --------------------------------------------------------------------------------------------
def read_prompts(path: str, field: str = "question") -> list[tuple[str, str]]:
    """(where, question) for each line of a prompts file; ``where`` is ``FILE:LINE``."""
    out = []
    for n, row in read_jsonl(path):
        if isinstance(row, str):
            out.append((f"{path}:{n}", row))
        elif isinstance(row, dict) and isinstance(row.get(field), str):
            out.append((f"{path}:{n}", row[field]))
        else:
            raise ValueError(f"{path}:{n}: expected a string or an object with a string field {field!r}; "
                             "pass --field to name another")
    return out


def budget_arg(text: str) -> int | str:
    if text == "auto":
        return "auto"
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer or 'auto', got {text!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"a token budget must be >= 0, got {v}")
    return v


def add_generation_args(p: argparse.ArgumentParser, penalties: bool = True) -> None:
    """Options shared with ``s1fast.eval`` (and the server, which takes ``penalties`` per request instead)."""
    p.add_argument("--model", required=True, help="exported Hugging Face model folder")
    p.add_argument("--tokenizer", help="tokenizer folder (default: the model's, else the bundled Qwen2.5)")
    p.add_argument("--backend", choices=["native", "vllm"], default="native",
                   help="native: s1fast's KV-cache engine (CPU or GPU); vllm: vLLM's engine with the same forcing "
                        "(a GPU node with vllm installed) (default: native)")
    p.add_argument("--min-thinking-tokens", type=int, default=0,
                   help="ignore the end of thinking (append --extension) until this many thinking tokens (default: 0)")
    p.add_argument("--extension", default="Wait",
                   help="text appended when the end of thinking is ignored (default: Wait)")
    p.add_argument("--max-answer-tokens", type=int, default=None,
                   help="answer budget after the thinking (default: what the context leaves)")
    p.add_argument("--max-total-tokens", type=int, default=None,
                   help="context budget (default: the model's max_position_embeddings, else 32768)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 (or below 1e-5) is greedy (default: 0)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass, in (0, 1] (default: 1)")
    p.add_argument("--seed", type=int, default=0,
                   help="seeds each question's draw, so an output does not depend on the batch (default: 0)")
    p.add_argument("--batch-size", type=int, default=8, help="sequences decoded together (default: 8)")
    p.add_argument("--dtype", default="auto", choices=["auto", *DTYPES],
                   help="weights' dtype (default auto: bf16 on a GPU, fp32 on the CPU)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N (default auto: cuda if there is a GPU)")
    if penalties:
        add_penalty_args(p)


def open_backend(args):
    """(model, tokenizer, backend) for parsed CLI args."""
    if args.backend == "vllm":
        from transformers import AutoTokenizer
        engine = VLLMBackend.from_pretrained(args.model)
        return None, AutoTokenizer.from_pretrained(args.tokenizer or args.model), engine
    model, tok = load(args.model, tokenizer_dir=args.tokenizer, dtype=args.dtype, device=args.device)
    return model, tok, "native"


def config_from_args(args, **over) -> GenerationConfig:
    kw = dict(min_thinking_tokens=args.min_thinking_tokens, extension=args.extension,
              max_answer_tokens=args.max_answer_tokens, max_total_tokens=args.max_total_tokens,
              temperature=args.temperature, top_p=args.top_p, seed=args.seed, batch_size=args.batch_size,
              **penalty_values(args))
    kw.update(over)
    return GenerationConfig(**kw)


class UsageError(ValueError):
    """A CLI input that cannot work; main prints it as one ``error:`` line and exits 2."""


def check_args(args) -> None:
    """Every argument that can be checked before a model is loaded."""
    for name in ("num_wait", "min_thinking_tokens", "max_answer_tokens", "seed"):
        v = getattr(args, name, None)
        if v is not None and v < 0:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 0, got {v}")
    for name in ("batch_size", "max_total_tokens"):
        v = getattr(args, name, None)
        if v is not None and v <= 0:
            raise UsageError(f"--{name.replace('_', '-')} must be positive, got {v}")
    if not (args.temperature >= 0 and 0 < args.top_p <= 1):
        raise UsageError(f"--temperature must be >= 0 and --top-p in (0, 1], got {args.temperature} and {args.top_p}")
    if getattr(args, "seed", 0) >= 2**62:   # prompt i is seeded seed + i; torch's generators take < 2**64
        raise UsageError(f"--seed must be below 2**62, got {args.seed}")
    budget, floor = getattr(args, "max_thinking_tokens", None), getattr(args, "min_thinking_tokens", 0) or 0
    if isinstance(budget, int) and floor > budget:
        raise UsageError(f"--min-thinking-tokens {floor} is over --max-thinking-tokens {budget}: the cap would end "
                         "the thinking first; lower the floor or raise the budget")
    try:
        check_penalties(args, args.backend)
    except ValueError as e:
        raise UsageError(str(e)) from None
    if args.backend == "vllm":
        if why := sampling_error(args.temperature, args.top_p):
            raise UsageError(why)
        try:
            import vllm  # noqa: F401
        except ImportError:
            raise UsageError("--backend vllm needs vllm, which is not installed; `pip install vllm` on a GPU node, "
                             "or use --backend native") from None
        if not torch.cuda.is_available():
            raise UsageError("--backend vllm needs a CUDA GPU and none is visible; use --backend native on this "
                             "machine")
    if args.backend == "native" and not os.path.isfile(os.path.join(args.model, "config.json")):
        what = "does not exist" if not os.path.exists(args.model) else "has no config.json"
        raise UsageError(f"--model {args.model} {what}: pass an exported Hugging Face model folder (e.g. a "
                         f"training run's final/)")
    if args.tokenizer and not os.path.isdir(args.tokenizer):
        raise UsageError(f"--tokenizer {args.tokenizer} is not a folder")
    if args.tokenizer and not any(os.path.isfile(os.path.join(args.tokenizer, f))
                                  for f in ("tokenizer.json", "tokenizer_config.json")):
        raise UsageError(f"--tokenizer {args.tokenizer} has no tokenizer.json or tokenizer_config.json: pass a "
                         f"Hugging Face tokenizer folder (or leave it out for the model's own)")
    if not args.extension.strip():
        raise UsageError(f"--extension must be a non-blank string (e.g. Wait), got {args.extension!r}")
    if args.device != "auto":
        try:
            dev = torch.device(args.device)
        except RuntimeError:
            raise UsageError(f"--device {args.device!r}: not a device; pass cpu, cuda or cuda:N") from None
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise UsageError(f"--device {args.device}: no CUDA GPU is visible; pass --device cpu (or auto)")


def output_settings(args, cfg: GenerationConfig) -> dict:
    """What an output depends on (:func:`sample_settings`, the model, the backend, and ``--tokenizer`` when given:
    the prompts' ids come from it); each --out line carries it, so a rerun with other settings is refused rather
    than mixed in."""
    tok = {"tokenizer": os.path.abspath(args.tokenizer)} if getattr(args, "tokenizer", None) else {}
    return {"model": os.path.abspath(args.model), "backend": args.backend, **tok, **sample_settings(cfg)}


def open_out(path: str | None, settings: dict | None = None):
    """The --out file opened for appending (checked before any compute), and the (index, question) pairs it
    already holds: a rerun of the same command continues where an interrupted one stopped; lines made with
    other ``settings`` make it a UsageError."""
    if not path:
        return sys.stdout, set()
    if os.path.isdir(path):
        raise UsageError(f"--out {path} is a folder: pass a file name (JSON lines)")
    done = set()
    if os.path.exists(path):
        with open(path, encoding="utf-8", errors="replace") as f:
            for n, line in enumerate(f, 1):
                try:
                    r = json.loads(line)
                    done.add((r["index"], r["question"]))
                except (ValueError, KeyError, TypeError):
                    continue  # a line cut short by a crash is written again
                was = r.get("settings")
                if settings is not None and isinstance(was, dict) and was != settings:
                    diff = "; ".join(f"{k} {was.get(k)!r} there, {v!r} now" for k, v in settings.items()
                                     if was.get(k) != v)
                    raise UsageError(f"--out {path}:{n} was generated with other settings ({diff}); pass another "
                                     f"--out, or delete it to start over")
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        if os.path.exists(path):
            end_cut_line(path)   # a result cut short by a crash is generated again, not left in the file
        return open(path, "a", encoding="utf-8"), done
    except OSError as e:
        raise UsageError(f"--out {path} cannot be written ({e.strerror}): pass a writable file") from None


def too_long(tok, questions, cfg: GenerationConfig, max_total: int) -> list[str]:
    """Why each prompt cannot fit the context (by FILE:LINE or --prompt N), for those that do not."""
    from s1fast.forcing import AUTO_ANSWER_ROOM, auto_max_thinking
    tokens = ForcingTokens.from_tokenizer(tok, extension=cfg.extension)
    room = AUTO_ANSWER_ROOM if cfg.max_answer_tokens is None else cfg.max_answer_tokens + 1
    bad = []
    for where, q in questions:
        n = len(prompt_ids(tok, q))
        if auto_max_thinking(n, max_total, tokens, room) < 0:
            bad.append(f"{where}: the prompt has {n} tokens and leaves no room to think and answer within "
                       f"--max-total-tokens {max_total}")
    return bad


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m s1fast.generate", description=__doc__.split("\n\n")[0])
    add_generation_args(p)
    p.add_argument("--prompt", action="append", default=[], help="a question (repeatable)")
    p.add_argument("--prompts", help="jsonl file of questions (strings or objects with --field)")
    p.add_argument("--field", default="question", help="the question's field in --prompts objects (default: question)")
    p.add_argument("--max-thinking-tokens", type=budget_arg, default="auto",
                   help="thinking budget: an int, or auto (the context minus the prompt and the forcing text) "
                        "(default: auto)")
    p.add_argument("--num-wait", type=int, default=0, help="times the end of thinking is ignored (default: 0)")
    p.add_argument("--out", help="append JSON lines here as they are produced (default: stdout); a rerun skips "
                                 "the prompts already there")
    p.add_argument("--skip-long", action="store_true",
                   help="skip prompts too long for the context (each is reported) instead of stopping")
    args = p.parse_args(argv)
    try:
        check_args(args)
        questions = [(f"--prompt {i + 1}", q) for i, q in enumerate(args.prompt)]
        questions += read_prompts(args.prompts, args.field) if args.prompts else []
        if not questions:
            raise UsageError("no prompts: pass --prompt TEXT (repeatable) or --prompts FILE.jsonl")
        settings = output_settings(args, config_from_args(args, max_thinking_tokens=args.max_thinking_tokens,
                                                          num_wait=args.num_wait))
        fh, done = open_out(args.out, settings)
    except (UsageError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        model, tok, backend = open_backend(args)
        cfg = config_from_args(args, max_thinking_tokens=args.max_thinking_tokens, num_wait=args.num_wait)
        max_total = context_tokens(model, cfg, backend)
        bad = too_long(tok, questions, cfg, max_total)
        if bad and not args.skip_long:
            print(f"error: {len(bad)} prompt(s) too long, nothing generated: {'; '.join(bad[:5])}"
                  f"{' ...' if len(bad) > 5 else ''}. Raise --max-total-tokens or pass --skip-long", file=sys.stderr)
            return 2
        for line in bad:
            print(f"skipped {line}", file=sys.stderr)
        skip = {b.split(": the prompt", 1)[0] for b in bad}
        todo = [(i, q) for i, (where, q) in enumerate(questions) if where not in skip and (i, q) not in done]
        if done and args.out:
            print(f"{len(questions) - len(skip) - len(todo)} prompt(s) already in {args.out}: skipped", file=sys.stderr)
        from tqdm import tqdm
        bar = tqdm(total=len(todo), desc="generate", unit="prompt", file=sys.stderr, disable=None, dynamic_ncols=True)
        for start in range(0, len(todo), cfg.batch_size):  # one batch at a time, written as soon as it is done
            chunk = todo[start:start + cfg.batch_size]
            rows = _generate_at(model, tok, chunk, cfg, backend)
            for r in rows:
                fh.write(json.dumps({**r, "settings": settings} if args.out else r, ensure_ascii=False) + "\n")
            fh.flush()
            bar.update(len(rows))
        bar.close()
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        kept = (f"the results written to {args.out} are kept and the same command resumes after them" if args.out
                else "the results printed are all there is")
        print(f"\nerror: interrupted; {kept}", file=sys.stderr)
        return 130
    finally:
        if args.out:
            fh.close()
    print(f"config: {json.dumps(asdict(cfg))}", file=sys.stderr)
    return 0


def _generate_at(model, tok, chunk: list[tuple[int, str]], cfg: GenerationConfig, backend) -> list[dict]:
    """Generate for (index, question) pairs that need not be contiguous, each with the seed and index it has
    in the whole run (seed + index), so an output does not depend on which prompts ran with it."""
    out, k = [], 0
    while k < len(chunk):  # runs of consecutive indices go through generate() together
        j = k + 1
        while j < len(chunk) and chunk[j][0] == chunk[j - 1][0] + 1:
            j += 1
        first = chunk[k][0]
        rows = generate(model, tok, [q for _, q in chunk[k:j]], dataclasses.replace(cfg, seed=cfg.seed + first),
                        backend=backend)
        for n, r in enumerate(rows):
            r["index"] = first + n
        out += rows
        k = j
    return out


if __name__ == "__main__":
    sys.exit(main())
