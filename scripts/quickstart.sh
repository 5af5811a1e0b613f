#!/usr/bin/env bash
# Set up (first run only) and run the whole edgec path on real digits data.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/bootstrap.sh
exec .venv/bin/edgec quickstart --force "$@"
