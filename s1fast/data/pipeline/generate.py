"""``generate``: N samples per question from a teacher, written as s1K rows, resumable.

Teachers: ``native`` (s1fast's engine on a Hugging Face folder, budget forcing included; questions run
``--batch-size`` at a time in one batched KV-cached decode), ``vllm`` (the same protocol on a vLLM engine),
``openai`` (any OpenAI-compatible chat endpoint, ``--concurrency`` requests in flight; failure handling in
``teacher_openai``). Each (question, sample) has a key (hash of the question, sample index) and its own seed;
a rerun skips the keys already in ``--out`` and retries those that failed, and is refused when the rows there
came from another teacher, ``--seed`` or sampling settings (each row's ``settings``: :func:`check_same_settings`).
Failed requests go to ``<out>.failed.jsonl`` with their error, never silently dropped.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import queue
import sys
import threading
import time
from collections import Counter

from ...penalty_args import add_penalty_args, check_penalties
from ..readers import DataError, row_list
from . import rows as R
from .teacher_openai import Failure, OpenAITeacher, StopRun, request_settings

KEPT = ("teacher", "seed", "settings")   # the fields of --out's rows a resume checks
TRACE_FIELDS = ("thinking_trajectories", "attempt", "deepseek_thinking_trajectory", "deepseek_attempt",
                "conversations", "messages")
SPECIAL_TAIL = ("<|im_end|>", "<|endoftext|>")


def request_seed(base: int, key: str) -> int:
    """A request's sampling seed: fixed by its key, so a resumed run draws what the first would have."""
    return (base + int(hashlib.sha1(key.encode()).hexdigest()[:8], 16)) % (2 ** 31)


def _strip_tail(text: str) -> str:
    text = text.strip()
    changed = True
    while changed:
        changed = False
        for t in SPECIAL_TAIL:
            if text.endswith(t):
                text, changed = text[: -len(t)].rstrip(), True
    return text


class EngineTeacher:
    """s1fast's engine (``backend="native"``) or a vLLM engine: batches of questions, one decode loop."""

    def __init__(self, model, tokenizer, config, backend="native", name="native",
                 tokenizer_dir: str | None = None):
        self.model, self.tokenizer, self.config, self.backend, self.name = model, tokenizer, config, backend, name
        self.batch_size = config.batch_size
        self.settings = engine_settings(config, tokenizer_dir)

    def complete_batch(self, questions: list[str], seeds: list[int]) -> list[dict | Failure]:
        """A result per question, in order; a question too long for the context is a ``too_long`` Failure
        (as an endpoint's context-length error is for the openai teacher), the others are generated."""
        from s1fast.generate import context_tokens, generate, too_long
        max_total = context_tokens(self.model, self.config, self.backend)
        long = {i: why for i, q in enumerate(questions)
                for why in too_long(self.tokenizer, [("the question", q)], self.config, max_total)}
        fit = [i for i in range(len(questions)) if i not in long]
        outs = iter(generate(self.model, self.tokenizer, [questions[i] for i in fit], self.config,
                             backend=self.backend, seeds=[seeds[i] for i in fit]) if fit else [])
        return [Failure("too_long", long[i], 1) if i in long else _sample(next(outs)) for i in range(len(questions))]


def _sample(o: dict) -> dict:
    return {"thinking": _strip_tail(o["thinking"]), "answer": _strip_tail(o["answer"]), "forced_end": o["forced_end"],
            "thinking_tokens": o["thinking_tokens"], "waits": o["waits"], "capped": o["capped"],
            "answer_tokens": o["answer_tokens"]}


def engine_settings(config, tokenizer_dir: str | None = None) -> dict:
    """What an engine teacher's samples depend on (``s1fast.generate.sample_settings``) less the base seed:
    each row's own ``seed`` records the seed it was drawn with; and ``--tokenizer`` when given (the prompts'
    ids come from it), by its folder's name, as :func:`teacher_identity` names the model."""
    from s1fast.generate import sample_settings
    s = {k: v for k, v in sample_settings(config).items() if k != "seed"}
    if tokenizer_dir:
        s["tokenizer"] = folder_name(tokenizer_dir)
    return s


