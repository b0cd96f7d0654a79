#!/usr/bin/env bash
# Bytes on the wire of an idle agent with 10 pods, per link profile (issue 14 item 4): the
# agent runs in a network namespace of its own, behind a veth pair, and an iptables counter
# in that namespace counts its MQTT traffic both ways, as IP packets (TCP/IP headers, ACKs,
# TLS records and keepalive pings included), over WINDOW seconds after the pods settled,
# extrapolated to a day. The namespace's /proc/net/dev (all traffic, Ethernet frames) is
# printed beside it. MODE `plain` is development mode (clear MQTT, unenrolled agent); `mtls`
# enrolls the agent with a join token and speaks MQTT over mutual TLS with signed messages;
# a `lan` agent there is probed by the coordinator's TLS front (`front_keepalive_probes=1`,
# from `ss`) and keeps a 120 s MQTT keepalive. `up_messages` is what the agent sent in the
# window, by type, from the coordinator's /metrics.
# The reference is the same run's count of MQTT keepalive rounds (what liveness costs at
# the least), and the agent before link profiles (`LINK_AGENT_FLAGS="--heartbeat-max-secs 5
# --mqtt-keepalive-secs 10"`: every 5 s heartbeat sent, the old 10 s keepalive) in the same
# session. A window that is a multiple of the keepalive (the default 950 s: 5 metered rounds)
# keeps the extrapolation from counting a partial round. As root, after `cargo build --bins`:
#
#   [LINK_AGENT_FLAGS=...] tests/bench/link.sh [BIN_DIR] [PROFILE] [MODE] [WINDOW_SECONDS] [INDEX]
#   # defaults: target/release lan plain 950 0; INDEX (0-9) lets runs go side by side
#   # (build the images first then: `images/build.sh`, runs in parallel would race on it)
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
bindir=$(cd "${1:-$root/target/release}" && pwd)
profile=${2:-lan}
mode=${3:-plain}
window=${4:-950}
idx=${5:-0}
work=$(mktemp -d /tmp/baton-lbench.XXXXXX)
ns=blink$idx-$$
host_if=bl$idx$$h
host_ip=10.78.$idx.1 agent_ip=10.78.$idx.2
mqtt_port=$((12990 + idx)) enroll_port=$((13990 + idx))
fleet_http=127.0.0.1:$((17780 + idx)) fleet_mqtt=$host_ip:$mqtt_port fleet_reg=$host_ip:$((15300 + idx))
fleet_node=lbench-$idx-$$ fleet_cidr=10.77.$((240 + idx)).0/24
# shellcheck source=tests/bench/fleet.sh
. "$root/tests/bench/fleet.sh" # sleepers, wait_running, rss; not its fleet_start (loopback)
coord_pid='' agent_pid=''
stop() {
  "$baton" delete deployment sleepers >/dev/null 2>&1 && sleep 3 || true
  [ -n "$agent_pid" ] && { kill -TERM "$agent_pid" 2>/dev/null; wait "$agent_pid" 2>/dev/null || true; }
  nsenter --net="/run/netns/$ns" "$bindir/baton-agent" reset --node-name "$fleet_node" --data-dir "$work/agent" \
    --pod-cidr "$fleet_cidr" >/dev/null 2>&1 || true
  [ -n "$coord_pid" ] && { kill -TERM "$coord_pid" 2>/dev/null; wait "$coord_pid" 2>/dev/null || true; }
  "$root/images/registry.sh" stop "$fleet_reg" "$work/registry" >/dev/null 2>&1 || true
  ip netns del "$ns" 2>/dev/null || true
  ip link del "$host_if" 2>/dev/null || true
  rm -rf "$work"
}
trap stop EXIT

ip netns add "$ns"
ip link add "$host_if" type veth peer name eth0 netns "$ns"
ip addr add "$host_ip/30" dev "$host_if" && ip link set "$host_if" up
ip -n "$ns" addr add "$agent_ip/30" dev eth0
ip -n "$ns" link set eth0 up && ip -n "$ns" link set lo up
ip -n "$ns" route add default via "$host_ip"

"$root/images/registry.sh" start "$fleet_reg" "$work/registry" >&2
"$root/images/build.sh" --push "$fleet_reg" >/dev/null
coord_flags=(--data-dir "$work/coordinator" --listen "$fleet_http" --mqtt-listen "$fleet_mqtt")
agent_flags=(--data-dir "$work/agent" --node-name "$fleet_node" --insecure-registry "$fleet_reg"
  --pod-cidr "$fleet_cidr" --link-profile "$profile")
# shellcheck disable=SC2206 # flags split on spaces on purpose
agent_flags+=(${LINK_AGENT_FLAGS:-})
case $mode in
  plain)
    coord_flags+=(--insecure-mqtt)
    agent_flags+=(--coordinator "mqtt://$fleet_mqtt" --insecure-unenrolled) ;;
  mtls)
    coord_flags+=(--mqtt-tls-auto --enroll-listen "$host_ip:$enroll_port" --tls-san "$host_ip") ;;
  *) echo "MODE is plain or mtls" >&2; exit 2 ;;
