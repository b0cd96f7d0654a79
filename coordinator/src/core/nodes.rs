//! Nodes: their messages (Hello, heartbeats, status, last will), liveness, and eviction of
//! the pods of nodes lost or revoked.

use baton_proto::{Body, NodeName};
use std::time::Duration;

use tokio::time::Instant;

use crate::contract::body::Revocation;
use crate::decide::taints;
use crate::model::api;
use crate::model::wire;

use super::{new_uid, ApiReply, Core, Live, Outbound, Tab};

/// The reason of a Pending pod whose node cannot apply its desired state.
const NOT_APPLIED: &str = "NodeNotApplying";

/// kubelet's event reason for a condition becoming true or false.
fn event_reason(condition: &str, now_true: bool) -> &'static str {
    match (condition, now_true) {
        ("MemoryPressure", true) => "NodeHasInsufficientMemory",
        ("MemoryPressure", false) => "NodeHasSufficientMemory",
        ("PIDPressure", true) => "NodeHasInsufficientPID",
        ("PIDPressure", false) => "NodeHasSufficientPID",
        ("ImageDiskPressure", true) => "NodeHasImageDiskPressure",
        ("ImageDiskPressure", false) => "NodeHasNoImageDiskPressure",
        (_, true) => "NodeHasDiskPressure",
        (_, false) => "NodeHasNoDiskPressure",
    }
}

/// How long a node that told `link` may stay silent before it is NotReady. A node that
/// heartbeats more often than `heartbeat_timeout` keeps that timeout (today's behaviour,
/// and a v4 agent's). A quiet one (a `metered` link sends an unchanged heartbeat only every
/// few hours) is lost through its last will, which the broker publishes when its keepalive
/// lapses or its connection drops; this longer timeout only backs that up, e.g. for a will
/// a broker restart lost.
pub(super) fn liveness_timeout(
    heartbeat_timeout: Duration,
    link: &baton_proto::LinkProfile,
) -> Option<Duration> {
    let quiet = Duration::from_secs(u64::from(link.heartbeat_max_secs));
    (quiet >= heartbeat_timeout).then(|| quiet + heartbeat_timeout)
}

impl Core {
    /// The node's liveness record, created as seen now if it has none yet.
    pub(super) fn live_entry(&mut self, name: &str, now: Instant) -> &mut Live {
        self.live.entry(name.to_owned()).or_insert(Live {
            last_seen: now,
            status_digest: None,
            timeout: None,
        })
    }

    /// A node as the API shows it: as stored, with the leader's term its desired states
    /// carry.
    pub(super) fn node_view(&self, n: &api::Node) -> api::Node {
        let mut n = n.clone();
        n.status.leader_term = self.leader_term;
        n
    }

    /// The protocol version each known node spoke last, as stored (0: unknown), for the
    /// security gate of a coordinator that has not heard them yet.
    pub fn protocol_versions(&self) -> Vec<(String, u16)> {
        self.nodes
            .iter()
            .map(|(name, n)| (name.clone(), n.status.protocol_version))
            .collect()
    }

    /// At start: asks every known node for its status. A restarted coordinator forgot each
    /// node's link profile, and a quiet node that stayed connected to an external broker
    /// would not speak again before the plain heartbeat timeout: it answers with a Hello
    /// and its `Link`, so its own timeout applies again.
    pub(super) fn ask_known_nodes(&mut self) {
        let known: Vec<NodeName> = self
            .nodes
            .keys()
            .filter_map(|n| NodeName::new(n).ok())
            .collect();
        for node in &known {
            self.request_status(node);
        }
        if let Err(e) = self.finish() {
            tracing::warn!(error = %e, "cannot ask the known nodes for their status");
        }
    }

    /// Asks a node for a full status; also makes an agent whose Hello was lost say it again.
    fn request_status(&mut self, node: &NodeName) {
        self.pending_out.push(Outbound {
            node: node.clone(),
            body: Body::StatusRequest,
            retain: false,
        });
    }

    fn set_ready(&mut self, node: &str, ready: bool, why: &str) {
        let Some(n) = self.nodes.get_mut(node) else {
            return;
        };
        if n.status.ready == ready {
            return;
        }
        n.status.ready = ready;
        n.status.last_heartbeat = api::now_rfc3339();
        if ready {
            self.not_ready_since.remove(node);
        } else {
            self.not_ready_since.insert(node.to_owned(), Instant::now());
        }
        self.touch(Tab::Node, node);
        let reason = if ready { "NodeReady" } else { "NodeNotReady" };
        self.record(format!("node/{node}"), reason, why.to_owned());
    }

