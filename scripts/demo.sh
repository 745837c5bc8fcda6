#!/usr/bin/env bash
# The main job (`make demo`): set-up, then the whole pipeline locally on
# generated images (or `--images DIR`), ending with the evaluator's line.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
. scripts/env.sh
exec target/debug/inception demo "$@"
