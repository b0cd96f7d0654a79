//! Watches (`routes::Watch`): a stream of changes to one kind of object, or to events, as
//! JSON lines. Each change has its own resource version, increasing; a client that lost its
//! stream asks again from the last one it received and gets exactly what it missed, or 410
//! Gone when the coordinator no longer remembers that far back (or restarted) and it must
//! list again.

use serde::{Deserialize, Serialize};

use super::body::ApiObject;
use super::payload::ResponseBody;
use crate::model::api;

/// What happened to the object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Change {
    Added,
    Modified,
    Deleted,
}

/// One change, one line of a watch stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WatchEvent {
    #[serde(rename = "type")]
    pub change: Change,
    pub resource_version: u64,
    /// `node`, `pod`, ... (`ResourceKind::as_str`) or `event`.
    pub kind: String,
    pub name: String,
    /// The object after the change; absent when it was deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object: Option<ApiObject>,
    /// For `kind: event`: the event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<api::Event>,
    /// A namespaced object's namespace, so that a deletion (which carries no object) can
    /// be told apart from a same-named object's in another namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

impl WatchEvent {
    /// The namespace the change is in: a namespaced object's, an event's object's
    /// (`default` for an event about a cluster-scoped object, as in Kubernetes); `None`
    /// for a cluster-scoped object. A deletion carries no object: its own `namespace`
    /// says.
    pub fn in_namespace(&self) -> Option<&str> {
        match (&self.object, &self.event) {
            (_, Some(e)) => Some(e.namespace.as_deref().unwrap_or(api::DEFAULT_NAMESPACE)),
            (Some(o), None) => o.namespace(),
            (None, None) => self.namespace.as_deref(),
        }
    }
}

/// A watch stream's body: the changes so far, one JSON document per line.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WatchLines(pub Vec<WatchEvent>);

impl WatchLines {
    /// One line of the stream.
    pub fn parse_line(line: &[u8]) -> Result<WatchEvent, serde_json::Error> {
        serde_json::from_slice(line)
    }
}

impl ResponseBody for WatchLines {
    fn parse(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        bytes
            .split(|b| *b == b'\n')
            .filter(|l| !l.iter().all(u8::is_ascii_whitespace))
            .map(WatchLines::parse_line)
            .collect::<Result<_, _>>()
            .map(WatchLines)
    }
}