    /// Records the generation a node has applied. It changes only when the desired state
    /// does, so persisting it costs little and `get nodes` shows it across restarts.
    fn set_applied(&mut self, node: &str, generation: u64) {
        let Some(n) = self.nodes.get_mut(node) else {
            return;
        };
        if n.status.applied_generation != generation {
            n.status.applied_generation = generation;
            self.touch(Tab::Node, node);
        }
    }

    /// Takes in a heartbeat's pressure conditions and apply error: the node's conditions
    /// (each with its transition time), the taints that follow them, an event per condition
    /// that comes or goes (kubelet's reasons), and the reason on the node's pods that wait
    /// for an apply the node cannot make.
    fn set_pressure(&mut self, node: &str, hb: &baton_proto::Heartbeat) {
        let reported = wire::node_conditions(hb, &api::now_rfc3339());
        let apply_error = wire::apply_error(hb);
        let Some(n) = self.nodes.get_mut(node) else {
            return;
        };
        let old = std::mem::take(&mut n.status.conditions);
        let conditions = taints::merge_conditions(&old, reported);
        let node_taints = taints::with_condition_taints(&n.spec.taints, &conditions);
        let changed = conditions != old
            || node_taints != n.spec.taints
            || apply_error != n.status.apply_error;
        let error_changed = apply_error != n.status.apply_error;
        n.status.conditions = conditions.clone();
        n.spec.taints = node_taints;
        n.status.apply_error = apply_error.clone();
        if !changed {
            return;
        }
        self.touch(Tab::Node, node);
        for c in conditions
            .iter()
            .filter(|c| !old.iter().any(|o| o.type_ == c.type_))
        {
            let msg = format!(
                "Node {node} status is now: {} ({})",
                event_reason(&c.type_, true),
                c.message
            );
            self.record(format!("node/{node}"), event_reason(&c.type_, true), msg);
        }
        for o in old
            .iter()
            .filter(|o| !conditions.iter().any(|c| c.type_ == o.type_))
        {
            let msg = format!(
                "Node {node} status is now: {}",
                event_reason(&o.type_, false)
            );
            self.record(format!("node/{node}"), event_reason(&o.type_, false), msg);
        }
        if error_changed {
            self.mark_waiting_pods(node, apply_error.as_deref());
        }
    }

    /// Pods placed on `node` that it has not started (no container status yet) say why
    /// while the node cannot apply its desired state, and stop saying it once it can.
    fn mark_waiting_pods(&mut self, node: &str, apply_error: Option<&str>) {
        let mut touched = Vec::new();
        for pod in self.pods.values_mut() {
            if pod.spec.node_name.as_deref() != Some(node)
                || pod.status.phase != api::PodPhase::Pending
                || !pod.status.container_statuses.is_empty()
            {
                continue;
            }
            let (reason, message) = match apply_error {
                Some(e) => (
                    Some(NOT_APPLIED.to_owned()),
                    Some(format!("node {node} cannot start it yet: {e}")),
                ),
                None if pod.status.reason.as_deref() == Some(NOT_APPLIED) => (None, None),
                None => continue,
            };
            pod.status.reason = reason;
            pod.status.message = message;
            touched.push(pod.metadata.name.clone());
        }
        for name in touched {
            self.touch(Tab::Pod, &name);
        }
    }

