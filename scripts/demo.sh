#!/usr/bin/env bash
# The embedded default: installs what it needs, then runs s1fast's main job on the bundled sample.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
# shellcheck disable=SC1091
. .venv/bin/activate
python -m s1fast.data prepare --recipe s1 --max-tokens 16384 --policy drop --out runs/demo/tokens "$@"
