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
    python bench/torchvision_preprocess_bench.py $mode --workers "$workers" --passes "$passes" 2>/dev/null
    if [ "$workers" = 1 ]; then
      # torchvision again with the malloc settings our workers use by default
      # (preprocess.retain_freed_memory), set through glibc's environment.
      echo -n "(glibc malloc as ours) "
      MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=2147483647 \
        python bench/torchvision_preprocess_bench.py $mode --workers 1 --passes "$passes" 2>/dev/null
    fi
  done
done
