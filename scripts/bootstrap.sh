#!/usr/bin/env bash
# Make ./.venv with everything s1fast needs on a CPU box, and build the native extension.
# Idempotent: re-installs only when the requirements, setup.py or csrc/ changed. pip's output goes to
# .venv/install.log (shown if something fails).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PY" -m venv .venv
# shellcheck disable=SC1091
. .venv/bin/activate
want=$(cat scripts/requirements-cpu.txt setup.py csrc/* | sha256sum | cut -d' ' -f1)
ready() { python -c "import torch, s1fast._C, s1fast_kernels, transformers" >/dev/null 2>&1; }
if [ "$(cat .venv/.s1fast-stamp 2>/dev/null)" != "$want" ] || ! ready; then
  echo "[s1fast] installing into .venv (first run: about two minutes; log in .venv/install.log)" >&2
  log=.venv/install.log
  : > "$log"
  step() { "$@" >>"$log" 2>&1 || { echo "[s1fast] install step failed: $*" >&2; tail -n 60 "$log" >&2; exit 1; }; }
  step python -m pip install --upgrade pip
  step python -m pip install -r scripts/requirements-cpu.txt
  step python -m pip install --no-build-isolation -e .
  ready || { echo "[s1fast] installed, but s1fast._C does not import:" >&2;
             python -c "import torch, s1fast._C" >&2; exit 1; }
  echo "$want" > .venv/.s1fast-stamp
fi
