#!/usr/bin/env bash
# Agent RSS with 10 pods with probes, by tests/bench/run.sh's fleet method (release builds, one
# machine, registry + coordinator with embedded broker + one agent, VmRSS after settling).
# The figure "agent RSS with 10 pods that have probes" in docs/benchmarks.md, against the
# same 10 pods without probes measured in the same run. As root, after
# `cargo build --release --bins`:
#
#   tests/bench/probes.sh [BIN_DIR] [ENV=VALUE ...]   # e.g. target/release MALLOC_ARENA_MAX=2
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
bindir=${1:-$root/target/release}; [ $# -gt 0 ] && shift
agent_env=("$@")
agent_env+=("BATON_AGENT_RUN_DIR=/run/baton")
work=$(mktemp -d /tmp/baton-pbench.XXXXXX)
fleet_http=127.0.0.1:17574 fleet_mqtt=127.0.0.1:11983 fleet_reg=127.0.0.1:15100
node=pbench-$$
export BATON_SERVER=http://$fleet_http BATON_CONFIG=$work/coordinator/admin.conf
baton="$bindir/baton"
rss() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }
stop() {
  set +e
  "$baton" delete deployment sleepers >/dev/null 2>&1
  sleep 4
  kill -TERM "$agent_pid" 2>/dev/null; wait "$agent_pid" 2>/dev/null
  "$bindir/baton-agent" reset --node-name "$node" --data-dir "$work/agent" --pod-cidr 10.77.251.0/24 >/dev/null 2>&1
  kill -TERM "$coord_pid" 2>/dev/null; wait "$coord_pid" 2>/dev/null
  "$root/images/registry.sh" stop "$fleet_reg" "$work/registry" >/dev/null 2>&1
  rm -rf "$work"
}
trap stop EXIT
"$root/images/registry.sh" start "$fleet_reg" "$work/registry" >&2
"$root/images/build.sh" --push "$fleet_reg" >/dev/null
RUST_LOG=warn "$baton" server --data-dir "$work/coordinator" --listen "$fleet_http" --mqtt-listen "$fleet_mqtt" >"$work/coordinator.log" 2>&1 &
coord_pid=$!
for _ in $(seq 1 100); do "$baton" get nodes >/dev/null 2>&1 && break; sleep 0.1; done
env "${agent_env[@]}" RUST_LOG=warn "$bindir/baton-agent" --coordinator "mqtt://$fleet_mqtt" --node-name "$node" \
  --data-dir "$work/agent" --insecure-registry "$fleet_reg" --pod-cidr 10.77.251.0/24 >"$work/agent.log" 2>&1 &
agent_pid=$!
for _ in $(seq 1 200); do "$baton" get nodes 2>/dev/null | grep -q " Ready" && break; sleep 0.1; done
deploy() { # $1 replicas, $2 probes yes/no
  cat <<Y
apiVersion: apps/v1
kind: Deployment
metadata: {name: sleepers}
spec:
  replicas: $1
  selector: {matchLabels: {app: sleepers}}
  template:
    metadata: {labels: {app: sleepers}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: web
        image: $fleet_reg/baton/busybox:1
        command: [sh, -c, "mkdir -p /www && echo ok > /www/index.html && exec httpd -f -p 8080 -h /www"]
        resources: {requests: {cpu: 10m, memory: 8Mi}, limits: {memory: 16Mi}}
Y
  if [ "$2" = yes ]; then cat <<Y
        livenessProbe: {exec: {command: [cat, /www/index.html]}, periodSeconds: 2}
        readinessProbe: {httpGet: {path: /, port: 8080}, periodSeconds: 2}
Y
  fi
}
ready_pods() {
  "$baton" get pods -o json 2>/dev/null | python3 -c 'import json,sys; print(sum(1 for p in json.load(sys.stdin)["items"] if p["status"].get("phase") == "Running" and all(c.get("ready") for c in p["status"].get("containerStatuses", []))))' 2>/dev/null || echo 0
}
wait_ready() { for _ in $(seq 1 1200); do [ "$(ready_pods)" = "$1" ] && return 0; sleep 0.1; done; echo "pods not ready" >&2; tail -20 "$work/agent.log" >&2; return 1; }
wait_none() { for _ in $(seq 1 600); do [ "$("$baton" get pods 2>/dev/null | wc -l)" -le 1 ] && return 0; sleep 0.1; done; return 1; }
sleep 3; r0=$(rss $agent_pid)
deploy 10 no | "$baton" apply -f - >/dev/null; wait_ready 10; sleep 20; r10=$(rss $agent_pid)
"$baton" delete deployment sleepers >/dev/null; wait_none; sleep 3
deploy 10 yes | "$baton" apply -f - >/dev/null; wait_ready 10; sleep 30; r10p=$(rss $agent_pid)
restarts=$("$baton" get pods -o json | python3 -c 'import json,sys; print(sum(c.get("restartCount",0) for p in json.load(sys.stdin)["items"] for c in p["status"].get("containerStatuses",[])))')
echo "env=${agent_env[*]:-default} rss0=${r0}KiB rss10=${r10}KiB rss10probes=${r10p}KiB restarts=$restarts threads=$(ls /proc/$agent_pid/task | wc -l)"
