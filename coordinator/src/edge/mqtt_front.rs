//! The embedded broker's TLS front: Baton terminates MQTT's TLS itself and splices each
//! verified connection to rumqttd's plain loopback listener.
//!
//! Why not rumqttd's own TLS listener (0.20): it runs every TLS handshake inside its
//! accept loop with no deadline, so one silent TCP client (no certificate needed) held up
//! every new connection for as long as it liked (11.8 s measured, see docs/security.md);
//! its rustls 0.22 answered an IP address as SNI (which OpenSSL clients send) with a
//! `decode_error`; and it never looks at the client certificate's CN, so any device could
//! connect under another device's client id and take over its session.
//!
//! Here each connection gets its own task:
//! 1. the TLS handshake, with a deadline, requiring a client certificate that chains to
//!    the client CA (rustls 0.23, ring; an IP address as SNI is ignored, as RFC 6066 asks);
//! 2. the first MQTT packet, read within a deadline and a size bound, must be an MQTT
//!    3.1.1 CONNECT whose client id is the certificate's CN (or `baton-agent-<CN>`, the id
//!    Baton's agent uses); anything else is answered with CONNACK "not authorized" and
//!    closed, so one device cannot take over another device's session;
//! 3. the CONNECT is read whole (bounded) and, when the broker has a login, rewritten to
//!    carry it in place of whatever username and password the client sent: rumqttd's
//!    loopback listener requires a password made at each start and known only to this
//!    process, so no local user can connect to it around the front (docs/security.md,
//!    "Local users and the broker");
//! 4. an agent whose CONNECT username asks for it
//!    ([`baton_proto::broker::tcp_liveness_username`], a `lan` agent) gets TCP keepalive
//!    probes on its socket ([`crate::edge::tcp_liveness`]): when the kernel declares it
//!    dead, the copy below fails and the upstream connection closes without a DISCONNECT,
//!    so rumqttd publishes its last will;
//! 5. the bytes read so far, then both directions, are copied to rumqttd's plain listener
//!    on loopback (`tokio::io::copy_bidirectional`).
//!
//! The front runs on its own thread and runtime for the life of the process, like rumqttd
//! itself (which cannot be stopped either, see [`crate::edge::broker`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

use crate::edge::mqtt::{MqttLogin, MAX_CONNECTIONS};
use crate::edge::tcp_liveness::TcpProbes;
use crate::security::pki::common_name;

/// A client that has not finished its TLS handshake by then is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A client that has not sent its CONNECT by then is dropped (rumqttd's own plain
/// listener waits as long).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The most bytes read looking for the CONNECT's client id. Baton's client ids are under
/// 80 bytes; a CONNECT whose client id ends beyond this is refused.
pub const MAX_CONNECT_PREFIX: usize = 1024;
/// The most bytes a whole CONNECT may have (its last will included); the agent's is about
/// 200.
pub const MAX_CONNECT_BYTES: usize = 8 * 1024;
/// The client id prefix of Baton's agent (`agent/src/bus.rs`): `baton-agent-<node>`.
pub const AGENT_CLIENT_ID_PREFIX: &str = "baton-agent-";
/// MQTT 3.1.1 CONNACK, return code 5: "connection refused, not authorized".
const CONNACK_NOT_AUTHORIZED: [u8; 4] = [0x20, 0x02, 0x00, 0x05];

