//! What the end-to-end tests read from and check on a running [`Lab`]: the http-echo
//! Deployment they apply, the pods the API shows, a pod's info page, its container's init
//! pid and cgroups, and what a stopped pod may leave behind on its node.
//!
//! One copy here, so that every test file asserts the same things the same way.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;

use crate::{wait_for, Lab};

/// The Deployment of the `baton/http-echo` image that the e2e tests run: one container
/// serving `/cgi-bin/info` on port 8080. Defaults: name `web` (label `app: web`),
/// container `echo`, tag 1, a 2 s grace period, requests 50m/16Mi, limits 500m/64Mi.
#[derive(Clone, Debug)]
pub struct EchoDeployment {
    name: String,
    container: String,
    replicas: usize,
    tag: u32,
    grace_secs: u32,
    cpu_request: String,
    metadata: String,
    env: Vec<(String, String)>,
    node_selector: Vec<(String, String)>,
}

impl EchoDeployment {
    pub fn new(replicas: usize) -> Self {
        EchoDeployment {
            name: "web".into(),
            container: "echo".into(),
            replicas,
            tag: 1,
            grace_secs: 2,
            cpu_request: "50m".into(),
            metadata: String::new(),
            env: Vec::new(),
            node_selector: Vec::new(),
        }
    }

    pub fn name(mut self, name: &str) -> Self {
        self.name = name.into();
        self
    }

    pub fn container(mut self, container: &str) -> Self {
        self.container = container.into();
        self
    }

    /// The image tag, `http-echo:<tag>` (the image answers `version=<tag>`).
    pub fn tag(mut self, tag: u32) -> Self {
        self.tag = tag;
        self
    }

    pub fn grace_secs(mut self, secs: u32) -> Self {
        self.grace_secs = secs;
        self
    }

    pub fn cpu_request(mut self, cpu: &str) -> Self {
        self.cpu_request = cpu.into();
        self
    }

    /// Extra lines under `metadata:` (after `name:`), each indented by two spaces.
    pub fn metadata(mut self, lines: &str) -> Self {
        self.metadata.push_str(lines);
        self
    }

    pub fn env(mut self, name: &str, value: &str) -> Self {
        self.env.push((name.into(), value.into()));
        self
    }

    /// Only on nodes labelled `key: value` (e.g. the real ones beside hollow nodes).
    pub fn node_selector(mut self, key: &str, value: &str) -> Self {
        self.node_selector.push((key.into(), value.into()));
        self
    }

    /// The manifest, for `lab.apply`, with the image from `registry`.
    pub fn yaml(&self, registry: &str) -> String {
        let EchoDeployment {
            name,
            container,
            replicas,
            tag,
            grace_secs,
            cpu_request,
            metadata,
            env,
            node_selector,
        } = self;
        let mut selector_lines = String::new();
        if !node_selector.is_empty() {
            selector_lines.push_str("      nodeSelector:\n");
            for (k, v) in node_selector {
                selector_lines.push_str(&format!("        {k}: \"{v}\"\n"));
            }
        }
        let mut env_lines = String::new();
        if !env.is_empty() {
            env_lines.push_str("        env:\n");
            for (k, v) in env {
                env_lines.push_str(&format!("        - name: {k}\n          value: {v}\n"));
            }
        }
        format!(
            r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: {name}
{metadata}spec:
  replicas: {replicas}
  selector:
    matchLabels: {{app: {name}}}
  template:
    metadata:
      labels: {{app: {name}}}
    spec:
      terminationGracePeriodSeconds: {grace_secs}
{selector_lines}      containers:
      - name: {container}
        image: {registry}/baton/http-echo:{tag}
{env_lines}        ports:
        - containerPort: 8080
        resources:
          requests: {{cpu: {cpu_request}, memory: 16Mi}}
          limits: {{cpu: 500m, memory: 64Mi}}
"#
        )
    }
}

// ----- reading pods --------------------------------------------------------------------

/// A JSON string as an owned string; empty if it is not one.
pub fn text(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_owned()
}

pub fn pod_name(p: &Value) -> String {
    text(&p["metadata"]["name"])
}

pub fn uid(p: &Value) -> String {
    text(&p["metadata"]["uid"])
}

pub fn node_of(p: &Value) -> String {
    text(&p["spec"]["nodeName"])
}

pub fn pod_ip(p: &Value) -> String {
    text(&p["status"]["podIP"])
}

/// The uids of `pods`.
pub fn uids(pods: &[Value]) -> BTreeSet<String> {
    pods.iter().map(uid).collect()
}

/// (name, uid, node) of each object: what must not change when nothing should.
pub fn identity(objs: &[Value]) -> BTreeSet<(String, String, String)> {
    objs.iter()
        .map(|o| (pod_name(o), uid(o), node_of(o)))
        .collect()
}

pub fn is_terminating(p: &Value) -> bool {
    !p["metadata"]["deletionTimestamp"].is_null()
}

/// Running with an address, as `get pods` shows it.
pub fn is_running(p: &Value) -> bool {
    p["status"]["phase"] == "Running" && p["status"]["podIP"].is_string()
}

/// [`is_running`], and its first container reported as running (not waiting to restart).
pub fn container_running(p: &Value) -> bool {
    is_running(p) && p["status"]["containerStatuses"][0]["state"]["running"].is_object()
}

/// Ready as a Service would select it: running, every container ready, not terminating.
pub fn is_ready(p: &Value) -> bool {
    is_running(p)
        && !is_terminating(p)
        && p["status"]["containerStatuses"]
            .as_array()
            .is_some_and(|cs| !cs.is_empty() && cs.iter().all(|c| c["ready"] == true))
}

