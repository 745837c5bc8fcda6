# Sourced by the set-up and run scripts: the environment the build and the
# binaries expect. tch finds libtorch through the venv's python
# (LIBTORCH_USE_PYTORCH); binaries carry an rpath to torch/lib, and
# LD_LIBRARY_PATH is set as well for tools that bypass it.
_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PATH="$_root/.venv/bin:$PATH"
export LIBTORCH_USE_PYTORCH=1
_torch_lib="$("$_root/.venv/bin/python" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))' 2>/dev/null || true)"
if [ -n "$_torch_lib" ]; then
  export LD_LIBRARY_PATH="$_torch_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
export INCEPTION_NATS_SERVER="$_root/.venv/bin/nats-server"
unset _root _torch_lib
