#!/usr/bin/env bash
# Builds the test releases the agent-update e2e tests roll out: this source as baton-agent
# 0.2.1 (BATON_BUILD_VERSION, agent/src/build_info.rs), named as `baton release sign`
# expects (baton-agent-<version>-<target>). Cached in target/ota/<key>/, the key being the
# git tree hash of the sources the agent is built from (committed or not).
#
#   tests/ota/build-releases.sh                             the host's (tests/tests/agent_update.rs)
#   tests/ota/build-releases.sh aarch64-unknown-linux-musl  the arm64 board's (tests/tests/device_arm64.rs)
#
# Host: the build goes through target/debug (an incremental rebuild of the agent, ~20 s,
# instead of a cold build in a target dir of its own), then a plain build makes
# target/debug/baton-agent 0.2.0 again: run it before the tests, never beside them.
# aarch64: cross/build.sh's agent build itself (agent_build in cross/agent.sh: profile
# `device`, `-p baton-agent` alone, std from source, abort on panic, the musl libseccomp), in
# the same target dir, so only the agent crate recompiles. cross/build.sh builds each package on its own since session 14; this
# script still built both together, so every dependency was compiled again with the
# coordinator's features unified in: 874 s of CI's serial path in one rehearsal, and a
# 0.2.1 agent that was not the 0.2.0 one but for its version. target/cross/<triple>/baton-agent,
# the 0.2.0 the board is flashed with, is a copy cross/build.sh made and is left alone; the
# agent in target/<triple>/device/ stays 0.2.1 until cross/build.sh next rebuilds (the
# version variable is tracked by cargo). Prints the cache directory.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
versions=(0.2.1)
host=$(rustc -vV | sed -n 's/^host: //p')
target=${1:-$host}
case "$target" in
  "$host" | aarch64-unknown-linux-musl) ;;
  *) echo "tests/ota/build-releases.sh: no release build for $target (known: $host, aarch64-unknown-linux-musl)" >&2; exit 1 ;;
esac

# The tree of the working copy (untracked files too, ignored ones not), without touching
# the real index; keyed on what the agent binary is built from.
index=$(mktemp)
trap 'rm -f "$index"' EXIT
cp "$(git rev-parse --git-path index)" "$index"
sources=(Cargo.toml Cargo.lock .cargo proto agent third_party cross/agent.sh)
GIT_INDEX_FILE=$index git add -A -- "${sources[@]}"
tree=$(GIT_INDEX_FILE=$index git write-tree)
key=$(git ls-tree "$tree" "${sources[@]}" | git hash-object --stdin)
out=$root/target/ota/$key
done_all=1
for v in "${versions[@]}"; do [ -x "$out/baton-agent-$v-$target" ] || done_all=0; done
if [ "$done_all" = 1 ]; then echo "$out"; exit 0; fi

mkdir -p "$root/target/ota"
exec 9>"$root/target/ota/.lock"
flock 9
mkdir -p "$out"
if [ "$target" = "$host" ]; then
  for v in "${versions[@]}"; do
    [ -x "$out/baton-agent-$v-$target" ] && continue
    BATON_BUILD_VERSION=$v nice -n 10 cargo build --locked -p baton-agent --bin baton-agent >&2
    cp target/debug/baton-agent "$out/baton-agent-$v-$target.tmp"
    mv "$out/baton-agent-$v-$target.tmp" "$out/baton-agent-$v-$target"
  done
  # target/debug/baton-agent is this source's own version again.
  nice -n 10 cargo build --locked -p baton-agent --bin baton-agent >&2
else
  # cross/build.sh's aarch64 build, word for word but for the version, in its environment
  # (its tools first on PATH): build scripts that see another environment rebuild, and
  # everything above them with them.
  # shellcheck source=cross/tools.sh
  . "$root/cross/tools.sh"
  libdir=$("$root/cross/libseccomp.sh" "$target")
  tdir=${CARGO_TARGET_DIR:-$root/target}
  for v in "${versions[@]}"; do
    [ -x "$out/baton-agent-$v-$target" ] && continue
    start=$(date +%s)
    root=$root BATON_BUILD_VERSION=$v nice -n 10 bash -c \
      '. "$root/cross/tools.sh"; . "$root/cross/link-extras.sh"; . "$root/cross/agent.sh"; agent_build "$@"' \
      agent_build "$target" "$libdir" >&2
    bin=$tdir/$target/device/baton-agent
    got=$(qemu-aarch64-static "$bin" --version)
    [ "$got" = "baton-agent $v" ] || { echo "tests/ota/build-releases.sh: built $got, not $v" >&2; exit 1; }
    cp "$bin" "$out/baton-agent-$v-$target.tmp"
    mv "$out/baton-agent-$v-$target.tmp" "$out/baton-agent-$v-$target"
    echo "tests/ota/build-releases.sh: $target $v built in $(($(date +%s) - start)) s" >&2
  done
fi
echo "$out"