/// The pods the API shows as owned by `owner` (a Deployment name).
pub fn owned_pods(lab: &Lab, owner: &str) -> Result<Vec<Value>> {
    Ok(lab
        .pods()?
        .into_iter()
        .filter(|p| p["metadata"]["owner"] == owner)
        .collect())
}

/// One poll for [`wait_for`]: `owner`'s pods if there are exactly `n` and all pass `ok`.
pub fn exactly(
    lab: &Lab,
    owner: &str,
    n: usize,
    ok: impl Fn(&Value) -> bool,
) -> Result<Option<Vec<Value>>> {
    let pods = owned_pods(lab, owner)?;
    Ok((pods.len() == n && pods.iter().all(ok)).then_some(pods))
}

/// Waits until `owner` has exactly `n` pods, all passing `ok`; returns them.
pub fn wait_pods(
    lab: &Lab,
    owner: &str,
    n: usize,
    timeout: Duration,
    what: &str,
    ok: impl Fn(&Value) -> bool,
) -> Result<Vec<Value>> {
    wait_for(what, timeout, || exactly(lab, owner, n, &ok))
}

// ----- talking to a pod ----------------------------------------------------------------

/// Fetches the http-echo info page at `ip` from inside `node`'s namespace. `max_time` is
/// curl's whole-request limit; a stopped pod never answers, so it fails whatever it is.
pub fn http_info(lab: &Lab, node: &str, ip: &str, max_time: Duration) -> Result<String> {
    let agent = lab.agent_by_node(node).context("node is a lab agent")?;
    let out = agent
        .ns
        .cmd("curl")
        .args(["-sS", "--max-time", &max_time.as_secs().to_string()])
        .arg(format!("http://{ip}:8080/cgi-bin/info"))
        .output()?;
    ensure!(
        out.status.success(),
        "curl {ip} on {node}: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// [`http_info`] of a pod, at the node and address the API shows for it.
pub fn pod_info(lab: &Lab, pod: &Value, max_time: Duration) -> Result<String> {
    let node = pod["spec"]["nodeName"].as_str().context("pod has a node")?;
    let ip = pod["status"]["podIP"].as_str().context("pod has an IP")?;
    http_info(lab, node, ip, max_time).with_context(|| format!("pod {}", pod_name(pod)))
}

// ----- what runs on a node -------------------------------------------------------------

/// A node's cgroup for one controller: `/sys/fs/cgroup/<controller>/baton/<node>`.
pub fn cgroup_dir(controller: &str, node: &str) -> PathBuf {
    Path::new("/sys/fs/cgroup")
        .join(controller)
        .join("baton")
        .join(node)
}

/// The pids in a cgroup directory, sorted; empty if it is gone.
pub fn cgroup_procs(cgroup: &Path) -> Vec<u32> {
    let mut pids: Vec<u32> = fs::read_to_string(cgroup.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    pids.sort();
    pids
}

/// Where a lab node's agent keeps libcontainer's state of its containers: its part of the
/// `--run-dir` (a tmpfs; the lab's, else the default), not its data dir.
pub fn runtime_containers(lab: &Lab, node: &str) -> PathBuf {
    let run = lab
        .agent_args
        .windows(2)
        .find(|w| w[0] == "--run-dir")
        .map_or_else(|| PathBuf::from("/run/baton"), |w| PathBuf::from(&w[1]));
    run.join(node).join("runtime/containers")
}

/// The runtime's `state.json` of a pod's container on its node.
pub fn container_state(lab: &Lab, node: &str, uid: &str, container: &str) -> Result<Value> {
    lab.agent_by_node(node).context("a lab node")?;
    let state = runtime_containers(lab, node)
        .join(format!("{uid}-{container}"))
        .join("state.json");
    let bytes = fs::read(&state).with_context(|| format!("{}", state.display()))?;
    Ok(serde_json::from_slice(&bytes)?)
}

/// The init pid of a pod's container, from the runtime's state on its node.
pub fn init_pid(lab: &Lab, node: &str, uid: &str, container: &str) -> Result<u32> {
    let v = container_state(lab, node, uid, container)?;
    Ok(u32::try_from(
        v["pid"].as_u64().context("state has a pid")?,
    )?)
}

/// Everything an agent made for a pod: its directory (rootfs, logs), its mounts and its
/// cgroups. Returns what is still there.
pub fn leftovers(lab: &Lab, node: &str, uid: &str) -> Vec<String> {
    let mut left = Vec::new();
    let agent = lab.agent_by_node(node).expect("pod on a lab node");
    let dir = agent.data_dir.join("pods").join(uid);
    if dir.exists() {
        left.push(dir.display().to_string());
    }
    let mounts = fs::read_to_string("/proc/mounts").unwrap_or_default();
    left.extend(
        mounts
            .lines()
            .filter(|l| l.contains(uid))
            .map(|l| format!("mount {l}")),
    );
    for ctrl in ["memory", "pids", "cpu"] {
        let cg = cgroup_dir(ctrl, node).join(uid);
        if cg.exists() {
            left.push(cg.display().to_string());
        }
    }
    left
}

/// Waits until nothing of pod `uid` is left on `node` (see [`leftovers`]).
pub fn wait_cleaned_up(lab: &Lab, node: &str, uid: &str, timeout: Duration) -> Result<()> {
    wait_for(
        &format!("pod {uid} on {node} to be cleaned up"),
        timeout,
        || {
            let left = leftovers(lab, node, uid);
            if left.is_empty() {
                Ok(Some(()))
            } else {
                bail!("still there: {left:?}")
            }
        },
    )
}
