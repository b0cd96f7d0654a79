//! rumqttc's and rustls's errors, mapped to the fault whose advice fits.

use rumqttc::{ConnectionError, StateError};

use crate::LinkFault;

/// What an MQTT client error means for the person running the agent or the coordinator.
/// `connected`: the connection had been up (a loss, not a failure to connect).
pub fn link_fault(e: &ConnectionError, connected: bool) -> LinkFault {
    match e {
        ConnectionError::ConnectionRefused(code) => {
            return LinkFault::ConnackRefused(format!("{code:?}"))
        }
        ConnectionError::NotConnAck(p) => {
            let first = format!("{p:?}");
            let name = first.split(['(', ' ']).next().unwrap_or("?");
            return LinkFault::NotMqtt(format!("expected a CONNACK, got a {name} packet"));
        }
        ConnectionError::NetworkTimeout | ConnectionError::FlushTimeout => {
            return LinkFault::Timeout
        }
        _ => {}
    }
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(r) = err.downcast_ref::<rustls::Error>() {
            return tls_fault(r);
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            // io::Error's `source` skips its payload: rustls's error is that payload.
            if let Some(r) = io.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
                return tls_fault(r);
            }
            return io_fault(io, connected);
        }
        cur = err.source();
    }
    match e {
        ConnectionError::MqttState(StateError::ConnectionAborted) if !connected => {
            LinkFault::NotMqtt("the server hung up without answering CONNECT".into())
        }
        ConnectionError::MqttState(StateError::Deserialization(d)) if !connected => {
            LinkFault::NotMqtt(format!("its answer is not an MQTT packet ({d})"))
        }
        ConnectionError::MqttState(_) if connected => LinkFault::Closed(e.to_string()),
        _ => LinkFault::Other(e.to_string()),
    }
}

fn io_fault(e: &std::io::Error, connected: bool) -> LinkFault {
    use std::io::ErrorKind as K;
    match e.kind() {
        K::ConnectionRefused => LinkFault::Refused,
        K::TimedOut => LinkFault::Timeout,
        K::HostUnreachable | K::NetworkUnreachable | K::NetworkDown | K::AddrNotAvailable => {
            LinkFault::Unreachable(e.to_string())
        }
        K::ConnectionReset | K::UnexpectedEof | K::BrokenPipe | K::ConnectionAborted
            if !connected =>
        {
            LinkFault::NotMqtt(format!("the server hung up without answering CONNECT: {e}"))
        }
        _ if connected => LinkFault::Closed(e.to_string()),
        // Name resolution failures come as uncategorized errors.
        _ if e.to_string().contains("lookup") => LinkFault::Unreachable(e.to_string()),
        _ => LinkFault::Other(e.to_string()),
    }
}

