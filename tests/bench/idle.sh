#!/usr/bin/env bash
# What a settled fleet costs when nothing happens: MQTT messages, CPU time, RSS and bytes
# written to disk (SD-card wear: `write_bytes` of /proc/PID/io, extrapolated to a day) of the
# coordinator (embedded broker + store) and one agent running 10 idle pods, over a window.
# The figure "idle fleet" in docs/benchmarks.md; the reference is the heartbeats alone (the
# least a fleet must send), and running it for two builds in one session compares them.
# As root, after `cargo build --release --bins`:
#
#   tests/bench/idle.sh [BIN_DIR] [WINDOW_SECONDS]   # defaults: target/release 60
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
bindir=$(cd "${1:-$root/target/release}" && pwd)
window=${2:-60}
work=$(mktemp -d /tmp/baton-ibench.XXXXXX)
mqtt_port=11993
fleet_http=127.0.0.1:17674 fleet_mqtt=127.0.0.1:$mqtt_port fleet_reg=127.0.0.1:15200
fleet_node=ibench-$$ fleet_cidr=10.77.252.0/24
# shellcheck source=tests/bench/fleet.sh
. "$root/tests/bench/fleet.sh"
trap 'fleet_stop; rm -rf "$work"' EXIT
fleet_start
sleepers 10 | "$baton" apply -f - >/dev/null
wait_running 10 || { echo "pods not running" >&2; tail -20 "$work/agent.log" >&2; exit 1; }
sleep 10 # settle
hz=$(getconf CLK_TCK)
a0=$(cpu_ticks "$agent_pid") c0=$(cpu_ticks "$coord_pid")
aw0=$(written "$agent_pid") cw0=$(written "$coord_pid")
topics=$(mosquitto_sub -h 127.0.0.1 -p "$mqtt_port" -i "ibench-watch-$$" -t 'baton/v1/nodes/#' -F %t -W "$window" || true)
a1=$(cpu_ticks "$agent_pid") c1=$(cpu_ticks "$coord_pid")
# Dirty pages reach the disk (and write_bytes) when flushed: flush before reading.
sync
aw1=$(written "$agent_pid") cw1=$(written "$coord_pid")
per_day() { awk -v b="$1" -v w="$window" 'BEGIN { printf "%.0f", b * 86400 / w }'; }
count() { printf '%s\n' "$topics" | grep -c -- "$1\$" || true; }
secs() { awk -v t="$1" -v h="$hz" 'BEGIN { printf "%.2f", t / h }'; }
echo "bin=$bindir window=${window}s messages=$(printf '%s\n' "$topics" | grep -c . || true)" \
  "heartbeat=$(count /up/heartbeat) hello=$(count /up/hello) status=$(count /up/status)" \
  "desired=$(count /down/desired) control=$(count /down/control)" \
  "agent_cpu=$(secs $((a1 - a0)))s coordinator_cpu=$(secs $((c1 - c0)))s" \
  "agent_rss=$(rss "$agent_pid")KiB coordinator_rss=$(rss "$coord_pid")KiB" \
  "agent_written=$((aw1 - aw0))B ($(per_day $((aw1 - aw0)))B/day)" \
  "coordinator_written=$((cw1 - cw0))B ($(per_day $((cw1 - cw0)))B/day, one node)"
