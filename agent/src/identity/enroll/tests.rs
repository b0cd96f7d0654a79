//! The device key across failed attempts, against a scripted coordinator on loopback
//! (plain http is allowed there): persisted before the first enrollment request, the same in
//! every retry, never removed by a failure.

use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;
use crate::identity::{IDENTITY_FILE, PENDING_KEY_FILE};

/// A self-signed Ed25519 certificate (`openssl req -x509 -newkey ed25519`), and the SHA-256
/// of its DER, which the join token pins.
const CA_PEM: &str = "-----BEGIN CERTIFICATE-----
MIIBOjCB7aADAgECAhRWuuyjpq7+0ht2hfDQNw7Dv6gNwzAFBgMrZXAwEjEQMA4G
A1UEAwwHdGVzdC1jYTAgFw0yNjEyMDYwMDA5MjVaGA8yMTI2MTExMjAwMDkyNVow
EjEQMA4GA1UEAwwHdGVzdC1jYTAqMAUGAytlcAMhAKtJ8WntfhhsZ9Fi2O7MKw5S
ZN26gRuvq8wNSFO9ALjyo1MwUTAdBgNVHQ4EFgQUc0WataMXIaTOSzMPBF87GJng
wE8wHwYDVR0jBBgwFoAUc0WataMXIaTOSzMPBF87GJngwE8wDwYDVR0TAQH/BAUw
AwEB/zAFBgMrZXADQQC6McVZyuI46XqR2ue1GxeA3Q556vi3j0znKANChxy+elmp
zEmZIUZkF9Cf3k85X1BlBurpNqo7YrLElZn/T+UJ
-----END CERTIFICATE-----
";
const CA_SHA256: &str = "cfbc32d9b326e50de9c92702932aadb6e7f38412c279f0f6a13fc7f4a3e5564e";

/// Serves the CA, and refuses every enrollment (a 503 with the API's error body), recording
/// the public key of each request. Returns its base URL.
async fn refusing_coordinator(keys: Arc<Mutex<Vec<String>>>) -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            let keys = keys.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                // Headers, then a Content-Length body.
                let (head, len) = loop {
                    let n = s.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
                        let len = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse::<usize>().ok())
                            .unwrap_or(0);
                        buf.drain(..end + 4);
                        break (head, len);
                    }
                };
                while buf.len() < len {
                    let n = s.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
                let (status, body) = if head.starts_with("get ") {
                    ("200 OK", CA_PEM.to_owned())
                } else {
                    let req: EnrollRequest = serde_json::from_slice(&buf).unwrap();
                    keys.lock().unwrap().push(req.public_key);
                    (
                        "503 Service Unavailable",
                        r#"{"error":"the store is busy"}"#.to_owned(),
                    )
                };
                let resp = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
            });
        }
    });
    url
}

fn token() -> String {
    format!("bjt1.{}.{}.{CA_SHA256}", "a".repeat(16), "b".repeat(32))
}

#[tokio::test]
async fn the_key_is_persisted_before_the_first_request_and_reused_by_every_retry() {
    let keys = Arc::new(Mutex::new(Vec::new()));
    let api = refusing_coordinator(keys.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(IDENTITY_FILE);
    let node = NodeName::new("pi-1").unwrap();
    for _ in 0..3 {
        let err = enroll(&path, &api, &token(), &node, &BTreeMap::new(), "arm64")
            .await
            .unwrap_err();
        // The coordinator's reason, in its own words.
        assert!(
            err.to_string().contains("503") && err.to_string().contains("the store is busy"),
            "{err}"
        );
    }
    let keys = keys.lock().unwrap().clone();
    assert_eq!(keys.len(), 3);
    assert!(keys.iter().all(|k| *k == keys[0]), "{keys:?}");
    // The key sent is the persisted one, and nothing was removed or written besides it.
    let seed = pending_key(dir.path()).unwrap();
    assert_eq!(
        keys[0],
        b64(SigningKey::from_bytes(&seed).verifying_key().as_bytes())
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.path().join(PENDING_KEY_FILE))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    assert!(!path.exists());
    let mut names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, [PENDING_KEY_FILE]);
}

#[test]
fn a_damaged_pending_key_is_moved_aside_not_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let first = pending_key(dir.path()).unwrap();
    assert_eq!(pending_key(dir.path()).unwrap(), first);
    std::fs::write(dir.path().join(PENDING_KEY_FILE), "not a key").unwrap();
    let second = pending_key(dir.path()).unwrap();
    assert_ne!(second, first);
    assert_eq!(
        std::fs::read_to_string(dir.path().join(format!("{PENDING_KEY_FILE}.invalid"))).unwrap(),
        "not a key"
    );
    forget_pending_key(dir.path());
    assert!(!dir.path().join(PENDING_KEY_FILE).exists());
    forget_pending_key(dir.path());
}
