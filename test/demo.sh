#!/usr/bin/env bash
# The Custos demo (make demo): an agent identity in a SoftHSM token, from init to rotation, with every
# signature checked by agentctl and by openssl. Without SoftHSM it falls back to the software backend
# (a passphrase-encrypted key file) and says so.
#
# Usage: BIN=<dir with agentctl> test/demo.sh   (builds nothing; state goes to ./demo-state, wiped first)
#        CUSTOS_DEMO_BACKEND=software forces the software backend even when SoftHSM is installed.
set -euo pipefail
umask 077

BIN=${BIN:?set BIN to the directory holding the built agentctl (make demo does this)}
AGENTCTL="$BIN/agentctl"
if [ ! -x "$AGENTCTL" ]; then
  echo "demo: $AGENTCTL not found: run 'make build' first" >&2
  exit 1
fi

STATE="$PWD/demo-state"
export CUSTOS_HOME="$STATE/home"
n=0
step() { n=$((n + 1)); printf '\n\033[1m== %d. %s\033[0m\n' "$n" "$*"; }
say() { printf '   %s\n' "$*"; }
run() { printf '\033[2m$ %s\033[0m\n' "$*" >&2; "$@"; }
secret() { head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n'; }

step "Fresh state in $STATE"
rm -rf "$STATE"
mkdir -p "$STATE"
say "agent home (CUSTOS_HOME): $CUSTOS_HOME"

# --- Choose the backend: a SoftHSM token if SoftHSM is installed, else the software backend. ---
MODULE=""
for m in /usr/lib/softhsm/libsofthsm2.so /usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so \
  /usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so /usr/local/lib/softhsm/libsofthsm2.so; do
  if [ -f "$m" ]; then MODULE=$m; break; fi
done
[ "${CUSTOS_DEMO_BACKEND:-}" = software ] && MODULE=""

if [ -n "$MODULE" ]; then
  step "Make a SoftHSM token (its own token directory and softhsm2.conf; PINs in 0600 files)"
  mkdir -p "$STATE/softhsm/tokens"
  export SOFTHSM2_CONF="$STATE/softhsm/softhsm2.conf"
  printf 'directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\n' "$STATE/softhsm/tokens" >"$SOFTHSM2_CONF"
  secret >"$STATE/softhsm/so.pin"
  secret >"$STATE/softhsm/user.pin"
  say "SOFTHSM2_CONF=$SOFTHSM2_CONF"
  TOKEN_URI=$(run "$AGENTCTL" token init --module "$MODULE" --label custos-demo \
    --so-pin-source "file:$STATE/softhsm/so.pin" --pin-source "file:$STATE/softhsm/user.pin")
  say "keystore URI: $TOKEN_URI"
  INIT=(--pkcs11 "$TOKEN_URI")
  BACKEND="SoftHSM token through PKCS#11"
else
  step "No SoftHSM (not installed, or CUSTOS_DEMO_BACKEND=software): falling back to the SOFTWARE backend"
  say "The key will be a passphrase-encrypted file in $CUSTOS_HOME/keys, NOT in hardware."
  say "Install softhsm2 (apt-get install softhsm2) to run this demo against a PKCS#11 token."
  say "Each command that uses the key runs scrypt (about a second): that is the file's protection."
  secret >"$STATE/passphrase"
  INIT=(--software --passphrase-file "$STATE/passphrase")
  BACKEND="software backend (development only)"
fi

step "Create the agent identity ($BACKEND)"
say "init makes the generation 0 key (its public key is the agent ID) and the pre-committed generation 1 key,"
say "and writes the inception event to kel.jsonl."
run "$AGENTCTL" init "${INIT[@]}"

step "Show the identity"
run "$AGENTCTL" id
run "$AGENTCTL" id --json >"$STATE/id.json"
cat "$STATE/id.json"
ID=$(sed -n 's/^  "id": "\(.*\)",$/\1/p' "$STATE/id.json")
say "agent ID: $ID"

step "Sign a file"
MSG="$STATE/message.txt"
printf 'Hello from the Custos demo, %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" >"$MSG"
run "$AGENTCTL" sign --in "$MSG" --out "$MSG.sig"
say "signature: $(wc -c <"$MSG.sig") bytes (Ed25519, raw)"

step "Verify it with agentctl"
run "$AGENTCTL" verify --id "$ID" --in "$MSG" --sig "$MSG.sig"

step "Verify it with openssl, independently of Custos"
say "agentctl signs 'custos/v1/user-data', a zero byte, then the file (domain separation):"
printf 'custos/v1/user-data\0' | cat - "$MSG" >"$STATE/message.bin"
run "$AGENTCTL" id --pem >"$STATE/pub.pem"
if command -v openssl >/dev/null 2>&1; then
  run openssl pkeyutl -verify -pubin -inkey "$STATE/pub.pem" -rawin -in "$STATE/message.bin" -sigfile "$MSG.sig"
else
  say "openssl is not installed: skipping (apt-get install openssl)"
fi

step "Rotate to the pre-committed key"
say "Two-phase and crash-safe; the ID stays, the current key changes. The old key is kept for the grace period."
run "$AGENTCTL" rotate --grace 1h

step "List the keys"
run "$AGENTCTL" keys

step "Verify the key event log"
run "$AGENTCTL" log verify

step "Sign with the new generation; the old signature no longer matches the current key"
run "$AGENTCTL" sign --in "$MSG" --out "$MSG.gen1.sig"
run "$AGENTCTL" verify --id "$ID" --in "$MSG" --sig "$MSG.gen1.sig"
if "$AGENTCTL" verify --id "$ID" --in "$MSG" --sig "$MSG.sig" >/dev/null 2>&1; then
  echo "demo: the generation 0 signature still verified against generation 1: unexpected" >&2
  exit 1
fi
say "the generation 0 signature is refused against the generation 1 key, as it should be"
run "$AGENTCTL" id --pem >"$STATE/pub1.pem"
if command -v openssl >/dev/null 2>&1; then
  run openssl pkeyutl -verify -pubin -inkey "$STATE/pub1.pem" -rawin -in "$STATE/message.bin" -sigfile "$MSG.gen1.sig"
fi

printf '\n\033[1mDone.\033[0m Backend: %s. State: %s (run again to start over; make clean removes it).\n' "$BACKEND" "$STATE"
