//! The node's DNS server: cluster names answered from the Service table, the rest relayed
//! upstream.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use baton_proto::ServiceTable;
use hickory_proto::op::{Header, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::RecordType;
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder, BinEncodable, BinEncoder};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{watch, Semaphore};
use tracing::{debug, info, warn};

use super::names::{Lookup, Names, Srv};
use super::upstream::{relay_tcp, relay_udp, Upstreams};
use super::DnsError;

/// CoreDNS's kubernetes plugin default: short, so a changed Service is seen soon even by a
/// resolver that caches.
const TTL: u32 = 5;
/// Queries relayed upstream at once; past it a query gets SERVFAIL at once: a pod flooding
/// the node gets no more than this many packets sent for it, and memory stays bounded.
pub const MAX_IN_FLIGHT: usize = 64;
/// TCP connections served at once, and how long an idle one is kept.
const MAX_TCP: usize = 16;
const TCP_IDLE: Duration = Duration::from_secs(10);

/// What the server answers from: the Service table (rebuilt into [`Names`] when its digest
/// changes, on the next query) and the upstreams.
pub struct Resolver {
    table: watch::Receiver<ServiceTable>,
    names: Mutex<(u64, Arc<Names>)>,
    upstreams: Upstreams,
    in_flight: Arc<Semaphore>,
}

/// What to do with one query.
pub enum Reply {
    /// Answered here.
    Now(Vec<u8>),
    /// Not the cluster's: relay it; `servfail` is the answer if no upstream does.
    Relay { servfail: Vec<u8> },
    /// Not a DNS query: dropped.
    Drop,
}

impl Resolver {
    pub fn new(table: watch::Receiver<ServiceTable>, resolv_conf: &Path, own: IpAddr) -> Self {
        let names = {
            let t = table.borrow();
            (t.digest, Arc::new(Names::of(&t)))
        };
        Resolver {
            table,
            names: Mutex::new(names),
            upstreams: Upstreams::new(resolv_conf, own),
            in_flight: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
        }
    }

    fn names(&self) -> Arc<Names> {
        let mut cur = self.names.lock().unwrap_or_else(|e| e.into_inner());
        let t = self.table.borrow();
        if t.digest != cur.0 {
            *cur = (t.digest, Arc::new(Names::of(&t)));
            debug!(names = cur.1.len(), "cluster names rebuilt");
        }
        cur.1.clone()
    }

    /// The answer to `packet`. Only the header and the question are decoded (hickory's
    /// header, name and question codec; no resource-record types, which would link every
    /// record type's code into the agent), and the answer's A records are written here.
    pub fn answer(&self, packet: &[u8], udp: bool) -> Reply {
        let mut dec = BinDecoder::new(packet);
        let Ok(req) = Header::read(&mut dec) else {
            return Reply::Drop;
        };
        if req.message_type() != MessageType::Query {
            return Reply::Drop;
        }
        let mut h = Header::response_from_request(&req);
        h.set_recursion_available(true);
        let q = match (req.query_count(), Query::read(&mut dec)) {
            (1, Ok(q)) => q,
            _ => {
                h.set_response_code(ResponseCode::FormErr);
                return reply(&h, None, Answers::None, udp).map_or(Reply::Drop, Reply::Now);
            }
        };
        if req.op_code() != OpCode::Query {
            h.set_response_code(ResponseCode::NotImp);
            return reply(&h, Some(&q), Answers::None, udp).map_or(Reply::Drop, Reply::Now);
        }
        let names = self.names();
        match names.lookup(&q.name().to_ascii()) {
            Lookup::Elsewhere => {
                h.set_response_code(ResponseCode::ServFail);
                reply(&h, Some(&q), Answers::None, udp)
                    .map_or(Reply::Drop, |servfail| Reply::Relay { servfail })
            }
            Lookup::Missing => {
                h.set_authoritative(true);
                h.set_response_code(ResponseCode::NXDomain);
                reply(&h, Some(&q), Answers::None, udp).map_or(Reply::Drop, Reply::Now)
            }
            Lookup::Found(ips) => {
                h.set_authoritative(true);
                // Pods are IPv4: AAAA and every other type of a known name is an empty
                // NOERROR, so resolvers keep the A answer instead of giving up on the name.
                let answers = match q.query_type() {
                    RecordType::A | RecordType::ANY => Answers::A(ips),
                    _ => Answers::None,
                };
                reply(&h, Some(&q), answers, udp).map_or(Reply::Drop, Reply::Now)
            }
            Lookup::Srv(srv) => {
                h.set_authoritative(true);
                let answers = match q.query_type() {
                    RecordType::SRV | RecordType::ANY => Answers::Srv(srv),
                    _ => Answers::None,
                };
                reply(&h, Some(&q), answers, udp).map_or(Reply::Drop, Reply::Now)
            }
        }
    }
}

