//! Liveness, readiness and startup probes: a pure schedule per container ([`ContainerProbes`])
//! and the probe runners ([`run`]: exec, httpGet, tcpSocket).
//!
//! The schedule is a state machine fed with time and results, so every rule is a unit test:
//! - each probe first runs `initialDelaySeconds` after the container started, then every
//!   `periodSeconds` after it was last sent; a probe still in flight is never sent twice;
//! - a startup probe gates the others: until it has succeeded, liveness and readiness do not
//!   run and the container is not ready; once it has, it never runs again;
//! - `failureThreshold` consecutive failures of the startup or liveness probe ask for the
//!   container to be killed ([`Verdict::Kill`]); readiness flips to ready after
//!   `successThreshold` consecutive successes and back after `failureThreshold` failures;
//! - without a readiness probe, a container is ready once started (and past its startup
//!   probe).
//!
//! The node loop owns one [`ContainerProbes`] per running container (a fresh one per start),
//! asks it what is [`due`](ContainerProbes::due), runs those in tasks and feeds the results
//! back. Nothing here needs the coordinator, so probes keep working offline.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use baton_proto::{ContainerSpec, Probe, ProbeHandler};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::runtime::{ContainerId, ExecOutcome, Runtime};

/// Milliseconds on the node loop's monotonic clock.
pub type Millis = u64;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Startup,
    Liveness,
    Readiness,
}

/// What a probe result means for the container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Nothing,
    /// Readiness changed to this.
    Ready(bool),
    /// Kill the container (it is then restarted per the pod's restartPolicy). The reason is
    /// what its last termination will show.
    Kill {
        reason: &'static str,
    },
}

pub const LIVENESS_FAILED: &str = "LivenessProbeFailed";
pub const STARTUP_FAILED: &str = "StartupProbeFailed";

#[derive(Debug, Clone, PartialEq, Eq)]
struct Track {
    period: Millis,
    success_threshold: u32,
    failure_threshold: u32,
    next_due: Millis,
    in_flight: bool,
    successes: u32,
    failures: u32,
}

impl Track {
    fn new(p: &Probe, started_at: Millis) -> Self {
        Self {
            period: u64::from(p.period_secs.max(1)) * 1000,
            success_threshold: p.success_threshold.max(1),
            failure_threshold: p.failure_threshold.max(1),
            next_due: started_at.saturating_add(u64::from(p.initial_delay_secs) * 1000),
            in_flight: false,
            successes: 0,
            failures: 0,
        }
    }

    fn record(&mut self, ok: bool) {
        self.in_flight = false;
        if ok {
            self.successes = self.successes.saturating_add(1);
            self.failures = 0;
        } else {
            self.failures = self.failures.saturating_add(1);
            self.successes = 0;
        }
    }
}

/// The probe schedule of one run of one container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerProbes {
    startup: Option<Track>,
    liveness: Option<Track>,
    readiness: Option<Track>,
    started: bool,
    ready: bool,
    /// A kill was asked for: nothing more is probed in this run.
    dead: bool,
}

impl ContainerProbes {
    pub fn new(spec: &ContainerSpec, started_at: Millis) -> Self {
        let track = |p: &Option<Probe>| p.as_ref().map(|p| Track::new(p, started_at));
        let started = spec.startup_probe.is_none();
        Self {
            startup: track(&spec.startup_probe),
            liveness: track(&spec.liveness_probe),
            readiness: track(&spec.readiness_probe),
            started,
            ready: started && spec.readiness_probe.is_none(),
            dead: false,
        }
    }

    /// For a container a previous agent process started: it counts as past its startup
    /// probe and ready (the previous process saw it so), and its probes resume at once.
    pub fn adopted(spec: &ContainerSpec, now: Millis) -> Self {
        let track = |p: &Option<Probe>| {
            p.as_ref().map(|p| Track {
                next_due: now,
                ..Track::new(p, now)
            })
        };
        Self {
            startup: None,
            liveness: track(&spec.liveness_probe),
            readiness: track(&spec.readiness_probe),
            started: true,
            ready: true,
            dead: false,
        }
    }

