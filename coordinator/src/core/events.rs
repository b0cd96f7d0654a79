//! Event recording: events are collected during a transaction and kept, bounded to
//! [`MAX_EVENTS`](super::MAX_EVENTS), once it commits.

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
        });
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

pub(super) fn event_key(seq: u64) -> String {
    format!("{seq:020}")
}
