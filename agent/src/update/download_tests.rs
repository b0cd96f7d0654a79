//! The download against a small HTTP server that answers ranges like the coordinator.

use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;

/// Serves `body` at any path; honours `Range: bytes=N-` unless `ignore_range`. Returns the
/// base URL and the requests' header blocks, lowercased but for the header values of
/// `baton-signature` (base64 is case-sensitive).
pub(crate) async fn server(body: Vec<u8>, ignore_range: bool) -> (String, Arc<Mutex<Vec<String>>>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut c, _)) = l.accept().await else {
                return;
            };
            let mut buf = vec![0; 8192];
            let n = c.read(&mut buf).await.unwrap_or(0);
            let raw = String::from_utf8_lossy(&buf[..n]).into_owned();
            let req: String = raw
                .split_inclusive('\n')
                .map(|l| match l.split_once(": ") {
                    Some((k, v)) if k.eq_ignore_ascii_case("baton-signature") => {
                        format!("baton-signature: {v}")
                    }
                    _ => l.to_lowercase(),
                })
                .collect();
            log.lock().unwrap().push(req.clone());
            let from = req
                .lines()
                .find_map(|l| l.strip_prefix("range: bytes="))
                .and_then(|r| r.trim().trim_end_matches('-').parse::<usize>().ok())
                .filter(|_| !ignore_range);
            let head = match from {
                Some(f) => format!(
                    "HTTP/1.1 206 Partial Content\r\ncontent-length: {}\r\ncontent-range: bytes {f}-{}/{}\r\nconnection: close\r\n\r\n",
                    body.len() - f,
                    body.len() - 1,
                    body.len()
                ),
                None => format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                ),
            };
            let _ = c.write_all(head.as_bytes()).await;
            let _ = c.write_all(&body[from.unwrap_or(0)..]).await;
        }
    });
    (url, seen)
}

fn body() -> (Vec<u8>, [u8; 32]) {
    let b: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let sha = Sha256::digest(&b).into();
    (b, sha)
}

fn source(url: String, dir: &std::path::Path) -> Source {
    let token = dir.join("token");
    std::fs::write(&token, "read-only-token\n").unwrap();
    Source {
        api: url,
        token_file: Some(token),
        ca: None,
        identity: None,
    }
}

/// An enrolled node signs its download (the node, the path, the time) with its device key,
/// so the enroll listener serves a node that holds no API token; the key is read from the
/// identity file at each download.
#[tokio::test]
async fn an_enrolled_node_signs_its_download() {
    use base64::Engine as _;
    use baton_proto::enroll::download_signing_bytes;
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let dir = tempfile::tempdir().unwrap();
    let (b, sha) = body();
    let (url, seen) = server(b.clone(), false).await;
    let device = baton_proto::sign::SigningKey::from_bytes(&[5; 32]);
    let coordinator = baton_proto::sign::SigningKey::from_bytes(&[6; 32]);
    let id = crate::identity::IdentityFile {
        version: 1,
        node_name: "pi-7".into(),
        private_key: b64(&[5; 32]),
        certificate: String::new(),
        coordinator_public_key: b64(coordinator.verifying_key().as_bytes()),
        ca_certificate: String::new(),
        labels: Default::default(),
        not_after: 0,
        coordinator_api: None,
    };
    let id_path = dir.path().join("identity.json");
    std::fs::write(&id_path, serde_json::to_vec(&id).unwrap()).unwrap();
    let src = Source {
        api: url,
        token_file: None,
        ca: None,
        identity: Some(id_path),
    };
    let part = dir.path().join("x.part");
    fetch(&src, &sha, b.len() as u64, &part, |_| {})
        .await
        .unwrap();
    let reqs = seen.lock().unwrap().clone();
    let req = &reqs[0];
    assert!(!req.contains("authorization"), "{req}");
    let header = |name: &str| {
        req.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")))
            .map(str::trim)
            .unwrap_or_else(|| panic!("no {name} in {req}"))
            .to_owned()
    };
    assert_eq!(header("baton-node"), "pi-7");
    let ts: u64 = header("baton-timestamp-ms").parse().unwrap();
    let sig = base64::engine::general_purpose::STANDARD
        .decode(header("baton-signature"))
        .unwrap();
    let sig = ed25519_dalek::Signature::from_bytes(&sig.try_into().unwrap());
    let path = baton_proto::release::download_path(&sha);
    let signed = download_signing_bytes("pi-7", &path, ts);
    device.verifying_key().verify_strict(&signed, &sig).unwrap();
}

#[tokio::test]
async fn a_half_written_part_is_resumed_with_a_range_and_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let (b, sha) = body();
    let (url, seen) = server(b.clone(), false).await;
    let part = dir.path().join("downloads").join("x.part");
    std::fs::create_dir_all(part.parent().unwrap()).unwrap();
    std::fs::write(&part, &b[..123_456]).unwrap();
    let mut progress = Vec::new();
    let got = fetch(&source(url, dir.path()), &sha, b.len() as u64, &part, |n| {
        progress.push(n)
    })
    .await
    .unwrap();
    assert_eq!(
        got,
        Downloaded {
            size: b.len() as u64,
            sha256: sha
        }
    );
    assert_eq!(std::fs::read(&part).unwrap(), b);
    let reqs = seen.lock().unwrap().clone();
    assert_eq!(reqs.len(), 1);
    let path = baton_proto::release::download_path(&sha);
    assert!(reqs[0].starts_with(&format!("get {path} ")), "{}", reqs[0]);
    assert!(reqs[0].contains("range: bytes=123456-"), "{}", reqs[0]);
    assert!(
        reqs[0].contains("authorization: bearer read-only-token"),
        "{}",
        reqs[0]
    );
    assert_eq!(progress.first(), Some(&123_456));
    assert_eq!(progress.last(), Some(&(b.len() as u64)));
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&part).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode & 0o111, 0, "a download is never executable");
}

#[tokio::test]
async fn a_server_that_ignores_the_range_makes_it_start_over() {
    let dir = tempfile::tempdir().unwrap();
    let (b, sha) = body();
    let (url, _) = server(b.clone(), true).await;
    let part = dir.path().join("x.part");
    // A part whose bytes are not the release's start: starting over still ends right.
    std::fs::write(&part, vec![0u8; 1000]).unwrap();
    let got = fetch(
        &source(url, dir.path()),
        &sha,
        b.len() as u64,
        &part,
        |_| {},
    )
    .await
    .unwrap();
    assert_eq!(got.sha256, sha);
    assert_eq!(std::fs::read(&part).unwrap(), b);
}

#[tokio::test]
async fn a_whole_part_needs_no_request_and_a_wrong_one_shows_in_the_digest() {
    let dir = tempfile::tempdir().unwrap();
    let (b, sha) = body();
    let part = dir.path().join("x.part");
    std::fs::write(&part, &b).unwrap();
    let src = source("http://127.0.0.1:9".into(), dir.path());
    let got = fetch(&src, &sha, b.len() as u64, &part, |_| {})
        .await
        .unwrap();
    assert_eq!(got.sha256, sha);
    let mut bad = b.clone();
    bad[10] ^= 1;
    std::fs::write(&part, &bad).unwrap();
    let got = fetch(&src, &sha, b.len() as u64, &part, |_| {})
        .await
        .unwrap();
    assert_ne!(got.sha256, sha, "the caller's check_content refuses it");
}
