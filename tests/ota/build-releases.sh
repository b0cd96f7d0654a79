#!/usr/bin/env bash
# Builds the test releases the agent-update e2e (tests/tests/agent_update.rs) rolls out: this
# source as baton-agent 0.2.1 (BATON_BUILD_VERSION, agent/src/build_info.rs), named as
# `baton release sign` expects (baton-agent-<version>-<target>). Cached in target/ota/<key>/,
# the key being the git tree hash of the sources the agent is built from (committed or not).
# The build goes through target/debug (an incremental rebuild of the agent, ~20 s, instead of
# a cold build in a target dir of its own), then a plain build makes target/debug/baton-agent
# 0.2.0 again: run it before the tests, never beside them. Prints the cache directory.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
versions=(0.2.1)

# The tree of the working copy (untracked files too, ignored ones not), without touching
# the real index; keyed on what the agent binary is built from.
index=$(mktemp)
trap 'rm -f "$index"' EXIT
cp "$(git rev-parse --git-path index)" "$index"
sources=(Cargo.toml Cargo.lock .cargo proto agent third_party)
GIT_INDEX_FILE=$index git add -A -- "${sources[@]}"
tree=$(GIT_INDEX_FILE=$index git write-tree)
key=$(git ls-tree "$tree" "${sources[@]}" | git hash-object --stdin)
target=$(rustc -vV | sed -n 's/^host: //p')
out=$root/target/ota/$key
done_all=1
for v in "${versions[@]}"; do [ -x "$out/baton-agent-$v-$target" ] || done_all=0; done
if [ "$done_all" = 1 ]; then echo "$out"; exit 0; fi

mkdir -p "$root/target/ota"
exec 9>"$root/target/ota/.lock"
flock 9
mkdir -p "$out"
for v in "${versions[@]}"; do
  [ -x "$out/baton-agent-$v-$target" ] && continue
  BATON_BUILD_VERSION=$v nice -n 10 cargo build --locked -p baton-agent --bin baton-agent >&2
  cp target/debug/baton-agent "$out/baton-agent-$v-$target.tmp"
  mv "$out/baton-agent-$v-$target.tmp" "$out/baton-agent-$v-$target"
done
# target/debug/baton-agent is this source's own version again.
nice -n 10 cargo build --locked -p baton-agent --bin baton-agent >&2
echo "$out"