def pending_requests(data: str, samples: int, done: set, seed: int, question_field: str | None = None,
                     limit: int | None = None):
    """(requests still to make, number of questions, number already done, malformed rows, repeated rows).

    A question met again (the same text as an earlier row: its samples have the same keys) is asked once;
    the numbers of the rows that repeat one are the last item."""
    todo, n_q, n_done, bad, repeats, seen = [], 0, 0, [], [], set()
    for i, row in R.read(data):
        q = row.get(question_field) if question_field else R.question(row)
        if not isinstance(q, str) or not q.strip():
            bad.append(i)
            continue
        qid = R.qid(q)
        if qid in seen:
            repeats.append(i)
            continue
        n_q += 1
        if limit and n_q > limit:
            break
        seen.add(qid)
        base = {k: v for k, v in row.items() if k not in TRACE_FIELDS}
        for s in range(samples):
            key = f"{qid}:{s}"
            if key in done:
                n_done += 1
            else:
                todo.append({"key": key, "qid": qid, "sample": s, "row": i, "question": q, "base": base,
                             "seed": request_seed(seed, key)})
    return todo, min(n_q, limit or n_q), n_done, bad, repeats


def to_row(req: dict, result: dict, teacher: str, settings: dict) -> dict:
    out = dict(req["base"])
    out.update(question=req["question"], thinking_trajectories=[result["thinking"]], attempt=result["answer"],
               key=req["key"], qid=req["qid"], sample=req["sample"], teacher=teacher, seed=req["seed"],
               settings=settings,
               generation={k: v for k, v in result.items() if k not in ("thinking", "answer")})
    return out


def run(teacher, requests: list[dict], out: R.Output, failed: R.Output, tally: R.Tally, *, concurrency: int = 8,
        progress: bool = True) -> None:
    """Make every request; write each success to ``out`` and each failure to ``failed`` as it arrives."""
    bar = R.bar(len(requests), "generate", "sample", progress)
    tokens, t0 = 0, time.perf_counter()

    def record(req, res):
        nonlocal tokens
        if isinstance(res, Failure):
            failed.write({"key": req["key"], "qid": req["qid"], "sample": req["sample"], "row": req["row"],
                          "question": req["question"], "kind": res.kind, "error": res.error,
                          "attempts": res.attempts, "teacher": teacher.name, "time": time.time()})
            tally.drop(f"failed_{res.kind}")
            if tally.dropped[f"failed_{res.kind}"] == 1:   # the first of its kind is shown, the rest are counted
                print(f"\nwarning: generate: a request failed ({res.kind}, after {res.attempts} attempt(s)): "
                      f"{res.error}; failures are listed in {failed.path}", file=sys.stderr)
            bar.update(1)
            if res.kind == "connection" and not tally.kept["generated"]:
                raise StopRun(f"cannot reach the endpoint of {teacher.name} ({res.error}); check --base-url and "
                              "that the server is up; the failure is recorded and a rerun resumes")
            return
        out.write(to_row(req, res, teacher.name, teacher.settings))
        tally.keep("generated")
        tokens += res.get("completion_tokens") or ((res.get("thinking_tokens") or 0) + (res.get("answer_tokens") or 0))
        bar.update(1)

    try:
        if hasattr(teacher, "complete_batch"):
            for s in range(0, len(requests), teacher.batch_size):
                chunk = requests[s:s + teacher.batch_size]
                for req, res in zip(chunk, teacher.complete_batch([r["question"] for r in chunk],
                                                                   [r["seed"] for r in chunk])):
                    record(req, res)
        else:
            _run_concurrent(teacher, requests, record, concurrency)
    finally:
        bar.close()
        dt = time.perf_counter() - t0
        if tokens:
            tally.note("generated_tokens", tokens)
            tally.note("tokens_per_s", int(tokens / max(dt, 1e-9)))
        for kind, n in sorted(getattr(teacher, "retried", {}).items()):
            tally.note(f"retried_{kind}", n)