fn tls_fault(e: &rustls::Error) -> LinkFault {
    use rustls::{AlertDescription as A, CertificateError as C, Error as E};
    match e {
        E::InvalidCertificate(c) => match c {
            C::BadSignature | C::UnknownIssuer | C::BadEncoding => {
                LinkFault::UntrustedBroker(format!("{c:?}"))
            }
            C::NotValidForName | C::NotValidForNameContext { .. } => {
                LinkFault::WrongBrokerName(e.to_string())
            }
            C::Expired
            | C::ExpiredContext { .. }
            | C::NotValidYet
            | C::NotValidYetContext { .. } => LinkFault::BrokerCertExpired(e.to_string()),
            _ => LinkFault::Tls(e.to_string()),
        },
        E::AlertReceived(
            a @ (A::BadCertificate
            | A::UnknownCA
            | A::CertificateRequired
            | A::CertificateUnknown
            | A::CertificateExpired
            | A::CertificateRevoked
            | A::UnsupportedCertificate
            | A::AccessDenied
            | A::DecryptError),
        ) => LinkFault::ClientCertRefused(format!("it sent the TLS alert {a:?}")),
        E::InvalidMessage(_) => LinkFault::NotTls(e.to_string()),
        _ => LinkFault::Tls(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use rumqttc::{ConnectReturnCode, TlsError};
    use std::io::{Error as IoError, ErrorKind};

    fn rustls_io(e: rustls::Error) -> IoError {
        IoError::new(ErrorKind::InvalidData, e)
    }

    /// The client library's errors, as the e2e tests (tests/tests/diagnostics.rs) saw them
    /// for each misconfiguration, map to the fault whose advice fits.
    #[test]
    fn client_errors_map_to_actionable_faults() {
        use rustls::{AlertDescription, CertificateError, InvalidMessage};
        let refused = ConnectionError::Io(IoError::from(ErrorKind::ConnectionRefused));
        assert_eq!(link_fault(&refused, false), LinkFault::Refused);
        let bad_sig = ConnectionError::Tls(TlsError::Io(rustls_io(
            rustls::Error::InvalidCertificate(CertificateError::BadSignature),
        )));
        assert_eq!(
            link_fault(&bad_sig, false),
            LinkFault::UntrustedBroker("BadSignature".into())
        );
        let unknown = ConnectionError::Tls(TlsError::TLS(rustls::Error::InvalidCertificate(
            CertificateError::UnknownIssuer,
        )));
        assert_eq!(
            link_fault(&unknown, false),
            LinkFault::UntrustedBroker("UnknownIssuer".into())
        );
        let expired = ConnectionError::Tls(TlsError::Io(rustls_io(
            rustls::Error::InvalidCertificate(CertificateError::Expired),
        )));
        assert!(matches!(
            link_fault(&expired, false),
            LinkFault::BrokerCertExpired(_)
        ));
        let name = ConnectionError::Tls(TlsError::Io(rustls_io(
            rustls::Error::InvalidCertificate(CertificateError::NotValidForName),
        )));
        assert!(matches!(
            link_fault(&name, false),
            LinkFault::WrongBrokerName(_)
        ));
        // Our certificate refused by the broker: an alert, read after the handshake.
        let alert = ConnectionError::MqttState(StateError::Io(rustls_io(
            rustls::Error::AlertReceived(AlertDescription::UnknownCA),
        )));
        assert!(matches!(
            link_fault(&alert, false),
            LinkFault::ClientCertRefused(_)
        ));
        // mqtts:// to a plain MQTT port.
        let plain = ConnectionError::Tls(TlsError::Io(rustls_io(rustls::Error::InvalidMessage(
            InvalidMessage::InvalidContentType,
        ))));
        assert!(matches!(link_fault(&plain, false), LinkFault::NotTls(_)));
        let na = ConnectionError::ConnectionRefused(ConnectReturnCode::NotAuthorized);
        assert_eq!(
            link_fault(&na, false),
            LinkFault::ConnackRefused("NotAuthorized".into())
        );
        // mqtt:// to a TLS port: the TLS alert is not an MQTT packet, or it hangs up.
        let garbage = ConnectionError::MqttState(StateError::Deserialization(
            rumqttc::mqttbytes::Error::BoundaryCrossed(768),
        ));
        assert!(matches!(link_fault(&garbage, false), LinkFault::NotMqtt(_)));
        let hangup = ConnectionError::MqttState(StateError::ConnectionAborted);
        assert!(matches!(link_fault(&hangup, false), LinkFault::NotMqtt(_)));
        assert!(matches!(link_fault(&hangup, true), LinkFault::Closed(_)));
        let reset = ConnectionError::Io(IoError::from(ErrorKind::ConnectionReset));
        assert!(matches!(link_fault(&reset, false), LinkFault::NotMqtt(_)));
        assert!(matches!(link_fault(&reset, true), LinkFault::Closed(_)));
        assert_eq!(
            link_fault(&ConnectionError::NetworkTimeout, false),
            LinkFault::Timeout
        );
        let unreachable = ConnectionError::Io(IoError::from(ErrorKind::HostUnreachable));
        assert!(matches!(
            link_fault(&unreachable, false),
            LinkFault::Unreachable(_)
        ));
    }
}
