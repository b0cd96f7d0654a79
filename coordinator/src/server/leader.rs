//! Leader election for coordinators that share an etcd (issue 17), with etcd's own
//! election API rather than anything home-made: the Kubernetes way of running one active
//! controller manager among several.
//!
//! A coordinator on etcd holds a lease (kept alive every third of its TTL, from a thread
//! of its own: `spawn_keeper`) and campaigns
//! under `<prefix>/leader` before it loads any state: a standby waits there, serving
//! nothing, and takes over when the leader's lease ends (its process died, or it was cut
//! off from etcd for a whole TTL). The winner then fences its store
//! ([`crate::store::etcd::Fence`]): every commit applies only while its election key
//! exists as created, so a leader that was paused past its lease and has not noticed yet
//! cannot write over its successor. When the lease is lost, the coordinator stops
//! ([`Leadership::lost`]); under systemd it restarts and waits as a standby.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, ConnectOptions};
use tokio::sync::oneshot;

use crate::store::etcd::{EtcdError, EtcdOptions, EtcdStore, Fence, CALL_TIMEOUT};
use crate::store::StoreError;

/// Default `--leader-lease`: how long a dead leader keeps its standby waiting.
/// Long enough to ride out an etcd leader election (a few seconds in which renewals
/// fail), short enough for a standby to lead within 15 s of the leader's death.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    #[error("etcd at {endpoints}: {message}")]
    Etcd { endpoints: String, message: String },
    #[error("the leader lease must be at least 2 s, got {0:?}")]
    LeaseTooShort(Duration),
    #[error("cannot start the leader lease's thread: {0}")]
    Thread(std::io::Error),
}

/// This coordinator leads; `lost` fires (with why) once it no longer does.
pub struct Leadership {
    pub lost: oneshot::Receiver<String>,
    /// The create revision of the election key: every later leadership's is higher, so
    /// it is the leader's term (`crate::security::gate::Security::lead`).
    pub revision: u64,
    /// Keeps the lease alive; ends with the leadership.
    _keepalive: AbortOnDrop,
}

/// Stops the lease's keeper thread when dropped: a campaign that failed must not leave
/// its lease renewed forever, one more keeper per retry.
struct AbortOnDrop(Arc<AtomicBool>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// HTTP/2 pings on the election's connection, which carries a campaign that may wait for
/// hours: often enough to notice a dead member, and not under etcd's
/// `--grpc-keepalive-min-time` (5 s by default), or etcd closes the connection for
/// "too many pings" and every waiting campaign breaks (it did every 8 s at 2 s).
const PING_EVERY: Duration = Duration::from_secs(6);
const PING_TIMEOUT: Duration = Duration::from_secs(3);

/// Waits until this coordinator leads, then fences `store` with the election key.
/// `me` is what `baton` shows as the leader (its API address).
pub async fn lead(store: &EtcdStore, me: &str, lease: Duration) -> Result<Leadership, LeaderError> {
    if lease < Duration::from_secs(2) {
        return Err(LeaderError::LeaseTooShort(lease));
    }
    let opts: &EtcdOptions = store.options();
    let endpoints = opts.endpoints.join(",");
    let fail = |e: etcd_client::Error| LeaderError::Etcd {
        endpoints: endpoints.clone(),
        message: e.to_string(),
    };
    let mut client = Client::connect(&opts.endpoints, Some(connect_options()))
        .await
        .map_err(&fail)?;
    let ttl = i64::try_from(lease.as_secs()).unwrap_or(i64::MAX);
    let id = client.lease_grant(ttl, None).await.map_err(&fail)?.id();
    let (lost_tx, lost) = oneshot::channel();
    let keepalive = spawn_keeper(opts.endpoints.clone(), id, lease, lost_tx)?;
    let name = election(opts);
    tracing::info!(election = %name, lease_secs = ttl, "waiting to lead");
    let resp = client
        .campaign(name.clone(), me.to_string(), id)
        .await
        .map_err(&fail)?;
    let key = resp.leader().ok_or_else(|| LeaderError::Etcd {
        endpoints: endpoints.clone(),
        message: "campaign answered without a leader key".into(),
    })?;
    store.set_fence(Fence {
        key: key.key().to_vec(),
        revision: key.rev(),
    });
    tracing::info!(election = %name, revision = key.rev(), "leading");
    Ok(Leadership {
        lost,
        revision: u64::try_from(key.rev()).unwrap_or(0),
        _keepalive: keepalive,
    })
}

/// Renews the lease from a thread of its own, with its own runtime and connection: a
/// leader busy on the runtime it serves from (1,000 nodes joining a debug build on two
/// cores did it) must not miss renewals and lose its leadership for being busy.
fn spawn_keeper(
    endpoints: Vec<String>,
    id: i64,
    lease: Duration,
    lost: oneshot::Sender<String>,
) -> Result<AbortOnDrop, LeaderError> {
    let stop = Arc::new(AtomicBool::new(false));
    let stopped = stop.clone();
    std::thread::Builder::new()
        .name("leader-lease".into())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            match runtime {
                Ok(rt) => rt.block_on(keep_alive(endpoints, id, lease, lost, stopped)),
                Err(e) => {
                    let _ = lost.send(format!("cannot renew the leader lease: {e}"));
                }
            }
        })
        .map_err(LeaderError::Thread)?;
    Ok(AbortOnDrop(stop))
}

