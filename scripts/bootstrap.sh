#!/usr/bin/env bash
# Create .venv and install edgec with the host-side SDK, Keras/TensorFlow input and test tools. Idempotent.
# torch is pinned as torch==2.13.0: that spelling takes the CPU build; any other pulls CUDA.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
.venv/bin/python -m pip install -q --disable-pip-version-check "torch==2.13.0"
.venv/bin/python -m pip install -q --disable-pip-version-check -c constraints.txt -e ".[all,dev,tf]"
# Tests run the real services: Debian's mosquitto (MQTT telemetry, fleet rollout), its clients
# (mosquitto_pub/_sub, as the docs use them), prometheus (promtool's linter and a real scrape of
# /metrics), chromium (the dashboard page), nginx (bundles served by URL, with range requests), and a
# two-node MQTT cluster: aedes nodes (aedes-cli from npm, pinned in deploy/cluster) joined through redis-server.
missing=""
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || missing="$missing mosquitto openssl"
command -v mosquitto_sub >/dev/null 2>&1 || missing="$missing mosquitto-clients"
command -v curl >/dev/null 2>&1 || missing="$missing curl"
command -v promtool >/dev/null 2>&1 || missing="$missing prometheus"
command -v chromium >/dev/null 2>&1 || missing="$missing chromium"
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing="$missing nginx-light"
command -v redis-server >/dev/null 2>&1 || missing="$missing redis-server"
command -v node >/dev/null 2>&1 || missing="$missing nodejs npm"
if [ -n "$missing" ]; then
  if command -v apt-get >/dev/null 2>&1; then
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo -n"
    { $SUDO apt-get update -qq && $SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null; } ||
      echo "warning: could not install$missing; the tests that need them cannot run (apt-get install$missing)" >&2
  else
    echo "warning:$missing not installed and no apt-get; the tests that need them cannot run" >&2
  fi
fi
# The cluster's aedes needs Node.js 20 or newer (Debian bookworm's is 18: use NodeSource's, or the machine's).
if command -v npm >/dev/null 2>&1 && node -e 'process.exit(parseInt(process.versions.node) < 20 ? 1 : 0)'; then
  npm ci --silent --no-audit --no-fund --prefix deploy/cluster >/dev/null ||
    echo "warning: npm ci --prefix deploy/cluster failed; the MQTT cluster test cannot run" >&2
else
  echo "warning: Node.js 20+ not found; the MQTT cluster test (tests/runtime/test_cluster.py) cannot run" >&2
fi