    pub fn ready(&self) -> bool {
        self.ready && !self.dead
    }

    /// Whether the container has any probe at all (nothing to schedule otherwise).
    pub fn any(&self) -> bool {
        self.startup.is_some() || self.liveness.is_some() || self.readiness.is_some()
    }

    fn active(&mut self) -> [(Kind, Option<&mut Track>); 2] {
        if self.started {
            [
                (Kind::Liveness, self.liveness.as_mut()),
                (Kind::Readiness, self.readiness.as_mut()),
            ]
        } else {
            [
                (Kind::Startup, self.startup.as_mut()),
                (Kind::Liveness, None),
            ]
        }
    }

    /// The probes to send now; they count as in flight until [`record`](Self::record).
    pub fn due(&mut self, now: Millis) -> Vec<Kind> {
        if self.dead {
            return Vec::new();
        }
        let mut out = Vec::new();
        for (kind, track) in self.active() {
            if let Some(t) = track {
                if !t.in_flight && t.next_due <= now {
                    t.in_flight = true;
                    t.next_due = now.saturating_add(t.period);
                    out.push(kind);
                }
            }
        }
        out
    }

    /// When the next probe is due, if any is scheduled.
    pub fn next_wake(&mut self) -> Option<Millis> {
        if self.dead {
            return None;
        }
        self.active()
            .into_iter()
            .filter_map(|(_, t)| t.filter(|t| !t.in_flight).map(|t| t.next_due))
            .min()
    }

    /// Feeds one result in.
    pub fn record(&mut self, kind: Kind, ok: bool) -> Verdict {
        if self.dead {
            return Verdict::Nothing;
        }
        match kind {
            Kind::Startup => {
                let Some(t) = self.startup.as_mut().filter(|_| !self.started) else {
                    return Verdict::Nothing;
                };
                t.record(ok);
                if ok {
                    self.started = true;
                    self.startup = None;
                    if self.readiness.is_none() {
                        self.ready = true;
                        return Verdict::Ready(true);
                    }
                } else if t.failures >= t.failure_threshold {
                    self.dead = true;
                    return Verdict::Kill {
                        reason: STARTUP_FAILED,
                    };
                }
                Verdict::Nothing
            }
            Kind::Liveness => {
                let Some(t) = self.liveness.as_mut().filter(|_| self.started) else {
                    return Verdict::Nothing;
                };
                t.record(ok);
                if t.failures >= t.failure_threshold {
                    self.dead = true;
                    self.ready = false;
                    return Verdict::Kill {
                        reason: LIVENESS_FAILED,
                    };
                }
                Verdict::Nothing
            }
            Kind::Readiness => {
                let Some(t) = self.readiness.as_mut().filter(|_| self.started) else {
                    return Verdict::Nothing;
                };
                t.record(ok);
                if ok && !self.ready && t.successes >= t.success_threshold {
                    self.ready = true;
                    Verdict::Ready(true)
                } else if !ok && self.ready && t.failures >= t.failure_threshold {
                    self.ready = false;
                    Verdict::Ready(false)
                } else {
                    Verdict::Nothing
                }
            }
        }
    }
}

/// The probe of `kind` in a container spec.
pub fn probe_of(spec: &ContainerSpec, kind: Kind) -> Option<&Probe> {
    match kind {
        Kind::Startup => spec.startup_probe.as_ref(),
        Kind::Liveness => spec.liveness_probe.as_ref(),
        Kind::Readiness => spec.readiness_probe.as_ref(),
    }
}

/// Where a probe is sent.
#[derive(Clone)]
pub struct Target {
    pub runtime: Arc<dyn Runtime>,
    pub id: ContainerId,
    /// `None` for hostNetwork pods: network probes go to 127.0.0.1, the node itself.
    pub pod_ip: Option<IpAddr>,
}

