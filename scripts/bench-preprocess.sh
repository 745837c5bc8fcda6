#!/usr/bin/env bash
# Preprocess throughput, ours beside torchvision, on the same ~500x375 JPEGs:
# training distortion and eval preprocessing at 1 worker (one core), then
# 1 -> 2 workers.
#   scripts/bench-preprocess.sh [PASSES]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh >/dev/null
. scripts/env.sh
passes="${1:-5}"
cargo build --release --locked -p inception-preprocess --bin inception-preprocess-bench 2>&1 | tail -1
bench=target/release/inception-preprocess-bench
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
for mode in "" --eval; do
  for workers in 1 2; do
    $bench $mode --workers "$workers" --passes "$passes"
    python bench/torchvision_preprocess_bench.py $mode --workers "$workers" --passes "$passes"
  done
done
