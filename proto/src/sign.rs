//! Signing and verifying envelopes, and the pure replay rules both sides share.
//!
//! A signature is Ed25519 over [`Envelope::signing_bytes`]: a context string, the MQTT
//! topic and the envelope encoded with an empty signature. Binding the topic means a
//! message signed for one node's topic cannot be moved to another's; binding `seq` and
//! `sent_at_ms` means a receiver that refuses old sequence numbers refuses replays.
//!
//! Everything here is pure (no clock, no IO, no async) and uses ed25519-dalek without its
//! `std` feature, so it builds for every target the agent runs on.

use ed25519_dalek::Signer;
pub use ed25519_dalek::{Signature, SigningKey, VerifyingKey};

use crate::{BVec, Envelope, ProtoError};

/// Bytes in an Ed25519 public key and in a private key seed.
pub const KEY_BYTES: usize = 32;
/// Bytes in an Ed25519 signature (what signing adds to every envelope, plus a one-byte
/// length prefix).
pub const SIGNATURE_BYTES: usize = 64;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignError {
    #[error("message is not signed")]
    Unsigned,
    #[error("signature is not {SIGNATURE_BYTES} bytes")]
    MalformedSignature,
    #[error("bad signature")]
    BadSignature,
    #[error("invalid public key")]
    BadKey,
    #[error(transparent)]
    Encode(#[from] ProtoError),
}

/// Signs `env` for `topic` with `key`, replacing any signature it had.
pub fn sign(env: &mut Envelope, topic: &str, key: &SigningKey) -> Result<(), SignError> {
    env.signature = BVec::new();
    let sig = key.sign(&env.signing_bytes(topic)?);
    env.signature = BVec::from_vec(sig.to_bytes().to_vec())?;
    Ok(())
}

/// Checks `env`'s signature for `topic` against `key` (strict Ed25519: no malleable or
/// small-order signatures).
pub fn verify(env: &Envelope, topic: &str, key: &VerifyingKey) -> Result<(), SignError> {
    if env.signature.is_empty() {
        return Err(SignError::Unsigned);
    }
    let bytes: [u8; SIGNATURE_BYTES] = env
        .signature
        .as_ref()
        .try_into()
        .map_err(|_| SignError::MalformedSignature)?;
    let sig = Signature::from_bytes(&bytes);
    key.verify_strict(&env.signing_bytes(topic)?, &sig)
        .map_err(|_| SignError::BadSignature)
}

/// Like [`verify`], accepting a signature by any of `keys` (during a key rotation both
/// the old and the new key are valid for a while).
pub fn verify_any(env: &Envelope, topic: &str, keys: &[VerifyingKey]) -> Result<(), SignError> {
    let mut last = SignError::BadSignature;
    for k in keys {
        match verify(env, topic, k) {
            Ok(()) => return Ok(()),
            Err(e @ (SignError::Unsigned | SignError::MalformedSignature)) => return Err(e),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// A public key from its 32 raw bytes.
pub fn verifying_key(bytes: &[u8]) -> Result<VerifyingKey, SignError> {
    let b: [u8; KEY_BYTES] = bytes.try_into().map_err(|_| SignError::BadKey)?;
    VerifyingKey::from_bytes(&b).map_err(|_| SignError::BadKey)
}

/// What a receiver makes of a verified envelope's `seq` and `sent_at_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    /// Newer than anything accepted from this sender, and within the time window.
    Fresh,
    /// Exactly the last accepted message again: a retained message redelivered, or a
    /// QoS 1 duplicate. Not an attack; ignore it quietly.
    Duplicate,
    /// Older than the last accepted message.
    Replayed { last: u64 },
    /// `sent_at_ms` is further than the window from the receiver's clock.
    Stale { skew_ms: i64 },
}

/// The replay rule: `seq` must be above the last accepted one (`last`, `None` for a
/// sender never heard from), and `sent_at_ms` within `window_ms` of `now_ms`. `now_ms`
/// is `None` when the receiver's clock is known to be wrong (a device without a
/// real-time clock before it learned the time): then only the sequence number counts.
pub fn check_fresh(
    last: Option<u64>,
    seq: u64,
    sent_at_ms: u64,
    now_ms: Option<u64>,
    window_ms: u64,
) -> Freshness {
    if let Some(last) = last {
        if seq == last {
            return Freshness::Duplicate;
        }
        if seq < last {
            return Freshness::Replayed { last };
        }
    }
    if let Some(now) = now_ms {
        let skew = sent_at_ms as i128 - now as i128;
        if skew.unsigned_abs() > u128::from(window_ms) {
            let skew_ms = skew.clamp(i64::MIN as i128, i64::MAX as i128) as i64;
            return Freshness::Stale { skew_ms };
        }
    }
    Freshness::Fresh
}

/// How far ahead a sender reserves sequence numbers: one persisted write per this many
/// numbers (with clock-derived numbers, about an hour of microseconds).
pub const SEQ_RESERVATION: u64 = 1 << 32;

/// A sender's sequence numbers: strictly increasing across restarts, with one durable
/// write per [`SEQ_RESERVATION`] numbers.
///
/// Numbers follow the clock in microseconds where it is ahead (so a sender that lost its
/// state still starts above what it sent before, if its clock is right), and never go
/// below `reserved`, the persisted high-water mark, so a clock that jumps back cannot make
/// them repeat. Before a number at or above the reservation is used, the new reservation
/// [`SeqCounter::next`] returns must be persisted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeqCounter {
    last: u64,
    reserved: u64,
}

impl SeqCounter {
    /// Resumes after a restart from the persisted reservation (0 if none).
    pub fn resume(reserved: u64) -> Self {
        Self {
            last: reserved,
            reserved,
        }
    }

    /// The next number, and `Some(reservation)` when a new reservation must be persisted
    /// before the number is sent.
    pub fn next(&mut self, now_micros: u64) -> (u64, Option<u64>) {
        let seq = self.last.saturating_add(1).max(now_micros);
        self.last = seq;
        if seq >= self.reserved {
            self.reserved = seq.saturating_add(SEQ_RESERVATION);
            return (seq, Some(self.reserved));
        }
        (seq, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Body, Heartbeat, NodeName, Sender};

    fn key(b: u8) -> SigningKey {
        SigningKey::from_bytes(&[b; 32])
    }

    fn hb(node: &str, seq: u64) -> Envelope {
        let mut e = Envelope::new(
            Sender::Node(NodeName::new(node).unwrap()),
            seq,
            Body::Heartbeat(Heartbeat {
                applied_generation: 3,
                status_digest: 4,
                ..Default::default()
            }),
        );
        e.sent_at_ms = 1_700_000_000_000;
        e
    }

    const T: &str = "baton/v1/nodes/pi-1/up/heartbeat";

    #[test]
    fn signed_envelopes_verify_and_survive_encoding() {
        let k = key(1);
        let mut e = hb("pi-1", 7);
        sign(&mut e, T, &k).unwrap();
        assert_eq!(e.signature.len(), SIGNATURE_BYTES);
        let back = Envelope::decode(&e.encode().unwrap()).unwrap();
        verify(&back, T, &k.verifying_key()).unwrap();
        verify_any(&back, T, &[key(2).verifying_key(), k.verifying_key()]).unwrap();
    }

    #[test]
    fn anything_changed_breaks_the_signature() {
        let k = key(1);
        let vk = k.verifying_key();
        let mut e = hb("pi-1", 7);
        sign(&mut e, T, &k).unwrap();
        // Another topic (another node's), another key, a changed field, a flipped bit.
        assert_eq!(
            verify(&e, "baton/v1/nodes/pi-2/up/heartbeat", &vk),
            Err(SignError::BadSignature)
        );
        assert_eq!(
            verify(&e, T, &key(2).verifying_key()),
            Err(SignError::BadSignature)
        );
        let mut later = e.clone();
        later.seq += 1;
        assert_eq!(verify(&later, T, &vk), Err(SignError::BadSignature));
        let mut moved = e.clone();
        moved.sent_at_ms += 1;
        assert_eq!(verify(&moved, T, &vk), Err(SignError::BadSignature));
        let mut flipped = e.clone();
        let mut sig = flipped.signature.clone().into_vec();
        sig[10] ^= 1;
        flipped.signature = BVec::from_vec(sig).unwrap();
        assert_eq!(verify(&flipped, T, &vk), Err(SignError::BadSignature));
        let mut short = e.clone();
        short.signature = BVec::from_vec(vec![1; 63]).unwrap();
        assert_eq!(verify(&short, T, &vk), Err(SignError::MalformedSignature));
        let unsigned = hb("pi-1", 7);
        assert_eq!(verify(&unsigned, T, &vk), Err(SignError::Unsigned));
        assert_eq!(verify_any(&unsigned, T, &[vk]), Err(SignError::Unsigned));
        assert_eq!(verifying_key(&[0; 31]), Err(SignError::BadKey));
    }

    #[test]
    fn replay_rule() {
        let w = 600_000;
        let now = Some(1_000_000_000);
        use Freshness::*;
        type Case = (Option<u64>, u64, u64, Option<u64>, Freshness);
        let cases: &[Case] = &[
            (None, 1, 1_000_000_000, now, Fresh),
            (Some(5), 6, 1_000_000_000, now, Fresh),
            (Some(5), 5, 1_000_000_000, now, Duplicate),
            (Some(5), 4, 1_000_000_000, now, Replayed { last: 5 }),
            (Some(5), 6, 1_000_000_000 - w, now, Fresh),
            (
                Some(5),
                6,
                1_000_000_000 - w - 1,
                now,
                Stale { skew_ms: -600_001 },
            ),
            (
                Some(5),
                6,
                1_000_000_000 + w + 1,
                now,
                Stale { skew_ms: 600_001 },
            ),
            // An unset clock judges by sequence only.
            (Some(5), 6, 0, None, Fresh),
            (Some(5), 4, 0, None, Replayed { last: 5 }),
            (None, 1, u64::MAX, now, Stale { skew_ms: i64::MAX }),
        ];
        for (i, (last, seq, at, now, want)) in cases.iter().enumerate() {
            assert_eq!(check_fresh(*last, *seq, *at, *now, w), *want, "case {i}");
        }
    }

    #[test]
    fn sequence_numbers_grow_across_restarts_and_clock_jumps() {
        let mut c = SeqCounter::resume(0);
        let (a, r) = c.next(1_000);
        assert_eq!(a, 1_000);
        let reserved = r.unwrap();
        assert_eq!(reserved, 1_000 + SEQ_RESERVATION);
        // The clock stands still or goes back: numbers still grow, no new reservation.
        assert_eq!(c.next(1_000), (1_001, None));
        assert_eq!(c.next(5), (1_002, None));
        // Restart with the clock set back: starts at the reservation, and reserves anew.
        let mut c = SeqCounter::resume(reserved);
        let (b, r) = c.next(1);
        assert!(b >= reserved && b > 1_002);
        assert_eq!(r, Some(b + SEQ_RESERVATION));
        // The clock jumps far ahead: numbers follow it.
        assert_eq!(c.next(b + SEQ_RESERVATION * 3).0, b + SEQ_RESERVATION * 3);
    }
}
