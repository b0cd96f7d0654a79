# shellcheck shell=bash
# The benchmarks' one-machine fleet, sourced by run.sh, probes.sh and idle.sh: a registry with
# the example images, a coordinator (embedded broker and store) and one agent, on loopback
# ports and data dirs of their own. Set before sourcing: root, work, bindir, fleet_http,
# fleet_mqtt, fleet_reg, fleet_node, fleet_cidr; optionally agent_env (VAR=value ...) and
# agent_bin (another agent build than "$bindir/baton-agent", e.g. a static musl one).
export BATON_SERVER=http://$fleet_http
export BATON_CONFIG=$work/coordinator/admin.conf # written by `baton server` on first start
baton="$bindir/baton"
agent_bin=${agent_bin:-$bindir/baton-agent}
fleet_up=0
rss() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }
# Bytes the process caused to be written to a block device.
written() { awk '/^write_bytes:/ { print $2 }' "/proc/$1/io"; }
# utime + stime in clock ticks (the command name may contain spaces: count past its ")").
cpu_ticks() { sed 's/^.*) //' "/proc/$1/stat" | awk '{ print $12 + $13 }'; }
fleet_start() {
  "$root/images/registry.sh" start "$fleet_reg" "$work/registry" >&2 || return 1
  "$root/images/build.sh" --push "$fleet_reg" >/dev/null || return 1
  # Development mode (plain MQTT, an unenrolled agent), as every figure in benchmarks.md
  # before the secure defaults of session 4 was measured; without these flags the agent
  # refuses to start unenrolled and the broker wants mTLS.
  RUST_LOG=warn "$baton" server --data-dir "$work/coordinator" --listen "$fleet_http" --mqtt-listen "$fleet_mqtt" \
    --insecure-mqtt >"$work/coordinator.log" 2>&1 &
  coord_pid=$!
  for _ in $(seq 1 100); do "$baton" get nodes >/dev/null 2>&1 && break; sleep 0.1; done
  # Absolute disk levels, as the e2e labs have (tests/src/lab.rs): the default 10% of a big
  # development disk can be tens of GB, and a node under DiskPressure evicts the very pods
  # being measured.
  env BATON_EVICTION_HARD="memory.available<50Mi,nodefs.available<1Gi,imagefs.available<1Gi" \
    ${agent_env[@]+"${agent_env[@]}"} BATON_AGENT_RUN_DIR=/run/baton RUST_LOG=warn "$agent_bin" \
    --coordinator "mqtt://$fleet_mqtt" --node-name "$fleet_node" --data-dir "$work/agent" \
    --insecure-registry "$fleet_reg" --pod-cidr "$fleet_cidr" --insecure-unenrolled >"$work/agent.log" 2>&1 &
  agent_pid=$!
  fleet_up=1
  for _ in $(seq 1 200); do "$baton" get nodes 2>/dev/null | grep -q " Ready" && break; sleep 0.1; done
  "$baton" get nodes 2>/dev/null | grep -q " Ready"
}
fleet_stop() {
  [ "$fleet_up" = 1 ] || return 0
  "$baton" delete deployment sleepers >/dev/null 2>&1 || true
  sleep 3
  kill -TERM "$agent_pid" 2>/dev/null; wait "$agent_pid" 2>/dev/null || true
  "$agent_bin" reset --node-name "$fleet_node" --data-dir "$work/agent" --pod-cidr "$fleet_cidr" >/dev/null 2>&1 || true
  kill -TERM "$coord_pid" 2>/dev/null; wait "$coord_pid" 2>/dev/null || true
  "$root/images/registry.sh" stop "$fleet_reg" "$work/registry" >/dev/null 2>&1 || true
  fleet_up=0
}
# The benchmarks' Deployment: $1 replicas of busybox running $2 (a YAML flow list; default
# `sleep 3600`), 16Mi limit, requests $SLEEPERS_REQUESTS (default 10m CPU, 8Mi); $3, if
# given, is appended to the container (e.g. probes).
sleepers() {
  local cmd='[sleep, "3600"]' requests='{cpu: 10m, memory: 8Mi}'
  if [ -n "${SLEEPERS_REQUESTS:-}" ]; then requests=$SLEEPERS_REQUESTS; fi
  if [ -n "${2:-}" ]; then cmd=$2; fi
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
      - name: c
        image: $fleet_reg/baton/busybox:1
        command: $cmd
        resources: {requests: $requests, limits: {memory: 16Mi}}
Y
  if [ -n "${3:-}" ]; then printf '%s\n' "$3"; fi
}
# How many pods are Running, and waiting for a count (polls every 20 ms, about two minutes).
running_pods() {
  "$baton" get pods -o json 2>/dev/null | python3 -c 'import json,sys; print(sum(1 for p in json.load(sys.stdin)["items"] if p["status"].get("phase") == "Running"))' 2>/dev/null || echo 0
}
wait_running() { # $1 = count; polls every 20 ms, gives up after about two minutes
  for _ in $(seq 1 4000); do [ "$(running_pods)" = "$1" ] && return 0; sleep 0.02; done
  return 1
}
