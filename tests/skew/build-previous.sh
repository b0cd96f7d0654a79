#!/usr/bin/env bash
# Builds the previous release's agent (Baton 0.1.0, git tag v0.1.0) from this repository's own
# history, for the version-skew e2e (tests/tests/skew.rs): a real old binary, not a simulated one.
# Cached by commit in target/skew/<commit>/baton-agent (git-ignored), so a reused machine builds
# it once. Prints the binary's path on stdout.
#
# `--shared-target` (scripts/test.sh, after the workspace build and before any test runs)
# builds in the workspace's own target dir: the old tree shares every registry crate with
# target/debug, so only its own crates compile (~45 s instead of a ~9 min cold build), and
# target/debug/baton-agent is this source's agent again before the script ends (checked).
# Without it (a test that finds the binary missing, with other tests running) the build has a
# target dir of its own and never touches target/debug.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
shared=0
[ "${1:-}" = --shared-target ] && shared=1

# The tag, or the commit it was made from if a clone lacks tags (issue 13: main before 0.2.0).
commit=46e0d7aeb65eddc2679c399f4965f7af0e2a5c0f
if tagged=$(git rev-parse -q --verify 'v0.1.0^{commit}' 2>/dev/null); then commit=$tagged; fi
git cat-file -e "$commit^{commit}" 2>/dev/null ||
  { echo "build-previous: v0.1.0 ($commit) is not in this clone's history" >&2; exit 1; }

out=$root/target/skew/$commit
bin=$out/baton-agent
if [ -x "$bin" ]; then echo "$bin"; exit 0; fi
mkdir -p "$root/target/skew"
# One builder at a time (scripts/test.sh in the background, a developer's test by hand).
exec 9>"$root/target/skew/.lock"
flock 9
if [ -x "$bin" ]; then echo "$bin"; exit 0; fi

src=$root/target/skew/src-$commit
if [ ! -e "$src/Cargo.toml" ]; then
  git worktree remove --force "$src" 2>/dev/null || rm -rf "$src"
  git worktree prune
  git worktree add --detach "$src" "$commit" >&2
fi
if [ "$shared" = 1 ]; then
  (cd "$src" && cargo build --locked -p baton-agent --bin baton-agent --target-dir "$root/target") >&2
  built=$root/target/debug/baton-agent
else
  # Its own target dir: the old sources must never overwrite target/debug's binaries while
  # tests use them.
  (cd "$src" && nice -n 10 cargo build --locked -p baton-agent --bin baton-agent \
    --target-dir "$root/target/skew/build") >&2
  built=$root/target/skew/build/debug/baton-agent
fi
mkdir -p "$out"
cp "$built" "$bin.tmp"
mv "$bin.tmp" "$bin"
if [ "$shared" = 1 ]; then
  # Cargo links target/debug/baton-agent again from this source's (fresh) build.
  cargo build --locked -p baton-agent --bin baton-agent >&2
  want=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -1)
  have=$("$root/target/debug/baton-agent" --version)
  [ "$have" = "baton-agent $want" ] ||
    { echo "build-previous: target/debug/baton-agent is '$have', not $want" >&2; exit 1; }
fi
# Only the binary is kept: the old tree's build is 1.2 GB a CI disk can use better.
git worktree remove --force "$src"
rm -rf "$root/target/skew/build"
echo "$bin"
