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
# BENCH_PRECISIONS (default "fp32 bf16", "fp32" on a CPU without avx512_bf16
# or amx_bf16): ours in each (train.precision), and
# PyTorch with torch.autocast in each, channels_last; PyTorch's plain fp32 and
# fp32 with our malloc settings as before.
flags="$(grep -m1 '^flags' /proc/cpuinfo | tr ' ' '\n' | grep -E '^(amx_bf16|avx512_bf16|avx512f|amx_tile)$' | xargs || true)"
echo "bf16-related CPU flags: ${flags:-none}"
# bf16 only where the CPU has bf16 instructions: emulated, it is ~11x slower.
case " $flags " in
  *" avx512_bf16 "* | *" amx_bf16 "*) default_precisions="fp32 bf16" ;;
  *) default_precisions="fp32" ;;
esac
precisions="${BENCH_PRECISIONS:-$default_precisions}"
for size in $sizes; do
  aux=""
  if [ -z "$eval_flag" ] && [ "$size" -lt 299 ]; then aux="--no-aux"; fi
  for round in $(seq "$rounds"); do
    for precision in $precisions; do
      target/debug/inception-bench $eval_flag $aux --image-size "$size" --threads "$threads" --steps "$steps" --device cpu \
        --precision "$precision" | sed "s/^/$size ours-$precision | /" | tee -a "$log"
      python bench/torchvision_bench.py $eval_flag $aux --image-size "$size" --threads "$threads" --steps "$steps" \
        --precision "$precision" --channels-last 2>/dev/null | sed "s/^/$size torch-$precision-cl | /" | tee -a "$log"
    done
    python bench/torchvision_bench.py $eval_flag $aux --image-size "$size" --threads "$threads" --steps "$steps" 2>/dev/null \
      | sed "s/^/$size torch-fp32 | /" | tee -a "$log"
    # PyTorch again with the malloc settings our services use by default
    # (train/eval.retain_freed_memory), set through glibc's environment.
    MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=2147483647 \
      python bench/torchvision_bench.py $eval_flag $aux --image-size "$size" --threads "$threads" --steps "$steps" 2>/dev/null \
      | sed "s/^/$size torch-fp32+malloc | /" | tee -a "$log"
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
    ours = max((v, k) for k, v in med.items() if k.startswith("ours"))
    torch = max((v, k) for k, v in med.items() if k.startswith("torch"))
    listed = ", ".join(f"{k} {v:.2f}" for k, v in sorted(med.items()))
    print(f"{size} px medians over {len(next(iter(by.values())))} round(s), img/s: {listed}")
    print(f"{size} px best: ours {ours[1]} {ours[0]:.2f} vs torch {torch[1]} {torch[0]:.2f}: {ours[0] / torch[0]:.2f}x")
PY
