#!/usr/bin/env python3
"""Builds Baton's example OCI images reproducibly and pushes them, with the standard library only.

Why not umoci/skopeo: neither writes a multi-platform image index, and a plain Distribution
HTTP client is a few dozen lines. Reproducibility rules (same inputs -> same digests):
tar entries sorted, mtime 0, uid/gid 0 with empty owner names, gzip with no name and no
timestamp (`gzip -n`), JSON with sorted keys and no whitespace, `created` fixed at the epoch.

Subcommands:
  build --out DIR --busybox-amd64 FILE --busybox-arm64 FILE --busybox-armhf FILE --applets FILE
        [--apps-amd64 DIR --apps-arm64 DIR]   (DIRs holding the todo-app and kv binaries)
  push  --out DIR --registry HOST:PORT
"""

import argparse
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import urllib.error
import urllib.parse
import urllib.request

MT_INDEX = "application/vnd.oci.image.index.v1+json"
MT_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
REF_NAME = "org.opencontainers.image.ref.name"
EPOCH = "1970-01-01T00:00:00Z"
PATH_ENV = "PATH=/usr/sbin:/usr/bin:/sbin:/bin"

# (OCI architecture, variant or None)
PLATFORMS = [("amd64", None), ("arm64", "v8")]
# busybox and http-echo also run on 32-bit ARM boards (Pi 2/3/4 on a 32-bit OS): Debian's
# armhf busybox is ARMv7. Appended last, so the other entries keep their bytes; the todo
# app images have no 32-bit build.
BUSYBOX_PLATFORMS = PLATFORMS + [("arm", "v7")]


