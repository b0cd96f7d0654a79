//! Event recording: events are collected during a transaction and kept, bounded to
//! [`MAX_EVENTS`](super::MAX_EVENTS) and [`EVENT_TTL`], once it commits.

use std::time::{Duration, SystemTime};

use crate::model::api;

use super::Core;

impl Core {
    pub(super) fn record(&mut self, object: String, reason: &str, message: String) {
        tracing::info!(%object, reason, %message, "event");
        self.new_events.push(api::Event {
            object,
            reason: reason.to_owned(),
            message,
            timestamp: api::now_rfc3339(),
            namespace: None,
        });
    }

    /// How many of the oldest events are older than [`EVENT_TTL`] (to drop at the next
    /// commit; a tick commits when there are some, so an idle coordinator drops them too).
    pub(super) fn expired_events(&self) -> usize {
        let now = SystemTime::now();
        self.events
            .iter()
            .take_while(|(_, e)| {
                humantime::parse_rfc3339(&e.timestamp)
                    .ok()
                    .and_then(|at| now.duration_since(at).ok())
                    .is_some_and(|age| age > EVENT_TTL)
            })
            .count()
    }

    pub(super) fn events_of(&self, object: Option<&str>) -> Vec<api::Event> {
        self.events
            .iter()
            .map(|(_, e)| e)
            .filter(|e| object.is_none_or(|o| e.object == o))
            .cloned()
            .collect()
    }
}

/// How long an event is kept, as Kubernetes' default `--event-ttl`.
pub const EVENT_TTL: Duration = Duration::from_secs(3600);

pub(super) fn event_key(seq: u64) -> String {
    format!("{seq:020}")
}
