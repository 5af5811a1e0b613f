#!/usr/bin/env bash
# Set up (first run only) and run the test suite. "No tests collected" is a failure.
set -uo pipefail
cd "$(dirname "$0")/.."
./scripts/bootstrap.sh || exit 1
# Every test, the ones marked slow included (a plain `pytest` skips those): -m "not slow" for the fast set.
# Two workers, each taking whole files (a file's tests keep their order: the docs pages build on each
# other); many tests wait on brokers, servers and outages, so two share two cores well.
.venv/bin/python -m pytest -q -m "slow or not slow" -n "${EDGEC_TEST_WORKERS:-2}" --dist loadfile "$@"
status=$?
if [ "$status" -eq 5 ]; then
  echo "error: pytest collected no tests" >&2
  exit 1
fi
exit "$status"
