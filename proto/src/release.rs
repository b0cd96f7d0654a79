//! Agent releases: what a release key signs, and where a node downloads a release.
//!
//! The release key is not the coordinator's messaging key: it can be kept offline
//! (`baton release sign` on another machine), and a device checks a release against the
//! public key pinned at enrollment or flashing, so neither a coordinator nor a broker that
//! is taken over can make a device run a binary the release key did not sign.
//!
//! Pure: no clock, no IO, ed25519-dalek without `std`.

use ed25519_dalek::{Signer, Verifier};

use crate::sign::{Signature, SigningKey, VerifyingKey, SIGNATURE_BYTES};
use crate::{BVec, ProtoError, Release};

/// The label every agent (v5 on) adds to its Hello: the target triple it was built for,
/// so the coordinator offers it the release built for that target.
pub const LABEL_AGENT_TARGET: &str = "agent.baton.io/target";

/// Prefixes every signed release, so a release signature is never valid as anything else.
pub const RELEASE_CONTEXT: &[u8] = b"baton-release-v1\0";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReleaseError {
    #[error("the release is not signed")]
    Unsigned,
    #[error("the release signature is not valid for the pinned release key")]
    BadSignature,
    #[error("the binary's sha256 is {got}, the release says {want}")]
    Digest { got: String, want: String },
    #[error("the binary is {got} bytes, the release says {want}")]
    Size { got: u64, want: u64 },
    #[error(transparent)]
    Encode(#[from] ProtoError),
}

/// What the release key signs: [`RELEASE_CONTEXT`], then version, target, protocol, size and
/// sha256, each length-prefixed where variable, so no two releases share signed bytes.
pub fn signing_bytes(r: &Release) -> Vec<u8> {
    let mut out = Vec::with_capacity(RELEASE_CONTEXT.len() + 128);
    out.extend_from_slice(RELEASE_CONTEXT);
    for field in [r.version.as_str(), r.target.as_str()] {
        out.extend_from_slice(&(field.len() as u32).to_le_bytes());
        out.extend_from_slice(field.as_bytes());
    }
    out.extend_from_slice(&r.protocol.to_le_bytes());
    out.extend_from_slice(&r.size.to_le_bytes());
    out.extend_from_slice(&r.sha256);
    out
}

/// Signs `r` with the release key, replacing any signature it had.
pub fn sign(r: &mut Release, key: &SigningKey) -> Result<(), ReleaseError> {
    let sig = key.sign(&signing_bytes(r));
    r.signature = BVec::from_vec(sig.to_bytes().to_vec())?;
    Ok(())
}

/// Checks `r`'s signature by the release key `key`.
pub fn verify(r: &Release, key: &VerifyingKey) -> Result<(), ReleaseError> {
    if r.signature.is_empty() {
        return Err(ReleaseError::Unsigned);
    }
    let bytes: [u8; SIGNATURE_BYTES] = r.signature[..]
        .try_into()
        .map_err(|_| ReleaseError::BadSignature)?;
    key.verify(&signing_bytes(r), &Signature::from_bytes(&bytes))
        .map_err(|_| ReleaseError::BadSignature)
}

/// Checks a downloaded binary's size and sha256 (computed by the caller) against `r`.
pub fn check_content(r: &Release, size: u64, sha256: &[u8; 32]) -> Result<(), ReleaseError> {
    if size != r.size {
        return Err(ReleaseError::Size {
            got: size,
            want: r.size,
        });
    }
    if *sha256 != r.sha256 {
        return Err(ReleaseError::Digest {
            got: hex(sha256),
            want: hex(&r.sha256),
        });
    }
    Ok(())
}

/// `sha256:<hex>`, how releases are named in paths and listings.
pub fn digest_string(sha256: &[u8; 32]) -> String {
    format!("sha256:{}", hex(sha256))
}

/// The coordinator's HTTP path of a release binary (range requests resume a download).
pub fn download_path(sha256: &[u8; 32]) -> String {
    format!("/api/v1/releases/{}/binary", digest_string(sha256))
}

/// Whether `path` is a [`download_path`] (a node-signed request may open only these).
pub fn is_download_path(path: &str) -> bool {
    path.strip_prefix("/api/v1/releases/sha256:")
        .and_then(|p| p.strip_suffix("/binary"))
        .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
}

fn hex(bytes: &[u8]) -> String {
    use core::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::BString;

    fn release() -> Release {
        Release {
            version: BString::new("0.2.1").unwrap(),
            target: BString::new("aarch64-unknown-linux-musl").unwrap(),
            protocol: 5,
            size: 4096,
            sha256: [7; 32],
            signature: BVec::new(),
        }
    }

    #[test]
    fn a_signed_release_verifies_only_with_its_key_and_unchanged() {
        let key = SigningKey::from_bytes(&[1; 32]);
        let other = SigningKey::from_bytes(&[2; 32]);
        let mut r = release();
        assert_eq!(
            verify(&r, &key.verifying_key()),
            Err(ReleaseError::Unsigned)
        );
        sign(&mut r, &key).unwrap();
        verify(&r, &key.verifying_key()).unwrap();
        assert_eq!(
            verify(&r, &other.verifying_key()),
            Err(ReleaseError::BadSignature)
        );
        for tamper in [
            |r: &mut Release| r.version = BString::new("0.2.2").unwrap(),
            |r: &mut Release| r.target = BString::new("armv7-unknown-linux-musleabihf").unwrap(),
            |r: &mut Release| r.protocol = 6,
            |r: &mut Release| r.size += 1,
            |r: &mut Release| r.sha256[31] ^= 1,
        ] {
            let mut t = r.clone();
            tamper(&mut t);
            assert_eq!(
                verify(&t, &key.verifying_key()),
                Err(ReleaseError::BadSignature)
            );
        }
    }

    #[test]
    fn fields_cannot_slide_into_each_other() {
        let mut a = release();
        let mut b = release();
        a.version = BString::new("0.2.1a").unwrap();
        a.target = BString::new("rm").unwrap();
        b.target = BString::new("arm").unwrap();
        assert_ne!(signing_bytes(&a), signing_bytes(&b));
    }

    #[test]
    fn content_is_checked_by_size_then_digest() {
        let r = release();
        check_content(&r, 4096, &[7; 32]).unwrap();
        assert!(matches!(
            check_content(&r, 4095, &[7; 32]),
            Err(ReleaseError::Size {
                got: 4095,
                want: 4096
            })
        ));
        let err = check_content(&r, 4096, &[8; 32]).unwrap_err();
        assert!(err.to_string().contains("0808"), "{err}");
        assert!(is_download_path(&download_path(&[0xab; 32])));
        for not in [
            "/api/v1/releases/sha256:ab/binary",
            "/api/v1/releases/sha256:../../nodes/binary",
            "/api/v1/releases",
            "/api/v1/nodes",
        ] {
            assert!(!is_download_path(not), "{not}");
        }
        assert_eq!(
            download_path(&[0xab; 32]),
            format!("/api/v1/releases/sha256:{}/binary", "ab".repeat(32))
        );
    }
}
