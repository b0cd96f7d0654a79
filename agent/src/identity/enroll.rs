//! Getting an identity from the coordinator: the join token, enrollment over a CA pinned by
//! the token's hash, and key rotation (see the module docs of [`super`]). The routes, the
//! bodies and the token's format are the device contract's, [`baton_proto::enroll`].

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use baton_proto::enroll::{
    rotate_path, rotate_signing_bytes, EnrollRequest, EnrollResponse, ErrorBody, JoinToken,
    RotateRequest, CA_PATH, ENROLL_PATH,
};
use baton_proto::sign::SigningKey;
use baton_proto::NodeName;
use ed25519_dalek::Signer;
use serde::Serialize;
use sha2::{Digest, Sha256};
use tracing::{info, warn};

use super::{
    b64, io, unb64, wall_ms, write_private, IdentityError, IdentityFile, FORMAT_VERSION,
    PENDING_KEY_FILE,
};

/// The DER bytes of the first certificate in a PEM text.
fn pem_der(pem: &str) -> Option<Vec<u8>> {
    use rustls_pki_types::pem::PemObject;
    rustls_pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
        .ok()
        .map(|c| c.to_vec())
}

/// The Ed25519 key inside a certificate's subject public key info.
fn ed25519_key_of(cert_der: &[u8]) -> Option<[u8; 32]> {
    let der = rustls_pki_types::CertificateDer::from(cert_der.to_vec());
    let anchor = webpki::anchor_from_trusted_cert(&der).ok()?;
    // SubjectPublicKeyInfo contents: AlgorithmIdentifier { id-Ed25519 }, BIT STRING (33).
    const PREFIX: &[u8] = &[0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00];
    let spki: &[u8] = anchor.subject_public_key_info.as_ref();
    spki.strip_prefix(PREFIX)?.try_into().ok()
}

/// A client that trusts only the coordinator's CA (any http client for http URLs).
fn pinned_client(ca_pem: &str) -> Result<reqwest::Client, IdentityError> {
    let cert =
        reqwest::Certificate::from_pem(ca_pem.as_bytes()).map_err(|e| IdentityError::Http {
            url: String::new(),
            message: e.to_string(),
        })?;
    crate::mqtt_tls::install_ring_provider();
    reqwest::Client::builder()
        .tls_certs_only([cert])
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| IdentityError::Http {
            url: String::new(),
            message: e.to_string(),
        })
}

fn http_err(url: &str) -> impl Fn(reqwest::Error) -> IdentityError + '_ {
    move |e| IdentityError::Http {
        url: url.to_owned(),
        message: describe(&e),
    }
}

/// What went wrong, in the words of what the peer did: nothing listening, something that
/// is not TLS or not HTTP (the MQTT port, say), or no answer; then the cause chain.
fn describe(e: &reqwest::Error) -> String {
    let mut chain = Vec::new();
    let mut refused = false;
    // reqwest's own text ("error sending request for url") says nothing: its causes do.
    let mut cur: Option<&(dyn std::error::Error + 'static)> =
        std::error::Error::source(e).or(Some(e));
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            refused |= io.kind() == std::io::ErrorKind::ConnectionRefused;
        }
        let text = err.to_string();
        if !chain.iter().any(|c: &String| c.contains(&text)) {
            chain.push(text);
        }
        cur = err.source();
    }
    let peer = e
        .url()
        .map(|u| {
            format!(
                "{}:{}",
                u.host_str().unwrap_or("?"),
                u.port_or_known_default().unwrap_or(0)
            )
        })
        .unwrap_or_else(|| "the coordinator".into());
    let what = if refused {
        format!("nothing listens on {peer} (connection refused): is the coordinator running, and is this its API or --enroll-listen port?")
    } else if e.is_timeout() {
        format!("{peer} did not answer within 30 s")
    } else if e.is_connect() {
        format!("{peer} accepted the connection but the TLS handshake failed: it does not answer as the coordinator's HTTPS API (the MQTT port, or another service?)")
    } else {
        format!("{peer} answered, but not as the coordinator's API (the MQTT port, or another service?)")
    };
    format!("{what}: {}", chain.join(": "))
}

/// Checks the enrollment arguments before anything is sent: the token's form and the
/// API URL (https, or http to loopback only).
pub fn check_enroll_args(api: &str, token: &str) -> Result<(), IdentityError> {
    JoinToken::parse(token)?;
    check_api_url(api)
}

