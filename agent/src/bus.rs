//! The agent's MQTT bridge: one producer of node-loop events, one consumer of bodies to
//! send. The node loop never sees MQTT, so its tests drive it with plain channels.
//!
//! Reconnects forever with capped backoff (a device may be offline for days) and never
//! touches running pods when it does. While disconnected, `publish` drops messages rather
//! than queueing them: the protocol is level-triggered, and on reconnect the node loop
//! sends one Hello and one full Status, which supersede anything that was dropped.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use baton_proto::topics::{self, Down, Kind};
use baton_proto::{Body, DesiredState, Envelope, NodeName, Sender, MAX_MESSAGE_BYTES};
use rumqttc::{
    AsyncClient, Event, LastWill, MqttOptions, Packet, QoS, TlsConfiguration, Transport,
};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::identity::AgentSecurity;
use crate::mqtt_tls::{MqttTls, MqttTlsError};

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// The broker address did not parse; the text says why.
    #[error("{0}")]
    BadUrl(String),
    #[error("cannot encode message: {0}")]
    Encode(#[from] baton_proto::ProtoError),
    #[error("not connected to the broker")]
    Disconnected,
    #[error("mqtt client queue is full")]
    Full,
    #[error("the broker url {0} asks for TLS (mqtts://) but no CA, client certificate and key were given")]
    TlsMissing(String),
    #[error("a CA, client certificate and key were given but the broker url {0} is not mqtts://")]
    TlsUnused(String),
    #[error(transparent)]
    Tls(#[from] MqttTlsError),
    #[error("cannot sign a message: {0}")]
    Sign(String),
}

/// The last will, signed now with a fresh seq (see docs/security.md).
fn signed_will(sec: &AgentSecurity) -> Result<LastWill, BusError> {
    let (topic, payload) = sec.last_will().map_err(|e| BusError::Sign(e.to_string()))?;
    Ok(LastWill::new(topic, payload, QoS::AtLeastOnce, false))
}

#[derive(Debug)]
pub enum BusEvent {
    Connected,
    Disconnected,
    Desired(DesiredState),
    StatusRequest,
}

/// Parses the broker address (`mqtt://host:port` or `mqtts://host:port`); the format is
/// defined in [`baton_proto::broker`], shared with the coordinator.
pub fn parse_url(url: &str) -> Result<(String, u16), BusError> {
    baton_proto::broker::parse_broker_url(url).map_err(|e| BusError::BadUrl(e.to_string()))
}

/// The MQTT connection settings for `node`: address, session, packet limits, last will,
/// and the transport. `mqtts://` needs `tls` and `mqtt://` refuses it, so certificates are
/// never silently ignored and a TLS address never falls back to clear text.
pub fn mqtt_options(
    url: &str,
    node: &NodeName,
    tls: Option<&MqttTls>,
) -> Result<MqttOptions, BusError> {
    let addr =
        baton_proto::broker::BrokerUrl::parse(url).map_err(|e| BusError::BadUrl(e.to_string()))?;
    let mut opts = MqttOptions::new(format!("baton-agent-{node}"), addr.host, addr.port);
    opts.set_keep_alive(Duration::from_secs(10));
    opts.set_clean_session(true);
    opts.set_max_packet_size(MAX_MESSAGE_BYTES + 4096, MAX_MESSAGE_BYTES + 4096);
    let will = Envelope::new(Sender::Node(node.clone()), 0, Body::Offline).encode()?;
    opts.set_last_will(LastWill::new(
        topics::topic(node, Kind::of(&Body::Offline)),
        will,
        QoS::AtLeastOnce,
        false,
    ));
    match (addr.tls, tls) {
        (true, Some(tls)) => {
            opts.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
                tls.client_config()?,
            )));
        }
        (true, None) => return Err(BusError::TlsMissing(url.to_owned())),
        (false, Some(_)) => return Err(BusError::TlsUnused(url.to_owned())),
        (false, None) => {}
    }
    Ok(opts)
}

