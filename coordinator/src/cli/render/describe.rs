//! `baton describe`'s text: kubectl's layout of key/value lines, each container in
//! detail, and an Events section.

use std::time::SystemTime;

use super::{
    age, arch, events_section, kv, labels_str, namespace_kv, not_after_str, pod_status_word,
    resources_lines, selector, state_word, table,
};
use crate::contract::body::SecretView;
use crate::contract::nodes::IdentitySummary;
use crate::model::api;
use crate::model::quantity;

/// `describe secret`: like kubectl, each key with its size in bytes, never its value.
pub fn describe_secret(s: &SecretView, events: &[api::Event], now: SystemTime) -> String {
    let mut out = String::new();
    kv(&mut out, "Name", &s.metadata.name);
    namespace_kv(&mut out, &s.metadata);
    kv(&mut out, "Labels", labels_str(&s.metadata.labels));
    kv(&mut out, "Type", &s.type_);
    out.push_str("\nData\n====\n");
    let width = s.data_sizes.keys().map(|k| k.len() + 1).max().unwrap_or(0);
    for (k, size) in &s.data_sizes {
        let key = format!("{k}:");
        out.push_str(&format!("{key:<width$}  {size} bytes\n"));
    }
    out.push_str(&events_section(events, now));
    out
}

/// kubectl's `describe configmap`: each text value in full, binary values by size.
pub fn describe_config_map(c: &api::ConfigMap, events: &[api::Event], now: SystemTime) -> String {
    let mut out = String::new();
    kv(&mut out, "Name", &c.metadata.name);
    namespace_kv(&mut out, &c.metadata);
    kv(&mut out, "Labels", labels_str(&c.metadata.labels));
    if c.immutable {
        kv(&mut out, "Immutable", "true");
    }
    out.push_str("\nData\n====\n");
    for (k, v) in &c.data {
        out.push_str(&format!("{k}:\n----\n{v}\n"));
        if !v.ends_with('\n') {
            out.push('\n');
        }
    }
    out.push_str("\nBinaryData\n====\n");
    for (k, v) in &c.binary_data {
        out.push_str(&format!("{k}: {} bytes\n", v.len()));
    }
    out.push_str(&events_section(events, now));
    out
}

/// `describe pod`'s State / Last State lines for one container, as kubectl prints them.
fn state_lines(out: &mut String, s: Option<&api::ContainerStatus>) {
    let Some(s) = s else {
        out.push_str("    State:          Waiting\n");
        return;
    };
    let word = state_word(s);
    match &s.state {
        api::ContainerState::Running { started_at } => {
            out.push_str("    State:          Running\n");
            out.push_str(&format!("      Started:      {started_at}\n"));
        }
        api::ContainerState::Exited { .. } | api::ContainerState::OOMKilled
            if word.as_deref() != Some("CrashLoopBackOff") =>
        {
            let code = match s.state {
                api::ContainerState::Exited { exit_code } => exit_code,
                _ => 137,
            };
            out.push_str("    State:          Terminated\n");
            out.push_str(&format!(
                "      Reason:       {}\n",
                word.unwrap_or_else(|| "Error".into())
            ));
            out.push_str(&format!("      Exit Code:    {code}\n"));
        }
        other => {
            out.push_str("    State:          Waiting\n");
            if let Some(w) = word {
                out.push_str(&format!("      Reason:       {w}\n"));
            }
            if let api::ContainerState::Failed { reason } = other {
                out.push_str(&format!("      Message:      {reason}\n"));
            }
        }
    }
    if let Some(last) = &s.last_state {
        let t = &last.terminated;
        out.push_str("    Last State:     Terminated\n");
        out.push_str(&format!("      Reason:       {}\n", t.reason));
        out.push_str(&format!("      Exit Code:    {}\n", t.exit_code));
        out.push_str(&format!("      Finished:     {}\n", t.finished_at));
    }
}

