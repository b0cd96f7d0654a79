//! The broker address both sides are configured with: `mqtt://host[:port]` (also `tcp://`,
//! or a bare `host[:port]`), port 1883 by default, or `mqtts://host[:port]` for MQTT over
//! TLS, port 8883 by default. Defined once so an address that works for the coordinator's
//! `--broker` works for an agent's `--coordinator` too.

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
