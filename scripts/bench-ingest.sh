#!/usr/bin/env bash
# Ingest throughput: ours (release inception-ingest) beside TensorFlow doing
# what build_image_data.py does, on the same folder of generated ~500x375
# JPEGs, 2 threads and 2 shards each. Every contender gets one untimed
# warm-up run, then RUNS timed runs; each run and the median are printed.
#   INCEPTION_TF_PYTHON=/path/to/python-with-tensorflow scripts/bench-ingest.sh [IMAGES] [RUNS]
# TensorFlow is not installed by the project (too big): e.g.
#   python3 -m venv /tmp/tfvenv && /tmp/tfvenv/bin/pip install tensorflow-cpu==2.21.0
set -euo pipefail
cd "$(dirname "$0")/.."
n="${1:-2000}"
runs="${2:-5}"
py="${INCEPTION_TF_PYTHON:?set INCEPTION_TF_PYTHON to a Python that can import tensorflow}"
. scripts/env.sh
cargo build --release --locked -p inception-ingest >/dev/null
work="$(mktemp -d)"
nats_pid=""
cleanup() { if [ -n "$nats_pid" ]; then kill "$nats_pid" 2>/dev/null || true; fi; rm -rf "$work"; }
trap cleanup EXIT
export TF_CPP_MIN_LOG_LEVEL=3
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
"$py" bench/tf_build_image_data.py generate "$work/images" "$n"
echo "images: $n JPEGs, $(du -sh "$work/images" | cut -f1)"
# Every contender reads the images from the page cache, not the first one from disk.
find "$work/images" -type f -exec cat {} + >/dev/null
port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
nats-server -js -a 127.0.0.1 -p "$port" -sd "$work/js" >"$work/nats.log" 2>&1 &
nats_pid=$!
sleep 1
median() { python3 -c 'import statistics, sys; print(f"{statistics.median(map(float, sys.argv[1:])):.0f}")' "$@"; }
ours_once() { # $1 = ingest.jpeg_check, $2 = run name; prints images/s
  local log="$work/ours-$1-$2.log"
  rm -rf "$work/store"
  sync # every run starts with nothing left to flush from the one before
  INCEPTION__NATS__URL="nats://127.0.0.1:$port" INCEPTION__INGEST__METRICS_ADDR=127.0.0.1:0 RUST_LOG=info NO_COLOR=1 \
    "${CARGO_TARGET_DIR:-target}/release/inception-ingest" --train-directory "$work/images" --output "file://$work/store" \
    --dataset "bench-$1-$2" --train-shards 2 --num-threads 2 --jpeg-check "$1" >/dev/null 2>"$log"
  # Same scope as the TensorFlow figure (conversion threads to shards written
  # and announced, no start-up), from ingest's own log line.
  grep -o 'train: .* images/s)' "$log" | tail -1 | sed 's/.*(\([0-9.]*\) images\/s)/\1/'
}
ours() { # $1 = ingest.jpeg_check
  local all=() start end
  ours_once "$1" warmup >/dev/null
  for i in $(seq "$runs"); do all+=("$(ours_once "$1" "$i")"); done
  echo "ours (jpeg_check=$1): median $(median "${all[@]}") images/sec; runs: ${all[*]}"
  # The whole process once more, start-up and NATS connection included.
  start=$(date +%s.%N); ours_once "$1" whole >/dev/null; end=$(date +%s.%N)
  python3 -c "import sys; n, t = int(sys.argv[1]), float(sys.argv[3]) - float(sys.argv[2]); print(f'  whole process incl. start-up and NATS: {t:.2f} s = {n/t:.1f} images/sec')" "$n" "$start" "$end"
}
tensorflow() {
  local all=()
  for i in warmup $(seq "$runs"); do
    rm -rf "$work/tf"
    sync
    all+=("$("$py" bench/tf_build_image_data.py convert "$work/images" "$work/tf" 2 2 2>/dev/null | sed -n 's/.* = \([0-9.]*\) images\/sec.*/\1/p')")
  done
  all=("${all[@]:1}")
  echo "tensorflow $("$py" -c 'import tensorflow as tf; print(tf.__version__)' 2>/dev/null) (build_image_data.py's work): median $(median "${all[@]}") images/sec; runs: ${all[*]}"
}
ours markers
ours decode
tensorflow
