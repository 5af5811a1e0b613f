#!/usr/bin/env bash
# Passwords for the compose broker, made once before `docker compose up`:
#   ./deploy/compose/secrets.sh            -> deploy/compose/secrets/
# writes passwd (mosquitto's hashed password file), edgec-1.password (the board's, mounted as a
# secret), dashboard.env (its broker password and the page's token: open
# http://localhost:8090/?token=<EDGEC_DASHBOARD_TOKEN> once) and fleet-admin.env (for
# `edgec fleet ... --username fleet-admin`). Existing files are kept; remove the folder to renew.
set -euo pipefail
out=${1:-"$(dirname "$0")/secrets"}
mkdir -p "$out"
umask 077
if [ -f "$out/passwd" ]; then
  echo "$out/passwd exists: kept (remove $out to make new passwords)"
  exit 0
fi
hash() {  # user password: append to passwd with mosquitto's own tool (local, else its image)
  if command -v mosquitto_passwd >/dev/null; then
    mosquitto_passwd -b "$out/passwd" "$1" "$2"
  else
    docker run --rm -v "$(cd "$out" && pwd):/s" eclipse-mosquitto:2 mosquitto_passwd -b /s/passwd "$1" "$2"
  fi
}
touch "$out/passwd"
for user in edgec-1 dashboard fleet-admin; do
  password=$(openssl rand -hex 16)
  hash "$user" "$password"
  if [ "$user" = edgec-1 ]; then
    printf '%s\n' "$password" > "$out/$user.password"
  else
    printf 'EDGEC_MQTT_PASSWORD=%s\n' "$password" > "$out/$user.env"
  fi
done
printf 'EDGEC_DASHBOARD_TOKEN=%s\n' "$(openssl rand -hex 16)" >> "$out/dashboard.env"
chmod 644 "$out/passwd" "$out/edgec-1.password" "$out/dashboard.env"  # read by the containers' users
echo "passwords in $out; for edgec fleet ... --username fleet-admin: export \$(cat $out/fleet-admin.env)"
echo "the dashboard: http://localhost:8090/?token=$(sed -n 's/^EDGEC_DASHBOARD_TOKEN=//p' "$out/dashboard.env")"
