#!/usr/bin/env bash
# Evaluation images/sec of our model beside torchvision's inception_v3 in
# PyTorch (eval mode, no gradients), same batch and threads, at 299 and 149.
#   scripts/bench-eval.sh [THREADS] [STEPS]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh >/dev/null
. scripts/env.sh
threads="${1:-$(nproc)}"
steps="${2:-5}"
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
for size in 299 149; do
  target/debug/inception-bench --eval --image-size "$size" --threads "$threads" --steps "$steps" --device cpu
  python bench/eval_torchvision.py --image-size "$size" --threads "$threads" --steps "$steps"
done
