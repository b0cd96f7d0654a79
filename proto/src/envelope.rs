use serde::{Deserialize, Serialize};

use crate::{BVec, Body, NodeName, ProtoError, MAX_MESSAGE_BYTES, PROTO_VERSION};

/// Who sent an envelope. Agents may only send as the node named in their topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Sender {
    Coordinator,
    Node(NodeName),
}

/// The unit of every MQTT payload.
///
/// `seq` increases by one per message from a sender within one process lifetime, which
/// makes loss and reordering visible in logs; replay protection builds on it later.
/// `signature` is empty today. It is reserved for a signature over the encoding of the
/// other four fields, so adding signing does not change this layout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    pub proto_version: u16,
    pub sender: Sender,
    pub seq: u64,
    pub body: Body,
    pub signature: BVec<u8, 128>,
}

impl Envelope {
    pub fn new(sender: Sender, seq: u64, body: Body) -> Self {
        Self {
            proto_version: PROTO_VERSION,
            sender,
            seq,
            body,
            signature: BVec::new(),
        }
    }

    pub fn encode(&self) -> Result<Vec<u8>, ProtoError> {
        let bytes = postcard::to_allocvec(self).map_err(ProtoError::Encode)?;
        if bytes.len() > MAX_MESSAGE_BYTES {
            return Err(ProtoError::TooLarge {
                len: bytes.len(),
                max: MAX_MESSAGE_BYTES,
            });
        }
        Ok(bytes)
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
        if version != PROTO_VERSION {
            return Err(ProtoError::UnsupportedVersion { got: version });
        }
        let (env, rest) =
            postcard::take_from_bytes::<Envelope>(bytes).map_err(ProtoError::Decode)?;
        if !rest.is_empty() {
            return Err(ProtoError::TrailingBytes {
                trailing: rest.len(),
            });
        }
        Ok(env)
    }
}
