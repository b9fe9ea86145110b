#!/usr/bin/env bash
# One-shot verification on an air-gapped GPU node:  bash bench/run_gpu.sh [--dry-run] [--wheels DIR] OUT_DIR
#
# Stages, most important first, each under its own time cap and the whole under 9 minutes by this script's
# clock. Each stage writes its result file into OUT_DIR as soon as it ends and one line to OUT_DIR/summary.txt;
# a failing stage records its error (OUT_DIR/log.txt has every stage's output) and the next one runs.
#   install      wheels from --wheels DIR (bench/gpu-wheels.txt, pip --no-index), s1fast from this checkout
#                (CUDA extension built with the node's nvcc)                         -> environment.json
#   kernel_tests the float64 kernel tests, collate, native ops and attention tests   -> kernel_tests.txt
#   correctness  attention backends vs SDPA (fwd+bwd), CUDA collate, tiny training per backend vs CPU fp32,
#                --compile, budget-forced generation (bench/gpu_correctness.py)     -> correctness.json
#   throughput   one-GPU training at the Qwen2.5-7B shape, 32768-token packs, --checkpoint-budget-gb -1:
#                tokens/s, MFU, peak vs the memory model (bench/gpu_throughput.py)  -> throughput.json
#   kernels      kernel benchmarks at s1's shapes (bench/bench_kernels.py)          -> kernels.json
#   attention    the packed-attention backends at s1's shapes (bench/bench_attention.py) -> attention.json
# --dry-run runs the same stages at toy sizes with the CPU stand-ins (CI runs it; nothing is installed).
# --stages a,b:CAP,... runs those stages only, in that order, each under its own cap or CAP seconds.
# --no-build installs the wheels but not s1fast's extension (saves ~80 s): only for kernel_tests, kernels and
# attention; the trainer's planner is native, so correctness' training and throughput need the build.
# To add a stage: write stage_NAME below and add "NAME CAP_SECONDS" to STAGES.
set -uo pipefail
cd "$(dirname "$0")/.."

usage() { echo "usage: bash bench/run_gpu.sh [--dry-run] [--wheels DIR] [--stages a,b] [--no-build] OUT_DIR   (see the header of this file)"; }
DRY=0 WHEELS="" OUT="" ONLY="" NO_BUILD=0
CMDLINE="bash bench/run_gpu.sh $*"
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1 ;;
    --wheels) [ $# -ge 2 ] || { echo "error: --wheels needs a folder" >&2; exit 2; }; WHEELS="$2"; shift ;;
    --stages) [ $# -ge 2 ] || { echo "error: --stages needs a comma-separated list" >&2; exit 2; }; ONLY="$2"; shift ;;
    --no-build) NO_BUILD=1 ;;
    -h|--help) usage; exit 0 ;;
    -*) echo "error: unknown option $1; $(usage)" >&2; exit 2 ;;
    *) [ -z "$OUT" ] || { echo "error: one OUT_DIR only (got $OUT and $1)" >&2; exit 2; }; OUT="$1" ;;
  esac
  shift
done
[ -n "$OUT" ] || { echo "error: OUT_DIR is missing; $(usage)" >&2; exit 2; }
[ -z "$WHEELS" ] || [ -d "$WHEELS" ] || { echo "error: --wheels $WHEELS is not a folder" >&2; exit 2; }
mkdir -p "$OUT" || { echo "error: cannot create $OUT" >&2; exit 2; }
OUT="$(cd "$OUT" && pwd)"
PY="${PYTHON:-python}"
export DRY WHEELS OUT PY CMDLINE NO_BUILD
TOTAL_S="${S1FAST_GPU_TOTAL_S:-530}"   # the whole script; 9 minutes less a margin
SCALE=1; [ "$DRY" = 1 ] && SCALE="${S1FAST_DRY_CAP_SCALE:-4}"  # a shared CPU box is slow: dry-run caps x4
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
[ "$DRY" = 1 ] || unset TRITON_INTERPRET
: > "$OUT/summary.txt"; : > "$OUT/log.txt"

