#!/usr/bin/env bash
# Checks the shipped systemd unit and sysusers entries (make unit, part of make test):
#   - systemd-analyze verify on a copy of configs/custos.service whose ExecStart points at the agentctl just
#     built (verify needs the binary to exist; the shipped unit names /usr/bin/agentctl), failing on any
#     warning (verify exits 0 on an unknown key or an unparsable value);
#   - systemd-analyze security --offline: the exposure must not rise above MAX_EXPOSURE (the README gives the
#     figure);
#   - systemd-sysusers --dry-run on configs/custos-transport.sysusers.conf in an empty root.
# Usage: BIN=./bin test/unit-check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-$PWD/bin}
MAX_EXPOSURE=${MAX_EXPOSURE:-3.0}
unit=configs/custos.service
sysusers=configs/custos-transport.sysusers.conf

for tool in systemd-analyze systemd-sysusers; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "unit-check: $tool is missing (Debian package systemd; test/install-deps.sh installs it)" >&2
    exit 1
  fi
done
if [ ! -x "$BIN/agentctl" ]; then
  echo "unit-check: $BIN/agentctl is missing; run make build first" >&2
  exit 1
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# The shipped unit runs the installed binary; the copy runs the built one, nothing else changes.
want='^ExecStart=/usr/bin/agentctl --home /var/lib/custos run '
if [ "$(grep -c "$want" "$unit")" != 1 ]; then
  echo "unit-check: $unit must have exactly one line matching '$want'" >&2
  exit 1
fi
sed "s|^ExecStart=/usr/bin/agentctl |ExecStart=$BIN/agentctl |" "$unit" >"$tmp/custos.service"
if ! out=$(systemd-analyze verify "$tmp/custos.service" 2>&1) || [ -n "$out" ]; then
  echo "unit-check: systemd-analyze verify $unit:" >&2
  echo "${out//$tmp\//configs/}" >&2
  exit 1
fi

sec=$(systemd-analyze security --offline=true "$tmp/custos.service" 2>&1 | tail -n 1)
exposure=$(sed -n 's/.*Overall exposure level for custos.service: \([0-9.]*\).*/\1/p' <<<"$sec")
if [ -z "$exposure" ]; then
  echo "unit-check: systemd-analyze security --offline=true gave no exposure: $sec" >&2
  exit 1
fi
if ! awk -v e="$exposure" -v m="$MAX_EXPOSURE" 'BEGIN { exit !(e <= m) }'; then
  echo "unit-check: exposure $exposure is above $MAX_EXPOSURE: a hardening setting was lost (systemd-analyze security --offline=true $unit lists them)" >&2
  exit 1
fi

mkdir -p "$tmp/root/usr/lib/sysusers.d" "$tmp/root/etc"
cp "$sysusers" "$tmp/root/usr/lib/sysusers.d/custos.conf"
out=$(systemd-sysusers --root="$tmp/root" --dry-run 2>&1) || { echo "unit-check: systemd-sysusers: $out" >&2; exit 1; }
if grep -q 'custos.conf:[0-9]' <<<"$out"; then
  echo "unit-check: $sysusers:" >&2
  grep 'custos.conf:[0-9]' <<<"$out" >&2
  exit 1
fi
for u in custos custos-transport; do
  grep -q "Creating user '$u'" <<<"$out" || { echo "unit-check: $sysusers does not create user $u" >&2; exit 1; }
done

echo "unit-check: $unit verifies; exposure $exposure (at most $MAX_EXPOSURE); $sysusers creates custos, custos-transport"