#[derive(Debug, thiserror::Error)]
pub enum MqttFrontError {
    #[error("TLS handshake failed: {0}")]
    Handshake(std::io::Error),
    #[error("TLS handshake timed out")]
    HandshakeTimeout,
    #[error("the client certificate has no usable common name")]
    NoCommonName,
    #[error("no MQTT CONNECT within the deadline")]
    ConnectTimeout,
    #[error("the connection closed before the MQTT CONNECT")]
    Closed,
    #[error("the first packet is not an MQTT CONNECT (first byte {0:#04x})")]
    NotConnect(u8),
    #[error("malformed MQTT CONNECT: {0}")]
    Malformed(&'static str),
    #[error("unsupported MQTT protocol level {0} (3.1.1 only)")]
    Protocol(u8),
    #[error("the MQTT CONNECT's client id ends beyond {MAX_CONNECT_PREFIX} bytes")]
    TooLong,
    #[error("the MQTT CONNECT is over {MAX_CONNECT_BYTES} bytes")]
    ConnectTooLong,
    #[error("certificate CN {0:?} is revoked")]
    Revoked(String),
    #[error("client id {client_id:?} does not belong to certificate CN {cn:?}")]
    ClientIdMismatch { cn: String, client_id: String },
    #[error("cannot reach the broker's loopback listener: {0}")]
    Upstream(std::io::Error),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("cannot start the MQTT TLS front thread: {0}")]
    Thread(std::io::Error),
}

/// What the front needs: the TLS server config (client certificates required) and
/// where rumqttd's plain listener is.
#[derive(Clone)]
pub struct Front {
    pub tls: Arc<rustls::ServerConfig>,
    pub upstream: SocketAddr,
    pub handshake_timeout: Duration,
    pub connect_timeout: Duration,
    /// Connections open at once (in handshake or spliced); more are closed at accept.
    pub max_connections: usize,
    /// The login rumqttd's loopback listener requires, put into every CONNECT.
    pub login: Option<MqttLogin>,
    /// Whether a certificate CN is refused (a revoked node), asked at every connect.
    pub refused: Option<RefuseCn>,
}

/// See [`Front::refused`].
pub type RefuseCn = Arc<dyn Fn(&str) -> bool + Send + Sync>;

impl Front {
    pub fn new(tls: Arc<rustls::ServerConfig>, upstream: SocketAddr) -> Self {
        Self {
            tls,
            upstream,
            handshake_timeout: HANDSHAKE_TIMEOUT,
            connect_timeout: CONNECT_TIMEOUT,
            max_connections: MAX_CONNECTIONS,
            login: None,
            refused: None,
        }
    }
}

/// Runs [`serve`] on a thread of its own (a small runtime of its own), for the life of
/// the process.
pub fn spawn_thread(listener: std::net::TcpListener, front: Front) -> Result<(), MqttFrontError> {
    listener.set_nonblocking(true)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("mqtt-tls")
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("mqtt-tls-accept".into())
        .spawn(move || {
            rt.block_on(async move {
                match TcpListener::from_std(listener) {
                    Ok(l) => serve(l, front).await,
                    Err(e) => {
                        tracing::error!(error = %e, "the MQTT TLS front cannot use its listener")
                    }
                }
            })
        })
        .map_err(MqttFrontError::Thread)?;
    Ok(())
}

/// Accepts for ever; every connection is handled in its own task (see the module docs).
pub async fn serve(listener: TcpListener, front: Front) {
    let acceptor = TlsAcceptor::from(front.tls.clone());
    let slots = Arc::new(Semaphore::new(front.max_connections));
    let front = Arc::new(front);
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "accepting an MQTT connection failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "too many MQTT connections; closing a new one");
            continue;
        };
        let (acceptor, front) = (acceptor.clone(), front.clone());
        tokio::spawn(async move {
            let _slot = slot;
            match handle(tcp, &acceptor, &front).await {
                Ok(()) => {}
                Err(e @ (MqttFrontError::ClientIdMismatch { .. } | MqttFrontError::Revoked(_))) => {
                    tracing::warn!(%peer, error = %e, "MQTT connection refused")
                }
                Err(e) => tracing::debug!(%peer, error = %e, "MQTT connection ended"),
            }
        });
    }
}

