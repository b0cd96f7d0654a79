#!/usr/bin/env bash
# The agent's RAM and threads at 0, 10 and 100 pods and after they are gone (issue 14 item 3),
# by tests/bench/run.sh's fleet method (one machine: registry, coordinator with embedded broker,
# one agent). Pods are "fake-light": busybox `sleep`. Each stage is read once its pods run and
# the agent settled; every figure is printed with its ratio to the same run's idle one.
# As root, after `cargo build --release --bins` (or the coordinator from another build dir):
#
#   tests/bench/ram.sh [BIN_DIR] [ENV=VALUE ...]      # e.g. target/release MALLOC_ARENA_MAX=1
#   AGENT_BIN=/path/to/baton-agent tests/bench/ram.sh target/debug   # another agent build (musl)
#   SETTLE=20 tests/bench/ram.sh ...                  # seconds to settle at each stage (15)
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
bindir=$(cd "${1:-$root/target/release}" && pwd); [ $# -gt 0 ] && shift
agent_env=("$@")
agent_bin=${AGENT_BIN:-}
settle=${SETTLE:-15}
work=$(mktemp -d /tmp/baton-rbench.XXXXXX)
fleet_http=127.0.0.1:17774 fleet_mqtt=127.0.0.1:12083 fleet_reg=127.0.0.1:15300
fleet_node=rbench-$$ fleet_cidr=10.77.250.0/24
# shellcheck source=tests/bench/fleet.sh
. "$root/tests/bench/fleet.sh"
trap 'fleet_stop; rm -rf "$work"' EXIT
fleet_start
# Small requests, so 100 pods fit a 2-core node's allocatable CPU.
light() { SLEEPERS_REQUESTS='{cpu: 1m, memory: 1Mi}' sleepers "$1"; }
wait_none() { for _ in $(seq 1 1200); do [ "$("$baton" get pods 2>/dev/null | wc -l)" -le 1 ] && return 0; sleep 0.2; done; return 1; }
field() { awk -v k="$1:" '$1 == k { print $2 }' "/proc/$agent_pid/status"; }
declare -A idle
stage() { # $1 = name; prints one line of figures and their ratios to the idle stage
  local rss anon file threads
  rss=$(field VmRSS) anon=$(field RssAnon) file=$(field RssFile) threads=$(field Threads)
  if [ "$1" = idle ]; then idle=([rss]=$rss [anon]=$anon [file]=$file [threads]=$threads); fi
  r() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
  printf '%-7s rss=%sKiB (%s) anon=%sKiB (%s) file=%sKiB (%s) threads=%s (%s) hwm=%sKiB\n' "$1" \
    "$rss" "$(r "$rss" "${idle[rss]}")" "$anon" "$(r "$anon" "${idle[anon]}")" \
    "$file" "$(r "$file" "${idle[file]}")" "$threads" "$(r "$threads" "${idle[threads]}")" "$(field VmHWM)"
}
running_or_die() {
  wait_running "$1" || { echo "ram: $1 pods not running" >&2; tail -20 "$work/agent.log" >&2; exit 1; }
}
echo "agent=$agent_bin env=${agent_env[*]:-default} settle=${settle}s"
sleep "$settle"; stage idle
light 10 | "$baton" apply -f - >/dev/null; running_or_die 10; sleep "$settle"; stage 10pods
t0=$(date +%s)
light 100 | "$baton" apply -f - >/dev/null; running_or_die 100
echo "100 pods running after $(( $(date +%s) - t0 )) s"
sleep "$settle"; stage 100pods
"$baton" delete deployment sleepers >/dev/null; wait_none
# The API forgets pods before the agent has stopped them all: wait for its last container
# (its children: it is their subreaper) to be gone. Idle blocking threads end after 10 s
# (agent/src/main.rs), so settle past that.
children() { cat /proc/"$agent_pid"/task/*/children | wc -w; }
for _ in $(seq 1 600); do [ "$(children)" = 0 ] && break; sleep 0.2; done
sleep "$(( settle > 12 ? settle : 12 ))"; stage after