    pub(super) fn inbound(&mut self, node: &NodeName, body: Body, proto: u16) {
        let name = node.as_str();
        let now = Instant::now();
        match body {
            Body::Hello(h) => {
                let mut n = wire::node_from_hello(node, &h);
                n.status.protocol_version = proto;
                let is_new = !self.nodes.contains_key(name);
                if let Some(old) = self.nodes.get(name) {
                    n.metadata.uid = old.metadata.uid.clone();
                    n.metadata.creation_timestamp = old.metadata.creation_timestamp.clone();
                    n.status.desired_generation = old.status.desired_generation;
                    // Reported by heartbeats, not by a Hello; the taints a node registered
                    // with were taken when it first did (`baton taint` owns them since).
                    n.spec = old.spec.clone();
                    // `baton label node` wins over the agent's `--labels`.
                    n.spec.apply_label_overrides(&mut n.metadata.labels);
                    n.status.conditions = old.status.conditions.clone();
                    n.status.apply_error = old.status.apply_error.clone();
                    n.status.last_update = old.status.last_update.clone();
                    // The same range keeps its place in `decide::pod_cidr`'s queue; a new
                    // one waits behind every holder.
                    if n.status.pod_cidr == old.status.pod_cidr {
                        n.status.pod_cidr_held = old.status.pod_cidr_held;
                        n.status.pod_cidr_refused = old.status.pod_cidr_refused.clone();
                    }
                    // An agent repeats its report in every Hello of one connection, and
                    // sends none after connecting at once: keep the first report's time,
                    // and the last report until there is a new one.
                    match (
                        &mut n.status.last_connect_error,
                        &old.status.last_connect_error,
                    ) {
                        (None, old_err) => n.status.last_connect_error = old_err.clone(),
                        (Some(new), Some(old_err))
                            if new.message == old_err.message && old.status.ready =>
                        {
                            new.reported_at = old_err.reported_at.clone();
                        }
                        _ => {}
                    }
                } else {
                    n.metadata.uid = new_uid();
                    n.metadata.creation_timestamp = api::now_rfc3339();
                    // `--register-with-taints` counts at registration only, as kubelet's;
                    // the pressure taints follow conditions, never a flag.
                    n.spec
                        .taints
                        .retain(|t| !super::node_spec::MANAGED.contains(&t.key.as_str()));
                }
                // Even an empty desired state gets a generation >= 1, so that a returning
                // agent learns it should run nothing and drops what it still has.
                n.status.desired_generation = n.status.desired_generation.max(1);
                let was_ready = self.nodes.get(name).is_some_and(|o| o.status.ready);
                self.nodes.insert(name.to_owned(), n);
                self.touch(Tab::Node, name);
                self.live.insert(
                    name.to_owned(),
                    Live {
                        last_seen: now,
                        status_digest: None,
                        // A v5 agent tells its link profile right after; an agent that
                        // says none (v4) heartbeats every few seconds.
                        timeout: None,
                    },
                );
                if is_new {
                    self.record(
                        format!("node/{name}"),
                        "RegisteredNode",
                        format!("Node {name} joined"),
                    );
                }
                if !was_ready {
                    self.record(
                        format!("node/{name}"),
                        "NodeReady",
                        "Agent said hello".into(),
                    );
                }
                // Republish what the node should run (the broker may have lost the retained
                // copy). If scheduling in this transaction changes it, `update_desired`
                // follows with the next generation.
                if !self.desired.contains_key(name) {
                    let pods = self.desired_pods(name);
                    self.desired.insert(name.to_owned(), pods);
                }
                self.publish_desired(name);
                // A reconnected agent may have missed parts: it is sent its ConfigMaps
                // again (it keeps the versions it has, so the same content is a no-op).
                self.sent_config_maps.remove(name);
                self.send_config_maps();
                // Likewise its Service table (it may have missed the last one).
                self.sent_service_tables.remove(name);
                self.send_service_tables();
                self.republish_update_order(name);
                // No StatusRequest here: an agent sends its status right after every Hello,
                // and answers a StatusRequest with a Hello, so asking made the two ping-pong
                // (about 30 Hellos a second per agent, each a store commit). A lost status
                // still shows as a digest mismatch on the next heartbeat, which asks then.
            }
            Body::Heartbeat(hb) => {
                if !self.nodes.contains_key(name) {
                    // Its Hello was lost (sent before we subscribed): a StatusRequest makes
                    // the agent say Hello again.
                    tracing::debug!(node = name, "heartbeat from an unknown node; asking it");
                    self.request_status(node);
                    return;
                }
                let live = self.live_entry(name, now);
                live.last_seen = now;
                let digest_differs = live.status_digest != Some(hb.status_digest);
                self.set_ready(name, true, "Heartbeat received");
                self.set_applied(name, hb.applied_generation);
                self.set_pressure(name, &hb);
                let Some(n) = self.nodes.get_mut(name) else {
                    return;
                };
                n.status.last_heartbeat = api::now_rfc3339();
                if hb.applied_generation != n.status.desired_generation {
                    tracing::debug!(
                        node = name,
                        applied = hb.applied_generation,
                        desired = n.status.desired_generation,
                        "republishing desired state"
                    );
                    self.publish_desired(name);
                }
                if digest_differs {
                    self.request_status(node);
                }
            }
            Body::Status(st) => {
                if !self.nodes.contains_key(name) {
                    tracing::debug!(node = name, "status from an unknown node; ignored");
                    return;
                }
                let live = self.live_entry(name, now);
                live.last_seen = now;
                live.status_digest = Some(st.digest());
                self.set_applied(name, st.applied_generation);
                let host_ip = self.nodes.get(name).and_then(|n| n.status.address.clone());
                // Said on the node too, where `describe node` shows it after the pod is gone.
                let mut evicted = Vec::new();
                let metrics = self.metrics.clone();
                for ps in st.pods.iter() {
                    // A node-scheduled CronJob's run: kept under a name of its node's.
                    let run_key = self.run_pod_key(name, ps);
                    let key = run_key.as_deref().unwrap_or(ps.name.as_str());
                    let Some(pod) = self.pods.get_mut(key) else {
                        continue;
                    };
                    if pod.metadata.uid != ps.uid.as_str()
                        || pod.spec.node_name.as_deref() != Some(name)
                    {
                        continue; // an older incarnation, or a pod moved away
                    }
                    let new = wire::pod_status(ps, &pod.spec, host_ip.clone());
                    if new == pod.status
                        || (run_key.is_some()
                            && pod.ended()
                            && !matches!(
                                new.phase,
                                api::PodPhase::Succeeded | api::PodPhase::Failed
                            ))
                    {
                        // An ended run's pod ends as its run did (`record_node_runs`),
                        // not as a pod its node is stopping.
                        continue;
                    }
                    let old = std::mem::replace(&mut pod.status, new);
                    let pod_name = pod.metadata.name.clone();
                    if old.phase == api::PodPhase::Pending
                        && pod.status.phase == api::PodPhase::Running
                    {
                        if let Some(age) = age_of(&pod.metadata.creation_timestamp) {
                            metrics.pod_started(age);
                        }
                    }
                    let mut transitions = container_transitions(&old, &pod.status);
                    if pod.status.reason.as_deref() == Some("Evicted")
                        && old.reason.as_deref() != Some("Evicted")
                    {
                        let why = pod.status.message.clone().unwrap_or_default();
                        evicted.push(format!("Evicted pod {pod_name}: {why}"));
                        transitions.push(("Evicted", why));
                    }
                    let new_ip = pod.status.pod_ip.clone();
                    self.check_pod_ip(name, &pod_name, old.pod_ip.as_deref(), new_ip.as_deref());
                    self.touch(Tab::Pod, &pod_name);
                    for (reason, msg) in transitions {
                        self.record(format!("pod/{pod_name}"), reason, msg);
                    }
                }
                for msg in evicted {
                    self.record(format!("node/{name}"), "Evicted", msg);
                }
            }
            Body::Link(link) => {
                if !self.nodes.contains_key(name) {
                    tracing::debug!(node = name, "link profile from an unknown node; asking it");
                    self.request_status(node);
                    return;
                }
                let timeout = liveness_timeout(self.heartbeat_timeout, &link);
                tracing::info!(
                    node = name,
                    keepalive_secs = link.keepalive_secs,
                    heartbeat_max_secs = link.heartbeat_max_secs,
                    timeout_secs = timeout.map(|t| t.as_secs()),
                    "node link profile"
                );
                let live = self.live_entry(name, now);
                live.last_seen = now;
                live.timeout = timeout;
            }
            Body::Offline => {
                if let Some(live) = self.live.get_mut(name) {
                    live.status_digest = None;
                }
                self.set_ready(name, false, "Agent went offline (last will)");
                // A will can come late, for a connection the node has already replaced: a
                // broker cluster publishes one when it closes a connection the client gave
                // up on while it was slow to accept it (NATS, while JetStream moves), or
                // that a newer one took over, on another node. Such a node is connected,
                // and quiet: it would stay NotReady until its next heartbeat, minutes away
                // on a quiet link. Asked, a connected node says Hello (Ready again at
                // once); a gone one never gets the question (it is not retained).
                if self.nodes.contains_key(name) {
                    self.request_status(node);
                }
            }
            Body::UpdateReport(r) => {
                if !self.nodes.contains_key(name) {
                    tracing::debug!(node = name, "update report from an unknown node; asking it");
                    self.request_status(node);
                    return;
                }
                tracing::info!(node = name, rollout = %r.rollout, phase = ?r.phase, "agent update report");
                self.update_report(name, &r);
            }
            // Kept in memory only: usage is not state, and writing it would wear the disk.
            Body::Usage(u) => {
                if self.nodes.contains_key(name) {
                    self.usage
                        .insert(name.to_owned(), (u, std::time::SystemTime::now()));
                }
            }
            Body::CronRuns(r) => {
                if self.nodes.contains_key(name) {
                    self.record_node_runs(name, r);
                }
            }
            // The bus hands log chunks to their sessions (`crate::edge::logs`).
            Body::LogChunk(_) | Body::ExecOutput(_) | Body::ExecExit(_) => {
                tracing::debug!(node = name, "a log chunk reached the core; ignored")
            }
            Body::Desired(_)
            | Body::StatusRequest
            | Body::RotateKey
            | Body::AgentUpdate(_)
            | Body::LogRequest(_)
            | Body::LogCredit(_)
            | Body::ConfigMapPart(_)
            | Body::ExecRequest(_)
            | Body::ExecInput(_)
            | Body::ServiceTable(_) => {
                tracing::warn!(node = name, "downward message on an upward topic; ignored");
            }
        }
    }

