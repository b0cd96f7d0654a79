#!/usr/bin/env bash
# How one coordinator holds a simulated fleet (issue 17): `baton-sim` (sim/) starts N hollow
# agents, each on its own MQTT connection; this script times the fleet joining, a Deployment
# with one pod per node (N replicas) reaching all Running, and 10% of the nodes vanishing
# (connections dropped as in a power cut) until their pods run elsewhere; and samples the
# coordinator's and the broker's RSS and CPU. One row per fleet size, printed as a table.
#
#   tests/bench/scale.sh [BINDIR] [embedded|mosquitto] [N ...]
#
# BINDIR holds baton and baton-sim (default target/release; `cargo build --release -p
# baton-coordinator -p baton-sim`). Loopback only; runs as any user (mosquitto from PATH).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
bindir=${1:-$root/target/release}
broker=${2:-embedded}
shift 2 2>/dev/null || shift $#
sizes=("$@")
[ ${#sizes[@]} -gt 0 ] || sizes=(1000)
baton=$bindir/baton
sim=$bindir/baton-sim
for b in "$baton" "$sim"; do [ -x "$b" ] || { echo "scale.sh: no $b" >&2; exit 1; }; done
work=$(mktemp -d /tmp/baton-scale.XXXXXX)
http=127.0.0.1:17474
mqtt_port=11883
# Loss is noticed through the last will at once; pods move after this (default 60 s).
eviction=${SCALE_POD_EVICTION_TIMEOUT:-10s}
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }
hwm_kib() { awk '/^VmHWM:/ { print $2 }' "/proc/$1/status"; }
cpu_ticks() { sed 's/^.*) //' "/proc/$1/stat" | awk '{ print $12 + $13 }'; }
hz=$(getconf CLK_TCK)
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
# Waits up to $2 s for command $1 (a shell function) to succeed; prints the seconds taken or
# "timeout".
wait_until() { # fn limit start
  local start=$3
  while ! "$1"; do
    if awk -v s="$start" -v n="$(now)" -v l="$2" 'BEGIN { exit !(n - s > l) }'; then
      echo timeout; return 1
    fi
    sleep "${poll:-1}"
  done
  since "$start"
}

export BATON_SERVER=http://$http
# One sample of a gauge from /metrics (cheap next to listing thousands of objects as JSON,
# which would load the coordinator being measured): metric NAME with label LABEL.
gauge() { # name label
  curl -s -H "Authorization: Bearer $token" "http://$http/metrics" 2>/dev/null |
    awk -v m="$1{$2}" '$1 == m { print $2; found = 1 } END { if (!found) print 0 }'
}
nodes_ready() { gauge baton_nodes 'state="Ready"'; }
pods_running() { gauge baton_pods 'phase="Running"'; }
# The fleet's pods that are Running and ready on a Ready node (a lost node's pods still count
# as ready in the Deployment's status until they are evicted).
ready_replicas() {
  python3 - "$baton" <<'PY' 2>/dev/null || echo 0
import json, subprocess, sys
get = lambda *a: json.loads(subprocess.run([sys.argv[1], "get", *a, "-o", "json"], capture_output=True, check=True).stdout)
ready = {n["metadata"]["name"] for n in get("nodes").get("items", []) if n["status"].get("ready")}
print(sum(1 for p in get("pods").get("items", [])
          if p["metadata"].get("labels", {}).get("app") == "fleet" and p["spec"].get("nodeName") in ready
          and p["status"].get("phase") == "Running"
          and all(c.get("ready") for c in p["status"].get("containerStatuses", [{}]))))
PY
}

printf '%-7s %-9s %-9s %-22s %-22s %-10s %-10s %-12s\n' nodes broker join_s "coord_rss_MiB(idle/peak)" "broker_rss_MiB(idle/peak)" coord_cpu% apply_s heal_10%_s
for n in "${sizes[@]}"; do
  rm -rf "$work/coordinator" "$work/mosquitto"
  mkdir -p "$work/mosquitto"
  broker_pid=""
  if [ "$broker" = mosquitto ]; then
    cat >"$work/mosquitto/m.conf" <<EOF
listener $mqtt_port 127.0.0.1
allow_anonymous true
persistence false
max_connections -1
max_queued_messages 10000
EOF
    (ulimit -n 1048576 2>/dev/null || ulimit -n "$(ulimit -Hn)"; exec mosquitto -c "$work/mosquitto/m.conf") >"$work/mosquitto.log" 2>&1 &
    broker_pid=$!; pids+=("$broker_pid")
    sleep 0.5
    mqtt_args=(--broker "mqtt://127.0.0.1:$mqtt_port")
  else
    mqtt_args=(--mqtt-listen "127.0.0.1:$mqtt_port")
  fi
  (ulimit -n 1048576 2>/dev/null || ulimit -n "$(ulimit -Hn)"
   RUST_LOG=warn exec "$baton" server --data-dir "$work/coordinator" --listen "$http" "${mqtt_args[@]}" \
     --insecure-mqtt --pod-eviction-timeout "$eviction") >"$work/coordinator.log" 2>&1 &
  coord=$!; pids+=("$coord")
  export BATON_CONFIG=$work/coordinator/admin.conf
  for _ in $(seq 1 100); do "$baton" get nodes >/dev/null 2>&1 && break; sleep 0.1; done
  token=$(python3 -c 'import re,sys; print(re.search(r"token\W+([A-Za-z0-9._~+/=-]+)", open(sys.argv[1]).read()).group(1))' "$BATON_CONFIG")
  rm -f "$work/sim.in"; mkfifo "$work/sim.in"
  RUST_LOG=error "$sim" --coordinator "mqtt://127.0.0.1:$mqtt_port" --nodes "$n" --stats-secs 10 \
    <"$work/sim.in" >"$work/sim.out" 2>"$work/sim.err" &
  simpid=$!; pids+=("$simpid")
  exec 9>"$work/sim.in"
  start=$(now)
  all_ready() { [ "$(nodes_ready)" -ge "$n" ]; }
  join=$(wait_until all_ready $((60 + n / 20)) "$start") || true

  # Idle: 60 s of the joined fleet, nothing applied.
  c0=$(cpu_ticks "$coord"); sleep 60; c1=$(cpu_ticks "$coord")
  cpu=$(awk -v a="$c0" -v b="$c1" -v hz="$hz" 'BEGIN { printf "%.1f", (b - a) / hz / 60 * 100 }')
  idle_rss=$(( $(rss_kib "$coord") / 1024 ))
  b_idle="-"; [ -n "$broker_pid" ] && b_idle=$(( $(rss_kib "$broker_pid") / 1024 ))

  cat >"$work/fleet.yaml" <<EOF
apiVersion: apps/v1
kind: Deployment
metadata: {name: fleet}
spec:
  replicas: $n
  selector: {matchLabels: {app: fleet}}
  template:
    metadata: {labels: {app: fleet}}
    spec:
      containers: [{name: app, image: "sim.invalid/app:1", resources: {requests: {cpu: 10m, memory: 8Mi}}}]
EOF
  start=$(now)
  "$baton" apply -f "$work/fleet.yaml" >/dev/null
  all_running() { [ "$(pods_running)" -ge "$n" ]; }
  apply=$(wait_until all_running $((120 + n / 10)) "$start") || true

  echo "lose 10" >&9
  start=$(now)
  lost=$(( n / 10 ))
  healed() { [ "$(nodes_ready)" -le $((n - lost)) ] && [ "$(ready_replicas)" -ge "$n" ]; }
  sleep 2
  heal=$(poll=3 wait_until healed $((180 + n / 10)) "$start") || true
  peak=$(( $(hwm_kib "$coord") / 1024 ))
  b_peak="-"; [ -n "$broker_pid" ] && b_peak=$(( $(hwm_kib "$broker_pid") / 1024 ))
  printf '%-7s %-9s %-9s %-22s %-22s %-10s %-10s %-12s\n' "$n" "$broker" "$join" "$idle_rss/$peak" "$b_idle/$b_peak" "$cpu" "$apply" "$heal"
  exec 9>&-
  kill "$simpid" "$coord" ${broker_pid:+"$broker_pid"} 2>/dev/null || true
  wait "$simpid" "$coord" ${broker_pid:+"$broker_pid"} 2>/dev/null || true
  [ "${SCALE_KEEP_LOGS:-0}" = 1 ] && cp "$work/coordinator.log" "/tmp/scale-coordinator-$n.log"
  sleep 1
done
