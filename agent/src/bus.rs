//! The agent's MQTT bridge: one producer of node-loop events, one consumer of bodies to
//! send. The node loop never sees MQTT, so its tests drive it with plain channels.
//!
//! Reconnects forever with capped backoff (a device may be offline for days) and never
//! touches running pods when it does. While disconnected, `publish` drops messages rather
//! than queueing them: the protocol is level-triggered, and on reconnect the node loop
//! sends one Hello and one full Status, which supersede anything that was dropped.

use std::sync::atomic::{AtomicBool, Ordering};
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

/// The addresses of a broker list (`mqtt://a:1883,mqtt://b:1883`, see
/// [`baton_proto::broker::parse_broker_list`]), each as written, checked.
pub fn parse_list(list: &str) -> Result<Vec<String>, BusError> {
    baton_proto::broker::parse_broker_list(list).map_err(|e| BusError::BadUrl(e.to_string()))?;
    Ok(list.split(',').map(|e| e.trim().to_owned()).collect())
}

/// [`mqtt_options`] for every address of the broker list `list`, with [`ask_tcp_liveness`].
pub fn list_options(
    list: &str,
    node: &NodeName,
    tls: Option<&MqttTls>,
    link: &crate::link_profile::Settings,
) -> Result<Vec<(String, MqttOptions)>, BusError> {
    parse_list(list)?
        .into_iter()
        .map(|url| {
            let mut opts = mqtt_options(&url, node, tls, link.keepalive)?;
            ask_tcp_liveness(&mut opts, link.tcp_liveness);
            Ok((url, opts))
        })
        .collect()
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

/// The first pause before a refused subscription is asked again; doubled up to
/// [`RECONNECT_CAP`].
const SUBSCRIBE_RETRY: Duration = Duration::from_secs(1);

/// 75-100% of `d`, so agents that lost the broker together do not return in lockstep.
fn with_jitter(d: Duration) -> Duration {
    d.mul_f64(0.75 + rand::random::<f64>() * 0.25)
}

#[derive(Clone)]
pub struct Bus {
    client: AsyncClient,
    node: NodeName,
    /// The next unsigned seq, and the lock that makes numbering and queueing one step:
    /// tasks publish concurrently (the node loop, log and exec sessions), and a message
    /// numbered before another but queued after it would reach the coordinator out of
    /// order, where a signed one is then refused as a replay.
    send: Arc<Mutex<u64>>,
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
    ///
    /// `url` may list several brokers (see [`parse_list`]): the first is tried first, and
    /// every failed or lost connection moves to the next.
    pub fn start_secure(
        url: &str,
        node: NodeName,
        tls: Option<&MqttTls>,
        security: Option<AgentSecurity>,
        link: &crate::link_profile::Settings,
        leader_term: u64,
        events: mpsc::Sender<BusEvent>,
    ) -> Result<Self, BusError> {
        let brokers = list_options(url, &node, tls, link)?;
        if let Some(problem) = tls.and_then(|t| identity_problem(&t.cert_pem, &node)) {
            warn!("{problem}");
        }
        let mut opts = brokers[0].1.clone();
        if let Some(sec) = &security {
            opts.set_last_will(signed_will(sec)?);
        }
        let tls = matches!(opts.transport(), Transport::Tls(_));
        let mut rotation = baton_proto::broker::Rotation::new(brokers.len());
        let (client, mut eventloop) = AsyncClient::new(opts, 64);
        eventloop
            .network_options
            .set_connection_timeout(baton_proto::broker::CONNECT_TIMEOUT_SECS);
        let bus = Bus {
            client,
            node,
            send: Arc::new(Mutex::new(1)),
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
            let mut resubscribe = SUBSCRIBE_RETRY;
            let mut link = LinkLog::new(brokers[0].0.clone(), tls);
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
                        resubscribe = SUBSCRIBE_RETRY;
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
                            let filter = topics::agent_filter(&task.node);
                            // Said once a connection; retried, since a clustered broker
                            // (NATS) also refuses while it cannot set a subscription up.
                            if resubscribe == SUBSCRIBE_RETRY {
                                link.subscribe_denied(&filter);
                            }
                            let (client, wait) = (task.client.clone(), with_jitter(resubscribe));
                            tokio::spawn(async move {
                                tokio::time::sleep(wait).await;
                                let _ = client.try_subscribe(filter, QoS::AtLeastOnce);
                            });
                            resubscribe = (resubscribe * 2).min(RECONNECT_CAP);
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
                            warn!(error = %e, broker = %link.url, "lost the broker; pods keep running, reconnecting");
                            link.lost(&e);
                            if events.send(BusEvent::Disconnected).await.is_err() {
                                return;
                            }
                        } else {
                            debug!(error = %e, retry_in = ?backoff, "broker unreachable");
                            let _ = link.failed(&e);
                        }
                        // The next attempt goes to the next broker of the list, if any,
                        // with the last will just signed.
                        if brokers.len() > 1 {
                            let (url, opts) = &brokers[rotation.advance()];
                            let will = eventloop.mqtt_options.last_will();
                            eventloop.mqtt_options = opts.clone();
                            if let Some(will) = will {
                                eventloop.mqtt_options.set_last_will(will);
                            }
                            link.url = url.clone();
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
        let mut next = self.send.lock().unwrap_or_else(|e| e.into_inner());
        let (topic, payload) = match &self.security {
            Some(sec) => sec.seal(body).map_err(|e| BusError::Sign(e.to_string()))?,
            None => {
                let topic = topics::topic_for(&self.node, &body);
                let payload =
                    Envelope::new(Sender::Node(self.node.clone()), *next, body).encode()?;
                *next += 1;
                (topic, payload)
            }
        };
        // Still under the lock: queued in the order numbered.
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
        // NATS 2.9.10, Debian 12's, refuses '.' in MQTT topics (nats-server#4243 maps it).
        let dot = match filter.contains('.') {
            true => "; NATS 2.9.10 refuses a node name with '.' in MQTT topics",
            false => "",
        };
        warn!(broker = %self.url, "the MQTT broker at {}: {}{dot}", self.url, fault.explain(Side::Agent, self.tls));
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
mod tests;
