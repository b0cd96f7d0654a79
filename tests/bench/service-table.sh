#!/usr/bin/env bash
# What a cold start costs in Service tables (issue 15 follow-up): N hollow nodes
# (`baton-sim`, each with its own address and pod range, so each join changes the table's
# routes) join one coordinator; the coordinator's own /metrics counts the ServiceTable
# messages and bytes it sent (`baton_mqtt_messages_total{direction="out",type="ServiceTable"}`).
# One row per coordinator binary and fleet size; give the previous build as a second
# binary to compare in the same run (before the 500 ms window: about N²/2 tables).
#
#   tests/bench/service-table.sh SIM BATON [BATON...] -- N [N...]
#
# Loopback only (ports 27474 and 21883), embedded broker, --insecure-mqtt.
set -euo pipefail
sim=$1; shift
batons=()
while [ $# -gt 0 ] && [ "$1" != -- ]; do batons+=("$1"); shift; done
shift || true
sizes=("$@"); [ ${#sizes[@]} -gt 0 ] || sizes=(100)
http=127.0.0.1:27474 mqtt=127.0.0.1:21883
printf '%-40s %-6s %-8s %-14s %-12s %-14s\n' coordinator nodes join_s service_tables per_node table_MiB
for baton in "${batons[@]}"; do
  for n in "${sizes[@]}"; do
    work=$(mktemp -d /tmp/baton-table-cost.XXXXXX)
    RUST_LOG=warn "$baton" server --data-dir "$work/c" --listen "$http" --mqtt-listen "$mqtt" \
      --insecure-mqtt >"$work/c.log" 2>&1 &
    coord=$!
    export BATON_SERVER=http://$http BATON_CONFIG=$work/c/admin.conf
    for _ in $(seq 1 100); do "$baton" get nodes >/dev/null 2>&1 && break; sleep 0.1; done
    token=$(python3 -c 'import re,sys; print(re.search(r"token\W+([A-Za-z0-9._~+/=-]+)", open(sys.argv[1]).read()).group(1))' "$BATON_CONFIG")
    metric() {
      curl -s -H "Authorization: Bearer $token" "http://$http/metrics" |
        awk -v m="$1" '$1 == m { print $2; f = 1 } END { if (!f) print 0 }'
    }
    start=$(date +%s.%N)
    # The sim stops its nodes at the end of its stdin: held open while measuring.
    mkfifo "$work/sim.in"
    RUST_LOG=error "$sim" --coordinator "mqtt://$mqtt" --nodes "$n" --stats-secs 60 \
      <"$work/sim.in" >"$work/sim.out" 2>&1 &
    simpid=$!
    exec 9>"$work/sim.in"
    join=timeout
    for _ in $(seq 1 600); do
      if [ "$(metric 'baton_nodes{state="Ready"}')" -ge "$n" ]; then
        join=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'); break
      fi
      sleep 0.2
    done
    sleep 3 # a held table goes out within the window
    tables=$(metric 'baton_mqtt_messages_total{direction="out",type="ServiceTable"}')
    bytes=$(metric 'baton_mqtt_payload_bytes_total{direction="out",type="ServiceTable"}')
    printf '%-40s %-6s %-8s %-14s %-12s %-14s\n' "$(basename "$(dirname "$baton")")/$(basename "$baton")" \
      "$n" "$join" "$tables" "$(awk -v t="$tables" -v n="$n" 'BEGIN { printf "%.1f", t / n }')" \
      "$(awk -v b="$bytes" 'BEGIN { printf "%.2f", b / 1048576 }')"
    exec 9>&-
    kill "$simpid" "$coord" 2>/dev/null || true
    wait "$simpid" "$coord" 2>/dev/null || true
    rm -rf "$work"
  done
done