    /// The coordinator's broker link went down or came back ([`super::Event::BusLink`]).
    /// While it is down nothing a node sends can arrive, so silence proves nothing: no node
    /// is timed out and no NotReady one evicted. Once it is back every node gets a fresh
    /// window, as after a leader's load (`txn`): a full heartbeat timeout to be heard
    /// (the messages sent meanwhile are lost with the clean session), and a NotReady one a
    /// full eviction timeout.
    pub(super) fn bus_link(&mut self, up: bool) {
        if !up {
            if !self.bus_down {
                tracing::info!(
                    "the broker link is down: node silence does not count until it is back"
                );
            }
            self.bus_down = true;
            return;
        }
        if !std::mem::take(&mut self.bus_down) {
            return;
        }
        let now = Instant::now();
        let names: Vec<String> = self.nodes.keys().cloned().collect();
        for name in names {
            self.live_entry(&name, now).last_seen = now;
        }
        for since in self.not_ready_since.values_mut() {
            *since = now;
        }
        tracing::info!(
            nodes = self.nodes.len(),
            "the broker link is back: every node has a fresh heartbeat window"
        );
    }

    pub(super) fn tick(&mut self) {
        if self.bus_down {
            return;
        }
        let now = Instant::now();
        let stale: Vec<(String, Duration)> = self
            .nodes
            .values()
            .filter(|n| n.status.ready)
            .filter_map(|n| {
                let live = self.live.get(&n.metadata.name);
                let timeout = live
                    .and_then(|l| l.timeout)
                    .unwrap_or(self.heartbeat_timeout);
                live.is_none_or(|l| now.duration_since(l.last_seen) >= timeout)
                    .then(|| (n.metadata.name.clone(), timeout))
            })
            .collect();
        for (name, timeout) in stale {
            if let Some(live) = self.live.get_mut(&name) {
                live.status_digest = None;
            }
            let why = format!("No heartbeat for {}s", timeout.as_secs());
            self.set_ready(&name, false, &why);
            // Silence can be a lost message, not a lost node: a Link that a broker dropped
            // (NATS, while JetStream moves, loses QoS 1 messages it cannot store) leaves a
            // quiet node on the plain heartbeat timeout, which it never meets. Asked once,
            // a connected node says Hello and its Link again.
            if let Ok(node) = NodeName::new(&name) {
                self.request_status(&node);
            }
        }
        self.evict_from_lost_nodes(now);
    }

