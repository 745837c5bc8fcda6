#!/usr/bin/env bash
# Ingest throughput: ours (release inception-ingest) beside TensorFlow doing
# what build_image_data.py does, on the same folder of generated ~500x375
# JPEGs, 2 threads and 2 shards each.
#   INCEPTION_TF_PYTHON=/path/to/python-with-tensorflow scripts/bench-ingest.sh [IMAGES]
# TensorFlow is not installed by the project (too big): e.g.
#   python3 -m venv /tmp/tfvenv && /tmp/tfvenv/bin/pip install tensorflow-cpu==2.21.0
set -euo pipefail
cd "$(dirname "$0")/.."
n="${1:-2000}"
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
ours() { # $1 = ingest.jpeg_check
  local start end log
  log="$work/ours-$1.log"
  sync # every run starts with nothing left to flush from the one before
  start=$(date +%s.%N)
  INCEPTION__NATS__URL="nats://127.0.0.1:$port" INCEPTION__INGEST__METRICS_ADDR=127.0.0.1:0 RUST_LOG=info NO_COLOR=1 \
    "${CARGO_TARGET_DIR:-target}/release/inception-ingest" --train-directory "$work/images" --output "file://$work/store-$1" \
    --dataset "bench-$1" --train-shards 2 --num-threads 2 --jpeg-check "$1" >/dev/null 2>"$log"
  end=$(date +%s.%N)
  # Same scope as the TensorFlow figure (conversion threads to shards written,
  # no start-up), from ingest's own log line; then the whole process.
  echo "ours (jpeg_check=$1): $(grep -o 'train: .* images/s)' "$log" | tail -1 | sed 's/^train: //')"
  python3 -c "import sys; n, t = int(sys.argv[1]), float(sys.argv[3]) - float(sys.argv[2]); print(f'  whole process incl. start-up and NATS: {t:.2f} s = {n/t:.1f} images/sec')" "$n" "$start" "$end"
}
ours markers
ours decode
sync
"$py" bench/tf_build_image_data.py convert "$work/images" "$work/tf" 2 2
