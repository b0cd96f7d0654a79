use std::collections::BTreeSet;
use std::fs;
use std::path::Path;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap};
use axum::Router;
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use super::archive::sha256_file;
use super::distribution::parse_range;
use super::oci::{plan_names, Descriptor};
use super::*;
use crate::store::{MemStore, Store};

fn digest(b: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(b)))
}

/// A two-platform image (one layer shared by both) as an OCI layout: blobs and index.json.
struct Fixture {
    blobs: Vec<(String, Vec<u8>)>,
    index: serde_json::Value,
    top: String,
    shared_layer: String,
    amd64_manifest: String,
}

fn fixture(tag_annotation: &str, seed: &str) -> Fixture {
    let mut blobs = Vec::new();
    let mut add = |b: Vec<u8>| {
        let d = digest(&b);
        blobs.push((d.clone(), b));
        d
    };
    let shared = b"shared layer bytes".to_vec();
    let shared_d = add(shared.clone());
    let mut manifests = Vec::new();
    let mut amd64 = String::new();
    for arch in ["amd64", "arm64"] {
        let own = format!("{seed} {arch} layer").into_bytes();
        let own_d = add(own.clone());
        let config = serde_json::to_vec(&json!({"architecture": arch, "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}})).unwrap();
        let config_d = add(config.clone());
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_d, "size": config.len()},
            "layers": [
                {"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": shared_d, "size": shared.len()},
                {"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": own_d, "size": own.len()},
            ]
        }))
        .unwrap();
        let md = add(manifest.clone());
        if arch == "amd64" {
            amd64 = md.clone();
        }
        manifests.push(json!({"mediaType": OCI_MANIFEST, "digest": md, "size": manifest.len(), "platform": {"os": "linux", "architecture": arch}}));
    }
    let index = serde_json::to_vec(
        &json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests}),
    )
    .unwrap();
    let top = add(index.clone());
    let top_index = json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        {"mediaType": OCI_INDEX, "digest": top, "size": index.len(), "annotations": {OCI_REF_NAME: tag_annotation}}
    ]});
    Fixture {
        blobs,
        index: top_index,
        top,
        shared_layer: shared_d,
        amd64_manifest: amd64,
    }
}

/// Tars a fixture; `edit` may change a blob's bytes (keeping its name) or drop it.
fn archive(f: &Fixture, edit: impl Fn(&str, Vec<u8>) -> Option<Vec<u8>>) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut add = |name: &str, data: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, name, data).unwrap();
    };
    add("./oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#);
    for (d, bytes) in &f.blobs {
        if let Some(bytes) = edit(d, bytes.clone()) {
            add(
                &format!("./blobs/sha256/{}", digest_hex(d).unwrap()),
                &bytes,
            );
        }
    }
    add("./index.json", &serde_json::to_vec(&f.index).unwrap());
    b.into_inner().unwrap()
}

fn open(dir: &Path) -> (Arc<dyn Store>, Registry) {
    let store: Arc<dyn Store> = Arc::new(MemStore::new());
    let reg = Registry::open(dir, store.clone()).unwrap();
    (store, reg)
}

fn blob_files(dir: &Path) -> BTreeSet<String> {
    fs::read_dir(dir.join("registry/blobs/sha256"))
        .unwrap()
        .map(|e| format!("sha256:{}", e.unwrap().file_name().to_string_lossy()))
        .collect()
}

fn nothing_left(dir: &Path, reg: &Registry) {
    assert!(reg.list().is_empty());
    assert!(blob_files(dir).is_empty(), "{:?}", blob_files(dir));
    assert_eq!(
        fs::read_dir(dir.join("registry/uploads")).unwrap().count(),
        0,
        "upload dir left behind"
    );
}

#[test]
fn names_are_normalized_like_docker() {
    let ok = |s: &str| normalize_name(s).unwrap();
    assert_eq!(
        ok("baton/http-echo:1"),
        ("baton/http-echo".into(), Some("1".into()))
    );
    assert_eq!(
        ok("10.0.0.1:5000/baton/http-echo:1"),
        ("baton/http-echo".into(), Some("1".into()))
    );
    assert_eq!(ok("busybox"), ("library/busybox".into(), None));
    assert_eq!(
        ok("docker.io/busybox:1.36"),
        ("library/busybox".into(), Some("1.36".into()))
    );
    assert_eq!(ok("registry.lan/app:v2"), ("app".into(), Some("v2".into())));
    assert_eq!(ok("localhost/a/b"), ("a/b".into(), None));
    for bad in ["Baton/x:1", "x:ba d", "x@sha256:abc", "a//b", "-a:1", "x:"] {
        assert!(normalize_name(bad).is_err(), "{bad}");
    }
}

