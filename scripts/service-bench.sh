#!/usr/bin/env bash
# Service benchmarks (issue 8 "Targets"): the dealer, alice and bob as separate `secure-serving`
# processes, each in its own network namespace, the clients in a fourth; links shaped to a
# profile; measured with `secure-serving bench-service`.
#
#   scripts/service-bench.sh [none|proxy0|lan|wan|all]   (default: all; needs root for namespaces)
#
# Profiles (the Cheetah paper's throttle settings): lan 0.3 ms RTT, 3 Gbit/s; wan 40 ms RTT,
# 400 Mbit/s; none: the same namespaces without shaping; proxy0: the delay proxies with zero
# delay and no bandwidth limit (what the proxies themselves cost; Linear(1,1) only). Shaping uses `tc netem` (delay and
# rate on every veth) when the kernel has it; otherwise `tc tbf` for the bandwidth on every veth
# and `examples/delay_proxy.rs` for the delay: every service listens behind a proxy in its own
# namespace that holds each chunk RTT/2 per direction, and every deployment address (as seen by
# clients and by the other services) is the proxy's, so every link (client-alice, client-bob,
# alice-bob, alice-dealer, bob-dealer) crosses exactly one proxy. The method is printed.
#
# Measured, per profile: (a) the tutorial's Linear(1,1) request with its label over mutual TLS,
# one client, REQUESTS requests, p50/p99 after connection set-up; (b) the VGG16 head (HEAD dims,
# HEAD_ROWS rows, batch 64), remote throughput; (lan only) (d) CLIENTS concurrent clients for
# CONCURRENT_SECONDS s of Linear(1,1) requests, every answer compared with the expected
# prediction. Once, before the services start: the in-process `demo` and the in-process head
# run (pool 0 and default pool) of the same build, whose predictions are the remote runs'
# expected answers. For wan, the floor `rounds x RTT + bytes / bandwidth` from the rounds and
# bytes the services report.
#
# Environment: HEAD="25088 4096 4096 7" HEAD_ROWS=128 CLIENTS=100 CONCURRENT_SECONDS=60
# REQUESTS=200 SEED=<random> RESULTS=<dir to keep the JSON reports>.
# Only addresses inside the namespaces made here are used (10.251.0.0/24); everything made is
# removed on exit; every step is bounded by `timeout`.
set -euo pipefail
cd "$(dirname "$0")/.."

MODES=${1:-all}
case "$MODES" in
  none | proxy0 | lan | wan) MODES=("$MODES") ;;
  all) MODES=(none proxy0 lan wan) ;;
  *) echo "usage: $0 [none|proxy0|lan|wan|all]" >&2; exit 2 ;;
esac
read -r H_IN H_HID _ H_CLS <<<"${HEAD:-25088 4096 4096 7}"
HEAD_ROWS=${HEAD_ROWS:-128}
CLIENTS=${CLIENTS:-100}
CONCURRENT_SECONDS=${CONCURRENT_SECONDS:-60}
REQUESTS=${REQUESTS:-200}
SEED=${SEED:-$RANDOM$RANDOM}
echo "service-bench: profiles ${MODES[*]}; head ${H_IN}-${H_HID}-${H_HID}-${H_CLS}, ${HEAD_ROWS} rows; seed $SEED (SEED=... to repeat)"

TAG="sb$$"
WORK=$(mktemp -d)
PIDS=()
NAMESPACES=()
ROLES=(dealer alice bob client)

cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  PIDS=()
  # Anything still running inside a namespace made here (ours only) goes too.
  for n in "${NAMESPACES[@]}"; do
    for p in $(ip netns pids "$n" 2>/dev/null); do kill "$p" 2>/dev/null || true; done
  done
  for n in "${NAMESPACES[@]}"; do ip netns del "$n" 2>/dev/null || true; done
  NAMESPACES=()
  for i in 0 1 2 3; do ip link del "${TAG}v$i" 2>/dev/null || true; done
}
trap 'cleanup; rm -rf "$WORK"' EXIT
trap 'exit 130' INT TERM

timeout 1800 cargo build --release --quiet --bin secure-serving --example delay_proxy
BIN=$PWD/target/release/secure-serving
PROXY=$PWD/target/release/examples/delay_proxy
RUN_LIMIT=3600

# ---- data: Linear(1,1) (weight 0.5, bias 0; input 0.0, label 0) and a random VGG16 head ----
python3 - "$WORK" "$SEED" "$H_IN" "$H_HID" "$H_CLS" "$HEAD_ROWS" <<'PY'
import json, struct, sys
import numpy as np
work, seed, n_in, hid, cls, rows = sys.argv[1], int(sys.argv[2]), *map(int, sys.argv[3:])
def safetensors(path, tensors):
    header, blobs, off = {}, [], 0
    for name, a in tensors:
        b = np.ascontiguousarray(a, dtype="<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(a.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b); off += len(b)
    h = json.dumps(header).encode(); h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h))); f.write(h)
        for b in blobs: f.write(b)
