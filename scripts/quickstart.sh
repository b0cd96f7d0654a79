#!/usr/bin/env bash
# A single-machine fleet: a local OCI registry with the example images, the coordinator
# (embedded MQTT broker over mutual TLS, and store), one agent enrolled with a join token,
# and the example app applied and answering. Nothing here lets another local user read or
# command the agent (docs/security.md, "Local users and the broker").
#
#   sudo scripts/quickstart.sh        # bring it up (idempotent)
#   sudo scripts/quickstart.sh down   # stop everything it started; pods are stopped too
#
# State lives in .baton/ in this checkout; logs in .baton/*.log.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
state=$root/.baton
# BATON_QUICKSTART_PROFILE=debug uses (and builds) debug binaries: quicker to build.
profile=${BATON_QUICKSTART_PROFILE:-release}
bin=$root/target/$profile
export BATON_SERVER=http://127.0.0.1:7474
# The coordinator writes an admin CLI config (server + token) on first start.
export BATON_CONFIG=$state/coordinator/admin.conf
node=${BATON_NODE_NAME:-$(hostname | tr -c 'A-Za-z0-9._\n-' '-' | cut -c1-63)}

stop_pid() { # name
  local f=$state/$1.pid
  [ -f "$f" ] || return 0
  local pid; pid=$(cat "$f")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid"
    for _ in $(seq 1 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$f"
}

if [ "${1:-up}" = down ]; then
  stop_pid agent
  [ -x "$bin/baton-agent" ] && "$bin/baton-agent" reset --node-name "$node" --data-dir "$state/agent" >/dev/null 2>&1 || true
  stop_pid coordinator
  images/registry.sh stop 127.0.0.1:5000 "$state/registry" || true
  echo "quickstart: stopped"
  exit 0
fi

[ "$(id -u)" = 0 ] || { echo "quickstart: run as root (the agent creates cgroups and namespaces)" >&2; exit 1; }
scripts/install-deps.sh
if [ "$profile" = debug ]; then cargo build --locked --bins; else cargo build --release --locked --bins; fi
mkdir -p "$state"

images/registry.sh start 127.0.0.1:5000 "$state/registry"
images/build.sh --push 127.0.0.1:5000 >/dev/null

start() { # name, command...
  local name=$1; shift
  if [ -f "$state/$name.pid" ] && kill -0 "$(cat "$state/$name.pid")" 2>/dev/null; then return 0; fi
  setsid "$@" >>"$state/$name.log" 2>&1 < /dev/null &
  echo $! > "$state/$name.pid"
}
start coordinator "$bin/baton" server --data-dir "$state/coordinator"
for _ in $(seq 1 100); do "$bin/baton" get nodes >/dev/null 2>&1 && break; sleep 0.2; done
# First start: a single-use join token, bound to this node, enrolls the agent (its key,
# node certificate and the coordinator's CA land in .baton/agent/); later starts need none.
# Passed in the environment, not argv, which every local user can read.
token=
if [ ! -f "$state/agent/identity.json" ]; then
  token=$("$bin/baton" token create --ttl 10m --node-name "$node")
fi
BATON_JOIN_TOKEN=$token start agent "$bin/baton-agent" --node-name "$node" --data-dir "$state/agent" \
  --coordinator-api "$BATON_SERVER" --insecure-registry 127.0.0.1:5000

echo "quickstart: waiting for node $node"
for _ in $(seq 1 150); do "$bin/baton" get nodes 2>/dev/null | grep -q " Ready" && break; sleep 0.2; done
"$bin/baton" apply -f examples/hello.yaml

echo "quickstart: waiting for the example app on http://127.0.0.1:8080/"
for _ in $(seq 1 300); do curl -fsS --max-time 2 http://127.0.0.1:8080/cgi-bin/info >/dev/null 2>&1 && break; sleep 0.3; done
"$bin/baton" get nodes
"$bin/baton" get pods -o wide
echo
curl -fsS http://127.0.0.1:8080/cgi-bin/info
echo
echo "quickstart: up. Try: BATON_CONFIG=$BATON_CONFIG $bin/baton get pods; ... describe deployment hello"
echo "quickstart: stop with: sudo scripts/quickstart.sh down"