async fn handle(
    tcp: TcpStream,
    acceptor: &TlsAcceptor,
    front: &Front,
) -> Result<(), MqttFrontError> {
    let _ = tcp.set_nodelay(true);
    let mut tls = tokio::time::timeout(front.handshake_timeout, acceptor.accept(tcp))
        .await
        .map_err(|_| MqttFrontError::HandshakeTimeout)?
        .map_err(MqttFrontError::Handshake)?;
    let cn = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .and_then(|c| common_name(c))
        .ok_or(MqttFrontError::NoCommonName)?;
    let (client_id, head) = tokio::time::timeout(front.connect_timeout, read_connect(&mut tls))
        .await
        .map_err(|_| MqttFrontError::ConnectTimeout)??;
    // A revoked node's certificate is valid until it expires: refused here by name, so
    // revocation also ends its access to the broker at its next connect.
    if front.refused.as_ref().is_some_and(|refused| refused(&cn)) {
        let _ = tls.write_all(&CONNACK_NOT_AUTHORIZED).await;
        let _ = tls.shutdown().await;
        return Err(MqttFrontError::Revoked(cn));
    }
    if !client_id_allowed(&cn, &client_id) {
        let _ = tls.write_all(&CONNACK_NOT_AUTHORIZED).await;
        let _ = tls.shutdown().await;
        return Err(MqttFrontError::ClientIdMismatch { cn, client_id });
    }
    if let Some(probes) = connect_username(&head)?
        .as_deref()
        .and_then(baton_proto::broker::parse_tcp_liveness)
        .and_then(|secs| TcpProbes::within(Duration::from_secs(secs.into())))
    {
        // Without them the agent is still served; its loss is then noticed only through
        // its (long) MQTT keepalive, so say so.
        if let Err(e) = probes.apply(tls.get_ref().0) {
            tracing::warn!(%client_id, error = %e, "cannot watch an agent's connection with TCP keepalive probes");
        }
    }
    let head = match &front.login {
        Some(login) => with_login(&head, login)?,
        None => head,
    };
    let mut up = TcpStream::connect(front.upstream)
        .await
        .map_err(MqttFrontError::Upstream)?;
    let _ = up.set_nodelay(true);
    up.write_all(&head)
        .await
        .map_err(MqttFrontError::Upstream)?;
    tokio::io::copy_bidirectional(&mut tls, &mut up).await?;
    Ok(())
}

/// Whether a client with certificate CN `cn` may use `client_id`: the CN itself, or the
/// agent's `baton-agent-<CN>`.
pub fn client_id_allowed(cn: &str, client_id: &str) -> bool {
    client_id == cn || client_id.strip_prefix(AGENT_CLIENT_ID_PREFIX) == Some(cn)
}