safetensors(f"{work}/linear.safetensors", [("0.weight", np.array([[0.5]])), ("0.bias", np.array([0.0]))])
np.save(f"{work}/lin_x.npy", np.zeros((1, 1), dtype=np.float32))
np.save(f"{work}/lin_y.npy", np.zeros(1, dtype=np.int64))
np.save(f"{work}/lin_expect.npy", np.zeros(1, dtype=np.int64))  # one class: argmax is 0
rng = np.random.default_rng(seed)
layers = []
for idx, (i, o) in zip((0, 3, 6), ((n_in, hid), (hid, hid), (hid, cls))):
    b = 1.0 / np.sqrt(i)
    layers += [(f"{idx}.weight", rng.uniform(-b, b, (o, i)).astype(np.float32)),
               (f"{idx}.bias", rng.uniform(-b, b, o).astype(np.float32))]
safetensors(f"{work}/head.safetensors", layers)
# Rows whose two largest plaintext logits are closer than MARGIN could flip under the fixed-point
# error (the secure run is exact in the ring but not equal to float arithmetic); keep only rows
# with a clear winner, so the expected predictions are the plaintext argmax, checked bit for bit.
MARGIN = 1e-2
w = [a.astype(np.float64) for _, a in layers]
def logits(x):
    h = np.maximum(x @ w[0].T + w[1], 0)
    h = np.maximum(h @ w[2].T + w[3], 0)
    return h @ w[4].T + w[5]
kept, tried = [], 0
while sum(len(k) for k in kept) < rows and tried < 64 * rows:
    x = rng.uniform(-1, 1, (rows, n_in)).astype(np.float32)
    tried += rows
    z = np.sort(logits(x.astype(np.float64)), axis=1)
    kept.append(x[z[:, -1] - z[:, -2] >= MARGIN])
x = np.concatenate(kept)[:rows]
assert len(x) == rows, f"only {len(x)} of {tried} random rows have a top-2 logit gap >= {MARGIN}"
np.save(f"{work}/head_x.npy", x)
np.save(f"{work}/head_plain.npy", np.argmax(logits(x.astype(np.float64)), axis=1).astype(np.int64))
open(f"{work}/margin", "w").write(str(MARGIN))
print(f"head inputs: {rows} rows with a top-2 logit gap >= {MARGIN} (of {tried} drawn)")
PY

field() { python3 -c "import json,sys; v=json.loads(sys.stdin.read().strip().splitlines()[-1]); print(v$1)"; }

# ---- in-process references (same build, same session) ----
echo "== in-process (one process, channels) =="
DEMO=$(timeout 300 "$BIN" demo)
echo "$DEMO" | grep -E "^time:|Prediction"
for pool in 0 default; do
  args=()
  [[ $pool == default ]] || args=(--pool "$pool")
  out=$(timeout "$RUN_LIMIT" "$BIN" classify --model "$WORK/head.safetensors" --arch vgg16-head \
    --input "$WORK/head_x.npy" --batch 64 --output "$WORK/head_expect_$pool.npy" "${args[@]}")
  line=$(echo "$out" | grep '^time:')
  [[ $pool == 0 ]] && echo "$out" | grep '^range:' | tee "$WORK/head_range"
  echo "head in-process, pool $pool: $line"
  # "time: X ms for N inputs in B batches (Y inputs/s)"
  echo "$line" | sed -E 's/.*\(([0-9.]+) inputs\/s\).*/\1/' >"$WORK/inproc_$pool.rate"
done
# Both in-process runs must give the plaintext predictions, and the margin must exceed the
# fixed-point error bound the range analysis states.
python3 - "$WORK" <<'PY'
import re, sys
import numpy as np
work = sys.argv[1]
plain = np.load(f"{work}/head_plain.npy")
bound = float(re.search(r"logits within ±([0-9.e+-]+)", open(f"{work}/head_range").read()).group(1))
margin = float(open(f"{work}/margin").read())
# The range analysis' bound is a worst case over all inputs within the input bound (every
# rounding error adding up with the largest weights); the errors of an actual run are far smaller
# (a few ulps of 2^-frac per layer). The margin is an empirical choice, checked here: both
# in-process runs must reproduce the plaintext argmax on every kept row.
for pool in ("0", "default"):
    got = np.load(f"{work}/head_expect_{pool}.npy")
    bad = int((got != plain).sum())
    assert bad == 0, f"in-process (pool {pool}): {bad} of {len(plain)} predictions differ from plaintext"
