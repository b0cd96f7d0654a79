//! Sealing a secret to one device's key, so only that device can open it.
//!
//! Devices already hold an Ed25519 identity key (enrolled with the coordinator), so
//! sealing reuses it rather than adding a second key to provision and rotate: the
//! recipient's X25519 public key is the Montgomery form of its Ed25519 public key, and its
//! X25519 secret is the (clamped) scalar of its Ed25519 signing key. This is the standard
//! birational map (RFC 7748 / libsodium's `crypto_sign_ed25519_pk_to_curve25519`).
//!
//! Layout of [`Sealed::data`] for [`SealScheme::X25519ChaCha20Poly1305`]:
//!
//! ```text
//! ephemeral X25519 public key (32) | ChaCha20-Poly1305 ciphertext (len(plaintext)) | tag (16)
//! ```
//!
//! - a fresh ephemeral X25519 key per seal; `shared = X25519(eph_secret, recipient_x25519)`;
//! - `HKDF-SHA256(salt = eph_public | recipient_x25519, ikm = shared, info = INFO)` gives
//!   44 bytes: the 32-byte key, then the 12-byte nonce (unique per seal, since the key
//!   is);
//! - associated data = the caller's `context` (for secrets, [`secret_context`]: node,
//!   secret name and version), so a sealed blob cannot be replayed as another secret, an
//!   older version, or to another node, even one holding the same key.
//!
//! Low-order points (an all-zero shared secret) are refused on both sides.
//!
//! Everything here is pure and `std`-free except [`seal`], which takes the ephemeral key
//! from the OS via `getrandom`; [`seal_with_ephemeral`] is the deterministic core.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use curve25519_dalek::montgomery::MontgomeryPoint;
use ed25519_dalek::{SigningKey, VerifyingKey};
use hkdf::Hkdf;
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::{BVec, SealScheme, Sealed, MAX_SEALED_BYTES};

/// HKDF `info`: names the scheme and its version, so keys derived for anything else
/// never collide with these.
pub const INFO: &[u8] = b"baton seal v1 X25519ChaCha20Poly1305";
/// Bytes of the ephemeral public key at the start of [`Sealed::data`].
pub const EPHEMERAL_BYTES: usize = 32;
/// Bytes of the Poly1305 tag at the end of [`Sealed::data`].
pub const TAG_BYTES: usize = 16;
/// What sealing adds to a plaintext.
pub const OVERHEAD: usize = EPHEMERAL_BYTES + TAG_BYTES;
/// The largest plaintext that still fits a [`Sealed`].
pub const MAX_PLAINTEXT_BYTES: usize = MAX_SEALED_BYTES - OVERHEAD;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SealError {
    #[error("plaintext of {len} bytes exceeds the limit of {MAX_PLAINTEXT_BYTES} bytes")]
    TooLarge { len: usize },
    #[error("sealed data of {len} bytes is shorter than the {OVERHEAD} bytes of overhead")]
    Truncated { len: usize },
    #[error("key is a low-order point")]
    WeakKey,
    #[error("no randomness from the operating system")]
    Random,
    #[error("sealed data does not open with this key and context")]
    Open,
}

/// The associated data a secret is sealed under: binds it to the receiving node, the
/// secret's name and its version. Length-prefixed fields, so no two triples encode alike.
pub fn secret_context(node: &str, secret: &str, version: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(32 + node.len() + secret.len());
    v.extend_from_slice(b"baton secret v1\0");
    for field in [node.as_bytes(), secret.as_bytes()] {
        v.extend_from_slice(&(field.len() as u32).to_be_bytes());
        v.extend_from_slice(field);
    }
    v.extend_from_slice(&version.to_be_bytes());
    v
}

/// Seals `plaintext` to the holder of `recipient`'s signing key, under `context`.
pub fn seal(
    recipient: &VerifyingKey,
    context: &[u8],
    plaintext: &[u8],
) -> Result<Sealed, SealError> {
    let mut eph = Zeroizing::new([0u8; 32]);
    getrandom::getrandom(eph.as_mut()).map_err(|_| SealError::Random)?;
    seal_with_ephemeral(&eph, recipient, context, plaintext)
}

