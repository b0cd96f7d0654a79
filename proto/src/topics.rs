//! MQTT topic names, defined here and nowhere else.
//!
//! Every topic lives under [`PREFIX`] and names exactly one node, split by direction so a
//! broker ACL can grant a device `baton/v1/nodes/<its name>/#` and nothing more:
//!
//! ```text
//! baton/v1/nodes/<node>/up/{hello,heartbeat,status,offline,update}   agent -> coordinator
//! baton/v1/nodes/<node>/up/logs/<session>                           agent -> coordinator
//! baton/v1/nodes/<node>/up/exec/<session>                           agent -> coordinator
//! baton/v1/nodes/<node>/down/{desired,control,update}                coordinator -> agent
//! ```

use crate::{Body, NodeName};

pub const PREFIX: &str = "baton/v1";

/// What the coordinator subscribes to: every node's upward topics.
pub const COORDINATOR_FILTER: &str = "baton/v1/nodes/+/up/#";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Up {
    Hello,
    Heartbeat,
    Status,
    Offline,
    /// Progress of an agent update (v5).
    Update,
    /// A log session's chunks (v5): `up/logs/<session>`, one topic per session.
    Logs,
    /// An exec session's output and exit (v5): `up/exec/<session>`, one topic per session.
    Exec,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Down {
    /// Retained: the broker hands the latest desired state to a reconnecting agent.
    Desired,
    Control,
    /// Retained: the agent release this node should run (v5).
    Update,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Up(Up),
    Down(Down),
}

impl Kind {
    fn leaf(self) -> &'static str {
        match self {
            Kind::Up(Up::Hello) => "up/hello",
            Kind::Up(Up::Heartbeat) => "up/heartbeat",
            Kind::Up(Up::Status) => "up/status",
            Kind::Up(Up::Offline) => "up/offline",
            Kind::Down(Down::Desired) => "down/desired",
            Kind::Down(Down::Control) => "down/control",
            Kind::Up(Up::Update) => "up/update",
            Kind::Down(Down::Update) => "down/update",
            Kind::Up(Up::Logs) => "up/logs",
            Kind::Up(Up::Exec) => "up/exec",
        }
    }

    /// The one topic kind each body may travel on.
    pub fn of(body: &Body) -> Kind {
        match body {
            // The link profile belongs to the Hello it follows (and needs no new topic in
            // brokers' ACLs).
            Body::Hello(_) | Body::Link(_) => Kind::Up(Up::Hello),
            Body::Heartbeat(_) => Kind::Up(Up::Heartbeat),
            Body::Status(_) | Body::Usage(_) | Body::CronRuns(_) => Kind::Up(Up::Status),
            Body::Offline => Kind::Up(Up::Offline),
            Body::Desired(_) => Kind::Down(Down::Desired),
            Body::StatusRequest
            | Body::RotateKey
            | Body::LogRequest(_)
            | Body::LogCredit(_)
            | Body::ConfigMapPart(_)
            | Body::ExecRequest(_)
            | Body::ExecInput(_)
            | Body::ServiceTable(_) => Kind::Down(Down::Control),
            Body::LogChunk(_) => Kind::Up(Up::Logs),
            Body::ExecOutput(_) | Body::ExecExit(_) => Kind::Up(Up::Exec),
            Body::AgentUpdate(_) => Kind::Down(Down::Update),
            Body::UpdateReport(_) => Kind::Up(Up::Update),
        }
    }
}

pub fn topic(node: &NodeName, kind: Kind) -> String {
    format!("{PREFIX}/nodes/{node}/{}", kind.leaf())
}

/// The topic `body` travels on from or to `node`: [`topic`] of its kind, except that a
/// log chunk goes on its session's own topic, `up/logs/<session in hex>`. The topic is
/// signed, so a chunk cannot be replayed into another session.
pub fn topic_for(node: &NodeName, body: &Body) -> String {
    match body {
        Body::LogChunk(c) => log_topic(node, c.session),
        Body::ExecOutput(o) => exec_topic(node, o.session),
        Body::ExecExit(e) => exec_topic(node, e.session),
        b => topic(node, Kind::of(b)),
    }
}

/// A log session's topic (see [`topic_for`]).
pub fn log_topic(node: &NodeName, session: u64) -> String {
    format!("{PREFIX}/nodes/{node}/up/logs/{session:x}")
}

