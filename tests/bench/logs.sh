#!/usr/bin/env bash
# Log latency (issue 16): from a line written in a container to seeing it in `baton logs -f`
# (agent -> MQTT -> coordinator -> HTTP chunk -> CLI), against the same line seen in the same
# run by `tail -F` of the agent's on-disk log file (the reference: reading the file on the
# device itself). Both readers stamp each line with the host clock as it arrives; the figure
# is what the orchestrated path adds, per line, over N lines. One machine (coordinator with
# its embedded broker, one agent, loopback): a LAN with no wire. As root, after
# `cargo build --release --bins` (or give target/debug):
#
#   tests/bench/logs.sh [BIN_DIR] [LINES]   # defaults: target/release 150 (5 a second)
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
bindir=$(cd "${1:-$root/target/release}" && pwd)
lines=${2:-150}
work=$(mktemp -d /tmp/baton-lbench.XXXXXX)
fleet_http=127.0.0.1:17774 fleet_mqtt=127.0.0.1:12093 fleet_reg=127.0.0.1:15300
fleet_node=lbench-$$ fleet_cidr=10.77.253.0/24
# shellcheck source=tests/bench/fleet.sh
. "$root/tests/bench/fleet.sh"
readers=()
stop_readers() { for p in ${readers[@]+"${readers[@]}"}; do kill "$p" 2>/dev/null || true; done; }
trap 'stop_readers; fleet_stop; rm -rf "$work"' EXIT
fleet_start
# Every line stamped on arrival, in nanoseconds, by one long-lived process per reader (no
# fork per line).
stamp='import sys, time
for l in sys.stdin:
    print(time.time_ns(), l.rstrip("\n"), flush=True)'
sleepers 1 '[sh, -c, "i=0; while true; do i=$((i+1)); echo line $i; sleep 0.2; done"]' |
  "$baton" apply -f - >/dev/null
wait_running 1 || { echo "the pod is not running" >&2; tail -20 "$work/agent.log" >&2; exit 1; }
pod=$("$baton" get pods -o json | python3 -c 'import json,sys; print(json.load(sys.stdin)["items"][0]["metadata"]["name"])')
uid=$("$baton" get pods -o json | python3 -c 'import json,sys; print(json.load(sys.stdin)["items"][0]["metadata"]["uid"])')
file="$work/agent/pods/$uid/logs/c.log"
for _ in $(seq 1 100); do [ -s "$file" ] && break; sleep 0.1; done
[ -s "$file" ] || { echo "no log file at $file" >&2; exit 1; }
tail -n 0 -F "$file" 2>/dev/null | python3 -u -c "$stamp" >"$work/file.ts" &
readers+=($!)
"$baton" logs -f --tail 0 "$pod" | python3 -u -c "$stamp" >"$work/mqtt.ts" &
readers+=($!)
for _ in $(seq 1 $((lines * 3))); do
  [ "$(wc -l <"$work/mqtt.ts")" -ge "$lines" ] && break
  sleep 0.1
done
stop_readers
python3 - "$work/file.ts" "$work/mqtt.ts" "$lines" <<'PY'
import sys
def load(p):
    seen = {}
    for row in open(p):
        t, _, line = row.partition(" ")
        seen.setdefault(line.strip(), int(t))
    return seen
direct, logs, want = load(sys.argv[1]), load(sys.argv[2]), int(sys.argv[3])
common = sorted(set(direct) & set(logs), key=lambda l: direct[l])
if len(common) < want // 2:
    sys.exit(f"logs: only {len(common)} lines seen by both readers (of {want})")
added = sorted((logs[l] - direct[l]) / 1e6 for l in common)
pick = lambda q: added[min(len(added) - 1, int(q * len(added)))]
print(f"log lines compared                  {len(common)}")
print(f"logs -f after the file, median      {pick(0.5):.1f} ms")
print(f"logs -f after the file, p95         {pick(0.95):.1f} ms")
print(f"logs -f after the file, max         {added[-1]:.1f} ms")
print(f"lines in the file not in logs -f    {len(set(direct) - set(logs))}")
PY
