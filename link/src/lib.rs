//! The broker link's failures as a person can act on them, shared by the agent and the
//! coordinator: what went wrong ([`LinkFault`], from the MQTT client's error by
//! [`link_fault`]), what to do about it ([`LinkFault::advice`]), and how often to say so
//! ([`Repeats`]).
//!
//! Why a crate of its own: both sides connect to the same broker with the same client
//! library (rumqttc over rustls) and must speak of the same failures alike, and the agent
//! reports its last one to the coordinator in its `Hello` (`last_connect_error`). It is
//! not in `proto`, which must know no MQTT client; nothing here knows clocks beyond
//! `std::time`.

mod classify;

pub use classify::link_fault;

use std::fmt;
use std::time::{Duration, Instant};

/// Which side of the link is failing to connect: the advice names its flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Agent,
    Coordinator,
}

/// Why one attempt to connect (or to subscribe) failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkFault {
    /// The TCP connection was refused: nothing listens on that address and port.
    Refused,
    /// No route, an unknown host name, a network that is down.
    Unreachable(String),
    /// No TCP connection, TLS handshake or CONNACK within the client's deadline.
    Timeout,
    /// Our TLS client does not accept the broker's certificate because it does not chain
    /// to the CA we were given (rustls: `BadSignature`, `UnknownIssuer`).
    UntrustedBroker(String),
    /// The broker's certificate is for other names or addresses than the one dialed.
    WrongBrokerName(String),
    /// The broker's certificate has expired or is not valid yet.
    BrokerCertExpired(String),
    /// The broker ended the TLS handshake with an alert: it refused our client
    /// certificate (another CA, none given, expired).
    ClientCertRefused(String),
    /// Some other TLS failure.
    Tls(String),
    /// We spoke TLS and the answer was not TLS: a plain MQTT port.
    NotTls(String),
    /// We spoke plain MQTT and the answer was not MQTT (a TLS alert, an HTTP reply), or
    /// the server hung up without a CONNACK: most likely a TLS port.
    NotMqtt(String),
    /// The broker answered CONNECT with a refusal; the MQTT 3.1.1 return code's name.
    ConnackRefused(String),
    /// The connection was closed after it had been accepted (broker restart, network).
    Closed(String),
    /// The broker answered SUBSCRIBE with failure (0x80): its ACL denies the filter.
    SubscribeDenied(String),
    Other(String),
}

impl fmt::Display for LinkFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LinkFault::Refused => write!(f, "connection refused"),
            LinkFault::Unreachable(why) => write!(f, "unreachable: {why}"),
            LinkFault::Timeout => write!(f, "timed out"),
            LinkFault::UntrustedBroker(why) => {
                write!(f, "tls: the broker's certificate is not trusted: {why}")
            }
            LinkFault::WrongBrokerName(why) => {
                write!(
                    f,
                    "tls: the broker's certificate is for another name: {why}"
                )
            }
            LinkFault::BrokerCertExpired(why) => {
                write!(f, "tls: the broker's certificate is not valid now: {why}")
            }
            LinkFault::ClientCertRefused(why) => {
                write!(f, "tls: the broker refused our client certificate: {why}")
            }
            LinkFault::Tls(why) => write!(f, "tls: {why}"),
            LinkFault::NotTls(why) => write!(f, "the server does not speak TLS: {why}"),
            LinkFault::NotMqtt(why) => write!(f, "the server did not answer as MQTT: {why}"),
            LinkFault::ConnackRefused(code) => {
                write!(f, "the broker refused the connection: return code {code}")
            }
            LinkFault::Closed(why) => write!(f, "connection closed: {why}"),
            LinkFault::SubscribeDenied(filter) => {
                write!(
                    f,
                    "the broker denied the subscription to {filter} (SUBACK 0x80)"
                )
            }
            LinkFault::Other(why) => write!(f, "{why}"),
        }
    }
}

