//! The layout checks every inbound MQTT message passes first, before the gate
//! ([`crate::security::gate`]) looks at its signature: the payload must decode as an
//! [`Envelope`] (size, version and layout are checked by the decoder), the topic must name
//! a node and an upward kind, the body must be the kind the topic says, and the envelope's
//! sender must be the node the topic names.

use baton_proto::topics::{self, Kind};
use baton_proto::{Envelope, NodeName, Sender};

/// Why an inbound message was dropped.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum Rejected {
    #[error("topic is not a baton node topic")]
    Topic,
    #[error("topic is a downward topic")]
    Direction,
    #[error("{0}")]
    Decode(#[from] baton_proto::ProtoError),
    #[error("body kind does not match the topic")]
    KindMismatch,
    #[error("sender {sender:?} does not match the topic's node")]
    SenderMismatch { sender: Sender },
}

/// The layout checks (topic, direction, decoding, kind, sender), keeping the whole
/// envelope for the signature and replay checks of the gate.
pub fn check_envelope(topic: &str, payload: &[u8]) -> Result<(NodeName, Envelope), Rejected> {
    let (node, kind) = topics::parse(topic).ok_or(Rejected::Topic)?;
    if !matches!(kind, Kind::Up(_)) {
        return Err(Rejected::Direction);
    }
    let env = Envelope::decode(payload)?;
    if Kind::of(&env.body) != kind {
        return Err(Rejected::KindMismatch);
    }
    // A log chunk travels on its own session's topic and no other.
    if let baton_proto::Body::LogChunk(c) = &env.body {
        if topics::log_session(topic) != Some(c.session) {
            return Err(Rejected::KindMismatch);
        }
    }
    // So does an exec session's output and exit.
    let exec_session = match &env.body {
        baton_proto::Body::ExecOutput(o) => Some(o.session),
        baton_proto::Body::ExecExit(e) => Some(e.session),
        _ => None,
    };
    if exec_session.is_some() && topics::exec_session(topic) != exec_session {
        return Err(Rejected::KindMismatch);
    }
    if env.sender != Sender::Node(node.clone()) {
        return Err(Rejected::SenderMismatch { sender: env.sender });
    }
    Ok((node, env))
}

#[cfg(test)]
mod tests {
    use super::*;
    use baton_proto::{Body, Heartbeat};

    fn node(n: &str) -> NodeName {
        NodeName::new(n).unwrap()
    }

    fn hb() -> Body {
        Body::Heartbeat(Heartbeat {
            applied_generation: 1,
            status_digest: 2,
            ..Default::default()
        })
    }

    /// The checks, without the envelope's other fields.
    fn check_inbound(topic: &str, payload: &[u8]) -> Result<(NodeName, Body), Rejected> {
        check_envelope(topic, payload).map(|(node, env)| (node, env.body))
    }

    #[test]
    fn accepts_a_well_formed_message() {
        let bytes = Envelope::new(Sender::Node(node("pi-1")), 1, hb())
            .encode()
            .unwrap();
        let got = check_inbound("baton/v1/nodes/pi-1/up/heartbeat", &bytes).unwrap();
        assert_eq!(got, (node("pi-1"), hb()));
    }

    #[test]
    fn rejects_what_an_agent_must_not_send() {
        let good = Envelope::new(Sender::Node(node("pi-1")), 1, hb())
            .encode()
            .unwrap();
        let spoofed = Envelope::new(Sender::Node(node("pi-2")), 1, hb())
            .encode()
            .unwrap();
        let as_coord = Envelope::new(Sender::Coordinator, 1, hb())
            .encode()
            .unwrap();
        let mut bad_version = good.clone();
        bad_version[0] = 99;
        type Case<'a> = (&'a str, Vec<u8>, fn(&Rejected) -> bool);
        let cases: Vec<Case> = vec![
            ("baton/v1/nodes/pi-1/up/status", good.clone(), |r| {
                *r == Rejected::KindMismatch
            }),
            ("baton/v1/nodes/pi-1/down/desired", good.clone(), |r| {
                *r == Rejected::Direction
            }),
            ("other/topic", good.clone(), |r| *r == Rejected::Topic),
            ("baton/v1/nodes/pi-1/up/heartbeat", spoofed, |r| {
                matches!(r, Rejected::SenderMismatch { .. })
            }),
            ("baton/v1/nodes/pi-1/up/heartbeat", as_coord, |r| {
                matches!(r, Rejected::SenderMismatch { .. })
            }),
            (
                "baton/v1/nodes/pi-1/up/heartbeat",
                vec![1, 0xff, 0xff, 0xff],
                |r| matches!(r, Rejected::Decode(_)),
            ),
            ("baton/v1/nodes/pi-1/up/heartbeat", bad_version, |r| {
                matches!(r, Rejected::Decode(_))
            }),
            (
                "baton/v1/nodes/pi-1/up/heartbeat",
                vec![0; baton_proto::MAX_MESSAGE_BYTES + 1],
                |r| {
                    matches!(
                        r,
                        Rejected::Decode(baton_proto::ProtoError::TooLarge { .. })
                    )
                },
            ),
        ];
        for (topic, payload, want) in cases {
            let r = check_inbound(topic, &payload).unwrap_err();
            assert!(want(&r), "{topic}: {r:?}");
        }
    }
}
