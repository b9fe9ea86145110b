"""Packed causal attention at s1's shapes: forward, backward and full-pass time and peak memory of s1fast's
Triton kernels (``triton``) against torch's ``varlen`` attention, flash-attn (``flash``, where installed),
compiled FlexAttention (``flex``) and SDPA run per document (``sdpa_doc``), all through ``s1fast.attention``.

    python -m bench.bench_attention                   # on a GPU: MEASURED, beside the PROJECTED floors
    python -m bench.bench_attention --dry-run         # no GPU needed: PROJECTED floors + a tiny interpreter run
    python -m bench.bench_attention --json out.json --lengths 32768 --lengths 8192,8192,8192,8192

PROJECTED = roofline floors from FLOPs and bytes at the H100 figures of bench/kernel_table.py (989 TFLOP/s
dense bf16, 3.35 TB/s): causal attention does 2 L^2 D Hq multiply-adds forward (QK^T and PV over the lower
triangle, 4 L(L+1)/2 D Hq FLOPs), and the FlashAttention-2 backward 2.5x that (S recomputed, dV, dP, dQ, dK).
They are lower bounds that no backend reaches; only the measured rows rank the backends. The CPU run under
the interpreter only exercises the code path: its times are no performance figure.
"""
from __future__ import annotations

if __name__ == "__main__" and not __package__:  # run as python bench/X.py: import as python -m bench.X
    import _path  # noqa: F401  (bench/_path.py)

import argparse
import json
import os
import statistics
import sys
import time

import torch

from bench._args import non_negative_int, positive_int
from bench.env import environment, markdown_header
from bench.kernel_table import HEAD_DIM, HK, HQ, PEAK_BW, PEAK_FLOPS

BACKENDS = ("triton", "varlen", "flash", "flex", "sdpa_doc")
SCENARIOS = ([32768], [8192] * 4, [2048] * 16)  # one s1 block of 32768 tokens, packed three ways


def flops(lengths: list[int], hq: int, d: int) -> tuple[float, float]:
    """(forward, backward) FLOPs of causal attention over these documents."""
    fwd = sum(4.0 * n * (n + 1) / 2 * d * hq for n in lengths)
    return fwd, 2.5 * fwd


def bytes_moved(T: int, hq: int, hk: int, d: int, elt: int = 2) -> tuple[float, float]:
    """(forward, backward) minimum HBM traffic: each tensor read or written once (K/V re-reads hit L2)."""
    q, kv, lse = T * hq * d * elt, T * hk * d * elt, T * hq * 4
    fwd = q + 2 * kv + q + lse                               # read q, k, v; write out, lse
    bwd = (q + 2 * kv + 2 * q + lse) + q + lse * 2 + (q + 2 * kv)  # read q,k,v,o,do,lse; delta; write dq,dk,dv
    return fwd, bwd


def extra_memory(T: int, hq: int, hk: int, d: int, elt: int = 2) -> tuple[float, float]:
    """(saved by forward, transient in backward) bytes beyond the inputs: out + lse; dq, dk, dv + delta."""
    return T * hq * d * elt + T * hq * 4, T * (hq + 2 * hk) * d * elt + T * hq * 4


def projected_rows(lengths: list[int], hq: int = HQ, hk: int = HK, d: int = HEAD_DIM) -> list[dict]:
    T = sum(lengths)
    (ff, fb), (bf, bb) = flops(lengths, hq, d), bytes_moved(T, hq, hk, d)
    saved, transient = extra_memory(T, hq, hk, d)
    out = []
    for phase, fl, by, mem in (("fwd", ff, bf, saved), ("bwd", fb, bb, transient),
                               ("fwd+bwd", ff + fb, bf + bb, saved + transient)):
        out.append(dict(phase=phase, flops=fl, bytes=by, seconds=max(fl / PEAK_FLOPS, by / PEAK_BW),
                        bound="compute" if fl / PEAK_FLOPS >= by / PEAK_BW else "memory", memory_bytes=mem))
    return out


