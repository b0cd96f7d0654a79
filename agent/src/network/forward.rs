//! hostPort: a userspace TCP forwarder from the agent's side to the pod (see the module
//! docs of [`super`] for why not DNAT).

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

use super::NetError;

/// Most connections one forwarder keeps open; more are refused, so that a flood cannot exhaust
/// the agent's file descriptors.
const MAX_FORWARDED_CONNECTIONS: usize = 512;
/// How long connecting to the pod may take before the client's connection is dropped.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A hostPort: listens on the agent's side and copies each connection to the pod.
///
/// Dropping it aborts its task, which closes the listener and every connection it forwards
/// (shortly after, on the runtime's next poll of the task).
pub struct PortForward {
    local: SocketAddr,
    target: SocketAddr,
    task: JoinHandle<()>,
}

impl PortForward {
    /// Listens on `0.0.0.0:host_port` in the agent's network namespace. Must be called within a
    /// tokio runtime. Binding happens before this returns, so a taken port is reported here.
    pub fn start(host_port: u16, target: SocketAddr) -> Result<Self, NetError> {
        Self::start_on(SocketAddr::from(([0, 0, 0, 0], host_port)), target)
    }

    /// Like [`PortForward::start`] on a chosen address; port 0 picks a free port (see
    /// [`PortForward::local_addr`]).
    pub fn start_on(bind: SocketAddr, target: SocketAddr) -> Result<Self, NetError> {
        let handle = tokio::runtime::Handle::try_current().map_err(NetError::NoRuntime)?;
        let listen_err = |source| NetError::Listen { addr: bind, source };
        let std_listener = std::net::TcpListener::bind(bind).map_err(listen_err)?;
        std_listener.set_nonblocking(true).map_err(listen_err)?;
        let local = std_listener.local_addr().map_err(listen_err)?;
        let listener = {
            let _enter = handle.enter();
            TcpListener::from_std(std_listener).map_err(listen_err)?
        };
        let task = handle.spawn(forward_loop(listener, target));
        tracing::info!(%local, %target, "port forward started");
        Ok(Self {
            local,
            target,
            task,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    pub fn target(&self) -> SocketAddr {
        self.target
    }
}

impl Drop for PortForward {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Accepts until aborted. The connections live in a [`JoinSet`] owned by this future, so
/// aborting the forwarder also aborts (and closes) all of them.
async fn forward_loop(listener: TcpListener, target: SocketAddr) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((client, peer)) => {
                    if conns.len() >= MAX_FORWARDED_CONNECTIONS {
                        tracing::warn!(%peer, %target, "too many forwarded connections; refusing");
                        continue;
                    }
                    conns.spawn(forward_one(client, target));
                }
                Err(e) => {
                    // Typically EMFILE: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

async fn forward_one(mut client: TcpStream, target: SocketAddr) {
    let mut upstream = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(target)).await
    {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::debug!(%target, error = %e, "cannot connect to pod");
            return;
        }
        Err(_) => {
            tracing::debug!(%target, "connecting to pod timed out");
            return;
        }
    };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
        tracing::debug!(%target, error = %e, "forwarded connection ended with an error");
    }
}
