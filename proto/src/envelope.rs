use serde::{Deserialize, Serialize};

use crate::{
    BVec, Body, NodeName, ProtoError, MAX_MESSAGE_BYTES, MIN_PROTO_VERSION, PROTO_VERSION,
};

/// Who sent an envelope. Agents may only send as the node named in their topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Sender {
    Coordinator,
    Node(NodeName),
}

/// The unit of every MQTT payload.
///
/// `seq` grows strictly per sender, across restarts (senders persist it or derive it from
/// the clock), so a receiver that remembers the last `seq` it accepted from a sender can
/// refuse replays. `sent_at_ms` (Unix milliseconds, sender clock) bounds how old a message
/// may be. `signature` is an Ed25519 signature over [`Envelope::signing_bytes`]; empty
/// only where signing is off (un-enrolled development fleets).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    pub proto_version: u16,
    pub sender: Sender,
    pub seq: u64,
    pub sent_at_ms: u64,
    pub body: Body,
    pub signature: BVec<u8, 128>,
}

/// Prefixes every signed byte string, so a Baton signature can never be mistaken for a
/// signature over anything else made with the same key.
pub const SIGNING_CONTEXT: &[u8] = b"baton-envelope-v2\0";

impl Envelope {
    pub fn new(sender: Sender, seq: u64, body: Body) -> Self {
        Self {
            proto_version: PROTO_VERSION,
            sender,
            seq,
            sent_at_ms: 0,
            body,
            signature: BVec::new(),
        }
    }

    /// The same envelope as protocol `version` has it, for a peer that speaks no newer one.
    /// Refused when this build cannot write `version` or the body is newer than it.
    pub fn at_version(mut self, version: u16) -> Result<Self, ProtoError> {
        if !(MIN_PROTO_VERSION..=PROTO_VERSION).contains(&version) {
            return Err(ProtoError::UnsupportedVersion { got: version });
        }
        let needs = self.body.min_version();
        if needs > version {
            return Err(ProtoError::BodyTooNew { version, needs });
        }
        self.proto_version = version;
        Ok(self)
    }

    /// What the signature covers: [`SIGNING_CONTEXT`], the MQTT topic (so a message cannot
    /// be moved to another node's topic), then the envelope encoded with an empty signature.
    pub fn signing_bytes(&self, topic: &str) -> Result<Vec<u8>, ProtoError> {
        let unsigned = Envelope {
            signature: BVec::new(),
            ..self.clone()
        };
        let body = crate::wire::at(self.proto_version, || postcard::to_allocvec(&unsigned))
            .map_err(ProtoError::Encode)?;
        let mut out = Vec::with_capacity(SIGNING_CONTEXT.len() + topic.len() + 1 + body.len());
        out.extend_from_slice(SIGNING_CONTEXT);
        out.extend_from_slice(topic.as_bytes());
        out.push(0);
        out.extend_from_slice(&body);
        Ok(out)
    }

    pub fn encode(&self) -> Result<Vec<u8>, ProtoError> {
        let bytes = crate::wire::at(self.proto_version, || postcard::to_allocvec(self))
            .map_err(ProtoError::Encode)?;
        if bytes.len() > MAX_MESSAGE_BYTES {
            return Err(ProtoError::TooLarge {
                len: bytes.len(),
                max: MAX_MESSAGE_BYTES,
            });
        }
        Ok(bytes)
    }

    /// The version an encoded envelope claims, read without decoding the rest.
    pub fn peek_version(bytes: &[u8]) -> Option<u16> {
        postcard::take_from_bytes::<u16>(bytes).ok().map(|(v, _)| v)
    }

    /// Decodes one envelope. Never panics; refuses oversized input before parsing, an
    /// unknown version before looking at the body, and any trailing garbage.
    pub fn decode(bytes: &[u8]) -> Result<Self, ProtoError> {
        if bytes.len() > MAX_MESSAGE_BYTES {
            return Err(ProtoError::TooLarge {
                len: bytes.len(),
                max: MAX_MESSAGE_BYTES,
            });
        }
        let (version, _) = postcard::take_from_bytes::<u16>(bytes).map_err(ProtoError::Decode)?;
        if !(MIN_PROTO_VERSION..=PROTO_VERSION).contains(&version) {
            return Err(ProtoError::UnsupportedVersion { got: version });
        }
        let (env, rest) = crate::wire::at(version, || postcard::take_from_bytes::<Envelope>(bytes))
            .map_err(ProtoError::Decode)?;
        if !rest.is_empty() {
            return Err(ProtoError::TrailingBytes {
                trailing: rest.len(),
            });
        }
        // Every message of an older version encodes as it did then (variants are only
        // appended), so one decoder reads them all; only a newer message is refused.
        let needs = env.body.min_version();
        if needs > version {
            return Err(ProtoError::BodyTooNew { version, needs });
        }
        Ok(env)
    }
}
