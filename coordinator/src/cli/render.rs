//! kubectl's output, as pure functions of the API's replies and the current time: the
//! `get` tables, ages, pod status words, the rollout progress bar and history; the
//! `describe` text is in [`describe`].

pub mod agent_update;
pub mod cron_job;
pub mod daemon_set;
pub mod describe;
pub mod job;
pub mod service;

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use crate::contract::body::{RolloutProgress, SecretView};
use crate::contract::images::ImageSummary;
use crate::model::api;
use crate::model::quantity;

/// Left-aligned columns separated by three spaces, like kubectl's tabwriter.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(c.chars().count());
            }
        }
    }
    let mut out = String::new();
    let line = |cells: Vec<&str>, out: &mut String| {
        let last = cells.len().saturating_sub(1);
        for (i, c) in cells.iter().enumerate() {
            out.push_str(c);
            if i < last {
                out.push_str(&" ".repeat(widths[i] - c.chars().count() + 3));
            }
        }
        out.push('\n');
    };
    line(header.to_vec(), &mut out);
    for r in rows {
        line(r.iter().map(String::as_str).collect(), &mut out);
    }
    out
}

/// kubectl-style age: `45s`, `5m`, `3h`, `2d`; `<unknown>` when there is no timestamp.
pub fn age(timestamp: &str, now: SystemTime) -> String {
    let Ok(t) = humantime::parse_rfc3339_weak(timestamp) else {
        return "<unknown>".into();
    };
    let s = now.duration_since(t).unwrap_or_default().as_secs();
    match s {
        0..120 => format!("{s}s"),
        120..7200 => format!("{}m", s / 60),
        7200..172_800 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

/// A container's state in one word (kubelet's `waiting`/`terminated` reason): the one
/// the coordinator derived (`reason`), or, for statuses stored before it did, one derived
/// from the state alone. `None` while running.
fn state_word(c: &api::ContainerStatus) -> Option<String> {
    if c.reason.is_some() {
        return c.reason.clone();
    }
    let word = match &c.state {
        api::ContainerState::Running { .. } => return None,
        api::ContainerState::Pending => "Pending",
        api::ContainerState::Pulling => "Pulling",
        api::ContainerState::OOMKilled => "OOMKilled",
        api::ContainerState::Exited { exit_code: 0 } => "Completed",
        api::ContainerState::Exited { .. } => "Error",
        api::ContainerState::Failed { reason } => reason
            .split(|c: char| c.is_whitespace() || c == ':')
            .find(|w| !w.is_empty())
            .unwrap_or("Failed"),
    };
    Some(word.to_owned())
}

/// The STATUS column of `get pods`, derived as kubectl derives it: the first init
/// container that has not completed says `Init:Error`, `Init:CrashLoopBackOff` or
/// `Init:1/2`; otherwise the last main container that is not running and ready says why
/// (`CrashLoopBackOff`, `OOMKilled`, `Error`, `Completed`, `PodInitializing`).
pub fn pod_status_word(p: &api::Pod) -> String {
    if p.metadata.deletion_timestamp.is_some() {
        return "Terminating".into();
    }
    match p.status.phase {
        api::PodPhase::Unknown => return "Unknown".into(),
        api::PodPhase::Succeeded => return "Completed".into(),
        _ => {}
    }
    if p.spec.node_name.is_none() {
        return "Pending".into();
    }
    let inits = &p.status.init_container_statuses;
    for (i, c) in inits.iter().enumerate() {
        if matches!(c.state, api::ContainerState::Exited { exit_code: 0 }) {
            continue;
        }
        return match state_word(c) {
            Some(w) if w != "PodInitializing" => format!("Init:{w}"),
            _ => format!("Init:{i}/{}", p.spec.init_containers.len().max(inits.len())),
        };
    }
    let statuses = &p.status.container_statuses;
    if statuses.is_empty() {
        return "Pending".into();
    }
    let mut reason = None;
    let mut has_running = false;
    for c in statuses.iter().rev() {
        match state_word(c) {
            Some(w) => reason = Some(w),
            None => has_running |= c.ready,
        }
    }
    match reason {
        // One container completed while another still runs: the pod is running.
        Some(w) if w == "Completed" && has_running => "Running".into(),
        Some(w) => w,
        None => "Running".into(),
    }
}

/// The RESTARTS column: the sum of restarts, and how long ago the last one ended, as
/// kubectl shows it (`3 (42s ago)`). While init containers run, theirs count.
pub fn restarts_column(p: &api::Pod, now: SystemTime) -> String {
    let initializing = p
        .status
        .init_container_statuses
        .iter()
        .any(|c| !matches!(c.state, api::ContainerState::Exited { exit_code: 0 }));
    let counted = if initializing {
        &p.status.init_container_statuses
    } else {
        &p.status.container_statuses
    };
    let restarts: u32 = counted.iter().map(|c| c.restart_count).sum();
    let last = counted
        .iter()
        .filter_map(|c| c.last_state.as_ref())
        .filter_map(|l| humantime::parse_rfc3339_weak(&l.terminated.finished_at).ok())
        .max();
    match last {
        Some(t) if restarts > 0 => {
            let ago = age(&humantime::format_rfc3339_seconds(t).to_string(), now);
            format!("{restarts} ({ago} ago)")
        }
        _ => restarts.to_string(),
    }
}

pub fn pods_table(pods: &[api::Pod], wide: bool, now: SystemTime) -> String {
    let rows: Vec<Vec<String>> = pods
        .iter()
        .map(|p| {
            let total = p.spec.containers.len();
            let ready = p
                .status
                .container_statuses
                .iter()
                .filter(|c| c.ready)
                .count();
            let mut row = vec![
                p.metadata.name.clone(),
                format!("{ready}/{total}"),
                pod_status_word(p),
                restarts_column(p, now),
                age(&p.metadata.creation_timestamp, now),
                p.spec.node_name.clone().unwrap_or_else(|| "<none>".into()),
            ];
            if wide {
                row.push(p.status.pod_ip.clone().unwrap_or_else(|| "<none>".into()));
            }
            row
        })
        .collect();
    let mut header = vec!["NAME", "READY", "STATUS", "RESTARTS", "AGE", "NODE"];
    if wide {
        header.push("IP");
    }
    table(&header, &rows)
}

/// `get secrets`: kubectl's NAME / TYPE / DATA / AGE, from the API's view of a secret
/// (which carries key sizes, never values).
pub fn secrets_table(secrets: &[SecretView], now: SystemTime) -> String {
    let rows: Vec<Vec<String>> = secrets
        .iter()
        .map(|s| {
            vec![
                s.metadata.name.clone(),
                s.type_.clone(),
                s.data_sizes.len().to_string(),
                age(&s.metadata.creation_timestamp, now),
            ]
        })
        .collect();
    table(&["NAME", "TYPE", "DATA", "AGE"], &rows)
}

/// `get configmaps`: kubectl's NAME, DATA (keys of data and binaryData), AGE.
pub fn config_maps_table(cms: &[api::ConfigMap], now: SystemTime) -> String {
    let rows: Vec<Vec<String>> = cms
        .iter()
        .map(|c| {
            vec![
                c.metadata.name.clone(),
                c.key_count().to_string(),
                age(&c.metadata.creation_timestamp, now),
            ]
        })
        .collect();
    table(&["NAME", "DATA", "AGE"], &rows)
}

/// `get namespaces`: kubectl's NAME, STATUS (Active, Terminating), AGE.
pub fn namespaces_table(nss: &[api::Namespace], now: SystemTime) -> String {
    let rows: Vec<Vec<String>> = nss
        .iter()
        .map(|n| {
            vec![
                n.metadata.name.clone(),
                n.status.phase.as_str().to_owned(),
                age(&n.metadata.creation_timestamp, now),
            ]
        })
        .collect();
    table(&["NAME", "STATUS", "AGE"], &rows)
}

/// `describe namespace`: kubectl's Name, Labels, Annotations, Status, then the events.
pub fn describe_namespace(n: &api::Namespace, events: &[api::Event], now: SystemTime) -> String {
    let mut out = String::new();
    kv(&mut out, "Name", &n.metadata.name);
    kv(&mut out, "Labels", labels_str(&n.metadata.labels));
    kv(&mut out, "Annotations", labels_str(&n.metadata.annotations));
    kv(&mut out, "Status", n.status.phase.as_str());
    out.push_str(&events_section(events, now));
    out
}

pub fn deployments_table(ds: &[api::Deployment], wide: bool, now: SystemTime) -> String {
    let rows: Vec<Vec<String>> = ds
        .iter()
        .map(|d| {
            let mut row = vec![
                d.metadata.name.clone(),
                format!("{}/{}", d.status.ready_replicas, d.spec.replicas),
                d.status.updated_replicas.to_string(),
                d.status.available_replicas.to_string(),
                age(&d.metadata.creation_timestamp, now),
            ];
            if wide {
                let images: Vec<&str> = d
                    .spec
                    .template
                    .spec
                    .containers
                    .iter()
                    .map(|c| c.image.as_str())
                    .collect();
                row.push(images.join(","));
                row.push(selector(&d.spec.selector.match_labels));
            }
            row
        })
        .collect();
    let mut header = vec!["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"];
    if wide {
        header.extend(["IMAGES", "SELECTOR"]);
    }
    table(&header, &rows)
}

/// `k=v` pairs joined by `sep`, or `<none>` as kubectl prints an empty set.
fn join_labels(labels: &BTreeMap<String, String>, sep: &str) -> String {
    if labels.is_empty() {
        return "<none>".into();
    }
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(sep)
}

/// One line, as in selectors and tables.
fn selector(labels: &BTreeMap<String, String>) -> String {
    join_labels(labels, ",")
}

fn arch(n: &api::Node) -> String {
    if n.status.arch_variant.is_empty() {
        n.status.arch.clone()
    } else {
        format!("{}/{}", n.status.arch, n.status.arch_variant)
    }
}

/// kubectl's STATUS of a node: `Ready` or `NotReady`, then each condition under pressure,
/// then `SchedulingDisabled` if cordoned, e.g. `Ready,DiskPressure,SchedulingDisabled`.
pub fn node_status_word(n: &api::Node) -> String {
    let mut word = String::from(if n.status.ready { "Ready" } else { "NotReady" });
    for c in &n.status.conditions {
        word.push(',');
        word.push_str(&c.type_);
    }
    if n.spec.unschedulable {
        word.push_str(",SchedulingDisabled");
    }
    word
}

pub fn nodes_table(nodes: &[api::Node], wide: bool, now: SystemTime) -> String {
    let rows: Vec<Vec<String>> = nodes
        .iter()
        .map(|n| {
            let mut row = vec![
                n.metadata.name.clone(),
                node_status_word(n),
                arch(n),
                age(&n.metadata.creation_timestamp, now),
                n.status.agent_version.clone(),
            ];
            if wide {
                row.push(n.status.address.clone().unwrap_or_else(|| "<none>".into()));
                row.push(if n.status.pod_cidr.is_empty() {
                    "<none>".into()
                } else if n.status.pod_cidr_refused.is_some() {
                    format!("{} (refused)", n.status.pod_cidr)
                } else {
                    n.status.pod_cidr.clone()
                });
                row.push(quantity::format_cpu(u64::from(
                    n.status.allocatable.cpu_millis,
                )));
                row.push(quantity::format_memory(n.status.allocatable.memory_bytes));
                // The cause without its advice (`describe node` has both).
                row.push(match &n.status.last_connect_error {
                    Some(e) => e.message.split(" (").next().unwrap_or_default().to_owned(),
                    None => "<none>".into(),
                });
            }
            row
        })
        .collect();
    let mut header = vec!["NAME", "STATUS", "ARCH", "AGE", "VERSION"];
    if wide {
        header.extend(["ADDRESS", "POD-CIDR", "CPU", "MEMORY", "LAST-CONNECT-ERROR"]);
    }
    table(&header, &rows)
}

fn event_type(reason: &str) -> &'static str {
    match reason {
        "FailedScheduling"
        | "OOMKilled"
        | "Error"
        | "Failed"
        | "NodeNotReady"
        | "BackOff"
        | "Evicted"
        | "NodeHasDiskPressure"
        | "NodeHasImageDiskPressure"
        | "NodeHasInsufficientMemory"
        | "NodeHasInsufficientPID"
        | "AgentUpdateRolledBack"
        | "AgentUpdateRefused"
        | "TaintManagerEviction"
        | "RolloutHalted" => "Warning",
        _ => "Normal",
    }
}

fn events_section(events: &[api::Event], now: SystemTime) -> String {
    if events.is_empty() {
        return "Events:  <none>\n".into();
    }
    let rows: Vec<Vec<String>> = events
        .iter()
        .map(|e| {
            vec![
                event_type(&e.reason).into(),
                e.reason.clone(),
                age(&e.timestamp, now),
                e.message.clone(),
            ]
        })
        .collect();
    let t = table(&["Type", "Reason", "Age", "Message"], &rows);
    let mut out = String::from("Events:\n");
    for l in t.lines() {
        out.push_str("  ");
        out.push_str(l);
        out.push('\n');
    }
    out
}

fn kv(out: &mut String, key: &str, value: impl AsRef<str>) {
    let key = format!("{key}:");
    out.push_str(&format!("{key:<16}{}\n", value.as_ref()));
}

/// kubectl's `Namespace:` line of a namespaced object's `describe` (after `Name:`).
fn namespace_kv(out: &mut String, meta: &api::ObjectMeta) {
    let ns = meta.namespace.as_deref().unwrap_or(api::DEFAULT_NAMESPACE);
    kv(out, "Namespace", ns);
}

/// One label a line, aligned under the value column of `describe`.
fn labels_str(labels: &BTreeMap<String, String>) -> String {
    join_labels(labels, "\n                ")
}

fn resources_lines(out: &mut String, c: &api::Container) {
    for (what, list) in [
        ("Limits", &c.resources.limits),
        ("Requests", &c.resources.requests),
    ] {
        if list.is_empty() {
            continue;
        }
        out.push_str(&format!("    {what}:\n"));
        if let Some(cpu) = &list.cpu {
            out.push_str(&format!("      cpu:     {cpu}\n"));
        }
        if let Some(m) = &list.memory {
            out.push_str(&format!("      memory:  {m}\n"));
        }
    }
}

/// `baton image list`: a digest's first 12 hex digits, as `docker images` shows them,
/// unless wide.
pub fn images_table(list: &[ImageSummary], wide: bool, now: SystemTime) -> String {
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|s| {
            let digest = if wide {
                s.digest.clone()
            } else {
                s.digest.chars().take("sha256:".len() + 12).collect()
            };
            vec![
                s.name.clone(),
                digest,
                if s.platforms.is_empty() {
                    "-".to_owned()
                } else {
                    s.platforms.join(",")
                },
                quantity::format_memory(s.size),
                age(&s.creation_timestamp, now),
            ]
        })
        .collect();
    table(&["NAME", "DIGEST", "PLATFORMS", "SIZE", "AGE"], &rows)
}

