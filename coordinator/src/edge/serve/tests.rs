use std::net::SocketAddr;

use axum::extract::Request as AxumRequest;
use axum::middleware::Next;
use axum::routing::get;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;

fn limits(max: usize, header: Duration) -> Limits {
    Limits {
        max_connections: max,
        header_read_timeout: header,
        handshake_timeout: header,
    }
}

/// `/ok` answers at once; `/slow` is "authenticated" (holds its connection, as the token
/// middleware does) and answers when `release` is notified.
fn app(release: Arc<Notify>) -> Router {
    Router::new()
        .route("/ok", get(|| async { "ok" }))
        .route(
            "/slow",
            get(move || {
                let release = release.clone();
                async move {
                    release.notified().await;
                    "slow"
                }
            }),
        )
        .layer(axum::middleware::from_fn(
            |req: AxumRequest, next: Next| async move {
                let hold = if req.uri().path() == "/slow" {
                    Hold::of(&req)
                } else {
                    None
                };
                let resp = next.run(req).await;
                match hold {
                    Some(h) => h.until_sent(resp),
                    None => resp,
                }
            },
        ))
}

async fn start(limits: Limits, release: Arc<Notify>) -> (SocketAddr, Arc<Conns>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let conns = Conns::new(limits);
    tokio::spawn(serve(
        listener,
        None,
        app(release),
        conns.clone(),
        std::future::pending(),
    ));
    (addr, conns)
}

async fn request(addr: SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

/// True once the server has closed `s` (EOF or reset), false if it is still open after
/// `within`.
async fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 512];
    let deadline = Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline.into(), s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}

#[test]
fn the_bound_is_half_the_fd_limit_within_sane_bounds() {
    for (nofile, want) in [
        (1024, 512),
        (4096, 2048),
        (20, MIN_CONNECTIONS),
        (1 << 20, MAX_CONNECTIONS),
        (u64::MAX, MAX_CONNECTIONS),
    ] {
        assert_eq!(max_connections_for(nofile), want, "nofile {nofile}");
    }
}

#[tokio::test]
async fn silent_and_partial_heads_are_closed_at_the_header_read_timeout() {
    let (addr, conns) = start(
        limits(16, Duration::from_millis(300)),
        Arc::new(Notify::new()),
    )
    .await;
    let started = Instant::now();
    let mut silent = TcpStream::connect(addr).await.unwrap();
    let mut partial = TcpStream::connect(addr).await.unwrap();
    partial
        .write_all(b"GET /ok HTTP/1.1\r\nHost: t\r\n")
        .await
        .unwrap();
    assert!(closed_within(&mut silent, Duration::from_secs(3)).await);
    assert!(closed_within(&mut partial, Duration::from_secs(3)).await);
    assert!(started.elapsed() >= Duration::from_millis(250));
    // An idle keep-alive connection is closed the same way after its response.
    let mut kept = TcpStream::connect(addr).await.unwrap();
    kept.write_all(b"GET /ok HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 256];
    let n = kept.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    assert!(closed_within(&mut kept, Duration::from_secs(3)).await);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(conns.open(), 0);
}

#[tokio::test]
async fn at_the_bound_the_oldest_idle_connection_makes_room() {
    let (addr, conns) = start(limits(4, Duration::from_secs(60)), Arc::new(Notify::new())).await;
    let mut silent = Vec::new();
    for _ in 0..4 {
        silent.push(TcpStream::connect(addr).await.unwrap());
    }
    while conns.open() < 4 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let t = Instant::now();
    let answer = request(addr, "/ok").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    // The oldest silent one was closed for it; the newer ones were not.
    assert!(closed_within(&mut silent[0], Duration::from_secs(2)).await);
    assert!(!closed_within(&mut silent[3], Duration::from_millis(100)).await);
    assert!(conns.open() <= 4);
}

#[tokio::test]
async fn busy_connections_are_never_evicted() {
    let release = Arc::new(Notify::new());
    let (addr, conns) = start(limits(2, Duration::from_secs(60)), release.clone()).await;
    let slow = tokio::spawn(async move { request(addr, "/slow").await });
    while conns.open() < 1 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut idle = TcpStream::connect(addr).await.unwrap();
    while conns.open() < 2 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // At the bound: the idle one goes, the busy one stays.
    assert!(request(addr, "/ok").await.starts_with("HTTP/1.1 200"));
    assert!(closed_within(&mut idle, Duration::from_secs(2)).await);
    assert!(!slow.is_finished());

    // Two busy connections: a third is refused rather than evicting either.
    let slow2 = tokio::spawn(async move { request(addr, "/slow").await });
    while conns.open() < 2 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut refused = TcpStream::connect(addr).await.unwrap();
    refused
        .write_all(b"GET /ok HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let _ = refused.read_to_end(&mut buf).await;
    assert!(buf.is_empty(), "{}", String::from_utf8_lossy(&buf));
    release.notify_waiters();
    for t in [slow, slow2] {
        let answer = t.await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.ends_with("slow"), "{answer}");
    }
}

#[tokio::test]
async fn shutdown_stops_accepting_and_ends_idle_connections() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let conns = Conns::new(limits(16, Duration::from_secs(60)));
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn(serve(
        listener,
        None,
        app(Arc::new(Notify::new())),
        conns.clone(),
        async {
            let _ = rx.await;
        },
    ));
    let mut idle = TcpStream::connect(addr).await.unwrap();
    assert!(request(addr, "/ok").await.starts_with("HTTP/1.1 200"));
    tx.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(3), served)
        .await
        .expect("serve ends within the grace period")
        .unwrap();
    assert!(closed_within(&mut idle, Duration::from_secs(1)).await);
    assert!(TcpStream::connect(addr).await.is_err());
}

#[tokio::test]
async fn a_silent_tls_client_is_dropped_at_the_handshake_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let pki = crate::security::pki::Pki::load_or_create(dir.path()).unwrap();
    let (cert, key) = pki.api_tls(&["127.0.0.1".to_owned()]).unwrap();
    let cfg = crate::edge::tls::server_config(&cert, &key).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let conns = Conns::new(Limits {
        max_connections: 16,
        header_read_timeout: Duration::from_secs(60),
        handshake_timeout: Duration::from_millis(300),
    });
    tokio::spawn(serve(
        listener,
        Some(cfg),
        app(Arc::new(Notify::new())),
        conns.clone(),
        std::future::pending(),
    ));
    let started = Instant::now();
    let mut silent = TcpStream::connect(addr).await.unwrap();
    assert!(closed_within(&mut silent, Duration::from_secs(3)).await);
    assert!(started.elapsed() >= Duration::from_millis(250));
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(conns.open(), 0);
}