/// Runs one probe; `Err` says why it failed (for logs).
pub async fn run(probe: &Probe, target: &Target) -> Result<(), String> {
    let timeout = Duration::from_secs(u64::from(probe.timeout_secs.max(1)));
    match &probe.handler {
        ProbeHandler::Exec { command } => {
            let args: Vec<String> = command.iter().map(|a| a.to_string()).collect();
            let (rt, id) = (target.runtime.clone(), target.id.clone());
            let outcome = tokio::task::spawn_blocking(move || rt.exec(&id, &args, timeout))
                .await
                .map_err(|e| format!("exec worker failed: {e}"))?
                .map_err(|e| format!("exec failed: {e}"))?;
            match outcome {
                ExecOutcome::Exited(0) => Ok(()),
                ExecOutcome::Exited(code) => Err(format!("command exited with {code}")),
                ExecOutcome::TimedOut => Err(format!("command timed out after {timeout:?}")),
            }
        }
        ProbeHandler::TcpSocket { port, host } => {
            let addr = address(host.as_deref(), *port, target.pod_ip).await?;
            tokio::time::timeout(timeout, TcpStream::connect(addr))
                .await
                .map_err(|_| format!("connect to {addr} timed out"))?
                .map(drop)
                .map_err(|e| format!("connect to {addr}: {e}"))
        }
        ProbeHandler::HttpGet {
            path,
            port,
            https,
            host,
            headers,
        } => {
            let addr = address(host.as_deref(), *port, target.pod_ip).await?;
            let host_header = match host {
                Some(h) => format!("{h}:{port}"),
                None => addr.to_string(),
            };
            let mut req = format!(
                "GET {} HTTP/1.1\r\nHost: {host_header}\r\nUser-Agent: baton-probe/1.0\r\nAccept: */*\r\nConnection: close\r\n",
                if path.is_empty() { "/" } else { path.as_str() }
            );
            for h in headers.iter() {
                // A header cannot smuggle a second line in.
                if !h.name.contains(['\r', '\n', ':']) && !h.value.contains(['\r', '\n']) {
                    req.push_str(&format!("{}: {}\r\n", h.name, h.value));
                }
            }
            req.push_str("\r\n");
            let status = tokio::time::timeout(timeout, http_status(addr, *https, req))
                .await
                .map_err(|_| format!("GET {addr}{path} timed out"))??;
            if (200..400).contains(&status) {
                Ok(())
            } else {
                Err(format!("GET {addr}{path}: status {status}"))
            }
        }
    }
}

async fn address(
    host: Option<&str>,
    port: u16,
    pod_ip: Option<IpAddr>,
) -> Result<SocketAddr, String> {
    match host {
        Some(h) => tokio::net::lookup_host((h, port))
            .await
            .map_err(|e| format!("cannot resolve {h}: {e}"))?
            .next()
            .ok_or_else(|| format!("cannot resolve {h}")),
        None => Ok(SocketAddr::new(
            pod_ip.unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            port,
        )),
    }
}

/// Sends `req` and returns the status code of the response's status line.
async fn http_status(addr: SocketAddr, https: bool, req: String) -> Result<u16, String> {
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect to {addr}: {e}"))?;
    if https {
        let mut tls = tls::connect(tcp, addr).await?;
        exchange(&mut tls, &req).await
    } else {
        let mut tcp = tcp;
        exchange(&mut tcp, &req).await
    }
}

async fn exchange<S: AsyncReadExt + AsyncWriteExt + Unpin>(
    s: &mut S,
    req: &str,
) -> Result<u16, String> {
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| format!("send: {e}"))?;
    // Only the status line matters; kubelet reads at most 10 KiB of body, we read less.
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 256];
    while !buf.windows(2).any(|w| w == b"\r\n") && buf.len() < 4096 {
        let n = s.read(&mut chunk).await.map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    parse_status(&buf).ok_or_else(|| "no HTTP status line in the response".to_owned())
}