/// The longest pause between reconnect attempts. Short enough that a node is back within
/// seconds of its link (the chaos suite measured 11 s with a 30 s cap); a fleet's worth of
/// agents reconnecting at once is spread by the jitter instead.
const RECONNECT_CAP: Duration = Duration::from_secs(8);

/// 75-100% of `d`, so agents that lost the broker together do not return in lockstep.
fn with_jitter(d: Duration) -> Duration {
    d.mul_f64(0.75 + rand::random::<f64>() * 0.25)
}

#[derive(Clone)]
pub struct Bus {
    client: AsyncClient,
    node: NodeName,
    seq: Arc<AtomicU64>,
    connected: Arc<AtomicBool>,
    /// With an enrolled identity: signs what we send, verifies what we get.
    security: Option<AgentSecurity>,
}

impl Bus {
    /// Starts the connection task over plain MQTT. Events arrive on `events` until the
    /// receiver is dropped.
    pub fn start(
        url: &str,
        node: NodeName,
        events: mpsc::Sender<BusEvent>,
    ) -> Result<Self, BusError> {
        Self::start_tls(url, node, None, events)
    }

    /// [`Bus::start`], over TLS with a client certificate when `url` is `mqtts://`
    /// (see [`mqtt_options`]).
    pub fn start_tls(
        url: &str,
        node: NodeName,
        tls: Option<&MqttTls>,
        events: mpsc::Sender<BusEvent>,
    ) -> Result<Self, BusError> {
        Self::start_secure(url, node, tls, None, events)
    }

