//! The HTTP listeners' accept loop (API and `--enroll-listen`, plain or TLS), built so
//! that idle or silent connections cannot exhaust the process's file descriptors.
//!
//! `axum::serve` keeps every accepted connection for as long as the client likes and
//! stops accepting when `accept` fails with EMFILE, so ~1,000 silent TCP connections made
//! the API unreachable under the usual 1024 open-files limit. Here:
//!
//! - a TLS handshake must finish within [`Limits::handshake_timeout`];
//! - a connection waiting for a request, new or kept alive after one, must deliver the
//!   complete request head within [`Limits::header_read_timeout`] (hyper's header-read
//!   timer, which restarts after every response, so it is also the idle keep-alive
//!   timeout), and the head may not exceed [`MAX_HEAD_BYTES`];
//! - at most [`Limits::max_connections`] connections are open at once, across all the
//!   listeners of one [`Conns`]. At the bound, accepting goes on (a client stuck in the
//!   kernel's backlog would wait for seconds): the oldest connection that is not busy
//!   with an authenticated request is closed to make room (it has sent no complete
//!   request yet, or is idle between requests, or is in an unauthenticated one). Only if
//!   every connection is busy is the new one refused. Shedding is logged at WARN, at most
//!   once per [`SHED_LOG_EVERY`].
//!
//! A connection is busy from the moment the token middleware (`crate::edge::http`) has
//! accepted its request ([`Hold::of`]) until the response body has been sent or dropped.
//! The bound is derived from `RLIMIT_NOFILE` ([`Limits::for_process`]): half of the
//! soft limit, leaving the other half to the store, the broker's connections, image
//! blobs and files.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::http::Request;
use axum::response::Response;
use axum::Router;
use http_body::Frame;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify};
use tokio::task::JoinSet;
use tower::ServiceExt;

/// A client must finish its TLS handshake within this.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A client must send a complete request head within this of the connection being ready
/// for one (accepted, handshake done, or the previous response sent).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest request head (request line and headers) a connection may buffer. Bounds
/// the memory a slow client can pin, per connection, well below hyper's ~400 KiB default.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// The most connections the HTTP listeners keep open, however high the fd limit.
pub const MAX_CONNECTIONS: usize = 4096;
/// The fewest, however low the fd limit.
pub const MIN_CONNECTIONS: usize = 16;
/// At most one WARN about shed connections per this interval.
pub const SHED_LOG_EVERY: Duration = Duration::from_secs(10);
/// What `raise_nofile` raises the soft limit to at most.
const NOFILE_TARGET: u64 = 65_536;
/// How long open connections get to finish their requests on shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// The HTTP listeners' accept backlog. tokio's `TcpListener::bind` asks for 1024; a burst
/// of connections beyond that while the accept loop is behind (a flood of silent
/// connections on a busy 2-core board) made the kernel drop a real client's SYN, whose
/// connect then waited for TCP's one-second retransmission. The kernel caps it at
/// `net.core.somaxconn` (4096 by default since Linux 5.4).
pub const LISTEN_BACKLOG: u32 = 4096;

/// Binds an HTTP listener on `addr` with [`LISTEN_BACKLOG`] (and `SO_REUSEADDR`, as
/// `TcpListener::bind` sets it, so a restarted server can bind again at once).
pub fn bind(addr: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    pub handshake_timeout: Duration,
}

impl Limits {
    /// The defaults, with the connection bound for a soft fd limit of `nofile`.
    pub fn for_nofile(nofile: u64) -> Self {
        Self {
            max_connections: max_connections_for(nofile),
            header_read_timeout: HEADER_READ_TIMEOUT,
            handshake_timeout: HANDSHAKE_TIMEOUT,
        }
    }

    /// The defaults for this process: raises its soft `RLIMIT_NOFILE` (see
    /// [`raise_nofile`]), then bounds connections by it.
    pub fn for_process() -> Self {
        Self::for_nofile(raise_nofile())
    }
}

/// Half of the fd limit, within [`MIN_CONNECTIONS`]..=[`MAX_CONNECTIONS`]: the other
/// half stays for the store, the embedded broker (two or three fds per device with the
/// TLS front), registry blobs being served and files.
pub fn max_connections_for(nofile: u64) -> usize {
    usize::try_from(nofile / 2)
        .unwrap_or(usize::MAX)
        .clamp(MIN_CONNECTIONS, MAX_CONNECTIONS)
}