/// An exec session's topic (see [`topic_for`]).
pub fn exec_topic(node: &NodeName, session: u64) -> String {
    format!("{PREFIX}/nodes/{node}/up/exec/{session:x}")
}

/// The session a log topic names (`None`: not a log topic).
pub fn log_session(topic: &str) -> Option<u64> {
    session_of(topic, "up/logs/")
}

/// The session an exec topic names (`None`: not an exec topic).
pub fn exec_session(topic: &str) -> Option<u64> {
    session_of(topic, "up/exec/")
}

fn session_of(topic: &str, leaf_prefix: &str) -> Option<u64> {
    let rest = topic.strip_prefix(PREFIX)?.strip_prefix("/nodes/")?;
    let (_, leaf) = rest.split_once('/')?;
    let hex = leaf.strip_prefix(leaf_prefix)?;
    if hex.is_empty() || hex.len() > 16 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u64::from_str_radix(hex, 16).ok()
}

/// What an agent subscribes to: its own downward topics.
pub fn agent_filter(node: &NodeName) -> String {
    format!("{PREFIX}/nodes/{node}/down/#")
}

/// Splits a concrete topic into its node and kind; `None` for anything not ours.
pub fn parse(topic: &str) -> Option<(NodeName, Kind)> {
    let rest = topic.strip_prefix(PREFIX)?.strip_prefix("/nodes/")?;
    let (node, leaf) = rest.split_once('/')?;
    if log_session(topic).is_some() {
        return Some((NodeName::new(node).ok()?, Kind::Up(Up::Logs)));
    }
    if exec_session(topic).is_some() {
        return Some((NodeName::new(node).ok()?, Kind::Up(Up::Exec)));
    }
    let kind = [
        Kind::Up(Up::Hello),
        Kind::Up(Up::Heartbeat),
        Kind::Up(Up::Status),
        Kind::Up(Up::Offline),
        Kind::Up(Up::Update),
        Kind::Down(Down::Desired),
        Kind::Down(Down::Control),
        Kind::Down(Down::Update),
    ]
    .into_iter()
    .find(|k| k.leaf() == leaf)?;
    Some((NodeName::new(node).ok()?, kind))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_round_trip() {
        let n = NodeName::new("pi-7").unwrap();
        for k in [
            Kind::Up(Up::Hello),
            Kind::Up(Up::Offline),
            Kind::Up(Up::Update),
            Kind::Down(Down::Desired),
            Kind::Down(Down::Update),
        ] {
            let t = topic(&n, k);
            assert_eq!(parse(&t), Some((n.clone(), k)));
        }
        assert_eq!(
            topic(&n, Kind::Up(Up::Heartbeat)),
            "baton/v1/nodes/pi-7/up/heartbeat"
        );
        assert_eq!(agent_filter(&n), "baton/v1/nodes/pi-7/down/#");
    }

    #[test]
    fn log_sessions_have_their_own_topics() {
        let n = NodeName::new("pi-7").unwrap();
        let t = log_topic(&n, 0xbeef);
        assert_eq!(t, "baton/v1/nodes/pi-7/up/logs/beef");
        assert_eq!(parse(&t), Some((n.clone(), Kind::Up(Up::Logs))));
        assert_eq!(log_session(&t), Some(0xbeef));
        for bad in [
            "up/logs",
            "up/logs/",
            "up/logs/xyz",
            "up/logs/11111111111111111",
        ] {
            let t = format!("baton/v1/nodes/pi-7/{bad}");
            assert_eq!(parse(&t), None, "{t}");
        }
    }

    #[test]
    fn exec_sessions_have_their_own_topics() {
        let n = NodeName::new("pi-7").unwrap();
        let t = exec_topic(&n, 0xbeef);
        assert_eq!(t, "baton/v1/nodes/pi-7/up/exec/beef");
        assert_eq!(parse(&t), Some((n.clone(), Kind::Up(Up::Exec))));
        assert_eq!((exec_session(&t), log_session(&t)), (Some(0xbeef), None));
        for bad in ["up/exec", "up/exec/", "up/exec/xyz"] {
            let t = format!("baton/v1/nodes/pi-7/{bad}");
            assert_eq!(parse(&t), None, "{t}");
        }
    }

    #[test]
    fn foreign_topics_are_not_ours() {
        for t in [
            "baton/v2/nodes/a/up/hello",
            "baton/v1/nodes/a/up/nope",
            "baton/v1/nodes/+/up/hello",
            "x",
        ] {
            assert_eq!(parse(t), None, "{t}");
        }
    }
}
