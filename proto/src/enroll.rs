//! The device's side of the HTTP API: how an agent gets and renews its identity.
//!
//! Enrollment is not MQTT, but it is as much the device's contract as the envelope: the
//! agent and the coordinator both build on these definitions, so the paths, the JSON
//! bodies, the join token's format and the rotation signature cannot drift apart. The
//! coordinator's route list (`coordinator/src/contract/routes.rs`) serves these paths.
//! Nothing here knows HTTP libraries.
//!
//! A join token, as `baton token create` prints it, carries the SHA-256 of the
//! coordinator's CA certificate, so the agent can check whom it talks to before it
//! trusts anything it is sent (kubeadm's discovery hash):
//!
//! ```text
//! bjt1.<id: 16 hex>.<secret: 32 hex>.<sha256 of ca.crt DER: 64 hex>
//! ```

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// `GET`: the coordinator's CA certificate, PEM. No API token: the device pins it by the
/// hash its join token carries.
pub const CA_PATH: &str = "/api/v1/enroll/ca";
/// `POST` an [`EnrollRequest`], answered with an [`EnrollResponse`]. No API token: the
/// join token authorizes.
pub const ENROLL_PATH: &str = "/api/v1/enroll";
/// `POST` a [`RotateRequest`], answered with an [`EnrollResponse`]; `{name}` is the node
/// (see [`rotate_path`]). No API token: the node's current key signs the request.
pub const ROTATE_PATH: &str = "/api/v1/nodes/{name}/rotate";

/// The token string's prefix and version.
pub const TOKEN_PREFIX: &str = "bjt1";
/// Context of a rotation request's signature, so it can never pass for anything else.
pub const ROTATE_CONTEXT: &[u8] = b"baton-rotate-v1\0";

/// Context of a node-signed download (a release binary), so it can never pass for
/// anything else.
pub const DOWNLOAD_CONTEXT: &[u8] = b"baton-download-v1\0";
/// Headers of a node-signed download: an enrolled device that holds no API token (it
/// enrolled through `--enroll-listen`) fetches a release binary on its own key. The
/// signature (base64 Ed25519) covers [`download_signing_bytes`].
pub const NODE_HEADER: &str = "baton-node";
pub const TIMESTAMP_HEADER: &str = "baton-timestamp-ms";
pub const SIGNATURE_HEADER: &str = "baton-signature";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JoinTokenError {
    #[error("invalid join token: expected {TOKEN_PREFIX}.<id>.<secret>.<ca sha256>")]
    Malformed,
}

/// [`ROTATE_PATH`] for `node`, the name percent-encoded as the coordinator's route list
/// encodes a path parameter (RFC 3986's unreserved bytes and `:` kept), so that a name
/// the server would not route still cannot change the path's shape.
pub fn rotate_path(node: &str) -> String {
    let (head, tail) = ROTATE_PATH
        .split_once("{name}")
        .expect("ROTATE_PATH names {name}");
    let mut out = String::with_capacity(ROTATE_PATH.len() + node.len());
    out.push_str(head);
    for b in node.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~:".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out.push_str(tail);
    out
}

/// A join token's parts, hex in lowercase. The coordinator looks the token up by `id`
/// and checks `secret` against its hash; the agent pins the CA by `ca_sha256` and sends
/// the whole token (see [`JoinToken::render`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinToken {
    pub id: String,
    pub secret: String,
    pub ca_sha256: String,
}

impl JoinToken {
    /// Reads a token string (surrounding whitespace ignored, hex in either case).
    pub fn parse(s: &str) -> Result<Self, JoinTokenError> {
        let mut it = s.trim().split('.');
        let mut next = || it.next().ok_or(JoinTokenError::Malformed);
        let (p, id, secret, ca) = (next()?, next()?, next()?, next()?);
        let hex_of = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
        if next().is_ok()
            || p != TOKEN_PREFIX
            || !hex_of(id, 16)
            || !hex_of(secret, 32)
            || !hex_of(ca, 64)
        {
            return Err(JoinTokenError::Malformed);
        }
        Ok(Self {
            id: id.to_ascii_lowercase(),
            secret: secret.to_ascii_lowercase(),
            ca_sha256: ca.to_ascii_lowercase(),
        })
    }

