//! Admission policy: what a pod may ask of the node it lands on.
//!
//! The manifest parser checks that a pod is well formed; this module checks that it is
//! *allowed*. Edge devices run whatever the coordinator sends them as root, so anything
//! that reaches past the container (a privileged container, extra capabilities, a
//! directory of the host, the host's network) is refused unless the operator started
//! `baton server` with the flag that allows it. Resource values are bounded too, so a
//! typo (`memory: 64Ti`) is an error at `apply`, not a node that never fits the pod.
//!
//! **Invariant:** pure. A pod spec and a [`Policy`] in, the first violation out, no IO.
//! The core calls [`check_pod`] for every Pod and Deployment template on `apply`, before
//! anything is stored, so nothing it refuses ever reaches a node. Pods admitted earlier
//! keep running when the server is restarted with a stricter policy (Kubernetes'
//! admission works the same way).
//!
//! Capabilities that may be added without a flag are Kubernetes' Pod Security Standard
//! "baseline" set ([`DEFAULT_CAPABILITIES`]): the ones container runtimes grant by
//! default anyway. Dropping capabilities is always allowed.

use std::collections::BTreeSet;

use crate::model::api;
use crate::model::quantity;

/// The most CPU one container may request or be limited to, in millicores (64 cores).
pub const MAX_CPU_MILLIS: u64 = 64_000;
/// The most memory (and `emptyDir` size) one container or volume may ask for (1 TiB).
pub const MAX_MEMORY_BYTES: u64 = 1 << 40;

/// Capabilities any pod may add: Kubernetes' Pod Security Standard "baseline" list.
pub const DEFAULT_CAPABILITIES: &[&str] = &[
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
];

/// What the operator allows beyond the defaults (`baton server --allow-*`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    /// `--allow-privileged`: containers with `securityContext.privileged: true`.
    pub allow_privileged: bool,
    /// `--allow-host-path PREFIX`: hostPath volumes at or below one of these directories.
    pub allow_host_paths: Vec<String>,
    /// `--allow-capability CAP`: capabilities beyond [`DEFAULT_CAPABILITIES`] (`ALL`
    /// allows every one).
    pub allow_capabilities: BTreeSet<String>,
    /// `--allow-host-network`: pods with `hostNetwork: true`.
    pub allow_host_network: bool,
    /// `--allow-host-port RANGE`: the `hostPort`s a container may bind on its node.
    pub allow_host_ports: HostPorts,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("{path}: privileged containers are refused by the coordinator's policy (start `baton server` with --allow-privileged to allow them)")]
    Privileged { path: String },
    #[error("{path}: adding capability {cap} is refused by the coordinator's policy (start `baton server` with --allow-capability {cap} to allow it)")]
    Capability { path: String, cap: String },
    #[error("{path}: hostPath {host_path:?} is refused by the coordinator's policy (start `baton server` with --allow-host-path PREFIX, a directory containing it, to allow it)")]
    HostPath { path: String, host_path: String },
    #[error("{path}: seccomp profile Unconfined is refused by the coordinator's policy (start `baton server` with --allow-privileged to allow it)")]
    Unconfined { path: String },
    #[error("{path}: hostNetwork is refused by the coordinator's policy (start `baton server` with --allow-host-network to allow it)")]
    HostNetwork { path: String },
    #[error("{path}: hostPort {port} is refused by the coordinator's policy, which allows {allowed} (start `baton server` with --allow-host-port {port}, besides the ranges it allows now, to allow it)")]
    HostPort {
        path: String,
        port: u16,
        allowed: HostPorts,
    },
    #[error("{path}: {value} exceeds the coordinator's bound of {max}")]
    TooLarge {
        path: String,
        value: String,
        max: String,
    },
    #[error("{path}: limit {limit} must be greater than or equal to the request {request}")]
    LimitBelowRequest {
        path: String,
        limit: String,
        request: String,
    },
    #[error("{path}: {source}")]
    Quantity {
        path: String,
        #[source]
        source: quantity::QuantityError,
    },
}