/// Reads until the first packet's client id is known and the packet is complete; returns
/// the id with every byte read (to be forwarded to the broker).
async fn read_connect(
    r: &mut (impl AsyncRead + Unpin),
) -> Result<(String, Vec<u8>), MqttFrontError> {
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 512];
    let mut id = None;
    loop {
        if id.is_none() {
            id = connect_client_id(&buf)?;
            if id.is_none() && buf.len() >= MAX_CONNECT_PREFIX {
                return Err(MqttFrontError::TooLong);
            }
        }
        if let Some(id) = &id {
            match fixed_header(&buf)? {
                Some((h, rem)) if h + rem > MAX_CONNECT_BYTES => {
                    return Err(MqttFrontError::ConnectTooLong)
                }
                Some((h, rem)) if buf.len() >= h + rem => return Ok((id.clone(), buf)),
                _ => {}
            }
        }
        let n = r.read(&mut chunk).await?;
        if n == 0 {
            return Err(MqttFrontError::Closed);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// A packet's fixed header: its length and the remaining length it announces, or `None`
/// if more bytes are needed.
fn fixed_header(buf: &[u8]) -> Result<Option<(usize, usize)>, MqttFrontError> {
    let mut remaining: usize = 0;
    let mut pos = 1;
    loop {
        let Some(&b) = buf.get(pos) else {
            return Ok(None);
        };
        remaining |= usize::from(b & 0x7f) << (7 * (pos - 1));
        pos += 1;
        if b & 0x80 == 0 {
            return Ok(Some((pos, remaining)));
        }
        if pos > 4 {
            return Err(MqttFrontError::Malformed("remaining length over 4 bytes"));
        }
    }
}

/// `buf` (a whole CONNECT, checked by [`connect_client_id`], and what followed it) with
/// the CONNECT's username and password replaced by `login`'s.
pub fn with_login(buf: &[u8], login: &MqttLogin) -> Result<Vec<u8>, MqttFrontError> {
    let (h, rem) = fixed_header(buf)?.ok_or(MqttFrontError::Malformed("truncated CONNECT"))?;
    let packet = buf
        .get(h..h + rem)
        .ok_or(MqttFrontError::Malformed("truncated CONNECT"))?;
    // Protocol name (6), level (1), flags (1), keep-alive (2), then the client id and,
    // with the will flag, the will topic and message; username and password come last.
    let flags = *packet
        .get(7)
        .ok_or(MqttFrontError::Malformed("short CONNECT"))?;
    let mut cur = Cursor {
        buf: packet,
        pos: 10,
        end: packet.len(),
    };
    let fields = if flags & 0x04 != 0 { 3 } else { 1 };
    for _ in 0..fields {
        cur.string()?
            .ok_or(MqttFrontError::Malformed("truncated CONNECT"))?;
    }
    let mut var = packet[..cur.pos].to_vec();
    var[7] = flags | 0xc0;
    for field in [&login.username, &login.password] {
        let len = u16::try_from(field.len()).map_err(|_| MqttFrontError::Malformed("login"))?;
        var.extend_from_slice(&len.to_be_bytes());
        var.extend_from_slice(field.as_bytes());
    }
    let mut out = encode_packet(0x10, &var);
    out.extend_from_slice(&buf[h + rem..]);
    Ok(out)
}

/// The username of the whole CONNECT at the start of `buf` (checked by
/// [`connect_client_id`]), if it has one.
pub fn connect_username(buf: &[u8]) -> Result<Option<String>, MqttFrontError> {
    let (h, rem) = fixed_header(buf)?.ok_or(MqttFrontError::Malformed("truncated CONNECT"))?;
    let packet = buf
        .get(h..h + rem)
        .ok_or(MqttFrontError::Malformed("truncated CONNECT"))?;
    let flags = *packet
        .get(7)
        .ok_or(MqttFrontError::Malformed("short CONNECT"))?;
    if flags & 0x80 == 0 {
        return Ok(None);
    }
    let mut cur = Cursor {
        buf: packet,
        pos: 10,
        end: packet.len(),
    };
    // The client id, the will's topic and message, then the username.
    let fields = if flags & 0x04 != 0 { 3 } else { 1 };
    for _ in 0..fields {
        cur.string()?
            .ok_or(MqttFrontError::Malformed("truncated CONNECT"))?;
    }
    let name = cur
        .string()?
        .ok_or(MqttFrontError::Malformed("truncated CONNECT"))?;
    Ok(Some(String::from_utf8_lossy(name).into_owned()))
}

/// One packet: its first byte, the remaining length `rest` announces (7 bits per byte,
/// low bits first, the form [`fixed_header`] reads), then `rest`.
fn encode_packet(first: u8, rest: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    let mut len = rest.len();
    loop {
        let mut b = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            b |= 0x80;
        }
        out.push(b);
        if len == 0 {
            break;
        }
    }
    out.extend_from_slice(rest);
    out
}

/// The client id of an MQTT 3.1.1 CONNECT at the start of `buf`, or `None` if more bytes
/// are needed. Only the fixed header, the variable header and the payload's first field
/// are read: `0x10`, remaining length (1-4 bytes), protocol name `MQTT`, level 4, flags,
/// keep-alive, then the client id as a length-prefixed UTF-8 string.
pub fn connect_client_id(buf: &[u8]) -> Result<Option<String>, MqttFrontError> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    if first != 0x10 {
        return Err(MqttFrontError::NotConnect(first));
    }
    // Remaining length: 7 bits per byte, at most 4 bytes.
    let Some((pos, remaining)) = fixed_header(buf)? else {
        return Ok(None);
    };
    let end = pos + remaining;
    let mut cur = Cursor { buf, pos, end };
    let Some(name) = cur.string()? else {
        return Ok(None);
    };
    if name != b"MQTT" {
        return Err(MqttFrontError::Malformed("protocol name is not MQTT"));
    }
    let Some(level) = cur.bytes(1)? else {
        return Ok(None);
    };
    if level[0] != 4 {
        return Err(MqttFrontError::Protocol(level[0]));
    }
    // Connect flags (1) and keep-alive (2).
    let Some(flags) = cur.bytes(3)? else {
        return Ok(None);
    };
    if flags[0] & 0x01 != 0 {
        return Err(MqttFrontError::Malformed("reserved connect flag set"));
    }
    let Some(id) = cur.string()? else {
        return Ok(None);
    };
    let id =
        std::str::from_utf8(id).map_err(|_| MqttFrontError::Malformed("client id is not UTF-8"))?;
    Ok(Some(id.to_owned()))
}

