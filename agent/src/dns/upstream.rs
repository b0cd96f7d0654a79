//! The node's upstream resolvers (the `nameserver` lines of `--resolv-conf`) and the relay
//! of a query to them: the packet as the pod sent it, the first answer back.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::time::timeout;

/// How long one upstream gets to answer before the next is asked (resolv.conf's own
/// default is 5 s for the whole try; pods' resolvers ask again after it).
pub const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);
/// glibc's MAXNS: resolv.conf names at most three.
const MAX_UPSTREAMS: usize = 3;

/// The `nameserver` addresses of resolv.conf text, port 53, at most three; `skip` (the node's
/// own DNS address) left out so a query is never relayed back to this server.
pub fn nameservers(text: &str, skip: IpAddr) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            (w.next() == Some("nameserver")).then(|| w.next())?
        })
        // An IPv6 address may carry a zone (`fe80::1%eth0`), which SocketAddr cannot.
        .filter_map(|a| a.parse::<IpAddr>().ok())
        .filter(|a| *a != skip)
        .map(|a| SocketAddr::new(a, 53))
        .take(MAX_UPSTREAMS)
        .collect()
}

/// The upstreams of the file at `path`, read again when the file changes (DHCP rewrites it).
pub struct Upstreams {
    path: PathBuf,
    skip: IpAddr,
    cached: Mutex<(Option<SystemTime>, Vec<SocketAddr>)>,
}

impl Upstreams {
    pub fn new(path: &Path, skip: IpAddr) -> Self {
        Upstreams {
            path: path.to_owned(),
            skip,
            cached: Mutex::new((None, Vec::new())),
        }
    }

    pub fn current(&self) -> Vec<SocketAddr> {
        let mtime = std::fs::metadata(&self.path)
            .and_then(|m| m.modified())
            .ok();
        let mut c = self.cached.lock().unwrap_or_else(|e| e.into_inner());
        if mtime.is_none() || c.0 != mtime {
            let text = std::fs::read_to_string(&self.path).unwrap_or_else(|e| {
                tracing::warn!(path = %self.path.display(), error = %e, "cannot read the upstream resolvers");
                String::new()
            });
            *c = (mtime, nameservers(&text, self.skip));
        }
        c.1.clone()
    }
}

/// The first answer (same message ID) to `query` over UDP from `upstreams` in order; `None`
/// if none answers in time.
pub async fn relay_udp(upstreams: &[SocketAddr], query: &[u8]) -> Option<Vec<u8>> {
    for up in upstreams {
        let local: SocketAddr = if up.is_ipv4() {
            (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let Ok(sock) = UdpSocket::bind(local).await else {
            continue;
        };
        if sock.connect(up).await.is_err() || sock.send(query).await.is_err() {
            continue;
        }
        let mut buf = vec![0u8; 4096];
        let got = timeout(UPSTREAM_TIMEOUT, async {
            loop {
                let n = sock.recv(&mut buf).await?;
                // A connected socket only hears `up`; a stray reply to an older ID is skipped.
                if n >= 12 && buf[..2] == query[..2] {
                    return Ok::<usize, std::io::Error>(n);
                }
            }
        })
        .await;
        if let Ok(Ok(n)) = got {
            buf.truncate(n);
            return Some(buf);
        }
    }
    None
}

/// The same over TCP (a query that came over TCP, typically after a truncated answer).
pub async fn relay_tcp(upstreams: &[SocketAddr], query: &[u8]) -> Option<Vec<u8>> {
    for up in upstreams {
        let got = timeout(UPSTREAM_TIMEOUT, async {
            let mut s = TcpStream::connect(up).await?;
            s.write_all(&(query.len() as u16).to_be_bytes()).await?;
            s.write_all(query).await?;
            let len = s.read_u16().await? as usize;
            let mut buf = vec![0u8; len];
            s.read_exact(&mut buf).await?;
            Ok::<Vec<u8>, std::io::Error>(buf)
        })
        .await;
        if let Ok(Ok(b)) = got {
            return Some(b);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nameserver_lines() {
        let text = "# generated\nsearch lan\nnameserver 192.168.1.1\nnameserver  10.42.1.1\n\
                    nameserver fe80::1%eth0\nnameserver 2001:db8::1\nnameserver 8.8.8.8\n\
                    nameserver 9.9.9.9\noptions edns0\n";
        let got = nameservers(text, "10.42.1.1".parse().unwrap());
        let want: Vec<SocketAddr> = ["192.168.1.1:53", "[2001:db8::1]:53", "8.8.8.8:53"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        assert_eq!(got, want);
    }
}
