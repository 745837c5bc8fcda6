#!/usr/bin/env bash
# The learning benchmark: precision@1 on Fashion-MNIST's 10,000 test images
# against CPU seconds, our whole pipeline (separate services over NATS, as
# `inception demo` runs them) beside torchvision's inception_v3 in PyTorch,
# both stopped at the same CPU budget. The logic and what is counted:
# bench/learn.py; the recipe: bench/learn.toml.
#   scripts/bench-learn.sh [--build] [--cpu-budget SECONDS] [--config TOML] [--workers N]
#                          [--checkpoint-every STEPS] [--skip-ours] [--skip-torch]
#                          [--limit-train N] [--limit-validation N] [--workdir DIR]
# A quick check: scripts/bench-learn.sh --cpu-budget 60 --limit-train 2000 --limit-validation 500
# --build runs scripts/setup.sh (cargo build) first; without it the binaries
# in target/debug are used as they are. Installs Debian's
# dataset-fashion-mnist if it is missing (benchmark only, not part of set-up).
# Prints both curves, the final results and their ratio; writes
# <workdir>/result.json (default var/bench-learn).
# The fine-tuning experiment (instead of the comparison with torchvision):
#   scripts/bench-learn.sh --fine-tune-experiment [--base-budget S] [--tune-budget S]
#                          [--per-class N] [--tune-lr LR] [--config TOML] [--checkpoint-every STEPS]
#                          [--base-max-steps N] [--tune-max-steps N] [--reuse-base]
# trains ours on classes 0-4 (A) for --base-budget CPU seconds (default 600),
# then on --per-class (default 100) training images of each of classes 5-9
# (B) for --tune-budget CPU seconds (default 300) twice: from the base's
# weights (train.fine_tune, --tune-lr, default 0.0005) and from scratch;
# prints both precision@1 on B's 5000 test images, their curves and the
# difference; writes <workdir>/finetune/result.json. A quick check of the
# mechanics: scripts/bench-learn.sh --fine-tune-experiment --base-budget 40 --tune-budget 30
set -euo pipefail
cd "$(dirname "$0")/.."

build=0
args=()
for a in "$@"; do
  case "$a" in
    --build) build=1 ;;
    *) args+=("$a") ;;
  esac
done
if [ "$build" = 1 ]; then scripts/setup.sh >/dev/null; fi
if [ ! -x .venv/bin/python ]; then
  echo "bench-learn: no .venv: run scripts/setup.sh first (or pass --build)" >&2
  exit 1
fi
. scripts/env.sh

help=0
for a in "${args[@]}"; do
  case "$a" in -h|--help) help=1 ;; esac
done

# Fashion-MNIST's idx files: where Debian's package puts them, installed if missing.
find_data() {
  local d
  for d in /usr/share/datasets/fashion-mnist /usr/share/dataset-fashion-mnist; do
    if [ -e "$d/train-images-idx3-ubyte.gz" ] || [ -e "$d/train-images-idx3-ubyte" ]; then
      echo "$d"
      return 0
    fi
  done
  local f
  f="$(dpkg -L dataset-fashion-mnist 2>/dev/null | grep -m1 '/train-images-idx3-ubyte' || true)"
  if [ -n "$f" ] && [ -e "$f" ]; then dirname "$f"; return 0; fi
  return 1
}
data_args=()
if [ "$help" = 0 ]; then
  if ! data="$(find_data)"; then
    sudo=""
    if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
    echo "bench-learn: installing Debian's dataset-fashion-mnist" >&2
    if ! $sudo apt-get install -y dataset-fashion-mnist >/dev/null; then
      $sudo apt-get update >/dev/null
      $sudo apt-get install -y dataset-fashion-mnist >/dev/null
    fi
    data="$(find_data)" || { echo "bench-learn: dataset-fashion-mnist installed but no idx files found (dpkg -L dataset-fashion-mnist)" >&2; exit 1; }
  fi
  data_args=(--data-dir "$data")

  # Binaries older than the sources they are built from measure old code.
  oldest=""
  for b in inception-ingest inception-preprocess inception-trainer inception-evaluator; do
    f="target/debug/$b"
    if [ -f "$f" ] && { [ -z "$oldest" ] || [ "$f" -ot "$oldest" ]; }; then oldest="$f"; fi
  done
  if [ -n "$oldest" ]; then
    newer="$(find services proto config -newer "$oldest" \( -name '*.rs' -o -name '*.toml' -o -name '*.proto' \) 2>/dev/null | head -3)"
    if [ -n "$newer" ]; then
      echo "bench-learn: warning: sources changed since $oldest was built (e.g. $(echo "$newer" | tr '\n' ' '));" \
        "pass --build to rebuild" >&2
    fi
  fi
fi

exec python bench/learn.py "${data_args[@]}" "${args[@]}"
