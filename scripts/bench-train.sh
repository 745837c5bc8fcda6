#!/usr/bin/env bash
# Ours (inception-bench) beside torchvision's inception_v3 in PyTorch, same
# batch, image size and thread count.
#   scripts/bench-train.sh [THREADS] [STEPS]          training steps: 299 px with the
#                                                     auxiliary head, 149 px without it
#                                                     (torchvision's needs 299 px)
#   scripts/bench-train.sh --eval [THREADS] [STEPS]   evaluation (eval-mode forward) at 299 and 149 px
set -euo pipefail
cd "$(dirname "$0")/.."
eval_flag=""
if [ "${1:-}" = "--eval" ]; then eval_flag="--eval"; shift; fi
scripts/setup.sh >/dev/null
. scripts/env.sh
threads="${1:-$(nproc)}"
steps="${2:-3}"
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
for size in 299 149; do
  aux=""
  if [ -z "$eval_flag" ] && [ "$size" -lt 299 ]; then aux="--no-aux"; fi
  target/debug/inception-bench $eval_flag $aux --image-size "$size" --threads "$threads" --steps "$steps" --device cpu
  python bench/torchvision_bench.py $eval_flag $aux --image-size "$size" --threads "$threads" --steps "$steps"
done