impl LinkFault {
    /// What to check, where it is clear. `tls`: the address was `mqtts://`.
    pub fn advice(&self, side: Side, tls: bool) -> Option<&'static str> {
        use LinkFault as F;
        use Side::*;
        Some(match (self, side) {
            (F::Refused, _) => "nothing listens there: is the broker running, and is the port right?",
            (F::Timeout, _) => "no answer in time: is the address right, or a firewall dropping packets?",
            (F::UntrustedBroker(_), Agent) => {
                "the broker's certificate is not signed by the CA you gave (--mqtt-ca)"
            }
            (F::UntrustedBroker(_), Coordinator) => {
                "the broker's certificate is not signed by the CA you gave (--broker-ca)"
            }
            (F::WrongBrokerName(_), _) => {
                "dial the broker by a name or address its certificate lists (subjectAltName)"
            }
            (F::BrokerCertExpired(_), _) => "renew the broker's certificate, or check this device's clock",
            (F::ClientCertRefused(_), Agent) => {
                "the broker does not accept this node's certificate (--mqtt-cert): is it signed by the CA the broker trusts for clients?"
            }
            (F::ClientCertRefused(_), Coordinator) => {
                "the broker does not accept the coordinator's certificate (--broker-cert): is it signed by the CA the broker trusts for clients?"
            }
            (F::NotTls(_), _) => "is this a plain MQTT port? use mqtt://, or the broker's TLS port",
            (F::NotMqtt(_), _) if !tls => "is this a TLS port? use mqtts://",
            (F::NotMqtt(_), _) => {
                "is this the broker's port? the coordinator's HTTPS API port is not its MQTT port"
            }
            (F::ConnackRefused(code), Agent) if code == "NotAuthorized" && tls => {
                "the broker binds the client id to the certificate: its CN must be this node's name (--node-name); is this another node's certificate?"
            }
            (F::ConnackRefused(code), Coordinator) if code == "NotAuthorized" && tls => {
                "the broker refused the coordinator's certificate; with deploy/mosquitto its CN must be baton:coordinator"
            }
            (F::ConnackRefused(code), _) if code == "NotAuthorized" || code == "BadUserNamePassword" => {
                "the broker wants credentials: use mqtts:// with a client certificate"
            }
            (F::ConnackRefused(code), _) if code == "RefusedProtocolVersion" => {
                "the broker must speak MQTT 3.1.1"
            }
            (F::SubscribeDenied(_), Agent) => {
                "the broker's ACL denies this node its topics: its certificate's CN must be the node name (deploy/mosquitto/acl); or a clustered broker cannot set the subscription up yet; asked again"
            }
            (F::SubscribeDenied(_), Coordinator) => {
                "the broker's ACL denies the coordinator its topics: its certificate's CN must be baton:coordinator (deploy/mosquitto/acl); or a clustered broker cannot set the subscription up yet; asked again"
            }
            _ => return None,
        })
    }

    /// The fault with its advice, as one line (logs, `Hello.last_connect_error`).
    pub fn explain(&self, side: Side, tls: bool) -> String {
        match self.advice(side, tls) {
            Some(a) => format!("{self} ({a})"),
            None => self.to_string(),
        }
    }
}

/// When a connection that keeps failing is worth a warning: the first failure, a failure
/// with another cause, then one per `every` with the count of those not logged. A fault
/// that lasts days costs a line a minute, never silence.
#[derive(Debug, Clone)]
pub struct Repeats {
    every: Duration,
    /// The first failure of the current outage.
    since: Option<Instant>,
    /// Failures in the current outage.
    attempts: u64,
    last_warned: Option<Instant>,
    last_cause: String,
    /// Failures since the last warning that were not logged.
    held: u64,
}

/// A failure worth logging now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Warn {
    /// Failures since the previous warning that were not logged.
    pub held: u64,
    /// Failures in this outage so far, this one included.
    pub attempts: u64,
    /// Since the first failure of this outage.
    pub failing_for: Duration,
}

/// The end of an outage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recovered {
    /// Failed attempts before this success.
    pub attempts: u64,
    /// From the first failure to this success.
    pub after: Duration,
}

impl Repeats {
    pub fn new(every: Duration) -> Self {
        Self {
            every,
            since: None,
            attempts: 0,
            last_warned: None,
            last_cause: String::new(),
            held: 0,
        }
    }