    /// [`Bus::start_tls`], signing every message with the device key and accepting only
    /// messages signed by the pinned coordinator key when `security` is given
    /// (see [`crate::identity`]).
    pub fn start_secure(
        url: &str,
        node: NodeName,
        tls: Option<&MqttTls>,
        security: Option<AgentSecurity>,
        events: mpsc::Sender<BusEvent>,
    ) -> Result<Self, BusError> {
        let mut opts = mqtt_options(url, &node, tls)?;
        if let Some(sec) = &security {
            opts.set_last_will(signed_will(sec)?);
        }
        let (client, mut eventloop) = AsyncClient::new(opts, 64);
        let bus = Bus {
            client,
            node,
            seq: Arc::new(AtomicU64::new(1)),
            connected: Arc::new(AtomicBool::new(false)),
            security,
        };
        let task = bus.clone();
        tokio::spawn(async move {
            let mut backoff = Duration::from_millis(250);
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        info!(node = %task.node, "connected to broker");
                        backoff = Duration::from_millis(250);
                        if let Err(e) = task
                            .client
                            .try_subscribe(topics::agent_filter(&task.node), QoS::AtLeastOnce)
                        {
                            warn!(error = %e, "subscribe failed");
                        }
                        task.connected.store(true, Ordering::SeqCst);
                        if events.send(BusEvent::Connected).await.is_err() {
                            return;
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        if let Some(ev) = task.accept(&p.topic, &p.payload) {
                            if events.send(ev).await.is_err() {
                                return;
                            }
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        // The next connect carries a freshly signed last will, so the
                        // coordinator can tell it from the one the broker already used.
                        if let Some(sec) = &task.security {
                            match signed_will(sec) {
                                Ok(will) => {
                                    eventloop.mqtt_options.set_last_will(will);
                                }
                                Err(e) => warn!(error = %e, "cannot sign the last will"),
                            }
                        }
                        if task.connected.swap(false, Ordering::SeqCst) {
                            warn!(error = %e, "lost the broker; pods keep running, reconnecting");
                            if events.send(BusEvent::Disconnected).await.is_err() {
                                return;
                            }
                        } else {
                            debug!(error = %e, retry_in = ?backoff, "broker unreachable");
                        }
                        tokio::time::sleep(with_jitter(backoff)).await;
                        backoff = (backoff * 2).min(RECONNECT_CAP);
                    }
                }
            }
        });
        Ok(bus)
    }

    /// Checks that a message is for us, from the coordinator, on the topic its body
    /// belongs to. Anything else is logged with the reason and dropped.
    fn accept(&self, topic: &str, payload: &[u8]) -> Option<BusEvent> {
        let reject = |why: &str| {
            warn!(%topic, reason = why, "rejected message");
            None
        };
        let Some((node, kind)) = topics::parse(topic) else {
            return reject("unknown topic");
        };
        if node != self.node {
            return reject("topic names another node");
        }
        let env = match Envelope::decode(payload) {
            Ok(env) => env,
            Err(e) => return reject(&e.to_string()),
        };
        if env.sender != Sender::Coordinator {
            return reject("sender is not the coordinator");
        }
        if Kind::of(&env.body) != kind {
            return reject("body does not belong on this topic");
        }
        if let Some(sec) = &self.security {
            // Counts and logs refusals itself; `false` is a quiet duplicate.
            if !sec.check(topic, &env).unwrap_or(false) {
                return None;
            }
        }
        match (kind, env.body) {
            (Kind::Down(Down::Desired), Body::Desired(d)) => Some(BusEvent::Desired(d)),
            (Kind::Down(Down::Control), Body::StatusRequest) => Some(BusEvent::StatusRequest),
            // Only a verified request counts: without an identity there is nothing to rotate.
            (Kind::Down(Down::Control), Body::RotateKey) => match &self.security {
                Some(sec) => {
                    sec.rotate_in_background();
                    None
                }
                None => reject("key rotation asked of a node without an identity"),
            },
            _ => reject("not a coordinator-to-agent message"),
        }
    }

    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::SeqCst)
    }

    pub fn publish(&self, body: Body) -> Result<(), BusError> {
        if !self.is_connected() {
            return Err(BusError::Disconnected);
        }
        let (topic, payload) = match &self.security {
            Some(sec) => sec.seal(body).map_err(|e| BusError::Sign(e.to_string()))?,
            None => {
                let topic = topics::topic(&self.node, Kind::of(&body));
                let seq = self.seq.fetch_add(1, Ordering::Relaxed);
                let payload = Envelope::new(Sender::Node(self.node.clone()), seq, body).encode()?;
                (topic, payload)
            }
        };
        self.client
            .try_publish(topic, QoS::AtLeastOnce, false, payload)
            .map_err(|_| BusError::Full)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_a_quarter_below() {
        for _ in 0..1000 {
            let d = with_jitter(RECONNECT_CAP);
            assert!(
                d <= RECONNECT_CAP && d >= RECONNECT_CAP.mul_f64(0.75),
                "{d:?}"
            );
        }
    }

    #[test]
    fn tls_is_used_exactly_when_the_url_asks_for_it() {
        let node = NodeName::new("pi-1").unwrap();
        let tls = MqttTls {
            ca_pem: b"junk".to_vec(),
            cert_pem: Vec::new(),
            key_pem: Vec::new(),
        };
        assert!(matches!(
            mqtt_options("mqtts://b:8883", &node, None),
            Err(BusError::TlsMissing(_))
        ));
        assert!(matches!(
            mqtt_options("mqtt://b:1883", &node, Some(&tls)),
            Err(BusError::TlsUnused(_))
        ));
        // Bad material fails here, at start, not on every reconnect.
        assert!(matches!(
            mqtt_options("mqtts://b", &node, Some(&tls)),
            Err(BusError::Tls(_))
        ));
        let plain = mqtt_options("mqtt://b", &node, None).unwrap();
        assert!(matches!(plain.transport(), Transport::Tcp));
    }

    #[test]
    fn urls() {
        assert_eq!(
            parse_url("mqtt://10.0.0.1:1884").unwrap(),
            ("10.0.0.1".into(), 1884)
        );
        assert_eq!(
            parse_url("broker.lan").unwrap(),
            ("broker.lan".into(), 1883)
        );
        assert_eq!(parse_url("tcp://[::1]:1883").unwrap(), ("::1".into(), 1883));
        assert_eq!(parse_url("mqtts://b").unwrap(), ("b".into(), 8883));
        for bad in ["", "mqtt://", "mqtt://h:x", "mqtt://h:1/x", ":1883"] {
            assert!(parse_url(bad).is_err(), "{bad:?}");
        }
    }
}
