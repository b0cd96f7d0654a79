#!/usr/bin/env bash
# Checks the example images end to end:
#   0. the todo app's own unit and loopback tests (cargo test in images/apps);
#   1. two builds give byte-identical layouts (same digests for every blob);
#   2. a push to a fresh registry on 127.0.0.1:<free port> succeeds, and the index and every
#      platform manifest come back with curl, with the right media types and platforms;
#   3. the amd64 http-echo rootfs serves its CGI on loopback and reports MESSAGE;
#   4. the todo app images: todo-app and kv share their base layer, :1 and :2 differ only
#      in config; the amd64 binaries from the layers run for real on loopback (kv primary
#      + replica + todo-app: a todo posted, read back, seen on the replica; the primary
#      killed -> /healthz 503); the arm64 kv answers PING under qemu-aarch64-static;
#   5. busybox and http-echo carry linux/arm/v7, whose busybox runs under qemu-arm-static.
# Cleans up (registry, temp dirs, processes) on any exit. Needs root (chroot) and python3.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
tmp=$(mktemp -d /tmp/baton-images-test.XXXXXX)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
addr="127.0.0.1:$port"
httpd_pid=""
pids=()
cleanup() {
  set +e
  if [ -n "$httpd_pid" ]; then kill "$httpd_pid" 2>/dev/null; wait "$httpd_pid" 2>/dev/null; fi
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
  "$here/registry.sh" stop "$addr" "$tmp/registry"
  rm -rf "$tmp"
}
trap cleanup EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }

echo "== the todo app's own tests (images/apps: protocol, JSON, replication, HTTP API)"
if ! (cd "$here/apps" && CARGO_TARGET_DIR="$here/apps/target" cargo test --locked --offline) >"$tmp/apps-test.log" 2>&1; then
  cat "$tmp/apps-test.log" >&2
  fail "cargo test in images/apps"
fi
grep "^test result" "$tmp/apps-test.log"

echo "== reproducibility"
"$here/build.sh" --out "$tmp/a" >"$tmp/a.digests"
"$here/build.sh" --out "$tmp/b" >"$tmp/b.digests"
cat "$tmp/a.digests"
[ "$(wc -l <"$tmp/a.digests")" -eq 6 ] || fail "expected 6 images"
diff "$tmp/a.digests" "$tmp/b.digests" || fail "index digests differ between builds"
diff -r "$tmp/a" "$tmp/b" >/dev/null || fail "layouts differ between builds"

echo "== push to $addr"
"$here/registry.sh" start "$addr" "$tmp/registry"
python3 "$here/oci.py" push --out "$tmp/a" --registry "$addr" | tee "$tmp/pushed"
[ "$(wc -l <"$tmp/pushed")" -eq 6 ] || fail "expected 6 pushed images"

echo "== fetch back"
accept_index="application/vnd.oci.image.index.v1+json"
accept_manifest="application/vnd.oci.image.manifest.v1+json"
while read -r name digest; do
  repo=${name%:*} tag=${name##*:}
  url="http://$addr/v2/$repo/manifests/$tag"
  curl -fsS -H "Accept: $accept_index" -D "$tmp/h" -o "$tmp/index.json" "$url" || fail "GET $url"
  grep -qi "^content-type: $accept_index" "$tmp/h" || fail "$name: index content type"
  grep -qi "^docker-content-digest: $digest" "$tmp/h" || fail "$name: registry digest is not $digest"
  got=$(python3 - "$tmp/index.json" <<'EOF'
import json, sys
idx = json.load(open(sys.argv[1]))
print(" ".join(f"{m['platform']['os']}/{m['platform']['architecture']}={m['digest']}" for m in idx["manifests"]))
EOF
)
  case "$got" in linux/amd64=*" linux/arm64="*) ;; *) fail "$name: platforms are '$got'" ;; esac
  for entry in $got; do
    platform=${entry%%=*} mdigest=${entry#*=}
    murl="http://$addr/v2/$repo/manifests/$mdigest"
    curl -fsS -H "Accept: $accept_manifest" -D "$tmp/h" -o "$tmp/m.json" "$murl" || fail "GET $murl"
    grep -qi "^content-type: $accept_manifest" "$tmp/h" || fail "$name $platform: manifest content type"
    [ "sha256:$(sha256sum <"$tmp/m.json" | cut -d' ' -f1)" = "$mdigest" ] || fail "$name $platform: manifest bytes"
    cdigest=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["config"]["digest"])' "$tmp/m.json")
    curl -fsS -o "$tmp/c.json" "http://$addr/v2/$repo/blobs/$cdigest" || fail "GET config $cdigest"
    arch=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["architecture"])' "$tmp/c.json")
    [ "linux/$arch" = "$platform" ] || fail "$name $platform: config says $arch"
    echo "ok $name $platform $mdigest"
  done
done <"$tmp/a.digests"