    /// The token string.
    pub fn render(&self) -> String {
        format!(
            "{TOKEN_PREFIX}.{}.{}.{}",
            self.id, self.secret, self.ca_sha256
        )
    }
}

/// The body of [`ENROLL_PATH`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EnrollRequest {
    /// The join token string (only its id and secret count here).
    pub token: String,
    pub node_name: String,
    /// Base64 of the device's 32-byte Ed25519 public key.
    pub public_key: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub arch: String,
}

/// A refusal: every error answer of the API is `{"error": "..."}` with a 4xx or 5xx
/// status (the coordinator's contract re-exports this type).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}

/// The answer to an enrollment or a rotation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EnrollResponse {
    pub node_name: String,
    /// The node certificate, PEM.
    pub certificate: String,
    /// Base64 of the coordinator's Ed25519 public key (the CA's key).
    pub coordinator_public_key: String,
    pub ca_certificate: String,
    pub labels: BTreeMap<String, String>,
    /// The certificate's notAfter, Unix seconds.
    pub not_after: u64,
    /// Base64 of the release public key (32 bytes) the device pins at enrollment to check
    /// agent releases; absent when the coordinator has none. Optional both ways, so
    /// agents and coordinators of either side of its introduction read each other.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release_public_key: Option<String>,
    /// The coordinator's MQTT broker is its embedded one, behind its own TLS front, which
    /// watches `lan` agents with TCP keepalive probes when they ask (the agent's
    /// `--link-liveness auto`). Absent (false) from older coordinators and with an external
    /// broker such as Mosquitto; older agents ignore it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub broker_front: bool,
}

/// The body of [`ROTATE_PATH`]: signed by the node's current key over
/// [`rotate_signing_bytes`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RotateRequest {
    pub new_public_key: String,
    pub timestamp_ms: u64,
    /// Base64 Ed25519 signature.
    pub signature: String,
}

/// What a node-signed download's signature covers: the node, the request's path (so it
/// names one release) and the time (the coordinator's window bounds replays).
pub fn download_signing_bytes(node: &str, path: &str, timestamp_ms: u64) -> Vec<u8> {
    let mut v = DOWNLOAD_CONTEXT.to_vec();
    v.extend_from_slice(node.as_bytes());
    v.push(0);
    v.extend_from_slice(path.as_bytes());
    v.push(0);
    v.extend_from_slice(timestamp_ms.to_string().as_bytes());
    v
}