# ---------------------------------------------------------------------------------------------- the stages
# name and time cap in seconds, in order of importance
# (caps from the first H200 visit: install took 79 s; 95 s of kernel tests on 12 workers ran 128 of 145)
STAGES=("install 100" "kernel_tests 110" "correctness 110" "throughput 120" "kernels 100" "attention 60")
if [ -n "$ONLY" ]; then
  picked=()
  for item in ${ONLY//,/ }; do  # NAME or NAME:CAP_SECONDS
    name="${item%%:*}" hit=""
    for e in "${STAGES[@]}"; do [ "${e%% *}" = "$name" ] && hit="$e"; done
    [ -n "$hit" ] || { echo "error: --stages: no stage named '$name' (stages: ${STAGES[*]%% *})" >&2; exit 2; }
    [ "$item" = "$name" ] || hit="$name ${item#*:}"
    [[ "${hit#* }" =~ ^[0-9]+$ ]] || { echo "error: --stages: '$item' is not NAME or NAME:SECONDS" >&2; exit 2; }
    picked+=("$hit")
  done
  STAGES=("${picked[@]}")
fi

stage_install() {
  if [ -n "$WHEELS" ]; then
    if [ "$DRY" = 1 ]; then  # resolve against the folder only, install nothing
      "$PY" -m pip install --dry-run --ignore-installed --no-index --no-deps --find-links "$WHEELS" \
        -r bench/gpu-wheels.txt || return 1
    else
      "$PY" -m pip install --no-index --no-deps --find-links "$WHEELS" -r bench/gpu-wheels.txt || return 1
    fi
  else
    echo "no --wheels folder: assuming bench/gpu-wheels.txt is installed already"
  fi
  if [ "$DRY" = 1 ]; then
    echo "dry run: s1fast is used from this checkout as built"
  elif [ "$NO_BUILD" = 1 ]; then
    echo "--no-build: s1fast is used from this checkout without its native extension"
    [ -e s1fast_kernels ] || ln -s triton_kernels s1fast_kernels
  else
    # an editable install; failing that (no pip build support), the extension built in place
    MAX_JOBS="${MAX_JOBS:-$(nproc)}" "$PY" -m pip install --no-index --no-build-isolation --no-deps -e . \
      || MAX_JOBS="${MAX_JOBS:-$(nproc)}" "$PY" setup.py build_ext --inplace || return 1
    [ -e s1fast_kernels ] || "$PY" -c "import s1fast_kernels" 2>/dev/null || ln -s triton_kernels s1fast_kernels
  fi
  "$PY" - "$OUT/environment.json" "$CMDLINE" <<'PY' || return 1
import json, os, sys, torch
from bench.env import environment
import s1fast._native as native, s1fast_kernels  # noqa: F401
env = environment(sys.argv[2])
env["cuda"] = {"available": torch.cuda.is_available(), "torch_cuda": torch.version.cuda,
               "devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
               "memory_gib": [torch.cuda.get_device_properties(i).total_memory / 2**30
                              for i in range(torch.cuda.device_count())]}
env["native_extension"] = native.available()
env["native_cuda_collate"] = bool(native.available() and hasattr(torch.ops.s1fast, "pack_collate"))
json.dump(env, open(sys.argv[1], "w"), indent=1)
print(f"installed: torch {torch.__version__} (CUDA {torch.version.cuda}), devices {env['cuda']['devices']}, "
      f"native extension {'ok' if env['native_extension'] else 'MISSING'}")
if not native.available() and os.environ.get("NO_BUILD") != "1":
    sys.exit("s1fast._C did not build/import")
PY
}

stage_kernel_tests() {
  local files=(tests/test_kernel_*.py tests/test_packing_collate.py tests/test_native.py tests/test_model_attention.py)
  local sel=() par=()
  [ "$NO_BUILD" = 1 ] && files=(tests/test_kernel_*.py tests/test_model_attention.py)
  [ "$DRY" = 1 ] && files=(tests/test_packing_collate.py) && sel=(-k "empty or errors")  # the plumbing only
  # in parallel where pytest-xdist is installed (each test compiles its kernels: the CPUs are the bottleneck);
  # -v names each test as it ends, so a stage cut short still shows what passed and what failed
  [ "$DRY" = 1 ] || ! "$PY" -c "import xdist" 2>/dev/null || par=(-n "$(( $(nproc) < 12 ? $(nproc) : 12 ))")
  "$PY" -m pytest -v -rfEs --tb=short -p no:cacheprovider "${par[@]}" "${files[@]}" "${sel[@]}" \
    > "$OUT/kernel_tests.txt" 2>&1
  local rc=$?
  tail -3 "$OUT/kernel_tests.txt"
  return $rc
}

stage_correctness() {
  local small=(); [ "$DRY" = 1 ] && small=(--small)
  "$PY" -m bench.gpu_correctness --out "$OUT/correctness.json" "${small[@]}"
}

stage_kernels() {
  # one pytest run per kernel, merged into kernels.json after each: a run cut short keeps what it finished
  local k rc=0 tmp="$OUT/.kernels_part.json" kernels=(fused_linear_cross_entropy rope rms_norm swiglu)
  [ -z "${S1FAST_GPU_KERNELS:-}" ] || IFS=';' read -r -a kernels <<< "$S1FAST_GPU_KERNELS"  # -k expressions
  [ "$DRY" = 1 ] && kernels=(swiglu)  # all skipped on a CPU: one run shows the plumbing
  for k in "${kernels[@]}"; do
    if [ "$DRY" = 1 ]; then
      S1FAST_BENCH_TOKENS=64 "$PY" -m pytest -q -p no:cacheprovider bench/bench_kernels.py -k "$k" \
        --benchmark-json="$tmp" || [ $? = 5 ] || rc=1   # exit 5: all skipped (no GPU)
    else
      S1FAST_BENCH_ROUNDS="${S1FAST_BENCH_ROUNDS:-5}" "$PY" -m pytest -q -p no:cacheprovider bench/bench_kernels.py \
        -k "$k" --benchmark-columns=median,min,max --benchmark-json="$tmp" || rc=1
    fi
    "$PY" - "$tmp" "$OUT/kernels.json" "$k" <<'PY'
import json, os, sys
part, out, name = sys.argv[1:]
merged = json.load(open(out)) if os.path.exists(out) else {"benchmarks": [], "kernels_run": []}
if os.path.exists(part):
    p = json.load(open(part))
    merged["benchmarks"] += p.get("benchmarks", [])
    merged.setdefault("machine_info", p.get("machine_info"))
    os.remove(part)
merged["kernels_run"].append(name)
json.dump(merged, open(out, "w"), indent=1)
print(f"kernels.json: {len(merged['benchmarks'])} benchmarks after {name}")
PY
  done
  return $rc
}

stage_attention() {
  # the packed-attention backends (triton, varlen, flash where installed, flex, sdpa_doc) at s1's shapes
  local dry=(); [ "$DRY" = 1 ] && dry=(--dry-run --lengths 3,20 --backends triton,sdpa_doc)
  "$PY" -m bench.bench_attention --json "$OUT/attention.json" "${dry[@]}"
}

stage_throughput() {
  local small=(); [ "$DRY" = 1 ] && small=(--small)
  "$PY" -m bench.gpu_throughput --out "$OUT/throughput.json" --timeout "$(( ${CAP:-200} - 10 ))" "${small[@]}"
}

# ---------------------------------------------------------------------------------------------- the runner
START=$SECONDS
echo "[run_gpu] $(date -u +%FT%TZ) dry_run=$DRY wheels=${WHEELS:-none} out=$OUT python=$("$PY" -V 2>&1)" | tee -a "$OUT/log.txt"
for entry in "${STAGES[@]}"; do
  read -r name cap <<< "$entry"
  cap=$(( cap * SCALE )); left=$(( TOTAL_S * SCALE - (SECONDS - START) ))
  if [ "$left" -lt 15 ]; then
    echo "$name: SKIPPED (the script's $(( TOTAL_S * SCALE ))s are spent)" >> "$OUT/summary.txt"; continue
  fi
  CAP=$(( cap < left ? cap : left ))
  t0=$SECONDS
  echo "=== stage $name (cap ${CAP}s) ===" >> "$OUT/log.txt"
  # each stage in its own shell under timeout; its output goes to log.txt, its last line to the summary
  export CAP
  timeout --kill-after=10 "$CAP" bash -c "$(declare -f "stage_$name"); stage_$name" >> "$OUT/log.txt" 2>&1
  rc=$?
  dt=$(( SECONDS - t0 ))
  last="$(grep -v '^\s*$' "$OUT/log.txt" | tail -1 | cut -c1-300)"
  if [ "$rc" = 0 ]; then status=ok; elif [ "$rc" = 124 ] || [ "$rc" = 137 ]; then status="TIMEOUT after ${CAP}s"; \
    else status="FAILED (exit $rc)"; fi
  echo "$name: $status in ${dt}s | $last" | tee -a "$OUT/summary.txt"
done
# keep every file under 16 MiB (the log is the only one that can grow without bound)
if [ "$(stat -c %s "$OUT/log.txt")" -gt 15000000 ]; then
  tail -c 15000000 "$OUT/log.txt" > "$OUT/log.tmp" && mv "$OUT/log.tmp" "$OUT/log.txt"
fi
rm -f "$OUT/.kernels_part.json"
echo "total: $(( SECONDS - START ))s of $(( TOTAL_S * SCALE ))s; results in $OUT" | tee -a "$OUT/summary.txt"
grep -q -E "FAILED|TIMEOUT|SKIPPED" "$OUT/summary.txt" && exit 1
exit 0
