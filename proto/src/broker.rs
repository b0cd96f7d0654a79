//! The broker address both sides are configured with: `mqtt://host[:port]` (also `tcp://`,
//! or a bare `host[:port]`), port 1883 by default, or `mqtts://host[:port]` for MQTT over
//! TLS, port 8883 by default. Defined once so an address that works for the coordinator's
//! `--broker` works for an agent's `--coordinator` too.
//!
//! Either side may name several addresses, comma-separated: the members of one broker
//! cluster ([`parse_broker_list`]). It connects to one at a time and moves to the next
//! ([`Rotation`]) whenever a connection fails or is lost.

use crate::ProtoError;

pub const DEFAULT_PORT: u16 = 1883;
/// The IANA port for MQTT over TLS.
pub const DEFAULT_TLS_PORT: u16 = 8883;

/// A parsed broker address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerUrl {
    pub host: String,
    pub port: u16,
    /// `mqtts://`: the connection must be TLS. Never inferred from the port, so a typo
    /// cannot silently downgrade a connection to clear text.
    pub tls: bool,
}

impl BrokerUrl {
    pub fn parse(url: &str) -> Result<Self, ProtoError> {
        let err = |reason: &str| ProtoError::BrokerUrl {
            url: url.to_owned(),
            reason: reason.to_owned(),
        };
        let (rest, tls) = match url.split_once("://") {
            Some(("mqtt" | "tcp", rest)) => (rest, false),
            Some(("mqtts", rest)) => (rest, true),
            Some((scheme, _)) => {
                return Err(err(&format!(
                    "unsupported scheme {scheme:?}: use mqtt://host:port or mqtts://host:port"
                )))
            }
            None => (url, false),
        };
        let default_port = if tls { DEFAULT_TLS_PORT } else { DEFAULT_PORT };
        let rest = rest.trim_end_matches('/');
        if rest.is_empty() || rest.contains('/') || rest.contains('@') {
            return Err(err("expected mqtt://host:port"));
        }
        if let Ok(sa) = rest.parse::<core::net::SocketAddr>() {
            return Ok(Self {
                host: sa.ip().to_string(),
                port: sa.port(),
                tls,
            });
        }
        let (host, port) = match rest.rsplit_once(':') {
            // A colon inside an unbracketed host is an IPv6 address without a port.
            Some((h, p)) if !h.contains(':') || h.starts_with('[') => (
                h.trim_start_matches('[').trim_end_matches(']'),
                p.parse::<u16>().map_err(|_| err("bad port"))?,
            ),
            _ => (
                rest.trim_start_matches('[').trim_end_matches(']'),
                default_port,
            ),
        };
        if host.is_empty() {
            return Err(err("missing host"));
        }
        Ok(Self {
            host: host.to_owned(),
            port,
            tls,
        })
    }
}

/// A comma-separated list of broker addresses, e.g.
/// `mqtt://10.0.0.1:1883,mqtt://10.0.0.2:1883`. A single address parses (and fails) exactly
/// as [`BrokerUrl::parse`]; in a longer list the error names the entry by position. Every
/// entry uses the same scheme, so that failing over never drops TLS (nor asks for it
/// without the material).
pub fn parse_broker_list(list: &str) -> Result<Vec<BrokerUrl>, ProtoError> {
    let entries: Vec<&str> = list.split(',').map(str::trim).collect();
    if let [one] = entries[..] {
        return BrokerUrl::parse(one).map(|u| vec![u]);
    }
    let n = entries.len();
    let err = |i: usize, reason: String| ProtoError::BrokerUrl {
        url: list.to_owned(),
        reason: format!("entry {} of {n}: {reason}", i + 1),
    };
    let mut out: Vec<BrokerUrl> = Vec::with_capacity(n);
    for (i, e) in entries.into_iter().enumerate() {
        if e.is_empty() {
            return Err(err(i, "empty (a stray comma?)".into()));
        }
        let u = BrokerUrl::parse(e).map_err(|e| match e {
            ProtoError::BrokerUrl { url, reason } => err(i, format!("{url:?}: {reason}")),
            other => err(i, other.to_string()),
        })?;
        if out.first().is_some_and(|f| f.tls != u.tls) {
            return Err(err(
                i,
                "mixes mqtt:// and mqtts://: every broker of a list uses the same scheme".into(),
            ));
        }
        out.push(u);
    }
    Ok(out)
}

/// How long a client waits for a broker to take its connection (TCP, then CONNACK) before
/// it gives up on that broker and tries the next. rumqttc's default is 5 s, but NATS
/// answers a CONNECT only after the JetStream calls that set its session up, each of
/// which may wait 4 s while JetStream moves its leaders (a node just died), and a clean
/// session makes up to five in a row (its read loop took up to 20.6 s a packet in
/// tests/tests/ha_chaos.rs). A client
/// that gave up is connected there all the same a moment later; the broker then closes
/// the abandoned connection and publishes its last will, though the client is by now
/// connected elsewhere, and the node flaps NotReady. A dead broker costs little more: its
/// host refuses at once, and an unreachable host on the LAN fails within seconds (no ARP
/// answer); only a black-holed route waits this long.
pub const CONNECT_TIMEOUT_SECS: u64 = 30;

/// Which address of a broker list to connect to: the first, then round robin, one step
/// after every failed or lost connection. With one address it never moves.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rotation {
    len: usize,
    at: usize,
}

impl Rotation {
    pub fn new(len: usize) -> Self {
        Self { len, at: 0 }
    }

    /// The index of the address to use now.
    pub fn current(&self) -> usize {
        self.at
    }

    /// Moves to the next address (after the last, the first) and returns its index.
    pub fn advance(&mut self) -> usize {
        self.at = (self.at + 1) % self.len.max(1);
        self.at
    }
}

