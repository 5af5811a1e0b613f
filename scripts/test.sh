#!/usr/bin/env bash
# Set up (first run only) and run the test suite. "No tests collected" is a failure.
set -uo pipefail
cd "$(dirname "$0")/.."
./scripts/bootstrap.sh || exit 1
# Every test, the ones marked slow included (a plain `pytest` skips those): -m "not slow" for the fast set.
# Two workers, each taking whole files (a file's tests keep their order: the docs pages build on each
# other); many tests wait on brokers, servers and outages, so two share two cores well. The tests
# marked serial assert what the precision search ships, which it decides by measured speed: they
# run afterwards, alone, so the other worker's load cannot change the decision.
pytest=(.venv/bin/python -m pytest -q)
parallel=(-n "${EDGEC_TEST_WORKERS:-2}" --dist loadfile)
failed_or_empty() {  # exit status of a pytest run: 5 (nothing collected) is a failure here
  if [ "$1" -eq 5 ]; then echo "error: pytest collected no tests" >&2; return 1; fi
  return "$1"
}
if printf '%s\n' "$@" | grep -qx -- '-m'; then   # the caller chose the tests: one run, as asked
  "${pytest[@]}" "${parallel[@]}" "$@"
  failed_or_empty $?
  exit $?
fi
"${pytest[@]}" -m "(slow or not slow) and not serial" "${parallel[@]}" "$@"
first=$?
"${pytest[@]}" -m "(slow or not slow) and serial" "$@"
second=$?
for status in "$first" "$second"; do
  if [ "$status" -ne 0 ] && [ "$status" -ne 5 ]; then exit "$status"; fi
done
if [ "$first" -eq 5 ] && [ "$second" -eq 5 ]; then
  echo "error: pytest collected no tests" >&2
  exit 1
fi
exit 0
