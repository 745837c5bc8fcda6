#!/usr/bin/env bash
# Data-parallel training on one machine: the full-size model's training step
# (inception-bench, random data) with 1 rank x 2 threads, then with 2 ranks x
# 1 thread over Gloo on 127.0.0.1, the same global batch; the all-reduce time
# per step when it follows the backward pass (--no-overlap; by default it
# overlaps it, as distributed.overlap), its share of the step, and the
# scaling efficiency (2 ranks' img/s over 1 rank's: the same two cores
# either way, so 1.0 is ideal). Beside it,
# in the same rounds, PyTorch's own DistributedDataParallel (torchvision's
# inception_v3 under torchrun, bench/torchvision_bench.py; channels_last, no
# auxiliary head: torchvision's needs 299 px) the same two ways.
#   scripts/bench-distributed.sh [STEPS] [ROUNDS]
# BENCH_SIZE (149), BENCH_BATCH (32, the global batch), BENCH_PRECISIONS
# ("fp32 bf16"; "fp32" on a CPU without avx512_bf16 or amx_bf16).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh >/dev/null
. scripts/env.sh
cargo build --quiet --bin inception-bench
steps="${1:-5}"
rounds="${2:-3}"
size="${BENCH_SIZE:-149}"
batch="${BENCH_BATCH:-32}"
# bf16 only where the CPU has bf16 instructions: emulated, it is ~11x slower.
if grep -m1 '^flags' /proc/cpuinfo | grep -qwE 'avx512_bf16|amx_bf16'; then default_precisions="fp32 bf16"; else default_precisions="fp32"; fi
precisions="${BENCH_PRECISIONS:-$default_precisions}"
bench=target/debug/inception-bench
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
rate() { sed -n 's/.*: \([0-9.]*\) img\/s.*/\1/p'; }
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
# two_ranks ARGS...: inception-bench as 2 ranks x 1 thread; rank 0's line.
two_ranks() {
  local port rank1 line
  port="$(free_port)"
  WORLD_SIZE=2 RANK=1 MASTER_ADDR=127.0.0.1 MASTER_PORT="$port" "$bench" "$@" --threads 1 >/dev/null &
  rank1=$!
  line="$(WORLD_SIZE=2 RANK=0 MASTER_ADDR=127.0.0.1 MASTER_PORT="$port" "$bench" "$@" --threads 1)"
  wait "$rank1"
  echo "$line"
}
# record ROUND PRECISION SHAPE LINE
record() { echo "round $1 $2 $3 | $4" | tee -a "$log"; }
# efficiency ROUND PRECISION WHAT ONE TWO
efficiency() {
  echo "$(echo "$4" | rate) $(echo "$5" | rate)" \
    | awk -v r="$1" -v p="$2" -v w="$3" '{ printf "round %s %s scaling efficiency, %s: %.3f\n", r, p, w, $2 / $1 }' \
    | tee -a "$log"
}
for round in $(seq "$rounds"); do
  for precision in $precisions; do
    common=(--image-size "$size" --batch-size "$batch" --steps "$steps" --device cpu --precision "$precision")
    one="$("$bench" "${common[@]}" --threads 2)"
    record "$round" "$precision" 1x2 "$one"
    two="$(two_ranks "${common[@]}")"
    record "$round" "$precision" 2x1 "$two"
    efficiency "$round" "$precision" "all-reduce overlapped" "$one" "$two"
    after="$(two_ranks "${common[@]}" --no-overlap)"
    record "$round" "$precision" 2x1-after "$after"
    efficiency "$round" "$precision" "all-reduce after the backward pass" "$one" "$after"
    torch_common=(bench/torchvision_bench.py --image-size "$size" --batch-size "$batch" --steps "$steps" --precision "$precision" --channels-last --no-aux)
    one="$(.venv/bin/python "${torch_common[@]}" --threads 2)"
    record "$round" "$precision" torch-1x2 "$one"
    two="$(.venv/bin/torchrun --standalone --nproc-per-node 2 "${torch_common[@]}" --threads 1 2>/dev/null)"
    record "$round" "$precision" torch-2x1 "$two"
    efficiency "$round" "$precision" "PyTorch DDP" "$one" "$two"
  done
done
echo "medians over $rounds rounds:"
for precision in $precisions; do
  for shape in 1x2 2x1 2x1-after torch-1x2 torch-2x1; do
    grep " $precision $shape " "$log" | rate | sort -n | awk -v p="$precision" -v s="$shape" \
      '{ v[NR] = $1 } END { m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2; printf "  %s %s: %.2f img/s\n", p, s, m }'
  done
  grep " $precision 2x1-after " "$log" | sed -n 's/.*all-reduce \([0-9.]*\) s\/step, \([0-9.]*\)%.*/\1 \2/p' | sort -n | awk -v p="$precision" \
    '{ v[NR] = $1; w[NR] = $2 } END { i = int((NR + 1) / 2); printf "  %s all-reduce: %.3f s/step, %.1f%% of the step\n", p, v[i], w[i] }'
done