echo "== http-echo serves its CGI (amd64 rootfs, chroot, loopback)"
rootfs="$tmp/rootfs"
mkdir -p "$rootfs"
layout="$tmp/a/baton/http-echo"
for layer in $(python3 - "$layout" <<'EOF'
import json, sys
root = sys.argv[1]
blob = lambda d: json.load(open(f"{root}/blobs/sha256/{d.split(':')[1]}"))
top = [m for m in json.load(open(f"{root}/index.json"))["manifests"]
       if m["annotations"]["org.opencontainers.image.ref.name"] == "1"][0]
amd64 = [m for m in blob(top["digest"])["manifests"] if m["platform"]["architecture"] == "amd64"][0]
print(" ".join(l["digest"].split(":")[1] for l in blob(amd64["digest"])["layers"]))
EOF
); do
  tar -xzf "$layout/blobs/sha256/$layer" -C "$rootfs"
done
hport=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
MESSAGE=replica-7 chroot "$rootfs" /usr/sbin/httpd -f -p "127.0.0.1:$hport" -h /www &
httpd_pid=$!
body=""
for _ in $(seq 1 100); do
  body=$(curl -fsS --max-time 1 "http://127.0.0.1:$hport/cgi-bin/info" 2>/dev/null) && break
  sleep 0.1
done
echo "$body"
echo "$body" | grep -qx "message=replica-7" || fail "CGI did not report MESSAGE"
echo "$body" | grep -qx "version=1" || fail "CGI did not report version 1"
echo "$body" | grep -q "^hostname=." || fail "CGI did not report a hostname"

echo "== todo app images: shared layers"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
# What an image (layout REPO, TAG, ARCH) holds: WHAT is `layers` (digests, base first),
# `env` (the config's Env, one a line) or `config` (the config digest).
image_info() { # REPO TAG ARCH WHAT
  python3 - "$tmp/a/$1" "$2" "$3" "$4" <<'EOF'
import json, sys
root, tag, arch, what = sys.argv[1:]
blob = lambda d: json.load(open(f"{root}/blobs/sha256/{d.split(':')[1]}"))
top = [m for m in json.load(open(f"{root}/index.json"))["manifests"]
       if m["annotations"]["org.opencontainers.image.ref.name"] == tag][0]
m = blob([m for m in blob(top["digest"])["manifests"] if m["platform"]["architecture"] == arch][0]["digest"])
if what == "layers":
    print("\n".join(l["digest"] for l in m["layers"]))
elif what == "env":
    print("\n".join(blob(m["config"]["digest"])["config"]["Env"]))
else:
    print(m["config"]["digest"])
EOF
}
extract() { # REPO TAG ARCH DEST
  mkdir -p "$4"
  for layer in $(image_info "$1" "$2" "$3" layers); do
    tar -xzf "$tmp/a/$1/blobs/sha256/${layer#sha256:}" -C "$4"
  done
}
kv() { # PORT COMMAND: one KV command over TCP; prints the reply's first line
  python3 - "$1" "$2" <<'EOF'
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=5)
s.sendall(sys.argv[2].encode() + b"\n")
print(s.makefile().readline().rstrip("\n"))
EOF
}
wait_until() { # DESCRIPTION COMMAND...: polls for up to 20 s
  local what=$1; shift
  for _ in $(seq 1 200); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.1
  done
  fail "timed out waiting for $what"
}

for arch in amd64 arm64; do
  todo1=$(image_info baton/todo-app 1 "$arch" layers)
  todo2=$(image_info baton/todo-app 2 "$arch" layers)
  kvl=$(image_info baton/kv 1 "$arch" layers)
  [ "$todo1" = "$todo2" ] || fail "todo-app:1 and :2 ($arch) should share every layer"
  [ "$(image_info baton/todo-app 1 "$arch" config)" != "$(image_info baton/todo-app 2 "$arch" config)" ] \
    || fail "todo-app:1 and :2 ($arch) have the same config"
  [ "$(head -1 <<<"$todo1")" = "$(head -1 <<<"$kvl")" ] || fail "todo-app and kv ($arch) should share the base layer"
  [ "$(tail -1 <<<"$todo1")" != "$(tail -1 <<<"$kvl")" ] || fail "todo-app and kv ($arch) have the same binary layer"
done
base=$(image_info baton/kv 1 amd64 layers | sed -n 1p)
[ "$base" = "$(image_info baton/kv 1 arm64 layers | sed -n 1p)" ] || fail "the base layer should be one blob for both platforms"
echo "ok: base layer $base is shared by todo-app and kv on both platforms"

echo "== todo app for real (amd64 binaries from the image layers, loopback)"
extract baton/kv 1 amd64 "$tmp/kv-amd64"
extract baton/todo-app 2 amd64 "$tmp/todo-amd64"
for b in "$tmp/kv-amd64/usr/local/bin/kv" "$tmp/todo-amd64/usr/local/bin/todo-app"; do
  # Static: no program interpreter (the cross binutils read any ELF).
  headers=$(aarch64-linux-gnu-readelf -lW "$b")
  if grep -q "Requesting program interpreter" <<<"$headers"; then
    fail "$b is dynamically linked"
  fi