/// What a rotation request's signature covers.
pub fn rotate_signing_bytes(node: &str, new_public_key: &str, timestamp_ms: u64) -> Vec<u8> {
    let mut v = ROTATE_CONTEXT.to_vec();
    v.extend_from_slice(node.as_bytes());
    v.push(0);
    v.extend_from_slice(new_public_key.as_bytes());
    v.push(0);
    v.extend_from_slice(timestamp_ms.to_string().as_bytes());
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_tokens_parse_render_and_refuse_junk() {
        let t = format!(
            "bjt1.{}.{}.{}",
            "a".repeat(16),
            "B".repeat(32),
            "C".repeat(64)
        );
        let parsed = JoinToken::parse(&format!(" {t}\n")).unwrap();
        assert_eq!(parsed.id, "a".repeat(16));
        assert_eq!(parsed.secret, "b".repeat(32));
        assert_eq!(parsed.ca_sha256, "c".repeat(64));
        assert_eq!(parsed.render(), t.to_ascii_lowercase());
        assert_eq!(JoinToken::parse(&parsed.render()), Ok(parsed));
        for bad in [
            "",
            "bjt1",
            "bjt1.a.b.c",
            "bjt2.0011223344556677.00112233445566778899aabbccddeeff.",
            &t[1..],
            &t[..t.len() - 1],
            &format!("{t}.d"),
            &t.replacen('a', "g", 1),
        ] {
            assert_eq!(
                JoinToken::parse(bad),
                Err(JoinTokenError::Malformed),
                "{bad}"
            );
        }
        assert_eq!(
            JoinTokenError::Malformed.to_string(),
            "invalid join token: expected bjt1.<id>.<secret>.<ca sha256>"
        );
    }

    #[test]
    fn the_rotate_path_encodes_the_node_name() {
        assert_eq!(rotate_path("pi-1"), "/api/v1/nodes/pi-1/rotate");
        assert_eq!(rotate_path("a b/c"), "/api/v1/nodes/a%20b%2Fc/rotate");
        assert_eq!(rotate_path("x:y.z_~"), "/api/v1/nodes/x:y.z_~/rotate");
    }

    /// The JSON field names the agents already deployed send and read.
    #[test]
    fn bodies_keep_their_json_names() {
        let req = EnrollRequest {
            token: "t".into(),
            node_name: "pi-1".into(),
            public_key: "k".into(),
            labels: [("zone".to_string(), "a".to_string())].into(),
            arch: "arm64".into(),
        };
        assert_eq!(
            serde_json::to_string(&req).unwrap(),
            r#"{"token":"t","nodeName":"pi-1","publicKey":"k","labels":{"zone":"a"},"arch":"arm64"}"#
        );
        let minimal: EnrollRequest =
            serde_json::from_str(r#"{"token":"t","nodeName":"n","publicKey":"k"}"#).unwrap();
        assert_eq!((minimal.labels.len(), minimal.arch.as_str()), (0, ""));
        assert!(serde_json::from_str::<EnrollRequest>(
            r#"{"token":"t","nodeName":"n","publicKey":"k","extra":1}"#
        )
        .is_err());

        let resp = EnrollResponse {
            node_name: "pi-1".into(),
            certificate: "C".into(),
            coordinator_public_key: "K".into(),
            ca_certificate: "CA".into(),
            labels: BTreeMap::new(),
            not_after: 7,
            release_public_key: None,
            broker_front: false,
        };
        let old = r#"{"nodeName":"pi-1","certificate":"C","coordinatorPublicKey":"K","caCertificate":"CA","labels":{},"notAfter":7}"#;
        assert_eq!(serde_json::to_string(&resp).unwrap(), old);
        // An old answer (without the key) still parses; a new one carries it, and an old
        // reader (which ignores unknown fields) is not upset by it.
        assert_eq!(serde_json::from_str::<EnrollResponse>(old).unwrap(), resp);
        let with_key = EnrollResponse {
            release_public_key: Some("R".into()),
            ..resp.clone()
        };
        let new = serde_json::to_string(&with_key).unwrap();
        assert_eq!(
            new,
            format!(r#"{},"releasePublicKey":"R"}}"#, &old[..old.len() - 1])
        );
        assert_eq!(
            serde_json::from_str::<EnrollResponse>(&new).unwrap(),
            with_key
        );
        // The same for the front: said only when true.
        let front = EnrollResponse {
            broker_front: true,
            ..resp.clone()
        };
        let new = serde_json::to_string(&front).unwrap();
        assert_eq!(
            new,
            format!(r#"{},"brokerFront":true}}"#, &old[..old.len() - 1])
        );
        assert_eq!(serde_json::from_str::<EnrollResponse>(&new).unwrap(), front);

        let rot = RotateRequest {
            new_public_key: "N".into(),
            timestamp_ms: 9,
            signature: "S".into(),
        };
        let json = r#"{"newPublicKey":"N","timestampMs":9,"signature":"S"}"#;
        assert_eq!(serde_json::to_string(&rot).unwrap(), json);
        assert!(serde_json::from_str::<RotateRequest>(&json.replace('}', r#","x":1}"#)).is_err());

        let err = ErrorBody {
            error: "token expired".into(),
        };
        assert_eq!(
            serde_json::to_string(&err).unwrap(),
            r#"{"error":"token expired"}"#
        );
    }

    #[test]
    fn the_rotation_signature_covers_node_key_and_time() {
        assert_eq!(
            rotate_signing_bytes("pi-1", "KEY", 42),
            [&b"baton-rotate-v1\0pi-1\0KEY\0"[..], b"42"].concat()
        );
    }

    #[test]
    fn the_download_signature_covers_node_path_and_time_and_not_a_rotation() {
        let d = download_signing_bytes("pi-1", "/api/v1/releases/sha256:ab/binary", 42);
        assert_eq!(
            d,
            [
                &b"baton-download-v1\0pi-1\0/api/v1/releases/sha256:ab/binary\0"[..],
                b"42"
            ]
            .concat()
        );
        assert_ne!(
            d,
            rotate_signing_bytes("pi-1", "/api/v1/releases/sha256:ab/binary", 42)
        );
    }
}
