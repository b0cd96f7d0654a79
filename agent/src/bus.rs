//! The agent's MQTT bridge: one producer of node-loop events, one consumer of bodies to
//! send. The node loop never sees MQTT, so its tests drive it with plain channels.
//!
//! Reconnects forever with capped backoff (a device may be offline for days) and never
//! touches running pods when it does. While disconnected, `publish` drops messages rather
//! than queueing them: the protocol is level-triggered, and on reconnect the node loop
//! sends one Hello and one full Status, which supersede anything that was dropped.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use baton_link::{link_fault, LinkFault, Repeats, Side};
use baton_proto::topics::{self, Down, Kind};
use baton_proto::{BString, Body, DesiredState, Envelope, NodeName, Sender, MAX_MESSAGE_BYTES};
use rumqttc::{
    AsyncClient, ConnectionError, Event, LastWill, MqttOptions, Packet, QoS, SubscribeReasonCode,
    TlsConfiguration, Transport,
};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::exec::ExecServer;
use crate::identity::AgentSecurity;
use crate::logs::{ChunkSink, LogServer};
use crate::mqtt_tls::{MqttTls, MqttTlsError};
use crate::term::LeaderTerm;

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
    /// The retained agent update order (`None`: withdrawn); see [`crate::update`].
    AgentUpdate(Option<baton_proto::AgentUpdate>),
    /// A part of a ConfigMap the node's pods reference (see [`crate::config_maps`]).
    ConfigMapPart(baton_proto::ConfigMapPart),
    /// The cluster's Services and pod routes (see `node/services.rs`).
    ServiceTable(baton_proto::ServiceTable),
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
    keepalive: Duration,
) -> Result<MqttOptions, BusError> {
    let addr =
        baton_proto::broker::BrokerUrl::parse(url).map_err(|e| BusError::BadUrl(e.to_string()))?;
    let mut opts = MqttOptions::new(format!("baton-agent-{node}"), addr.host, addr.port);
    // The link profile's: liveness comes from it (see crate::link_profile).
    opts.set_keep_alive(keepalive);
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

/// Asks Baton's MQTT TLS front to notice this agent's loss within `within` with TCP
/// keepalive probes, in the CONNECT username (see [`crate::link_profile`]). Only over TLS,
/// where the front is: on a plain listener the username would be taken as a login.
pub fn ask_tcp_liveness(opts: &mut MqttOptions, within: Option<Duration>) {
    let Some(within) = within else { return };
    if !matches!(opts.transport(), Transport::Tls(_)) {
        return;
    }
    let secs = u32::try_from(within.as_secs()).unwrap_or(u32::MAX);
    // rumqttc writes no password when it is empty: a username alone, as MQTT 3.1.1 allows.
    opts.set_credentials(baton_proto::broker::tcp_liveness_username(secs), "");
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
    /// Why the attempts before the current connection failed, for the Hello.
    last_connect_error: Arc<Mutex<Option<String>>>,
    /// Serves `baton logs` once [`Bus::serve_logs`] is called (see [`crate::logs`]).
    logs: Arc<std::sync::OnceLock<Arc<LogServer>>>,
    /// Serves `baton exec` once [`Bus::serve_exec`] is called (see [`crate::exec`]).
    exec: Arc<std::sync::OnceLock<Arc<ExecServer>>>,
    /// [`Bus::close`]: ends the connection task.
    close: Arc<tokio::sync::Notify>,
    /// The highest leader's term accepted: a deposed leader's messages are refused.
    term: Arc<LeaderTerm>,
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
        let link = crate::link_profile::Profile::Lan.settings();
        Self::start_secure(url, node, tls, None, &link, 0, events)
    }

    /// [`Bus::start_tls`], signing every message with the device key and accepting only
    /// messages signed by the pinned coordinator key when `security` is given
    /// (see [`crate::identity`]), and none of a leader's term below `leader_term` (the
    /// persisted one, [`crate::node::Node::leader_term`]) or below a term accepted since.
    pub fn start_secure(
        url: &str,
        node: NodeName,
        tls: Option<&MqttTls>,
        security: Option<AgentSecurity>,
        link: &crate::link_profile::Settings,
        leader_term: u64,
        events: mpsc::Sender<BusEvent>,
    ) -> Result<Self, BusError> {
        let mut opts = mqtt_options(url, &node, tls, link.keepalive)?;
        ask_tcp_liveness(&mut opts, link.tcp_liveness);
        if let Some(problem) = tls.and_then(|t| identity_problem(&t.cert_pem, &node)) {
            warn!("{problem}");
        }
        if let Some(sec) = &security {
            opts.set_last_will(signed_will(sec)?);
        }
        let tls = baton_proto::broker::BrokerUrl::parse(url).is_ok_and(|u| u.tls);
        let url = url.to_owned();
        let (client, mut eventloop) = AsyncClient::new(opts, 64);
        let bus = Bus {
            client,
            node,
            seq: Arc::new(AtomicU64::new(1)),
            connected: Arc::new(AtomicBool::new(false)),
            security,
            last_connect_error: Arc::new(Mutex::new(None)),
            logs: Arc::new(std::sync::OnceLock::new()),
            exec: Arc::new(std::sync::OnceLock::new()),
            close: Arc::new(tokio::sync::Notify::new()),
            term: Arc::new(LeaderTerm::new(leader_term)),
        };
        let task = bus.clone();
        tokio::spawn(async move {
            let mut backoff = Duration::from_millis(250);
            let mut link = LinkLog::new(url, tls);
            loop {
                let polled = tokio::select! {
                    _ = task.close.notified() => return,
                    p = eventloop.poll() => p,
                };
                match polled {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        let (_, report) = link.connected(&task.node);
                        *task
                            .last_connect_error
                            .lock()
                            .unwrap_or_else(|e| e.into_inner()) = report;
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
                    Ok(Event::Incoming(Packet::SubAck(ack))) => {
                        // An ACL that denies our topics answers 0x80 here and drops our
                        // publishes silently: this is the only sign of it.
                        if ack.return_codes.contains(&SubscribeReasonCode::Failure) {
                            link.subscribe_denied(&topics::agent_filter(&task.node));
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
                            link.lost(&e);
                            if events.send(BusEvent::Disconnected).await.is_err() {
                                return;
                            }
                        } else {
                            debug!(error = %e, retry_in = ?backoff, "broker unreachable");
                            let _ = link.failed(&e);
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
        // A deposed leader's message is refused (`crate::term`), after the signature and
        // before the replay check records it; both count and log their refusals.
        let term = env.body.term();
        let admit = || term.is_none_or(|t| self.term.admits(env.body.name(), t));
        let admitted = match &self.security {
            // `false`: a quiet duplicate, or a refused term.
            Some(sec) => sec.check_admitting(topic, &env, admit).unwrap_or(false),
            None => admit(),
        };
        if !admitted {
            return None;
        }
        if let Some(t) = term {
            self.term.accepted(t);
        }
        match (kind, env.body) {
            (Kind::Down(Down::Desired), Body::Desired(d)) => Some(BusEvent::Desired(d)),
            (Kind::Down(Down::Control), Body::StatusRequest) => Some(BusEvent::StatusRequest),
            (Kind::Down(Down::Control), Body::ConfigMapPart(p)) => Some(BusEvent::ConfigMapPart(p)),
            (Kind::Down(Down::Control), Body::ServiceTable(t)) => Some(BusEvent::ServiceTable(t)),
            (Kind::Down(Down::Update), Body::AgentUpdate(u)) => Some(BusEvent::AgentUpdate(u)),
            // Only a verified request counts: without an identity there is nothing to rotate.
            (Kind::Down(Down::Control), Body::RotateKey) => match &self.security {
                Some(sec) => {
                    sec.rotate_in_background();
                    None
                }
                None => reject("key rotation asked of a node without an identity"),
            },
            // Log sessions are the bus's own business too: they only read files and
            // publish, and must not wait behind the node loop.
            (Kind::Down(Down::Control), Body::LogRequest(r)) => match self.logs.get() {
                Some(logs) => {
                    logs.open(r, Arc::new(self.clone()));
                    None
                }
                None => reject("log request before the log server started"),
            },
            (Kind::Down(Down::Control), Body::LogCredit(c)) => {
                if let Some(logs) = self.logs.get() {
                    logs.credit(c);
                }
                None
            }
            // Exec sessions too: their command runs in the runtime helper, beside the loop.
            (Kind::Down(Down::Control), Body::ExecRequest(r)) => match self.exec.get() {
                Some(exec) => {
                    exec.open(r, Arc::new(self.clone()));
                    None
                }
                None => reject("exec request before the exec server started"),
            },
            (Kind::Down(Down::Control), Body::ExecInput(i)) => {
                if let Some(exec) = self.exec.get() {
                    exec.input(i);
                }
                None
            }
            _ => reject("not a coordinator-to-agent message"),
        }
    }

    /// Starts serving log sessions from the pod logs under `pods_dir`; returns the server
    /// (its counters). Later calls return the first one.
    pub fn serve_logs(&self, pods_dir: std::path::PathBuf) -> Arc<LogServer> {
        self.logs.get_or_init(|| LogServer::new(pods_dir)).clone()
    }

    /// Starts serving exec sessions with `runtime`; later calls keep the first server.
    pub fn serve_exec(&self, runtime: Arc<dyn crate::runtime::Runtime>) -> Arc<ExecServer> {
        self.exec.get_or_init(|| ExecServer::new(runtime)).clone()
    }

    /// Ends the connection task, dropping the connection without an MQTT DISCONNECT: to
    /// the broker this is a vanished node (its last will is published), as after a kill -9.
    /// The fleet simulator (`sim/`) loses nodes this way.
    pub fn close(&self) {
        self.close.notify_one();
        self.connected.store(false, Ordering::SeqCst);
    }

    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::SeqCst)
    }

    /// The leader's term this agent follows, and its refusals of older ones.
    pub fn leader_term(&self) -> &LeaderTerm {
        &self.term
    }

    /// The time, if this node may trust it (see [`AgentSecurity::trusted_now_ms`]).
    pub fn trusted_now_ms(&self) -> Option<u64> {
        match &self.security {
            Some(s) => s.trusted_now_ms(),
            None => crate::identity::local_trusted_ms(),
        }
    }

    /// Why the attempts before the current connection failed (`None`: it got through at
    /// once), as sent in the Hello.
    pub fn last_connect_error(&self) -> Option<String> {
        self.last_connect_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Sends `body`. A Hello gets the link's [`Bus::last_connect_error`] filled in here,
    /// where the link's history lives, so the node loop need not know it.
    pub fn publish(&self, mut body: Body) -> Result<(), BusError> {
        if !self.is_connected() {
            return Err(BusError::Disconnected);
        }
        if let Body::Hello(h) = &mut body {
            h.last_connect_error = self.last_connect_error().map(|e| BString::truncated(&e));
        }
        let (topic, payload) = match &self.security {
            Some(sec) => sec.seal(body).map_err(|e| BusError::Sign(e.to_string()))?,
            None => {
                let topic = topics::topic_for(&self.node, &body);
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

impl ChunkSink for Bus {
    fn send(&self, body: Body) -> Result<(), bool> {
        match self.publish(body) {
            Ok(()) => Ok(()),
            Err(BusError::Full) => Err(true),
            Err(_) => Err(false),
        }
    }
}

/// What is wrong with this node's MQTT client certificate, if its CN is not the node
/// name. Brokers bind a device's topics to its CN: the embedded broker refuses the
/// connection (CONNACK "not authorized", logged when it happens), but Mosquitto's ACL
/// (deploy/mosquitto/acl, `%u`) lets it connect and subscribe and then drops all it sends
/// and never delivers it anything, with nothing on the wire to tell. So it is checked here.
pub fn identity_problem(cert_pem: &[u8], node: &NodeName) -> Option<String> {
    use rustls_pki_types::pem::PemObject;
    let der = rustls_pki_types::CertificateDer::from_pem_slice(cert_pem).ok()?;
    let cn = subject_cn(&der).unwrap_or_default();
    (cn != node.as_str()).then(|| {
        format!(
            "this node's MQTT client certificate (--mqtt-cert) has CN {cn:?}, not the node name {node:?}: brokers bind a node's topics to its certificate's CN, which must be the node name, so the broker will refuse it or silently drop all it sends (is this another node's certificate?)"
        )
    })
}

/// The subject CN of an X.509 certificate (DER): Certificate > TBSCertificate > (version,
/// serial, signature, issuer, validity) > subject > RDNs > CN. A small walk rather than a
/// full X.509 parser on the device: this is the one field the agent reads.
fn subject_cn(der: &[u8]) -> Option<String> {
    /// One DER element at the start of `b`: (tag, contents, rest).
    fn tlv(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
        let (&tag, b) = b.split_first()?;
        let (&first, b) = b.split_first()?;
        let (len, b) = if first < 0x80 {
            (usize::from(first), b)
        } else {
            let n = usize::from(first & 0x7f);
            if n == 0 || n > 4 || b.len() < n {
                return None;
            }
            let len = b[..n]
                .iter()
                .fold(0usize, |acc, &x| (acc << 8) | usize::from(x));
            (len, &b[n..])
        };
        (b.len() >= len).then(|| (tag, &b[..len], &b[len..]))
    }
    const SEQ: u8 = 0x30;
    const SET: u8 = 0x31;
    const CN_OID: [u8; 3] = [0x55, 0x04, 0x03];
    let (SEQ, cert, _) = tlv(der)? else {
        return None;
    };
    let (SEQ, mut tbs, _) = tlv(cert)? else {
        return None;
    };
    if tbs.first() == Some(&0xa0) {
        tbs = tlv(tbs)?.2; // [0] version
    }
    // serial, signature algorithm, issuer, validity
    for _ in 0..4 {
        tbs = tlv(tbs)?.2;
    }
    let (SEQ, mut rdns, _) = tlv(tbs)? else {
        return None;
    };
    while !rdns.is_empty() {
        let (SET, mut set, rest) = tlv(rdns)? else {
            return None;
        };
        rdns = rest;
        while !set.is_empty() {
            let (SEQ, atv, rest) = tlv(set)? else {
                return None;
            };
            set = rest;
            let (0x06, oid, value) = tlv(atv)? else {
                return None;
            };
            if oid == CN_OID {
                // UTF8String, PrintableString or IA5String.
                let (0x0c | 0x13 | 0x16, text, _) = tlv(value)? else {
                    return None;
                };
                return String::from_utf8(text.to_vec()).ok();
            }
        }
    }
    None
}

/// How often a link that keeps failing for the same reason is logged again.
const WARN_EVERY: Duration = Duration::from_secs(60);

/// The broker link's history, logged so that a person can act on it: every failure to
/// connect at WARN with the address, cause and advice, repeats once a minute with their
/// count, and an INFO with the attempts and time when it finally connects.
struct LinkLog {
    url: String,
    tls: bool,
    repeats: Repeats,
    /// The last failure, explained, for the next Hello.
    last: Option<String>,
}

impl LinkLog {
    fn new(url: String, tls: bool) -> Self {
        Self {
            url,
            tls,
            repeats: Repeats::new(WARN_EVERY),
            last: None,
        }
    }

    /// tokio's clock, so that tests can pause and advance it.
    fn now() -> Instant {
        tokio::time::Instant::now().into_std()
    }

    /// A failed attempt to connect; returns the line logged, if any.
    fn failed(&mut self, e: &ConnectionError) -> Option<String> {
        let fault = link_fault(e, false);
        let why = fault.explain(Side::Agent, self.tls);
        let w = self.repeats.failed(Self::now(), &fault.to_string());
        self.last = Some(why.clone());
        let w = w?;
        let mut line = format!("cannot connect to the MQTT broker at {}: {why}", self.url);
        if w.attempts > 1 {
            line.push_str(&format!(
                "; still failing after {} attempts in {}s ({} not logged)",
                w.attempts,
                w.failing_for.as_secs(),
                w.held
            ));
        }
        warn!(broker = %self.url, attempts = w.attempts, "{line}");
        Some(line)
    }

    /// An established connection broke: not worth a second warning (the caller logs
    /// it), but the start of an outage.
    fn lost(&mut self, e: &ConnectionError) {
        let fault = link_fault(e, true);
        self.repeats.failed(Self::now(), &fault.to_string());
        self.last = Some(fault.explain(Side::Agent, self.tls));
    }

    fn subscribe_denied(&mut self, filter: &str) {
        let fault = LinkFault::SubscribeDenied(filter.to_owned());
        warn!(broker = %self.url, "the MQTT broker at {}: {}", self.url, fault.explain(Side::Agent, self.tls));
    }

    /// Connected: logs it (with the outage it ends, if any) and returns the line and what
    /// to report in the Hello.
    fn connected(&mut self, node: &NodeName) -> (String, Option<String>) {
        let line = match self.repeats.succeeded(Self::now()) {
            Some(r) => format!(
                "connected to broker at {} after {} failed attempts in {}s",
                self.url,
                r.attempts,
                r.after.as_secs()
            ),
            None => format!("connected to broker at {}", self.url),
        };
        // "connected to broker": tests/tests/chaos.rs counts reconnects by it.
        info!(%node, broker = %self.url, "{line}");
        (line, self.last.take())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use rumqttc::StateError;
    use std::io::{Error as IoError, ErrorKind};

    /// The CN of certificates made like enrollment makes them, and like `openssl req
    /// -subj` does (the issuer's CN comes first in the DER and must not be taken).
    #[test]
    fn the_subject_cn_is_read_and_checked_against_the_node() {
        // CN=pi-1 under CN=fixture-ca, Ed25519.
        let pem = crate::mqtt_tls::fixtures::NODE_CERT.as_bytes();
        let pi1 = NodeName::new("pi-1").unwrap();
        use rustls_pki_types::pem::PemObject;
        let der = rustls_pki_types::CertificateDer::from_pem_slice(pem).unwrap();
        assert_eq!(subject_cn(&der).as_deref(), Some("pi-1"));
        assert_eq!(identity_problem(pem, &pi1), None);
        let other = identity_problem(pem, &NodeName::new("pi-2").unwrap()).unwrap();
        assert!(
            other.contains(r#"has CN "pi-1", not the node name "pi-2""#),
            "{other}"
        );
        assert_eq!(subject_cn(&der[..der.len() / 2]), None, "truncated");
        assert_eq!(subject_cn(b""), None);
    }

    /// Against a broker that refuses for over a minute: the first failure is logged, the
    /// next ones are held, one more line comes a minute later with the count, a new cause
    /// is logged at once, and the success says how long it took; the Hello then carries
    /// the last failure, and only once.
    #[tokio::test(start_paused = true)]
    async fn repeats_are_rate_limited_and_the_recovery_is_told() {
        let node = NodeName::new("pi-1").unwrap();
        let mut link = LinkLog::new("mqtt://b:1883".into(), false);
        let refused = ConnectionError::Io(IoError::from(ErrorKind::ConnectionRefused));
        assert_eq!(
            link.failed(&refused).as_deref(),
            Some("cannot connect to the MQTT broker at mqtt://b:1883: connection refused (nothing listens there: is the broker running, and is the port right?)")
        );
        for _ in 0..7 {
            tokio::time::advance(RECONNECT_CAP).await;
            assert_eq!(link.failed(&refused), None);
        }
        tokio::time::advance(RECONNECT_CAP).await;
        let again = link.failed(&refused).unwrap();
        assert!(
            again.ends_with("; still failing after 9 attempts in 64s (7 not logged)"),
            "{again}"
        );
        tokio::time::advance(RECONNECT_CAP).await;
        assert_eq!(link.failed(&refused), None);
        let hangup = ConnectionError::MqttState(StateError::ConnectionAborted);
        let changed = link.failed(&hangup).unwrap();
        assert!(
            changed.contains("the server hung up without answering CONNECT (is this a TLS port? use mqtts://); still failing after 11 attempts in 72s (1 not logged)"),
            "{changed}"
        );
        tokio::time::advance(Duration::from_secs(3)).await;
        let (line, report) = link.connected(&node);
        assert_eq!(
            line,
            "connected to broker at mqtt://b:1883 after 11 failed attempts in 75s"
        );
        assert!(report
            .unwrap()
            .starts_with("the server did not answer as MQTT"));
        let (line, report) = link.connected(&node);
        assert_eq!(line, "connected to broker at mqtt://b:1883");
        assert_eq!(report, None);
    }

    /// A bus that never connects, to call `accept` on.
    fn offline_bus(security: Option<AgentSecurity>) -> Bus {
        let node = NodeName::new("pi-1").unwrap();
        let (client, _) = AsyncClient::new(
            mqtt_options("mqtt://127.0.0.1:9", &node, None, Duration::from_secs(10)).unwrap(),
            1,
        );
        Bus {
            client,
            node,
            seq: Arc::new(AtomicU64::new(1)),
            connected: Arc::new(AtomicBool::new(false)),
            security,
            last_connect_error: Arc::new(Mutex::new(None)),
            logs: Arc::new(std::sync::OnceLock::new()),
            exec: Arc::new(std::sync::OnceLock::new()),
            close: Arc::new(tokio::sync::Notify::new()),
            term: Arc::new(LeaderTerm::new(0)),
        }
    }

    /// `body` from the coordinator on pi-1's control topic, signed by `key` if given.
    fn control(
        body: Body,
        seq: u64,
        key: Option<&baton_proto::sign::SigningKey>,
    ) -> (String, Vec<u8>) {
        let node = NodeName::new("pi-1").unwrap();
        let topic = topics::topic(&node, Kind::of(&body));
        let mut env = Envelope::new(Sender::Coordinator, seq, body);
        env.sent_at_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        if let Some(k) = key {
            baton_proto::sign::sign(&mut env, &topic, k).unwrap();
        }
        (topic, env.encode().unwrap())
    }

    /// A verified RotateKey is the bus's own business: it starts the rotation (a signed
    /// request to the coordinator's API, seen here by a listener standing in for it) and
    /// gives the node loop no event, so no pod is touched.
    #[tokio::test]
    async fn a_verified_rotate_key_starts_a_rotation_and_gives_the_node_loop_nothing() {
        use base64::Engine as _;
        use tokio::io::AsyncReadExt;
        let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
        let api = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let coordinator = baton_proto::sign::SigningKey::from_bytes(&[1; 32]);
        let id = crate::identity::IdentityFile {
            version: crate::identity::FORMAT_VERSION,
            node_name: "pi-1".into(),
            private_key: b64(&[5; 32]),
            certificate: crate::mqtt_tls::fixtures::NODE_CERT.into(),
            coordinator_public_key: b64(coordinator.verifying_key().as_bytes()),
            ca_certificate: crate::mqtt_tls::fixtures::CA.into(),
            labels: Default::default(),
            not_after: 0,
            coordinator_api: Some(format!("http://{}", api.local_addr().unwrap())),
        };
        id.save(&dir.path().join(crate::identity::IDENTITY_FILE))
            .unwrap();
        let sec = AgentSecurity::new(dir.path(), &id, crate::identity::DEFAULT_WINDOW).unwrap();
        let bus = offline_bus(Some(sec));

        let (topic, payload) = control(Body::StatusRequest, 10, Some(&coordinator));
        assert!(matches!(
            bus.accept(&topic, &payload),
            Some(BusEvent::StatusRequest)
        ));
        let (topic, payload) = control(Body::RotateKey, 11, Some(&coordinator));
        assert!(bus.accept(&topic, &payload).is_none());

        let (mut conn, _) = tokio::time::timeout(Duration::from_secs(10), api.accept())
            .await
            .expect("no rotation request within 10 s")
            .unwrap();
        let mut request = vec![0; 4096];
        let n = conn.read(&mut request).await.unwrap();
        let request = String::from_utf8_lossy(&request[..n]);
        assert!(
            request.starts_with("POST /api/v1/nodes/pi-1/rotate "),
            "{request}"
        );
    }

    /// An enrolled node's security, with `coordinator` as the pinned coordinator key.
    fn enrolled(
        dir: &std::path::Path,
        coordinator: &baton_proto::sign::SigningKey,
    ) -> AgentSecurity {
        use base64::Engine as _;
        let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
        let id = crate::identity::IdentityFile {
            version: crate::identity::FORMAT_VERSION,
            node_name: "pi-1".into(),
            private_key: b64(&[5; 32]),
            certificate: crate::mqtt_tls::fixtures::NODE_CERT.into(),
            coordinator_public_key: b64(coordinator.verifying_key().as_bytes()),
            ca_certificate: crate::mqtt_tls::fixtures::CA.into(),
            labels: Default::default(),
            not_after: 0,
            coordinator_api: None,
        };
        id.save(&dir.join(crate::identity::IDENTITY_FILE)).unwrap();
        AgentSecurity::new(dir, &id, crate::identity::DEFAULT_WINDOW).unwrap()
    }

    fn desired(generation: u64, term: u64) -> Body {
        Body::Desired(DesiredState {
            generation,
            pods: baton_proto::BVec::new(),
            secrets: baton_proto::BVec::new(),
            term,
            crons: Default::default(),
        })
    }

    fn generation_of(ev: Option<BusEvent>) -> Option<(u64, u64)> {
        match ev {
            Some(BusEvent::Desired(d)) => Some((d.generation, d.term)),
            _ => None,
        }
    }

    /// A deposed leader's message, correctly signed and fresh, is refused for its term,
    /// before the replay check records its seq: the leader's next message, numbered below
    /// it, still passes. A later leader's term is taken whatever its generation, and the
    /// other messages that carry a term are held to it too.
    #[test]
    fn a_deposed_leaders_message_is_refused_before_its_seq_counts() {
        let dir = tempfile::tempdir().unwrap();
        let coordinator = baton_proto::sign::SigningKey::from_bytes(&[1; 32]);
        let bus = offline_bus(Some(enrolled(dir.path(), &coordinator)));
        let accept = |body: Body, seq: u64| {
            let (topic, payload) = control(body, seq, Some(&coordinator));
            bus.accept(&topic, &payload)
        };
        assert_eq!(generation_of(accept(desired(5, 20), 100)), Some((5, 20)));
        assert_eq!(bus.leader_term().current(), 20);

        // The deposed leader, resumed: a later seq, a higher generation, an older term.
        assert!(accept(desired(9, 19), 500).is_none());
        assert_eq!(bus.leader_term().refused(), 1);
        // The leader's next message is numbered below the refused one: not a replay.
        assert_eq!(generation_of(accept(desired(6, 20), 101)), Some((6, 20)));
        // A new leader's word stands, with a lower generation.
        assert_eq!(generation_of(accept(desired(2, 31), 102)), Some((2, 31)));
        assert_eq!(bus.leader_term().current(), 31);
        assert!(
            accept(desired(7, 20), 103).is_none(),
            "the first leader now"
        );

        let mut table = baton_proto::ServiceTable {
            term: 30,
            ..Default::default()
        };
        assert!(accept(Body::ServiceTable(table.clone()), 104).is_none());
        table.term = 31;
        assert!(matches!(
            accept(Body::ServiceTable(table), 105),
            Some(BusEvent::ServiceTable(_))
        ));
        // A request changes nothing a leader owns, and carries no term.
        assert!(matches!(
            accept(Body::StatusRequest, 106),
            Some(BusEvent::StatusRequest)
        ));
        assert_eq!(bus.leader_term().refused(), 3);
        // A forged message with a higher term is refused for its signature, and does not
        // raise the term.
        let forger = baton_proto::sign::SigningKey::from_bytes(&[9; 32]);
        let (topic, payload) = control(desired(1, 99), 107, Some(&forger));
        assert!(bus.accept(&topic, &payload).is_none());
        assert_eq!(bus.leader_term().current(), 31);
    }

    /// Without an identity (development fleets) the term is checked all the same.
    #[test]
    fn an_unenrolled_node_refuses_a_lower_term_too() {
        let bus = offline_bus(None);
        let (topic, payload) = control(desired(3, 8), 1, None);
        assert_eq!(generation_of(bus.accept(&topic, &payload)), Some((3, 8)));
        let (topic, payload) = control(desired(4, 7), 2, None);
        assert!(bus.accept(&topic, &payload).is_none());
        assert_eq!(bus.leader_term().refused(), 1);
    }

    /// Without an identity there is nothing to rotate: the request is refused, like any
    /// unsigned message an enrolled node would refuse, and the node loop hears nothing.
    #[test]
    fn rotate_key_without_an_identity_is_refused() {
        let bus = offline_bus(None);
        let (topic, payload) = control(Body::StatusRequest, 1, None);
        assert!(matches!(
            bus.accept(&topic, &payload),
            Some(BusEvent::StatusRequest)
        ));
        let (topic, payload) = control(Body::RotateKey, 2, None);
        assert!(bus.accept(&topic, &payload).is_none());
    }

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
            mqtt_options("mqtts://b:8883", &node, None, Duration::from_secs(10)),
            Err(BusError::TlsMissing(_))
        ));
        assert!(matches!(
            mqtt_options("mqtt://b:1883", &node, Some(&tls), Duration::from_secs(10)),
            Err(BusError::TlsUnused(_))
        ));
        // Bad material fails here, at start, not on every reconnect.
        assert!(matches!(
            mqtt_options("mqtts://b", &node, Some(&tls), Duration::from_secs(10)),
            Err(BusError::Tls(_))
        ));
        let mut plain = mqtt_options("mqtt://b", &node, None, Duration::from_secs(10)).unwrap();
        assert!(matches!(plain.transport(), Transport::Tcp));
        // No front on a plain listener: no liveness username (it would be a login there).
        ask_tcp_liveness(&mut plain, Some(Duration::from_secs(20)));
        assert!(plain.credentials().is_none());
    }

    #[test]
    fn the_front_is_asked_for_probes_in_the_username() {
        let node = NodeName::new("pi-1").unwrap();
        let tls = MqttTls {
            ca_pem: crate::mqtt_tls::fixtures::CA.as_bytes().to_vec(),
            cert_pem: crate::mqtt_tls::fixtures::NODE_CERT.as_bytes().to_vec(),
            key_pem: crate::mqtt_tls::fixtures::NODE_KEY.as_bytes().to_vec(),
        };
        let opts =
            || mqtt_options("mqtts://b", &node, Some(&tls), Duration::from_secs(120)).unwrap();
        let mut front = opts();
        ask_tcp_liveness(&mut front, Some(Duration::from_secs(20)));
        let login = front.credentials().unwrap();
        assert_eq!(
            baton_proto::broker::parse_tcp_liveness(&login.username),
            Some(20)
        );
        assert_eq!(login.password, "");
        let mut metered = opts();
        ask_tcp_liveness(&mut metered, None);
        assert!(metered.credentials().is_none());
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