#[test]
fn names_come_from_annotations_or_the_flag() {
    let d = |ann: &[(&str, &str)]| Descriptor {
        media_type: OCI_INDEX.into(),
        digest: digest(ann.first().map_or("x", |a| a.1).as_bytes()),
        size: 1,
        annotations: ann
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        platform: None,
    };
    let names = |v: Vec<(String, Descriptor)>| v.into_iter().map(|x| x.0).collect::<Vec<_>>();
    let two = [d(&[(OCI_REF_NAME, "1")]), d(&[(OCI_REF_NAME, "2")])];
    // Tags only: --name REPO names them all, --name REPO:TAG picks one.
    assert!(plan_names(&two, None)
        .unwrap_err()
        .to_string()
        .contains("--name"));
    assert_eq!(
        names(plan_names(&two, Some("baton/web")).unwrap()),
        ["baton/web:1", "baton/web:2"]
    );
    assert_eq!(
        names(plan_names(&two, Some("baton/web:2")).unwrap()),
        ["baton/web:2"]
    );
    let e = plan_names(&two, Some("baton/web:3"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("tags: 1, 2"), "{e}");
    // Full names: containerd's annotation first, registry hosts dropped.
    let full = [
        d(&[
            (CONTAINERD_NAME, "docker.io/library/busybox:1"),
            (OCI_REF_NAME, "1"),
        ]),
        d(&[(OCI_REF_NAME, "10.1.1.1:5000/a/b:c")]),
    ];
    assert_eq!(
        names(plan_names(&full, None).unwrap()),
        ["library/busybox:1", "a/b:c"]
    );
    // One unnamed image takes the flag's name, or latest.
    assert_eq!(
        names(plan_names(&[d(&[])], Some("a/x:y")).unwrap()),
        ["a/x:y"]
    );
    assert_eq!(
        names(plan_names(&[d(&[])], Some("x")).unwrap()),
        ["library/x:latest"]
    );
    assert!(plan_names(&[], Some("x")).is_err());
}

#[test]
fn import_stores_verified_blobs_and_lists_the_image() {
    let dir = tempfile::tempdir().unwrap();
    let (store, reg) = open(dir.path());
    let f = fixture("1", "a");
    let out = reg
        .import_reader(&archive(&f, |_, b| Some(b))[..], Some("baton/http-echo"))
        .unwrap();
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].name, "baton/http-echo:1");
    assert_eq!(out[0].digest, f.top);
    assert_eq!(out[0].platforms, ["linux/amd64", "linux/arm64"]);
    let total: u64 = f.blobs.iter().map(|(_, b)| b.len() as u64).sum();
    assert_eq!(out[0].size, total);
    let want: BTreeSet<String> = f.blobs.iter().map(|(d, _)| d.clone()).collect();
    assert_eq!(blob_files(dir.path()), want);
    for d in &want {
        let p = reg.blob_path(d).unwrap();
        assert_eq!(&sha256_file(&p).unwrap(), d);
    }
    assert_eq!(reg.list(), out);
    // The index survives a restart, which keeps every needed blob and drops strays.
    let stray = dir
        .path()
        .join("registry/blobs/sha256")
        .join("0".repeat(64));
    fs::write(&stray, b"orphan of a crashed import").unwrap();
    drop(reg);
    let again = Registry::open(dir.path(), store).unwrap();
    assert_eq!(again.list(), out);
    assert_eq!(blob_files(dir.path()), want);
}