print(f"in-process predictions (pool 0 and default) equal the plaintext argmax on all {len(plain)} rows"
      f" (top-2 gap >= {margin}; the worst-case logit error bound is {bound:.2e})")
PY

# ---- namespaces: one per role, veth to a bridge in a hub namespace ----
ip_of() { echo "10.251.0.$(($1 + 1))"; }
make_namespaces() {
  local hub="${TAG}h"
  ip netns add "$hub"; NAMESPACES+=("$hub")
  ip -n "$hub" link add br0 type bridge
  ip -n "$hub" link set br0 up
  for i in 0 1 2 3; do
    local ns="${TAG}$i"
    ip netns add "$ns"; NAMESPACES+=("$ns")
    ip link add "${TAG}v$i" type veth peer name "${TAG}p$i"
    ip link set "${TAG}v$i" netns "$ns"
    ip link set "${TAG}p$i" netns "$hub"
    ip -n "$ns" addr add "$(ip_of $i)/24" dev "${TAG}v$i"
    ip -n "$ns" link set "${TAG}v$i" up
    ip -n "$ns" link set lo up
    ip -n "$hub" link set "${TAG}p$i" master br0
    ip -n "$hub" link set "${TAG}p$i" up
  done
}
in_ns() { local i=$1; shift; ip netns exec "${TAG}$i" "$@"; }
# Background processes are started with `ip netns exec` directly (not through a function), so
# that $! is the process itself (ip execs timeout, which forwards a TERM to its child).

# shape <profile>: sets METHOD (none, netem or proxy) and HALF_US
shape() {
  METHOD=none
  local rate
  case "$1" in
    none) HALF_US=0; return ;;
    proxy0) HALF_US=0; METHOD=proxy; return ;;
    lan) HALF_US=150; rate=3gbit ;;
    wan) HALF_US=20000; rate=400mbit ;;
  esac
  if in_ns 0 tc qdisc add dev "${TAG}v0" root netem delay "${HALF_US}us" rate "$rate" 2>/dev/null; then
    METHOD=netem
    for i in 1 2 3; do in_ns "$i" tc qdisc add dev "${TAG}v$i" root netem delay "${HALF_US}us" rate "$rate"; done
  else
    METHOD=proxy
    # tbf needs a burst of at least one (GSO) packet; ~1 ms of traffic, at least 128 KB.
    local burst=128kb
    [[ $rate == 3gbit ]] && burst=512kb
    for i in 0 1 2 3; do in_ns "$i" tc qdisc add dev "${TAG}v$i" root tbf rate "$rate" burst "$burst" latency 100ms; done
  fi
}

# deployment <file> <dealer addr> <alice addr> <bob addr>
deployment() {
  cat >"$1" <<TOML
name = "bench"
[dealer]
address = "$2"
[alice]
address = "$3"
[bob]
address = "$4"
[[data_owner]]
name = "owner"
role = "model-owner"
[[data_owner]]
name = "client"
role = "client"
[limits]
timeout_secs = 120
max_requests = 160
TOML
}

wait_listening() {
  local log=$1 deadline=$((SECONDS + 120))
  until grep -q "listening on" "$log" 2>/dev/null; do
    if ((SECONDS > deadline)); then echo "not listening: $log" >&2; cat "$log" >&2; exit 1; fi
    sleep 0.2
  done
}

# start_deployment <profile>: namespaces, shaping, keys, services; sets CLIENT_CFG
start_deployment() {
  make_namespaces
  shape "$1"
  local d="$WORK/$1" real=() seen=() i
  mkdir -p "$d"
  for i in 0 1 2; do
    real+=("$(ip_of $i):$((3000 + i))")
    if [[ $METHOD == proxy ]]; then seen+=("$(ip_of $i):$((3100 + i))"); else seen+=("${real[$i]}"); fi
  done
  CLIENT_CFG="$d/client.toml"
  deployment "$CLIENT_CFG" "${seen[@]}"
  timeout 60 "$BIN" keygen --deployment "$CLIENT_CFG" --out "$d/keys" >/dev/null
  for i in 0 1 2; do
    # Each service binds its real address and reaches the others at their seen (proxy) address.
    local addrs=("${seen[@]}")
    addrs[i]=${real[$i]}
    deployment "$d/${ROLES[$i]}.toml" "${addrs[@]}"
    if [[ $METHOD == proxy ]]; then
      ip netns exec "${TAG}$i" timeout "$RUN_LIMIT" "$PROXY" --delay-us "$HALF_US" --seconds "$RUN_LIMIT" \
        "${seen[$i]}=${real[$i]}" >"$d/proxy-${ROLES[$i]}.log" 2>&1 &
      PIDS+=($!)
    fi
    local cmd=(dealer --data-dir "$d/dealer-data")
    [[ $i == 0 ]] || cmd=(party --role "${ROLES[$i]}" --data-dir "$d/${ROLES[$i]}-data")
    ip netns exec "${TAG}$i" timeout "$RUN_LIMIT" "$BIN" "${cmd[@]}" --config "$d/${ROLES[$i]}.toml" --keys "$d/keys" \
      >"$d/${ROLES[$i]}.log" 2>&1 &
    PIDS+=($!)
    wait_listening "$d/${ROLES[$i]}.log"
  done
  KEYS="$d/keys"
  case "$1/$METHOD" in
    proxy0/*) echo "method: delay proxies with 0 us delay, no tc (measures the proxies' own cost)" ;;
    */proxy) echo "method: proxy (tc tbf for bandwidth + examples/delay_proxy for ${HALF_US} us each way; this kernel has no sch_netem)" ;;
    *) echo "method: $METHOD" ;;
  esac
}