/// kubectl's one-line probe summary:
/// `http-get http://:8080/healthz delay=0s timeout=1s period=10s #success=1 #failure=3`.
pub fn probe_line(p: &api::Probe) -> String {
    let what = match &p.handler {
        api::ProbeHandler::Exec { command } => format!("exec [{}]", command.join(" ")),
        api::ProbeHandler::HttpGet {
            path,
            port,
            scheme,
            host,
            ..
        } => {
            let scheme = match scheme {
                api::Scheme::HTTP => "http",
                api::Scheme::HTTPS => "https",
            };
            format!(
                "http-get {scheme}://{}:{port}{path}",
                host.as_deref().unwrap_or("")
            )
        }
        api::ProbeHandler::TcpSocket { port, host } => {
            format!("tcp-socket {}:{port}", host.as_deref().unwrap_or(""))
        }
    };
    format!(
        "{what} delay={}s timeout={}s period={}s #success={} #failure={}",
        p.initial_delay_seconds,
        p.timeout_seconds,
        p.period_seconds,
        p.success_threshold,
        p.failure_threshold
    )
}

/// A container's `envFrom` sources as kubectl lists them, before `Environment:`: the
/// source's name and kind, its prefix if any, and whether it is optional.
fn env_from_lines(out: &mut String, sources: &[api::EnvFromSource]) {
    if sources.is_empty() {
        return;
    }
    out.push_str("    Environment Variables from:\n");
    let rows: Vec<(&str, String, bool)> = sources
        .iter()
        .map(|f| {
            let from = if f.prefix.is_empty() {
                "ConfigMap".to_owned()
            } else {
                format!("ConfigMap with prefix '{}'", f.prefix)
            };
            (
                f.config_map_ref.name.as_str(),
                from,
                f.config_map_ref.optional,
            )
        })
        .collect();
    let name_w = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
    let from_w = rows.iter().map(|r| r.1.len()).max().unwrap_or(0);
    for (name, from, optional) in rows {
        out.push_str(&format!(
            "      {name:<name_w$}  {from:<from_w$}  Optional: {optional}\n"
        ));
    }
}

/// One container of `describe pod`: image, ports, state, probes, environment, mounts.
/// Secret-backed variables show where the value comes from, never the value.
fn container_section(out: &mut String, c: &api::Container, status: Option<&api::ContainerStatus>) {
    out.push_str(&format!("  {}:\n", c.name));
    out.push_str(&format!("    Image:          {}\n", c.image));
    for p in &c.ports {
        out.push_str(&format!(
            "    Port:           {}/{:?}\n",
            p.container_port, p.protocol
        ));
    }
    if !c.command.is_empty() {
        out.push_str(&format!("    Command:        {}\n", c.command.join(" ")));
    }
    if !c.args.is_empty() {
        out.push_str(&format!("    Args:           {}\n", c.args.join(" ")));
    }
    state_lines(out, status);
    out.push_str(&format!(
        "    Ready:          {}\n",
        if status.is_some_and(|s| s.ready) {
            "True"
        } else {
            "False"
        }
    ));
    out.push_str(&format!(
        "    Restart Count:  {}\n",
        status.map_or(0, |s| s.restart_count)
    ));
    resources_lines(out, c);
    for (what, probe) in [
        ("Liveness", &c.liveness_probe),
        ("Readiness", &c.readiness_probe),
        ("Startup", &c.startup_probe),
    ] {
        if let Some(p) = probe {
            let key = format!("{what}:");
            out.push_str(&format!("    {key:<16}{}\n", probe_line(p)));
        }
    }
    if let Some(sc) = &c.security_context {
        let mut parts = Vec::new();
        if sc.privileged == Some(true) {
            parts.push("privileged".to_owned());
        }
        if let Some(u) = sc.run_as_user {
            parts.push(format!("runAsUser={u}"));
        }
        if let Some(g) = sc.run_as_group {
            parts.push(format!("runAsGroup={g}"));
        }
        if sc.read_only_root_filesystem == Some(true) {
            parts.push("readOnlyRootFilesystem".to_owned());
        }
        if let Some(caps) = &sc.capabilities {
            if !caps.add.is_empty() {
                parts.push(format!("add={}", caps.add.join(",")));
            }
            if !caps.drop.is_empty() {
                parts.push(format!("drop={}", caps.drop.join(",")));
            }
        }
        if !parts.is_empty() {
            out.push_str(&format!("    Security:       {}\n", parts.join(" ")));
        }
    }
    env_from_lines(out, &c.env_from);
    if c.env.is_empty() {
        out.push_str("    Environment:    <none>\n");
    } else {
        out.push_str("    Environment:\n");
        let width = c.env.iter().map(|e| e.name.len() + 1).max().unwrap_or(0);
        for e in &c.env {
            let value = match &e.value_from {
                Some(from) => from.describe(),
                None => e.value.clone(),
            };
            let key = format!("{}:", e.name);
            out.push_str(&format!("      {key:<width$}  {value}\n"));
        }
    }
    if c.volume_mounts.is_empty() {
        out.push_str("    Mounts:         <none>\n");
    } else {
        out.push_str("    Mounts:\n");
        for m in &c.volume_mounts {
            out.push_str(&format!(
                "      {} from {} ({})\n",
                m.mount_path,
                m.name,
                if m.read_only { "ro" } else { "rw" }
            ));
        }
    }
}