/// [`seal`] with a caller-chosen ephemeral secret. Never reuse one: a repeated ephemeral
/// key with the same recipient repeats the key and nonce. Public for tests and fuzzing.
pub fn seal_with_ephemeral(
    ephemeral_secret: &[u8; 32],
    recipient: &VerifyingKey,
    context: &[u8],
    plaintext: &[u8],
) -> Result<Sealed, SealError> {
    if plaintext.len() > MAX_PLAINTEXT_BYTES {
        return Err(SealError::TooLarge {
            len: plaintext.len(),
        });
    }
    let recipient_x = recipient.to_montgomery();
    let eph_public = MontgomeryPoint::mul_base_clamped(*ephemeral_secret);
    let shared = Zeroizing::new(recipient_x.mul_clamped(*ephemeral_secret).to_bytes());
    let cipher = derive(&shared, &eph_public, &recipient_x)?;
    let (cipher, nonce) = cipher;
    let ct = cipher
        .encrypt(
            &nonce,
            Payload {
                msg: plaintext,
                aad: context,
            },
        )
        .map_err(|_| SealError::TooLarge {
            len: plaintext.len(),
        })?;
    let mut data = Vec::with_capacity(EPHEMERAL_BYTES + ct.len());
    data.extend_from_slice(eph_public.as_bytes());
    data.extend_from_slice(&ct);
    let len = data.len();
    Ok(Sealed {
        scheme: SealScheme::X25519ChaCha20Poly1305,
        data: BVec::from_vec(data).map_err(|_| SealError::TooLarge { len })?,
    })
}

/// Opens `sealed` with the device's own signing key; fails unless it was sealed to this
/// key under exactly this `context` and not altered since.
pub fn open(key: &SigningKey, context: &[u8], sealed: &Sealed) -> Result<Vec<u8>, SealError> {
    match sealed.scheme {
        SealScheme::X25519ChaCha20Poly1305 => {}
    }
    let data: &[u8] = &sealed.data;
    if data.len() < OVERHEAD {
        return Err(SealError::Truncated { len: data.len() });
    }
    let (eph, ct) = data.split_at(EPHEMERAL_BYTES);
    let mut eph_bytes = [0u8; EPHEMERAL_BYTES];
    eph_bytes.copy_from_slice(eph);
    let eph_public = MontgomeryPoint(eph_bytes);
    let secret = Zeroizing::new(key.to_scalar_bytes());
    let own_public = key.verifying_key().to_montgomery();
    let shared = Zeroizing::new(eph_public.mul_clamped(*secret).to_bytes());
    let (cipher, nonce) = derive(&shared, &eph_public, &own_public)?;
    cipher
        .decrypt(
            &nonce,
            Payload {
                msg: ct,
                aad: context,
            },
        )
        .map_err(|_| SealError::Open)
}

