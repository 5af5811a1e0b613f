#!/usr/bin/env bash
# Set up (first run only) and run the test suite. "No tests collected" is a failure.
set -uo pipefail
cd "$(dirname "$0")/.."
./scripts/bootstrap.sh || exit 1
# Every test, the ones marked slow included (a plain `pytest` skips those): -m "not slow" for the fast set.
.venv/bin/python -m pytest -q -m "slow or not slow" "$@"
status=$?
if [ "$status" -eq 5 ]; then
  echo "error: pytest collected no tests" >&2
  exit 1
fi
exit "$status"
