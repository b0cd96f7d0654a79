#!/usr/bin/env bash
# What watching costs the coordinator (issue 16): its CPU with one web dashboard (a real
# headless Chromium, logged in, following the fleet) and one `baton get pods -w` open, on a
# fleet of 10 nodes and 100 pods whose pods crash and restart at a steady rate, against the
# same fleet with nobody watching, measured in the same run. The fleet is `baton-sim`'s
# hollow nodes (sim/), so only the coordinator's side is measured.
#
#   tests/bench/watchers.sh [BINDIR] [WINDOW_SECONDS]   # defaults: target/release 60
#
# BINDIR holds baton and baton-sim. Needs chromium and chromium-driver
# (scripts/install-deps.sh). Loopback only.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
bindir=$(cd "${1:-$root/target/release}" && pwd)
window=${2:-60}
baton=$bindir/baton
sim=$bindir/baton-sim
for b in "$baton" "$sim" /usr/bin/chromium /usr/bin/chromedriver; do
  [ -x "$b" ] || { echo "watchers.sh: no $b (chromium: scripts/install-deps.sh)" >&2; exit 1; }
done
work=$(mktemp -d /tmp/baton-wbench.XXXXXX)
http=127.0.0.1:17874
mqtt_port=12193
driver_port=19515
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
cpu_ticks() { sed 's/^.*) //' "/proc/$1/stat" | awk '{ print $12 + $13 }'; }
hz=$(getconf CLK_TCK)
# The coordinator's CPU over the window, in % of one core.
cpu_over_window() {
  local c0 c1
  c0=$(cpu_ticks "$coord"); sleep "$window"; c1=$(cpu_ticks "$coord")
  awk -v a="$c0" -v b="$c1" -v hz="$hz" -v w="$window" 'BEGIN { printf "%.2f", (b - a) / hz / w * 100 }'
}
export BATON_SERVER=http://$http
export BATON_CONFIG=$work/coordinator/admin.conf
RUST_LOG=warn "$baton" server --data-dir "$work/coordinator" --listen "$http" \
  --mqtt-listen "127.0.0.1:$mqtt_port" --insecure-mqtt >"$work/coordinator.log" 2>&1 &
coord=$!; pids+=("$coord")
for _ in $(seq 1 100); do "$baton" get nodes >/dev/null 2>&1 && break; sleep 0.1; done
token=$(python3 -c 'import re,sys; print(re.search(r"token\W+([A-Za-z0-9._~+/=-]+)", open(sys.argv[1]).read()).group(1))' "$BATON_CONFIG")
# 10 nodes, each seeing one container crash and restart a minute (10 restarts a minute
# across the 100 pods): the status changes and events a watcher is sent.
RUST_LOG=error "$sim" --coordinator "mqtt://127.0.0.1:$mqtt_port" --nodes 10 --prefix wb \
  --crash-percent-per-min 100 </dev/null >"$work/sim.out" 2>"$work/sim.err" &
pids+=("$!")
count() { # kind field value: how many objects of kind have .status.field == value
  "$baton" get "$1" -o json 2>/dev/null | python3 -c "import json,sys; print(sum(1 for o in json.load(sys.stdin)['items'] if o['status'].get('$2') == $3))" 2>/dev/null || echo 0
}
for _ in $(seq 1 300); do [ "$(count nodes ready True)" -ge 10 ] && break; sleep 0.2; done
cat <<EOF | "$baton" apply -f - >/dev/null
apiVersion: apps/v1
kind: Deployment
metadata: {name: fleet}
spec:
  replicas: 100
  selector: {matchLabels: {app: fleet}}
  template:
    metadata: {labels: {app: fleet}}
    spec:
      containers: [{name: app, image: "sim.invalid/app:1", resources: {requests: {cpu: 10m, memory: 8Mi}}}]
EOF
for _ in $(seq 1 600); do [ "$(count pods phase '"Running"')" -ge 95 ] && break; sleep 0.2; done
sleep 10
idle=$(cpu_over_window)

# The watchers: get pods -w, and the dashboard logged in with the admin token.
"$baton" get pods -w >"$work/watch.out" 2>&1 &
pids+=("$!")
/usr/bin/chromedriver --port=$driver_port >"$work/chromedriver.log" 2>&1 &
pids+=("$!")
python3 - "$driver_port" "http://$http/" "$token" "$work/chrome" <<'PY'
import json, sys, time, urllib.request
port, url, token, profile = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
base = f"http://127.0.0.1:{port}"
def call(method, path, body=None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(base + path, data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    return json.load(urllib.request.urlopen(req, timeout=60))["value"]
for _ in range(100):
    try:
        call("GET", "/status"); break
    except OSError:
        time.sleep(0.1)
caps = {"capabilities": {"alwaysMatch": {"goog:chromeOptions": {"binary": "/usr/bin/chromium",
        "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--no-first-run", f"--user-data-dir={profile}"]}}}}
s = call("POST", "/session", caps)["sessionId"]
call("POST", f"/session/{s}/url", {"url": url})
js = lambda script: call("POST", f"/session/{s}/execute/sync", {"script": script, "args": []})
for _ in range(100):
    if js("return !!document.querySelector('#login:not([hidden]) #token')"): break
    time.sleep(0.1)
el = call("POST", f"/session/{s}/element", {"using": "css selector", "value": "#token"})
el = next(iter(el.values()))
call("POST", f"/session/{s}/element/{el}/value", {"text": token})
sub = call("POST", f"/session/{s}/element", {"using": "css selector", "value": "#login button[type=submit]"})
call("POST", f"/session/{s}/element/{next(iter(sub.values()))}/click", {})
for _ in range(300):
    tiles = js("return document.querySelectorAll('#nodes .tile').length")
    pods = js("return document.querySelectorAll('#pods tbody tr').length")
    if tiles >= 10 and pods >= 95: break
    time.sleep(0.1)
else:
    sys.exit(f"watchers.sh: the dashboard shows {tiles} nodes and {pods} pods")
print(f"dashboard: {tiles} node tiles, {pods} pod rows", file=sys.stderr)
PY
sleep 10
watched=$(cpu_over_window)
lines=$(wc -l <"$work/watch.out")
printf '%-52s %s\n' "coordinator CPU, nobody watching (% of a core)" "$idle"
printf '%-52s %s\n' "coordinator CPU, 1 dashboard + 1 get pods -w" "$watched"
printf '%-52s %s\n' "ratio" "$(awk -v a="$watched" -v b="$idle" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }')"
printf '%-52s %s\n' "get pods -w lines over the run" "$lines"
