#!/usr/bin/env bash
# Builds the previous release's agent (Baton 0.1.0, git tag v0.1.0) from this repository's own
# history, for the version-skew e2e (tests/tests/skew.rs): a real old binary, not a simulated one.
# Cached by commit in target/skew/<commit>/baton-agent (git-ignored), so a reused machine builds
# it once. The build has its own target dir (target/skew/build), never target/debug.
# Prints the binary's path on stdout.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD

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
# Its own target dir: the old sources must never overwrite target/debug's 0.2.0 binaries.
(cd "$src" && nice -n 10 cargo build --locked -p baton-agent --bin baton-agent \
  --target-dir "$root/target/skew/build") >&2
mkdir -p "$out"
cp "$root/target/skew/build/debug/baton-agent" "$bin.tmp"
mv "$bin.tmp" "$bin"
# Only the binary is kept: the old tree's build is 1.2 GB a CI disk can use better.
git worktree remove --force "$src"
rm -rf "$root/target/skew/build"
echo "$bin"