/// A DNS message without EDNS: 512 bytes at most over UDP. The request's EDNS is not read:
/// a longer answer is truncated (TC set), and the client asks again over TCP.
const MAX_UDP: usize = 512;
/// A name pointer to the question's name, right after the 12-byte header.
const QNAME: [u8; 2] = [0xc0, 0x0c];

/// The records of an answer, written here (hickory's record types would link every
/// type's code into the agent).
enum Answers<'a> {
    None,
    A(&'a [Ipv4Addr]),
    /// SRV records, with their targets' A records in the additional section.
    Srv(&'a [Srv]),
}

/// Appends one record of class IN: `name` (encoded), type, TTL and `rdata`.
fn record(buf: &mut Vec<u8>, name: &[u8], rtype: RecordType, rdata: &[u8]) {
    buf.extend_from_slice(name);
    buf.extend_from_slice(&u16::from(rtype).to_be_bytes());
    buf.extend_from_slice(&1u16.to_be_bytes());
    buf.extend_from_slice(&TTL.to_be_bytes());
    buf.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
    buf.extend_from_slice(rdata);
}

/// `name` (fully qualified, labels of at most 63 bytes) in wire form, uncompressed.
fn encode_name(out: &mut Vec<u8>, name: &str) {
    for label in name.trim_end_matches('.').split('.') {
        out.push(label.len() as u8);
        out.extend_from_slice(label.as_bytes());
    }
    out.push(0);
}

/// Appends a record to `buf` unless it would take it past `limit`: where it starts.
fn push(
    buf: &mut Vec<u8>,
    limit: usize,
    name: &[u8],
    t: RecordType,
    rdata: &[u8],
) -> Option<usize> {
    let at = buf.len();
    record(buf, name, t, rdata);
    if buf.len() > limit {
        buf.truncate(at);
        return None;
    }
    Some(at)
}

/// The wire bytes of a response: `h` (its counts set here), the question and `answers`.
/// Over UDP, as many answers as fit 512 bytes, with TC set if one did not.
fn reply(h: &Header, q: Option<&Query>, answers: Answers<'_>, udp: bool) -> Option<Vec<u8>> {
    let limit = if udp { MAX_UDP } else { usize::from(u16::MAX) };
    let mut buf = Vec::with_capacity(128);
    let mut enc = BinEncoder::new(&mut buf);
    h.emit(&mut enc).ok()?;
    if let Some(q) = q {
        q.emit(&mut enc).ok()?;
    }
    let (mut an, mut ar, mut truncated) = (0u16, 0u16, false);
    match answers {
        Answers::None => {}
        Answers::A(ips) => {
            for ip in ips {
                if push(&mut buf, limit, &QNAME, RecordType::A, &ip.octets()).is_none() {
                    truncated = true;
                    break;
                }
                an += 1;
            }
        }
        Answers::Srv(srv) => {
            // CoreDNS's weights: an equal share of 100 each.
            let weight = (100 / srv.len().max(1)).max(1) as u16;
            let mut targets = Vec::with_capacity(srv.len());
            for s in srv {
                let mut rdata = Vec::with_capacity(6 + s.target.len() + 1);
                rdata.extend_from_slice(&0u16.to_be_bytes()); // priority
                rdata.extend_from_slice(&weight.to_be_bytes());
                rdata.extend_from_slice(&s.port.to_be_bytes());
                encode_name(&mut rdata, &s.target);
                let Some(at) = push(&mut buf, limit, &QNAME, RecordType::SRV, &rdata) else {
                    truncated = true;
                    break;
                };
                an += 1;
                // Where the target's name is: after this record's name pointer, type,
                // class, TTL, length, priority, weight and port.
                targets.push((at + 18, s.addr));
            }
            // The targets' addresses, saving the client a query, named by pointers to the
            // names above. Additional records left out for room need no TC.
            for (at, addr) in targets {
                let ptr = match u16::try_from(at) {
                    Ok(p) if p <= 0x3fff => (p | 0xc000).to_be_bytes(),
                    _ => break,
                };
                if push(&mut buf, limit, &ptr, RecordType::A, &addr.octets()).is_none() {
                    break;
                }
                ar += 1;
            }
        }
    }
    let mut h = *h;
    h.set_query_count(u16::from(q.is_some()))
        .set_answer_count(an)
        .set_name_server_count(0)
        .set_additional_count(ar)
        .set_truncated(truncated);
    let mut head = Vec::with_capacity(12);
    h.emit(&mut BinEncoder::new(&mut head)).ok()?;
    buf.get_mut(..12)?.copy_from_slice(head.get(..12)?);
    Some(buf)
}

/// Listens on `addr:53` (UDP and TCP) and serves until the runtime ends.
pub async fn serve(resolver: Arc<Resolver>, addr: Ipv4Addr) -> Result<(), DnsError> {
    let at = SocketAddr::from((addr, 53));
    let bind = |source| DnsError::Bind { addr: at, source };
    let udp = Arc::new(UdpSocket::bind(at).await.map_err(bind)?);
    let tcp = TcpListener::bind(at).await.map_err(bind)?;
    info!(%at, "cluster DNS listening");
    tokio::spawn(serve_tcp(resolver.clone(), tcp));
    serve_udp(resolver, udp).await;
    Ok(())
}

async fn serve_udp(resolver: Arc<Resolver>, sock: Arc<UdpSocket>) {
    let mut buf = vec![0u8; 4096];
    loop {
        let (n, peer) = match sock.recv_from(&mut buf).await {
            Ok(x) => x,
            Err(e) => {
                // ICMP errors of earlier replies surface here; the socket is still good.
                debug!(error = %e, "dns receive");
                continue;
            }
        };
        match resolver.answer(&buf[..n], true) {
            Reply::Drop => {}
            Reply::Now(b) => {
                let _ = sock.send_to(&b, peer).await;
            }
            Reply::Relay { servfail } => {
                let Ok(permit) = resolver.in_flight.clone().try_acquire_owned() else {
                    let _ = sock.send_to(&servfail, peer).await;
                    continue;
                };
                let (r, s, query) = (resolver.clone(), sock.clone(), buf[..n].to_vec());
                tokio::spawn(async move {
                    let ups = r.upstreams.current();
                    let b = relay_udp(&ups, &query).await.unwrap_or(servfail);
                    let _ = s.send_to(&b, peer).await;
                    drop(permit);
                });
            }
        }
    }
}

async fn serve_tcp(resolver: Arc<Resolver>, listener: TcpListener) {
    let conns = Arc::new(Semaphore::new(MAX_TCP));
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let Ok(permit) = conns.clone().try_acquire_owned() else {
            continue; // Dropped: closed at once.
        };
        let r = resolver.clone();
        tokio::spawn(async move {
            if let Err(e) = serve_conn(&r, stream).await {
                debug!(error = %e, "dns tcp connection");
            }
            drop(permit);
        });
    }
}

