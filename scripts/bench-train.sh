#!/usr/bin/env bash
# Ours (inception-bench) beside torchvision's inception_v3 in PyTorch, same
# batch, image size and thread count; PyTorch both with glibc's default
# malloc and with the settings our trainer and evaluator use. BENCH_SIZES
# (default "299 149") picks the image sizes.
#   scripts/bench-train.sh [THREADS] [STEPS] [ROUNDS] training steps: 299 px with the
#                                                     auxiliary head, 149 px without it
#                                                     (torchvision's needs 299 px)
#   scripts/bench-train.sh --eval [THREADS] [STEPS] [ROUNDS]  evaluation (eval-mode forward) at 299 and 149 px
set -euo pipefail
cd "$(dirname "$0")/.."
eval_flag=""
if [ "${1:-}" = "--eval" ]; then eval_flag="--eval"; shift; fi
scripts/setup.sh >/dev/null
. scripts/env.sh
threads="${1:-$(nproc)}"
steps="${2:-3}"
rounds="${3:-1}"
sizes="${BENCH_SIZES:-299 149}"
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
# The contenders take turns, round after round, so that a slow spell of a
# shared machine hits all of them; the medians are printed at the end.
for size in $sizes; do
  aux=""
  if [ -z "$eval_flag" ] && [ "$size" -lt 299 ]; then aux="--no-aux"; fi
  for round in $(seq "$rounds"); do
    target/debug/inception-bench $eval_flag $aux --image-size "$size" --threads "$threads" --steps "$steps" --device cpu \
      | sed "s/^/$size ours        | /" | tee -a "$log"
    python bench/torchvision_bench.py $eval_flag $aux --image-size "$size" --threads "$threads" --steps "$steps" 2>/dev/null \
      | sed "s/^/$size torch       | /" | tee -a "$log"
    # PyTorch again with the malloc settings our services use by default
    # (train/eval.retain_freed_memory), set through glibc's environment.
    MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=2147483647 \
      python bench/torchvision_bench.py $eval_flag $aux --image-size "$size" --threads "$threads" --steps "$steps" 2>/dev/null \
      | sed "s/^/$size torch+malloc | /" | tee -a "$log"
  done
done
python3 - "$log" <<'PY'
import re, statistics, sys
runs = {}
for line in open(sys.argv[1]):
    m = re.match(r"(\d+) (\S+) *\|.*: ([0-9.]+) img/s", line)
    if m:
        runs.setdefault(int(m[1]), {}).setdefault(m[2], []).append(float(m[3]))
for size, by in runs.items():
    med = {k: statistics.median(v) for k, v in by.items()}
    print(f"{size} px medians over {len(by['ours'])} round(s): ours {med['ours']:.2f}, torch {med['torch']:.2f} "
          f"({med['ours'] / med['torch']:.2f}x), torch+malloc {med['torch+malloc']:.2f} ({med['ours'] / med['torch+malloc']:.2f}x) img/s")
PY
