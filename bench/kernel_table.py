"""The "Kernels" section of bench/RESULTS.md: sm_90 resource table (compiled here, no GPU) and the
projected cost of each kernel at s1's shapes on an H100.

    python -m bench.kernel_table            # print the section
    python -m bench.kernel_table --write    # replace it in bench/RESULTS.md (between the markers)

The table comes from ``s1fast_kernels.compile_check.compile_variants`` (each kernel file lists the
launch configurations it uses at s1's shapes in ``sm90_variants``). The projections are arithmetic
from the kernels' designs (bytes each one must move, FLOPs each must do) at 989 TFLOP/s dense bf16 and
3.35 TB/s HBM3 (H100 SXM datasheet); every figure is printed with the formula that produced it.
"""
from __future__ import annotations

if __name__ == "__main__" and not __package__:  # run as python bench/X.py: import as python -m bench.X
    import _path  # noqa: F401  (bench/_path.py)

import argparse
import os
import re

from bench.env import environment, markdown_header
from bench.kernel_memory import RSS_CHECK

from s1fast.hardware import GPUS
from s1fast.model import CONFIGS

PEAK_FLOPS = GPUS["h100"].peak_flops
PEAK_BW = GPUS["h100"].hbm_bytes_per_s
# fp32 exp2 on the special-function units: 16 results per clock per SM (CUDA programming guide, compute
# capability 9.0 throughput table) x 132 SMs x 1.98 GHz boost clock
SFU_EXP = 16 * 132 * 1.98e9
BEGIN, END = "<!-- kernels:begin -->", "<!-- kernels:end -->"

# s1's shapes (Qwen2.5-32B-Instruct, 32768-token packs)
_QWEN32 = CONFIGS["Qwen2.5-32B-Instruct"]
N = 32768
HIDDEN, VOCAB, INTER = _QWEN32.hidden_size, _QWEN32.vocab_size, _QWEN32.intermediate_size
HQ, HK, HEAD_DIM = _QWEN32.num_heads, _QWEN32.num_kv_heads, _QWEN32.head_dim
BF16 = 2


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.1f} ms" if seconds >= 1e-3 else f"{seconds * 1e6:.0f} us"


def _gb(b: float) -> str:
    return f"{b / 1e9:.2f} GB"


def resource_table() -> str:
    from s1fast_kernels.compile_check import kernel_reports
    rows = ["| kernel (launch config at s1's shapes) | registers | spills (bytes) | shared memory (bytes) | warps | wgmma |",
            "|---|---|---|---|---|---|"]
    rows += [r.row() for reps in kernel_reports().values() for r in reps]
    return "\n".join(rows)


def memory_bound(name: str, nbytes: float, what: str) -> str:
    return f"| {name} | {what} = {_gb(nbytes)} | {_ms(nbytes / PEAK_BW)} |"