/// Checks the coordinator API URL: https, or http to a loopback address only.
pub fn check_api_url(api: &str) -> Result<(), IdentityError> {
    let bad = || IdentityError::ApiUrl {
        url: api.to_owned(),
    };
    let u = reqwest::Url::parse(api.trim_end_matches('/')).map_err(|_| bad())?;
    let host = u.host_str().ok_or_else(bad)?.to_owned();
    match u.scheme() {
        "https" => Ok(()),
        "http" => {
            let loopback = host == "localhost"
                || host
                    .trim_matches(|c| c == '[' || c == ']')
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback());
            if loopback {
                Ok(())
            } else {
                Err(IdentityError::PlainHttp)
            }
        }
        _ => Err(bad()),
    }
}

/// Fetches the coordinator's CA and checks it against the token's hash.
async fn pinned_ca(api: &str, ca_sha256: &str) -> Result<String, IdentityError> {
    let url = format!("{api}{CA_PATH}");
    let https = api.starts_with("https://");
    if !https {
        let host = reqwest::Url::parse(api)
            .ok()
            .and_then(|u| u.host_str().map(str::to_owned))
            .unwrap_or_default();
        let loopback = host == "localhost"
            || host
                .trim_matches(|c| c == '[' || c == ']')
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        if !loopback {
            return Err(IdentityError::PlainHttp);
        }
    }
    // Not verified here: nothing is trusted until the hash matches.
    crate::mqtt_tls::install_ring_provider();
    let client = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(http_err(&url))?;
    let resp = client.get(&url).send().await.map_err(http_err(&url))?;
    if !resp.status().is_success() {
        return Err(IdentityError::Refused(format!(
            "GET {url}: {}",
            resp.status()
        )));
    }
    let pem = resp.text().await.map_err(http_err(&url))?;
    let got = pem_der(&pem)
        .map(|d| hex::encode(Sha256::digest(d)))
        .unwrap_or_default();
    if got != ca_sha256 {
        return Err(IdentityError::CaMismatch { got });
    }
    Ok(pem)
}

/// POSTs `body` as JSON and reads the answer as an [`EnrollResponse`]; a refusal is the
/// coordinator's `{"error": "..."}`.
async fn post_json(
    client: &reqwest::Client,
    url: &str,
    body: &impl Serialize,
) -> Result<EnrollResponse, IdentityError> {
    let resp = client
        .post(url)
        .json(body)
        .send()
        .await
        .map_err(http_err(url))?;
    let status = resp.status();
    let v: serde_json::Value = resp.json().await.map_err(http_err(url))?;
    if !status.is_success() {
        let msg = serde_json::from_value::<ErrorBody>(v).map(|b| b.error);
        let msg = msg.as_deref().unwrap_or("no reason given");
        return Err(IdentityError::Refused(format!("{status}: {msg}")));
    }
    serde_json::from_value(v).map_err(|e| IdentityError::Http {
        url: url.to_owned(),
        message: format!("the answer is not an enrollment answer: {e}"),
    })
}

/// Builds the identity file from an enrollment (or rotation) answer, after checking that
/// the coordinator key is the pinned CA's key.
fn identity_from(
    r: EnrollResponse,
    seed: &[u8; 32],
    ca_pem: &str,
    api: &str,
) -> Result<IdentityFile, IdentityError> {
    let ca_der = pem_der(ca_pem).ok_or(IdentityError::KeyMismatch)?;
    let ca_key = ed25519_key_of(&ca_der).ok_or(IdentityError::KeyMismatch)?;
    if unb64(&r.coordinator_public_key).as_deref() != Some(&ca_key[..]) {
        return Err(IdentityError::KeyMismatch);
    }
    Ok(IdentityFile {
        version: FORMAT_VERSION,
        node_name: r.node_name,
        private_key: b64(seed),
        certificate: r.certificate,
        coordinator_public_key: r.coordinator_public_key,
        ca_certificate: ca_pem.to_owned(),
        labels: r.labels,
        not_after: r.not_after,
        coordinator_api: Some(api.to_owned()),
    })
}

/// The device key to enroll with: the one an earlier attempt persisted in `dir`
/// ([`PENDING_KEY_FILE`]), else a new one, durably written before it is ever sent. A device
/// that lost power after the coordinator accepted its request, and before it saved the
/// answer, so retries with the key the coordinator knows, and is answered again.
pub fn pending_key(dir: &Path) -> Result<[u8; 32], IdentityError> {
    let path = dir.join(PENDING_KEY_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            if let Some(seed) = unb64(text.trim()).and_then(|b| <[u8; 32]>::try_from(b).ok()) {
                return Ok(seed);
            }
            // Only a damaged disk writes this (the file is replaced atomically). Kept aside
            // for a post-mortem, never deleted; a new key can only enroll with a new token.
            let aside = dir.join(format!("{PENDING_KEY_FILE}.invalid"));
            std::fs::rename(&path, &aside).map_err(io(&path))?;
            warn!(path = %aside.display(), "the persisted enrollment key is unreadable; moved aside, enrolling with a new key");
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(&path)(e)),
    }
    let seed: [u8; 32] = rand::random();
    write_private(&path, format!("{}\n", b64(&seed)).as_bytes())?;
    Ok(seed)
}