#[test]
fn corrupt_truncated_or_incomplete_archives_store_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (_store, reg) = open(dir.path());
    let f = fixture("1", "a");
    let layer = f.shared_layer.clone();

    let corrupt = archive(&f, |d, mut b| {
        if d == layer {
            b[0] ^= 1;
        }
        Some(b)
    });
    let e = reg.import_reader(&corrupt[..], Some("x")).unwrap_err();
    assert!(
        matches!(e, RegistryError::CorruptBlob { ref digest, .. } if *digest == layer),
        "{e}"
    );
    assert!(e.to_string().contains("corrupt"), "{e}");
    nothing_left(dir.path(), &reg);

    let whole = archive(&f, |_, b| Some(b));
    for cut in [whole.len() / 3, whole.len() / 2, 700, 1024 + 10] {
        let e = reg.import_reader(&whole[..cut], Some("x")).unwrap_err();
        assert!(
            matches!(
                e,
                RegistryError::Truncated(_) | RegistryError::NoIndex | RegistryError::Archive(_)
            ),
            "cut at {cut}: {e}"
        );
        nothing_left(dir.path(), &reg);
    }

    let missing = archive(&f, |d, b| (d != layer).then_some(b));
    let e = reg.import_reader(&missing[..], Some("x")).unwrap_err();
    assert!(
        matches!(e, RegistryError::MissingBlob(ref d) if *d == layer),
        "{e}"
    );
    nothing_left(dir.path(), &reg);

    let e = reg
        .import_reader(&b"not a tar at all, just some bytes"[..], Some("x"))
        .unwrap_err();
    assert!(
        e.to_string().contains("archive") || e.to_string().contains("index.json"),
        "{e}"
    );
    nothing_left(dir.path(), &reg);
}

#[test]
fn delete_removes_only_blobs_no_other_image_needs() {
    let dir = tempfile::tempdir().unwrap();
    let (_store, reg) = open(dir.path());
    let (a, b) = (fixture("1", "a"), fixture("2", "b"));
    reg.import_reader(&archive(&a, |_, x| Some(x))[..], Some("app"))
        .unwrap();
    reg.import_reader(&archive(&b, |_, x| Some(x))[..], Some("app"))
        .unwrap();
    assert_eq!(
        reg.list()
            .iter()
            .map(|s| s.name.as_str())
            .collect::<Vec<_>>(),
        ["library/app:1", "library/app:2"]
    );
    reg.delete("app:1").unwrap();
    let left = blob_files(dir.path());
    assert!(left.contains(&a.shared_layer), "shared layer removed");
    let b_all: BTreeSet<String> = b.blobs.iter().map(|(d, _)| d.clone()).collect();
    assert_eq!(left, b_all, "a's own blobs must go, b's stay");
    assert!(matches!(
        reg.delete("app:1"),
        Err(RegistryError::NotFound(_))
    ));
    reg.delete("docker.io/library/app:2").unwrap();
    nothing_left(dir.path(), &reg);
}

#[tokio::test]
async fn an_interrupted_upload_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (_store, reg) = open(dir.path());
    let reg = Arc::new(reg);
    let bytes = archive(&fixture("1", "a"), |_, b| Some(b));
    let half = Bytes::from(bytes[..bytes.len() / 2].to_vec());
    let body = futures::stream::iter(vec![Ok(half), Err("connection reset")]);
    let e = reg
        .clone()
        .import_stream(body, Some("x".into()))
        .await
        .unwrap_err();
    assert!(matches!(e, RegistryError::Upload(_)), "{e}");
    nothing_left(dir.path(), &reg);

    let small = Arc::new(
        Registry::open(dir.path(), Arc::new(MemStore::new()))
            .unwrap()
            .with_max_import_bytes(100),
    );
    let body = futures::stream::iter(vec![Ok::<_, &str>(Bytes::from(bytes.clone()))]);
    let e = small
        .clone()
        .import_stream(body, Some("x".into()))
        .await
        .unwrap_err();
    assert!(matches!(e, RegistryError::TooLarge { limit: 100 }), "{e}");
    nothing_left(dir.path(), &small);

    let body = futures::stream::iter(
        bytes
            .chunks(999)
            .map(|c| Ok::<_, &str>(Bytes::from(c.to_vec())))
            .collect::<Vec<_>>(),
    );
    let out = reg
        .clone()
        .import_stream(body, Some("x".into()))
        .await
        .unwrap();
    assert_eq!(out[0].name, "library/x:1");
}

#[test]
fn ranges() {
    assert_eq!(parse_range("bytes=0-", 10), Ok((0, 9)));
    assert_eq!(parse_range("bytes=4-6", 10), Ok((4, 6)));
    assert_eq!(parse_range("bytes=4-60", 10), Ok((4, 9)));
    assert_eq!(parse_range("bytes=-3", 10), Ok((7, 9)));
    for bad in [
        "bytes=10-",
        "bytes=5-4",
        "items=0-1",
        "bytes=0-1,3-4",
        "bytes=-0",
        "bytes=x-",
    ] {
        assert_eq!(parse_range(bad, 10), Err(()), "{bad}");
    }
}