/// Raises the soft `RLIMIT_NOFILE` towards the hard limit (at most to 65536), as Go's
/// runtime does: the 1024 soft default exists for `select(2)`, which nothing here uses.
/// Returns the soft limit in force afterwards (1024 if it cannot be read).
pub fn raise_nofile() -> u64 {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return 1024;
    };
    let want = hard.min(NOFILE_TARGET);
    if want > soft {
        match setrlimit(Resource::RLIMIT_NOFILE, want, hard) {
            Ok(()) => return want,
            Err(e) => tracing::warn!(error = %e, soft, hard, "cannot raise the open-files limit"),
        }
    }
    soft
}

/// The open connections of one or more listeners, and the bound they share.
pub struct Conns {
    limits: Limits,
    inner: Mutex<Inner>,
    shed: ShedLog,
}

#[derive(Default)]
struct Inner {
    next_id: u64,
    /// By id, so the first entry is the oldest connection.
    live: BTreeMap<u64, Arc<Conn>>,
}

/// One connection's shared state: its busy count and the signal that evicts it.
struct Conn {
    busy: AtomicUsize,
    evict: Notify,
}

/// Removes its connection from the table when the connection's task ends.
struct Slot {
    conns: Arc<Conns>,
    id: u64,
    conn: Arc<Conn>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.conns.lock().live.remove(&self.id);
    }
}

