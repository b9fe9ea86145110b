"""``python -m s1fast.serve --model DIR``: load a model and serve it (OpenAI-compatible, budget forcing).

Example::

    python -m s1fast.serve --model runs/s1/final --port 8000 --max-thinking-tokens 4000 --num-wait 1
    curl -s localhost:8000/v1/chat/completions -d '{"messages": [{"role": "user", "content": "2+2?"}],
        "max_thinking_tokens": 500, "num_wait": 2}'

SIGTERM (or Ctrl-C) stops accepting connections, finishes the requests in flight, then exits.
"""
from __future__ import annotations

import argparse
import ipaddress
import os
import signal
import socket
import sys
from typing import Sequence

from s1fast.generate import UsageError, add_generation_args, budget_arg, check_args, config_from_args

LOOPBACK = "127.0.0.1"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m s1fast.serve",
                                description="Serve an exported model over an OpenAI-compatible HTTP API with s1's "
                                "budget forcing as request fields; the forcing and sampling flags are the defaults "
                                "of requests that leave a field out.")
    add_generation_args(p, penalties=False)   # --model, --backend, sampling and forcing defaults, shared with
    # s1fast.generate (the penalties come with each request)
    own = {"--batch-size": "rows of the running batch: requests decoded together (default 8)",
           "--backend": "native: s1fast's KV-cache engine; vllm: vLLM's engine (GPU node with vllm installed) "
                        "(default: native)",
           "--min-thinking-tokens": "default minimum thinking tokens (0)", "--max-answer-tokens":
           "default answer budget (what the context leaves)", "--temperature": "default temperature (0: greedy)",
           "--top-p": "default top-p (1)", "--seed": "default seed (0)"}
    for flag, text in own.items():   # the shared flags, described as this command uses them
        if flag in p._option_string_actions:
            p._option_string_actions[flag].help = text
    p.add_argument("--max-thinking-tokens", type=budget_arg, default="auto",
                   help="default thinking budget: tokens or 'auto' (default auto)")
    p.add_argument("--num-wait", type=int, default=0, help="default number of 'Wait' extensions (0)")
    p.add_argument("--host", default=LOOPBACK, help="address to bind (loopback by default; anything else is "
                   "reachable from the network: set --api-key)")
    p.add_argument("--port", type=int, default=8000, help="default 8000")
    p.add_argument("--served-model-name", help="the model id clients send (default: the model folder's name)")
    p.add_argument("--api-key", default=os.environ.get("S1FAST_API_KEY"),
                   help="require 'Authorization: Bearer KEY' on every /v1 route; /health stays open for probes "
                   "(default: $S1FAST_API_KEY, else none)")
    p.add_argument("--prefill-chunk", type=int, default=256, help="prompt tokens prefilled per step (default 256)")
    p.add_argument("--max-body-bytes", type=int, default=1 << 20, help="larger request bodies get 413 (default 1 MiB)")
    p.add_argument("--max-prompt-tokens", type=int, default=16384, help="longer prompts get 400 (default 16384)")
    p.add_argument("--max-tokens-limit", type=int, default=16384,
                   help="the largest max_tokens, min_thinking_tokens or num_wait a request may ask for (default 16384)")
    p.add_argument("--max-concurrency", type=int, default=128,
                   help="requests in flight (running + queued); more get 429 (default 128)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"],
                   help="uvicorn's log level (default: info)")
    return p


def check(args) -> str | None:
    """The first problem with ``args``, as one line, or None."""
    if not os.path.isdir(args.model):
        return f"--model {args.model}: no such folder (pass an exported Hugging Face model folder)"
    if not 0 <= args.port <= 65535:
        return f"--port {args.port}: must be 0..65535"
    for name in ("batch_size", "prefill_chunk", "max_body_bytes", "max_prompt_tokens", "max_tokens_limit",
                 "max_concurrency"):
        if getattr(args, name) < 1:
            return f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}"
    for name in ("num_wait", "min_thinking_tokens"):
        if getattr(args, name) < 0:
            return f"--{name.replace('_', '-')} must be >= 0, got {getattr(args, name)}"
    if args.max_answer_tokens is not None and args.max_answer_tokens < 0:
        return f"--max-answer-tokens must be >= 0, got {args.max_answer_tokens}"
    if not 0 <= args.temperature <= 2 or not 0 < args.top_p <= 1:
        return f"--temperature must be in [0, 2] and --top-p in (0, 1], got {args.temperature} and {args.top_p}"
    if args.api_key is not None and not args.api_key.strip():
        return "--api-key is empty; pass a non-blank key or leave it out"
    try:
        check_args(args)   # the flags shared with s1fast.generate (extension, device, tokenizer, model, backend)
    except UsageError as e:
        return str(e)
    return None


def bind_problem(host: str, port: int) -> str | None:
    """Why uvicorn could not listen on (host, port), found before the model is loaded (it says so only after),
    or None. Binds and lets go at once, with SO_REUSEADDR as uvicorn does."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        return f"--host {host}: {e.strerror}; pass an address of this machine (default {LOOPBACK})"
    family, kind, proto, _, addr = infos[0]
    with socket.socket(family, kind, proto) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(addr)
        except OSError as e:
            return f"--host {host} --port {port}: cannot listen there ({e.strerror}); pick another --port or --host"
    return None


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def build(args):
    """(app, engine) for parsed, checked args: loads the model and starts the engine's worker thread."""
    from s1fast.batching import ContinuousBatcher
    from s1fast.generate import context_tokens, open_backend
    from s1fast.serve import api
    from s1fast.serve.app import Server, build_app

    model, tok, backend = open_backend(args)
    max_total = context_tokens(model, args, backend)
    if backend == "native":
        engine = ContinuousBatcher(model, vocab_limit=len(tok), slots=args.batch_size, max_len=max_total,
                                   prefill_chunk=args.prefill_chunk)
    else:
        from s1fast.serve.vllm_engine import VLLMBatcher
        engine = VLLMBatcher(backend, vocab_limit=len(tok), max_len=max_total)
    cfg = config_from_args(args, max_thinking_tokens=args.max_thinking_tokens, num_wait=args.num_wait)
    limits = api.Limits(args.max_body_bytes, args.max_prompt_tokens, args.max_tokens_limit, args.max_concurrency)
    name = args.served_model_name or os.path.basename(os.path.normpath(args.model))
    server = Server(engine.start(), tok, model_name=name, max_total_tokens=max_total, defaults=cfg,
                    limits=limits, api_key=args.api_key)
    return build_app(server, on_shutdown=engine.stop), engine


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    problem = check(args) or bind_problem(args.host, args.port)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    if not is_loopback(args.host) and args.api_key is None:
        print(f"warning: --host {args.host} is reachable from the network and no --api-key is set",
              file=sys.stderr)
    import uvicorn

    from s1fast.generate import UsageError
    try:
        app, _ = build(args)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level,
                            timeout_graceful_shutdown=None, access_log=args.log_level == "debug")
    # uvicorn re-raises the signal it caught once it has drained; with this handler a SIGTERM ends in exit 0.
    signal.signal(signal.SIGTERM, lambda *_: None)
    uvicorn.Server(config).run()   # SIGTERM/SIGINT: stop accepting, drain the requests in flight, exit
    return 0


if __name__ == "__main__":
    sys.exit(main())
