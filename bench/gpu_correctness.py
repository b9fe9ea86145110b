"""Stage "correctness" of ``bench/run_gpu.sh``: the GPU code paths against references, one JSON file.

Checks, each recorded as {name, ok, detail} (a failing check is recorded and the next one runs):
- attention: every backend available on the device against a float64 per-document SDPA on the CPU,
  forward and backward (dq, dk, dv), on a packed batch of uneven documents with grouped-query heads;
- collate: ``packing.collate`` on the device against ``collate_reference``;
- training: the tiny preset trained with each backend on the device (bf16) against the same run in fp32
  on the CPU: per-step losses within bf16 tolerance; then the best backend again with ``--compile``;
- generation: budget-forced generation on the device respects the thinking budget (greedy, its tokens
  compared with the CPU fp32 run, recorded: a random model has near-ties); seeded sampling repeats itself;
  the server's continuous batcher serves more requests than it has rows.

    python -m bench.gpu_correctness --out OUT/correctness.json [--small] [--device cpu]

``--small`` (the script's ``--dry-run``) uses toy sizes; on a CPU the stand-in backends are the SDPA ones.
"""
from __future__ import annotations

if __name__ == "__main__" and not __package__:  # run as python bench/X.py: import as python -m bench.X
    import _path  # noqa: F401  (bench/_path.py)

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import traceback

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BF16_LOSS_RTOL = 2e-2   # bf16 activations against an fp32 run, per-step loss of the tiny preset
ATTN_TOL = {torch.bfloat16: 2e-2, torch.float16: 4e-3, torch.float32: 1e-4}  # x the reference's max magnitude


def packed_docs(lengths, hq, hk, d, dtype, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    T = sum(lengths)
    q, k, v = (torch.randn(T, h, d, generator=g, dtype=torch.float64) for h in (hq, hk, hk))
    cu = torch.tensor([0] + list(torch.tensor(lengths).cumsum(0)), dtype=torch.int32)
    return q, k, v, cu


def check_attention(device, backends, lengths, hq, hk, d, dtype) -> list[dict]:
    from s1fast import attention as attn
    q64, k64, v64, cu = packed_docs(lengths, hq, hk, d, dtype, device)
    go = torch.randn(q64.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    leaves = [t.clone().requires_grad_() for t in (q64, k64, v64)]
    meta = attn.prepare(cu, max(lengths), sum(lengths), device="cpu", backend="sdpa_doc")
    ref = attn.attention(*leaves, meta)
    ref.backward(go)
    refs = [ref.detach()] + [t.grad for t in leaves]
    out = []
    for b in backends:
        t0 = time.perf_counter()
        try:
            xs = [t.to(device, dtype).requires_grad_() for t in (q64, k64, v64)]
            meta = attn.prepare(cu.to(device), max(lengths), sum(lengths), device=device, backend=b)
            o = attn.attention(*xs, meta)
            o.backward(go.to(device, dtype))
            got = [o.detach()] + [t.grad for t in xs]
            errs = {}
            for name, g, r in zip(("out", "dq", "dk", "dv"), got, refs):
                scale = max(r.abs().max().item(), 1e-30)
                errs[name] = (g.double().cpu() - r).abs().max().item() / scale
            ok = all(e <= ATTN_TOL[dtype] for e in errs.values())
            out.append(dict(name=f"attention {b}", ok=ok, seconds=time.perf_counter() - t0,
                            detail=f"{dtype} T={sum(lengths)} docs={len(lengths)} Hq={hq} Hk={hk} d={d}; max error / "
                                   f"max |ref| {json.dumps({k: float(f'{e:.3g}') for k, e in errs.items()})} "
                                   f"(tolerance {ATTN_TOL[dtype]})"))
        except Exception as e:  # recorded, the next backend runs
            out.append(dict(name=f"attention {b}", ok=False, detail=_error(e)))
    return out


def check_collate(device) -> dict:
    from s1fast.packing import collate, collate_reference
    try:
        g = torch.Generator().manual_seed(0)
        ex = []
        for L in (7, 1, 300, 45):
            ids = torch.randint(0, 1000, (L,), generator=g).tolist()
            labels = [-100] * (L // 3) + ids[L // 3:]
            ex.append((ids, labels))
        w = [0.5, 1.0, 0.25, 2.0]
        got, ref = collate(ex, w, device=device), collate_reference(ex, w)
        fields = ("input_ids", "position_ids", "targets", "loss_weight", "cu_seqlens")
        bad = [f for f in fields if not torch.equal(getattr(got, f).cpu(), getattr(ref, f).cpu())]
        dev_ok = got.input_ids.device.type == torch.device(device).type
        return dict(name="collate", ok=not bad and dev_ok and got.max_seqlen == ref.max_seqlen,
                    detail=f"on {got.input_ids.device}; fields differing from collate_reference: {bad or 'none'}")
    except Exception as e:
        return dict(name="collate", ok=False, detail=_error(e))


def start_training(args: list[str], out_dir: str) -> tuple[subprocess.Popen, list[str]]:
    """Start one training run (a process of its own, so the runs go side by side)."""
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), TOKENIZERS_PARALLELISM="false")
    env.pop("TRITON_INTERPRET", None)
    cmd = [sys.executable, "-m", "s1fast.train", *args, "--output-dir", out_dir, "--progress", "false",
           "--export", "false", "--plot", "false", "--save-every", "0"]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True), cmd


