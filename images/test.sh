#!/usr/bin/env bash
# Checks the example images end to end:
#   1. two builds give byte-identical layouts (same digests for every blob);
#   2. a push to a fresh registry on 127.0.0.1:<free port> succeeds, and the index and both
#      platform manifests come back with curl, with the right media types and platforms;
#   3. the amd64 http-echo rootfs serves its CGI on loopback and reports MESSAGE.
# Cleans up (registry, temp dirs, httpd) on any exit. Needs root (chroot) and python3.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
tmp=$(mktemp -d /tmp/baton-images-test.XXXXXX)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
addr="127.0.0.1:$port"
httpd_pid=""
cleanup() {
  set +e
  if [ -n "$httpd_pid" ]; then kill "$httpd_pid" 2>/dev/null; wait "$httpd_pid" 2>/dev/null; fi
  "$here/registry.sh" stop "$addr" "$tmp/registry"
  rm -rf "$tmp"
}
trap cleanup EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }

echo "== reproducibility"
"$here/build.sh" --out "$tmp/a" >"$tmp/a.digests"
"$here/build.sh" --out "$tmp/b" >"$tmp/b.digests"
cat "$tmp/a.digests"
[ "$(wc -l <"$tmp/a.digests")" -eq 3 ] || fail "expected 3 images"
diff "$tmp/a.digests" "$tmp/b.digests" || fail "index digests differ between builds"
diff -r "$tmp/a" "$tmp/b" >/dev/null || fail "layouts differ between builds"

echo "== push to $addr"
"$here/registry.sh" start "$addr" "$tmp/registry"
python3 "$here/oci.py" push --out "$tmp/a" --registry "$addr" | tee "$tmp/pushed"
[ "$(wc -l <"$tmp/pushed")" -eq 3 ] || fail "expected 3 pushed images"

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

echo "PASS"
