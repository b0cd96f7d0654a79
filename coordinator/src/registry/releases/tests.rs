use std::io::{self, Read};
use std::path::Path;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use base64::Engine as _;
use baton_proto::sign::SigningKey;
use tower::ServiceExt;

use super::*;
use crate::store::MemStore;

const VERSION: &str = "0.2.1";
const TARGET: &str = "x86_64-unknown-linux-gnu";

fn key() -> SigningKey {
    SigningKey::from_bytes(&[3; 32])
}

/// `bytes` signed by `key` as VERSION for TARGET, as `baton release sign` writes it.
fn signed(bytes: &[u8], key: &SigningKey) -> SignedRelease {
    signed_as(bytes, key, VERSION, TARGET)
}

fn signed_as(bytes: &[u8], key: &SigningKey, version: &str, target: &str) -> SignedRelease {
    let sha: [u8; 32] = Sha256::digest(bytes).into();
    let mut r = baton_proto::Release {
        version: baton_proto::BString::new(version).unwrap(),
        target: baton_proto::BString::new(target).unwrap(),
        protocol: 5,
        size: bytes.len() as u64,
        sha256: sha,
        signature: baton_proto::BVec::new(),
    };
    release::sign(&mut r, key).unwrap();
    SignedRelease {
        version: version.into(),
        target: target.into(),
        protocol: 5,
        size: r.size,
        sha256: hex::encode(sha),
        signature: base64::engine::general_purpose::STANDARD.encode(&r.signature[..]),
    }
}

struct Rig {
    dir: tempfile::TempDir,
    store: Arc<dyn Store>,
    rel: Arc<Releases>,
}

fn rig() -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(MemStore::default());
    let rel = Releases::open(dir.path(), store.clone()).unwrap();
    rel.set_key(Some(key().verifying_key()));
    Rig {
        dir,
        store,
        rel: Arc::new(rel),
    }
}

fn files(dir: &Path) -> Vec<String> {
    let mut v = Vec::new();
    for sub in ["releases/sha256", "releases/uploads"] {
        for e in fs::read_dir(dir.join(sub)).unwrap().flatten() {
            v.push(format!("{sub}/{}", e.file_name().to_string_lossy()));
        }
    }
    v
}

/// Nothing was kept: no row, no file, no upload left over.
fn nothing_kept(r: &Rig) {
    assert!(r.rel.list().is_empty());
    assert!(r.store.list(Table::Releases).unwrap().is_empty());
    assert_eq!(files(r.dir.path()), Vec::<String>::new());
}

fn binary() -> Vec<u8> {
    (0..100_000u32).map(|i| (i % 251) as u8).collect()
}

#[test]
fn refusals_name_the_reason_and_keep_nothing() {
    let r = rig();
    let bin = binary();

    let mut unsigned = signed(&bin, &key());
    unsigned.signature.clear();
    let err = r.rel.import_reader(&unsigned, &bin[..]).unwrap_err();
    assert!(err.to_string().contains("not signed"), "{err}");
    nothing_kept(&r);

    let other = SigningKey::from_bytes(&[9; 32]);
    let err = r
        .rel
        .import_reader(&signed(&bin, &other), &bin[..])
        .unwrap_err();
    assert!(
        matches!(
            err,
            ReleaseStoreError::Refused {
                source: ReleaseError::BadSignature,
                ..
            }
        ),
        "{err}"
    );
    nothing_kept(&r);

    // Signed metadata, other bytes of the same size: the digest differs.
    let mut tampered = bin.clone();
    tampered[5000] ^= 0xff;
    let err = r
        .rel
        .import_reader(&signed(&bin, &key()), &tampered[..])
        .unwrap_err();
    assert!(err.to_string().contains("sha256"), "{err}");
    nothing_kept(&r);

    // Shorter and longer than signed.
    let err = r
        .rel
        .import_reader(&signed(&bin, &key()), &bin[..999])
        .unwrap_err();
    assert!(err.to_string().contains("999 bytes"), "{err}");
    nothing_kept(&r);
    let mut longer = bin.clone();
    longer.push(0);
    let err = r
        .rel
        .import_reader(&signed(&bin, &key()), &longer[..])
        .unwrap_err();
    assert!(
        matches!(
            err,
            ReleaseStoreError::Refused {
                source: ReleaseError::Size { .. },
                ..
            }
        ),
        "{err}"
    );
    nothing_kept(&r);

    // Metadata that does not parse.
    let mut bad = signed(&bin, &key());
    bad.version = "latest".into();
    let err = r.rel.import_reader(&bad, &bin[..]).unwrap_err();
    assert!(err.to_string().contains("semantic version"), "{err}");
    nothing_kept(&r);

    // No key configured: refused, whatever the signature.
    r.rel.set_key(None);
    let err = r
        .rel
        .import_reader(&signed(&bin, &key()), &bin[..])
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "no release key configured (baton server --release-public-key-file): releases cannot be imported"
    );
    nothing_kept(&r);
}

