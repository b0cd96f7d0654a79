//! `baton get KIND [NAME] [-o wide|json|yaml]`: kubectl's tables, or the objects as a
//! `List` document.

use std::time::SystemTime;

use serde_json::Value;

use super::client::Client;
use super::render::agent_update::agent_updates_table;
use super::render::cron_job::cron_jobs_table;
use super::render::daemon_set::daemon_sets_table;
use super::render::job::jobs_table;
use super::render::service::{endpoints_table, services_table};
use super::render::{
    config_maps_table, deployments_table, namespaces_table, nodes_table, pods_table, secrets_table,
};
use super::{target, to_value, CliError, Output};
use crate::contract::body::ApiObject;
use crate::contract::ResourceKind;

pub(super) async fn get(
    client: &Client,
    resource: &str,
    name: Option<&str>,
    output: Option<Output>,
) -> Result<String, CliError> {
    let (kind, name) = target(resource, name)?;
    let objects = match &name {
        Some(n) => vec![super::scope::get(client, kind, n).await?],
        None => super::scope::list(client, kind).await?,
    };
    // kubectl's NAMESPACE column comes first with -A.
    let namespaces: Option<Vec<String>> =
        (client.all_namespaces() && kind.is_namespaced() && name.is_none()).then(|| {
            objects
                .iter()
                .map(|o| o.namespace().unwrap_or_default().to_owned())
                .collect()
        });
    Ok(match output {
        Some(Output::Json) => {
            let doc = document(&objects, name.is_some())?;
            serde_json::to_string_pretty(&doc).map_err(|e| CliError::Protocol(e.to_string()))?
                + "\n"
        }
        Some(Output::Yaml) => {
            let doc = document(&objects, name.is_some())?;
            serde_yaml_ng::to_string(&doc).map_err(|e| CliError::Protocol(e.to_string()))?
        }
        Some(Output::Wide) | None => {
            let wide = output == Some(Output::Wide);
            let now = SystemTime::now();
            if objects.is_empty() && name.is_none() {
                if client.all_namespaces() || !kind.is_namespaced() {
                    eprintln!("No resources found");
                } else {
                    eprintln!("No resources found in {} namespace.", client.namespace());
                }
                String::new()
            } else {
                let table = match kind {
                    ResourceKind::Pod => pods_table(&of_kind(objects, pod)?, wide, now),
                    ResourceKind::Deployment => {
                        deployments_table(&of_kind(objects, deployment)?, wide, now)
                    }
                    ResourceKind::DaemonSet => {
                        daemon_sets_table(&of_kind(objects, daemon_set)?, wide, now)
                    }
                    ResourceKind::Job => jobs_table(&of_kind(objects, job)?, wide, now),
                    ResourceKind::CronJob => {
                        cron_jobs_table(&of_kind(objects, cron_job)?, wide, now)
                    }
                    ResourceKind::Node => nodes_table(&of_kind(objects, node)?, wide, now),
                    ResourceKind::Secret => secrets_table(&of_kind(objects, secret)?, now),
                    ResourceKind::AgentUpdate => {
                        agent_updates_table(&of_kind(objects, agent_update)?, now)
                    }
                    ResourceKind::ConfigMap => {
                        config_maps_table(&of_kind(objects, config_map)?, now)
                    }
                    ResourceKind::Service => services_table(&of_kind(objects, service)?, wide, now),
                    ResourceKind::Endpoints => endpoints_table(&of_kind(objects, endpoints)?, now),
                    ResourceKind::Namespace => namespaces_table(&of_kind(objects, namespace)?, now),
                };
                match &namespaces {
                    Some(ns) => with_namespace_column(&table, ns),
                    None => table,
                }
            }
        }
    })
}

/// What `-o json|yaml` prints: the object, or a kubectl `List` of them.
fn document(objects: &[ApiObject], one: bool) -> Result<Value, CliError> {
    if one {
        if let Some(o) = objects.first() {
            return to_value(o);
        }
    }
    let items = objects
        .iter()
        .map(to_value)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(serde_json::json!({ "apiVersion": "v1", "kind": "List", "items": items }))
}

