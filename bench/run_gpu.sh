#!/usr/bin/env bash
# Every GPU benchmark, in one command, on a GPU node (an H100 or H200 for the figures in bench/RESULTS.md):
#  1. the kernels at s1's shapes against PyTorch, torch.compile, F.linear_cross_entropy and Liger-Kernel;
#  2. the packing planner (CPU-bound, recorded beside the GPU numbers for the same machine);
#  3. a training throughput run of s1fast on a real model shape (random init: no weights needed),
#     recording tokens/s, MFU and peak memory from metrics.jsonl: every block checkpointed, then the
#     projection's configuration (torch.compile, adaptive checkpointing within the GPU's memory), which also
#     checks the memory model the adaptive checkpointing relies on against a real peak;
#  4. the kernel tests on the GPU: the compiled Triton kernels against the float64 references (tests/kernel_testing.py,
#     on_kernel_device), recorded, not fatal to the benchmarks.
# Results land in bench/gpu_results/ with hardware, versions, commit and command (bench/env.py).
set -euo pipefail
cd "$(dirname "$0")/.."
python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA GPU: these benchmarks need one (bench/RESULTS.md has the projected figures)')"
out=bench/gpu_results
mkdir -p "$out"
python -c "import json; from bench.env import environment; print(json.dumps(environment('bash bench/run_gpu.sh'), indent=1))" > "$out/environment.json"
python -m pytest -q bench/bench_kernels.py --benchmark-columns=median,min,max --benchmark-json="$out/kernels.json"
python -m pytest -q bench/bench_packing.py --benchmark-columns=min,mean,rounds --benchmark-json="$out/packing.json"
MODEL="${S1FAST_BENCH_MODEL:-Qwen2.5-1.5B-Instruct}"
NGPU="$(python -c 'import torch; print(torch.cuda.device_count())')"
summary() {
  python - "$1" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])][2:]  # the first two steps warm up (compile, allocator)
print(f"{sys.argv[1]}: steps {len(rows)}: tokens/s median {statistics.median(r['tokens_per_s'] for r in rows):.0f}, "
      f"MFU median {100 * statistics.median(r['mfu'] for r in rows):.1f}%, "
      f"peak memory {max(r['peak_memory_gb'] for r in rows):.1f} GiB, step time median "
      f"{statistics.median(r['step_time'] for r in rows):.2f} s, checkpointed blocks "
      f"{sorted({r.get('checkpointed_layers', 'all') for r in rows}, key=str)}")
PY
}
common=(--model "$MODEL" --recipe s1 --max-tokens 8192 --policy truncate --global-batch 16 --epochs 1 --max-steps 12
        --dtype bf16 --activation-checkpointing full --export false --save-every 0 --progress false)
torchrun --standalone --nproc_per_node "$NGPU" -m s1fast.train "${common[@]}" --output-dir "$out/train_$MODEL"
summary "$out/train_$MODEL/metrics.jsonl" | tee "$out/train_summary.txt"
torchrun --standalone --nproc_per_node "$NGPU" -m s1fast.train "${common[@]}" --compile --checkpoint-budget-gb -1 \
  --output-dir "$out/train_${MODEL}_adaptive"
summary "$out/train_${MODEL}_adaptive/metrics.jsonl" | tee -a "$out/train_summary.txt"
set +e
python -m pytest -q tests/test_kernel_*.py > "$out/kernel_tests_gpu.txt" 2>&1
echo "kernel tests on the GPU: exit $? (bench/gpu_results/kernel_tests_gpu.txt)" | tee -a "$out/train_summary.txt"
set -e
echo "[s1fast] GPU benchmark results in $out/"