/// A body that breaks off halfway, as a client that goes away does.
struct Broken<'a>(&'a [u8]);

impl Read for Broken<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.0.is_empty() {
            return Err(io::Error::other("connection reset"));
        }
        let n = buf.len().min(self.0.len()).min(4096);
        buf[..n].copy_from_slice(&self.0[..n]);
        self.0 = &self.0[n..];
        Ok(n)
    }
}

#[test]
fn a_partial_upload_leaves_nothing_behind() {
    let r = rig();
    let bin = binary();
    let err = r
        .rel
        .import_reader(&signed(&bin, &key()), Broken(&bin[..40_000]))
        .unwrap_err();
    assert!(err.to_string().contains("interrupted"), "{err}");
    nothing_kept(&r);
    // A leftover from a killed process is swept at the next start.
    fs::write(
        r.dir.path().join("releases/sha256").join("ab".repeat(32)),
        b"x",
    )
    .unwrap();
    fs::create_dir_all(r.dir.path().join("releases/uploads/1-1")).unwrap();
    let again = Releases::open(r.dir.path(), r.store.clone()).unwrap();
    assert!(again.list().is_empty());
    nothing_kept(&r);
}

#[test]
fn import_is_idempotent_and_survives_a_restart() {
    let r = rig();
    let bin = binary();
    let meta = signed(&bin, &key());
    let first = r.rel.import_reader(&meta, &bin[..]).unwrap();
    assert_eq!(
        (first.version.as_str(), first.target.as_str(), first.size),
        (VERSION, TARGET, bin.len() as u64)
    );
    assert_eq!(first.digest, format!("sha256:{}", meta.sha256));
    // Again: the same answer, one row, one file.
    let second = r.rel.import_reader(&meta, &bin[..]).unwrap();
    assert_eq!(second, first);
    // The bytes sent again are still checked: a damaged copy is told so, and changes
    // nothing.
    let mut damaged = bin.clone();
    damaged[7] ^= 1;
    let err = r.rel.import_reader(&meta, &damaged[..]).unwrap_err();
    assert!(err.to_string().contains("sha256"), "{err}");
    assert_eq!(r.rel.list(), vec![first.clone()]);
    assert_eq!(
        files(r.dir.path()),
        vec![format!("releases/sha256/{}", meta.sha256)]
    );
    assert_eq!(
        fs::read(r.dir.path().join("releases/sha256").join(&meta.sha256)).unwrap(),
        bin
    );

    // Another binary signed as the same version and target is a conflict, not a swap.
    let other = b"another build".to_vec();
    let err = r
        .rel
        .import_reader(&signed(&other, &key()), &other[..])
        .unwrap_err();
    assert!(matches!(err, ReleaseStoreError::Conflict { .. }), "{err}");
    assert_eq!(err.status(), StatusCode::CONFLICT);

    let reopened = Releases::open(r.dir.path(), r.store.clone()).unwrap();
    assert_eq!(reopened.list(), vec![first.clone()]);
    let rec = reopened.get(&first.digest).unwrap();
    // The stored row is still the release the key signed.
    release::verify(&rec.to_wire().unwrap(), &key().verifying_key()).unwrap();
}