/// The objects as the kind asked for (`pick` takes it out of an [`ApiObject`]); the
/// server answers no other.
pub(super) fn of_kind<T>(
    objects: Vec<ApiObject>,
    pick: fn(ApiObject) -> Option<T>,
) -> Result<Vec<T>, CliError> {
    objects
        .into_iter()
        .map(|o| pick(o).ok_or_else(other_kind))
        .collect()
}

pub(super) fn other_kind() -> CliError {
    CliError::Protocol("an object of another kind than asked for".into())
}

pub(super) fn kind_of(o: &ApiObject) -> ResourceKind {
    match o {
        ApiObject::Node(_) => ResourceKind::Node,
        ApiObject::Deployment(_) => ResourceKind::Deployment,
        ApiObject::DaemonSet(_) => ResourceKind::DaemonSet,
        ApiObject::Job(_) => ResourceKind::Job,
        ApiObject::CronJob(_) => ResourceKind::CronJob,
        ApiObject::Pod(_) => ResourceKind::Pod,
        ApiObject::Secret(_) => ResourceKind::Secret,
        ApiObject::AgentUpdate(_) => ResourceKind::AgentUpdate,
        ApiObject::ConfigMap(_) => ResourceKind::ConfigMap,
        ApiObject::Service(_) => ResourceKind::Service,
        ApiObject::Endpoints(_) => ResourceKind::Endpoints,
        ApiObject::Namespace(_) => ResourceKind::Namespace,
    }
}

fn namespace(o: ApiObject) -> Option<crate::model::api::Namespace> {
    match o {
        ApiObject::Namespace(n) => Some(n),
        _ => None,
    }
}

/// `table` (a header, then one line per object) with kubectl's NAMESPACE column first.
pub(super) fn with_namespace_column(table: &str, namespaces: &[String]) -> String {
    let width = namespaces
        .iter()
        .map(|n| n.chars().count())
        .chain(["NAMESPACE".len()])
        .max()
        .unwrap_or_default();
    let cells = std::iter::once("NAMESPACE").chain(namespaces.iter().map(String::as_str));
    table
        .lines()
        .zip(cells)
        .map(|(line, ns)| format!("{ns:<width$}   {line}\n"))
        .collect()
}

pub(super) fn pod(o: ApiObject) -> Option<crate::model::api::Pod> {
    match o {
        ApiObject::Pod(p) => Some(p),
        _ => None,
    }
}

fn agent_update(o: ApiObject) -> Option<crate::model::api::AgentUpdate> {
    match o {
        ApiObject::AgentUpdate(u) => Some(u),
        _ => None,
    }
}

fn deployment(o: ApiObject) -> Option<crate::model::api::Deployment> {
    match o {
        ApiObject::Deployment(d) => Some(d),
        _ => None,
    }
}

fn daemon_set(o: ApiObject) -> Option<crate::model::api::DaemonSet> {
    match o {
        ApiObject::DaemonSet(d) => Some(d),
        _ => None,
    }
}

fn job(o: ApiObject) -> Option<crate::model::api::Job> {
    match o {
        ApiObject::Job(j) => Some(j),
        _ => None,
    }
}

fn cron_job(o: ApiObject) -> Option<crate::model::api::CronJob> {
    match o {
        ApiObject::CronJob(c) => Some(c),
        _ => None,
    }
}

fn node(o: ApiObject) -> Option<crate::model::api::Node> {
    match o {
        ApiObject::Node(n) => Some(n),
        _ => None,
    }
}

fn secret(o: ApiObject) -> Option<crate::contract::body::SecretView> {
    match o {
        ApiObject::Secret(s) => Some(s),
        _ => None,
    }
}

fn config_map(o: ApiObject) -> Option<crate::model::api::ConfigMap> {
    match o {
        ApiObject::ConfigMap(c) => Some(c),
        _ => None,
    }
}

pub(super) fn service(o: ApiObject) -> Option<crate::model::api::Service> {
    match o {
        ApiObject::Service(s) => Some(s),
        _ => None,
    }
}

