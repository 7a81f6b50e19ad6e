#!/usr/bin/env bash
# VGG16 at CIFAR shape, exported by torch the way a user does, classified encrypted at batch 64
# (issue "CNN speed and scale", done-when): in-process (`classify --model`) and through a
# deployment of separate processes (dealer, alice, bob as mutually authenticated TLS services on
# loopback; upload, then `classify --remote`). Both must return torch's predictions.
#
#   TORCH_VENV=/path/to/venv scripts/vgg16_batch64.sh [ROWS] [SEED]
#
# Needs a release build (`cargo build --release`) and a venv with torch 1.13 and numpy
# (see ../shared/notes/torch-export-venv.md). Traffic stays on 127.0.0.1; every step is bounded
# by `timeout`; the services are stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
ROWS=${1:-64}
SEED=${2:-$RANDOM}
PY="${TORCH_VENV:?set TORCH_VENV to a venv with torch}/bin/python"
BIN=target/release/secure-serving
WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

timeout 600 "$PY" scripts/export_vgg16_cifar.py "$WORK" "$ROWS" "$SEED"

same() { # predictions file vs torch's
  "$PY" - "$1" "$WORK/torch_pred.npy" <<'PYEOF'
import sys, numpy as np
got, want = np.load(sys.argv[1]), np.load(sys.argv[2])
ok = int((got == want).sum())
print(f"{sys.argv[1].rsplit('/', 1)[-1]}: {ok}/{len(want)} predictions equal torch's")
sys.exit(0 if ok == len(want) else 1)
PYEOF
}

echo "== in-process, batch 64"
/usr/bin/time -f "%e s, peak RSS %M KB" timeout 1800 "$BIN" classify --model "$WORK/vgg16_cifar.onnx" \
  --input "$WORK/x.npy" --batch 64 --output "$WORK/local.npy"
same "$WORK/local.npy"

echo "== deployment: dealer, alice and bob as TLS services on loopback, batch 64"
port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
cat > "$WORK/deploy.toml" <<TOML
name = "vgg16-batch64"
[alice]
address = "127.0.0.1:$(port)"
[bob]
address = "127.0.0.1:$(port)"
[dealer]
address = "127.0.0.1:$(port)"
[[data_owner]]
name = "owner"
role = "model-owner"
[[data_owner]]
name = "client"
role = "client"
[limits]
timeout_secs = 300
TOML
timeout 60 "$BIN" keygen --deployment "$WORK/deploy.toml" --out "$WORK/keys" >/dev/null
"$BIN" dealer --config "$WORK/deploy.toml" > "$WORK/dealer.log" 2>&1 & PIDS+=($!)
for role in alice bob; do
  "$BIN" party --role "$role" --config "$WORK/deploy.toml" --data-dir "$WORK/$role-data" \
    > "$WORK/$role.log" 2>&1 & PIDS+=($!)
done
sleep 2
timeout 600 "$BIN" upload --model "$WORK/vgg16_cifar.onnx" --name vgg16 --config "$WORK/deploy.toml"
/usr/bin/time -f "%e s" timeout 1800 "$BIN" classify --remote vgg16 --config "$WORK/deploy.toml" \
  --input "$WORK/x.npy" --batch 64 --output "$WORK/remote.npy"
same "$WORK/remote.npy"
for role in alice bob; do
  echo "$role: peak RSS $(grep VmHWM /proc/"${PIDS[$([ $role = alice ] && echo 1 || echo 2)]}"/status | awk '{print $2, $3}')"
done
echo "vgg16_batch64: both runs returned torch's predictions"