pub fn describe_pod(p: &api::Pod, events: &[api::Event], now: SystemTime) -> String {
    let mut out = String::new();
    kv(&mut out, "Name", &p.metadata.name);
    namespace_kv(&mut out, &p.metadata);
    let node = match (&p.spec.node_name, &p.status.host_ip) {
        (Some(n), Some(ip)) => format!("{n}/{ip}"),
        (Some(n), None) => n.clone(),
        (None, _) => "<none>".into(),
    };
    kv(&mut out, "Node", node);
    kv(&mut out, "Start Time", &p.metadata.creation_timestamp);
    kv(&mut out, "Labels", labels_str(&p.metadata.labels));
    kv(&mut out, "Status", format!("{:?}", p.status.phase));
    if let Some(r) = &p.status.reason {
        kv(&mut out, "Reason", r);
    }
    if let Some(m) = &p.status.message {
        kv(&mut out, "Message", m);
    }
    kv(
        &mut out,
        "IP",
        p.status.pod_ip.as_deref().unwrap_or("<none>"),
    );
    kv(&mut out, "UID", &p.metadata.uid);
    if let Some(owner) = &p.metadata.owner {
        kv(&mut out, "Controlled By", format!("Deployment/{owner}"));
    }
    if let Some(owner) = &p.metadata.daemon_set {
        kv(&mut out, "Controlled By", format!("DaemonSet/{owner}"));
    }
    if let Some(owner) = &p.metadata.job {
        kv(&mut out, "Controlled By", format!("Job/{owner}"));
    }
    if !p.spec.init_containers.is_empty() {
        out.push_str("Init Containers:\n");
        for (i, c) in p.spec.init_containers.iter().enumerate() {
            let status = p
                .status
                .init_container_statuses
                .get(i)
                .filter(|s| s.name == c.name);
            container_section(&mut out, c, status);
        }
    }
    out.push_str("Containers:\n");
    for c in &p.spec.containers {
        let status = p
            .status
            .container_statuses
            .iter()
            .find(|s| s.name == c.name);
        container_section(&mut out, c, status);
    }
    if !p.spec.volumes.is_empty() {
        out.push_str("Volumes:\n");
        for v in &p.spec.volumes {
            out.push_str(&format!("  {}:\n", v.name));
            match &v.source {
                api::VolumeSource::Secret { secret_name } => {
                    out.push_str("    Type:        Secret (a volume populated by a Secret)\n");
                    out.push_str(&format!("    SecretName:  {secret_name}\n"));
                }
                api::VolumeSource::ConfigMap { name, optional, .. } => {
                    out.push_str(
                        "    Type:        ConfigMap (a volume populated by a ConfigMap)\n",
                    );
                    out.push_str(&format!("    Name:        {name}\n"));
                    out.push_str(&format!("    Optional:    {optional}\n"));
                }
                api::VolumeSource::EmptyDir { size_limit } => {
                    out.push_str(
                        "    Type:        EmptyDir (a temporary directory that shares a pod's lifetime)\n",
                    );
                    out.push_str(&format!(
                        "    SizeLimit:   {}\n",
                        size_limit.as_deref().unwrap_or("<unset>")
                    ));
                }
                api::VolumeSource::HostPath { path } => {
                    out.push_str("    Type:        HostPath (bare host directory volume)\n");
                    out.push_str(&format!("    Path:        {path}\n"));
                }
            }
        }
    }
    if !p.spec.image_pull_secrets.is_empty() {
        let names: Vec<&str> = p
            .spec
            .image_pull_secrets
            .iter()
            .map(|r| r.name.as_str())
            .collect();
        kv(&mut out, "Pull Secrets", names.join(", "));
    }
    out.push_str(&events_section(events, now));
    out
}

