#!/usr/bin/env bash
# The test suite on a CPU box: installs what it needs (scripts/bootstrap.sh), then runs pytest; then the kernel,
# model and fake-"cuda" tests again against the GPU node's versions (scripts/test_gpu_versions.sh: a second
# environment, built once and cached; 2.6 GB of downloads and about 4 minutes the first time on a new box).
# The second run is skipped when arguments pick tests (bash scripts/test.sh tests/test_x.py -k y) or when
# S1FAST_SKIP_GPU_VERSIONS=1 (say so when you report a result).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
# shellcheck disable=SC1091
. .venv/bin/activate
set +e
python -m pytest -q -p no:cacheprovider --durations=30 tests "$@"
rc=$?
[ "$rc" -eq 5 ] && { echo "no tests were collected" >&2; exit 1; }
rc2=0
if [ "${S1FAST_SKIP_GPU_VERSIONS:-0}" != 1 ] && [ $# -eq 0 ]; then
  echo "[test.sh] the same kernel, model and fake-cuda tests on the GPU node's versions"
  bash scripts/test_gpu_versions.sh --durations=10
  rc2=$?
else
  echo "[test.sh] the GPU node's versions were NOT tested (arguments given, or S1FAST_SKIP_GPU_VERSIONS=1)"
fi
[ "$rc" -ne 0 ] && exit "$rc"
exit "$rc2"