impl Conns {
    pub fn new(limits: Limits) -> Arc<Self> {
        Arc::new(Self {
            limits,
            inner: Mutex::new(Inner::default()),
            shed: ShedLog::default(),
        })
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// How many connections are open (not counting ones told to close).
    pub fn open(&self) -> usize {
        self.lock().live.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // The table stays consistent even if a holder panicked (single inserts/removes).
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A slot for a just-accepted connection, closing the oldest idle one if the bound is
    /// reached; `None` (refuse it) when every open connection is busy.
    fn admit(self: &Arc<Self>) -> Option<Slot> {
        let mut inner = self.lock();
        if inner.live.len() >= self.limits.max_connections {
            // Logged under the table's lock: at most one WARN per interval anyway.
            let evicted = evict_oldest_idle(&mut inner);
            self.shed.record(self.limits.max_connections, !evicted);
            if !evicted {
                return None;
            }
        }
        let id = inner.next_id;
        inner.next_id += 1;
        let conn = Arc::new(Conn {
            busy: AtomicUsize::new(0),
            evict: Notify::new(),
        });
        inner.live.insert(id, conn.clone());
        drop(inner);
        Some(Slot {
            conns: self.clone(),
            id,
            conn,
        })
    }

    /// Closes the oldest idle connection, for when `accept` itself ran out of fds.
    fn shed_one(&self) -> bool {
        let evicted = evict_oldest_idle(&mut self.lock());
        if evicted {
            self.shed.record(self.limits.max_connections, false);
        }
        evicted
    }
}

/// Tells the oldest connection that is not busy to close, and forgets it at once so
/// the count is right before its task has run. False if every one is busy.
fn evict_oldest_idle(inner: &mut Inner) -> bool {
    let Some(id) = inner
        .live
        .iter()
        .find(|(_, c)| c.busy.load(Ordering::Acquire) == 0)
        .map(|(id, _)| *id)
    else {
        return false;
    };
    if let Some(c) = inner.live.remove(&id) {
        // A stored permit if the task is not waiting yet.
        c.evict.notify_one();
    }
    true
}

/// Counts shed connections and logs them at WARN at most once per [`SHED_LOG_EVERY`].
#[derive(Default)]
struct ShedLog {
    evicted: AtomicU64,
    refused: AtomicU64,
    last: Mutex<Option<Instant>>,
}

impl ShedLog {
    fn record(&self, bound: usize, refused: bool) {
        if refused {
            self.refused.fetch_add(1, Ordering::Relaxed);
        } else {
            self.evicted.fetch_add(1, Ordering::Relaxed);
        }
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if last.is_some_and(|t| t.elapsed() < SHED_LOG_EVERY) {
            return;
        }
        *last = Some(Instant::now());
        drop(last);
        let evicted = self.evicted.swap(0, Ordering::Relaxed);
        let refused = self.refused.swap(0, Ordering::Relaxed);
        tracing::warn!(
            bound,
            evicted,
            refused,
            "HTTP connection limit reached: closing the oldest idle connections (clients that send no request, or too slowly)"
        );
    }
}

/// Marks a request's connection busy, so it is not evicted, until dropped.
pub struct Hold(Arc<Conn>);

/// The request extension that lets [`Hold::of`] find the request's connection.
#[derive(Clone)]
struct ConnMark(Arc<Conn>);

impl Hold {
    /// Marks the connection `req` arrived on busy; `None` for a request that did not
    /// come through [`serve`] (e.g. a unit test calling the router directly).
    pub fn of<B>(req: &Request<B>) -> Option<Hold> {
        let ConnMark(conn) = req.extensions().get::<ConnMark>()?;
        conn.busy.fetch_add(1, Ordering::AcqRel);
        Some(Hold(conn.clone()))
    }

    /// Keeps the connection busy until `resp`'s body has been sent (or dropped).
    pub fn until_sent(self, resp: Response) -> Response {
        resp.map(|inner| Body::new(HeldBody { inner, _hold: self }))
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        self.0.busy.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body that keeps its connection busy while it is being sent.
struct HeldBody {
    inner: Body,
    _hold: Hold,
}

impl http_body::Body for HeldBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Serves `app` on `listener` (over TLS with `tls`) until `shutdown` completes, then
/// stops accepting and gives open connections `SHUTDOWN_GRACE` (5 s) to finish.
pub async fn serve(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    app: Router,
    conns: Arc<Conns>,
    shutdown: impl Future<Output = ()>,
) {
    let tls = tls.map(tokio_rustls::TlsAcceptor::from);
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            _ = &mut shutdown => break,
            r = listener.accept() => r,
        };
        while tasks.try_join_next().is_some() {}
        match accepted {
            Ok((tcp, _peer)) => {
                let Some(slot) = conns.admit() else {
                    drop(tcp);
                    continue;
                };
                tasks.spawn(connection(
                    slot,
                    tcp,
                    tls.clone(),
                    app.clone(),
                    stop_rx.clone(),
                ));
            }
            Err(e) if is_fd_exhaustion(&e) => {
                // Other fds (broker, files) used the headroom: make room, then retry.
                if !conns.shed_one() {
                    tracing::warn!(error = %e, "accepting an HTTP connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
            // ECONNABORTED and the like concern one client only.
            Err(e) => tracing::debug!(error = %e, "accepting an HTTP connection failed"),
        }
    }
    drop(listener);
    let _ = stop_tx.send(true);
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::info!(
            open = tasks.len(),
            "closing HTTP connections still open after the grace period"
        );
    }
    tasks.shutdown().await;
}

fn is_fd_exhaustion(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error().map(nix::errno::Errno::from_raw),
        Some(nix::errno::Errno::EMFILE | nix::errno::Errno::ENFILE)
    )
}

/// One connection: TLS handshake (with a deadline), then HTTP/1.1 until the client is
/// done, the header-read timer fires, the connection is evicted or shutdown drains it.
async fn connection(
    slot: Slot,
    tcp: TcpStream,
    tls: Option<tokio_rustls::TlsAcceptor>,
    app: Router,
    stop: watch::Receiver<bool>,
) {
    let limits = slot.conns.limits;
    let conn = slot.conn.clone();
    let work = async {
        match tls {
            None => http(tcp, &conn, app, limits, stop).await,
            Some(acceptor) => {
                match tokio::time::timeout(limits.handshake_timeout, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => http(stream, &conn, app, limits, stop).await,
                    Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!("TLS handshake timed out"),
                }
            }
        }
    };
    tokio::select! {
        _ = slot.conn.evict.notified() => {}
        _ = work => {}
    }
    drop(slot);
}

async fn http<I>(
    io: I,
    conn: &Arc<Conn>,
    app: Router,
    limits: Limits,
    mut stop: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mark = ConnMark(conn.clone());
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let mut req = req.map(Body::new);
        req.extensions_mut().insert(mark.clone());
        app.clone().oneshot(req)
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(MAX_HEAD_BYTES)
        .keep_alive(true);
    // With upgrades: `baton exec` takes its connection over (`edge/http/exec.rs`).
    let served = builder
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    tokio::pin!(served);
    tokio::select! {
        r = served.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(error = %e, "HTTP connection ended");
            }
            return;
        }
        _ = stop.wait_for(|s| *s) => {}
    }
    served.as_mut().graceful_shutdown();
    let _ = served.await;
}

#[cfg(test)]
mod tests;
