#!/usr/bin/env bash
# Preprocess throughput, ours beside torchvision, on the same ~500x375 JPEGs:
# training distortion and eval preprocessing at 1 worker (one core), then
# 1 -> 2 workers; at 1 worker torchvision also runs with glibc set as our
# workers set it. The contenders take turns for ROUNDS rounds (default 3) and
# the medians are printed at the end.
#   scripts/bench-preprocess.sh [PASSES] [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh >/dev/null
. scripts/env.sh
passes="${1:-5}"
rounds="${2:-3}"
cargo build --release --locked -p inception-preprocess --bin inception-preprocess-bench 2>&1 | tail -1
bench=target/release/inception-preprocess-bench
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
for round in $(seq "$rounds"); do
  for mode in train eval; do
    flag=""
    [ "$mode" = eval ] && flag=--eval
    for workers in 1 2; do
      $bench $flag --workers "$workers" --passes "$passes" | sed "s/^/$mode $workers ours         | /" | tee -a "$log"
      python bench/torchvision_preprocess_bench.py $flag --workers "$workers" --passes "$passes" 2>/dev/null \
        | sed "s/^/$mode $workers torchvision  | /" | tee -a "$log"
      if [ "$workers" = 1 ]; then
        # torchvision again with the malloc settings our workers use by
        # default (preprocess.retain_freed_memory), through glibc's environment.
        MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=2147483647 \
          python bench/torchvision_preprocess_bench.py $flag --workers 1 --passes "$passes" 2>/dev/null \
          | sed "s/^/$mode $workers torch+malloc | /" | tee -a "$log"
      fi
    done
  done
done
python3 - "$log" <<'PY'
import re, statistics, sys
runs = {}
for line in open(sys.argv[1]):
    m = re.match(r"(\w+) (\d+) (\S+) *\|.*: ([0-9.]+) examples/s", line)
    if m:
        runs.setdefault((m[1], int(m[2])), {}).setdefault(m[3], []).append(float(m[4]))
for (mode, workers), by in runs.items():
    med = {k: statistics.median(v) for k, v in by.items()}
    extra = f", torchvision+malloc {med['torch+malloc']:.1f}" if "torch+malloc" in med else ""
    print(f"{mode:<5} {workers} worker(s), medians over {len(by['ours'])} round(s): ours {med['ours']:.1f}, "
          f"torchvision {med['torchvision']:.1f} ({med['ours'] / med['torchvision']:.2f}x){extra} examples/s "
          f"(ours {min(by['ours']):.1f}-{max(by['ours']):.1f}, torchvision {min(by['torchvision']):.1f}-{max(by['torchvision']):.1f})")
for mode in ("train", "eval"):
    one, two = runs.get((mode, 1)), runs.get((mode, 2))
    if one and two:
        print(f"{mode:<5} 1 -> 2 workers (ours): {statistics.median(two['ours']) / statistics.median(one['ours']):.2f}x")
PY
