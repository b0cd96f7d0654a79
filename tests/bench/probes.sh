#!/usr/bin/env bash
# Agent RSS with 10 pods with probes, by tests/bench/run.sh's fleet method (release builds, one
# machine, registry + coordinator with embedded broker + one agent, VmRSS after settling).
# The figure "agent RSS with 10 pods that have probes" in docs/benchmarks.md, against the
# same 10 pods without probes measured in the same run. As root, after
# `cargo build --release --bins`:
#
#   tests/bench/probes.sh [BIN_DIR] [ENV=VALUE ...]   # e.g. target/release MIMALLOC_PURGE_DELAY=0
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
bindir=$(cd "${1:-$root/target/release}" && pwd); [ $# -gt 0 ] && shift
agent_env=("$@")
work=$(mktemp -d /tmp/baton-pbench.XXXXXX)
fleet_http=127.0.0.1:17574 fleet_mqtt=127.0.0.1:11983 fleet_reg=127.0.0.1:15100
fleet_node=pbench-$$ fleet_cidr=10.77.251.0/24
# shellcheck source=tests/bench/fleet.sh
. "$root/tests/bench/fleet.sh"
trap 'fleet_stop; rm -rf "$work"' EXIT
fleet_start
httpd='[sh, -c, "mkdir -p /www && echo ok > /www/index.html && exec httpd -f -p 8080 -h /www"]'
probes='        livenessProbe: {exec: {command: [cat, /www/index.html]}, periodSeconds: 2}
        readinessProbe: {httpGet: {path: /, port: 8080}, periodSeconds: 2}'
deploy() { # $1 replicas, $2 probes yes/no
  if [ "$2" = yes ]; then sleepers "$1" "$httpd" "$probes"; else sleepers "$1" "$httpd"; fi
}
ready_pods() {
  "$baton" get pods -o json 2>/dev/null | python3 -c 'import json,sys; print(sum(1 for p in json.load(sys.stdin)["items"] if p["status"].get("phase") == "Running" and all(c.get("ready") for c in p["status"].get("containerStatuses", []))))' 2>/dev/null || echo 0
}
wait_ready() { for _ in $(seq 1 1200); do [ "$(ready_pods)" = "$1" ] && return 0; sleep 0.1; done; echo "pods not ready" >&2; tail -20 "$work/agent.log" >&2; return 1; }
wait_none() { for _ in $(seq 1 600); do [ "$("$baton" get pods 2>/dev/null | wc -l)" -le 1 ] && return 0; sleep 0.1; done; return 1; }
threads_of() { ls "/proc/$1/task" | wc -l; }
sleep 3; r0=$(rss $agent_pid); threads0=$(threads_of $agent_pid)
deploy 10 no | "$baton" apply -f - >/dev/null; wait_ready 10; sleep 20; r10=$(rss $agent_pid)
threads10=$(threads_of $agent_pid)
"$baton" delete deployment sleepers >/dev/null; wait_none; sleep 3
# CPU ticks of the agent and its reaped children (the runtime helpers of exec probes).
ticks() { awk '{ sub(/.*\) /, ""); print $12 + $13 + $14 + $15 }' "/proc/$1/stat"; }
deploy 10 yes | "$baton" apply -f - >/dev/null; wait_ready 10; sleep 10
t0=$(ticks $agent_pid); sleep 20; t1=$(ticks $agent_pid); r10p=$(rss $agent_pid)
# 10 exec probes every 2 s: 100 in 20 s. In ms of CPU per probe (httpGet probes included).
cpu_ms_per_probe=$(( (t1 - t0) * 1000 / $(getconf CLK_TCK) / 100 ))
restarts=$("$baton" get pods -o json | python3 -c 'import json,sys; print(sum(c.get("restartCount",0) for p in json.load(sys.stdin)["items"] for c in p["status"].get("containerStatuses",[])))')
echo "env=${agent_env[*]:-default} rss0=${r0}KiB threads0=$threads0 rss10=${r10}KiB threads10=$threads10 rss10probes=${r10p}KiB cpu_ms_per_exec_probe=$cpu_ms_per_probe restarts=$restarts threads=$(ls /proc/$agent_pid/task | wc -l)"
