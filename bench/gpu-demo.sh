#!/usr/bin/env bash
# On the lent GPU machine (built by `scripts/build-gpu-bench.sh --demo`): the
# main job, `inception demo`, with the trainer and evaluator on CUDA and the
# full-size model. Arguments go to `inception demo`.
set -x
export LD_LIBRARY_PATH="${TORCH_LIB:-$(python3 -c 'import os, torch; print(os.path.dirname(torch.__file__))')/lib}"
mkdir -p /tmp/demo-bin && tar -C /tmp/demo-bin -xzf .gpu/demo.tar.gz
export INCEPTION_NATS_SERVER=/tmp/demo-bin/nats-server
/tmp/demo-bin/inception demo --workdir /tmp/demo "$@"
echo "exit $?"