pub(super) fn endpoints(o: ApiObject) -> Option<crate::model::api::Endpoints> {
    match o {
        ApiObject::Endpoints(e) => Some(e),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::ResponseBody;
    use crate::model::api;

    /// `-o json` prints what the server sent, as it did when the CLI kept the reply as
    /// [`Value`]: reading it as the contract's type and back loses and reorders nothing.
    #[test]
    fn json_output_is_the_server_s_answer() {
        let yaml = "\
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, labels: {app: web}}
spec:
  replicas: 3
  strategy: {type: RollingUpdate, rollingUpdate: {maxSurge: 25%, maxUnavailable: 1}}
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      imagePullSecrets: [{name: reg}]
      volumes:
      - {name: data, emptyDir: {sizeLimit: 64Mi}}
      - {name: creds, secret: {secretName: db}}
      - {name: logs, hostPath: {path: /var/log}}
      initContainers:
      - {name: init, image: busybox:1, command: [sh, -c, exit]}
      containers:
      - name: web
        image: busybox:1
        args: [httpd, -f]
        ports: [{name: http, containerPort: 8080}]
        env:
        - {name: MODE, value: prod}
        - name: PW
          valueFrom: {secretKeyRef: {name: db, key: pw}}
        resources: {limits: {cpu: 500m, memory: 64Mi}, requests: {cpu: 100m}}
        securityContext: {runAsUser: 1000, capabilities: {add: [NET_ADMIN], drop: [ALL]}}
        volumeMounts:
        - {name: data, mountPath: /data}
        - {name: creds, mountPath: /creds, readOnly: true}
        livenessProbe:
          httpGet: {path: /healthz, port: http}
        readinessProbe:
          exec: {command: [cat, /tmp/ready]}
        startupProbe:
          tcpSocket: {port: 8080}
---
apiVersion: v1
kind: Pod
metadata: {name: one}
spec:
  containers:
  - {name: c, image: busybox:1}
";
        let mut objects = Vec::new();
        for o in crate::model::manifest::parse_manifests(yaml).unwrap() {
            match o {
                api::Object::Deployment(d) => objects.push(ApiObject::Deployment(d)),
                api::Object::Pod(mut p) => {
                    p.spec.node_name = Some("pi-1".into());
                    p.status.container_statuses = vec![api::ContainerStatus {
                        name: "c".into(),
                        state: api::ContainerState::Running {
                            started_at: "2026-11-01T12:04:20Z".into(),
                        },
                        ready: true,
                        restart_count: 2,
                        reason: None,
                        last_state: Some(api::LastState {
                            terminated: api::TerminatedState {
                                exit_code: 137,
                                reason: "OOMKilled".into(),
                                finished_at: "2026-11-01T12:04:18Z".into(),
                            },
                        }),
                    }];
                    objects.push(ApiObject::Pod(p));
                }
                _ => unreachable!(),
            }
        }
        objects.push(ApiObject::Node(api::Node {
            api_version: "v1".into(),
            kind: "Node".into(),
            metadata: api::ObjectMeta {
                name: "pi-1".into(),
                ..Default::default()
            },
            spec: Default::default(),
            status: api::NodeStatus {
                ready: true,
                arch: "arm".into(),
                arch_variant: "v7".into(),
                address: Some("10.0.0.2".into()),
                last_connect_error: Some(api::ConnectError {
                    message: "refused".into(),
                    reported_at: "2026-12-05T11:59:00Z".into(),
                }),
                ..Default::default()
            },
        }));
        objects.push(
            serde_json::from_value(serde_json::json!({
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": "db"},
                "type": "Opaque",
                "dataSizes": {"pw": 6},
            }))
            .unwrap(),
        );
        for o in &objects {
            let sent = serde_json::to_vec(o).unwrap();
            let was: Value = serde_json::from_slice(&sent).unwrap();
            let read = ApiObject::parse(&sent).unwrap();
            assert_eq!(kind_of(&read), kind_of(o));
            assert_eq!(document(&[read], true).unwrap(), was);
        }
        let list = crate::contract::body::List { items: objects };
        let sent = serde_json::to_vec(&list).unwrap();
        let was: Value = serde_json::from_slice(&sent).unwrap();
        let read = crate::contract::body::List::<ApiObject>::parse(&sent).unwrap();
        assert_eq!(document(&read.items, false).unwrap()["items"], was["items"]);
    }
}