def _run_concurrent(teacher, requests, record, concurrency):
    """At most ``concurrency`` requests in flight; results written by this thread only, as they finish.

    The requests run on daemon threads: when the run stops (Ctrl-C, an unexpected error) it does not wait
    for the requests in flight (a reasoning model's can take minutes); those are made again by a rerun.
    After a :class:`StopRun` no request is started and those in flight are recorded first."""
    todo, results = queue.Queue(), queue.Queue()
    it, n = iter(requests), min(concurrency, len(requests))

    def worker():
        while (req := todo.get()) is not None:
            try:
                res = teacher.complete(req["question"], req["seed"])
            except BaseException as e:  # noqa: BLE001 -- handed to the writing thread, which raises it
                res = e
            results.put((req, res))
        results.put((None, None))      # this worker is done

    closed = False

    def close():                       # no more requests: each worker ends after its current one
        nonlocal closed
        if not closed:
            closed = True
            for _ in range(n):
                todo.put(None)

    for _ in range(n):
        todo.put(next(it))
        threading.Thread(target=worker, daemon=True, name="s1fast-generate").start()
    stopped, finished = None, 0
    try:
        while finished < n:
            req, res = results.get()
            if req is None:
                finished += 1
                continue
            try:
                if isinstance(res, BaseException):
                    raise res
                record(req, res)
            except StopRun as e:
                stopped = stopped or e
            nxt = next(it, None) if stopped is None else None
            if nxt is None:
                close()
            else:
                todo.put(nxt)
    except BaseException:
        close()
        while not results.empty():     # results that came in meanwhile are kept
            req, res = results.get_nowait()
            if req is not None and not isinstance(res, BaseException):
                try:
                    record(req, res)
                except StopRun:
                    pass
        raise
    if stopped is not None:
        raise stopped


# ---- the CLI ----------------------------------------------------------------------------------------------
def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="questions: .json/.jsonl/.parquet (s1K, s1K-1.1, ShareGPT, "
                                                 "or rows with question/problem)")
    p.add_argument("--out", required=True, help="output .jsonl (appended; a rerun resumes)")
    p.add_argument("--teacher", choices=["native", "vllm", "openai"], default="native",
                   help="who writes the traces")
    p.add_argument("--model", required=True, help="native / vllm: a Hugging Face model folder; "
                                                  "openai: the model name the endpoint serves")
    p.add_argument("--samples", type=R.positive_int, default=1, help="samples per question")
    p.add_argument("--question-field", help="field holding the question (default: question / problem / "
                                            "the first user turn)")
    p.add_argument("--limit", type=R.positive_int, help="only the first N questions")
    p.add_argument("--seed", type=int, default=0, help="base seed; each sample's seed comes from it and its key")
    p.add_argument("--temperature", type=R.non_negative_float, default=0.7, help="sampling temperature")
    p.add_argument("--top-p", type=float, default=0.95, help="nucleus sampling mass")
    g = p.add_argument_group("openai teacher")
    g.add_argument("--base-url", default=os.environ.get("OPENAI_BASE_URL"),
                   help="endpoint, e.g. http://127.0.0.1:8000/v1 (default: $OPENAI_BASE_URL)")
    g.add_argument("--api-key", default=None, help="default: $OPENAI_API_KEY")
    g.add_argument("--concurrency", type=R.positive_int, default=8, help="requests in flight")
    g.add_argument("--retries", type=R.non_negative_int, default=4,
                   help="retries of a transient failure (429, 5xx, timeout, connection, malformed body)")
    g.add_argument("--backoff", type=R.non_negative_float, default=1.0,
                   help="first retry wait in seconds (doubles each time)")
    g.add_argument("--timeout", type=R.positive_float, default=600.0, help="seconds per request")
    g.add_argument("--max-tokens", type=R.positive_int, default=None,
                   help="completion token limit sent to the endpoint")
    g.add_argument("--extra-body", default=None,
                   help="JSON object merged into each request body, e.g. s1fast's server's budget forcing: "
                        "'{\"max_thinking_tokens\": 2000, \"num_wait\": 1}'")
    g.add_argument("--system", default=None, help="system prompt (default: none; the endpoint's template decides)")
    e = p.add_argument_group("native / vllm teacher (budget forcing)")
    e.add_argument("--tokenizer", help="tokenizer folder (default: the model's, else the bundled Qwen2.5); when "
                                       "given, rows record its folder's name and a resume must give the same")
    e.add_argument("--max-thinking-tokens", default="auto", help="an integer or auto")
    e.add_argument("--min-thinking-tokens", type=R.non_negative_int, default=0,
                   help="ignore the end of thinking until this many thinking tokens")
    e.add_argument("--num-wait", type=R.non_negative_int, default=0, help="times the end of thinking is ignored")
    e.add_argument("--extension", default="Wait", help="text appended when the end of thinking is ignored")
    e.add_argument("--max-answer-tokens", type=R.positive_int, default=None,
                   help="answer budget (default: what the context leaves)")
    e.add_argument("--max-total-tokens", type=R.positive_int, default=None,
                   help="context budget (default: the model's max_position_embeddings, else 32768)")
    e.add_argument("--batch-size", type=R.positive_int, default=8, help="questions decoded together")
    e.add_argument("--dtype", default="auto", help="weights' dtype: auto (bf16 on a GPU, fp32 on the CPU), bf16, fp32")
    e.add_argument("--device", default="auto", help="cpu, cuda, cuda:N, or auto (cuda if there is a GPU)")
    add_penalty_args(e)