/// Renews the lease every third of its TTL until `stop`. Reports it lost when etcd says
/// it expired, or when no renewal got through for a whole TTL (etcd will have expired it
/// by then).
async fn keep_alive(
    endpoints: Vec<String>,
    id: i64,
    lease: Duration,
    lost: oneshot::Sender<String>,
    stop: Arc<AtomicBool>,
) {
    let every = lease / 3;
    let mut last_renewed = tokio::time::Instant::now();
    let mut client = None;
    let mut stream = None;
    while !stop.load(Ordering::Relaxed) {
        if last_renewed.elapsed() >= lease {
            let _ = lost.send(format!("no lease renewal reached etcd for {lease:?}"));
            return;
        }
        if client.is_none() {
            let connect = Client::connect(&endpoints, Some(connect_options()));
            client = tokio::time::timeout(every, connect)
                .await
                .ok()
                .and_then(Result::ok);
        }
        if let (Some(c), None) = (client.as_mut(), stream.as_ref()) {
            // Bounded, as every step here: a hung call must not outlive the lease unseen.
            stream = tokio::time::timeout(every, c.lease_keep_alive(id))
                .await
                .ok()
                .and_then(Result::ok);
        }
        if let Some((keeper, responses)) = stream.as_mut() {
            let renewed = async {
                keeper.keep_alive().await?;
                responses.message().await
            };
            match tokio::time::timeout(every, renewed).await {
                Ok(Ok(Some(r))) if r.ttl() > 0 => last_renewed = tokio::time::Instant::now(),
                Ok(Ok(Some(_))) => {
                    let _ = lost.send("etcd expired the leader lease".into());
                    return;
                }
                // A broken stream is opened again on the next round.
                _ => stream = None,
            }
        }
        tokio::time::sleep(every.saturating_sub(Duration::from_millis(50))).await;
    }
}

/// The election's connections: pinged every [`PING_EVERY`].
fn connect_options() -> ConnectOptions {
    ConnectOptions::new()
        .with_connect_timeout(CALL_TIMEOUT)
        .with_keep_alive(PING_EVERY, PING_TIMEOUT)
}

/// The election's name: one per fleet prefix.
pub fn election(opts: &EtcdOptions) -> String {
    format!("{}/leader", opts.prefix)
}

/// The growing pause between attempts to reach etcd.
fn next_pause(pause: Duration) -> Duration {
    (pause * 2).min(Duration::from_secs(30))
}

/// Opens the etcd store. An etcd that cannot be reached (not up yet after a power cut,
/// a partition) is retried with a growing pause, each failure logged with its cause, as
/// the agents retry their broker; a refusal from a reachable etcd (a newer schema) stops.
pub async fn open_etcd(opts: &EtcdOptions) -> Result<EtcdStore, StoreError> {
    let mut pause = Duration::from_secs(1);
    loop {
        let opened = tokio::task::spawn_blocking({
            let opts = opts.clone();
            move || EtcdStore::open(opts)
        })
        .await
        .unwrap_or_else(|e| {
            Err(StoreError::Etcd(EtcdError::Call {
                endpoints: opts.endpoints.join(","),
                message: e.to_string(),
            }))
        });
        match opened {
            Err(StoreError::Etcd(e @ (EtcdError::Call { .. } | EtcdError::Timeout { .. }))) => {
                tracing::error!(error = %e, retry_in = ?pause, "cannot reach etcd; retrying");
                tokio::time::sleep(pause).await;
                pause = next_pause(pause);
            }
            other => return other,
        }
    }
}

/// [`lead`], retried while etcd cannot be reached.
pub async fn lead_retrying(
    store: &EtcdStore,
    me: &str,
    lease: Duration,
) -> Result<Leadership, LeaderError> {
    const FIRST: Duration = Duration::from_secs(1);
    let mut pause = FIRST;
    loop {
        let began = tokio::time::Instant::now();
        match lead(store, me, lease).await {
            Err(e @ LeaderError::Etcd { .. }) => {
                // A campaign that waited a whole lease before it broke had reached etcd:
                // back in line at once rather than after an outage's growing pause, or a
                // standby could sit out the takeover it waited for.
                if began.elapsed() >= lease {
                    pause = FIRST;
                }
                tracing::error!(error = %e, retry_in = ?pause, "cannot campaign; retrying");
                tokio::time::sleep(pause).await;
                pause = next_pause(pause);
            }
            other => return other,
        }
    }
}