/// Is `path` at or below the directory `prefix`? Component-wise, so `/data` admits
/// `/data` and `/data/x` but not `/database`.
fn under(path: &str, prefix: &str) -> bool {
    let prefix = prefix.trim_end_matches('/');
    if prefix.is_empty() {
        return path.starts_with('/');
    }
    path == prefix
        || path
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.starts_with('/'))
}

fn host_path_allowed(path: &str, policy: &Policy) -> bool {
    // The manifest parser refuses `..`; refuse it here too so this check never depends
    // on where the spec came from.
    !path.split('/').any(|c| c == "..") && policy.allow_host_paths.iter().any(|p| under(path, p))
}

fn capability_allowed(cap: &str, policy: &Policy) -> bool {
    DEFAULT_CAPABILITIES.contains(&cap)
        || policy.allow_capabilities.contains("ALL")
        || policy.allow_capabilities.contains(cap)
}

/// Checks a pod spec against `policy`. `path` is where the spec sits in its manifest
/// (`spec` for a Pod, `spec.template.spec` for a Deployment), so errors name the field.
pub fn check_pod(spec: &api::PodSpec, path: &str, policy: &Policy) -> Result<(), PolicyError> {
    if spec.host_network && !policy.allow_host_network {
        return Err(PolicyError::HostNetwork {
            path: format!("{path}.hostNetwork"),
        });
    }
    for (i, v) in spec.volumes.iter().enumerate() {
        match &v.source {
            api::VolumeSource::HostPath { path: host_path } => {
                if !host_path_allowed(host_path, policy) {
                    return Err(PolicyError::HostPath {
                        path: format!("{path}.volumes[{i}].hostPath.path"),
                        host_path: host_path.clone(),
                    });
                }
            }
            api::VolumeSource::EmptyDir {
                size_limit: Some(limit),
            } => {
                let p = format!("{path}.volumes[{i}].emptyDir.sizeLimit");
                memory(&p, limit)?;
            }
            api::VolumeSource::EmptyDir { size_limit: None }
            | api::VolumeSource::Secret { .. }
            | api::VolumeSource::ConfigMap { .. } => {}
        }
    }
    check_host_ports(spec, path, policy)?;
    for (cpath, c) in spec.all_containers(path) {
        check_container(&cpath, c, policy)?;
    }
    check_seccomp(spec, path, policy)
}

/// `seccompProfile: {type: Unconfined}`, on the pod or a container, lifts the syscall
/// filter every container gets by default (`unshare`, `keyctl`, `bpf`, `mount` ... reach
/// the host kernel again), so it needs the same flag as a privileged container.
fn check_seccomp(spec: &api::PodSpec, path: &str, policy: &Policy) -> Result<(), PolicyError> {
    if policy.allow_privileged {
        return Ok(());
    }
    let unconfined = |p: Option<api::SeccompProfile>| {
        p.is_some_and(|p| p.typ == api::SeccompProfileType::Unconfined)
    };
    if unconfined(spec.security_context.seccomp_profile) {
        return Err(PolicyError::Unconfined {
            path: format!("{path}.securityContext.seccompProfile.type"),
        });
    }
    for (cpath, c) in spec.all_containers(path) {
        if unconfined(
            c.security_context
                .as_ref()
                .and_then(|sc| sc.seccomp_profile),
        ) {
            return Err(PolicyError::Unconfined {
                path: format!("{cpath}.securityContext.seccompProfile.type"),
            });
        }
    }
    Ok(())
}

