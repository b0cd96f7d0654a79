//! `baton get KIND -w` and `baton get events [-w]`: the objects (or events), then one row
//! per change as the coordinator commits it. A stream that ends (the server dropped a
//! slow reader, or restarted) is resumed from the last resource version read, so no change
//! is shown twice or missed; when the server no longer knows that version (410), the
//! objects are listed again.

use std::io::Write;
use std::time::{Duration, SystemTime};

use super::client::Client;
use super::render::cron_job::cron_jobs_table;
use super::render::daemon_set::daemon_sets_table;
use super::render::job::jobs_table;
use super::render::{
    age, config_maps_table, deployments_table, nodes_table, pods_table, secrets_table, table,
};
use super::CliError;
use crate::contract::body::ApiObject;
use crate::contract::routes::{Events, EventsNamespaced, Watch, WatchNamespaced};
use crate::contract::watch::{WatchEvent, WatchLines};
use crate::contract::{NoBody, ResourceKind};
use crate::model::api;

const EVENT_HEADER: [&str; 4] = ["LAST SEEN", "REASON", "OBJECT", "MESSAGE"];

/// `baton get events`: kubectl's columns, oldest first.
/// With `-A` every namespace's, NAMESPACE first; else the namespace's (those about
/// cluster-scoped objects, nodes, are `default`'s, as in Kubernetes).
pub(super) async fn list_events(client: &Client, _wide: bool) -> Result<String, CliError> {
    let events = if client.all_namespaces() {
        client.call(&Events { object: None }, &NoBody).await?.items
    } else {
        let route = EventsNamespaced {
            namespace: client.namespace().to_owned(),
            object: None,
        };
        client.call(&route, &NoBody).await?.items
    };
    if events.is_empty() {
        eprintln!("No resources found");
        return Ok(String::new());
    }
    let now = SystemTime::now();
    let rows: Vec<Vec<String>> = events.iter().map(|e| event_row(e, now)).collect();
    let t = table(&EVENT_HEADER, &rows);
    Ok(if client.all_namespaces() {
        let ns: Vec<String> = events
            .iter()
            .map(|e| event_namespace(e).to_owned())
            .collect();
        super::get::with_namespace_column(&t, &ns)
    } else {
        t
    })
}

/// The namespace an event is listed in: its object's, `default` for cluster-scoped ones.
fn event_namespace(e: &api::Event) -> &str {
    e.namespace.as_deref().unwrap_or(api::DEFAULT_NAMESPACE)
}

fn event_row(e: &api::Event, now: SystemTime) -> Vec<String> {
    vec![
        age(&e.timestamp, now),
        e.reason.clone(),
        e.object.clone(),
        e.message.clone(),
    ]
}

/// One change as a table row (the table's header is printed once, before the first);
/// with `namespace` (`-A`, a namespaced kind), kubectl's NAMESPACE column first.
fn row(ev: &WatchEvent, wide: bool, namespace: Option<&str>) -> Option<(String, String)> {
    let now = SystemTime::now();
    let t = match (&ev.object, &ev.event) {
        (_, Some(e)) => table(&EVENT_HEADER, &[event_row(e, now)]),
        (Some(ApiObject::Pod(p)), _) => pods_table(std::slice::from_ref(p), wide, now),
        (Some(ApiObject::Deployment(d)), _) => {
            deployments_table(std::slice::from_ref(d), wide, now)
        }
        (Some(ApiObject::DaemonSet(d)), _) => daemon_sets_table(std::slice::from_ref(d), wide, now),
        (Some(ApiObject::Node(n)), _) => nodes_table(std::slice::from_ref(n), wide, now),
        (Some(ApiObject::Secret(s)), _) => secrets_table(std::slice::from_ref(s), now),
        (Some(ApiObject::Job(j)), _) => jobs_table(std::slice::from_ref(j), wide, now),
        (Some(ApiObject::CronJob(c)), _) => cron_jobs_table(std::slice::from_ref(c), wide, now),
        (Some(ApiObject::ConfigMap(c)), _) => config_maps_table(std::slice::from_ref(c), now),
        (Some(ApiObject::Service(s)), _) => {
            super::render::service::services_table(std::slice::from_ref(s), wide, now)
        }
        (Some(ApiObject::Endpoints(e)), _) => {
            super::render::service::endpoints_table(std::slice::from_ref(e), now)
        }
        (Some(ApiObject::AgentUpdate(_)), _) => format!("NAME\n{}\n", ev.name),
        (Some(ApiObject::Namespace(n)), _) => {
            super::render::namespaces_table(std::slice::from_ref(n), now)
        }
        (None, None) => format!("NAME   STATUS\n{}   Deleted\n", ev.name),
    };
    let t = match namespace {
        Some(ns) => super::get::with_namespace_column(&t, &[ns.to_owned()]),
        None => t,
    };
    let (header, body) = t.split_once('\n')?;
    Some((header.to_owned(), body.trim_end().to_owned()))
}

