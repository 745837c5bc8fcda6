#!/usr/bin/env bash
# Tools that check deploy/ (tests/tests/deploy.rs and observability.rs), pinned
# and idempotent like scripts/setup.sh; `make test` runs it. Re-running it only
# does what is missing (a few version checks when everything is there).
#
#   .tools/bin/prometheus, promtool  Debian's `prometheus` 2.42.0 (bookworm):
#                                    the .deb is unpacked here, not installed,
#                                    so no system service is started
#   .tools/bin/kubectl               Debian's `kubernetes-client` 1.20.2, for
#                                    `kubectl kustomize` (kustomize v2 built in)
#   .venv/bin/kubernetes-validate    PyPI `kubernetes-validate` 1.37.0 (bundles
#                                    the Kubernetes API schemas; works offline)
#   /usr/bin/docker-compose          Debian's `docker-compose` 1.29.2, for
#                                    `docker-compose config` (needs no engine);
#                                    installed with apt-get (run as root)
#
# Debian pins name the upstream version; a security rebuild (+deb12uN) of the
# same upstream version is accepted, any other version is refused.
set -euo pipefail
cd "$(dirname "$0")/.."

PROMETHEUS_VERSION=2.42.0+ds-          # prometheus 2.42.0
KUBECTL_VERSION=1.20.5+really1.20.2-   # kubectl v1.20.2
DOCKER_COMPOSE_VERSION=1.29.2-         # docker-compose 1.29.2
KUBERNETES_VALIDATE_VERSION=1.37.0
TOOLS=.tools

log() { printf '[setup-ops] %s\n' "$*" >&2; }
mkdir -p "$TOOLS/bin" "$TOOLS/stamps"

apt_updated=0
# Debian's candidate version of package $1 that starts with $2 (updating the
# package lists once if needed), or a clear failure.
candidate() {
  local pkg="$1" want="$2" v
  v="$(apt-cache policy "$pkg" 2>/dev/null | awk '/Candidate:/ { print $2 }')"
  if [[ "$v" != "$want"* ]] && [ "$apt_updated" = 0 ]; then
    log "apt-get update (looking for $pkg $want*)"
    apt-get update -qq >&2
    apt_updated=1
    v="$(apt-cache policy "$pkg" 2>/dev/null | awk '/Candidate:/ { print $2 }')"
  fi
  if [[ "$v" != "$want"* ]]; then
    log "Debian offers $pkg '${v:-nothing}', not $want*: update the pin in scripts/setup-ops.sh"
    return 1
  fi
  printf '%s\n' "$v"
}

# Unpacks Debian package $1 (version $2*) under .tools/<pkg> and links $3... into .tools/bin.
unpack() {
  local pkg="$1" want="$2"
  shift 2
  if [ -f "$TOOLS/stamps/$pkg" ] && [[ "$(cat "$TOOLS/stamps/$pkg")" == "$want"* ]]; then
    return 0
  fi
  local version dl
  version="$(candidate "$pkg" "$want")"
  log "unpacking Debian's $pkg $version into $TOOLS/$pkg"
  dl="$(mktemp -d)"
  (cd "$dl" && apt-get download -q -o APT::Sandbox::User=root "$pkg=$version" >&2)
  rm -rf "$TOOLS/$pkg"
  dpkg-deb -x "$dl"/*.deb "$TOOLS/$pkg"
  rm -rf "$dl"
  for bin in "$@"; do
    ln -sfn "../$pkg/usr/bin/$bin" "$TOOLS/bin/$bin"
  done
  printf '%s\n' "$version" > "$TOOLS/stamps/$pkg"
}

unpack prometheus "$PROMETHEUS_VERSION" prometheus promtool
unpack kubernetes-client "$KUBECTL_VERSION" kubectl

installed_version="$(dpkg-query -W -f='${Version}' docker-compose 2>/dev/null || true)"
if [[ "$installed_version" != "$DOCKER_COMPOSE_VERSION"* ]]; then
  version="$(candidate docker-compose "$DOCKER_COMPOSE_VERSION")"
  log "apt-get install docker-compose=$version"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "docker-compose=$version" >&2
fi

if [ ! -x .venv/bin/python ]; then
  log "no .venv: run scripts/setup.sh first"
  exit 1
fi
if ! .venv/bin/python - "$KUBERNETES_VALIDATE_VERSION" <<'PY' 2>/dev/null; then
import importlib.metadata as m, sys
sys.exit(0 if m.version("kubernetes-validate") == sys.argv[1] else 1)
PY
  log "installing kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"
  .venv/bin/pip install --quiet --disable-pip-version-check "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"
fi