/// `[#####-----] 3/6 updated, 2 ready`, plus old and terminating pods when there are any.
pub fn progress_bar(p: &RolloutProgress) -> String {
    const WIDTH: usize = 10;
    let filled = if p.replicas == 0 {
        WIDTH
    } else {
        (p.updated.min(p.replicas) as usize * WIDTH) / p.replicas as usize
    };
    let mut line = format!(
        "[{}{}] {}/{} updated, {} ready",
        "#".repeat(filled),
        "-".repeat(WIDTH - filled),
        p.updated,
        p.replicas,
        p.updated_ready
    );
    if p.old > 0 {
        line.push_str(&format!(", {} old", p.old));
    }
    if p.terminating > 0 {
        line.push_str(&format!(", {} terminating", p.terminating));
    }
    line
}

/// `rollout history`: kubectl's REVISION / CHANGE-CAUSE table; `what` is
/// `deployment.apps/NAME` or `daemonset.apps/NAME`.
pub fn history_table(what: &str, revisions: &[api::Revision]) -> String {
    let rows: Vec<Vec<String>> = revisions
        .iter()
        .map(|r| {
            vec![
                r.revision.to_string(),
                r.change_cause.clone().unwrap_or_else(|| "<none>".into()),
            ]
        })
        .collect();
    format!("{what}\n{}", table(&["REVISION", "CHANGE-CAUSE"], &rows))
}

