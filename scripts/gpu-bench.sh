#!/usr/bin/env bash
# GPU-vs-CPU tables in one prepared run (for a lent GPU machine: nothing to decide there).
#
#   scripts/gpu-bench.sh           full shapes (VGG16 fc layers, head at batch 64/256/1024);
#                                  sized to finish within 8 minutes on a datacenter GPU host
#                                  (an estimate: no GPU has run it yet; the timeout bounds it)
#   scripts/gpu-bench.sh --quick   tiny shapes (seconds on lavapipe; run by the test suite)
#
# Prints: the adapter and its u64 arithmetic variant (u32 pairs or native u64), the u64 GEMM
# rate on both backends, secure matmul ratios, comparison rates on both backends, the VGG16 head
# secure on both backends, and host<->device traffic per batch.
#
# Environment: SECURE_SERVING_BIN=path uses a prebuilt binary instead of building;
# BENCH_TIMEOUT=seconds bounds the run (default 480 full, 120 quick); WGPU_BACKEND as for wgpu.
set -euo pipefail
cd "$(dirname "$0")/.."

quick=""
case "${1:-}" in
  "") ;;
  --quick) quick="--quick" ;;
  *) echo "usage: $0 [--quick]" >&2; exit 2 ;;
esac

bin="${SECURE_SERVING_BIN:-}"
if [[ -z "$bin" ]]; then
  if command -v cargo >/dev/null 2>&1; then
    echo "== building (cargo build --release --bin secure-serving)"
    cargo build --release --bin secure-serving
    bin=target/release/secure-serving
  elif [[ -x target/release/secure-serving ]]; then
    bin=target/release/secure-serving
  else
    echo "error: no cargo and no target/release/secure-serving; set SECURE_SERVING_BIN" >&2
    exit 1
  fi
fi

limit="${BENCH_TIMEOUT:-$([[ -n "$quick" ]] && echo 120 || echo 480)}"
echo "== host: $(nproc) CPUs, $(uname -srm)"
if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
fi
echo "== secure-serving bench --backend gpu ${quick} (limit ${limit} s)"
start=$(date +%s)
timeout "$limit" "$bin" bench --backend gpu ${quick}
echo "== done in $(( $(date +%s) - start )) s"