/// Reads fields of one packet: `None` when `buf` ends too early, an error when the
/// packet itself (its remaining length, `end`) does.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    end: usize,
}

impl<'a> Cursor<'a> {
    fn bytes(&mut self, n: usize) -> Result<Option<&'a [u8]>, MqttFrontError> {
        let to = self.pos + n;
        if to > self.end {
            return Err(MqttFrontError::Malformed(
                "field beyond the packet's length",
            ));
        }
        let Some(b) = self.buf.get(self.pos..to) else {
            return Ok(None);
        };
        self.pos = to;
        Ok(Some(b))
    }

    fn string(&mut self) -> Result<Option<&'a [u8]>, MqttFrontError> {
        let start = self.pos;
        let Some(len) = self.bytes(2)? else {
            return Ok(None);
        };
        let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
        match self.bytes(len)? {
            Some(s) => Ok(Some(s)),
            None => {
                self.pos = start;
                Ok(None)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An MQTT 3.1.1 CONNECT with this client id (clean session, keep-alive 30, no will).
    pub(crate) fn connect_packet(client_id: &str) -> Vec<u8> {
        let mut var = vec![0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 30];
        var.extend_from_slice(&(client_id.len() as u16).to_be_bytes());
        var.extend_from_slice(client_id.as_bytes());
        encode_packet(0x10, &var)
    }

    #[test]
    fn client_id_of_a_connect_at_every_split() {
        let p = connect_packet("baton-agent-pi-1");
        for cut in 0..p.len() {
            assert_eq!(connect_client_id(&p[..cut]).unwrap(), None, "cut at {cut}");
        }
        assert_eq!(
            connect_client_id(&p).unwrap().as_deref(),
            Some("baton-agent-pi-1")
        );
        // Bytes after the CONNECT (a pipelined SUBSCRIBE) do not matter.
        let mut more = p.clone();
        more.extend_from_slice(&[0x82, 0x05, 0, 1, 0, 0, 0]);
        assert_eq!(
            connect_client_id(&more).unwrap().as_deref(),
            Some("baton-agent-pi-1")
        );
        // A long client id needs a 2-byte remaining length.
        let long = "x".repeat(300);
        assert_eq!(
            connect_client_id(&connect_packet(&long)).unwrap(),
            Some(long)
        );
        assert_eq!(
            connect_client_id(&connect_packet("")).unwrap().as_deref(),
            Some("")
        );
    }

    #[test]
    fn anything_but_a_3_1_1_connect_is_refused() {
        let p = connect_packet("a");
        let refused = |b: &[u8]| connect_client_id(b).is_err();
        assert!(refused(&[0x30, 0x00]), "a PUBLISH first");
        assert!(refused(&[0x16, 0x03, 0x01]), "a nested TLS ClientHello");
        let mut v5 = p.clone();
        v5[8] = 5;
        assert!(matches!(
            connect_client_id(&v5),
            Err(MqttFrontError::Protocol(5))
        ));
        let mut name = p.clone();
        name[4] = b'X';
        assert!(refused(&name));
        let mut reserved = p.clone();
        reserved[9] |= 1;
        assert!(refused(&reserved));
        // A remaining length too short for the client id it announces.
        let mut short = p.clone();
        short[1] -= 1;
        assert!(refused(&short));
        assert!(refused(&[0x10, 0xff, 0xff, 0xff, 0xff, 0x01]));
        let mut bad_utf8 = connect_packet("ab");
        let n = bad_utf8.len();
        bad_utf8[n - 1] = 0xff;
        assert!(refused(&bad_utf8));
    }

    #[test]
    fn client_ids_bound_to_the_cn() {
        assert!(client_id_allowed("pi-1", "pi-1"));
        assert!(client_id_allowed("pi-1", "baton-agent-pi-1"));
        for other in [
            "pi-2",
            "baton-agent-pi-2",
            "",
            "baton-agent-",
            "pi-1x",
            "xpi-1",
        ] {
            assert!(!client_id_allowed("pi-1", other), "{other}");
        }
    }

    #[test]
    fn the_login_replaces_the_clients_own() {
        let login = MqttLogin {
            username: "baton-front".into(),
            password: "s3cret".into(),
        };
        let p = connect_packet("baton-agent-pi-1");
        let mut more = p.clone();
        more.extend_from_slice(&[0xc0, 0x00]);
        let out = with_login(&more, &login).unwrap();
        let mut expect = p[2..].to_vec();
        expect[7] |= 0xc0;
        expect.extend_from_slice(b"\x00\x0bbaton-front\x00\x06s3cret");
        assert_eq!(out[0], 0x10);
        assert_eq!(usize::from(out[1]), expect.len());
        assert_eq!(&out[2..2 + expect.len()], &expect[..]);
        // The PINGREQ that followed is kept.
        assert_eq!(&out[2 + expect.len()..], &[0xc0, 0x00]);
        // A client's own username, password and will: the will stays, the login is ours.
        let mut var = vec![0, 4, b'M', b'Q', b'T', b'T', 4, 0xc4 | 0x02, 0, 30];
        for f in ["id", "will/topic", "bye", "mallory", "guess"] {
            var.extend_from_slice(&(f.len() as u16).to_be_bytes());
            var.extend_from_slice(f.as_bytes());
        }
        let mut theirs = vec![0x10, var.len() as u8];
        theirs.extend(var);
        let out = with_login(&theirs, &login).unwrap();
        let text = String::from_utf8_lossy(&out);
        assert!(text.contains("will/topic") && text.contains("bye") && text.contains("s3cret"));
        assert!(
            !text.contains("mallory") && !text.contains("guess"),
            "{text}"
        );
        assert_eq!(connect_client_id(&out).unwrap().as_deref(), Some("id"));
    }

    #[test]
    fn the_username_asks_for_probes() {
        assert_eq!(
            connect_username(&connect_packet("baton-agent-pi-1")).unwrap(),
            None
        );
        // With a will and a username (rumqttc sends no empty password).
        let mut var = vec![0, 4, b'M', b'Q', b'T', b'T', 4, 0x84 | 0x02, 0, 120];
        for f in [
            "baton-agent-pi-1",
            "will/topic",
            "bye",
            "baton-tcp-liveness/20",
        ] {
            var.extend_from_slice(&(f.len() as u16).to_be_bytes());
            var.extend_from_slice(f.as_bytes());
        }
        let mut p = encode_packet(0x10, &var);
        let user = connect_username(&p).unwrap();
        assert_eq!(user.as_deref(), Some("baton-tcp-liveness/20"));
        assert_eq!(
            baton_proto::broker::parse_tcp_liveness(&user.unwrap()),
            Some(20)
        );
        // The login the front puts in replaces it.
        let login = MqttLogin {
            username: "baton-front".into(),
            password: "s3cret".into(),
        };
        let out = with_login(&p, &login).unwrap();
        assert_eq!(
            connect_username(&out).unwrap().as_deref(),
            Some("baton-front")
        );
        p.pop();
        assert!(connect_username(&p).is_err());
    }

    #[tokio::test]
    async fn read_connect_is_bounded() {
        let p = connect_packet("pi-1");
        let (id, head) = read_connect(&mut &p[..]).await.unwrap();
        assert_eq!((id.as_str(), head), ("pi-1", p.clone()));
        let huge = connect_packet(&"x".repeat(2000));
        assert!(matches!(
            read_connect(&mut &huge[..]).await,
            Err(MqttFrontError::TooLong)
        ));
        assert!(matches!(
            read_connect(&mut &p[..5]).await,
            Err(MqttFrontError::Closed)
        ));
    }

    /// A CA, a broker certificate for 127.0.0.1 and a node certificate with CN `pi-1`,
    /// made by the coordinator's own PKI.
    struct Lab {
        dir: tempfile::TempDir,
        files: crate::edge::tls::BrokerTlsFiles,
        node: crate::edge::tls::MqttClientFiles,
    }

    fn lab() -> Lab {
        let dir = tempfile::tempdir().unwrap();
        let pki = crate::security::pki::Pki::load_or_create(&dir.path().join("pki")).unwrap();
        let (cert, key) = pki
            .api_tls(&["127.0.0.1".to_owned(), "localhost".to_owned()])
            .unwrap();
        let ca = dir.path().join("pki").join(crate::security::pki::CA_FILE);
        let device = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
        let now = crate::security::encoding::now_ms() / 1000;
        let node_pem = pki
            .issue_node_cert("pi-1", &device.verifying_key(), now + 3600)
            .unwrap();
        let node_cert = dir.path().join("pi-1.crt");
        let node_key = dir.path().join("pi-1.key");
        std::fs::write(&node_cert, node_pem).unwrap();
        // PKCS#8 v1 (no public key): OpenSSL 3.0 cannot read dalek's v2 encoding.
        use base64::Engine as _;
        let mut der = hex::decode("302e020100300506032b657004220420").unwrap();
        der.extend_from_slice(device.as_bytes());
        let b64 = base64::engine::general_purpose::STANDARD.encode(der);
        std::fs::write(
            &node_key,
            format!("-----BEGIN PRIVATE KEY-----\n{b64}\n-----END PRIVATE KEY-----\n"),
        )
        .unwrap();
        Lab {
            files: crate::edge::tls::BrokerTlsFiles {
                cert,
                key,
                client_ca: ca.clone(),
            },
            node: crate::edge::tls::MqttClientFiles {
                ca,
                cert: node_cert,
                key: node_key,
            },
            dir,
        }
    }

    /// Connects with rumqttc over TLS as `client_id`; the CONNACK's outcome.
    async fn mqtt_connect(
        addr: SocketAddr,
        files: &crate::edge::tls::MqttClientFiles,
        client_id: &str,
    ) -> Result<(), rumqttc::ConnectionError> {
        let tls = crate::edge::tls::mqtt_client_config(files).unwrap();
        let broker = crate::edge::bus::BrokerAddr {
            host: "127.0.0.1".into(),
            port: addr.port(),
            tls: true,
            login: None,
        };
        let opts = crate::edge::bus::mqtt_options(&broker, client_id, Some(tls)).unwrap();
        let (_client, mut events) = rumqttc::AsyncClient::new(opts, 10);
        loop {
            if let rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_)) = events.poll().await? {
                return Ok(());
            }
        }
    }

    /// Silent clients hold TCP connections open without a byte of TLS while a real
    /// device connects; a device using another's client id is refused. The handshake
    /// deadline is set far beyond the test's own deadline, so only handshakes that do not
    /// wait for each other can pass.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn silent_clients_do_not_block_and_client_ids_follow_the_cn() {
        let lab = lab();
        let upstream = crate::edge::broker::start("127.0.0.1:0".parse().unwrap()).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut front = Front::new(
            crate::edge::tls::broker_server_config(&lab.files).unwrap(),
            upstream,
        );
        front.handshake_timeout = Duration::from_secs(600);
        let revoked = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = revoked.clone();
        front.refused = Some(Arc::new(move |cn: &str| {
            cn == "pi-1" && flag.load(std::sync::atomic::Ordering::SeqCst)
        }));
        let server = tokio::spawn(serve(listener, front));

        let mut silent = Vec::new();
        for _ in 0..3 {
            silent.push(TcpStream::connect(addr).await.unwrap());
        }
        let ok = tokio::time::timeout(
            Duration::from_secs(60),
            mqtt_connect(addr, &lab.node, "baton-agent-pi-1"),
        )
        .await
        .expect("a device could not connect while silent clients held the port");
        ok.unwrap();
        mqtt_connect(addr, &lab.node, "pi-1").await.unwrap();

        for other in ["baton-agent-pi-2", "pi-2", ""] {
            let err = tokio::time::timeout(
                Duration::from_secs(60),
                mqtt_connect(addr, &lab.node, other),
            )
            .await
            .unwrap()
            .unwrap_err();
            assert!(
                matches!(
                    err,
                    rumqttc::ConnectionError::ConnectionRefused(
                        rumqttc::ConnectReturnCode::NotAuthorized
                    )
                ),
                "{other:?}: {err:?}"
            );
        }
        // Revoked: its certificate still chains, its connects are refused.
        revoked.store(true, std::sync::atomic::Ordering::SeqCst);
        let err = mqtt_connect(addr, &lab.node, "baton-agent-pi-1")
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                rumqttc::ConnectionError::ConnectionRefused(
                    rumqttc::ConnectReturnCode::NotAuthorized
                )
            ),
            "{err:?}"
        );
        drop(silent);
        server.abort();
    }

    /// OpenSSL clients send an IP address as SNI (`mosquitto_pub -h 127.0.0.1`), which
    /// rumqttd's own TLS refused; through [`crate::edge::broker::start_with`] it publishes.
    #[test]
    fn mosquitto_pub_by_ip_address_through_start_with() {
        let lab = lab();
        let l = crate::edge::broker::start_with("127.0.0.1:0".parse().unwrap(), Some(&lab.files))
            .unwrap();
        assert_ne!(l.addr, l.local);
        assert!(l.local.ip().is_loopback());
        let pubs = |id: &str| {
            std::process::Command::new("mosquitto_pub")
                .args(["-h", "127.0.0.1", "-p", &l.addr.port().to_string()])
                .arg("--cafile")
                .arg(&lab.node.ca)
                .arg("--cert")
                .arg(&lab.node.cert)
                .arg("--key")
                .arg(&lab.node.key)
                .args(["-i", id, "-q", "1", "-t", "baton/test", "-m", "hi"])
                .output()
                .expect("run mosquitto_pub")
        };
        let out = pubs("pi-1");
        assert!(out.status.success(), "{out:?}");
        let out = pubs("pi-2");
        assert!(!out.status.success(), "{out:?}");
        // rumqttd's loopback listener, which any local user can reach, wants the login
        // only the front and the coordinator know: without it, or with a guess, refused.
        let plain = |extra: &[&str]| {
            std::process::Command::new("mosquitto_pub")
                .args(["-h", "127.0.0.1", "-p", &l.local.port().to_string()])
                .args(["-i", "pi-1", "-q", "1", "-t", "baton/test", "-m", "hi"])
                .args(extra)
                .output()
                .expect("run mosquitto_pub")
        };
        let out = plain(&[]);
        assert!(!out.status.success(), "no login: {out:?}");
        let out = plain(&["-u", crate::edge::broker::LOCAL_USERNAME, "-P", "guess"]);
        assert!(!out.status.success(), "a guessed password: {out:?}");
        let login = l.login.clone().expect("a login with TLS");
        let out = plain(&["-u", &login.username, "-P", &login.password]);
        assert!(out.status.success(), "the real login: {out:?}");
        let _ = &lab.dir;
    }
}
