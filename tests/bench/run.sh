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

aarch64_bin="$root/target/aarch64-unknown-linux-musl/release/baton-agent"
a64_ok=1
if [ "${SKIP_AARCH64:-0}" != 1 ]; then
  log "building the aarch64-musl release agent"
  "$root/cross/build-aarch64.sh" --smoke-only >&2 || a64_ok=0
fi
if [ "$a64_ok" = 1 ] && [ -f "$aarch64_bin" ]; then
  a64_size=$(stat -c %s "$aarch64_bin")
  row "agent aarch64-musl, release, stripped, static" "$a64_size B" "$(ratio "$a64_size" "$runc_size")" "--no-default-features"
else
  row "agent aarch64-musl, release, stripped, static" "n/a (not built)" "-" "cross/build-aarch64.sh"
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
# agent/examples/bench_runtime.rs: args <rootfs> <runs>; prints the median in ms (the last
# number on its last line of stdout).
if [ -f "$root/agent/examples/bench_runtime.rs" ]; then
  log "agent runtime /bin/true x $runs"
  out=$(cd "$root" && cargo run -q --release -p baton-agent --example bench_runtime -- "$bundle/rootfs" "$runs") || out=""
  agent_ms=$(printf '%s\n' "$out" | tail -n 1 | grep -Eo '[0-9]+(\.[0-9]+)?' | tail -n 1 || true)
  if [ -n "$agent_ms" ]; then
    row "agent runtime (libcontainer) /bin/true, median of $runs" "$agent_ms ms" "$(ratio "$agent_ms" "$runc_ms")" "vs runc run"
  else
    row "agent runtime (libcontainer) /bin/true, median of $runs" "n/a (example failed or printed no number)" "-" "bench_runtime"
  fi
else
  row "agent runtime (libcontainer) /bin/true, median of $runs" "n/a (not built yet)" "-" "agent/examples/bench_runtime.rs"
fi

# --- (4)/(5) fleet figures: placeholders for the lead ------------------------------------------
# TODO(lead): these need a running coordinator + broker + agent. Each function must print
# "<value> <unit>" on stdout, or "n/a (...)" when it cannot measure.
measure_idle_rss() { # $1 = number of running pods (0 or 10)
  echo "n/a (placeholder: needs the fleet)"
}
measure_apply_to_running() { # $1 = number of pods applied at once
  echo "n/a (placeholder: needs the fleet)"
}
row "agent idle RSS, 0 pods" "$(measure_idle_rss 0)" "-" "PLACEHOLDER"
row "agent idle RSS, 10 pods" "$(measure_idle_rss 10)" "-" "PLACEHOLDER"
row "apply -> all Running, 10 pods" "$(measure_apply_to_running 10)" "-" "PLACEHOLDER"

# --- table ------------------------------------------------------------------------------------
echo
echo "Baton benchmarks, $(date -u +%Y-%m-%dT%H:%MZ), $(uname -m), $(nproc) cores, runs=$runs"
{
  printf 'figure\tvalue\tratio\tnote\n'
  printf '%s\n' "${rows[@]}"
} | column -t -s $'\t'