client() { in_ns 3 timeout "$RUN_LIMIT" "$BIN" "$@" --config "$CLIENT_CFG" --keys "$KEYS"; }
bench() {
  local name=$1; shift
  local out
  out=$(client bench-service --as client --json "$@")
  echo "$out" >"$WORK/$name.json"
  [[ -z "${RESULTS:-}" ]] || { mkdir -p "$RESULTS"; echo "$out" >"$RESULTS/$name.json"; }
  echo "$name: $out"
}

for mode in "${MODES[@]}"; do
  echo "== profile $mode =="
  start_deployment "$mode"
  client upload --as owner --model "$WORK/linear.safetensors" --arch linear --name linear | tail -1
  n=$REQUESTS
  [[ $mode == wan ]] && n=$((REQUESTS / 10 + 1))
  bench "linear-$mode" --model linear --input "$WORK/lin_x.npy" --labels "$WORK/lin_y.npy" \
    --batch 1 --requests "$n" --expect "$WORK/lin_expect.npy"
  if [[ $mode != proxy0 ]]; then
    t=$SECONDS
    client upload --as owner --model "$WORK/head.safetensors" --arch vgg16-head --name head | tail -1
    echo "head upload: $((SECONDS - t)) s"
    bench "head-$mode" --model head --input "$WORK/head_x.npy" --batch 64 --requests 3 \
      --expect "$WORK/head_plain.npy"
    # The in-process run again, right after the remote one (this shared VM's load drifts).
    line=$(timeout "$RUN_LIMIT" "$BIN" classify --model "$WORK/head.safetensors" --arch vgg16-head \
      --input "$WORK/head_x.npy" --batch 64 --pool 0 | grep '^time:')
    echo "head in-process again, pool 0: $line; load average $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "$line" | sed -E 's/.*\(([0-9.]+) inputs\/s\).*/\1/' >"$WORK/inproc_after.rate"
    for pool in 0 default after; do
      python3 -c "import json,sys; r=json.load(open('$WORK/head-$mode.json')); p=float(open('$WORK/inproc_$pool.rate').read());
print(f'head $mode: remote {r[\"rows_per_second\"]:.1f} rows/s vs in-process (pool $pool) {p:.1f} inputs/s = {r[\"rows_per_second\"]/p:.2f}x')"
    done
  fi
  if [[ $mode == lan ]]; then
    bench "concurrent-$mode" --model linear --input "$WORK/lin_x.npy" --batch 1 \
      --clients "$CLIENTS" --seconds "$CONCURRENT_SECONDS" --expect "$WORK/lin_expect.npy"
  fi
  if [[ $mode == wan ]]; then
    for case in linear head; do
      python3 - "$WORK/$case-wan.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
rtt, bw = 0.040, 400e6 / 8
# Rounds as the parties count them (a send after a receive starts a round), the larger of the two.
rounds = max(r["party_rounds"])
# The busiest sender's bytes must all cross its own 400 Mbit/s egress link.
sent = max(r["party_bytes_sent"] + [r["client_bytes_sent"]])
for label, per_round in (("rounds x RTT (the issue's floor)", rtt), ("rounds x RTT/2 (one way per round)", rtt / 2)):
    floor = rounds * per_round + sent / bw
    print(f"{r['model']} wan, {label}: {rounds} x {per_round*1e3:.0f} ms + {sent} B / 400 Mbit/s"
          f" = {floor*1e3:.1f} ms; measured p50 {r['p50_ms']:.1f} ms = {r['p50_ms']/1e3/floor:.2f}x")
PY
    done
  fi
  cleanup
done
echo "service-bench: done"
