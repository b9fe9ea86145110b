#!/usr/bin/env bash
# Make ./.venv with everything s1fast needs on a CPU box, and build the native extension.
# Idempotent: re-installs only when the requirements, setup.py or csrc/ changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PY" -m venv .venv
# shellcheck disable=SC1091
. .venv/bin/activate
want=$(cat scripts/requirements-cpu.txt setup.py csrc/* | sha256sum | cut -d' ' -f1)
if [ "$(cat .venv/.s1fast-stamp 2>/dev/null)" != "$want" ] || ! python -c "import s1fast._C" 2>/dev/null; then
  echo "[s1fast] installing into .venv (first run takes about two minutes)" >&2
  python -m pip install -q --upgrade pip 2>&1 | grep -v "^WARNING: Location" >&2 || true
  python -m pip install -q -r scripts/requirements-cpu.txt 2>&1 | grep -v "^WARNING: Location" >&2 || true
  python -m pip install -q --no-build-isolation -e . 2>&1 | grep -vE "^WARNING: Location|^\s*$|!!|wheel_obj|warn" >&2 || true
  python -c "import s1fast._C, triton_kernels, transformers" || { echo "[s1fast] install failed" >&2; exit 1; }
  echo "$want" > .venv/.s1fast-stamp
fi