def _label(lengths: list[int]) -> str:
    return f"{len(lengths)} x {lengths[0]}" if len(set(lengths)) == 1 else "+".join(map(str, lengths))


def projected_table(scenarios, hq=HQ, hk=HK, d=HEAD_DIM) -> str:
    rows = [f"PROJECTED (roofline floors at 989 TFLOP/s, 3.35 TB/s; Hq {hq}, Hk {hk}, head dim {d}, bf16; the same "
            "floors hold for every FlashAttention-2-class backend)", "",
            "| documents | phase | FLOPs | bytes | floor | bound | extra memory |", "|---|---|---|---|---|---|---|"]
    for lengths in scenarios:
        for r in projected_rows(lengths, hq, hk, d):
            rows.append(f"| {_label(lengths)} | {r['phase']} | {r['flops'] / 1e12:.2f} T | {r['bytes'] / 1e9:.2f} GB | "
                        f"{r['seconds'] * 1e3:.2f} ms | {r['bound']} | {r['memory_bytes'] / 2**30:.2f} GiB |")
    return "\n".join(rows)


# ------------------------------------------------------------------------------------------- measuring
def _timer(device: torch.device):
    if device.type == "cuda":
        def run(fn):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            torch.cuda.synchronize()
            return a.elapsed_time(b) / 1e3
    else:
        def run(fn):
            t = time.perf_counter()
            fn()
            return time.perf_counter() - t
    return run


def measure(backend: str, lengths: list[int], hq: int, hk: int, d: int, dtype, device, reps: int, warmup: int,
            reference: torch.Tensor | None = None) -> dict:
    """Median fwd / bwd / fwd+bwd seconds and peak extra memory of one backend on one packed batch."""
    from s1fast import attention as attn
    T = sum(lengths)
    g = torch.Generator(device="cpu").manual_seed(0)
    q, k, v, dout = (torch.randn(T, h, d, generator=g).to(device=device, dtype=dtype) for h in (hq, hk, hk, hq))
    q, k, v = (x.requires_grad_() for x in (q, k, v))
    cu = torch.tensor([0] + list(torch.tensor(lengths).cumsum(0)), dtype=torch.int32, device=device)
    meta = attn.prepare(cu, max(lengths), T, device=device, backend=backend)
    timer = _timer(device)
    holder = {}

    def fwd():
        holder["out"] = attn.attention(q, k, v, meta)

    def bwd():
        torch.autograd.grad(holder["out"], (q, k, v), dout)

    def full():
        torch.autograd.grad(attn.attention(q, k, v, meta), (q, k, v), dout)

    for _ in range(warmup):
        fwd()
        bwd()
    times = {"fwd": [], "bwd": [], "fwd+bwd": []}
    for _ in range(reps):
        times["fwd"].append(timer(fwd))
        times["bwd"].append(timer(bwd))
        times["fwd+bwd"].append(timer(full))
    row = {k: statistics.median(v) for k, v in times.items()}
    if device.type == "cuda":
        holder.clear()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        full()
        torch.cuda.synchronize()
        row["peak_extra_bytes"] = torch.cuda.max_memory_allocated() - base
    with torch.no_grad():
        out = attn.attention(q, k, v, meta).float()
    row["max_abs_diff_vs_first"] = None if reference is None else (out - reference).abs().max().item()
    row["_out"] = out
    return row


def measured_table(rows: list[dict], device: torch.device) -> str:
    kind = "MEASURED" if device.type == "cuda" else "CPU smoke run under the Triton interpreter (NOT a performance figure)"
    out = [kind, "", "| documents | backend | fwd | bwd | fwd+bwd | peak extra memory | max abs diff vs first |",
           "|---|---|---|---|---|---|---|"]
    for r in rows:
        if "skipped" in r:
            out.append(f"| {r['documents']} | {r['backend']} | {r['skipped']} | | | | |")
            continue
        mem = f"{r['peak_extra_bytes'] / 2**30:.2f} GiB" if "peak_extra_bytes" in r else "n/a"
        diff = "-" if r["max_abs_diff_vs_first"] is None else f"{r['max_abs_diff_vs_first']:.2e}"
        out.append(f"| {r['documents']} | {r['backend']} | {r['fwd'] * 1e3:.2f} ms | {r['bwd'] * 1e3:.2f} ms | "
                   f"{r['fwd+bwd'] * 1e3:.2f} ms | {mem} | {diff} |")
    return "\n".join(out)


