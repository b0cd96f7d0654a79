#!/usr/bin/env bash
# Baton's benchmark table. Every figure is measured in this run, next to a reference measured
# in the same run on the same machine, and reported as a ratio to it, so numbers from a busy
# or different machine stay comparable. Method and recorded results: docs/benchmarks.md.
#
#   tests/bench/run.sh            # N=30 runs per container timing
#   RUNS=100 tests/bench/run.sh
#   SKIP_AARCH64=1 tests/bench/run.sh   # don't (re)build the aarch64-musl agent
#
# Needs root (runc, containers), runc and busybox-static (scripts/install-deps.sh).
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
runs=${RUNS:-30}
work=$(mktemp -d /tmp/baton-bench.XXXXXX)
runc_root="$work/runc-state"
cleanup() {
  set +e
  # Containers left by an interrupted runc run (each id is unique to this run).
  for id in $(runc --root "$runc_root" list -q 2>/dev/null); do
    runc --root "$runc_root" delete -f "$id" >/dev/null 2>&1
  done
  rm -rf "$work"
}
trap cleanup EXIT

log() { echo "bench: $*" >&2; }
median() { sort -n | awk '{ v[NR] = $1 } END { if (NR == 0) exit 1; if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "" || b == "" || b == 0) print "-"; else printf "%.2f", a / b }'; }
now_ns() { date +%s%N; }

rows=()
row() { rows+=("$(printf '%s\t%s\t%s\t%s' "$1" "$2" "$3" "$4")"); }

# --- (1) binary sizes -------------------------------------------------------------------------
# Reference: Debian's runc binary, the thing the agent's runtime half replaces.
runc_bin=$(command -v runc)
runc_size=$(stat -L -c %s "$runc_bin")
row "runc binary (Debian, reference)" "$runc_size B" "1.00" "$runc_bin"

# A failed build leaves an n/a row rather than ending the run: the other figures still count.
log "building the x86_64 release agent"
if (cd "$root" && cargo build --release -p baton-agent >&2); then
  strip -o "$work/baton-agent.x86_64" "$root/target/release/baton-agent"
  x86_size=$(stat -c %s "$work/baton-agent.x86_64")
  row "agent x86_64-gnu, release, stripped" "$x86_size B" "$(ratio "$x86_size" "$runc_size")" "default features (seccomp)"
else
  row "agent x86_64-gnu, release, stripped" "n/a (build failed)" "-" "cargo build --release -p baton-agent"
fi

aarch64_bin="$root/target/cross/aarch64-unknown-linux-musl/baton-agent"
a64_ok=1
if [ "${SKIP_AARCH64:-0}" != 1 ]; then
  log "building the aarch64-musl device agent"
  "$root/cross/build.sh" aarch64-unknown-linux-musl >&2 || a64_ok=0
fi
if [ "$a64_ok" = 1 ] && [ -f "$aarch64_bin" ]; then
  a64_size=$(stat -c %s "$aarch64_bin")
  row "agent aarch64-musl, device profile, stripped, static" "$a64_size B" "$(ratio "$a64_size" "$runc_size")" "seccomp; tests/bench/sizes.sh: all targets"
else
  row "agent aarch64-musl, device profile, stripped, static" "n/a (not built)" "-" "cross/build.sh"
fi

# --- (2) reference: runc run of /bin/true -------------------------------------------------------
# One bundle for both runtimes: a busybox-static rootfs and `runc spec`'s defaults (which keep
# a new network namespace), with no terminal and /bin/true as the process.
bundle="$work/bundle"
mkdir -p "$bundle/rootfs/bin"
cp /bin/busybox "$bundle/rootfs/bin/busybox"
for applet in true sh; do ln -s busybox "$bundle/rootfs/bin/$applet"; done
(cd "$bundle" && runc spec)
python3 - "$bundle/config.json" <<'EOF'
import json, sys
path = sys.argv[1]
spec = json.load(open(path))
spec["process"]["terminal"] = False
spec["process"]["args"] = ["/bin/true"]
assert any(ns["type"] == "network" for ns in spec["linux"]["namespaces"]), "runc spec lost its netns"
json.dump(spec, open(path, "w"), indent=2)
EOF

log "runc run /bin/true x $runs"
mkdir -p "$runc_root"
: >"$work/runc.ms"
for i in $(seq 1 "$runs"); do
  id="baton-bench-$$-$i"
  t0=$(now_ns)
  runc --root "$runc_root" run --bundle "$bundle" "$id" </dev/null >/dev/null
  t1=$(now_ns)
  awk -v d=$((t1 - t0)) 'BEGIN { printf "%.3f\n", d / 1e6 }' >>"$work/runc.ms"