fn check_container(path: &str, c: &api::Container, policy: &Policy) -> Result<(), PolicyError> {
    if let Some(sc) = &c.security_context {
        if sc.privileged == Some(true) && !policy.allow_privileged {
            return Err(PolicyError::Privileged {
                path: format!("{path}.securityContext.privileged"),
            });
        }
        if let Some(caps) = &sc.capabilities {
            for (i, cap) in caps.add.iter().enumerate() {
                if !capability_allowed(cap, policy) {
                    return Err(PolicyError::Capability {
                        path: format!("{path}.securityContext.capabilities.add[{i}]"),
                        cap: cap.clone(),
                    });
                }
            }
        }
    }
    let r = &c.resources;
    let rpath = format!("{path}.resources");
    let cpu_req = cpu(&format!("{rpath}.requests.cpu"), &r.requests.cpu)?;
    let cpu_lim = cpu(&format!("{rpath}.limits.cpu"), &r.limits.cpu)?;
    limit_not_below_request(
        format!("{rpath}.limits.cpu"),
        cpu_req,
        cpu_lim,
        quantity::format_cpu,
    )?;
    let mem = |which: &str, v: &Option<String>| -> Result<Option<u64>, PolicyError> {
        v.as_deref()
            .map(|s| memory(&format!("{rpath}.{which}.memory"), s))
            .transpose()
    };
    let mem_req = mem("requests", &r.requests.memory)?;
    let mem_lim = mem("limits", &r.limits.memory)?;
    limit_not_below_request(
        format!("{rpath}.limits.memory"),
        mem_req,
        mem_lim,
        quantity::format_memory,
    )
}

/// A limit below its request (when both are given) is refused at `path`, the limit's.
fn limit_not_below_request(
    path: String,
    request: Option<u64>,
    limit: Option<u64>,
    format: fn(u64) -> String,
) -> Result<(), PolicyError> {
    match (request, limit) {
        (Some(request), Some(limit)) if limit < request => Err(PolicyError::LimitBelowRequest {
            path,
            limit: format(limit),
            request: format(request),
        }),
        _ => Ok(()),
    }
}

fn cpu(path: &str, v: &Option<String>) -> Result<Option<u64>, PolicyError> {
    let parse = |s: &str| quantity::parse_cpu_millis(s).map(u64::from);
    v.as_deref()
        .map(|s| bounded(path, s, parse, MAX_CPU_MILLIS, quantity::format_cpu))
        .transpose()
}

fn memory(path: &str, s: &str) -> Result<u64, PolicyError> {
    bounded(
        path,
        s,
        quantity::parse_memory_bytes,
        MAX_MEMORY_BYTES,
        quantity::format_memory,
    )
}

/// The quantity `s` at `path`, parsed and refused above the coordinator's bound `max`.
fn bounded(
    path: &str,
    s: &str,
    parse: impl Fn(&str) -> Result<u64, quantity::QuantityError>,
    max: u64,
    format: fn(u64) -> String,
) -> Result<u64, PolicyError> {
    let value = parse(s).map_err(|source| PolicyError::Quantity {
        path: path.to_owned(),
        source,
    })?;
    if value > max {
        return Err(PolicyError::TooLarge {
            path: path.to_owned(),
            value: s.to_owned(),
            max: format(max),
        });
    }
    Ok(value)
}

/// The host ports a pod may bind without a flag: the unprivileged range. Below 1024
/// live the node's own services (ssh on 22, DNS, HTTP): a pod there could stand in for
/// one, as binding them needs root on an ordinary host. Every shipped example fits
/// (8080, 6379, 6380); `--allow-host-port` narrows or widens it.
pub const DEFAULT_HOST_PORTS: (u16, u16) = (1024, 65535);

/// Ranges of host ports (`--allow-host-port`), Pod Security "baseline"'s "known list".
/// Empty allows none. `hostIP` plays no part: the agent's DNAT rule matches every local
/// address of the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPorts(Vec<(u16, u16)>);