    /// Deletes the Deployment pods of nodes NotReady for longer than the eviction timeout.
    /// Settling then lets their Deployments create replacements, which the scheduler puts
    /// on Ready nodes, and removes them from the lost node's desired state, so that the
    /// node stops them as soon as it is back (it gets that state retained on reconnect,
    /// and again on Hello or a heartbeat with an older generation).
    fn evict_from_lost_nodes(&mut self, now: Instant) {
        let lost: Vec<String> = self
            .nodes
            .values()
            .filter(|n| !n.status.ready)
            .filter(|n| {
                self.not_ready_since
                    .get(&n.metadata.name)
                    .is_some_and(|since| now.duration_since(*since) >= self.pod_eviction_timeout)
            })
            .map(|n| n.metadata.name.clone())
            .collect();
        for node in lost {
            let why = format!("NotReady for {}s", self.pod_eviction_timeout.as_secs());
            self.evict_node(&node, &why);
        }
    }

    /// Deletes the Deployment pods and the live Job pods on `node` (their controllers
    /// replace them elsewhere).
    fn evict_node(&mut self, node: &str, why: &str) {
        {
            let evict: Vec<String> = self
                .pods
                .values()
                .filter(|p| p.spec.node_name.as_deref() == Some(node))
                .filter(|p| p.metadata.owner.is_some() || is_live_job_pod(p))
                // A node-scheduled CronJob's runs are the node's own, as it is offline.
                .filter(|p| !p.node_run())
                .map(|p| p.metadata.name.clone())
                .collect();
            if evict.is_empty() {
                return;
            }
            self.record(
                format!("node/{node}"),
                "NodeLost",
                format!(
                    "{why}: evicting {} pod(s) of Deployments and Jobs",
                    evict.len()
                ),
            );
            for name in evict {
                self.pods.remove(&name);
                self.draining.remove(&name);
                self.touch(Tab::Pod, &name);
                self.record(
                    format!("pod/{name}"),
                    "Evicted",
                    format!("Node {node} was lost; its deployment replaces the pod elsewhere"),
                );
            }
        }
    }