def finish_training(proc: subprocess.Popen, cmd: list[str], out_dir: str, deadline: float) -> list[float]:
    """Wait for a run started by ``start_training`` until ``deadline`` (time.monotonic()); its per-step losses."""
    try:
        out, _ = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        raise TimeoutError(f"{' '.join(cmd[1:])} ran past its time; last output: {out[-800:]}")
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[1:])} exited {proc.returncode}: {out[-1500:]}")
    rows = [json.loads(line) for line in open(os.path.join(out_dir, "metrics.jsonl"))]
    return [r["loss"] for r in sorted(rows, key=lambda r: r["step"])]


def check_training(device, backends, base: list[str], timeout: float, compile_backend: str | None) -> list[dict]:
    """Every run at once (the CPU reference and one run per backend: they share the GPU easily), then compare."""
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        runs = [("reference", ["--device", "cpu", "--dtype", "fp32", "--attention", "sdpa"])]
        runs += [(f"training {b}", ["--device", device, "--dtype", "bf16", "--attention", b]) for b in backends]
        if compile_backend:
            runs.append((f"training {compile_backend} --compile",
                         ["--device", device, "--dtype", "bf16", "--attention", compile_backend, "--compile"]))
        t0, deadline = time.perf_counter(), time.monotonic() + timeout
        started = {}
        for name, extra in runs:
            out_dir = os.path.join(tmp, name.replace(" ", "_"))
            started[name] = (*start_training(base + extra, out_dir), out_dir)
        losses = {}
        for name, (proc, cmd, out_dir) in started.items():
            try:
                losses[name] = finish_training(proc, cmd, out_dir, deadline)
            except Exception as e:
                losses[name] = e
        ref = losses.pop("reference")
        if isinstance(ref, Exception):
            return [dict(name="training reference (cpu fp32)", ok=False, detail=_error(ref))]
        for name, got in losses.items():
            if isinstance(got, Exception):
                out.append(dict(name=name, ok=False, detail=_error(got)))
                continue
            rel = [abs(a - r) / abs(r) for a, r in zip(got, ref)]
            ok = len(got) == len(ref) and all(math.isfinite(x) and x <= BF16_LOSS_RTOL for x in rel)
            out.append(dict(name=name, ok=ok, seconds=time.perf_counter() - t0,
                            detail=f"losses {[round(x, 4) for x in got]} vs cpu fp32 {[round(x, 4) for x in ref]}; "
                                   f"max relative difference {max(rel, default=float('nan')):.3g} "
                                   f"(tolerance {BF16_LOSS_RTOL})"))
    return out


