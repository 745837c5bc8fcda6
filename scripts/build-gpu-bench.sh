#!/usr/bin/env bash
# Builds `inception-bench` for the lent GPU machine (docs/benchmarks.md, "On a
# GPU"): that machine has PyTorch 2.11 (CUDA 13) and no Rust toolchain, and
# only 64 MiB of the tree travels. So the binary is built here against the
# same torch 2.11 wheel (headers and libraries only, not installed) with tch
# 0.24, the tch release for torch 2.11, in a copy of the tree (the project
# itself stays on tch 0.26 / torch 2.13), and lands stripped in .gpu/ with
# bench/gpu.sh beside it. Run there: `bash .gpu/gpu.sh`, carrying `.gpu`.
# With --demo, also every service binary and nats-server, compressed into
# .gpu/demo.tar.gz (they would not fit in 64 MiB as they are), with
# bench/gpu-demo.sh: the main job (`inception demo`) on the GPU.
#   scripts/build-gpu-bench.sh [--demo]
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD"
scripts/setup.sh >/dev/null
work="${GPU_BENCH_WORK:-/tmp/inception-gpu-bench}"
torch="$work/site/torch"
mkdir -p "$work/site"
if [ ! -f "$torch/lib/libtorch_cuda.so" ]; then
  .venv/bin/python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --platform manylinux_2_28_x86_64 -d "$work" torch==2.11.0
  unzip -q -o "$work"/torch-2.11.0-*.whl 'torch/include/*' 'torch/lib/*' 'torch/share/*' -d "$work/site"
fi
# libtorch_cuda's rpath ($ORIGIN/../../nvidia/...) finds the CUDA libraries it
# links against: the project's venv has the same CUDA 13 ones.
ln -sfn "$(echo "$root"/.venv/lib/python3*/site-packages/nvidia)" "$work/site/nvidia"
rm -rf "$work/src" && mkdir -p "$work/src"
# The working tree as it is (new files included), as the device run would see it.
git ls-files -z --cached --others --exclude-standard | while IFS= read -r -d '' f; do
  if [ -e "$f" ]; then cp --parents "$f" "$work/src/"; fi
done
cd "$work/src"
sed -i 's/^tch = .*/tch = "=0.24.0"/' Cargo.toml
services=(inception inception-ingest inception-preprocess inception-trainer inception-evaluator)
packages=(-p inception-trainer)
[ "${1:-}" = --demo ] && packages=(-p inception-cli -p inception-ingest -p inception-preprocess -p inception-trainer -p inception-evaluator)
env -u LIBTORCH_USE_PYTORCH LIBTORCH="$torch" LIBTORCH_BYPASS_VERSION_CHECK=1 CARGO_TARGET_DIR="$work/target" \
  cargo build --release "${packages[@]}" --bins
mkdir -p "$root/.gpu"
strip -o "$root/.gpu/inception-bench" "$work/target/release/inception-bench"
cp "$root/bench/gpu.sh" "$root/.gpu/gpu.sh"
if [ "${1:-}" = --demo ]; then
  rm -rf "$work/demo" && mkdir -p "$work/demo"
  for b in "${services[@]}"; do strip -o "$work/demo/$b" "$work/target/release/$b"; done
  cp "$root/.venv/bin/nats-server" "$work/demo/"
  tar -C "$work/demo" -czf "$root/.gpu/demo.tar.gz" .
  cp "$root/bench/gpu-demo.sh" "$root/.gpu/gpu-demo.sh"
fi
grep -qx '/.gpu/' "$root/.git/info/exclude" 2>/dev/null || { mkdir -p "$root/.git/info"; echo /.gpu/ >> "$root/.git/info/exclude"; }
echo "built $root/.gpu/inception-bench; on the GPU machine: bash .gpu/gpu.sh (carry .gpu)"
