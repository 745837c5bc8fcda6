#!/usr/bin/env bash
# The main job. `make demo` (scripts/demo.sh [ARGS]): set-up, then
# `inception demo`, i.e. `inception train` on generated images, in var/demo.
# `make train DIR=photos` (scripts/demo.sh train DIR [ARGS]): set-up, then
# `inception train DIR` in ./inception-work. Both end with the command that
# classifies with the run's best checkpoint; every run is kept.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
. scripts/env.sh
if [ "${1:-}" = train ]; then
    shift
    exec target/debug/inception train "$@"
fi
exec target/debug/inception demo "$@"