def check_generation(device, max_thinking: int) -> list[dict]:
    """Budget forcing on the device: greedy (against the CPU fp32 run, recorded), seeded sampling (the same
    seeds twice give the same tokens: judged), and the server's continuous batcher (judged: every request
    finishes within its budget; its tokens against ``generate`` alone on the device, recorded)."""
    from transformers import AutoTokenizer

    from s1fast import model as lean
    from s1fast.generate import BUNDLED_TOKENIZER, GenerationConfig, generate
    qs = ["How many r are in raspberry?", "What is 2 + 2?", "Let $ABC$ be a triangle. Find m+n."]
    out = []
    try:
        tok = AutoTokenizer.from_pretrained(BUNDLED_TOKENIZER)
        cfg = GenerationConfig(max_thinking_tokens=max_thinking, num_wait=1, max_answer_tokens=8, batch_size=2)
        res, models = {}, {}
        for dev in dict.fromkeys([device, "cpu"]):
            torch.manual_seed(0)
            models[dev] = lean.build_model("tiny-qwen2", device="cpu").to(dev).eval()
            res[dev] = generate(models[dev], tok, qs, cfg)
        budget_ok = all(r["thinking_tokens"] <= max_thinking for r in res[device])
        same = sum(a["thinking"] == b["thinking"] for a, b in zip(res[device], res["cpu"]))
        out.append(dict(name="generation (budget forcing)", ok=budget_ok,
                        detail=f"thinking tokens {[r['thinking_tokens'] for r in res[device]]} <= budget "
                               f"{max_thinking}; waits {[r['waits'] for r in res[device]]}; {same}/{len(qs)} thinking "
                               f"texts equal the cpu fp32 run (recorded, not judged: a random model has near-ties)"))
    except Exception as e:
        return [dict(name="generation (budget forcing)", ok=False, detail=_error(e))]
    model = models[device]
    out.append(_check_sampling(model, tok, qs, cfg, max_thinking))
    out.append(_check_batcher(model, tok, qs, cfg, res[device], max_thinking))
    return out


def _check_sampling(model, tok, qs, cfg, max_thinking: int) -> dict:
    import dataclasses

    from s1fast.generate import generate
    name = "generation (seeded sampling)"
    try:
        scfg = dataclasses.replace(cfg, temperature=0.8, top_p=0.95, seed=7)
        runs = [generate(model, tok, qs, scfg) for _ in range(2)]
        alone = generate(model, tok, qs, dataclasses.replace(scfg, batch_size=1))
        repeat = all(a["thinking"] == b["thinking"] and a["answer"] == b["answer"] for a, b in zip(*runs))
        budget_ok = all(r["thinking_tokens"] <= max_thinking for r in runs[0])
        same_alone = sum(a["thinking"] == b["thinking"] for a, b in zip(runs[0], alone))
        return dict(name=name, ok=repeat and budget_ok,
                    detail=f"the same seeds twice give the same tokens: {repeat}; thinking tokens "
                           f"{[r['thinking_tokens'] for r in runs[0]]} <= {max_thinking}; {same_alone}/{len(qs)} "
                           f"equal when run one at a time (recorded: batched matmuls may round differently)")
    except Exception as e:
        return dict(name=name, ok=False, detail=_error(e))


