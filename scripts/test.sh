#!/usr/bin/env bash
# The test suite on a CPU box: installs what it needs (scripts/bootstrap.sh), then runs pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
# shellcheck disable=SC1091
. .venv/bin/activate
set +e
python -m pytest -q -p no:cacheprovider --durations=30 tests "$@"
rc=$?
set -e
[ "$rc" -eq 5 ] && { echo "no tests were collected" >&2; exit 1; }
exit "$rc"