#[test]
fn delete_removes_row_and_file_unless_a_rollout_names_it() {
    let r = rig();
    let bin = binary();
    let s = r
        .rel
        .import_reader(&signed(&bin, &key()), &bin[..])
        .unwrap();
    // What the core shares: rollout "fleet" installs this version, "old" another one.
    let in_use = r.rel.rollout_versions();
    in_use.set(
        [
            (VERSION.to_owned(), "fleet".to_owned()),
            ("0.1.9".into(), "old".into()),
        ]
        .into_iter()
        .collect(),
    );
    let err = r.rel.delete(&s.digest).unwrap_err();
    assert!(err.to_string().contains("rollout \"fleet\""), "{err}");
    assert_eq!(r.rel.list().len(), 1);
    in_use.set(
        [("0.1.9".to_owned(), "old".to_owned())]
            .into_iter()
            .collect(),
    );
    assert_eq!(r.rel.delete(&s.digest).unwrap(), s);
    nothing_kept(&r);
    assert!(matches!(
        r.rel.delete(&s.digest),
        Err(ReleaseStoreError::NotFound(_))
    ));
}

async fn get(
    app: &axum::Router,
    path: &str,
    range: Option<&str>,
) -> (StatusCode, Option<String>, Vec<u8>) {
    let mut req = Request::get(path);
    if let Some(r) = range {
        req = req.header(header::RANGE, r);
    }
    let resp = app
        .clone()
        .oneshot(req.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let cr = resp
        .headers()
        .get(header::CONTENT_RANGE)
        .map(|v| v.to_str().unwrap().to_owned());
    let body = axum::body::to_bytes(resp.into_body(), 1 << 24)
        .await
        .unwrap();
    (status, cr, body.to_vec())
}

#[tokio::test]
async fn downloads_resume_from_a_range() {
    let r = rig();
    let bin = binary();
    let s = r
        .rel
        .import_reader(&signed(&bin, &key()), &bin[..])
        .unwrap();
    let app: axum::Router =
        super::super::releases_api::routes().layer(axum::Extension(r.rel.clone()));
    let sha: [u8; 32] = Sha256::digest(&bin).into();
    let path = release::download_path(&sha);
    assert_eq!(path, format!("/api/v1/releases/{}/binary", s.digest));

    let (status, cr, body) = get(&app, &path, None).await;
    assert_eq!((status, cr), (StatusCode::OK, None));
    assert_eq!(body, bin);

    // A download cut at 60_000 bytes resumes from there.
    let (status, cr, rest) = get(&app, &path, Some("bytes=60000-")).await;
    assert_eq!(status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(cr.as_deref(), Some("bytes 60000-99999/100000"));
    let mut joined = bin[..60_000].to_vec();
    joined.extend_from_slice(&rest);
    assert_eq!(joined, bin);

    let (status, cr, _) = get(&app, &path, Some("bytes=100000-")).await;
    assert_eq!(status, StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(cr.as_deref(), Some("bytes */100000"));

    let unknown = release::download_path(&[1; 32]);
    assert_eq!(get(&app, &unknown, None).await.0, StatusCode::NOT_FOUND);

    // A flipped bit on the coordinator's disk is refused, not served.
    let file = r.dir.path().join("releases/sha256").join(hex::encode(sha));
    let mut bytes = fs::read(&file).unwrap();
    bytes[0] ^= 1;
    fs::write(&file, bytes).unwrap();
    let (status, _, body) = get(&app, &path, None).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(String::from_utf8_lossy(&body).contains("does not match"));
}
