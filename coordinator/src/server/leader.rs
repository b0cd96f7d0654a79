//! Leader election for coordinators that share an etcd (issue 17), with etcd's own
//! election API rather than anything home-made: the Kubernetes way of running one active
//! controller manager among several.
//!
//! A coordinator on etcd holds a lease (kept alive every third of its TTL) and campaigns
//! under `<prefix>/leader` before it loads any state: a standby waits there, serving
//! nothing, and takes over when the leader's lease ends (its process died, or it was cut
//! off from etcd for a whole TTL). The winner then fences its store
//! ([`crate::store::etcd::Fence`]): every commit applies only while its election key
//! exists as created, so a leader that was paused past its lease and has not noticed yet
//! cannot write over its successor. When the lease is lost, the coordinator stops
//! ([`Leadership::lost`]); under systemd it restarts and waits as a standby.

use std::time::Duration;

use etcd_client::{Client, ConnectOptions};
use tokio::sync::oneshot;

use crate::store::etcd::{EtcdOptions, EtcdStore, Fence, CALL_TIMEOUT};

/// Default `--leader-lease`: how long a dead leader keeps its standby waiting.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(6);

#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    #[error("etcd at {endpoints}: {message}")]
    Etcd { endpoints: String, message: String },
    #[error("the leader lease must be at least 2 s, got {0:?}")]
    LeaseTooShort(Duration),
}

/// This coordinator leads; `lost` fires (with why) once it no longer does.
pub struct Leadership {
    pub lost: oneshot::Receiver<String>,
    /// Keeps the lease alive; dropped with the leadership.
    _keepalive: tokio::task::JoinHandle<()>,
}

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
    let connect = ConnectOptions::new()
        .with_connect_timeout(CALL_TIMEOUT)
        .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2));
    let mut client = Client::connect(&opts.endpoints, Some(connect))
        .await
        .map_err(&fail)?;
    let ttl = i64::try_from(lease.as_secs()).unwrap_or(i64::MAX);
    let id = client.lease_grant(ttl, None).await.map_err(&fail)?.id();
    let (lost_tx, lost) = oneshot::channel();
    let keepalive = tokio::spawn(keep_alive(client.clone(), id, lease, lost_tx));
    let name = format!("{}/leader", opts.prefix);
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
        _keepalive: keepalive,
    })
}

/// Renews the lease every third of its TTL. Reports it lost when etcd says it expired,
/// or when no renewal got through for a whole TTL (etcd will have expired it by then).
async fn keep_alive(mut client: Client, id: i64, lease: Duration, lost: oneshot::Sender<String>) {
    let every = lease / 3;
    let mut last_renewed = tokio::time::Instant::now();
    let mut stream = None;
    loop {
        if last_renewed.elapsed() >= lease {
            let _ = lost.send(format!("no lease renewal reached etcd for {lease:?}"));
            return;
        }
        if stream.is_none() {
            stream = client.lease_keep_alive(id).await.ok();
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