/// `HTTP/1.x 204 No Content` -> 204.
fn parse_status(buf: &[u8]) -> Option<u16> {
    let line = buf.split(|b| *b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let mut parts = line.split_whitespace();
    parts.next().filter(|v| v.starts_with("HTTP/"))?;
    parts.next()?.parse().ok()
}

/// TLS without certificate verification, as kubelet's https probes do: a probe asks "does it
/// answer", not "is it who it claims".
mod tls {
    use std::net::SocketAddr;
    use std::sync::Arc;

    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    use rustls::{DigitallySignedStruct, SignatureScheme};
    use tokio::net::TcpStream;
    use tokio_rustls::client::TlsStream;

    #[derive(Debug)]
    struct AcceptAny(Arc<rustls::crypto::CryptoProvider>);

    impl ServerCertVerifier for AcceptAny {
        fn verify_server_cert(
            &self,
            _end_entity: &CertificateDer<'_>,
            _intermediates: &[CertificateDer<'_>],
            _server_name: &ServerName<'_>,
            _ocsp: &[u8],
            _now: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            Ok(ServerCertVerified::assertion())
        }

        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(
                message,
                cert,
                dss,
                &self.0.signature_verification_algorithms,
            )
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(
                message,
                cert,
                dss,
                &self.0.signature_verification_algorithms,
            )
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }

    pub async fn connect(tcp: TcpStream, addr: SocketAddr) -> Result<TlsStream<TcpStream>, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("tls: {e}"))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAny(provider)))
            .with_no_client_auth();
        let name = ServerName::IpAddress(addr.ip().into());
        tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .map_err(|e| format!("tls handshake with {addr}: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use baton_proto::{BString, BVec, PullPolicy};

    fn probe(delay: u32, period: u32, success: u32, failure: u32) -> Probe {
        Probe {
            handler: ProbeHandler::TcpSocket {
                port: 80,
                host: None,
            },
            initial_delay_secs: delay,
            period_secs: period,
            timeout_secs: 1,
            success_threshold: success,
            failure_threshold: failure,
        }
    }

    fn spec(
        startup: Option<Probe>,
        liveness: Option<Probe>,
        readiness: Option<Probe>,
    ) -> ContainerSpec {
        ContainerSpec {
            name: BString::new("c").unwrap(),
            image: BString::new("busybox").unwrap(),
            image_pull_policy: PullPolicy::IfNotPresent,
            command: BVec::new(),
            args: BVec::new(),
            env: BVec::new(),
            working_dir: None,
            ports: BVec::new(),
            resources: Default::default(),
            volume_mounts: BVec::new(),
            liveness_probe: liveness,
            readiness_probe: readiness,
            startup_probe: startup,
            security: Default::default(),
        }
    }

    #[test]
    fn no_probes_means_ready_at_once_and_nothing_scheduled() {
        let mut p = ContainerProbes::new(&spec(None, None, None), 1000);
        assert!(p.ready());
        assert!(!p.any());
        assert_eq!(p.due(u64::MAX), vec![]);
        assert_eq!(p.next_wake(), None);
    }

    #[test]
    fn initial_delay_then_period_and_never_two_in_flight() {
        let mut p = ContainerProbes::new(&spec(None, Some(probe(5, 10, 1, 3)), None), 1000);
        assert_eq!(p.next_wake(), Some(6000));
        assert_eq!(p.due(5999), vec![]);
        assert_eq!(p.due(6000), vec![Kind::Liveness]);
        // In flight: not sent again, not waited for.
        assert_eq!(p.due(100_000), vec![]);
        assert_eq!(p.next_wake(), None);
        assert_eq!(p.record(Kind::Liveness, true), Verdict::Nothing);
        assert_eq!(p.next_wake(), Some(16_000));
        assert_eq!(p.due(15_999), vec![]);
        assert_eq!(p.due(16_000), vec![Kind::Liveness]);
    }

    #[test]
    fn liveness_kills_after_failure_threshold_consecutive_failures() {
        let mut p = ContainerProbes::new(&spec(None, Some(probe(0, 1, 1, 3)), None), 0);
        let mut t = 0;
        let mut step = |p: &mut ContainerProbes, ok| {
            assert_eq!(p.due(t), vec![Kind::Liveness]);
            t += 1000;
            p.record(Kind::Liveness, ok)
        };
        assert_eq!(step(&mut p, false), Verdict::Nothing);
        assert_eq!(step(&mut p, false), Verdict::Nothing);
        // A success in between resets the count.
        assert_eq!(step(&mut p, true), Verdict::Nothing);
        assert_eq!(step(&mut p, false), Verdict::Nothing);
        assert_eq!(step(&mut p, false), Verdict::Nothing);
        assert_eq!(
            step(&mut p, false),
            Verdict::Kill {
                reason: LIVENESS_FAILED
            }
        );
        // Nothing more in this run.
        assert_eq!(p.due(u64::MAX), vec![]);
        assert!(!p.ready());
    }

    #[test]
    fn readiness_needs_success_threshold_and_drops_after_failure_threshold() {
        let mut p = ContainerProbes::new(&spec(None, None, Some(probe(0, 1, 2, 2))), 0);
        assert!(!p.ready());
        let mut t = 0;
        let mut step = |p: &mut ContainerProbes, ok| {
            assert_eq!(p.due(t), vec![Kind::Readiness]);
            t += 1000;
            p.record(Kind::Readiness, ok)
        };
        assert_eq!(step(&mut p, true), Verdict::Nothing);
        assert_eq!(step(&mut p, true), Verdict::Ready(true));
        assert!(p.ready());
        assert_eq!(step(&mut p, false), Verdict::Nothing);
        assert!(p.ready());
        assert_eq!(step(&mut p, false), Verdict::Ready(false));
        assert_eq!(step(&mut p, false), Verdict::Nothing);
        assert_eq!(step(&mut p, true), Verdict::Nothing);
        assert_eq!(step(&mut p, true), Verdict::Ready(true));
    }

    #[test]
    fn startup_gates_liveness_and_readiness_then_never_runs_again() {
        let mut p = ContainerProbes::new(
            &spec(
                Some(probe(0, 1, 1, 3)),
                Some(probe(0, 10, 1, 1)),
                Some(probe(0, 10, 1, 1)),
            ),
            0,
        );
        assert!(!p.ready());
        assert_eq!(p.due(0), vec![Kind::Startup]);
        // A liveness result arriving now (it cannot have been sent) changes nothing.
        assert_eq!(p.record(Kind::Liveness, false), Verdict::Nothing);
        assert_eq!(p.record(Kind::Startup, false), Verdict::Nothing);
        assert_eq!(p.due(1000), vec![Kind::Startup]);
        assert_eq!(p.record(Kind::Startup, true), Verdict::Nothing);
        // Their initial delays are long past: both run at once; startup never again.
        assert_eq!(p.due(1500), vec![Kind::Liveness, Kind::Readiness]);
        assert_eq!(p.record(Kind::Readiness, true), Verdict::Ready(true));
        assert_eq!(p.record(Kind::Startup, false), Verdict::Nothing);
        assert_eq!(p.due(100_000), vec![Kind::Readiness]);
    }

    #[test]
    fn startup_failure_kills_and_startup_alone_makes_ready() {
        let mut p = ContainerProbes::new(&spec(Some(probe(0, 1, 1, 2)), None, None), 0);
        assert_eq!(p.due(0), vec![Kind::Startup]);
        assert_eq!(p.record(Kind::Startup, false), Verdict::Nothing);
        assert_eq!(p.due(1000), vec![Kind::Startup]);
        assert_eq!(
            p.record(Kind::Startup, false),
            Verdict::Kill {
                reason: STARTUP_FAILED
            }
        );
        let mut p = ContainerProbes::new(&spec(Some(probe(0, 1, 1, 2)), None, None), 0);
        assert_eq!(p.due(0), vec![Kind::Startup]);
        assert_eq!(p.record(Kind::Startup, true), Verdict::Ready(true));
        assert!(p.ready());
        assert_eq!(p.next_wake(), None);
    }

    #[test]
    fn an_adopted_container_stays_ready_until_its_probes_say_otherwise() {
        let s = spec(
            Some(probe(0, 1, 1, 3)),
            Some(probe(30, 10, 1, 3)),
            Some(probe(30, 10, 1, 1)),
        );
        let mut p = ContainerProbes::adopted(&s, 5000);
        assert!(p.ready());
        assert_eq!(p.due(5000), vec![Kind::Liveness, Kind::Readiness]);
        assert_eq!(p.record(Kind::Readiness, false), Verdict::Ready(false));
    }

    #[test]
    fn status_lines() {
        assert_eq!(parse_status(b"HTTP/1.1 204 No Content\r\n"), Some(204));
        assert_eq!(parse_status(b"HTTP/1.0 500 x\r\n"), Some(500));
        assert_eq!(parse_status(b"SSH-2.0-x\r\n"), None);
        assert_eq!(parse_status(b""), None);
    }

    async fn serve_once(status: &'static str) -> (SocketAddr, tokio::task::JoinHandle<String>) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let h = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut buf = vec![0u8; 1024];
            let n = s.read(&mut buf).await.unwrap();
            s.write_all(format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n").as_bytes())
                .await
                .unwrap();
            String::from_utf8_lossy(&buf[..n]).into_owned()
        });
        (addr, h)
    }

    fn target() -> Target {
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        Target {
            runtime: Arc::new(crate::runtime::FakeRuntime::new(tx)),
            id: ContainerId::new("c").unwrap(),
            pod_ip: Some(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        }
    }

    fn http(port: u16, path: &str) -> Probe {
        Probe {
            handler: ProbeHandler::HttpGet {
                path: BString::new(path).unwrap(),
                port,
                https: false,
                host: None,
                headers: BVec::from_vec(vec![baton_proto::HttpHeader {
                    name: BString::new("X-Probe").unwrap(),
                    value: BString::new("yes").unwrap(),
                }])
                .unwrap(),
            },
            ..probe(0, 1, 1, 1)
        }
    }

    #[tokio::test]
    async fn http_probe_sends_path_and_headers_and_judges_the_status() {
        let (addr, req) = serve_once("302 Found").await;
        run(&http(addr.port(), "/healthz"), &target())
            .await
            .unwrap();
        let req = req.await.unwrap();
        assert!(req.starts_with("GET /healthz HTTP/1.1\r\n"), "{req}");
        assert!(req.contains("\r\nX-Probe: yes\r\n"), "{req}");
        let (addr, _req) = serve_once("503 Service Unavailable").await;
        let err = run(&http(addr.port(), "/"), &target()).await.unwrap_err();
        assert!(err.contains("503"), "{err}");
    }

    #[tokio::test]
    async fn tcp_probe_and_a_closed_port() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let tcp = |port| Probe {
            handler: ProbeHandler::TcpSocket { port, host: None },
            ..probe(0, 1, 1, 1)
        };
        run(&tcp(port), &target()).await.unwrap();
        drop(l);
        assert!(run(&tcp(port), &target()).await.is_err());
    }

    #[tokio::test]
    async fn exec_probe_goes_through_the_runtime() {
        let t = target();
        let exec = Probe {
            handler: ProbeHandler::Exec {
                command: BVec::from_vec(vec![BString::new("true").unwrap()]).unwrap(),
            },
            ..probe(0, 1, 1, 1)
        };
        // The fake knows no container "c": the probe fails with the runtime's reason.
        let err = run(&exec, &t).await.unwrap_err();
        assert!(err.contains("not found"), "{err}");
    }
}
