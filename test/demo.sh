#!/usr/bin/env bash
# The Custos demo (make demo). Part 1: one agent identity in a SoftHSM token, from init to rotation, every
# signature checked by agentctl and by openssl. Part 2: three agents on loopback, one per transport plugin
# (tcp, ws, libp2p), each with its key in its own SoftHSM token, exchanging signed tasks over every
# transport; one agent's key is rotated while tasks flow; every audit log is verified; a report at the end.
# Without SoftHSM it falls back to the software backend (passphrase-encrypted key files) and says so.
#
# Usage: BIN=<dir with agentctl, custosd and transport-*> test/demo.sh   (builds nothing; state goes to ./demo-state,
#        wiped first). CUSTOS_DEMO_BACKEND=software forces the software backend even when SoftHSM is installed.
set -euo pipefail
umask 077

BIN=${BIN:?set BIN to the directory holding the built agentctl and plugins (make demo does this)}
for b in agentctl custosd transport-tcp transport-ws transport-libp2p; do
  if [ ! -x "$BIN/$b" ]; then
    echo "demo: $BIN/$b not found: run 'make build' first" >&2
    exit 1
  fi
done
BIN=$(cd "$BIN" && pwd)
AGENTCTL="$BIN/agentctl"
T0=$(date +%s%N)

