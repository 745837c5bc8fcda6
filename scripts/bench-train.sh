#!/usr/bin/env bash
# Train-step images/sec of our trainer beside torchvision's inception_v3 in
# PyTorch, same batch, image size and thread count: 299 px with the auxiliary
# head, 149 px without it (torchvision's auxiliary head needs 299 px).
#   scripts/bench-train.sh [THREADS] [STEPS]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh >/dev/null
. scripts/env.sh
threads="${1:-$(nproc)}"
steps="${2:-3}"
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
target/debug/inception-bench --image-size 299 --threads "$threads" --steps "$steps" --device cpu
python bench/train_torchvision.py --image-size 299 --threads "$threads" --steps "$steps"
target/debug/inception-bench --image-size 149 --no-aux --threads "$threads" --steps "$steps" --device cpu
python bench/train_torchvision.py --image-size 149 --no-aux --threads "$threads" --steps "$steps"