/// Removes the persisted enrollment key once the identity file (which holds the key) is
/// durably written; a leftover is harmless and removed at the next start.
pub fn forget_pending_key(dir: &Path) {
    let path = dir.join(PENDING_KEY_FILE);
    match std::fs::remove_file(&path) {
        Ok(()) => {
            let _ = crate::durable::sync_parent(&path);
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => warn!(path = %path.display(), error = %e, "cannot remove the enrollment key"),
    }
}

/// Enrolls this device: the key from [`pending_key`], a POST to [`ENROLL_PATH`] with the
/// join token, and the identity file written to `path`.
pub async fn enroll(
    path: &Path,
    api: &str,
    token: &str,
    node: &NodeName,
    labels: &BTreeMap<String, String>,
    arch: &str,
) -> Result<IdentityFile, IdentityError> {
    check_enroll_args(api, token)?;
    let token = JoinToken::parse(token)?;
    let api = api.trim_end_matches('/');
    let dir = path.parent().unwrap_or(Path::new("."));
    let seed = pending_key(dir)?;
    let ca_pem = pinned_ca(api, &token.ca_sha256).await?;
    let client = pinned_client(&ca_pem)?;
    let key = SigningKey::from_bytes(&seed);
    let body = EnrollRequest {
        token: token.render(),
        node_name: node.as_str().to_owned(),
        public_key: b64(key.verifying_key().as_bytes()),
        labels: labels.clone(),
        arch: arch.to_owned(),
    };
    let mut answer = post_json(&client, &format!("{api}{ENROLL_PATH}"), &body).await?;
    // Pinned before the identity is saved: an identity on disk means the key is too.
    if let Some(text) = answer.release_public_key.take() {
        match super::release_key::pin(dir, &text) {
            Ok(_) => info!("release public key pinned"),
            Err(super::release_key::ReleaseKeyError::Io { path, source }) => {
                return Err(IdentityError::Io { path, source })
            }
            Err(e) => warn!(error = %e, "the coordinator's release key is unusable: not pinned"),
        }
    }
    let front = answer.broker_front;
    let id = identity_from(answer, &seed, &ca_pem, api)?;
    if id.node_name != node.as_str() {
        return Err(IdentityError::NodeMismatch {
            file: id.node_name,
            flag: node.as_str().to_owned(),
        });
    }
    super::set_broker_front(dir, front)?;
    id.save(path)?;
    forget_pending_key(dir);
    info!(node = %node, path = %path.display(), not_after = id.not_after, "enrolled");
    Ok(id)
}

/// Rotates the device key: a new key pair, a request signed by the current key, and the
/// identity file rewritten. A running agent picks the new key up from the file; the
/// coordinator accepts both keys for a short overlap, so nothing restarts.
pub async fn rotate(path: &Path, api: Option<&str>) -> Result<IdentityFile, IdentityError> {
    let cur = IdentityFile::load(path)?.ok_or_else(|| IdentityError::Invalid {
        path: path.to_owned(),
        message: "no identity: enroll first".into(),
    })?;
    let api = api
        .map(str::to_owned)
        .or(cur.coordinator_api.clone())
        .ok_or(IdentityError::NoApi)?;
    let api = api.trim_end_matches('/').to_owned();
    let client = pinned_client(&cur.ca_certificate)?;
    let seed: [u8; 32] = rand::random();
    let new_pub = b64(SigningKey::from_bytes(&seed).verifying_key().as_bytes());
    let ts = wall_ms();
    let msg = rotate_signing_bytes(&cur.node_name, &new_pub, ts);
    let sig = cur.signing_key()?.sign(&msg);
    let body = RotateRequest {
        new_public_key: new_pub,
        timestamp_ms: ts,
        signature: b64(&sig.to_bytes()),
    };
    let url = format!("{api}{}", rotate_path(&cur.node_name));
    let answer = post_json(&client, &url, &body).await?;
    let front = answer.broker_front;
    let id = identity_from(answer, &seed, &cur.ca_certificate, &api)?;
    if let Some(dir) = path.parent() {
        super::set_broker_front(dir, front)?;
    }
    id.save(path)?;
    info!(node = %id.node_name, "device key rotated");
    Ok(id)
}

#[cfg(test)]
mod tests;