esac
RUST_LOG=warn "$baton" server "${coord_flags[@]}" >"$work/coordinator.log" 2>&1 &
coord_pid=$!
for _ in $(seq 1 100); do "$baton" get nodes >/dev/null 2>&1 && break; sleep 0.1; done
if [ "$mode" = mtls ]; then
  token=$("$baton" token create 2>/dev/null)
  agent_flags+=(--coordinator "mqtts://$fleet_mqtt" --coordinator-api "https://$host_ip:$enroll_port"
    --join-token "$token")
fi
# Absolute disk levels, as in fleet.sh. `nsenter --net`: `ip netns exec` mounts a new /sys,
# without the cgroup hierarchy the runtime needs.
nsenter --net="/run/netns/$ns" env BATON_EVICTION_HARD="memory.available<50Mi,nodefs.available<1Gi,imagefs.available<1Gi" \
  BATON_AGENT_RUN_DIR=/run/baton RUST_LOG=warn "$bindir/baton-agent" "${agent_flags[@]}" \
  >"$work/agent.log" 2>&1 &
agent_pid=$!
for _ in $(seq 1 600); do "$baton" get nodes 2>/dev/null | grep -q " Ready" && break; sleep 0.1; done
"$baton" get nodes 2>/dev/null | grep -q " Ready" || { echo "node not Ready" >&2; tail -20 "$work/agent.log" >&2; exit 1; }
sleepers 10 | "$baton" apply -f - >/dev/null
wait_running 10 || { echo "pods not running" >&2; tail -20 "$work/agent.log" >&2; exit 1; }
sleep 15 # settle: the last status and heartbeat go out

# The agent's MQTT traffic, both ways, counted in its namespace.
ipt() { ip netns exec "$ns" iptables "$@"; }
ipt -N BLINK
ipt -A BLINK -j RETURN
ipt -I OUTPUT -p tcp --dport "$mqtt_port" -j BLINK
ipt -I INPUT -p tcp --sport "$mqtt_port" -j BLINK
packets() { ipt -L "$1" -v -x -n | awk -v c="$2" '$0 ~ c { p += $1; b += $2 } END { print p + 0, b + 0 }'; }
dev() { ip netns exec "$ns" awk '/eth0:/ { print $2 + $10 }' /proc/net/dev; }
# The coordinator's count of the agent's messages by type (payload bytes), to tell what
# the bytes are: `Usage=4/2112B` is 4 usage reports with 2,112 bytes of payload.
metrics() {
  curl -s -H "Authorization: Bearer $(awk '/^token:/ { gsub(/"/, "", $2); print $2 }' "$BATON_CONFIG")" \
    "http://$fleet_http/metrics" | awk -F'[{}" ]+' '/^baton_mqtt_(messages|payload_bytes)_total\{direction="in"/ {
      print $1, $5, $NF }' | sort
}
m0=$(metrics)
d0=$(dev)
ipt -Z INPUT && ipt -Z OUTPUT
sleep "$window"
read -r out_p out_b < <(packets OUTPUT "dpt:$mqtt_port")
read -r in_p in_b < <(packets INPUT "spt:$mqtt_port")
d1=$(dev)
up=$(join -j 1 <(metrics | awk '{ print $1 "|" $2, $3 }' | sort) <(echo "$m0" | awk '{ print $1 "|" $2, $3 }' | sort) |
  awk '{ split($1, k, "|"); d = $2 - $3; if (k[1] ~ /messages/) n[k[2]] = d; else b[k[2]] = d }
    END { for (t in n) if (n[t] > 0) printf "%s=%d/%dB ", t, n[t], b[t] }')
per_day() { awk -v b="$1" -v w="$window" 'BEGIN { printf "%.0f", b * 86400 / w }'; }
kib_day() { awk -v b="$1" -v w="$window" 'BEGIN { printf "%.1f", b * 86400 / w / 1024 }'; }
# agent/src/link_profile.rs: an enrolled `lan` agent behind the coordinator's TLS front
# (this mtls mode) keeps a 120 s MQTT keepalive and the front probes it every 16 s
# (coordinator/src/edge/tcp_liveness.rs), unless LINK_AGENT_FLAGS says otherwise.
probe=0
case $profile in
  lan) ka=13
    if [ "$mode" = mtls ] && [[ "${LINK_AGENT_FLAGS:-}" != *"--link-liveness keepalive"* ]]; then ka=120 probe=16; fi ;;
  metered) ka=190 ;;
esac
total=$((out_b + in_b))
echo "profile=$profile${LINK_AGENT_FLAGS:+ ($LINK_AGENT_FLAGS)} mode=$mode window=${window}s bin=$bindir" \
  "mqtt_ip_bytes=$total (out $out_b in $in_b, $((out_p + in_p)) packets)" \
  "per_day=$(per_day $total)B ($(kib_day $total) KiB/day)" \
  "netdev_bytes=$((d1 - d0)) ($(kib_day $((d1 - d0))) KiB/day)" \
  "ping_rounds_expected=$(awk -v w="$window" -v k="${ka:-0}" 'BEGIN { printf "%.1f", w / k }')" \
  "probe_rounds_expected=$(awk -v w="$window" -v p="$probe" 'BEGIN { printf "%.1f", p ? w / p : 0 }')" \
  "front_keepalive_probes=$(ss -tno state established "( sport = :$mqtt_port )" | grep -c 'timer:(keepalive')" \
  "up_messages=${up:-none}" \
  "agent_rss=$(rss "$agent_pid")KiB"