mod http {
    use super::*;
    use axum::http::Request;
    use tower::ServiceExt;

    async fn call(
        app: &Router,
        method: &str,
        uri: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> (u16, HeaderMap, Vec<u8>) {
        let mut req = Request::builder().method(method).uri(uri);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = app
            .clone()
            .oneshot(req.body(Body::from(body)).unwrap())
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 24)
            .await
            .unwrap();
        (status, headers, bytes.to_vec())
    }

    fn imported(dir: &Path) -> (Arc<Registry>, Fixture) {
        let (_s, reg) = open(dir);
        let f = fixture("1", "a");
        reg.import_reader(&archive(&f, |_, b| Some(b))[..], Some("baton/http-echo"))
            .unwrap();
        (Arc::new(reg), f)
    }

    #[tokio::test]
    async fn distribution_routes_serve_what_was_imported() {
        let dir = tempfile::tempdir().unwrap();
        let (reg, f) = imported(dir.path());
        let app: Router = routes(reg.clone());
        let (s, h, _) = call(&app, "GET", "/v2/", &[], vec![]).await;
        assert_eq!(
            (s, h["docker-distribution-api-version"].to_str().unwrap()),
            (200, "registry/2.0")
        );

        let (s, h, body) = call(&app, "GET", "/v2/baton/http-echo/manifests/1", &[], vec![]).await;
        assert_eq!(s, 200);
        assert_eq!(h[header::CONTENT_TYPE], OCI_INDEX);
        assert_eq!(h["docker-content-digest"].to_str().unwrap(), f.top);
        assert_eq!(digest(&body), f.top);
        let (s, h, body) = call(&app, "HEAD", "/v2/baton/http-echo/manifests/1", &[], vec![]).await;
        assert_eq!((s, body.len()), (200, 0));
        assert_eq!(
            h[header::CONTENT_LENGTH].to_str().unwrap(),
            f.blobs
                .iter()
                .find(|b| b.0 == f.top)
                .unwrap()
                .1
                .len()
                .to_string()
        );

        let by_digest = format!("/v2/baton/http-echo/manifests/{}", f.amd64_manifest);
        let (s, h, body) = call(&app, "GET", &by_digest, &[], vec![]).await;
        assert_eq!(
            (s, h[header::CONTENT_TYPE].to_str().unwrap()),
            (200, OCI_MANIFEST)
        );
        assert_eq!(digest(&body), f.amd64_manifest);

        let layer = f
            .blobs
            .iter()
            .find(|b| b.0 == f.shared_layer)
            .unwrap()
            .1
            .clone();
        let blob = format!("/v2/baton/http-echo/blobs/{}", f.shared_layer);
        let (s, _, body) = call(&app, "GET", &blob, &[], vec![]).await;
        assert_eq!((s, body), (200, layer.clone()));
        let (s, h, body) = call(&app, "GET", &blob, &[("range", "bytes=7-")], vec![]).await;
        assert_eq!((s, body.as_slice()), (206, &layer[7..]));
        assert_eq!(
            h[header::CONTENT_RANGE].to_str().unwrap(),
            format!("bytes 7-{}/{}", layer.len() - 1, layer.len())
        );
        let (s, _, _) = call(&app, "GET", &blob, &[("range", "bytes=999-")], vec![]).await;
        assert_eq!(s, 416);

        let (s, _, body) = call(&app, "GET", "/v2/baton/http-echo/tags/list", &[], vec![]).await;
        assert_eq!(s, 200);
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v, json!({"name": "baton/http-echo", "tags": ["1"]}));

        for (uri, code) in [
            ("/v2/baton/http-echo/manifests/2", "MANIFEST_UNKNOWN"),
            ("/v2/other/manifests/1", "MANIFEST_UNKNOWN"),
            (
                &format!("/v2/other/blobs/{}", f.shared_layer)[..],
                "BLOB_UNKNOWN",
            ),
            ("/v2/other/tags/list", "NAME_UNKNOWN"),
        ] {
            let (s, _, body) = call(&app, "GET", uri, &[], vec![]).await;
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(
                (s, v["errors"][0]["code"].as_str().unwrap()),
                (404, code),
                "{uri}"
            );
        }
        let (s, _, _) = call(&app, "PUT", "/v2/baton/http-echo/manifests/1", &[], vec![]).await;
        assert_eq!(s, 405, "the registry is read-only");

