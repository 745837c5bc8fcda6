#!/usr/bin/env bash
# The serving benchmark: requests/s and latency p50/p99 of inception-serve with
# 1, 8 and 32 concurrent clients on loopback, beside a plain PyTorch server
# (bench/serve_torch.py: torchvision's inception_v3, the same weights,
# Python's http.server, one request at a time). Random weights, written by the
# project (services/serve/examples/serve_bench.rs), promoted as the gate
# would; every request is the same demo photo.
#   scripts/bench-serve.sh [--sizes "299 75"] [--clients "1 8 32"] [--requests N]
#                          [--max-seconds S] [--depth-multiplier D] [--batch-size B]
#                          [--max-wait 5ms] [--threads T] [--precision P]
#                          [--torch-precision fp32|bf16] [--release] [--skip-torch]
#                          [--workdir DIR]
# --sizes: input sides; 299 is the published model. The full width is used
#   at every size (torchvision cannot build a narrower one); with
#   --depth-multiplier below 1 (the tests' 0.1) the baseline is skipped.
# --precision: serve.precision (default auto: bf16 on CPUs with avx512_bf16
#   or amx_bf16, else fp32). --torch-precision: the PyTorch baseline's
#   (default fp32, as plain serving scripts are; bf16: autocast and
#   channels_last, PyTorch's own fast recipe).
# --requests: requests of each run (one server, one client count; default
#   200), each run also bounded by --max-seconds (default 60). --release builds optimised binaries first
#   (the default is target/debug, whose hot crates are optimised anyway).
# A quick check (under a minute on 2 cores):
#   scripts/bench-serve.sh --sizes 75 --clients "1 8" --requests 40
# Prints a table and writes <workdir>/result.json (default var/bench-serve).
# Run it alone on the machine: it measures CPU throughput.
set -euo pipefail
cd "$(dirname "$0")/.."

sizes="299 75"
clients="1 8 32"
requests=200
max_seconds=60
depth=1.0
batch_size=16
max_wait=5ms
threads=0
precision=auto
torch_precision=fp32
profile=debug
skip_torch=0
workdir=var/bench-serve
while [ $# -gt 0 ]; do
  case "$1" in
    --sizes) sizes="$2"; shift 2 ;;
    --clients) clients="$2"; shift 2 ;;
    --requests) requests="$2"; shift 2 ;;
    --max-seconds) max_seconds="$2"; shift 2 ;;
    --depth-multiplier) depth="$2"; shift 2 ;;
    --batch-size) batch_size="$2"; shift 2 ;;
    --max-wait) max_wait="$2"; shift 2 ;;
    --threads) threads="$2"; shift 2 ;;
    --precision) precision="$2"; shift 2 ;;
    --torch-precision) torch_precision="$2"; shift 2 ;;
    --release) profile=release; shift ;;
    --skip-torch) skip_torch=1; shift ;;
    --workdir) workdir="$2"; shift 2 ;;
    -h|--help) sed -n '2,27p' "$0"; exit 0 ;;
    *) echo "bench-serve: unknown argument $1" >&2; exit 2 ;;
  esac
done
if [ ! -x .venv/bin/python ]; then
  echo "bench-serve: no .venv: run scripts/setup.sh first" >&2
  exit 1
fi
. scripts/env.sh

build=(cargo build -q -p inception-serve --bin inception-serve --example serve_bench)
[ "$profile" = release ] && build+=(--release)
env -u RUST_BACKTRACE "${build[@]}"
serve_bin="target/$profile/inception-serve"
bench_bin="target/$profile/examples/serve_bench"

rm -rf "$workdir"
mkdir -p "$workdir"
workdir="$(realpath "$workdir")"
results="$workdir/results.jsonl"
: >"$results"

# A free loopback port.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Waits up to 10 minutes for URL to answer 200 (a 299 px model loads in seconds).
wait_ready() {
  local url="$1" pid="$2" i
  for i in $(seq 1 6000); do
    if curl -fs -o /dev/null "$url"; then return 0; fi
    if ! kill -0 "$pid" 2>/dev/null; then echo "bench-serve: server $pid exited" >&2; return 1; fi
    sleep 0.1
  done
  echo "bench-serve: $url never became ready" >&2
  return 1
}

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