    /// Records a failure with this cause; `Some` when it should be logged.
    pub fn failed(&mut self, now: Instant, cause: &str) -> Option<Warn> {
        let since = *self.since.get_or_insert(now);
        self.attempts += 1;
        let due = match self.last_warned {
            None => true,
            Some(t) => cause != self.last_cause || now.saturating_duration_since(t) >= self.every,
        };
        if !due {
            self.held += 1;
            return None;
        }
        let warn = Warn {
            held: self.held,
            attempts: self.attempts,
            failing_for: now.saturating_duration_since(since),
        };
        self.held = 0;
        self.last_warned = Some(now);
        cause.clone_into(&mut self.last_cause);
        Some(warn)
    }

    /// Records a success; `Some` when it ends an outage.
    pub fn succeeded(&mut self, now: Instant) -> Option<Recovered> {
        let since = self.since.take()?;
        let r = Recovered {
            attempts: self.attempts,
            after: now.saturating_duration_since(since),
        };
        *self = Self::new(self.every);
        Some(r)
    }

    /// Whether the link is failing now (a failure and no success since).
    pub fn failing(&self) -> bool {
        self.since.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_secs(60);

    #[test]
    fn first_then_one_a_minute_with_the_count_then_recovery() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut r = Repeats::new(MIN);
        assert_eq!(r.succeeded(at(0)), None, "no outage, nothing to report");
        assert_eq!(
            r.failed(at(0), "refused"),
            Some(Warn {
                held: 0,
                attempts: 1,
                failing_for: Duration::ZERO
            })
        );
        // Retries every 8 s for a minute: all held.
        for s in (8..60).step_by(8) {
            assert_eq!(r.failed(at(s), "refused"), None, "at {s}s");
        }
        assert!(r.failing());
        assert_eq!(
            r.failed(at(64), "refused"),
            Some(Warn {
                held: 7,
                attempts: 9,
                failing_for: Duration::from_secs(64)
            })
        );
        assert_eq!(r.failed(at(72), "refused"), None);
        assert_eq!(
            r.succeeded(at(75)),
            Some(Recovered {
                attempts: 10,
                after: Duration::from_secs(75)
            })
        );
        assert!(!r.failing());
        // A new outage starts afresh: its first failure is logged at once.
        assert_eq!(
            r.failed(at(80), "refused").map(|w| (w.held, w.attempts)),
            Some((0, 1))
        );
    }

    #[test]
    fn a_new_cause_is_logged_at_once() {
        let t0 = Instant::now();
        let mut r = Repeats::new(MIN);
        assert!(r.failed(t0, "refused").is_some());
        assert!(r.failed(t0 + Duration::from_secs(1), "refused").is_none());
        let w = r
            .failed(t0 + Duration::from_secs(2), "tls: bad signature")
            .unwrap();
        assert_eq!((w.held, w.attempts), (1, 3));
        assert!(r
            .failed(t0 + Duration::from_secs(3), "tls: bad signature")
            .is_none());
    }

    #[test]
    fn advice_names_the_side_and_the_scheme() {
        use LinkFault as F;
        let not_mqtt = F::NotMqtt("x".into());
        assert_eq!(
            not_mqtt.advice(Side::Agent, false),
            Some("is this a TLS port? use mqtts://")
        );
        assert!(not_mqtt
            .advice(Side::Agent, true)
            .unwrap()
            .contains("HTTPS API port"));
        assert!(F::UntrustedBroker("BadSignature".into())
            .explain(Side::Agent, true)
            .ends_with("(the broker's certificate is not signed by the CA you gave (--mqtt-ca))"));
        assert!(F::UntrustedBroker("x".into())
            .explain(Side::Coordinator, true)
            .contains("--broker-ca"));
        let na = F::ConnackRefused("NotAuthorized".into());
        assert!(na
            .explain(Side::Agent, true)
            .contains("another node's certificate"));
        assert!(na
            .explain(Side::Coordinator, true)
            .contains("baton:coordinator"));
        assert!(F::SubscribeDenied("baton/v1/nodes/+/up/#".into())
            .explain(Side::Coordinator, true)
            .contains("SUBACK 0x80"));
        assert_eq!(F::Other("x".into()).explain(Side::Agent, false), "x");
    }
}