def _parse_lengths(text: str) -> list[int]:
    try:
        lengths = [int(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--lengths {text!r}: give comma-separated token counts, e.g. 8192,8192")
    if not lengths or min(lengths) < 1:
        raise argparse.ArgumentTypeError(f"--lengths {text!r}: every document needs at least 1 token")
    return lengths


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry-run", action="store_true",
                    help="no GPU: print the PROJECTED floors and run a tiny batch through the interpreter")
    ap.add_argument("--lengths", type=_parse_lengths, action="append",
                    help="document lengths of one packed batch, comma-separated (repeatable); default: "
                         "32768 | 4 x 8192 | 16 x 2048 (tiny batches with --dry-run)")
    ap.add_argument("--backends", default=",".join(BACKENDS), help=f"comma-separated, from {BACKENDS}")
    ap.add_argument("--reps", type=positive_int, default=10, help="timed repetitions (median reported)")
    ap.add_argument("--warmup", type=non_negative_int, default=3, help="untimed repetitions first (compiles, autotunes)")
    ap.add_argument("--json", default="", help="also write every figure to this file")
    args = ap.parse_args(argv)
    bad = [b for b in args.backends.split(",") if b not in BACKENDS]
    if bad:
        print(f"error: unknown backend(s) {bad} in --backends; choose from {BACKENDS}", file=sys.stderr)
        return 2
    gpu = torch.cuda.is_available() and not args.dry_run
    if not gpu and not args.dry_run:
        print("error: no CUDA GPU; run with --dry-run for the PROJECTED figures and an interpreter smoke run",
              file=sys.stderr)
        return 2
    if not gpu:
        os.environ["TRITON_INTERPRET"] = "1"  # before any kernel module is imported
    device = torch.device("cuda" if gpu else "cpu")
    if gpu:
        scenarios, shape, dtype, reps, warmup = args.lengths or list(SCENARIOS), (HQ, HK, HEAD_DIM), torch.bfloat16, \
            args.reps, args.warmup
    else:
        scenarios, shape, dtype, reps, warmup = args.lengths or [[1, 17, 129], [40] * 4], (4, 1, 64), torch.float32, 1, 0
    env = environment()
    print(markdown_header(env))
    print(projected_table(args.lengths or SCENARIOS) + "\n", flush=True)
    from s1fast import attention as attn
    usable = attn.available_backends(device) + (["triton"] if not gpu else [])
    rows = []

    def save():  # after every backend, so a run cut short keeps what it measured
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"environment": env, "shape": dict(hq=shape[0], hk=shape[1], head_dim=shape[2],
                                                             dtype=str(dtype)),
                           "projected": {_label(s): projected_rows(s) for s in (args.lengths or SCENARIOS)},
                           "measured" if gpu else "cpu_smoke": rows}, f, indent=1)
    for lengths in scenarios:
        first = None
        for b in args.backends.split(","):
            label = _label(lengths)
            if b not in usable or (not gpu and b == "flex"):
                rows.append(dict(documents=label, backend=b, skipped="not available here"))
                continue
            print(f"[bench_attention] {label}: {b} ...", file=sys.stderr, flush=True)
            try:
                r = measure(b, lengths, *shape, dtype, device, reps, warmup, first)
            except Exception as e:  # a backend that fails on this machine is recorded, not fatal
                rows.append(dict(documents=label, backend=b, skipped=f"failed: {type(e).__name__}: {str(e)[:120]}"))
                continue
            out = r.pop("_out")
            first = out if first is None else first
            rows.append(dict(documents=label, backend=b, **r))
            save()
    print(measured_table(rows, device))
    save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