def _row_phase() -> tuple[float, float, float]:
    """(statistics bytes, dz kernel bytes, epilogue exp seconds) of the softmax part of the fused loss at
    s1's shapes: statistics in the logits GEMM's epilogue, then one elementwise pass z -> dz."""
    from s1fast_kernels.matmul_tiles import mm_config
    n_tiles = -(-VOCAB // mm_config(True)[0]["BN"])
    nv = N * VOCAB
    return N * n_tiles * 4 * 4 * 2, nv * (4 + 2), nv / SFU_EXP


def _row_phase_seconds() -> float:
    stats_b, grad_b, exp_t = _row_phase()
    return (stats_b + grad_b) / PEAK_BW + exp_t


def flce_projection(chunk: int) -> list[str]:
    nv = N * VOCAB
    vh = VOCAB * HIDDEN
    gemm_flops = 2 * chunk * VOCAB * HIDDEN
    t_flop = gemm_flops / PEAK_FLOPS
    # per chunk: each GEMM takes max(FLOP time, byte time) (roofline, no overlap between kernels)
    logits_b = BF16 * vh + BF16 * chunk * HIDDEN + 4 * chunk * VOCAB
    dh_b = BF16 * chunk * VOCAB + BF16 * vh + BF16 * chunk * HIDDEN
    dw_b = BF16 * chunk * VOCAB + BF16 * chunk * HIDDEN + 8 * vh
    n_chunks = N / chunk
    gemm_t = sum(max(t_flop, b / PEAK_BW) for b in (logits_b, dh_b, dw_b)) * n_chunks
    stats_b, grad_b, epilogue_t = _row_phase()
    floor = 3 * 2 * nv * HIDDEN / PEAK_FLOPS
    total = gemm_t + _row_phase_seconds()
    bufs = chunk * VOCAB * (4 + 2)
    return [
        f"- matmul floor: 3 GEMMs x 2NVH = 6 x {N} x {VOCAB} x {HIDDEN} = {6 * nv * HIDDEN:.4g} FLOP "
        f"-> {_ms(floor)} at 989 TFLOP/s (forward alone, one GEMM: {_ms(floor / 3)}).",
        f"- chunk C = {chunk} rows ({n_chunks:.2f} chunks). Per chunk each GEMM does 2CVH = {gemm_flops:.4g} FLOP "
        f"= {_ms(t_flop)} (the last, partial chunk is counted pro rata); bytes: logits 2VH + 2CH + 4CV = {_gb(logits_b)} ({_ms(logits_b / PEAK_BW)}), "
        f"dh 2CV + 2VH + 2CH = {_gb(dh_b)} ({_ms(dh_b / PEAK_BW)}), dW 2CV + 2CH + 8VH (fp32 accumulator read "
        f"and written) = {_gb(dw_b)} ({_ms(dw_b / PEAK_BW)}). Roofline sum over chunks: {_ms(gemm_t)}.",
        f"- row statistics (max, sum of exp, target logit, sum) in the logits GEMM's epilogue: one exp per logit "
        f"on the special-function units, NV / (16 x 132 SMs x 1.98 GHz) = {_ms(epilogue_t)}, counted as not "
        f"overlapped; the per-tile statistics {_gb(stats_b)} written and read back ({_ms(stats_b / PEAK_BW)}); "
        f"then the dz kernel reads the fp32 logits once and writes bf16 dz: NV x (4 + 2) B = {_gb(grad_b)} -> "
        f"{_ms(grad_b / PEAK_BW)} (the GEMM writing z is counted above; a separate row kernel would read z twice, "
        f"NV x 10 B = {_gb(nv * 10)}).",
        f"- projected forward + backward: {_ms(total)} = {total / floor:.2f} x the matmul floor.",
        f"- extra memory: chunk buffers C x V x (4 + 2) B = {_gb(bufs)}, fp32 dW accumulator 4VH = "
        f"{_gb(4 * vh)} (the bf16 weight gradient itself is {_gb(BF16 * vh)}); the counted table below compares "
        f"both modes with the unfused path.",
    ]


def _roofline(flops: float, nbytes: float) -> float:
    return max(flops / PEAK_FLOPS, nbytes / PEAK_BW)


def flce_low_memory_projection(chunk: int = 512) -> list[str]:
    """``low_memory=True``: forward over token chunks (logits, rows, dh), backward dW by vocabulary blocks."""
    from s1fast_kernels.linear_cross_entropy_op import _dw_tiles
    nv, vh = N * VOCAB, VOCAB * HIDDEN
    floor = 6 * nv * HIDDEN / PEAK_FLOPS
    n_chunks = N / chunk
    gemm = 2 * chunk * VOCAB * HIDDEN
    fwd = n_chunks * (_roofline(gemm, BF16 * vh + BF16 * chunk * HIDDEN + 4 * chunk * VOCAB)
                      + _roofline(gemm, BF16 * chunk * VOCAB + BF16 * vh + BF16 * chunk * HIDDEN)) \
        + _row_phase_seconds()
    rows, vrows = _dw_tiles(N, VOCAB, HIDDEN, chunk, BF16)
    acc = rows < N
    tiles = (N / rows) * (VOCAB / vrows)
    tile_gemm = 2 * rows * vrows * HIDDEN
    logits_b = BF16 * vrows * HIDDEN + BF16 * rows * HIDDEN + BF16 * rows * vrows  # writes bf16 dz, not z
    dw_b = BF16 * rows * vrows + BF16 * rows * HIDDEN + (8 if acc else BF16) * vrows * HIDDEN
    exp_t = rows * vrows / SFU_EXP  # the epilogue's exp per logit, counted as not overlapped
    bwd = tiles * (_roofline(tile_gemm, logits_b) + exp_t + _roofline(tile_gemm, dw_b))
    total = fwd + bwd
    return [
        f"- forward: {n_chunks:.0f} chunks of C = {chunk} rows: the logits GEMM with its row statistics, the dz "
        f"kernel and dh = dz W (2 x 2NVH FLOP, compute-bound: 2CVH / (2VH + 4CV + 2CH) = "
        f"{gemm / (BF16 * vh + 4 * chunk * VOCAB + BF16 * chunk * HIDDEN):.0f} FLOP/B > 295): {_ms(fwd)}.",
        f"- backward: dW by vocabulary blocks of {vrows} rows x token tiles of {rows} ({tiles:.1f} tiles): the "
        f"logits recomputed (2NVH) and turned into bf16 dz from the saved lse in the same GEMM's epilogue "
        f"({_gb(BF16 * rows * vrows)} a tile, one exp per logit: {_ms(tiles * exp_t)} in all), dW_block "
        f"{'+' if acc else ''}= dz^T h (2NVH; "
        f"{'an fp32 block accumulator of ' + _gb(4 * vrows * HIDDEN) if acc else 'written once'}): {_ms(bwd)}.",
        f"- projected forward + backward: 4 GEMMs x 2NVH = 8NVH FLOP, {_ms(total)} = {total / floor:.2f} x the "
        f"6NVH matmul floor.",
    ]


def projections() -> str:
    from s1fast_kernels.linear_cross_entropy_op import _default_chunk
    rope_tok = N * (HQ + HK) * HEAD_DIM * BF16
    rope_tab = N * HEAD_DIM * BF16 * 2
    x = N * HIDDEN * BF16
    ff = N * INTER * BF16
    lines = [
        "| kernel (s1's shapes, bf16) | bytes it must move | time at 3.35 TB/s |",
        "|---|---|---|",
        memory_bound("RoPE fwd (or bwd), q+k, T=32768, 40/8 heads, d 128", 2 * rope_tok + rope_tab,
                     f"read + write q,k: 2 x T x (40+8) x 128 x 2 B, + cos/sin rows T x 128 x 2 x 2 B"),
        memory_bound("RMSNorm fwd [32768, 5120]", 2 * x, "read x, write y: 2 x N x H x 2 B"),
        memory_bound("RMSNorm bwd", 3 * x, "read x, dy, write dx: 3 x N x H x 2 B (+ fp32 dW partials, "
                     "4 x 132 x 5120 x 4 B = 11 MB)"),
        memory_bound("SwiGLU fwd [32768, 27648]", 3 * ff, "read gate, up, write out: 3 x N x I x 2 B"),
        memory_bound("SwiGLU bwd", 5 * ff, "read gate, up, dy, write dgate, dup: 5 x N x I x 2 B"),
        "",
        "Each of these kernels moves exactly these bytes once (one read of every input, one write of every "
        "output, statistics kept in registers), so the floor is its design target; whether it reaches 80% of "
        "it on a real H100 is for `bench/bench_kernels.py` to measure.",
        "",
        f"Fused linear cross-entropy, N={N}, H={HIDDEN}, V={VOCAB}, bf16 operands, fp32 accumulation:",
        "",
    ]
    lines += flce_projection(_default_chunk(N, VOCAB, on_gpu=True))
    lines += ["- MEASURED on an H200 since: see \"Kernel benchmarks at s1's shapes\" at the top of this file (the "
              "projection assumed GEMMs near peak)."]
    lines += ["", "A smaller chunk alone does not help: the fp32 accumulator stays, and the dW GEMM turns "
              "memory-bound (it reads and writes the accumulator every chunk), for example:", ""]
    lines += flce_projection(512)[1:4]
    lines += ["", "`low_memory=True` (no [V, H] fp32 accumulator; the weight gradient is made in the backward by "
              "vocabulary blocks, each reduced over all tokens inside one GEMM's fp32 accumulator):", ""]
    lines += flce_low_memory_projection()
    lines += ["", "Extra memory of both modes, counted (not computed by formula) on meta tensors running the GPU "
              "code path (`bench.kernel_memory.gpu_plan_extra`: `use_triton` says yes, the kernel launchers do "
              "nothing, every buffer is allocated at its real size):", "", gpu_memory_table(), "",
              "**Why no single mode meets both targets at these shapes** (time within 10% of the floor, extra memory "
              "under 1%): the floor, 6NVH, computes each logit once, and a row's gradient needs that row's "
              "log-sum-exp over the whole vocabulary first. So the gradient of every chunk of whole rows adds to "
              "every row of dW, and a [V, H] partial sum lives through the whole loop: 4VH = "
              f"{_gb(4 * VOCAB * HIDDEN)} in fp32 (the issue asks for fp32 accumulation), 2VH = "
              f"{_gb(2 * VOCAB * HIDDEN)} even in bf16 (Cut Cross-Entropy's default), against 1% of the unfused "
              "path = about 0.6 GB. Only summing straight into the bf16 gradient (rounding every chunk's partial "
              "sum) would avoid it, which the fp32 requirement rules out. Under 1% therefore means computing the "
              "logits twice, 8NVH = 1.33x the floor at best. s1fast offers both: the default (fast) and "
              "`low_memory=True`; the trainer uses the default, since its peak is set by the decoder layers, not "
              "the loss (Projected H100 run)."]
    return "\n".join(lines)


def gpu_memory_table() -> str:
    from bench.kernel_memory import gpu_plan_table
    return gpu_plan_table()


def memory_table() -> str:
    from bench.kernel_memory import table
    return table()



def section() -> str:
    env = environment("python -m bench.kernel_table")
    return "\n".join([
        BEGIN,
        "## Kernels",
        "",
        "### sm_90 resources (compiled on a CPU-only box with `triton.compile(..., GPUTarget('cuda', 90, 32))`, "
        "read from the cubin with `cuobjdump -res-usage`)",
        "",
        markdown_header(env),
        resource_table(),
        "",
        "Spills are the STACK + LOCAL bytes of the cubin (target: 0). Each row is the launch configuration the "
        "launcher picks at s1's shapes, with Triton's launch-time specialisation (unit strides constant, "
        "16-byte alignment) mirrored; `wgmma` = the PTX uses Hopper's warpgroup MMA.",
        "",
        "### PROJECTED cost at s1's shapes on an H100 (989 TFLOP/s dense bf16, 3.35 TB/s); not measured",
        "",
        projections(),
        "",
        "### COUNTED: fused linear cross-entropy memory on the CPU path (meta tensors, this commit)",
        "",
        f"Peak memory of forward + backward beyond the inputs, counted on meta tensors by "
        f"`python -m bench.kernel_memory`; {RSS_CHECK} The fused path stays flat as the tokens grow 8x (only "
        "dhidden and a few per-token vectors grow); the unfused one grows with N x V.",
        "",
        memory_table(),
        END,
    ])


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.kernel_table", description=__doc__.split("\n\n")[0])
    ap.add_argument("--write", action="store_true", help="replace the Kernels section in bench/RESULTS.md")
    args = ap.parse_args()
    text = section()
    if not args.write:
        print(text)
        return
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "RESULTS.md")
    old = open(path).read() if os.path.exists(path) else "# Benchmark results\n"
    if BEGIN in old:
        new = re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), lambda _: text, old, flags=re.S)
    else:
        new = old.rstrip("\n") + "\n\n" + text + "\n"
    with open(path, "w") as f:
        f.write(new)
    print(f"wrote the Kernels section of {path}")


if __name__ == "__main__":
    main()
