//! The node's Service proxy follows the last [`ServiceTable`] the coordinator sent.
//!
//! A table is taken only whole and checked (its digest), persisted with the one atomic
//! writer (`<data-dir>/services.bin`) and handed to one task that writes the rules
//! ([`crate::network::Network::sync_services`]), keeping only the newest table, as the
//! hostPort writer does. At start the persisted table is written back before the loop
//! runs ([`first_sync`]), so an agent restart puts the same rules back, never an empty set,
//! and the connections the kernel tracks are untouched. Nothing removes the rules when the
//! agent exits; `baton-agent reset` does.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use baton_proto::ServiceTable;
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::network::NetError;
use crate::pod::Deps;

/// How long a failed write waits before it is tried again (with the newest table).
const RETRY: Duration = Duration::from_secs(2);

/// Where the last table is kept.
pub(super) fn path(data_dir: &Path) -> PathBuf {
    data_dir.join("services.bin")
}

/// The persisted table; an empty one if there is none or it does not check (logged).
pub(super) fn load(data_dir: &Path) -> ServiceTable {
    let p = path(data_dir);
    let bytes = match std::fs::read(&p) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return ServiceTable::default(),
        Err(e) => {
            error!(path = %p.display(), error = %e, "cannot read the service table");
            return ServiceTable::default();
        }
    };
    match postcard::from_bytes::<ServiceTable>(&bytes) {
        Ok(t) if t.check().is_ok() => t,
        _ => {
            error!(path = %p.display(), "ignoring a corrupt service table");
            ServiceTable::default()
        }
    }
}

/// Checks and persists a table that came from the coordinator; `None` if refused.
pub(super) fn accept(data_dir: &Path, table: ServiceTable) -> Option<ServiceTable> {
    if let Err(e) = table.check() {
        warn!(error = %e, "service table does not match its digest; refused");
        return None;
    }
    match postcard::to_allocvec(&table) {
        Ok(bytes) => {
            if let Err(e) = crate::durable::write(&path(data_dir), &bytes, 0o600) {
                // The rules still follow it; a restart before the next table writes the
                // previous one back, and the coordinator resends after the Hello.
                warn!(error = %e, "cannot persist the service table");
            }
        }
        Err(e) => warn!(error = %e, "cannot encode the service table"),
    }
    Some(table)
}

fn ipv4(addr: Option<IpAddr>) -> Option<Ipv4Addr> {
    match addr? {
        IpAddr::V4(a) => Some(a),
        IpAddr::V6(_) => None,
    }
}

/// Writes `table` now, blocking: at start, before the loop runs.
pub(super) fn first_sync(
    deps: &Deps,
    table: &ServiceTable,
    addr: Option<IpAddr>,
) -> Result<(), NetError> {
    deps.network.sync_services(table, ipv4(addr))?;
    info!(services = table.services.len(), "service rules written");
    Ok(())
}

/// Starts the writer; the loop sends each accepted table into the returned sender.
pub(super) fn spawn_writer(
    deps: Arc<Deps>,
    initial: ServiceTable,
    addr: Option<IpAddr>,
) -> watch::Sender<ServiceTable> {
    let (tx, mut rx) = watch::channel(initial);
    let addr = ipv4(addr);
    tokio::spawn(async move {
        while rx.changed().await.is_ok() {
            loop {
                let table = rx.borrow_and_update().clone();
                let d = deps.clone();
                let n = table.services.len();
                match tokio::task::spawn_blocking(move || d.network.sync_services(&table, addr))
                    .await
                {
                    Ok(Ok(())) => {
                        info!(services = n, "service rules written");
                        break;
                    }
                    Ok(Err(e)) => error!(error = %e, "cannot write service rules; retrying"),
                    Err(e) => error!(error = %e, "service rule writer failed; retrying"),
                }
                tokio::time::sleep(RETRY).await;
            }
        }
    });
    tx
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use baton_proto::{BString, BVec, NodeRoute, ServiceTable};

    use super::{accept, load, path};

    fn table() -> ServiceTable {
        let route = NodeRoute {
            cidr: BString::new("10.42.1.0/24").unwrap(),
            via: Ipv4Addr::new(192, 168, 1, 10),
        };
        ServiceTable::new(BVec::new(), BVec::from_vec(vec![route]).unwrap()).unwrap()
    }

    #[test]
    fn an_accepted_table_is_persisted_and_a_tampered_one_refused() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load(dir.path()), ServiceTable::default(), "none yet");
        let t = accept(dir.path(), table()).unwrap();
        assert_eq!(load(dir.path()), t, "a restart writes the same table back");

        let mut tampered = table();
        tampered.routes = BVec::new();
        assert!(accept(dir.path(), tampered).is_none());
        assert_eq!(load(dir.path()), t, "the refused table replaced nothing");

        // A corrupt file is not half-read: nothing rather than something wrong.
        std::fs::write(path(dir.path()), b"\x01\x02garbage").unwrap();
        assert_eq!(load(dir.path()), ServiceTable::default());
    }
}