STATE="$PWD/demo-state"
export CUSTOS_HOME="$STATE/home"
n=0
step() { n=$((n + 1)); printf '\n\033[1m== %d. %s\033[0m\n' "$n" "$*"; }
say() { printf '   %s\n' "$*"; }
run() { printf '\033[2m$' >&2; printf ' %q' "$@" >&2; printf '\033[0m\n' >&2; "$@"; }
secret() { head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n'; }
die() { printf '\ndemo: FAILED: %s\n' "$*" >&2; exit 1; }
elapsed() { echo $((($(date +%s%N) - T0) / 1000000)); }

# --- Daemons and background loops started by this script; all are stopped on exit, whatever happens. ---
DAEMONS=()   # "name:pid"
LOOPS=()
stop_daemon() { # name pid: SIGTERM, wait up to 15 s, then SIGKILL
  local name=$1 pid=$2 i
  kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM "$pid" 2>/dev/null || return 0
  for i in $(seq 150); do
    kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
    sleep 0.1
  done
  echo "demo: $name (pid $pid) did not stop within 15 s of SIGTERM: killing it" >&2
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}
cleanup() {
  local rc=$? l d
  trap - EXIT INT TERM
  for l in "${LOOPS[@]}"; do kill "$l" 2>/dev/null || true; done
  for d in "${DAEMONS[@]}"; do stop_daemon "${d%%:*}" "${d##*:}"; done
  if [ "$rc" != 0 ]; then
    for d in alpha beta gamma; do
      if [ -f "$STATE/$d/daemon.log" ]; then
        echo "--- last lines of $d's daemon log ($STATE/$d/daemon.log):" >&2
        tail -n 15 "$STATE/$d/daemon.log" >&2
      fi
    done
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

step "Fresh state in $STATE"
# Daemons left running by an interrupted earlier run of this demo: ask each for its pid and stop it.
for sock in "$STATE"/*/control.sock; do
  [ -S "$sock" ] || continue
  old=$("$AGENTCTL" --home "$(dirname "$sock")" status --json 2>/dev/null | sed -n 's/^  "pid": \([0-9]*\),$/\1/p')
  if [ -n "$old" ]; then
    say "stopping the daemon of an earlier run (pid $old)"
    kill -TERM "$old" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$old" 2>/dev/null || break; sleep 0.1; done
  fi
done
rm -rf "$STATE"
mkdir -p "$STATE"
say "agent home of part 1 (CUSTOS_HOME): $CUSTOS_HOME"

# --- Choose the backend: SoftHSM tokens if SoftHSM is installed, else the software backend. ---
MODULE=""
for m in /usr/lib/softhsm/libsofthsm2.so /usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so \
  /usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so /usr/local/lib/softhsm/libsofthsm2.so; do
  if [ -f "$m" ]; then MODULE=$m; break; fi
done
[ "${CUSTOS_DEMO_BACKEND:-}" = software ] && MODULE=""

# new_keystore LABEL: prints the init flags for a new keystore (a SoftHSM token, or a software key dir).
new_keystore() {
  local label=$1 uri
  if [ -n "$MODULE" ]; then
    secret >"$STATE/softhsm/$label.so.pin"
    secret >"$STATE/softhsm/$label.user.pin"
    uri=$(run "$AGENTCTL" token init --module "$MODULE" --label "$label" \
      --so-pin-source "file:$STATE/softhsm/$label.so.pin" --pin-source "file:$STATE/softhsm/$label.user.pin")
    echo "--pkcs11 $uri"
  else
    secret >"$STATE/$label.passphrase"
    echo "--software --passphrase-file $STATE/$label.passphrase"
  fi
}

if [ -n "$MODULE" ]; then
  mkdir -p "$STATE/softhsm/tokens"
  export SOFTHSM2_CONF="$STATE/softhsm/softhsm2.conf"
  printf 'directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\n' "$STATE/softhsm/tokens" >"$SOFTHSM2_CONF"
  BACKEND="SoftHSM tokens through PKCS#11 ($MODULE)"
else
  step "No SoftHSM (not installed, or CUSTOS_DEMO_BACKEND=software): falling back to the SOFTWARE backend"
  say "Keys will be passphrase-encrypted files in each agent's home, NOT in hardware."
  say "Install softhsm2 (apt-get install softhsm2) to run this demo against PKCS#11 tokens."
  say "Each command that loads a key runs scrypt (about a second): that is the file's protection."
  BACKEND="software backend (development only: SoftHSM is not installed)"
fi

# ============================== Part 1: one identity, by hand ==============================
if [ -n "$MODULE" ]; then where="a SoftHSM token"; else where="a software key file"; fi
step "Part 1: an agent identity in $where: init, sign, verify with agentctl and openssl, rotate"
read -r -a INIT <<<"$(new_keystore custos-demo)"
run "$AGENTCTL" init "${INIT[@]}"
ID=$("$AGENTCTL" id --json | sed -n 's/^  "id": "\(.*\)",$/\1/p')
MSG="$STATE/message.txt"
printf 'Hello from the Custos demo, %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" >"$MSG"
run "$AGENTCTL" sign --in "$MSG" --out "$MSG.sig"
run "$AGENTCTL" verify --id "$ID" --in "$MSG" --sig "$MSG.sig"
say "openssl checks the same signature independently: agentctl signs 'custos/v1/user-data', a zero byte, then the file"
printf 'custos/v1/user-data\0' | cat - "$MSG" >"$STATE/message.bin"
"$AGENTCTL" id --pem >"$STATE/pub.pem"
if command -v openssl >/dev/null 2>&1; then
  run openssl pkeyutl -verify -pubin -inkey "$STATE/pub.pem" -rawin -in "$STATE/message.bin" -sigfile "$MSG.sig"
else
  say "openssl is not installed: skipping (apt-get install openssl)"
fi
run "$AGENTCTL" rotate --grace 1h
run "$AGENTCTL" log verify
if "$AGENTCTL" verify --id "$ID" --in "$MSG" --sig "$MSG.sig" >/dev/null 2>&1; then
  die "the generation 0 signature still verified against generation 1"
fi
say "the generation 0 signature is refused against the generation 1 key, as it should be"
run "$AGENTCTL" audit query --type 'key.*'
run "$AGENTCTL" audit verify

# ============================== Part 2: three agents ==============================
NAMES=(alpha beta gamma)
declare -A LISTEN=([alpha]=tcp [beta]=ws [gamma]=libp2p)   # the transport each agent listens on
declare -A DIALS=([alpha]=beta [beta]=gamma [gamma]=alpha)  # whom each agent dials (on that one's transport)
declare -A SUM AID ADDR PEERGEN

step "Part 2: three agents on loopback, one per transport; plugin binaries pinned by SHA-256"
for t in tcp ws libp2p; do
  SUM[$t]=$(sha256sum "$BIN/transport-$t" | cut -d' ' -f1)
  say "transport-$t  sha256 ${SUM[$t]}"
done
listen_addr() { if [ "$1" = libp2p ]; then echo "/ip4/127.0.0.1/tcp/0"; else echo "127.0.0.1:0"; fi; }

for a in "${NAMES[@]}"; do
  home="$STATE/$a"
  mkdir -p "$home"
  read -r -a flags <<<"$(new_keystore "custos-$a")"
  "$AGENTCTL" --home "$home" init "${flags[@]}" >/dev/null
  AID[$a]=$("$AGENTCTL" --home "$home" id --json | sed -n 's/^  "id": "\(.*\)",$/\1/p')
  lt=${LISTEN[$a]} dt=${LISTEN[${DIALS[$a]}]}
  cat >"$home/agent.yaml" <<EOF
# Demo agent $a: listens on $lt, dials ${DIALS[$a]} over $dt. Plugins run only if their SHA-256 matches.
transports:
  - name: $lt
    plugin: $BIN/transport-$lt
    sha256: ${SUM[$lt]}
    listen: ["$(listen_addr "$lt")"]
  - name: $dt
    plugin: $BIN/transport-$dt
    sha256: ${SUM[$dt]}
handlers:
  echo: {builtin: echo}
  sha256: {builtin: sha256}
metrics: {address: "127.0.0.1:0"}
tasks: {retry_interval: 500ms}
redial: {min: 100ms, max: 2s}
limits: {drain_timeout: 5s}
log: {level: info}
# The demo agents let every peer submit tasks (the default is that a peer needs an administrator's grant:
# docs/authorization.md).
authorization: {default_peer_roles: [task_submitter]}
EOF
  say "$a: ${AID[$a]}  (listens on $lt; config $home/agent.yaml)"
done

step "Start the three daemons (agentctl run)"
for a in "${NAMES[@]}"; do
  home="$STATE/$a"
  "$AGENTCTL" --home "$home" run --config "$home/agent.yaml" >"$home/daemon.log" 2>&1 &
  DAEMONS+=("$a:$!")
done
for d in "${DAEMONS[@]}"; do
  a=${d%%:*} pid=${d##*:}
  for i in $(seq 300); do
    "$AGENTCTL" --home "$STATE/$a" status >/dev/null 2>&1 && break
    kill -0 "$pid" 2>/dev/null || die "$a's daemon exited during start-up"
    [ "$i" = 300 ] && die "$a's daemon did not answer within 30 s"
    sleep 0.1
  done
  ADDR[$a]=$("$AGENTCTL" --home "$STATE/$a" status | awk -v t="${LISTEN[$a]}" '$1 == t && $2 == "running" { print $5 }')
  [ -n "${ADDR[$a]}" ] || die "$a reports no ${LISTEN[$a]} listen address"
  say "$a: pid $pid, ${LISTEN[$a]} ${ADDR[$a]}"
done
run "$AGENTCTL" --home "$STATE/alpha" status

step "Connect in a ring: alpha -> beta (ws), beta -> gamma (libp2p), gamma -> alpha (tcp), each pinned to the peer's ID"
for a in "${NAMES[@]}"; do
  p=${DIALS[$a]}
  run "$AGENTCTL" --home "$STATE/$a" peers connect "${ADDR[$p]}" --id "${AID[$p]}"
done

# --- Tasks. Every result is checked three ways: the daemon verified its signature chain, agentctl task
# verify checks it again as a third party would, and the output is compared with what it must be. ---
RESULTS="$STATE/results.txt" # one line per task: transport from to handler ok|fail generation
: >"$RESULTS"
b64url_decode() { # stdin base64url (unpadded) -> stdout bytes
  local s
  s=$(tr -d '\n' | tr '_-' '/+')
  case $((${#s} % 4)) in 2) s="$s==" ;; 3) s="$s=" ;; esac
  printf '%s' "$s" | base64 -d
}
jget() { sed -n 's/^ *"'"$2"'": "\{0,1\}\([^",]*\)"\{0,1\},\{0,1\}$/\1/p' "$1" | head -n 1; }
# task FROM TO HANDLER INPUT [quiet]: submits, waits, checks; records the outcome; prints one line unless quiet.
task() {
  local from=$1 to=$2 handler=$3 input=$4 quiet=${5:-} f want got gen via status state
  f=$(mktemp "$STATE/$from/task.XXXXXX")
  via=$("$AGENTCTL" --home "$STATE/$from" status --json | awk -v p="${AID[$to]}" '$0 ~ "\"peer\": \"" p "\"" { found = 1 } found && /"transport"/ { gsub(/[",]/, "", $2); print $2; exit }')
  if printf '%s' "$input" | "$AGENTCTL" --home "$STATE/$from" task submit --to "${AID[$to]}" --handler "$handler" --input - \
    --wait --timeout 30s --json >"$f" 2>"$f.err"; then
    case $handler in
      sha256) want=$(printf '%s' "$input" | sha256sum | cut -d' ' -f1) ;;
      *) want=$input ;;
    esac
    got=$(jget "$f" output | b64url_decode)
    gen=$(jget "$f" delegation_generation)
    state=$(jget "$f" state) status=$(jget "$f" status)
    if [ "$state" = done ] && [ "$status" = ok ] && [ "$got" = "$want" ] && "$AGENTCTL" task verify "$f" >"$f.verify" 2>&1; then
      echo "${via:-?} $from $to $handler ok $gen" >>"$RESULTS"
      [ -n "$quiet" ] || printf '   %-7s %-5s -> %-5s %-6s ok  output %s  signed by %s under generation %s; task verify: %s\n' \
        "${via:-?}" "$from" "$to" "$handler" "$(printf '%.24s' "$got")..." "$to" "$gen" "$(head -c 2 "$f.verify")"
      return 0
    fi
  fi
  echo "${via:-?} $from $to $handler fail -" >>"$RESULTS"
  printf '   %-7s %-5s -> %-5s %-6s FAILED: %s\n' "${via:-?}" "$from" "$to" "$handler" "$(cat "$f.err" "$f" 2>/dev/null | tr '\n' ' ' | cut -c1-300)"
  return 1
}

step "Tasks over every transport, both directions (sha256 and echo), each result signed by the executor and verified"
for a in "${NAMES[@]}"; do
  p=${DIALS[$a]}
  task "$a" "$p" sha256 "input from $a to $p, $(secret)"
  task "$p" "$a" echo "hello $a, this is $p ($(date -u +%H:%M:%S))"
done
say "one of them in full, as agentctl prints it:"
printf 'full output please' | run "$AGENTCTL" --home "$STATE/beta" task submit --to "${AID[alpha]}" --handler sha256 --input - --wait --timeout 30s | sed 's/^/   /'

step "Rotate alpha's key while beta (ws) and gamma (tcp) keep sending it tasks"
loop() { # from: echo tasks to alpha, one every ~0.1 s, until 3 have completed after the rotation (at most 90 s)
  local from=$1 i=0 after=0 end=$((SECONDS + 90))
  while [ $after -lt 3 ] && [ $SECONDS -lt $end ]; do
    i=$((i + 1))
    [ -f "$STATE/rotated" ] && after=$((after + 1))
    task "$from" alpha echo "tick $i from $from" quiet || true
    sleep 0.1
  done
}
loop beta &
LOOPS+=($!)
loop gamma &
LOOPS+=($!)
for _ in $(seq 100); do [ "$(grep -c ' alpha echo ' "$RESULTS")" -ge 4 ] && break; sleep 0.1; done
before=$(grep -c ' alpha echo ok ' "$RESULTS" || true)
say "$before tasks to alpha completed under generation 0; rotating now (old key destroyed at once):"
run "$AGENTCTL" --home "$STATE/alpha" rotate --destroy-old 2>&1 | grep -v 'warning: this identity' | sed 's/^/   /'
touch "$STATE/rotated"
wait "${LOOPS[@]}"
LOOPS=()
g0=$(grep -c ' alpha echo ok 0$' "$RESULTS" || true)
g1=$(grep -c ' alpha echo ok 1$' "$RESULTS" || true)
fl=$(grep -c ' alpha echo fail ' "$RESULTS" || true)
say "echo tasks to alpha during the rotation: $g0 signed under generation 0, $g1 under generation 1, $fl failed"
[ "$g1" -ge 3 ] || die "fewer than 3 tasks completed under alpha's new key"
[ "$fl" = 0 ] || die "$fl tasks to alpha failed during the rotation"
for p in beta gamma; do
  seen=$("$AGENTCTL" --home "$STATE/$p" peers --json | awk -v id="${AID[alpha]}" '$0 ~ "\"id\": \"" id "\"" { f = 1 } f && /^    "generation":/ { gsub(/,/, "", $2); print $2; exit }')
  say "$p sees alpha at generation ${seen:-?}"
  [ "$seen" = 1 ] || die "$p does not see alpha's new generation"
  PEERGEN[$p]=$seen
done
run "$AGENTCTL" --home "$STATE/alpha" audit query --type 'key.*'

step "Verify each agent's audit log while it runs, then stop the daemons (SIGTERM) and verify the sealed logs"
for a in "${NAMES[@]}"; do
  run "$AGENTCTL" --home "$STATE/$a" audit verify | sed 's/^/   /'
done
for d in "${DAEMONS[@]}"; do
  a=${d%%:*} pid=${d##*:}
  say "SIGTERM -> $a (pid $pid)"
  stop_daemon "$a" "$pid"
done
DAEMONS=()
declare -A AUDIT
for a in "${NAMES[@]}"; do
  if out=$("$AGENTCTL" --home "$STATE/$a" audit verify 2>&1); then
    AUDIT[$a]="verifies, sealed: $(sed -n 's/^audit log verifies: \([0-9]*\) records.*, \([0-9]*\) checkpoints signed by key generation \(.*\)$/\1 records, \2 checkpoints by generation \3/p' <<<"$out")"
  else
    AUDIT[$a]="FAILS: $out"
  fi
done

# ============================== Report ==============================
ms=$(elapsed)
printf '\n\033[1m== Report\033[0m\n'
printf '   backend     %s\n' "$BACKEND"
for a in "${NAMES[@]}"; do
  printf '   %-6s      %s  %-6s %s\n' "$a" "${AID[$a]}" "${LISTEN[$a]}" "${ADDR[$a]}"
done
for t in tcp ws libp2p; do
  s=$(awk -v t="$t" '$1 == t' "$RESULTS" | wc -l)
  o=$(awk -v t="$t" '$1 == t && $5 == "ok"' "$RESULTS" | wc -l)
  printf '   tasks %-6s %d sent, %d ok\n' "$t" "$s" "$o"
done
total=$(wc -l <"$RESULTS") ok=$(grep -c ' ok ' "$RESULTS" || true)
printf '   tasks       %d sent, %d ok (every result signed by its executor and verified by agentctl task verify)\n' "$total" "$ok"
printf '   rotation    alpha 0 -> 1 while tasks flowed: %d tasks under generation 0, %d under 1, %d failed; beta and gamma see generation %s\n' \
  "$g0" "$g1" "$fl" "${PEERGEN[beta]}"
for a in "${NAMES[@]}"; do
  printf '   audit %-6s %s\n' "$a" "${AUDIT[$a]}"
done
printf '   daemons     stopped with SIGTERM\n'
printf '   elapsed     %d.%03d s\n' $((ms / 1000)) $((ms % 1000))
printf '   state       %s (run again to start over; make clean removes it)\n' "$STATE"
bad=0
[ "$ok" = "$total" ] || bad=1
for a in "${NAMES[@]}"; do case ${AUDIT[$a]} in verifies*) ;; *) bad=1 ;; esac; done
[ "$bad" = 0 ] || die "see the report above"
printf '\n\033[1mDone.\033[0m\n'