pub fn describe_deployment(d: &api::Deployment, events: &[api::Event], now: SystemTime) -> String {
    let mut out = String::new();
    kv(&mut out, "Name", &d.metadata.name);
    namespace_kv(&mut out, &d.metadata);
    kv(&mut out, "Created", &d.metadata.creation_timestamp);
    kv(&mut out, "Labels", labels_str(&d.metadata.labels));
    kv(
        &mut out,
        "Selector",
        selector(&d.spec.selector.match_labels),
    );
    kv(
        &mut out,
        "Replicas",
        format!(
            "{} desired | {} updated | {} total | {} available",
            d.spec.replicas,
            d.status.updated_replicas,
            d.status.replicas,
            d.status.available_replicas
        ),
    );
    let strategy = match &d.spec.strategy.rolling_update {
        Some(ru) => format!(
            "{:?} ({} max unavailable, {} max surge)",
            d.spec.strategy.type_, ru.max_unavailable, ru.max_surge
        ),
        None => format!("{:?}", d.spec.strategy.type_),
    };
    kv(&mut out, "Strategy", strategy);
    kv(
        &mut out,
        "Generation",
        format!(
            "{} (observed {})",
            d.metadata.generation, d.status.observed_generation
        ),
    );
    out.push_str("Pod Template:\n");
    out.push_str(&format!(
        "  Labels:  {}\n",
        selector(&d.spec.template.metadata.labels)
    ));
    out.push_str("  Containers:\n");
    for c in &d.spec.template.spec.containers {
        out.push_str(&format!("   {}:\n    Image:  {}\n", c.name, c.image));
        resources_lines(&mut out, c);
    }
    out.push_str(&events_section(events, now));
    out
}

