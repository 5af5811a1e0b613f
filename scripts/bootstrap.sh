#!/usr/bin/env bash
# Create .venv and install edgec with the host-side SDK and test tools. Idempotent.
# torch is pinned as torch==2.13.0: that spelling takes the CPU build; any other pulls CUDA.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
.venv/bin/python -m pip install -q --disable-pip-version-check "torch==2.13.0"
.venv/bin/python -m pip install -q --disable-pip-version-check -c constraints.txt -e ".[all,dev]"
# The MQTT telemetry tests and benchmark run a real broker: Debian's mosquitto.
if ! command -v mosquitto >/dev/null 2>&1 && [ ! -x /usr/sbin/mosquitto ]; then
  if command -v apt-get >/dev/null 2>&1; then
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo -n"
    { $SUDO apt-get update -qq && $SUDO apt-get install -y -qq mosquitto openssl >/dev/null; } ||
      echo "warning: could not install mosquitto; the MQTT tests need it (apt-get install mosquitto)" >&2
  else
    echo "warning: mosquitto is not installed; the MQTT tests need it" >&2
  fi
fi