/// HKDF-SHA256 from the shared secret to the AEAD key and nonce.
fn derive(
    shared: &[u8; 32],
    eph_public: &MontgomeryPoint,
    recipient: &MontgomeryPoint,
) -> Result<(ChaCha20Poly1305, Nonce), SealError> {
    // An all-zero shared secret means one side used a low-order point: the result would
    // not depend on the other side's secret at all.
    if shared.iter().all(|b| *b == 0) {
        return Err(SealError::WeakKey);
    }
    let mut salt = [0u8; 64];
    salt[..32].copy_from_slice(eph_public.as_bytes());
    salt[32..].copy_from_slice(recipient.as_bytes());
    let hk = Hkdf::<Sha256>::new(Some(&salt), shared);
    let mut okm = Zeroizing::new([0u8; 44]);
    // 44 bytes is far below HKDF-SHA256's 255 * 32 limit, so this cannot fail.
    hk.expand(INFO, okm.as_mut()).map_err(|_| SealError::Open)?;
    let cipher = ChaCha20Poly1305::new(Key::from_slice(&okm[..32]));
    let nonce = *Nonce::from_slice(&okm[32..]);
    Ok((cipher, nonce))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> SigningKey {
        SigningKey::from_bytes(&[b; 32])
    }

    #[test]
    fn round_trip() {
        let k = key(1);
        let ctx = secret_context("pi-1", "db", 7);
        let s = seal(&k.verifying_key(), &ctx, b"hunter2").unwrap();
        assert_eq!(s.data.len(), b"hunter2".len() + OVERHEAD);
        assert!(!s.data.windows(7).any(|w| w == b"hunter2"));
        assert_eq!(open(&k, &ctx, &s).unwrap(), b"hunter2");
        // Empty plaintext too.
        let s = seal(&k.verifying_key(), &ctx, b"").unwrap();
        assert_eq!(open(&k, &ctx, &s).unwrap(), b"");
    }

    #[test]
    fn each_seal_uses_a_fresh_ephemeral_key() {
        let k = key(1);
        let a = seal(&k.verifying_key(), b"c", b"same").unwrap();
        let b = seal(&k.verifying_key(), b"c", b"same").unwrap();
        assert_ne!(a.data, b.data);
    }

    #[test]
    fn wrong_key_fails() {
        let s = seal(&key(1).verifying_key(), b"ctx", b"hunter2").unwrap();
        assert_eq!(open(&key(2), b"ctx", &s), Err(SealError::Open));
    }

    #[test]
    fn every_tampered_byte_fails() {
        let k = key(3);
        let s = seal(&k.verifying_key(), b"ctx", b"hunter2").unwrap();
        for i in 0..s.data.len() {
            let mut v = s.data.to_vec();
            v[i] ^= 0x01;
            let t = Sealed {
                scheme: s.scheme,
                data: BVec::from_vec(v).unwrap(),
            };
            assert!(
                open(&k, b"ctx", &t).is_err(),
                "byte {i} flipped still opened"
            );
        }
        let mut short = s.data.to_vec();
        short.truncate(OVERHEAD - 1);
        let t = Sealed {
            scheme: s.scheme,
            data: BVec::from_vec(short).unwrap(),
        };
        assert_eq!(
            open(&k, b"ctx", &t),
            Err(SealError::Truncated { len: OVERHEAD - 1 })
        );
    }

    #[test]
    fn wrong_context_fails() {
        let k = key(4);
        let s = seal(&k.verifying_key(), &secret_context("pi-1", "db", 1), b"v").unwrap();
        for other in [
            secret_context("pi-2", "db", 1),
            secret_context("pi-1", "db2", 1),
            secret_context("pi-1", "db", 2),
        ] {
            assert_eq!(open(&k, &other, &s), Err(SealError::Open));
        }
    }

    #[test]
    fn contexts_are_unambiguous() {
        assert_ne!(secret_context("a", "bc", 1), secret_context("ab", "c", 1));
    }

    #[test]
    fn low_order_ephemeral_is_refused() {
        let k = key(5);
        // The identity point (all zeros in Montgomery form) is of low order.
        let mut v = vec![0u8; EPHEMERAL_BYTES];
        v.extend_from_slice(&[0u8; 20]);
        let t = Sealed {
            scheme: SealScheme::X25519ChaCha20Poly1305,
            data: BVec::from_vec(v).unwrap(),
        };
        assert_eq!(open(&k, b"ctx", &t), Err(SealError::WeakKey));
    }

    #[test]
    fn deterministic_with_a_given_ephemeral() {
        let k = key(6);
        let a = seal_with_ephemeral(&[9; 32], &k.verifying_key(), b"c", b"x").unwrap();
        let b = seal_with_ephemeral(&[9; 32], &k.verifying_key(), b"c", b"x").unwrap();
        assert_eq!(a, b);
        assert_eq!(open(&k, b"c", &a).unwrap(), b"x");
    }

    #[test]
    fn too_large_is_refused() {
        let big = vec![0u8; MAX_PLAINTEXT_BYTES + 1];
        assert_eq!(
            seal(&key(1).verifying_key(), b"", &big),
            Err(SealError::TooLarge { len: big.len() })
        );
        let max = vec![0u8; MAX_PLAINTEXT_BYTES];
        assert!(seal(&key(1).verifying_key(), b"", &max).is_ok());
    }
}