    /// A revoked node is shut out like a lost one, at once: NotReady (its messages are
    /// refused, so it never becomes Ready again), its Deployment pods evicted and
    /// replaced elsewhere, and its desired state emptied (published once, so an honest
    /// agent stops its pods). Re-enrolling takes it back.
    pub(super) fn set_revoked(&mut self, node: &str, revoked: bool) -> ApiReply {
        if revoked {
            if self.revoked.insert(node.to_owned()) {
                self.set_ready(node, false, "Node identity revoked");
                self.record(
                    format!("node/{node}"),
                    "Revoked",
                    "Node identity revoked: its messages are refused".into(),
                );
                self.evict_node(node, "Node identity revoked");
            }
        } else if self.revoked.remove(node) {
            self.record(
                format!("node/{node}"),
                "Enrolled",
                "Node enrolled again with a new identity".into(),
            );
        }
        ApiReply::Revocation(Revocation {
            node: node.to_owned(),
            revoked,
        })
    }
}

/// A Job's pod that has not ended: its Job replaces it elsewhere when its node is lost.
/// An ended one stays, as the count of its Job.
fn is_live_job_pod(p: &api::Pod) -> bool {
    p.metadata.job.is_some()
        && !matches!(
            p.status.phase,
            api::PodPhase::Succeeded | api::PodPhase::Failed
        )
}

/// Events worth recording when a pod's container states change.
fn container_transitions(
    old: &api::PodStatus,
    new: &api::PodStatus,
) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    for c in &new.container_statuses {
        let before = old.container_statuses.iter().find(|o| o.name == c.name);
        let same_state = before.is_some_and(|b| {
            std::mem::discriminant(&b.state) == std::mem::discriminant(&c.state)
                && b.restart_count == c.restart_count
        });
        if same_state {
            continue;
        }
        let n = &c.name;
        match &c.state {
            api::ContainerState::Pulling => {
                out.push(("Pulling", format!("Pulling image for container {n}")))
            }
            api::ContainerState::Running { .. } => {
                out.push(("Started", format!("Started container {n}")))
            }
            api::ContainerState::OOMKilled => out.push((
                "OOMKilled",
                format!("Container {n} was killed: out of memory"),
            )),
            api::ContainerState::Exited { exit_code: 0 } => {
                out.push(("Completed", format!("Container {n} exited with code 0")))
            }
            api::ContainerState::Exited { exit_code } => out.push((
                "Error",
                format!("Container {n} exited with code {exit_code}"),
            )),
            api::ContainerState::Failed { reason } => {
                out.push(("Failed", format!("Container {n}: {reason}")))
            }
            api::ContainerState::Pending => {}
        }
    }
    out
}

/// How long ago an RFC 3339 timestamp (a `creationTimestamp`) was; `None` if unparsable or
/// in the future (a clock step).
fn age_of(timestamp: &str) -> Option<Duration> {
    let at = humantime::parse_rfc3339(timestamp).ok()?;
    std::time::SystemTime::now().duration_since(at).ok()
}