done
p_primary=$(free_port) p_replica=$(free_port) p_web=$(free_port)
"$tmp/kv-amd64/usr/local/bin/kv" --bind 127.0.0.1 --port "$p_primary" 2>"$tmp/kv-primary.log" &
primary_pid=$!
pids+=("$primary_pid")
KV_ROLE=replica KV_PRIMARY="127.0.0.1:$p_primary" KV_PORT="$p_replica" KV_BIND=127.0.0.1 \
  "$tmp/kv-amd64/usr/local/bin/kv" 2>"$tmp/kv-replica.log" &
pids+=($!)
# The image's own environment (APP_VERSION=2), with loopback addresses for the test.
mapfile -t image_env < <(image_info baton/todo-app 2 amd64 env)
env -i "${image_env[@]}" BIND=127.0.0.1 PORT="$p_web" KV_PRIMARY="127.0.0.1:$p_primary" \
  KV_REPLICA="127.0.0.1:$p_replica" "$tmp/todo-amd64/usr/local/bin/todo-app" 2>"$tmp/todo.log" &
pids+=($!)
web="http://127.0.0.1:$p_web"
wait_until "todo-app to be ready" curl -fsS --max-time 2 "$web/healthz"
version=$(curl -fsS "$web/api/version")
echo "version: $version"
grep -q '"version":"2"' <<<"$version" || fail "todo-app:2 does not say version 2"
created=$(curl -fsS -X POST -H 'Content-Type: application/json' -d '{"title":"water the tomatoes"}' "$web/api/todos")
echo "created: $created"
id=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["id"])' "$created")
has_todo() { curl -fsS --max-time 2 "$web/api/todos" | grep -q '"title":"water the tomatoes"'; }
wait_until "the todo in the listing" has_todo
on_replica() { kv "$p_replica" "GET todo:$id" | grep -q '^VAL .*water the tomatoes'; }
wait_until "the todo on the replica" on_replica
echo "replica: $(kv "$p_replica" "GET todo:$id")"
status=$(curl -sS -o /dev/null -w '%{http_code}' -X POST -d '{bad' "$web/api/todos")
[ "$status" = 400 ] || fail "invalid JSON gave HTTP $status, not 400"
kill "$primary_pid"
not_ready() { [ "$(curl -sS -o /dev/null -w '%{http_code}' --max-time 5 "$web/healthz")" = 503 ]; }
wait_until "/healthz to fail once the primary is gone" not_ready
echo "ok: /healthz is 503 without the primary"
replica_down() { kv "$p_replica" INFO | grep -q "link=down"; }
wait_until "the replica to see its primary gone" replica_down
has_todo || fail "reads should still be served by the replica"

if command -v qemu-aarch64-static >/dev/null; then
  echo "== arm64 binaries under qemu-aarch64-static"
  extract baton/kv 1 arm64 "$tmp/kv-arm64"
  extract baton/todo-app 1 arm64 "$tmp/todo-arm64"
  # Captured first: `| grep -q` would close the pipe at the first match, and the program
  # would then die of a broken pipe, failing the check under pipefail (seen in CI).
  help=$(qemu-aarch64-static "$tmp/todo-arm64/usr/local/bin/todo-app" --help) \
    || fail "arm64 todo-app --help exited with an error"
  grep -q "usage: todo-app" <<<"$help" || fail "arm64 todo-app --help"
  p_arm=$(free_port)
  qemu-aarch64-static "$tmp/kv-arm64/usr/local/bin/kv" --bind 127.0.0.1 --port "$p_arm" 2>"$tmp/kv-arm64.log" &
  pids+=($!)
  arm_pong() { [ "$(kv "$p_arm" PING)" = PONG ]; }
  wait_until "the arm64 kv to answer PING" arm_pong
  echo "ok: arm64 kv says PONG"
else
  echo "== skipped: arm64 run (qemu-aarch64-static is not installed)"
fi

# 32-bit ARM boards (tests/tests/device_armhf.rs) get busybox and http-echo's arm/v7 entry.
for img in "baton/busybox 1" "baton/http-echo 1" "baton/http-echo 2"; do
  read -r repo tag <<<"$img"
  cfg=$(image_info "$repo" "$tag" arm config)
  variant=$(python3 -c 'import json,sys; c=json.load(open(sys.argv[1])); print(c["architecture"]+"/"+c.get("variant",""))' \
    "$tmp/a/$repo/blobs/sha256/${cfg#sha256:}")
  [ "$variant" = arm/v7 ] || fail "$repo:$tag: the 32-bit ARM entry is $variant, not arm/v7"
done
echo "ok: busybox and http-echo carry linux/arm/v7"
if command -v qemu-arm-static >/dev/null; then
  extract baton/http-echo 1 arm "$tmp/echo-arm"
  out=$(qemu-arm-static -cpu cortex-a15 "$tmp/echo-arm/bin/busybox" echo arm-ok) \
    || fail "the arm/v7 busybox did not run under qemu-arm-static"
  [ "$out" = arm-ok ] || fail "the arm/v7 busybox said '$out'"
  echo "ok: the arm/v7 busybox runs under qemu-arm-static (cortex-a15)"
fi

echo "PASS"
