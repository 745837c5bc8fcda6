#!/usr/bin/env bash
# The test command (`make test`, and CI's .ci/run): set-up, then every test
# of the workspace: unit tests of each crate and the cross-service tests in
# tests/, which start their own nats-server on a free loopback port (and
# check deploy/ with the tools scripts/setup-ops.sh installs).
# The lint gate comes first: the tree must be formatted (rustfmt.toml) and
# clippy-clean with the workspace lints (Cargo.toml, clippy.toml).
# Ends with one summary line over all test binaries.
set -euo pipefail
cd "$(dirname "$0")/.."
# CI builds once, from nothing: incremental caches (GBs) would only take disk.
if [ -n "${CI:-}" ]; then export CARGO_INCREMENTAL=0; fi
cargo fmt --all -- --check || { echo "cargo fmt --check failed: run cargo fmt --all" >&2; exit 1; }
scripts/setup.sh
scripts/setup-ops.sh   # promtool, prometheus, kubectl, docker-compose, kubernetes-validate for deploy/ checks
. scripts/env.sh
cargo clippy --locked --workspace --all-targets -- -D warnings
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
status=0
cargo test --locked --workspace "$@" 2>&1 | tee "$log" || status=$?
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i; if ($(i+1) ~ /^ignored/) s += $i } }
     END { printf "\ntests: %d passed, %d failed, %d skipped\n", p, f, s }' "$log"
exit "$status"