/// `identity`: the node's enrolled identity (`routes::Identity`), `None`
/// when it has not enrolled.
pub fn describe_node(
    n: &api::Node,
    identity: Option<&IdentitySummary>,
    pods: &[&api::Pod],
    events: &[api::Event],
    now: SystemTime,
) -> String {
    let mut out = String::new();
    kv(&mut out, "Name", &n.metadata.name);
    kv(&mut out, "Labels", labels_str(&n.metadata.labels));
    kv(&mut out, "Created", &n.metadata.creation_timestamp);
    kv(&mut out, "Ready", n.status.ready.to_string());
    kv(&mut out, "Last Heartbeat", &n.status.last_heartbeat);
    if n.status.conditions.is_empty() {
        kv(&mut out, "Conditions", "<no pressure>");
    } else {
        out.push_str(
            "Conditions:
",
        );
        let rows: Vec<Vec<String>> = n
            .status
            .conditions
            .iter()
            .map(|c| {
                vec![
                    c.type_.clone(),
                    "True".into(),
                    c.last_transition_time.clone(),
                    c.reason.clone(),
                    c.message.clone(),
                ]
            })
            .collect();
        let header = ["Type", "Status", "LastTransitionTime", "Reason", "Message"];
        for l in table(&header, &rows).lines() {
            out.push_str("  ");
            out.push_str(l);
            out.push('\n');
        }
    }
    let taints: Vec<String> = n.spec.taints.iter().map(|t| t.to_string()).collect();
    kv(
        &mut out,
        "Taints",
        if taints.is_empty() {
            "<none>".to_owned()
        } else {
            taints.join(", ")
        },
    );
    kv(
        &mut out,
        "Unschedulable",
        if n.spec.unschedulable {
            "true"
        } else {
            "false"
        },
    );
    kv(&mut out, "Architecture", arch(n));
    kv(&mut out, "OS", &n.status.os);
    kv(&mut out, "Agent Version", &n.status.agent_version);
    if let Some(u) = &n.status.last_update {
        let mut line = format!(
            "{} {} ({}, {})",
            u.version,
            u.phase.as_str(),
            u.rollout,
            u.at
        );
        if let Some(r) = &u.reason {
            line.push_str(": ");
            line.push_str(r);
        }
        kv(&mut out, "Last Update", line);
    }
    kv(
        &mut out,
        "Address",
        n.status.address.as_deref().unwrap_or("<none>"),
    );
    match &n.status.pod_cidr_refused {
        // Said where the range is, with the node that holds it: why its pods get no traffic.
        Some(why) => kv(
            &mut out,
            "PodCIDR",
            format!(
                "{} (refused, not routed, its pods are not endpoints: {why})",
                n.status.pod_cidr
            ),
        ),
        None => kv(&mut out, "PodCIDR", &n.status.pod_cidr),
    }
    kv(
        &mut out,
        "Generation",
        format!(
            "desired {} / applied {}",
            n.status.desired_generation, n.status.applied_generation
        ),
    );
    // The serving leader's: agents do not report the term they last accepted.
    kv(
        &mut out,
        "Leader Term",
        match n.status.leader_term {
            0 => "<none>".to_owned(),
            t => format!("{t} (the serving leader's)"),
        },
    );
    // Why the node lags, in the agent's words with the cause.
    if let Some(e) = &n.status.apply_error {
        kv(&mut out, "Apply Error", e);
    }
    match &n.status.last_connect_error {
        Some(e) => kv(
            &mut out,
            "Connect Error",
            format!("{} (reported {})", e.message, e.reported_at),
        ),
        None => kv(&mut out, "Connect Error", "<none>"),
    }
    match identity {
        Some(id) => {
            out.push_str("Enrollment:\n");
            out.push_str("  enrolled:     yes\n");
            let field = |v: &str| if v.is_empty() { "-" } else { v }.to_owned();
            out.push_str(&format!("  fingerprint:  {}\n", field(&id.fingerprint)));
            out.push_str(&format!("  serial:       {}\n", field(&id.serial)));
            out.push_str(&format!(
                "  not after:    {}\n",
                not_after_str(Some(id.not_after), now)
            ));
            out.push_str(&format!(
                "  revoked:      {}\n",
                if id.revoked { "yes" } else { "no" }
            ));
        }
        None => out.push_str("Enrollment:\n  enrolled:     no\n"),
    }
    out.push_str("Allocatable:\n");
    out.push_str(&format!(
        "  cpu:     {}\n",
        quantity::format_cpu(u64::from(n.status.allocatable.cpu_millis))
    ));
    out.push_str(&format!(
        "  memory:  {}\n",
        quantity::format_memory(n.status.allocatable.memory_bytes)
    ));
    out.push_str(&format!("  pods:    {}\n", n.status.allocatable.pods));
    out.push_str(&format!("Pods:            ({} in total)\n", pods.len()));
    if !pods.is_empty() {
        let rows: Vec<Vec<String>> = pods
            .iter()
            .map(|p| {
                // A node runs every namespace's pods: kubectl's Namespace column tells
                // two same-named ones apart.
                vec![
                    p.metadata
                        .namespace
                        .as_deref()
                        .unwrap_or(api::DEFAULT_NAMESPACE)
                        .to_owned(),
                    p.metadata.name.clone(),
                    pod_status_word(p),
                    age(&p.metadata.creation_timestamp, now),
                ]
            })
            .collect();
        for l in table(&["Namespace", "Name", "Status", "Age"], &rows).lines() {
            out.push_str("  ");
            out.push_str(l);
            out.push('\n');
        }
    }
    out.push_str(&events_section(events, now));
    out
}
