#!/usr/bin/env bash
# The kernel, model and custom-op tests against the GPU node's versions (torch 2.11 CUDA build, triton 3.6,
# transformers 5.17, Python 3.12) on this CPU box, in a second environment cached under
# ~/.cache/s1fast-gpu-versions (built once, about 2.6 GB of wheels; rebuilt when the pins below change).
# numpy < 2.4: triton 3.6's interpreter converts 1-element arrays to ints, which numpy 2.4 refuses (2.3 warns).
# The same environment runs the fake-"cuda" training step (tests/test_fake_cuda.py), which needs a CUDA
# build of torch: the CPU build aborts in autograd on fake CUDA tensors.
#   bash scripts/test_gpu_versions.sh [pytest args]      (S1FAST_GPU_VERSIONS_CACHE=DIR moves the cache)
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE="${S1FAST_GPU_VERSIONS_CACHE:-$HOME/.cache/s1fast-gpu-versions}"
PINS=(torch==2.11.0 triton==3.6.0 transformers==5.17.0 safetensors "numpy<2.4" tqdm ninja pytest hypothesis
      setuptools wheel)
VENV="$CACHE/venv"
find_python312() {
  for c in python3.12 "$(command -v pyenv >/dev/null && PYENV_VERSION=3.12.1 pyenv which python 2>/dev/null)"; do
    [ -n "$c" ] && "$c" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))' 2>/dev/null && { echo "$c"; return; }
  done
  echo "error: no Python 3.12 found (the GPU node's version); install one (e.g. pyenv install 3.12)" >&2; exit 2
}
stamp="$(printf '%s\n' "${PINS[@]}" | cat - bench/gpu-wheels.txt | sha1sum | cut -c1-12)"
if [ "$(cat "$VENV/.stamp" 2>/dev/null)" != "$stamp" ]; then
  PY312="$(find_python312)"
  t0=$SECONDS
  echo "[gpu-versions] building $VENV (torch 2.11 CUDA build: about 2.6 GB of wheels, cached in $CACHE/wheels)"
  mkdir -p "$CACHE/wheels"
  rm -rf "$VENV"
  "$PY312" -m venv "$VENV"
  # download what is missing into the cache (no-op when cached), then install offline from it
  "$VENV/bin/python" -m pip download -q --only-binary=:all: -d "$CACHE/wheels" "${PINS[@]}"
  "$VENV/bin/python" -m pip install -q --no-index --find-links "$CACHE/wheels" "${PINS[@]}"
  # what the node lacks, the way bench/run_gpu.sh installs it: offline, no dependency resolution
  "$VENV/bin/python" -m pip download -q --no-deps --only-binary=:all: -d "$CACHE/gpu-wheels" -r bench/gpu-wheels.txt
  "$VENV/bin/python" -m pip install -q --no-index --no-deps --find-links "$CACHE/gpu-wheels" -r bench/gpu-wheels.txt
  echo "$stamp" > "$VENV/.stamp"
  echo "[gpu-versions] built in $(( SECONDS - t0 ))s"
fi
# s1fast from this checkout, as the node installs it (the native extension for this Python and torch sits next to
# the CPU build's: another file name); again whenever the checkout moved (CI clones into a new folder)
# (asked from / so that this folder on sys.path cannot hide where the install points: both packages must)
here="$(cd / && "$VENV/bin/python" -c 'import os, torch, s1fast._C, s1fast, s1fast_kernels as k
print(*{os.path.dirname(os.path.dirname(m.__file__)) for m in (s1fast, k)})' 2>/dev/null || true)"
if [ "$here" != "$PWD" ]; then
  S1FAST_NO_CUDA=1 "$VENV/bin/python" -m pip install -q --no-index --no-build-isolation --no-deps -e . > /dev/null
fi
"$VENV/bin/python" -c 'import torch, triton, transformers; print(f"[gpu-versions] torch {torch.__version__}, triton {triton.__version__}, transformers {transformers.__version__}")'
set +e
"$VENV/bin/python" -m pytest -q -p no:cacheprovider tests/test_kernel_*.py tests/test_model.py \
  tests/test_model_attention.py tests/test_model_decode.py tests/test_fake_cuda.py "$@"
rc=$?
[ "$rc" -eq 5 ] && { echo "no tests were collected" >&2; exit 1; }
exit "$rc"
