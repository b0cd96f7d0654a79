//! The node's DNS server: cluster names answered from the Service table, the rest relayed
//! upstream.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use baton_proto::ServiceTable;
use hickory_proto::op::{Header, Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{watch, Semaphore};
use tracing::{debug, info, warn};

use super::names::{Lookup, Names};
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

    /// The answer to `packet`; `max` is the largest reply the transport takes.
    pub fn answer(&self, packet: &[u8], udp: bool) -> Reply {
        let Ok(req) = Message::from_vec(packet) else {
            return match packet.get(..2) {
                Some(id) if packet.len() >= 12 => {
                    let id = u16::from_be_bytes([id[0], id[1]]);
                    encode(&Message::error_msg(
                        id,
                        OpCode::Query,
                        ResponseCode::FormErr,
                    ))
                    .map_or(Reply::Drop, Reply::Now)
                }
                _ => Reply::Drop,
            };
        };
        if req.message_type() != MessageType::Query {
            return Reply::Drop;
        }
        let mut resp = Message::new();
        resp.set_header(Header::response_from_request(req.header()));
        resp.add_queries(req.queries().iter().cloned());
        let [q] = req.queries() else {
            resp.set_response_code(ResponseCode::FormErr);
            return encode(&resp).map_or(Reply::Drop, Reply::Now);
        };
        if req.op_code() != OpCode::Query {
            resp.set_response_code(ResponseCode::NotImp);
            return encode(&resp).map_or(Reply::Drop, Reply::Now);
        }
        let names = self.names();
        match names.lookup(&q.name().to_ascii()) {
            Lookup::Elsewhere => {
                resp.set_recursion_available(true);
                resp.set_response_code(ResponseCode::ServFail);
                encode(&resp).map_or(Reply::Drop, |servfail| Reply::Relay { servfail })
            }
            Lookup::Missing => {
                resp.set_authoritative(true).set_recursion_available(true);
                resp.set_response_code(ResponseCode::NXDomain);
                encode(&resp).map_or(Reply::Drop, Reply::Now)
            }
            Lookup::Found(ips) => {
                resp.set_authoritative(true).set_recursion_available(true);
                // Pods are IPv4: AAAA and every other type of a known name is an empty
                // NOERROR, so resolvers keep the A answer instead of giving up on the name.
                if matches!(q.query_type(), RecordType::A | RecordType::ANY) {
                    resp.add_answers(
                        ips.iter()
                            .map(|ip| Record::from_rdata(q.name().clone(), TTL, RData::A(A(*ip)))),
                    );
                }
                let Some(mut bytes) = encode(&resp) else {
                    return Reply::Drop;
                };
                if udp && bytes.len() > usize::from(req.max_payload()) {
                    // Too many pod IPs for the datagram: the client asks again over TCP.
                    match encode(&resp.truncate()) {
                        Some(b) => bytes = b,
                        None => return Reply::Drop,
                    }
                }
                Reply::Now(bytes)
            }
        }
    }
}

fn encode(m: &Message) -> Option<Vec<u8>> {
    m.to_vec().ok()
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
