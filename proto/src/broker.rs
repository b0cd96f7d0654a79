//! The broker address both sides are configured with: `mqtt://host[:port]` (also `tcp://`,
//! or a bare `host[:port]`), port 1883 by default. Defined once so an address that works
//! for the coordinator's `--broker` works for an agent's `--coordinator` too.

use crate::ProtoError;

pub const DEFAULT_PORT: u16 = 1883;

/// Splits a broker address into host and port.
pub fn parse_broker_url(url: &str) -> Result<(String, u16), ProtoError> {
    let err = |reason: &str| ProtoError::BrokerUrl {
        url: url.to_owned(),
        reason: reason.to_owned(),
    };
    let rest = match url.split_once("://") {
        Some(("mqtt" | "tcp", rest)) => rest,
        Some((scheme, _)) => {
            return Err(err(&format!(
                "unsupported scheme {scheme:?}: use mqtt://host:port"
            )))
        }
        None => url,
    };
    let rest = rest.trim_end_matches('/');
    if rest.is_empty() || rest.contains('/') || rest.contains('@') {
        return Err(err("expected mqtt://host:port"));
    }
    if let Ok(sa) = rest.parse::<core::net::SocketAddr>() {
        return Ok((sa.ip().to_string(), sa.port()));
    }
    let (host, port) = match rest.rsplit_once(':') {
        // A colon inside an unbracketed host is an IPv6 address without a port.
        Some((h, p)) if !h.contains(':') || h.starts_with('[') => (
            h.trim_start_matches('[').trim_end_matches(']'),
            p.parse::<u16>().map_err(|_| err("bad port"))?,
        ),
        _ => (
            rest.trim_start_matches('[').trim_end_matches(']'),
            DEFAULT_PORT,
        ),
    };
    if host.is_empty() {
        return Err(err("missing host"));
    }
    Ok((host.to_owned(), port))
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
        ] {
            assert!(parse_broker_url(bad).is_err(), "{bad:?}");
        }
    }
}