/// `rollout history --revision N`: the template of one revision.
pub fn revision_details(what: &str, r: &api::Revision) -> String {
    let mut out = format!("{what} with revision #{}\n", r.revision);
    let mut labels = r.template.metadata.labels.clone();
    labels.insert(
        crate::model::api::POD_TEMPLATE_HASH_LABEL.into(),
        r.template_hash.clone(),
    );
    out.push_str("Pod Template:\n");
    out.push_str(&format!("  Labels:       {}\n", selector(&labels)));
    if let Some(c) = &r.change_cause {
        out.push_str(&format!(
            "  Annotations:  {}={c}\n",
            api::CHANGE_CAUSE_ANNOTATION
        ));
    }
    out.push_str("  Containers:\n");
    for c in &r.template.spec.containers {
        out.push_str(&format!("   {}:\n    Image:      {}\n", c.name, c.image));
        for p in &c.ports {
            out.push_str(&format!(
                "    Port:       {}/{:?}\n",
                p.container_port, p.protocol
            ));
        }
        for e in &c.env {
            match &e.value_from {
                Some(from) => {
                    out.push_str(&format!("    Env:        {}={}\n", e.name, from.describe()))
                }
                None => out.push_str(&format!("    Env:        {}={}\n", e.name, e.value)),
            }
        }
        resources_lines(&mut out, c);
    }
    out
}

/// A certificate's notAfter (Unix seconds) as RFC 3339 UTC with what is left of it:
/// `2027-01-04T10:00:00Z (29d 23h left)`, or `(expired 2h ago)`.
pub fn not_after_str(not_after: Option<u64>, now: SystemTime) -> String {
    let Some(secs) = not_after else {
        return "-".into();
    };
    let at = std::time::UNIX_EPOCH + Duration::from_secs(secs);
    let when = humantime::format_rfc3339_seconds(at);
    let round = |d: Duration| {
        // Two units are enough to read: "29d 23h", "5m 3s".
        let s = humantime::format_duration(Duration::from_secs(d.as_secs())).to_string();
        s.split(' ').take(2).collect::<Vec<_>>().join(" ")
    };
    match at.duration_since(now) {
        Ok(left) => format!("{when} ({} left)", round(left)),
        Err(e) => format!("{when} (expired {} ago)", round(e.duration())),
    }
}

#[cfg(test)]
mod tests;