def folder_name(path: str) -> str:
    """A folder as a row names it: its last component (a run moved to another machine or mount resumes)."""
    return os.path.basename(os.path.normpath(path))


def teacher_identity(args) -> str:
    """The ``teacher`` a row of this run carries, less an endpoint's address (a resumed run may reach the same
    model at another URL): ``openai:MODEL``, ``native:FOLDER``, ``vllm:FOLDER``."""
    if args.teacher == "openai":
        return f"openai:{args.model}"
    return f"{args.teacher}:{folder_name(args.model)}"


def check_same_teacher(args, out: R.Output) -> None:
    """Refuse to resume into ``out`` (opened with ``keep=KEPT``) when its rows came from another
    teacher or ``--seed``: the keys (question hash : sample) would count them as done, and the file would mix
    two runs' samples."""
    others: Counter = Counter()
    for key, (who, seed, _) in out.kept.items():
        who = str(who) if who is not None else "?"
        who = who.rsplit("@", 1)[0] if who.startswith("openai:") else who
        if who != teacher_identity(args):
            others[f"teacher {who}"] += 1
        elif seed != request_seed(args.seed, key):
            others["another --seed"] += 1
    if others:
        what = ", ".join(f"{n} made with {k}" for k, n in others.items())
        raise DataError(f"already holds rows of another run ({what}); this run is {teacher_identity(args)} with "
                        f"--seed {args.seed}, and resuming would mix the two: rerun with the first run's --teacher, "
                        "--model and --seed, delete the file, or pass another --out", path=out.path)


def extra_body(args) -> dict | None:
    """``--extra-body`` parsed: a JSON object, else a DataError."""
    try:
        extra = json.loads(args.extra_body) if args.extra_body else None
    except json.JSONDecodeError as e:
        raise DataError(f"--extra-body is not JSON ({e.msg}); pass an object such as '{{\"num_wait\": 1}}'") \
            from None
    if extra is not None and not isinstance(extra, dict):
        raise DataError("--extra-body must be a JSON object")
    return extra


def engine_config(args):
    """The engine teachers' GenerationConfig from the flags (``--max-thinking-tokens`` checked)."""
    from s1fast.generate import budget_arg, config_from_args
    try:
        budget = budget_arg(str(args.max_thinking_tokens))
    except argparse.ArgumentTypeError as e:
        raise DataError(f"--max-thinking-tokens: {e}") from None
    return config_from_args(args, max_thinking_tokens=budget, num_wait=args.num_wait)


def run_settings(args) -> dict:
    """The ``settings`` each row of this run carries, as its teacher computes them: for ``openai`` what every
    request sends (``request_settings``: temperature, top-p, system prompt, max tokens, extra body), for
    ``native`` / ``vllm`` the decoding settings (:func:`engine_settings`: budgets, waits, extension,
    temperature, top-p, penalties where set; --tokenizer's folder name when given). Not in them, so free to
    change on a resume: how the run is batched or paced (--batch-size, --concurrency, --retries, --backoff,
    --timeout), --limit, the progress bar, the endpoint's address; nor --dtype / --device, which
    ``s1fast.generate --out`` does not record either (a run moved from a GPU to the CPU resumes)."""
    if args.teacher == "openai":
        return request_settings(temperature=args.temperature, top_p=args.top_p, system=args.system,
                                max_tokens=args.max_tokens, extra_body=extra_body(args))
    return engine_settings(engine_config(args), args.tokenizer)


def _shown(settings: dict, k: str) -> str:
    return repr(settings[k]) if k in settings else "unset"


