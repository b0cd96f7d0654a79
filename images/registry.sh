#!/usr/bin/env bash
# Starts or stops a throwaway OCI registry (Debian's docker-registry, Distribution 2.8) for
# tests and demos. Everything it owns lives in DATA_DIR: config, storage, log and pidfile.
#
#   images/registry.sh start ADDR DATA_DIR   # ADDR like 127.0.0.1:5000; returns once /v2/ answers
#   images/registry.sh stop  ADDR DATA_DIR
#
# Works under `ip netns exec NS`: the daemon inherits the namespace, and the readiness
# probe runs from the same one. Only the HTTP listener is configured: no debug or
# prometheus listeners; by default no auth and plain HTTP.
#
# Optional environment (for auth and TLS tests):
#   REG_HTPASSWD=FILE   basic auth against an htpasswd file (bcrypt lines)
#   REG_TLS_CERT=FILE REG_TLS_KEY=FILE   serve HTTPS with this certificate
#   REG_STORAGE=DIR     storage root (default DATA_DIR/storage); lets a second
#                            registry serve what another one holds
#   REG_TOKEN_REALM=URL REG_TOKEN_SERVICE=NAME REG_TOKEN_ISSUER=NAME REG_TOKEN_ROOTCERTS=FILE
#                       bearer-token auth as Docker Hub does it: clients are sent to the
#                       realm for a JWT, which must be issued by ISSUER for SERVICE and signed
#                       by a key whose certificate is in the PEM bundle (not with REG_HTPASSWD)
# (Not REGISTRY_*: docker-registry reads those as overrides of its own config.)
set -euo pipefail

usage() { echo "usage: $0 start|stop ADDR DATA_DIR" >&2; exit 2; }
[ $# -eq 3 ] || usage
action=$1 addr=$2 data=$3
registry_bin=${REGISTRY_BIN:-/usr/bin/docker-registry}
pidfile="$data/registry.pid"

# True if the pidfile names a live docker-registry (not a recycled pid).
running() {
  [ -f "$pidfile" ] || return 1
  local pid
  pid=$(cat "$pidfile")
  [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q "docker-registry"
}

case "$action" in
  start)
    [ -x "$registry_bin" ] || { echo "registry.sh: $registry_bin missing; run scripts/install-deps.sh" >&2; exit 1; }
    storage=${REG_STORAGE:-$data/storage}
    mkdir -p "$data" "$storage"
    data=$(cd "$data" && pwd)
    storage=$(cd "$storage" && pwd)
    scheme=http
    extra=""
    if [ -n "${REG_HTPASSWD:-}" ]; then
      extra+=$'auth:\n  htpasswd:\n    realm: baton-registry\n    path: '"$REG_HTPASSWD"$'\n'
    fi
    if [ -n "${REG_TOKEN_REALM:-}" ]; then
      [ -z "${REG_HTPASSWD:-}" ] || { echo "registry.sh: REG_HTPASSWD and REG_TOKEN_REALM exclude each other" >&2; exit 2; }
      extra+=$'auth:\n  token:\n    realm: '"$REG_TOKEN_REALM"
      extra+=$'\n    service: '"${REG_TOKEN_SERVICE:?REG_TOKEN_SERVICE is needed with REG_TOKEN_REALM}"
      extra+=$'\n    issuer: '"${REG_TOKEN_ISSUER:?REG_TOKEN_ISSUER is needed with REG_TOKEN_REALM}"
      extra+=$'\n    rootcertbundle: '"${REG_TOKEN_ROOTCERTS:?REG_TOKEN_ROOTCERTS is needed with REG_TOKEN_REALM}"$'\n'
    fi
    if [ -n "${REG_TLS_CERT:-}" ]; then
      scheme=https
      tls=$'  tls:\n    certificate: '"$REG_TLS_CERT"$'\n    key: '"${REG_TLS_KEY:?REG_TLS_KEY is needed with REG_TLS_CERT}"$'\n'
    else
      tls=""
    fi
    pidfile="$data/registry.pid"
    if running; then
      echo "registry.sh: already running (pid $(cat "$pidfile"))" >&2
      exit 1
    fi
    cat >"$data/config.yml" <<EOF
version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $storage
  delete:
    enabled: true
${extra}http:
  addr: $addr
${tls}
EOF
    # setsid: the registry must outlive this script and not share its process group.
    setsid "$registry_bin" serve "$data/config.yml" </dev/null >"$data/registry.log" 2>&1 &
    echo $! >"$pidfile"
    for _ in $(seq 1 200); do
      # Any HTTP answer means it serves: 401 is what an auth registry says to anyone.
      code=$(curl -ksS -o /dev/null -w '%{http_code}' --max-time 1 "$scheme://$addr/v2/" 2>/dev/null || true)
      if [ "$code" = 200 ] || [ "$code" = 401 ]; then
        exit 0
      fi
      if ! running; then
        echo "registry.sh: docker-registry exited; log:" >&2
        cat "$data/registry.log" >&2
        rm -f "$pidfile"
        exit 1
      fi
      sleep 0.1
    done
    echo "registry.sh: no answer from $scheme://$addr/v2/ after 20 s; log:" >&2
    cat "$data/registry.log" >&2
    kill "$(cat "$pidfile")" 2>/dev/null || true
    rm -f "$pidfile"
    exit 1
    ;;
  stop)
    if ! running; then
      rm -f "$pidfile"
      exit 0
    fi
    pid=$(cat "$pidfile")
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do
      [ -d "/proc/$pid" ] || break
      sleep 0.1
    done
    [ -d "/proc/$pid" ] && kill -KILL "$pid" 2>/dev/null || true
    rm -f "$pidfile"
    ;;
  *) usage ;;
esac