def _check_batcher(model, tok, qs, cfg, ref: list[dict], max_thinking: int) -> dict:
    import threading

    from s1fast.batching import ContinuousBatcher
    from s1fast.forcing import BudgetForcer, ForcingTokens
    from s1fast.generate import prompt_ids
    name = "generation (server's continuous batcher)"
    b = None
    try:
        tokens = ForcingTokens.from_tokenizer(tok, extension=cfg.extension)
        b = ContinuousBatcher(model, vocab_limit=len(tok), slots=2, max_len=512, prefill_chunk=16).start()
        done = [threading.Event() for _ in qs]
        results: list = [None] * len(qs)

        def collect(i):
            def on_update(u):
                if u.done:
                    results[i] = u.error or u.result
                    done[i].set()
            return on_update
        for i, q in enumerate(qs):  # more requests than rows: the third waits for a free row
            f = BudgetForcer(prompt_ids(tok, q), tokens, max_thinking_tokens=cfg.max_thinking_tokens,
                             num_wait=cfg.num_wait, max_answer_tokens=cfg.max_answer_tokens, max_total_tokens=512)
            b.submit(f, collect(i), temperature=0.8 if i == 1 else 0.0, top_p=0.95, seed=i)
        finished = all(e.wait(120) for e in done)
        errors = [r for r in results if isinstance(r, str)]
        ok_rows = [r for r in results if isinstance(r, dict)]
        budget_ok = len(ok_rows) == len(qs) and all(r["thinking_tokens"] <= max_thinking for r in ok_rows)
        greedy_same = sum(isinstance(results[i], dict) and ref[i]["thinking"]
                          == tok.decode(results[i]["thinking_ids"], skip_special_tokens=False) for i in (0, 2))
        return dict(name=name, ok=finished and not errors and budget_ok,
                    detail=f"finished: {finished}; errors: {errors[:2]}; thinking tokens "
                           f"{[r['thinking_tokens'] for r in ok_rows]} <= {max_thinking}; {greedy_same}/2 greedy "
                           f"requests' thinking equal to generate's (recorded)")
    except Exception as e:
        return dict(name=name, ok=False, detail=_error(e))
    finally:
        if b is not None:
            b.stop(30)


def _error(e: BaseException) -> str:
    tb = "".join(traceback.format_exception(type(e), e, e.__traceback__, limit=3))
    return f"{type(e).__name__}: {str(e)[-1200:]} | {tb[-800:]}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="JSON file to write (rewritten after every check)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--small", action="store_true", help="toy sizes (the --dry-run of bench/run_gpu.sh)")
    ap.add_argument("--train-timeout", type=float, default=100.0, help="seconds allowed for the training runs, which go side by side")
    a = ap.parse_args(argv)
    from s1fast import attention as attn
    cuda = torch.device(a.device).type == "cuda"
    backends = [b for b in attn.available_backends(a.device) if not cuda or b not in ("sdpa_doc", "sdpa_mask")]
    report = {"device": a.device, "small": a.small, "checks": []}

    def record(items):
        report["checks"] += items if isinstance(items, list) else [items]
        for c in (items if isinstance(items, list) else [items]):
            print(f"[{'ok' if c['ok'] else 'FAIL'}] {c['name']}: {c['detail'][:300]}", flush=True)
        with open(a.out, "w") as f:
            json.dump(report, f, indent=1)

    if a.small:
        shape = dict(lengths=[5, 17, 1, 9], hq=4, hk=2, d=16, dtype=torch.float32)
    else:  # Qwen2.5-32B's heads, uneven documents
        shape = dict(lengths=[1000, 37, 2500, 559], hq=40, hk=8, d=128, dtype=torch.bfloat16)
    record(check_attention(a.device, backends, **shape))
    record(check_collate(a.device))
    base = ["--preset", "tiny", "--max-tokens", "128" if a.small else "512", "--global-batch", "2" if a.small else "8",
            "--max-steps", "2" if a.small else "6", "--lr", "2e-3"]
    # flex trains like the others but compiles for ~30 s; its attention check above covers its numerics
    train_backends = ["sdpa"] if not cuda else [b for b in backends if b in ("flash", "varlen", "triton")]
    record(check_training(a.device, train_backends, base, a.train_timeout,
                          compile_backend=None if a.small else (train_backends or ["sdpa"])[0]))
    record(check_generation(a.device, max_thinking=8 if a.small else 64))
    failed = [c["name"] for c in report["checks"] if not c["ok"]]
    print(f"correctness: {len(report['checks']) - len(failed)}/{len(report['checks'])} checks passed"
          + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