/// Streams changes of `kind` (`None`: events), or of the object `name` only, to stdout
/// until interrupted.
pub(super) async fn watch(
    client: &Client,
    kind: Option<ResourceKind>,
    name: Option<&str>,
    wide: bool,
) -> Result<String, CliError> {
    let what = kind.map_or("events", ResourceKind::as_str).to_owned();
    let mut since: Option<u64> = None;
    let mut header_shown = false;
    let mut out = std::io::stdout().lock();
    loop {
        let resource_version = since.map(|v| v.to_string());
        // Without -A, the namespace's route: the server sends only its changes, and a
        // token limited to the namespace may open it.
        let namespaced = !client.all_namespaces() && kind.is_none_or(ResourceKind::is_namespaced);
        let opened = if namespaced {
            let route = WatchNamespaced {
                namespace: client.namespace().to_owned(),
                kind: what.clone(),
                resource_version,
            };
            client.stream(&route).await
        } else {
            let route = Watch {
                kind: what.clone(),
                resource_version,
            };
            client.stream(&route).await
        };
        let mut resp = match opened {
            Ok(r) => r,
            Err(CliError::Server { status, .. }) if status == "Gone" => {
                since = None; // list again
                continue;
            }
            Err(e @ CliError::Unreachable { .. }) => {
                tracing::debug!(error = %e, "watch: reconnecting");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            Err(e) => return Err(e),
        };
        let mut pending: Vec<u8> = Vec::new();
        loop {
            let piece = match resp.chunk().await {
                Ok(Some(p)) => p,
                Ok(None) | Err(_) => break, // resume from `since`
            };
            pending.extend_from_slice(&piece);
            while let Some(at) = pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = pending.drain(..=at).collect();
                let ev = WatchLines::parse_line(&line)
                    .map_err(|e| CliError::Protocol(format!("a watch line: {e}")))?;
                since = Some(ev.resource_version);
                if name.is_some_and(|n| n != ev.name) {
                    continue;
                }
                let column = client.all_namespaces().then(|| ev.in_namespace());
                if let Some((header, body)) = row(&ev, wide, column.flatten()) {
                    if !header_shown {
                        writeln!(out, "{header}").map_err(super::stdout_error)?;
                        header_shown = true;
                    }
                    writeln!(out, "{body}").map_err(super::stdout_error)?;
                    out.flush().map_err(super::stdout_error)?;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::watch::Change;

    fn deleted(namespace: Option<&str>) -> WatchEvent {
        WatchEvent {
            change: Change::Deleted,
            resource_version: 7,
            kind: "pod".into(),
            name: "web".into(),
            object: None,
            event: None,
            namespace: namespace.map(str::to_owned),
        }
    }

    #[test]
    fn with_all_namespaces_the_namespace_comes_first() {
        let ev = deleted(Some("team-b"));
        let (header, body) = row(&ev, false, ev.in_namespace()).unwrap();
        let header: Vec<_> = header.split_whitespace().collect();
        assert_eq!(header, ["NAMESPACE", "NAME", "STATUS"]);
        let body: Vec<_> = body.split_whitespace().collect();
        assert_eq!(body, ["team-b", "web", "Deleted"]);
        // A cluster-scoped object's (a node's) has no such column, as with `get -A`.
        let (header, _) = row(&deleted(None), false, deleted(None).in_namespace()).unwrap();
        assert!(header.starts_with("NAME "), "{header}");
    }
}