# load SERVER SIZE URL: warm up, then one run per client count.
load() {
  local server="$1" size="$2" url="$3" c
  # Warm-up: first passes of a new shape are slow in both libtorch servers.
  "$bench_bin" load --url "$url" --image "$dir/photo.jpg" --clients 1 --requests 5 --max-seconds "$max_seconds" >/dev/null
  "$bench_bin" load --url "$url" --image "$dir/photo.jpg" --clients 4 --requests 8 --max-seconds "$max_seconds" >/dev/null
  for c in $clients; do
    local line
    line="$("$bench_bin" load --url "$url" --image "$dir/photo.jpg" --clients "$c" \
      --requests "$requests" --max-seconds "$max_seconds")"
    echo "{\"server\": \"$server\", \"image_size\": $size, \"result\": $line}" >>"$results"
    echo "  $server ${size}px clients=$c: $line"
  done
}

for size in $sizes; do
  dir="$workdir/$size"
  mkdir -p "$dir"
  weights="$("$bench_bin" checkpoint --dir "$dir" --run bench --image-size "$size" --depth-multiplier "$depth")"
  echo "== ${size} px, depth multiplier $depth"

  port="$(free_port)"; metrics="$(free_port)"
  INCEPTION__STORE__URL="file://$dir/store" \
  INCEPTION__PIPELINE__RUN=bench \
  INCEPTION__NATS__URL=nats://127.0.0.1:1 \
  INCEPTION__SERVE__LISTEN_ADDR="127.0.0.1:$port" \
  INCEPTION__SERVE__METRICS_ADDR="127.0.0.1:$metrics" \
  INCEPTION__SERVE__DEVICE=cpu \
  INCEPTION__SERVE__THREADS="$threads" \
  INCEPTION__SERVE__PRECISION="$precision" \
  INCEPTION__SERVE__BATCH_SIZE="$batch_size" \
  INCEPTION__SERVE__MAX_WAIT="$max_wait" \
  RUST_LOG=warn "$serve_bin" 2>"$dir/serve.log" &
  pid=$!; pids+=("$pid")
  wait_ready "http://127.0.0.1:$port/readyz" "$pid"
  load "inception-serve-$precision" "$size" "http://127.0.0.1:$port/v1/classify"
  curl -fs "http://127.0.0.1:$metrics/metrics" | grep '^inception_serve_\(batch_images_sum\|batch_images_count\|forward_seconds_sum\|forward_seconds_count\|request_seconds_sum\|request_seconds_count\|info\)' \
    | tr '\n' ' ' | sed 's/^/  batches: /'; echo
  kill "$pid"; wait "$pid" 2>/dev/null || true

  if [ "$skip_torch" = 1 ] || [ "$depth" != 1.0 ]; then
    echo "  (PyTorch baseline skipped)"
    continue
  fi
  port="$(free_port)"
  .venv/bin/python bench/serve_torch.py --weights "$weights" --port "$port" --image-size "$size" \
    --threads "$threads" --precision "$torch_precision" 2>"$dir/torch.log" &
  pid=$!; pids+=("$pid")
  wait_ready "http://127.0.0.1:$port/" "$pid"
  load "pytorch-http.server-$torch_precision" "$size" "http://127.0.0.1:$port/v1/classify"
  kill "$pid"; wait "$pid" 2>/dev/null || true
done

python3 - "$results" "$workdir/result.json" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
json.dump(rows, open(sys.argv[2], "w"), indent=1)
print(f"\n{'server':<22}{'px':>5}{'clients':>9}{'ok':>6}{'failed':>8}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}")
for r in rows:
    x = r["result"]
    print(f"{r['server']:<22}{r['image_size']:>5}{x['clients']:>9}{x['ok']:>6}{x['failed']:>8}"
          f"{x['requests_per_second']:>9.1f}{x['p50_ms']:>9.1f}{x['p99_ms']:>9.1f}")
EOF
