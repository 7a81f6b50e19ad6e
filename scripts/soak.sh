#!/usr/bin/env bash
# Soak test of a loopback mutual-TLS deployment (issue 21): the dealer, alice and bob as three
# `secure-serving` processes on 127.0.0.1, the digits CNN of tests/data uploaded, CLIENTS
# concurrent clients classifying the same ROWS test rows (one batch) with their labels until
# REQUESTS requests were answered; every answer is compared bit for bit with the predictions of
# one earlier remote classify. Prints bench-service's JSON report (wrong rows named) and the
# WARN/ERROR counts of the three services' logs.
#
#   scripts/soak.sh                 # 20 clients, 100000 requests, labels on, pool 2
#   CLIENTS=20 REQUESTS=20000 LABELS=0 POOL=0 ROWS=8 scripts/soak.sh
#
# Only loopback addresses are used; ports are chosen at random; every process started here is
# killed on exit and the work directory removed (KEEP=1 keeps it, with the logs).
set -euo pipefail
cd "$(dirname "$0")/.."

CLIENTS=${CLIENTS:-20}
REQUESTS=${REQUESTS:-100000}
LABELS=${LABELS:-1}
POOL=${POOL:-2}
ROWS=${ROWS:-8}
cargo build --release --quiet
BIN="$PWD/target/release/secure-serving"
DATA="$PWD/tests/data"
WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  if [ "${KEEP:-0}" = 1 ]; then echo "soak: work directory kept: $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
cd "$WORK"

PORT=$((20000 + RANDOM % 20000))
cat > deploy.toml <<TOML
name = "soak"
[alice]
address = "127.0.0.1:$PORT"
[bob]
address = "127.0.0.1:$((PORT + 1))"
[dealer]
address = "127.0.0.1:$((PORT + 2))"
[[data_owner]]
name = "hospital"
role = "model-owner"
[[data_owner]]
name = "clinic"
role = "client"
[limits]
pool = $POOL
TOML
"$BIN" keygen --deployment deploy.toml --out keys >/dev/null
"$BIN" dealer --config deploy.toml --data-dir dealer-data >dealer.log 2>&1 & PIDS+=($!)
"$BIN" party --role alice --config deploy.toml --data-dir alice-data >alice.log 2>&1 & PIDS+=($!)
"$BIN" party --role bob --config deploy.toml --data-dir bob-data >bob.log 2>&1 & PIDS+=($!)
for log in dealer.log alice.log bob.log; do
  for _ in $(seq 100); do grep -q "listening on" "$log" && break; sleep 0.1; done
  grep -q "listening on" "$log" || { echo "soak: a service did not start:" >&2; cat "$log" >&2; exit 1; }
done

"$BIN" upload --config deploy.toml --model "$DATA/digits_cnn.onnx" --name digits --as hospital >/dev/null
# The expected answers: one earlier remote classify of the test set (its first ROWS rows are
# what every request classifies).
"$BIN" classify --config deploy.toml --remote digits --input "$DATA/digits_test_x.npy" \
  --output expect.npy --as clinic >/dev/null
LABEL_ARGS=()
[ "$LABELS" = 1 ] && LABEL_ARGS=(--labels "$DATA/digits_test_y.npy")
echo "soak: $CLIENTS clients, $REQUESTS requests of $ROWS rows, labels $LABELS, pool $POOL" >&2
set +e
timeout 7200 "$BIN" bench-service --config deploy.toml --model digits --as clinic \
  --input "$DATA/digits_test_x.npy" --rows "$ROWS" "${LABEL_ARGS[@]}" --expect expect.npy --clients "$CLIENTS" --requests "$REQUESTS" --json
STATUS=$?
set -e
for log in dealer.log alice.log bob.log; do
  echo "soak: $log: $(grep -c ' WARN ' "$log" || true) warnings, $(grep -c ' ERROR ' "$log" || true) errors" >&2
done
exit $STATUS
