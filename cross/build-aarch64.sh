#!/usr/bin/env bash
# The aarch64 part of cross/build.sh, kept for its callers: a static, stripped baton-agent and
# baton for aarch64-unknown-linux-musl in target/cross/aarch64-unknown-linux-musl/, with
# seccomp, each checked static and run with `--version` under qemu-aarch64-static.
#
#   cross/build-aarch64.sh [--smoke-only]    (--smoke-only is accepted and ignored: the
#                                             agent has had a real --version for a while)
set -euo pipefail
case "${1:-}" in
  --smoke-only | "") ;;
  *) echo "usage: $0 [--smoke-only]" >&2; exit 2 ;;
esac
exec "$(dirname "$0")/build.sh" aarch64-unknown-linux-musl
