//! Prometheus metrics of the coordinator, served at `/metrics` (`routes::Metrics`, any token:
//! the read-only role is enough) in the OpenMetrics text format of `prometheus-client`.
//!
//! Two sources, one scrape:
//! - [`Metrics`] holds what only the moment of an event knows: MQTT messages and bytes by
//!   direction and type (the bus), the pod start latency and the store's commit latency (the
//!   core). It is shared (`Arc`) and costs an atomic add per event.
//! - What the state already says (nodes by state, pods by phase, container restarts, rollout
//!   progress) is not kept twice: at each scrape the core answers a [`Fleet`] snapshot
//!   (`fleet::snapshot`, pure), and the security gate its rejection counts; [`Metrics::render`]
//!   writes both with the event metrics into one fresh registry.
//!
//! Names follow Prometheus' rules: the `baton_` prefix, base units (seconds, bytes) in the
//! name, `_total` on counters (added by the encoder).

use std::collections::BTreeMap;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

pub mod fleet;

pub use fleet::{snapshot, Fleet};

/// Which way an MQTT message went, seen from the coordinator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// From a node (or rejected on the way in).
    In,
    /// To a node.
    Out,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct MessageLabels {
    direction: &'static str,
    /// The message's `Body` variant, or `rejected` for what the security gate refused.
    r#type: &'static str,
}

/// The event metrics (see the module docs).
#[derive(Debug, Clone)]
pub struct Metrics {
    messages: Family<MessageLabels, Counter>,
    bytes: Family<MessageLabels, Counter>,
    pod_start: Histogram,
    commit: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            messages: Family::default(),
            bytes: Family::default(),
            // 0.25 s .. ~17 min: a pod on a board with an image pull takes tens of seconds.
            pod_start: Histogram::new(exponential_buckets(0.25, 2.0, 13)),
            // 0.5 ms .. ~2 s: a redb commit with fsync on an SD card is milliseconds.
            commit: Histogram::new(exponential_buckets(0.0005, 2.0, 13)),
        }
    }
}

impl Metrics {
    /// One MQTT message of `body_type` (`Body::name`, or `rejected`) and its payload size.
    pub fn message(&self, direction: Direction, body_type: &'static str, bytes: usize) {
        let labels = MessageLabels {
            direction: match direction {
                Direction::In => "in",
                Direction::Out => "out",
            },
            r#type: body_type,
        };
        self.messages.get_or_create(&labels).inc();
        self.bytes.get_or_create(&labels).inc_by(bytes as u64);
    }

    /// A pod reached Running for the first time, `after` its creation.
    pub fn pod_started(&self, after: Duration) {
        self.pod_start.observe(after.as_secs_f64());
    }

    /// The store committed one batch in `took`.
    pub fn committed(&self, took: Duration) {
        self.commit.observe(took.as_secs_f64());
    }

    /// The whole exposition: these metrics, the `fleet` snapshot and the security gate's
    /// rejection counts by reason.
    pub fn render(&self, fleet: &Fleet, rejections: &BTreeMap<String, u64>) -> String {
        let mut reg = Registry::with_prefix("baton");
        reg.register(
            "mqtt_messages",
            "MQTT messages by direction and type",
            self.messages.clone(),
        );
        reg.register_with_unit(
            "mqtt_payload",
            "MQTT payload bytes by direction and type",
            Unit::Bytes,
            self.bytes.clone(),
        );
        reg.register_with_unit(
            "pod_start_duration",
            "Time from a pod's creation to its first Running report",
            Unit::Seconds,
            self.pod_start.clone(),
        );
        reg.register_with_unit(
            "store_commit_duration",
            "Time of one atomic commit of the coordinator's store",
            Unit::Seconds,
            self.commit.clone(),
        );
        fleet.register(&mut reg);

        let by_reason = Family::<[(&'static str, String); 1], Counter>::default();
        for (reason, n) in rejections {
            by_reason
                .get_or_create(&[("reason", reason.clone())])
                .inc_by(*n);
        }
        reg.register(
            "security_rejections",
            "Inbound messages the security gate refused, by reason",
            by_reason,
        );

        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &reg);
        out
    }
}

/// A gauge family of one label, filled from `(value of the label, number)` pairs.
fn gauges<'a>(
    label: &'static str,
    values: impl IntoIterator<Item = (&'a String, &'a u64)>,
) -> Family<[(&'static str, String); 1], Gauge> {
    let family = Family::<[(&'static str, String); 1], Gauge>::default();
    for (v, n) in values {
        family
            .get_or_create(&[(label, v.clone())])
            .set(i64::try_from(*n).unwrap_or(i64::MAX));
    }
    family
}

#[cfg(test)]
mod tests;
