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
# /metrics), chromium (the dashboard page) and nginx (bundles served by URL, with range requests).
missing=""
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || missing="$missing mosquitto openssl"
command -v mosquitto_sub >/dev/null 2>&1 || missing="$missing mosquitto-clients"
command -v curl >/dev/null 2>&1 || missing="$missing curl"
command -v promtool >/dev/null 2>&1 || missing="$missing prometheus"
command -v chromium >/dev/null 2>&1 || missing="$missing chromium"
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing="$missing nginx-light"
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
