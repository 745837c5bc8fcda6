#!/usr/bin/env bash
# On the lent GPU machine (built by scripts/build-gpu-bench.sh): our training
# and eval step beside torchvision's on CUDA at 299 px, batch 32 and 128, the
# two taking turns for two rounds; the first round also times our phases.
# Arguments go to both sides: `bash .gpu/gpu.sh --cudnn-benchmark`.
set -x
export LD_LIBRARY_PATH="$(python3 -c 'import os, torch; print(os.path.dirname(torch.__file__))')/lib"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
python3 -c 'import torch, torchvision; print(torch.__version__, torchvision.__version__, torch.cuda.get_device_name(0))'
B=.gpu/inception-bench
R="--warmup 5 --steps 30 $*"
for round in 1 2; do
  for bs in 32 128; do
    timeout 120 $B --device cuda:0 --image-size 299 --batch-size $bs $R $([ $round = 1 ] && echo --breakdown)
    timeout 90 python3 bench/torchvision_bench.py --device cuda --image-size 299 --batch-size $bs $R
  done
done
for round in 1 2; do
  timeout 90 $B --eval --device cuda:0 --image-size 299 --batch-size 128 $R
  timeout 90 python3 bench/torchvision_bench.py --eval --device cuda --image-size 299 --batch-size 128 $R
done
echo DONE