done
runc_ms=$(median <"$work/runc.ms")
row "runc run /bin/true, median of $runs (reference)" "$runc_ms ms" "1.00" "create+start+wait+delete"

# --- (3) the agent's runtime module on the same bundle --------------------------------------
# agent/examples/bench_runtime.rs: args <rootfs> <runs>; its last line carries `median=<ms>`.
if [ -f "$root/agent/examples/bench_runtime.rs" ]; then
  log "agent runtime /bin/true x $runs"
  out=$(cd "$root" && cargo run -q --release -p baton-agent --example bench_runtime -- "$bundle/rootfs" "$runs") || out=""
  agent_ms=$(printf '%s\n' "$out" | grep -Eo 'median=[0-9.]+' | tail -n 1 | cut -d= -f2 || true)
  if [ -n "$agent_ms" ]; then
    row "agent runtime (libcontainer) /bin/true, median of $runs" "$agent_ms ms" "$(ratio "$agent_ms" "$runc_ms")" "vs runc run"
  else
    row "agent runtime (libcontainer) /bin/true, median of $runs" "n/a (example failed or printed no number)" "-" "bench_runtime"
  fi
else
  row "agent runtime (libcontainer) /bin/true, median of $runs" "n/a (not built yet)" "-" "agent/examples/bench_runtime.rs"
fi

# --- (4)/(5) fleet figures --------------------------------------------------------------------
# A one-machine fleet on its own loopback ports and data dirs: registry, coordinator (embedded
# broker and store) and one agent, all release builds. The pods are busybox `sleep`, so the
# figures are Baton's cost, not the workload's.
fleet_http=127.0.0.1:17474 fleet_mqtt=127.0.0.1:11883 fleet_reg=127.0.0.1:15000
fleet_node=bench-$$ fleet_cidr=10.77.250.0/24 bindir=$root/target/release
# shellcheck source=tests/bench/fleet.sh
. "$root/tests/bench/fleet.sh"
fleet_build() { (cd "$root" && cargo build --release -p baton-coordinator -p baton-agent >&2); }
trap 'fleet_stop; cleanup' EXIT
wait_no_pods() { for _ in $(seq 1 600); do [ "$("$baton" get pods 2>/dev/null | wc -l)" -le 1 ] && return 0; sleep 0.1; done; return 1; }
log "starting a one-machine fleet for the fleet figures"
if fleet_build && fleet_start; then
  sleep 3
  rss0=$(rss "$agent_pid")
  # Warm the image cache, so the latency below is Baton's, not the registry's.
  sleepers 1 | "$baton" apply -f - >/dev/null && wait_running 1 && "$baton" delete deployment sleepers >/dev/null && wait_no_pods
  t0=$(now_ns)
  sleepers 10 | "$baton" apply -f - >/dev/null
  if wait_running 10; then
    t1=$(now_ns)
    apply_ms=$(awk -v d=$((t1 - t0)) 'BEGIN { printf "%.0f", d / 1e6 }')
    per_pod=$(awk -v a="$apply_ms" 'BEGIN { printf "%.1f", a / 10 }')
    row "apply -> 10 pods Running (image cached)" "$apply_ms ms" "$(ratio "$per_pod" "$runc_ms")" "per pod vs runc run; polled via the CLI"
    sleep 3
    rss10=$(rss "$agent_pid")
    row "agent RSS, idle, 0 pods" "$rss0 KiB" "1.00" "reference for the next row"
    row "agent RSS, idle, 10 pods" "$rss10 KiB" "$(ratio "$rss10" "$rss0")" "vs 0 pods"
  else
    row "apply -> 10 pods Running" "n/a (pods did not all run)" "-" "see the agent log"
    row "agent RSS, idle, 0 pods" "$rss0 KiB" "1.00" ""
  fi
  coord_rss=$(rss "$coord_pid")
  row "coordinator RSS (embedded broker + store), 1 node, 10 pods" "$coord_rss KiB" "-" ""
else
  row "fleet figures" "n/a (fleet did not start)" "-" "see $work/*.log"
  tail -n 20 "$work"/*.log >&2 || true
fi
fleet_stop

# --- table ------------------------------------------------------------------------------------
echo
echo "Baton benchmarks, $(date -u +%Y-%m-%dT%H:%MZ), $(uname -m), $(nproc) cores, runs=$runs"
{
  printf 'figure\tvalue\tratio\tnote\n'
  printf '%s\n' "${rows[@]}"
} | column -t -s $'\t'
