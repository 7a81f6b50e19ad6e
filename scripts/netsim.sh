#!/usr/bin/env bash
# Network simulation for the TLS transport: alice and bob each in a network namespace made here,
# joined by a veth pair shaped with tc netem, then tls_ping round trips across it.
#
#   scripts/netsim.sh [lan|wan|both]     (default: both; needs root for namespaces)
#
# Profiles (the Cheetah paper's throttle settings):
#   lan: 0.3 ms RTT, 3 Gbit/s      wan: 40 ms RTT, 400 Mbit/s
# Only addresses inside the namespaces this script creates are used (10.231.0.0/30), and
# everything it made is removed on exit. Where namespaces or netem cannot be made, it says why
# and runs the same round trips on loopback (127.0.0.1) without shaping.
set -euo pipefail
cd "$(dirname "$0")/.."

PROFILES=${1:-both}
case "$PROFILES" in
  lan | wan) PROFILES=("$PROFILES") ;;
  both) PROFILES=(lan wan) ;;
  *) echo "usage: $0 [lan|wan|both]" >&2; exit 2 ;;
esac

TAG="ss$$"
NS_A="${TAG}a"
NS_B="${TAG}b"
WORK=$(mktemp -d)
SERVER_PID=""

cleanup() {
  if [[ -n "$SERVER_PID" ]]; then kill "$SERVER_PID" 2>/dev/null || true; fi
  ip netns del "$NS_A" 2>/dev/null || true
  ip netns del "$NS_B" 2>/dev/null || true
  # A veth pair made before a failed move into the namespaces is still in this namespace.
  ip link del "${TAG}va" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

cargo build --release --quiet --bin secure-serving --example tls_ping
BIN=target/release/secure-serving
PING=target/release/examples/tls_ping

# deployment <alice address> <bob address>
write_deployment() {
  cat >"$WORK/deploy.toml" <<TOML
name = "netsim"
[alice]
address = "$1"
[bob]
address = "$2"
[dealer]
address = "$3"
[limits]
timeout_secs = 30
TOML
  rm -rf "$WORK/keys"
  "$BIN" keygen --deployment "$WORK/deploy.toml" --out "$WORK/keys" >/dev/null
}

# run_ping <exec prefix for alice> <exec prefix for bob>
run_ping() {
  timeout 120 $1 "$PING" server "$WORK/deploy.toml" "$WORK/keys" &
  SERVER_PID=$!
  timeout 120 $2 "$PING" client "$WORK/deploy.toml" "$WORK/keys" 200 $((1 << 20))
  wait "$SERVER_PID"
  SERVER_PID=""
}

make_namespaces() {
  ip netns add "$NS_A" || return 1
  ip netns add "$NS_B" || return 1
  ip link add "${TAG}va" type veth peer name "${TAG}vb" || return 1
  ip link set "${TAG}va" netns "$NS_A" || return 1
  ip link set "${TAG}vb" netns "$NS_B" || return 1
  ip -n "$NS_A" addr add 10.231.0.1/30 dev "${TAG}va" || return 1
  ip -n "$NS_B" addr add 10.231.0.2/30 dev "${TAG}vb" || return 1
  for ns in "$NS_A" "$NS_B"; do ip -n "$ns" link set lo up || return 1; done
  ip -n "$NS_A" link set "${TAG}va" up || return 1
  ip -n "$NS_B" link set "${TAG}vb" up || return 1
}

# shape <delay per direction> <rate>
shape() {
  ip netns exec "$NS_A" tc qdisc replace dev "${TAG}va" root netem delay "$1" rate "$2" limit 100000 &&
    ip netns exec "$NS_B" tc qdisc replace dev "${TAG}vb" root netem delay "$1" rate "$2" limit 100000
}

if make_namespaces 2>"$WORK/why"; then
  write_deployment 10.231.0.1:7000 10.231.0.2:7001 10.231.0.1:7002
  for p in "${PROFILES[@]}"; do
    case "$p" in
      lan) delay=150us rate=3gbit label="0.3 ms RTT, 3 Gbit/s" ;;
      wan) delay=20ms rate=400mbit label="40 ms RTT, 400 Mbit/s" ;;
    esac
    if ! shape "$delay" "$rate" 2>"$WORK/why"; then
      echo "netsim: cannot shape the link with tc netem ($(tr '\n' ' ' <"$WORK/why")); one unshaped run between the namespaces instead"
      echo "== unshaped veth: alice in $NS_A, bob in $NS_B"
      run_ping "ip netns exec $NS_A" "ip netns exec $NS_B"
      break
    fi
    echo "== $p profile ($label): alice in $NS_A, bob in $NS_B"
    run_ping "ip netns exec $NS_A" "ip netns exec $NS_B"
  done
else
  echo "netsim: cannot make network namespaces ($(tr '\n' ' ' <"$WORK/why")); falling back to loopback, unshaped"
  port=$((20000 + RANDOM % 20000))
  write_deployment "127.0.0.1:$port" "127.0.0.1:$((port + 1))" "127.0.0.1:$((port + 2))"
  echo "== loopback, unshaped"
  run_ping "" ""
fi
