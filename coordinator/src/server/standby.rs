//! What a standby coordinator serves while it waits to lead (`super::leader`): every API
//! request is answered with a `307 Temporary Redirect` to the same path on the leader,
//! whose API address is the value of its election key. A standby holds no state, so it
//! cannot answer reads itself without serving stale ones; a redirect keeps one source of
//! truth and costs the client one round trip. `baton` follows it with its token
//! (`crate::cli::client`); a load balancer's health check (`/healthz`) sees 503, so it
//! sends clients to the leader only.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::Uri;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use etcd_client::{Client, ConnectOptions};
use tokio::sync::{oneshot, Mutex};

use crate::contract::body::ErrorBody;
use crate::store::etcd::CALL_TIMEOUT;

/// A standby's API listener, serving redirects until [`Standby::stop`].
pub struct Standby {
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

struct Lookup {
    endpoints: Vec<String>,
    election: String,
    client: Mutex<Option<Client>>,
}

impl Lookup {
    /// The leader's API address, from its election key.
    async fn leader(&self) -> Result<String, String> {
        let mut guard = self.client.lock().await;
        if guard.is_none() {
            let opts = ConnectOptions::new().with_connect_timeout(Duration::from_secs(2));
            *guard = Some(
                Client::connect(&self.endpoints, Some(opts))
                    .await
                    .map_err(|e| format!("etcd: {e}"))?,
            );
        }
        let client = guard.as_mut().ok_or("no etcd client")?;
        let resp = tokio::time::timeout(CALL_TIMEOUT, client.leader(self.election.clone()))
            .await
            .map_err(|_| "etcd did not answer".to_string())?;
        match resp {
            Ok(r) => r
                .kv()
                .map(|kv| String::from_utf8_lossy(kv.value()).into_owned())
                .ok_or_else(|| "no leader is elected yet".to_string()),
            // etcd answers "election: no leader" while nobody leads.
            Err(e) if e.to_string().contains("no leader") => {
                Err("no leader is elected yet".to_string())
            }
            Err(e) => {
                *guard = None;
                Err(format!("etcd: {e}"))
            }
        }
    }
}

impl Standby {
    /// Serves redirects on `listener` until stopped.
    pub fn start(
        listener: tokio::net::TcpListener,
        tls: Option<Arc<rustls::ServerConfig>>,
        conns: Arc<crate::edge::serve::Conns>,
        endpoints: Vec<String>,
        election: String,
    ) -> Standby {
        let lookup = Arc::new(Lookup {
            endpoints,
            election,
            client: Mutex::new(None),
        });
        let app = Router::new().fallback(redirect).with_state(lookup);
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(crate::edge::serve::serve(
            listener,
            tls,
            app,
            conns,
            async move {
                let _ = stopped.await;
            },
        ));
        Standby { stop, task }
    }

    /// Stops serving and frees the address for the leader's own listener.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

async fn redirect(State(lookup): State<Arc<Lookup>>, uri: Uri) -> Response {
    let unavailable = |why: String| {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(ErrorBody {
                error: format!("this coordinator is a standby and {why}"),
            }),
        )
            .into_response()
    };
    if uri.path() == "/healthz" {
        return unavailable("serves no requests itself".into());
    }
    match lookup.leader().await {
        Ok(leader) => {
            let path = uri.path_and_query().map_or("/", |p| p.as_str());
            let location = format!("{}{path}", leader.trim_end_matches('/'));
            (
                StatusCode::TEMPORARY_REDIRECT,
                [(header::LOCATION, location.clone())],
                Json(ErrorBody {
                    error: format!("this coordinator is a standby; the leader is {leader}"),
                }),
            )
                .into_response()
        }
        Err(why) => unavailable(format!("cannot name the leader: {why}")),
    }
}