        // A blob that rots on disk is refused, not served.
        let p = reg.blob_path(&f.shared_layer).unwrap();
        let mut rotten = layer.clone();
        rotten[0] ^= 1;
        fs::write(&p, &rotten).unwrap();
        let (s, _, body) = call(&app, "GET", &blob, &[], vec![]).await;
        assert_eq!(s, 500, "{}", String::from_utf8_lossy(&body));
        let top = reg.blob_path(&f.top).unwrap();
        fs::write(&top, b"{}").unwrap();
        let (s, _, _) = call(&app, "GET", "/v2/baton/http-echo/manifests/1", &[], vec![]).await;
        assert_eq!(s, 500);
    }

    /// Through the API router and its token middleware: read-only tokens pull, only admins
    /// import and delete.
    #[tokio::test]
    async fn roles_on_image_routes() {
        use crate::security::auth::{Role, Tokens};
        let dir = tempfile::tempdir().unwrap();
        let (reg, f) = imported(dir.path());
        let store: Arc<dyn Store> = Arc::new(MemStore::new());
        let tokens = Arc::new(Tokens::load(store).unwrap());
        let admin = format!("Bearer {}", tokens.create("admin", Role::Admin).unwrap());
        let ro = format!(
            "Bearer {}",
            tokens.create("viewer", Role::ReadOnly).unwrap()
        );
        let (tx, _rx) = mpsc::channel(1);
        let app = crate::edge::http::router_with_images(
            tx,
            Arc::new(crate::edge::bus::BusStats::default()),
            tokens,
            Some(reg.clone()),
        );
        let m = "/v2/baton/http-echo/manifests/1";
        let (s, h, _) = call(&app, "GET", m, &[], vec![]).await;
        assert_eq!(s, 401);
        assert!(h.contains_key(header::WWW_AUTHENTICATE));
        assert_eq!(
            call(&app, "GET", m, &[("authorization", &ro)], vec![])
                .await
                .0,
            200
        );
        assert_eq!(
            call(
                &app,
                "GET",
                "/api/v1/images",
                &[("authorization", &ro)],
                vec![]
            )
            .await
            .0,
            200
        );
        let tar = archive(&fixture("2", "b"), |_, b| Some(b));
        let (s, _, _) = call(
            &app,
            "POST",
            "/api/v1/images/import?name=baton/http-echo",
            &[("authorization", &ro)],
            tar.clone(),
        )
        .await;
        assert_eq!(s, 403);
        assert_eq!(
            call(
                &app,
                "DELETE",
                "/api/v1/images/baton/http-echo:1",
                &[("authorization", &ro)],
                vec![]
            )
            .await
            .0,
            403
        );
        let (s, _, body) = call(
            &app,
            "POST",
            "/api/v1/images/import?name=baton/http-echo",
            &[("authorization", &admin)],
            tar,
        )
        .await;
        assert_eq!(s, 200, "{}", String::from_utf8_lossy(&body));
        let (s, _, body) = call(
            &app,
            "POST",
            "/api/v1/images/import",
            &[("authorization", &admin)],
            b"garbage".to_vec(),
        )
        .await;
        assert_eq!(s, 400, "{}", String::from_utf8_lossy(&body));
        let (s, _, body) = call(
            &app,
            "GET",
            "/api/v1/images",
            &[("authorization", &ro)],
            vec![],
        )
        .await;
        assert_eq!(s, 200);
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let names: Vec<&str> = v["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["baton/http-echo:1", "baton/http-echo:2"]);
        let (s, _, _) = call(
            &app,
            "DELETE",
            "/api/v1/images/baton/http-echo:1",
            &[("authorization", &admin)],
            vec![],
        )
        .await;
        assert_eq!(s, 200);
        assert_eq!(
            call(&app, "GET", m, &[("authorization", &ro)], vec![])
                .await
                .0,
            404
        );
        assert!(!blob_files(dir.path()).contains(&f.top));
        // The rest of the API is still there.
        assert_eq!(call(&app, "GET", "/healthz", &[], vec![]).await.0, 200);
    }
}