impl Default for HostPorts {
    fn default() -> Self {
        Self(vec![DEFAULT_HOST_PORTS])
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid host port range {0:?}: expected PORT, FIRST-LAST (0-65535), ALL or none")]
pub struct HostPortRangeError(String);

impl HostPorts {
    /// From `--allow-host-port` values: `8080`, `8000-9000`, `ALL` (or `0-65535`) for
    /// any, `none` for no port.
    pub fn parse<S: AsRef<str>>(specs: &[S]) -> Result<Self, HostPortRangeError> {
        let mut ranges = Vec::new();
        for spec in specs {
            let spec = spec.as_ref().trim();
            if spec.eq_ignore_ascii_case("all") {
                ranges.push((0, u16::MAX));
                continue;
            }
            if spec.eq_ignore_ascii_case("none") {
                continue;
            }
            let bad = || HostPortRangeError(spec.to_owned());
            let num = |s: &str| s.trim().parse::<u16>().map_err(|_| bad());
            let (first, last) = match spec.split_once('-') {
                Some((a, b)) => (num(a)?, num(b)?),
                None => (num(spec)?, num(spec)?),
            };
            if first > last {
                return Err(bad());
            }
            ranges.push((first, last));
        }
        Ok(Self(ranges))
    }

    pub fn allows(&self, port: u16) -> bool {
        self.0.iter().any(|&(a, b)| (a..=b).contains(&port))
    }
}

/// The union of several `--allow-host-port` values.
impl FromIterator<HostPorts> for HostPorts {
    fn from_iter<I: IntoIterator<Item = HostPorts>>(iter: I) -> Self {
        Self(iter.into_iter().flat_map(|h| h.0).collect())
    }
}

impl std::fmt::Display for HostPorts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.is_empty() {
            return f.write_str("no host ports");
        }
        let parts: Vec<String> = self
            .0
            .iter()
            .map(|&(a, b)| {
                if a == b {
                    a.to_string()
                } else {
                    format!("{a}-{b}")
                }
            })
            .collect();
        f.write_str(&parts.join(","))
    }
}

