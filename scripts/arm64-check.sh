#!/usr/bin/env bash
# The runtime as a Raspberry Pi / Jetson runs it: a Debian bookworm arm64 root under qemu-user.
#
#   sudo ./scripts/arm64-check.sh             # CPUs: cortex-a72 (Pi 4) and cortex-a76 (Pi 5)
#   EDGEC_ARM64_CPUS=cortex-a72 ./scripts/arm64-check.sh
#   EDGEC_ARM64_STEPS=measure ./scripts/arm64-check.sh   # only the --measure-on check (tests, parity, measure)
#   EDGEC_ARM64_STEPS=tests EDGEC_ARM64_TESTS=tests/runtime/test_fleet.py ./scripts/arm64-check.sh
#
# Builds the root once (debootstrap + qemu-user-static, cached in $EDGEC_ARM64_ROOT), installs
# edgec[runtime] from a wheel of this checkout plus PyPI's aarch64 wheels, and for each CPU runs
# `pytest tests/runtime` and a parity check: bundles converted on this x86 host for rpi4, rpi5
# and jetson-orin-nano, run on the 450 test digits, against the host's own outputs; it prints
# the largest difference, argmax agreement and the serving process's RSS; then `edgec convert
# --measure-on` from this host against `edgec serve` in the root (scripts/arm64_measure.py:
# emulated timings, so the plumbing is checked, not the numbers). Takes ~10-20 minutes
# (qemu emulates every instruction); not part of CI. Needs root (chroot, mounts) and apt-get.
set -euo pipefail
cd "$(dirname "$0")/.."
HERE=$PWD
ROOT=${EDGEC_ARM64_ROOT:-${XDG_CACHE_HOME:-$HOME/.cache}/edgec/arm64-bookworm}
CPUS=${EDGEC_ARM64_CPUS:-"cortex-a72 cortex-a76"}
STEPS=${EDGEC_ARM64_STEPS:-"tests parity measure"}
TESTS=${EDGEC_ARM64_TESTS:-tests/runtime}  # what the tests step runs, e.g. tests/runtime/test_fleet.py
MIRROR=${EDGEC_DEBIAN_MIRROR:-http://deb.debian.org/debian}
WORK=$ROOT/opt/edgec-check

say() { printf '\n== %s\n' "$*"; }
[ "$(id -u)" -eq 0 ] || { echo "error: run as root (chroot and bind mounts need it): sudo $0" >&2; exit 1; }

# -- tools: qemu-user-static, debootstrap, and the kernel's binfmt hook for aarch64 binaries ----------
if ! command -v qemu-aarch64-static >/dev/null || ! command -v debootstrap >/dev/null; then
  command -v apt-get >/dev/null || { echo "error: needs qemu-user-static and debootstrap (no apt-get here)" >&2; exit 1; }
  apt-get update -qq && apt-get install -y -qq --no-install-recommends qemu-user-static debootstrap binfmt-support >/dev/null
fi
[ -e /proc/sys/fs/binfmt_misc/register ] || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
[ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] || update-binfmts --enable qemu-aarch64
INTERP=$(sed -n 's/^interpreter //p' /proc/sys/fs/binfmt_misc/qemu-aarch64)

# -- the arm64 root (once) ---------------------------------------------------------------------------
if [ ! -f "$ROOT/.edgec-ready" ]; then
  say "building a Debian bookworm arm64 root in $ROOT (once)"
  rm -rf "$ROOT"
  mkdir -p "$ROOT"
  debootstrap --foreign --arch=arm64 --variant=minbase \
    --include=python3,python3-venv,ca-certificates,mosquitto,openssl,prometheus,systemd,nginx-light bookworm "$ROOT" "$MIRROR" >/dev/null
  mkdir -p "$ROOT$(dirname "$INTERP")"
  cp "$(readlink -f "$(command -v qemu-aarch64-static)")" "$ROOT$INTERP"
  chroot "$ROOT" /debootstrap/debootstrap --second-stage >/dev/null
  touch "$ROOT/.edgec-ready"
fi
# The kernel looks for the interpreter inside the root (no F flag): keep it there.
[ -x "$ROOT$INTERP" ] || { mkdir -p "$ROOT$(dirname "$INTERP")"; cp "$(readlink -f "$(command -v qemu-aarch64-static)")" "$ROOT$INTERP"; }

# -- mounts: /proc, /dev, DNS, and an aarch64 /proc/cpuinfo --------------------------------------------
# Under qemu-user the guest reads the host's x86 /proc/cpuinfo; onnxruntime's and LiteRT's CPU
# detection then crash at import. Show them what a Cortex-A board prints instead.
CPUINFO=$ROOT/opt/edgec-cpuinfo
mounted=()
cleanup() { for ((i=${#mounted[@]}-1; i>=0; i--)); do umount -l "${mounted[i]}" 2>/dev/null || true; done; }
trap cleanup EXIT
bind() { mkdir -p "$2"; [ -d "$1" ] || touch "$2"; mount --bind "$1" "$2"; mounted+=("$2"); }
mount -t proc proc "$ROOT/proc"; mounted+=("$ROOT/proc")
bind /dev "$ROOT/dev"
cp /etc/resolv.conf "$ROOT/etc/resolv.conf"

# -- host side: a wheel of this checkout, the tests, and bundles made here -------------------------------
[ -x .venv/bin/python ] || ./scripts/bootstrap.sh
say "building the edgec wheel and the host's bundles (rpi4, rpi5, jetson-orin-nano)"
rm -rf "$WORK/src" "$WORK/dist"
mkdir -p "$WORK/src" "$WORK/dist"
.venv/bin/python -m pip wheel -q --no-deps . -w "$WORK/dist" 2>/dev/null
cp -rL pyproject.toml tests benchmarks docs scripts deploy "$WORK/src/"  # -L: docs/telemetry.schema.json is a link
rm -rf "$WORK/src/tests/artifacts"
find "$WORK/src" -name __pycache__ -prune -exec rm -rf {} +
.venv/bin/python scripts/arm64_parity.py host "$WORK/parity"

# -- guest side: install, then per CPU the tests and the parity check ------------------------------------
# pip in the root trusts what this host trusts (a proxy's CA included).
cp /etc/ssl/certs/ca-certificates.crt "$WORK/host-ca.crt"
in_root() { chroot "$ROOT" /usr/bin/env -i HOME=/root PATH=/usr/local/bin:/usr/bin:/bin LANG=C.UTF-8 \
  PIP_CERT=/opt/edgec-check/host-ca.crt "$@"; }
# What the runtime tests run (a root built by an older version of this script may lack some).
for tool in mosquitto promtool systemd-analyze openssl nginx; do
  in_root sh -c "command -v $tool >/dev/null || [ -x /usr/sbin/$tool ]" || missing_tools="${missing_tools:-} $tool"
done
if [ -n "${missing_tools:-}" ]; then
  say "installing Debian packages in the arm64 root:${missing_tools}"
  in_root apt-get update -qq
  in_root apt-get install -y -qq --no-install-recommends mosquitto prometheus systemd openssl nginx-light >/dev/null
fi
say "installing edgec[runtime] in the arm64 root (PyPI's aarch64 wheels)"
WHEEL=$(basename "$(ls "$WORK"/dist/edgec-*.whl)")
[ -x "$ROOT/opt/venv/bin/python" ] || in_root python3 -m venv /opt/venv
in_root /opt/venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
in_root /opt/venv/bin/python -m pip install -q --disable-pip-version-check --force-reinstall --no-deps "/opt/edgec-check/dist/$WHEEL"
in_root /opt/venv/bin/python -m pip install -q --disable-pip-version-check "/opt/edgec-check/dist/$WHEEL[runtime]" \
  "pytest>=8" "jsonschema>=4.18" "jinja2>=3.1" "tritonclient[http,grpc]>=2.73" "aiohttp>=3.9" "fastjsonschema>=2.19"
in_root /opt/venv/bin/python -c "import platform, sys; print('guest:', platform.machine(), 'Python', sys.version.split()[0])"

status=0
for cpu in $CPUS; do
  python3 - "$cpu" > "$CPUINFO" <<'EOF'
import sys
part = {"cortex-a72": "0xd08", "cortex-a76": "0xd0b", "cortex-a53": "0xd03", "cortex-a78": "0xd41"}.get(sys.argv[1], "0xd08")
for n in range(4):
    print(f"processor\t: {n}\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm crc32 cpuid"
          f"{' atomics fphp asimdhp asimdrdm lrcpc dcpop asimddp' if part != '0xd08' and part != '0xd03' else ''}\n"
          f"CPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: {part}\nCPU revision\t: 1\n")
EOF
  mount --bind "$CPUINFO" "$ROOT/proc/cpuinfo"
  if [[ " $STEPS " == *" tests "* ]]; then
    say "QEMU_CPU=$cpu: pytest $TESTS"
    in_root /usr/bin/env QEMU_CPU="$cpu" sh -c "cd /opt/edgec-check/src && /opt/venv/bin/python -m pytest -q -p no:cacheprovider $TESTS" || status=1
  fi
  if [[ " $STEPS " == *" parity "* ]]; then
    say "QEMU_CPU=$cpu: parity with the x86 host, and memory"
    in_root /usr/bin/env QEMU_CPU="$cpu" /opt/venv/bin/python /opt/edgec-check/src/scripts/arm64_parity.py guest /opt/edgec-check/parity || status=1
  fi
  if [[ " $STEPS " == *" measure "* ]]; then
    say "QEMU_CPU=$cpu: edgec convert --measure-on a board in the root (emulated: the plumbing, not the numbers)"
    port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    rm -rf "$WORK/board" && mkdir -p "$WORK/board" && cp -r "$WORK/parity/rpi4-fp32" "$WORK/board/served"
    printf 'port = %s\nadmin_token = "arm64-check-admin-token-0123456789"\n[measure]\nenabled = true\ntimeout_s = 900\n[[models]]\nname = "digits"\npath = "served"\n' \
      "$port" > "$WORK/board/runtime.toml"
    in_root /usr/bin/env QEMU_CPU="$cpu" /opt/venv/bin/edgec serve --config /opt/edgec-check/board/runtime.toml \
      > "$WORK/board/serve.log" 2>&1 &
    .venv/bin/python scripts/arm64_measure.py "http://127.0.0.1:$port" "$WORK/parity" "$cpu" || { status=1; tail -20 "$WORK/board/serve.log"; }
    pkill -TERM -f "edgec-check/board/runtime.toml" || true
    wait
  fi
  umount -l "$ROOT/proc/cpuinfo"
done
exit $status