async fn serve_conn(resolver: &Resolver, mut s: TcpStream) -> std::io::Result<()> {
    loop {
        let Ok(len) = tokio::time::timeout(TCP_IDLE, s.read_u16()).await else {
            return Ok(());
        };
        let mut query = vec![0u8; usize::from(len?)];
        s.read_exact(&mut query).await?;
        let b = match resolver.answer(&query, false) {
            Reply::Drop => return Ok(()),
            Reply::Now(b) => b,
            Reply::Relay { servfail } => match resolver.in_flight.try_acquire() {
                Ok(_permit) => {
                    let ups = resolver.upstreams.current();
                    relay_tcp(&ups, &query).await.unwrap_or(servfail)
                }
                Err(_) => servfail,
            },
        };
        s.write_all(&(b.len() as u16).to_be_bytes()).await?;
        s.write_all(&b).await?;
    }
}

/// Starts the server on the node's gateway address as a task; a failure to listen is
/// logged (pods then resolve nothing by cluster name), not fatal to the agent.
pub fn spawn(table: watch::Receiver<ServiceTable>, resolv_conf: &Path, gateway: Ipv4Addr) {
    let resolver = Arc::new(Resolver::new(table, resolv_conf, IpAddr::V4(gateway)));
    tokio::spawn(async move {
        if let Err(e) = serve(resolver, gateway).await {
            warn!(error = %e, "no cluster DNS on this node");
        }
    });
}

#[cfg(test)]
mod tests;
