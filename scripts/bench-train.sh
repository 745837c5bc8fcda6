#!/usr/bin/env bash
# Train-step images/sec of our trainer beside torchvision's inception_v3 in
# PyTorch, same batch, image size and thread count, at 299 and 149.
#   scripts/bench-train.sh [THREADS] [STEPS]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh >/dev/null
. scripts/env.sh
threads="${1:-$(nproc)}"
steps="${2:-3}"
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
for size in 299 149; do
  target/debug/inception-bench-train --image-size "$size" --threads "$threads" --steps "$steps" --device cpu
  python bench/train_torchvision.py --image-size "$size" --threads "$threads" --steps "$steps"
done