/// Every `hostPort` (init containers included) must lie in an allowed range. The ports
/// of a `hostNetwork` pod are governed by `--allow-host-network`, which grants them all.
fn check_host_ports(spec: &api::PodSpec, path: &str, policy: &Policy) -> Result<(), PolicyError> {
    if spec.host_network {
        return Ok(());
    }
    for (cpath, c) in spec.all_containers(path) {
        for (i, p) in c.ports.iter().enumerate() {
            let Some(port) = p.host_port else { continue };
            if !policy.allow_host_ports.allows(port) {
                return Err(PolicyError::HostPort {
                    path: format!("{cpath}.ports[{i}].hostPort"),
                    port,
                    allowed: policy.allow_host_ports.clone(),
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The pod spec of a one-document manifest (a Pod or a Deployment).
    fn spec(yaml: &str) -> api::PodSpec {
        match crate::model::manifest::parse_manifests(yaml)
            .expect("test manifest parses")
            .remove(0)
        {
            api::Object::Pod(p) => p.spec,
            api::Object::Deployment(d) => d.spec.template.spec,
            api::Object::DaemonSet(d) => d.spec.template.spec,
            api::Object::Job(j) => j.spec.template.spec,
            api::Object::CronJob(c) => c.spec.job_template.spec.template.spec,
            api::Object::Secret(_)
            | api::Object::AgentUpdate(_)
            | api::Object::ConfigMap(_)
            | api::Object::Service(_)
            | api::Object::Namespace(_) => {
                panic!("not a pod")
            }
        }
    }

    fn pod(spec_lines: &str, container_lines: &str) -> api::PodSpec {
        spec(&format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: p}}\nspec:\n{spec_lines}  containers:\n  - name: c\n    image: busybox:1\n{container_lines}"
        ))
    }

    fn check(s: &api::PodSpec, policy: &Policy) -> Result<(), String> {
        check_pod(s, "spec", policy).map_err(|e| e.to_string())
    }

    #[test]
    fn the_default_policy_refuses_what_reaches_past_the_container() {
        let deny = Policy::default();
        let cases = [
            (
                pod("", "    securityContext: {privileged: true}\n"),
                "spec.containers[0].securityContext.privileged: privileged containers are refused by the coordinator's policy (start `baton server` with --allow-privileged to allow them)",
            ),
            (
                pod("", "    securityContext: {capabilities: {add: [NET_ADMIN]}}\n"),
                "spec.containers[0].securityContext.capabilities.add[0]: adding capability NET_ADMIN is refused by the coordinator's policy (start `baton server` with --allow-capability NET_ADMIN to allow it)",
            ),
            (
                pod("  volumes: [{name: h, hostPath: {path: /etc}}]\n", ""),
                "spec.volumes[0].hostPath.path: hostPath \"/etc\" is refused by the coordinator's policy (start `baton server` with --allow-host-path PREFIX, a directory containing it, to allow it)",
            ),
            (
                pod("  hostNetwork: true\n", ""),
                "spec.hostNetwork: hostNetwork is refused by the coordinator's policy (start `baton server` with --allow-host-network to allow it)",
            ),
            (
                pod("", "    ports: [{containerPort: 22, hostPort: 22}]\n"),
                "spec.containers[0].ports[0].hostPort: hostPort 22 is refused by the coordinator's policy, which allows 1024-65535 (start `baton server` with --allow-host-port 22, besides the ranges it allows now, to allow it)",
            ),
            (
                pod("  initContainers:\n  - name: i\n    image: busybox:1\n    ports: [{containerPort: 80, hostPort: 80}]\n", ""),
                "spec.initContainers[0].ports[0].hostPort: hostPort 80 is refused by the coordinator's policy, which allows 1024-65535 (start `baton server` with --allow-host-port 80, besides the ranges it allows now, to allow it)",
            ),
            (
                pod("  initContainers:\n  - name: i\n    image: busybox:1\n    securityContext: {privileged: true}\n", ""),
                "spec.initContainers[0].securityContext.privileged: privileged containers are refused by the coordinator's policy (start `baton server` with --allow-privileged to allow them)",
            ),
        ];
        for (s, want) in cases {
            assert_eq!(check(&s, &deny), Err(want.to_string()));
        }
    }

    #[test]
    fn flags_allow_exactly_what_they_name() {
        let p = pod(
            "  hostNetwork: true\n  volumes: [{name: h, hostPath: {path: /data/app}}]\n",
            "    securityContext: {privileged: true, capabilities: {add: [NET_ADMIN], drop: [ALL]}}\n",
        );
        let allow = Policy {
            allow_privileged: true,
            allow_host_paths: vec!["/data/".into()],
            allow_capabilities: BTreeSet::from(["NET_ADMIN".to_string()]),
            allow_host_network: true,
            ..Default::default()
        };
        assert_eq!(check(&p, &allow), Ok(()));
        // One permission less each time: the matching error comes back.
        let mut without = allow.clone();
        without.allow_host_network = false;
        assert!(check(&p, &without)
            .unwrap_err()
            .contains("--allow-host-network"));
        let mut without = allow.clone();
        without.allow_privileged = false;
        assert!(check(&p, &without)
            .unwrap_err()
            .contains("--allow-privileged"));
        let mut without = allow.clone();
        without.allow_capabilities = BTreeSet::from(["SYS_ADMIN".to_string()]);
        assert!(check(&p, &without)
            .unwrap_err()
            .contains("--allow-capability NET_ADMIN"));
        let mut all = without.clone();
        all.allow_capabilities = BTreeSet::from(["ALL".to_string()]);
        assert_eq!(check(&p, &all), Ok(()));
    }

    #[test]
    fn host_port_ranges() {
        // (flag values, port, allowed?)
        let cases: &[(&[&str], u16, bool)] = &[
            (&["1024-65535"], 1023, false),
            (&["1024-65535"], 1024, true),
            (&["1024-65535"], 65535, true),
            (&["8000-9000"], 8080, true),
            (&["8000-9000"], 6379, false),
            (&["8000-9000", "22"], 22, true),
            (&["8000-9000", "22"], 23, false),
            (&[" 80 "], 80, true),
            (&["ALL"], 1, true),
            (&["all"], 22, true),
            (&["0-65535"], 22, true),
            (&["none"], 8080, false),
            (&["none", "8080"], 8080, true),
            (&[], 8080, false),
        ];
        for (specs, port, ok) in cases {
            let ports = HostPorts::parse(specs).unwrap();
            assert_eq!(ports.allows(*port), *ok, "{specs:?} allows {port}?");
        }
        for bad in ["", "x", "9000-8000", "1-2-3", "70000", "-1", "80-"] {
            assert_eq!(
                HostPorts::parse(&[bad]),
                Err(HostPortRangeError(bad.trim().to_owned())),
                "{bad:?}"
            );
        }
        assert_eq!(HostPorts::default().to_string(), "1024-65535");
        assert_eq!(
            HostPorts::parse(&["22", "8000-9000"]).unwrap().to_string(),
            "22,8000-9000"
        );
        assert_eq!(
            HostPorts::parse(&["none"]).unwrap().to_string(),
            "no host ports"
        );
    }

    #[test]
    fn host_ports_are_checked_against_the_allowed_ranges() {
        let narrow = Policy {
            allow_host_ports: HostPorts::parse(&["8000-9000"]).unwrap(),
            ..Default::default()
        };
        let p = pod(
            "",
            "    ports:\n    - {containerPort: 80, hostPort: 8080}\n    - {containerPort: 81, hostPort: 9001}\n",
        );
        assert_eq!(
            check(&p, &narrow),
            Err("spec.containers[0].ports[1].hostPort: hostPort 9001 is refused by the coordinator's policy, which allows 8000-9000 (start `baton server` with --allow-host-port 9001, besides the ranges it allows now, to allow it)".into())
        );
        assert_eq!(check(&p, &Policy::default()), Ok(()));
        // Ports without hostPort bind nothing on the node.
        let inner = pod("", "    ports: [{containerPort: 22}]\n");
        let none = Policy {
            allow_host_ports: HostPorts::parse(&["none"]).unwrap(),
            ..Default::default()
        };
        assert_eq!(check(&inner, &none), Ok(()));
        // A hostNetwork pod binds what it likes once --allow-host-network admits it.
        let host = pod(
            "  hostNetwork: true\n",
            "    ports: [{containerPort: 22, hostPort: 22}]\n",
        );
        let net = Policy {
            allow_host_network: true,
            ..none
        };
        assert_eq!(check(&host, &net), Ok(()));
    }

    #[test]
    fn host_path_prefixes_match_whole_components() {
        let policy = |prefix: &str| Policy {
            allow_host_paths: vec![prefix.into()],
            ..Default::default()
        };
        for (path, prefix, ok) in [
            ("/data", "/data", true),
            ("/data/x/y", "/data", true),
            ("/data/x", "/data/", true),
            ("/database", "/data", false),
            ("/etc/shadow", "/data", false),
            ("/anything", "/", true),
            ("/data/../etc", "/data", false),
        ] {
            assert_eq!(
                host_path_allowed(path, &policy(prefix)),
                ok,
                "{path} under {prefix}"
            );
        }
    }

    #[test]
    fn baseline_capabilities_and_drops_need_no_flag() {
        let p = pod(
            "",
            "    securityContext: {capabilities: {add: [NET_BIND_SERVICE, CAP_CHOWN], drop: [ALL, NET_RAW]}, runAsUser: 1000}\n",
        );
        assert_eq!(check(&p, &Policy::default()), Ok(()));
        let all = pod("", "    securityContext: {capabilities: {add: [ALL]}}\n");
        assert!(check(&all, &Policy::default())
            .unwrap_err()
            .contains("--allow-capability ALL"));
    }

    #[test]
    fn resources_are_bounded() {
        let deny = Policy::default();
        let res = |lines: &str| pod("", &format!("    resources:\n{lines}"));
        assert_eq!(
            check(&res("      limits: {cpu: \"64\", memory: 1Ti}\n"), &deny),
            Ok(())
        );
        assert_eq!(
            check(&res("      requests: {cpu: \"65\"}\n"), &deny),
            Err("spec.containers[0].resources.requests.cpu: 65 exceeds the coordinator's bound of 64".into())
        );
        assert_eq!(
            check(&res("      limits: {memory: 2Ti}\n"), &deny),
            Err("spec.containers[0].resources.limits.memory: 2Ti exceeds the coordinator's bound of 1Ti".into())
        );
        assert_eq!(
            check(
                &pod("  volumes: [{name: s, emptyDir: {sizeLimit: 2Ti}}]\n", ""),
                &deny
            ),
            Err(
                "spec.volumes[0].emptyDir.sizeLimit: 2Ti exceeds the coordinator's bound of 1Ti"
                    .into()
            )
        );
        // The parser already refuses limits below requests; a spec from elsewhere (an
        // older store) is still checked here.
        let mut s = res("      limits: {memory: 64Mi}\n");
        s.containers[0].resources.requests.memory = Some("128Mi".into());
        assert_eq!(
            check(&s, &deny),
            Err("spec.containers[0].resources.limits.memory: limit 64Mi must be greater than or equal to the request 128Mi".into())
        );
    }

    #[test]
    fn deployment_errors_name_the_template_path() {
        let s = spec(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\nspec:\n  selector: {matchLabels: {a: b}}\n  template:\n    metadata: {labels: {a: b}}\n    spec:\n      containers:\n      - name: c\n        image: x:1\n        securityContext: {privileged: true}\n",
        );
        let err = check_pod(&s, "spec.template.spec", &Policy::default()).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("spec.template.spec.containers[0].securityContext.privileged:"),
            "{err}"
        );
    }

    #[test]
    fn unconfined_seccomp_needs_allow_privileged() {
        let refused = |path: &str| {
            Err(format!("{path}: seccomp profile Unconfined is refused by the coordinator's policy (start `baton server` with --allow-privileged to allow it)"))
        };
        let on_pod = pod(
            "  securityContext: {seccompProfile: {type: Unconfined}}\n",
            "",
        );
        let on_container = pod(
            "",
            "    securityContext: {seccompProfile: {type: Unconfined}}\n",
        );
        let on_init = pod(
            "  initContainers:\n  - name: i\n    image: busybox:1\n    securityContext: {seccompProfile: {type: Unconfined}}\n",
            "",
        );
        let deny = Policy::default();
        assert_eq!(
            check(&on_pod, &deny),
            refused("spec.securityContext.seccompProfile.type")
        );
        assert_eq!(
            check(&on_container, &deny),
            refused("spec.containers[0].securityContext.seccompProfile.type")
        );
        assert_eq!(
            check(&on_init, &deny),
            refused("spec.initContainers[0].securityContext.seccompProfile.type")
        );
        // A container asking for the default under an Unconfined pod still names the pod.
        let mixed = pod(
            "  securityContext: {seccompProfile: {type: Unconfined}}\n",
            "    securityContext: {seccompProfile: {type: RuntimeDefault}}\n",
        );
        assert_eq!(
            check(&mixed, &deny),
            refused("spec.securityContext.seccompProfile.type")
        );
        let default = pod(
            "  securityContext: {seccompProfile: {type: RuntimeDefault}}\n",
            "",
        );
        assert_eq!(check(&default, &deny), Ok(()));
        let allow = Policy {
            allow_privileged: true,
            ..Policy::default()
        };
        for s in [&on_pod, &on_container, &on_init, &mixed] {
            assert_eq!(check(s, &allow), Ok(()));
        }
        // The other flags do not lift it.
        let others = Policy {
            allow_host_paths: vec!["/".into()],
            allow_capabilities: BTreeSet::from(["ALL".to_string()]),
            allow_host_network: true,
            ..Policy::default()
        };
        assert!(check(&on_container, &others).is_err());
    }
}
