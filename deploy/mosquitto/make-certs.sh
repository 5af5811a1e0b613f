#!/usr/bin/env bash
# A private CA and the broker's TLS certificate: make-certs.sh OUTDIR BROKER_HOSTNAME [IP]
# Boards and hosts verify the broker with OUTDIR/ca.crt ([telemetry] ca_file, edgec fleet --ca-file).
# Keep ca.key offline; re-run with another hostname to add a broker.
set -euo pipefail
out=${1:?usage: make-certs.sh OUTDIR BROKER_HOSTNAME [IP]}
host=${2:?usage: make-certs.sh OUTDIR BROKER_HOSTNAME [IP]}
san="DNS:$host"
if [ -n "${3:-}" ]; then san="$san,IP:$3"; fi
mkdir -p "$out"
umask 077
if [ ! -f "$out/ca.key" ]; then
  openssl req -x509 -newkey rsa:3072 -sha256 -days 3650 -nodes -subj "/CN=edgec fleet CA" \
    -keyout "$out/ca.key" -out "$out/ca.crt" 2>/dev/null
fi
openssl req -newkey rsa:3072 -sha256 -nodes -subj "/CN=$host" -keyout "$out/server.key" \
  -out "$out/server.csr" 2>/dev/null
openssl x509 -req -in "$out/server.csr" -CA "$out/ca.crt" -CAkey "$out/ca.key" -CAcreateserial -days 825 \
  -sha256 -extfile <(printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth\n' "$san") \
  -out "$out/server.crt" 2>/dev/null
rm -f "$out/server.csr"
chmod 644 "$out/ca.crt" "$out/server.crt"
echo "CA $out/ca.crt (give it to boards and hosts), broker certificate $out/server.crt for $san"