def canonical_json(obj):
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def sha256(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


class Tree:
    """An in-memory file tree that serializes to a deterministic tar."""

    def __init__(self):
        self.entries = {}  # path -> (type, mode, data or link target)

    def dir(self, path, mode=0o755):
        parts = path.strip("/").split("/")
        for i in range(1, len(parts) + 1):
            p = "/".join(parts[:i])
            if p not in self.entries:
                self.entries[p] = ("dir", 0o755, None)
        self.entries[path.strip("/")] = ("dir", mode, None)

    def _parent(self, path):
        parent = os.path.dirname(path.strip("/"))
        if parent and parent not in self.entries:
            self.dir(parent)

    def file(self, path, data, mode=0o644):
        self._parent(path)
        self.entries[path.strip("/")] = ("file", mode, data)

    def symlink(self, path, target):
        self._parent(path)
        self.entries[path.strip("/")] = ("symlink", 0o777, target)

    def tar(self):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
            for path in sorted(self.entries):
                kind, mode, payload = self.entries[path]
                info = tarfile.TarInfo(path)
                info.mtime = 0
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                info.mode = mode
                if kind == "dir":
                    info.type = tarfile.DIRTYPE
                    tf.addfile(info)
                elif kind == "symlink":
                    info.type = tarfile.SYMTYPE
                    info.linkname = payload
                    tf.addfile(info)
                else:
                    info.size = len(payload)
                    tf.addfile(info, io.BytesIO(payload))
        return buf.getvalue()


def gzip_n(data):
    """`gzip -n -9`: GNU gzip's output is stable across versions, unlike zlib builds."""
    return subprocess.run(["gzip", "-n", "-9", "-c"], input=data, stdout=subprocess.PIPE, check=True).stdout


class Layout:
    """One OCI image layout directory (one repository), holding any number of tags."""

    def __init__(self, root):
        self.root = root
        self.refs = []  # index.json entries
        os.makedirs(os.path.join(root, "blobs", "sha256"), exist_ok=True)

    def blob(self, data, media_type):
        digest = sha256(data)
        path = os.path.join(self.root, "blobs", "sha256", digest.split(":", 1)[1])
        if not os.path.exists(path):
            tmp = path + ".tmp"
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        return {"mediaType": media_type, "digest": digest, "size": len(data)}

    def tag(self, ref, descriptor):
        d = dict(descriptor)
        d["annotations"] = {REF_NAME: ref}
        self.refs.append(d)

    def finish(self):
        with open(os.path.join(self.root, "oci-layout"), "wb") as f:
            f.write(canonical_json({"imageLayoutVersion": "1.0.0"}))
        refs = sorted(self.refs, key=lambda d: d["annotations"][REF_NAME])
        with open(os.path.join(self.root, "index.json"), "wb") as f:
            f.write(canonical_json({"schemaVersion": 2, "mediaType": MT_INDEX, "manifests": refs}))


def base_tree(busybox, applets):
    """A busybox userland: the static binary, one symlink per applet, a minimal /etc."""
    t = Tree()
    for d in ["bin", "dev", "etc", "proc", "sbin", "sys", "usr/bin", "usr/sbin", "var"]:
        t.dir(d)
    t.dir("root", 0o700)
    t.dir("tmp", 0o1777)
    t.file("bin/busybox", busybox, 0o755)
    for applet in applets:
        if applet != "bin/busybox":
            t.symlink(applet, "/bin/busybox")
    t.file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n")
    t.file("etc/group", b"root:x:0:\nnogroup:x:65534:\n")
    t.file("etc/hosts", b"127.0.0.1\tlocalhost\n::1\tlocalhost\n")
    # Mount targets a runtime may bind over.
    t.file("etc/hostname", b"")
    t.file("etc/resolv.conf", b"")
    return t


ECHO_CGI = """#!/bin/sh
# Says which replica answered (the container's hostname, its MESSAGE env var) and to whom
# (the client's address as the pod saw it: Service tests check it is preserved).
echo "Content-Type: text/plain"
echo ""
echo "hostname=$(hostname)"
echo "remote=${REMOTE_ADDR}"
echo "message=${MESSAGE}"
echo "version=%(version)s"
"""

ECHO_HTML = """<!doctype html>
<html><head><title>baton http-echo</title></head>
<body><p>baton http-echo version %(version)s</p>
<p><a href="/cgi-bin/info">/cgi-bin/info</a> tells which replica answered.</p></body></html>
"""


def echo_tree(version):
    t = Tree()
    t.file("www/index.html", (ECHO_HTML % {"version": version}).encode())
    t.file("www/cgi-bin/info", (ECHO_CGI % {"version": version}).encode(), 0o755)
    return t


def app_base_tree():
    """The todo app images' shared base layer: no binaries, so it is byte-identical for
    every platform and both images (one blob, pulled once per node). Just what a static
    binary in a container expects to find: users, hosts files to bind over, /tmp."""
    t = Tree()
    for d in ["dev", "etc", "proc", "sys", "usr/local/bin"]:
        t.dir(d)
    t.dir("tmp", 0o1777)
    t.file("etc/passwd", b"root:x:0:0:root:/root:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n")
    t.file("etc/group", b"root:x:0:\nnogroup:x:65534:\n")
    t.file("etc/hosts", b"127.0.0.1\tlocalhost\n::1\tlocalhost\n")
    t.file("etc/hostname", b"")
    t.file("etc/resolv.conf", b"")
    return t


def app_tree(name, binary, extra_dirs=()):
    """One static binary at /usr/local/bin/NAME (the image's only arch-specific layer)."""
    t = Tree()
    t.file(f"usr/local/bin/{name}", binary, 0o755)
    for d in extra_dirs:
        t.dir(d)
    return t


def build_apps(out, apps_dirs, printed):
    """baton/todo-app:1 and :2 (same layers, only APP_VERSION differs) and baton/kv:1."""
    base = app_base_tree().tar()
    binary = {arch: {n: open(os.path.join(apps_dirs[arch], n), "rb").read() for n in ["todo-app", "kv"]} for arch, _ in PLATFORMS}
    todo_layer = {arch: app_tree("todo-app", binary[arch]["todo-app"]).tar() for arch, _ in PLATFORMS}
    kv_layer = {arch: app_tree("kv", binary[arch]["kv"], ["data"]).tar() for arch, _ in PLATFORMS}

    todo = Layout(os.path.join(out, "baton", "todo-app"))
    for version in ["1", "2"]:
        cfg = {
            # host-gateway: the pod's default gateway, i.e. its node, where the kv store
            # publishes its hostPort (Baton has no Services yet).
            "Env": [PATH_ENV, "APP_VERSION=" + version, "PORT=3000", "KV_PRIMARY=host-gateway:6379"],
            "Entrypoint": ["/usr/local/bin/todo-app"],
            "ExposedPorts": {"3000/tcp": {}},
            "WorkingDir": "/",
            "Labels": {"org.opencontainers.image.title": "todo-app", "org.opencontainers.image.version": version},
        }
        entries = [image(todo, a, v, [base, todo_layer[a]], cfg) for a, v in PLATFORMS]
        printed.append(("baton/todo-app:" + version, index(todo, version, entries)))
    todo.finish()

    kv = Layout(os.path.join(out, "baton", "kv"))
    cfg = {
        "Env": [PATH_ENV, "KV_PORT=6379"],
        "Entrypoint": ["/usr/local/bin/kv"],
        "ExposedPorts": {"6379/tcp": {}},
        "WorkingDir": "/data",
        "Labels": {"org.opencontainers.image.title": "kv", "org.opencontainers.image.version": "1"},
    }
    entries = [image(kv, a, v, [base, kv_layer[a]], cfg) for a, v in PLATFORMS]
    printed.append(("baton/kv:1", index(kv, "1", entries)))
    kv.finish()


def image(layout, arch, variant, layers, config):
    """Writes layers, config and manifest for one platform; returns the index entry."""
    layer_descs, diff_ids = [], []
    for tar_bytes in layers:
        diff_ids.append(sha256(tar_bytes))
        layer_descs.append(layout.blob(gzip_n(tar_bytes), MT_LAYER))
    cfg = {
        "architecture": arch,
        "os": "linux",
        "created": EPOCH,
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }
    if variant:
        cfg["variant"] = variant
    cfg_desc = layout.blob(canonical_json(cfg), MT_CONFIG)
    manifest = {"schemaVersion": 2, "mediaType": MT_MANIFEST, "config": cfg_desc, "layers": layer_descs}
    desc = layout.blob(canonical_json(manifest), MT_MANIFEST)
    platform = {"architecture": arch, "os": "linux"}
    if variant:
        platform["variant"] = variant
    desc["platform"] = platform
    return desc


def index(layout, ref, entries):
    desc = layout.blob(canonical_json({"schemaVersion": 2, "mediaType": MT_INDEX, "manifests": entries}), MT_INDEX)
    layout.tag(ref, desc)
    return desc


def cmd_build(args):
    busybox = {
        "amd64": open(args.busybox_amd64, "rb").read(),
        "arm64": open(args.busybox_arm64, "rb").read(),
        "arm": open(args.busybox_armhf, "rb").read(),
    }
    applets = sorted({line.strip() for line in open(args.applets) if line.strip()})
    base = {arch: base_tree(busybox[arch], applets).tar() for arch, _ in BUSYBOX_PLATFORMS}
    printed = []

    bb = Layout(os.path.join(args.out, "baton", "busybox"))
    bb_cfg = {"Env": [PATH_ENV], "Cmd": ["sh"], "WorkingDir": "/"}
    entries = [image(bb, a, v, [base[a]], bb_cfg) for a, v in BUSYBOX_PLATFORMS]
    printed.append(("baton/busybox:1", index(bb, "1", entries)))
    bb.finish()

    echo = Layout(os.path.join(args.out, "baton", "http-echo"))
    for version in ["1", "2"]:
        www = echo_tree(version).tar()
        cfg = {
            "Env": [PATH_ENV, "MESSAGE=hello from http-echo"],
            "Entrypoint": ["/usr/sbin/httpd", "-f"],
            "Cmd": ["-p", "8080", "-h", "/www"],
            "ExposedPorts": {"8080/tcp": {}},
            "WorkingDir": "/www",
        }
        entries = [image(echo, a, v, [base[a], www], cfg) for a, v in BUSYBOX_PLATFORMS]
        printed.append(("baton/http-echo:" + version, index(echo, version, entries)))
    echo.finish()

    if args.apps_amd64 or args.apps_arm64:
        if not (args.apps_amd64 and args.apps_arm64):
            raise SystemExit("build: --apps-amd64 and --apps-arm64 go together")
        build_apps(args.out, {"amd64": args.apps_amd64, "arm64": args.apps_arm64}, printed)

    for name, desc in printed:
        print(f"{name} {desc['digest']}")


class Registry:
    """The few Distribution API calls a push needs, over plain HTTP to a test registry."""

    def __init__(self, addr):
        self.base = f"http://{addr}"

    def _req(self, method, url, data=None, headers=None):
        if not url.startswith("http"):
            url = self.base + url
        req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                return resp.status, resp.headers, resp.read()
        except urllib.error.HTTPError as e:
            return e.code, e.headers, e.read()

    def has_blob(self, name, digest):
        status, _, _ = self._req("HEAD", f"/v2/{name}/blobs/{digest}")
        return status == 200

    def put_blob(self, name, digest, data):
        if self.has_blob(name, digest):
            return
        status, headers, body = self._req("POST", f"/v2/{name}/blobs/uploads/")
        if status != 202:
            raise SystemExit(f"push: start upload of {digest} to {name}: HTTP {status} {body[:200]!r}")
        location = urllib.parse.urljoin(self.base + "/", headers["Location"])
        sep = "&" if "?" in location else "?"
        url = f"{location}{sep}digest={urllib.parse.quote(digest)}"
        status, _, body = self._req(
            "PUT", url, data, {"Content-Type": "application/octet-stream", "Content-Length": str(len(data))}
        )
        if status != 201:
            raise SystemExit(f"push: upload {digest} to {name}: HTTP {status} {body[:200]!r}")

    def put_manifest(self, name, ref, media_type, data):
        status, _, body = self._req("PUT", f"/v2/{name}/manifests/{ref}", data, {"Content-Type": media_type})
        if status != 201:
            raise SystemExit(f"push: manifest {name}:{ref}: HTTP {status} {body[:200]!r}")


def read_blob(root, digest):
    with open(os.path.join(root, "blobs", "sha256", digest.split(":", 1)[1]), "rb") as f:
        data = f.read()
    if sha256(data) != digest:
        raise SystemExit(f"push: {root}: blob {digest} is corrupt")
    return data


def cmd_push(args):
    reg = Registry(args.registry)
    layouts = []
    for dirpath, _, files in os.walk(args.out):
        if "index.json" in files and "oci-layout" in files:
            layouts.append(dirpath)
    if not layouts:
        raise SystemExit(f"push: no OCI layouts under {args.out}; run build first")
    for root in sorted(layouts):
        name = os.path.relpath(root, args.out)
        top = json.loads(open(os.path.join(root, "index.json"), "rb").read())
        for ref in top["manifests"]:
            tag = ref["annotations"][REF_NAME]
            index_bytes = read_blob(root, ref["digest"])
            for m in json.loads(index_bytes)["manifests"]:
                manifest_bytes = read_blob(root, m["digest"])
                manifest = json.loads(manifest_bytes)
                for blob in [manifest["config"]] + manifest["layers"]:
                    reg.put_blob(name, blob["digest"], read_blob(root, blob["digest"]))
                # Children before the index: a registry may refuse an index whose manifests it lacks.
                reg.put_manifest(name, m["digest"], m["mediaType"], manifest_bytes)
            reg.put_manifest(name, tag, ref["mediaType"], index_bytes)
            print(f"{args.registry}/{name}:{tag} {ref['digest']}")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build")
    b.add_argument("--out", required=True)
    b.add_argument("--busybox-amd64", required=True)
    b.add_argument("--busybox-arm64", required=True)
    b.add_argument("--busybox-armhf", required=True, help="Debian's armhf (ARMv7) busybox-static")
    b.add_argument("--applets", required=True, help="output of `busybox --list-full`")
    b.add_argument("--apps-amd64", help="directory with the x86_64 musl todo-app and kv binaries")
    b.add_argument("--apps-arm64", help="directory with the aarch64 musl todo-app and kv binaries")
    b.set_defaults(func=cmd_build)
    q = sub.add_parser("push")
    q.add_argument("--out", required=True)
    q.add_argument("--registry", required=True, help="HOST:PORT of a plain-HTTP registry")
    q.set_defaults(func=cmd_push)
    args = p.parse_args()
    args.func(args)


if __name__ == "__main__":
    sys.exit(main())
