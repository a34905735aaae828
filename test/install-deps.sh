#!/usr/bin/env bash
# Installs what the tests and the demo need when it is missing: SoftHSM2, swtpm, promtool and the prometheus
# server (test/e2e/prometheus_test.go), openssl, python3 (test/e2e/gateway_test.go runs examples/python), and
# systemd-analyze and systemd-sysusers (make systemd checks configs/custos.service with them).
# Usage: test/install-deps.sh [--optional]
#   --optional: a failure to install is a warning (make demo falls back to the software backend).
# Under CI=true a tool that is still missing afterwards is an error.
set -euo pipefail
optional=no
[ "${1:-}" = "--optional" ] && optional=yes

need=()
command -v softhsm2-util >/dev/null 2>&1 || need+=(softhsm2)
command -v swtpm >/dev/null 2>&1 || need+=(swtpm)
command -v swtpm_setup >/dev/null 2>&1 || need+=(swtpm-tools)
{ command -v promtool && command -v prometheus; } >/dev/null 2>&1 || need+=(prometheus)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
command -v python3 >/dev/null 2>&1 || need+=(python3)
{ command -v systemd-analyze && command -v systemd-sysusers; } >/dev/null 2>&1 || need+=(systemd)

if [ ${#need[@]} -gt 0 ]; then
  echo "custos: installing missing packages: ${need[*]}"
  sudo=""
  if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then sudo="sudo -n"; fi
  fi
  if [ "$(id -u)" = 0 ] || [ -n "$sudo" ]; then
    export DEBIAN_FRONTEND=noninteractive
    if ! { $sudo apt-get update -qq && $sudo apt-get install -y -qq --no-install-recommends "${need[@]}"; } >/tmp/custos-apt.log 2>&1; then
      echo "custos: apt-get install failed; see /tmp/custos-apt.log" >&2
    fi
  else
    echo "custos: cannot install ${need[*]}: not root and no passwordless sudo" >&2
  fi
fi

missing=()
for tool in softhsm2-util swtpm swtpm_setup promtool prometheus openssl python3 systemd-analyze systemd-sysusers; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$optional" = yes ]; then
    echo "custos: still missing: ${missing[*]} (continuing)" >&2
    exit 0
  fi
  if [ "${CI:-}" = true ]; then
    echo "custos: CI=true and required tools are missing: ${missing[*]}" >&2
    exit 1
  fi
  echo "custos: warning: missing ${missing[*]}; tests that need them will be skipped (they fail under CI=true)" >&2
fi