/// Splits a broker address into host and port (see [`BrokerUrl::parse`] for whether it
/// asks for TLS).
pub fn parse_broker_url(url: &str) -> Result<(String, u16), ProtoError> {
    BrokerUrl::parse(url).map(|u| (u.host, u.port))
}

/// The CONNECT username with which an agent asks Baton's MQTT TLS front to watch its
/// connection with TCP keepalive probes, so that its loss is noticed within `secs` seconds
/// while its MQTT keepalive stays long (see the agent's `link_profile`). The username is
/// free for this: the front replaces it with the broker's own login before rumqttd sees
/// it. An agent sends it only to a Baton front: Mosquitto would take it as a login.
pub const TCP_LIVENESS_USERNAME_PREFIX: &str = "baton-tcp-liveness/";

/// See [`TCP_LIVENESS_USERNAME_PREFIX`].
pub fn tcp_liveness_username(secs: u32) -> String {
    format!("{TCP_LIVENESS_USERNAME_PREFIX}{secs}")
}

/// The seconds a [`tcp_liveness_username`] asks for; `None` for any other username.
pub fn parse_tcp_liveness(username: &str) -> Option<u32> {
    let secs = username.strip_prefix(TCP_LIVENESS_USERNAME_PREFIX)?;
    // Digits only: `u32::from_str` would also take a leading `+`.
    if secs.is_empty() || !secs.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    secs.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        let ok = |u: &str, h: &str, p: u16| {
            assert_eq!(parse_broker_url(u).unwrap(), (h.to_owned(), p), "{u}")
        };
        ok("mqtt://127.0.0.1:1884", "127.0.0.1", 1884);
        ok("mqtt://broker.local", "broker.local", 1883);
        ok("tcp://[::1]:1885", "::1", 1885);
        ok("localhost:9", "localhost", 9);
        ok("broker.lan", "broker.lan", 1883);
        for bad in [
            "",
            "http://x:1",
            "mqtt://",
            "mqtt://h:notaport",
            "mqtt://u@h:1",
            "mqtt://h:1/x",
            ":1883",
            "mqtts://",
            "ssl://h:1",
        ] {
            assert!(parse_broker_url(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn tls_only_from_the_scheme() {
        let u = |s: &str| BrokerUrl::parse(s).unwrap();
        assert_eq!(
            u("mqtts://broker.lan"),
            BrokerUrl {
                host: "broker.lan".into(),
                port: 8883,
                tls: true
            }
        );
        assert_eq!(u("mqtts://10.0.0.1:1884").port, 1884);
        assert!(u("mqtts://[::1]:8884").tls);
        // Port 8883 without the scheme is still clear text: never guessed from the port.
        assert!(!u("mqtt://h:8883").tls && !u("h:8883").tls);
        assert_eq!(parse_broker_url("mqtts://h").unwrap(), ("h".into(), 8883));
    }

    #[test]
    fn broker_lists() {
        let hosts = |l: &str| -> Vec<(String, u16)> {
            parse_broker_list(l)
                .unwrap()
                .into_iter()
                .map(|u| (u.host, u.port))
                .collect()
        };
        assert_eq!(hosts("mqtt://a:1"), [("a".into(), 1)]);
        assert_eq!(
            hosts("mqtt://a:1, b,tcp://[::1]:3"),
            [("a".into(), 1), ("b".into(), 1883), ("::1".into(), 3)]
        );
        let tls = parse_broker_list("mqtts://a,mqtts://b:8884").unwrap();
        assert!(tls.iter().all(|u| u.tls) && tls[1].port == 8884);
        // One address: the same error as before lists existed.
        assert_eq!(
            parse_broker_list("mqtt://h:x").unwrap_err().to_string(),
            BrokerUrl::parse("mqtt://h:x").unwrap_err().to_string()
        );
        let err = |l: &str| parse_broker_list(l).unwrap_err().to_string();
        for (list, says) in [
            ("mqtt://a,,mqtt://b", "entry 2 of 3: empty"),
            ("mqtt://a,", "entry 2 of 2: empty"),
            (",mqtt://a", "entry 1 of 2: empty"),
            (
                "mqtt://a,mqtt://b:notaport",
                "entry 2 of 2: \"mqtt://b:notaport\": bad port",
            ),
            (
                "mqtt://a,http://b",
                "entry 2 of 2: \"http://b\": unsupported scheme",
            ),
            (
                "mqtts://a,mqtt://b",
                "entry 2 of 2: mixes mqtt:// and mqtts://",
            ),
            ("a,mqtts://b", "entry 2 of 2: mixes"),
        ] {
            let e = err(list);
            assert!(e.contains(says), "{list:?}: {e}");
        }
    }

    #[test]
    fn rotation_is_round_robin() {
        let mut r = Rotation::new(3);
        assert_eq!(r.current(), 0);
        let seen: Vec<usize> = (0..5).map(|_| r.advance()).collect();
        assert_eq!(seen, [1, 2, 0, 1, 2]);
        assert_eq!(r.current(), 2);
        let mut one = Rotation::new(1);
        assert_eq!((one.advance(), one.advance(), one.current()), (0, 0, 0));
    }

    #[test]
    fn tcp_liveness_usernames() {
        assert_eq!(tcp_liveness_username(20), "baton-tcp-liveness/20");
        assert_eq!(parse_tcp_liveness(&tcp_liveness_username(20)), Some(20));
        for other in [
            "",
            "baton-front",
            "baton-tcp-liveness/",
            "baton-tcp-liveness/+20",
            "baton-tcp-liveness/20s",
            "baton-tcp-liveness/99999999999",
            "x-baton-tcp-liveness/20",
        ] {
            assert_eq!(parse_tcp_liveness(other), None, "{other:?}");
        }
    }
}