def check_same_settings(args, out: R.Output) -> None:
    """Refuse to resume into ``out`` when its rows were made with other sampling settings (:func:`run_settings`):
    the file would mix two distributions. The error names each differing flag ("X there, Y now"), the first
    such row and how many there are.

    A row written before rows recorded their settings has none, and is accepted as it was then, with a warning
    saying how many: its settings cannot be known, and refusing it (or accepting it only at today's defaults)
    would strand a run resumed with the very flags it was started with, with no way on but starting over. The
    rows this resume adds carry their settings, so from then on the file is checked."""
    now = json.loads(json.dumps(run_settings(args)))      # as a row read back holds them
    differ, unknown = [], 0
    for key, (_, _, was) in out.kept.items():
        if was is None:
            unknown += 1
        elif was != now:
            differ.append(key)
    if differ:
        first = min(differ, key=out.row_of.__getitem__)
        was = out.kept[first][2] if isinstance(out.kept[first][2], dict) else {}
        diff = "; ".join(f"--{k.replace('_', '-')} {_shown(was, k)} there, {_shown(now, k)} now"
                         for k in [*now, *(k for k in was if k not in now)] if was.get(k, ...) != now.get(k, ...))
        raise DataError(f"{len(differ)} row(s) of {len(out.kept)} were generated with other settings ({diff}); "
                        "resuming would mix two sampling distributions in one file: rerun with the first run's "
                        "flags, delete the file, or pass another --out", path=out.path, row=out.row_of[first])
    if unknown:
        print(f"warning: {out.path}: {unknown} row(s) were written before rows recorded their sampling settings; "
              "they are resumed as if made with this run's", file=sys.stderr)


def make_teacher(args):
    try:
        check_penalties(args, args.teacher, "--teacher")
    except ValueError as e:
        raise DataError(str(e)) from None
    if args.teacher == "openai":
        if not args.base_url:
            raise DataError("--teacher openai needs --base-url (or $OPENAI_BASE_URL), e.g. http://127.0.0.1:8000/v1")
        return OpenAITeacher(args.base_url, args.model, args.api_key or os.environ.get("OPENAI_API_KEY"),
                             system=args.system, max_tokens=args.max_tokens, temperature=args.temperature,
                             top_p=args.top_p, timeout=args.timeout, retries=args.retries, backoff=args.backoff,
                             extra_body=extra_body(args))
    from s1fast.generate import open_backend
    from s1fast.vllm_backend import sampling_error
    if args.teacher == "vllm" and (why := sampling_error(args.temperature, args.top_p)):
        raise DataError(why)
    cfg = engine_config(args)
    args.backend = args.teacher
    try:
        model, tok, backend = open_backend(args)
    except ImportError as e:     # s1fast.generate's words for its own flag: here the flag is --teacher
        raise ImportError(str(e).replace("--backend", "--teacher")) from None
    return EngineTeacher(model, tok, cfg, backend, name=teacher_identity(args), tokenizer_dir=args.tokenizer)


def main(args) -> R.Tally:
    tally = R.Tally("generate")
    with R.Output(args.out, keep=KEPT) as out, R.Output(args.out[:-len(".jsonl")] + ".failed.jsonl") as failed:
        todo, n_q, n_done, bad, repeats = pending_requests(args.data, args.samples, out.keys, args.seed,
                                                           args.question_field, args.limit)
        if bad and not n_q:
            field = f"field '{args.question_field}'" if args.question_field else \
                "question / problem / prompt field or user turn"
            raise DataError(f"no row has a question (a non-empty {field}); name the field that holds the questions "
                            "with --question-field", path=args.data, row=bad[0])
        if bad:
            tally.drop("no_question", len(bad))
            print(f"warning: {args.data}: {len(bad)} row(s) have no question and are skipped (rows {row_list(bad)})",
                  file=sys.stderr)
        if repeats:
            tally.drop("repeated_question", len(repeats))
            print(f"warning: {args.data}: {len(repeats)} row(s) repeat the question of an earlier row and are asked "
                  f"once (rows {row_list(repeats)})", file=sys.stderr)
        tally.note("questions", n_q)
        check_same_teacher(args, out)
        check_same_settings(args, out)
        if n_done:
            tally.note("already_done", n_done)
        print(f"generate: {n_q} questions x {args.samples} samples; {n_done} already in {args.out}, "
              f"{len(todo)} to make", file=sys.stderr)
        if args.samples > 1 and args.temperature == 0:
            print("warning: --temperature 0 with --samples > 1 gives identical greedy samples", file=sys.stderr)
        if todo:
            teacher = make_teacher(args)
            try:
                run(teacher, todo, out, failed, tally, concurrency=args.concurrency, progress=not args.no_progress)
            except (StopRun, KeyboardInterrupt) as e:
                e.tally = tally   # the CLI prints what was done before the stop
                raise
    return tally
