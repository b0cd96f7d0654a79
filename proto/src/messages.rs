//! Message bodies. Field order is wire order: see the compatibility rules in the crate docs.

use core::fmt;
use core::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::sessions::{
    ExecExit, ExecInput, ExecOutput, ExecRequest, LogChunk, LogCredit, LogRequest,
};

use crate::{
    BString, BVec, ProtoError, MAX_CONFIG_MAP_KEYS, MAX_CONTAINERS_PER_POD, MAX_PODS_PER_NODE,
    MAX_SEALED_BYTES,
};

mod config_map;
mod cron;
mod desired;
mod hello;
mod pod_dns;
mod service_table;
pub use config_map::*;
pub use cron::*;
pub use desired::*;
pub use hello::*;
pub use pod_dns::*;
pub use service_table::*;

/// A node's name: 1-63 characters from `[A-Za-z0-9._-]`, so it is always a single,
/// wildcard-free MQTT topic level and a valid file and interface-name stem.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "heapless::String<63>", into = "heapless::String<63>")]
pub struct NodeName(heapless::String<63>);

impl NodeName {
    pub fn new(s: &str) -> Result<Self, ProtoError> {
        let ok = !s.is_empty()
            && s.len() <= 63
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
            && s != "."
            && s != "..";
        if !ok {
            return Err(ProtoError::InvalidNodeName(s.chars().take(80).collect()));
        }
        let mut h = heapless::String::new();
        h.push_str(s)
            .map_err(|_| ProtoError::InvalidNodeName(s.to_owned()))?;
        Ok(Self(h))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<heapless::String<63>> for NodeName {
    type Error = ProtoError;
    fn try_from(s: heapless::String<63>) -> Result<Self, ProtoError> {
        Self::new(&s)
    }
}

impl From<NodeName> for heapless::String<63> {
    fn from(n: NodeName) -> Self {
        n.0
    }
}

impl fmt::Display for NodeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for NodeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

/// Every message either side sends. Variants are only ever appended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Body {
    /// Agent -> coordinator, on every (re)connect.
    Hello(Hello),
    /// Agent -> coordinator, periodically: what it has applied, and a digest of its pods.
    Heartbeat(Heartbeat),
    /// Agent -> coordinator: the full observed state of the node's pods.
    Status(NodeStatus),
    /// The agent's MQTT last will, published by the broker when the agent vanishes.
    Offline,
    /// Coordinator -> agent, retained: everything the node should run.
    Desired(DesiredState),
    /// Coordinator -> agent: send a full [`Body::Status`] now (the heartbeat digest differed).
    StatusRequest,
    /// Coordinator -> agent (`baton node rotate`): make a new device key and have it
    /// certified, signing the request with the current key. Added in v2 before any v2
    /// release, so no version bump.
    RotateKey,
    /// Coordinator -> agent, retained on `down/update`: install this release of the agent
    /// (`None`: no update is wanted, e.g. the rollout was aborted). Added in v5.
    AgentUpdate(Option<AgentUpdate>),
    /// Agent -> coordinator on `up/update`: how its update goes. Added in v5.
    UpdateReport(UpdateReport),
    /// Coordinator -> agent on `down/control`: open a log session (`baton logs`). Added in v5.
    LogRequest(LogRequest),
    /// Coordinator -> agent on `down/control`: more credit for a log session, or its end.
    /// Added in v5.
    LogCredit(LogCredit),
    /// Agent -> coordinator on the session's own topic `up/logs/<session>`: a piece of a
    /// container's log. Added in v5.
    LogChunk(LogChunk),
    /// Agent -> coordinator on `up/hello`, after every Hello: how the node uses its link
    /// (its `--link-profile`), so that the coordinator's liveness timeout follows it.
    /// Added in v5.
    Link(LinkProfile),
    /// Agent -> coordinator on `up/status`: what the node and its pods use, sent only when
    /// it moved beyond the agent's thresholds, at most as often as its link profile allows.
    /// Added in v5.
    Usage(NodeUsage),
    /// Coordinator -> agent on `down/control`: one part of a ConfigMap's content, for a
    /// node whose pods reference it (env `configMapKeyRef`/`envFrom`, `configMap` volumes).
    /// ConfigMaps travel apart from [`DesiredState`] (up to 1 MiB each, over
    /// [`crate::MAX_MESSAGE_BYTES`]), split into parts. Added in v5.
    ConfigMapPart(ConfigMapPart),
    /// Coordinator -> agent on `down/control`: run a command in a pod's container
    /// (`baton exec`). Added in v5.
    ExecRequest(ExecRequest),
    /// Coordinator -> agent on `down/control`: stdin, a window size, output credit or the
    /// end of an exec session. Added in v5.
    ExecInput(ExecInput),
    /// Agent -> coordinator on the session's own topic `up/exec/<session>`: a piece of the
    /// command's output. Added in v5.
    ExecOutput(ExecOutput),
    /// Agent -> coordinator on `up/exec/<session>`: the session's last message. Added in v5.
    ExecExit(ExecExit),
    /// Coordinator -> agent on `down/control`: every Service's virtual address, ports and
    /// endpoints, and every node's pod route, for the node's proxy. Sent after a change,
    /// only when its digest differs from the last one the node was sent. Added in v5.
    ServiceTable(ServiceTable),
    /// Agent -> coordinator on `up/status`: runs of the CronJobs the node fires itself
    /// ([`DesiredState::crons`]). Added in v5.
    CronRuns(CronReport),
}

impl Body {
    /// The oldest protocol version that has this message: an envelope of an older version
    /// carrying it is refused, and it is never sent to a peer that speaks only older ones.
    pub fn min_version(&self) -> u16 {
        match self {
            Body::AgentUpdate(_)
            | Body::UpdateReport(_)
            | Body::LogRequest(_)
            | Body::LogCredit(_)
            | Body::LogChunk(_)
            | Body::Link(_)
            | Body::Usage(_)
            | Body::ConfigMapPart(_)
            | Body::ExecRequest(_)
            | Body::ExecInput(_)
            | Body::ExecOutput(_)
            | Body::ExecExit(_)
            | Body::ServiceTable(_)
            | Body::CronRuns(_) => 5,
            _ => crate::MIN_PROTO_VERSION,
        }
    }

    /// The variant's name, for counters and logs (a label value: stable, no payload).
    pub fn name(&self) -> &'static str {
        match self {
            Body::Hello(_) => "Hello",
            Body::Heartbeat(_) => "Heartbeat",
            Body::Status(_) => "Status",
            Body::Offline => "Offline",
            Body::Desired(_) => "Desired",
            Body::StatusRequest => "StatusRequest",
            Body::RotateKey => "RotateKey",
            Body::AgentUpdate(_) => "AgentUpdate",
            Body::UpdateReport(_) => "UpdateReport",
            Body::LogRequest(_) => "LogRequest",
            Body::LogCredit(_) => "LogCredit",
            Body::LogChunk(_) => "LogChunk",
            Body::Link(_) => "Link",
            Body::Usage(_) => "Usage",
            Body::ConfigMapPart(_) => "ConfigMapPart",
            Body::ExecRequest(_) => "ExecRequest",
            Body::ExecInput(_) => "ExecInput",
            Body::ExecOutput(_) => "ExecOutput",
            Body::ExecExit(_) => "ExecExit",
            Body::ServiceTable(_) => "ServiceTable",
            Body::CronRuns(_) => "CronRuns",
        }
    }

    /// The leader's term a coordinator message carries ([`DesiredState::term`]): the
    /// messages that change what a node keeps (its pods, Services, ConfigMaps, agent
    /// release), which a deposed leader must not change. `None` for every other message:
    /// requests and sessions change nothing a successor owns, and a withdrawn update order
    /// (`AgentUpdate(None)`) has no struct to carry one.
    pub fn term(&self) -> Option<u64> {
        match self {
            Body::Desired(d) => Some(d.term),
            Body::ServiceTable(t) => Some(t.term),
            Body::ConfigMapPart(p) => Some(p.term),
            Body::AgentUpdate(Some(u)) => Some(u.term),
            _ => None,
        }
    }

    /// Stamps `term` on a message that carries one ([`Body::term`]); the coordinator's
    /// gate does it as it seals, so no message leaves without the sender's term.
    pub fn set_term(&mut self, term: u64) {
        match self {
            Body::Desired(d) => d.term = term,
            Body::ServiceTable(t) => t.term = term,
            Body::ConfigMapPart(p) => p.term = term,
            Body::AgentUpdate(Some(u)) => u.term = term,
            _ => {}
        }
    }
}

/// One agent binary as its release key signed it (see [`crate::release`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Release {
    /// Semantic version, e.g. `0.2.1`.
    pub version: BString<32>,
    /// Rust target triple, e.g. `aarch64-unknown-linux-musl`.
    pub target: BString<48>,
    /// The newest protocol version the release speaks ([`crate::PROTO_VERSION`] of its build).
    pub protocol: u16,
    pub size: u64,
    pub sha256: [u8; 32],
    /// Ed25519 by the release key over [`crate::release::signing_bytes`].
    pub signature: BVec<u8, 64>,
}

/// An order to one node: install `release`, then prove it healthy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentUpdate {
    /// The rollout this order belongs to; the node's reports name it back.
    pub rollout: BString<63>,
    pub release: Release,
    /// Install even if `release` is older than the running agent.
    pub allow_downgrade: bool,
    /// How long the new agent stays on probation (connected, desired state applied, pods
    /// healthy) before it commits; past it without a commit, the device rolls back.
    pub health_window_secs: u32,
    /// The term of the leader that gave the order ([`DesiredState::term`]).
    pub term: u64,
}

/// Where one node's update stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum UpdatePhase {
    Downloading,
    /// Verified (sha256, release signature) and on disk beside the running agent.
    Staged,
    /// `current` points at the new binary; the old agent is exiting.
    Switching,
    /// The new agent runs; it commits after its health window.
    Probation,
    Committed,
    /// The device went back to `previous`; `reason` says why.
    RolledBack,
    /// The node would not install it (bad signature or digest, downgrade, protocol, disk).
    Refused,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateReport {
    pub rollout: BString<63>,
    /// The version being installed.
    pub version: BString<32>,
    pub phase: UpdatePhase,
    /// For a person, e.g. `crashed 3 times in 40 s: exit 101`.
    pub reason: Option<BString<256>>,
    /// Bytes of the binary on the device so far.
    pub downloaded: u64,
}

/// How an agent uses its link. A v4 agent sends none: it heartbeats every few seconds, and
/// the coordinator's own heartbeat timeout applies to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkProfile {
    /// The agent's MQTT keepalive: the broker drops it, and publishes its last will, after
    /// 1.5 times this without a packet from it.
    pub keepalive_secs: u32,
    /// The longest a connected agent goes without a heartbeat: it sends one when what it
    /// carries changed, and an unchanged one only this often.
    pub heartbeat_max_secs: u32,
}

/// What a node and its pods use ([`Body::Usage`]). CPU is a rate over the agent's last
/// sampling window.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct NodeUsage {
    /// The whole node's CPU, as `/proc/stat` counts it: millicores.
    pub cpu_millis: u32,
    /// The whole node's memory in use (`MemTotal - MemAvailable`), bytes.
    pub memory_bytes: u64,
    /// The data disk's bytes in use and in all.
    pub disk_used_bytes: u64,
    pub disk_total_bytes: u64,
    /// The hottest thermal zone in millidegrees Celsius, where the board has one.
    pub temperature_millicelsius: Option<i32>,
    pub pods: BVec<PodUsage, MAX_PODS_PER_NODE>,
}

/// One pod's share of [`NodeUsage`], from its cgroup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodUsage {
    pub uid: BString<64>,
    pub cpu_millis: u32,
    /// Its memory working set (usage less inactive file cache), as kubelet counts it.
    pub memory_bytes: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capacity {
    pub cpu_millis: u32,
    pub memory_bytes: u64,
    pub pods: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Label {
    pub key: BString<317>,
    pub value: BString<63>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub applied_generation: u64,
    /// [`NodeStatus::digest`] of the agent's current status.
    pub status_digest: u64,
    /// The node conditions under pressure now (kubelet's `DiskPressure`, ...); empty when
    /// there is none. Added in v4.
    pub pressure: BVec<Pressure, 8>,
    /// Why the last desired state could not be applied whole, with its cause (e.g. it could
    /// not be persisted on a full disk); `None` once one is. Added in v4.
    pub apply_error: Option<BString<256>>,
}

/// A node condition under pressure, as the agent measured it against its eviction
/// thresholds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pressure {
    pub kind: PressureKind,
    /// What was measured against which threshold, e.g. `nodefs.available 1.2Mi (5%) < 10%`.
    pub message: BString<128>,
}

/// Kubernetes' pressure conditions. Variants are only ever appended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum PressureKind {
    /// The data disk (`nodefs`).
    Disk,
    /// The image store's disk (`imagefs`), when it is another filesystem than the data disk.
    ImageDisk,
    Memory,
    Pid,
}

/// A k8s `Secret`, sealed for one node. The plaintext is the postcard encoding of
/// [`SecretData`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedSecret {
    pub name: BString<253>,
    /// Changes whenever the secret's content changes, so agents notice without opening it.
    pub version: u64,
    pub sealed: Sealed,
}

/// Ciphertext for one recipient; `data`'s layout is defined by `scheme` (docs/security.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sealed {
    pub scheme: SealScheme,
    pub data: BVec<u8, MAX_SEALED_BYTES>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SealScheme {
    /// `data` = ephemeral X25519 public key (32) | ChaCha20-Poly1305 ciphertext and tag,
    /// keyed by HKDF-SHA256 over the X25519 shared secret.
    X25519ChaCha20Poly1305,
}

/// What a [`Sealed`] secret opens to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretData {
    pub items: BVec<SecretItem, 64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretItem {
    pub key: BString<253>,
    pub value: BVec<u8, MAX_SEALED_BYTES>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RestartPolicy {
    Always,
    OnFailure,
    Never,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PullPolicy {
    Always,
    IfNotPresent,
    Never,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Protocol {
    Tcp,
    Udp,
}

/// A pod as its node runs it. Its encoding depends on the protocol version (see
/// [`crate::wire`]): v4 has no `priority`.
#[derive(Debug, Clone, PartialEq)]
pub struct PodSpec {
    pub name: BString<253>,
    /// Distinguishes two incarnations of a pod with the same name.
    pub uid: BString<64>,
    pub host_network: bool,
    pub restart_policy: RestartPolicy,
    pub termination_grace_secs: u32,
    pub containers: BVec<ContainerSpec, MAX_CONTAINERS_PER_POD>,
    /// Run to completion, in order, before `containers` start.
    pub init_containers: BVec<ContainerSpec, MAX_CONTAINERS_PER_POD>,
    pub volumes: BVec<Volume, 16>,
    /// Names of secrets in [`DesiredState::secrets`] holding registry credentials
    /// (`.dockerconfigjson`).
    pub image_pull_secrets: BVec<BString<253>, 8>,
    /// Kubernetes' pod priority, resolved by the coordinator from `priorityClassName` or
    /// `priority`: at least [`SYSTEM_CRITICAL_PRIORITY`] marks a pod the node's own function
    /// depends on, which the agent never evicts. Added in v5; a v4 peer reads and writes
    /// none (0).
    pub priority: i32,
    /// `dnsPolicy`, `dnsConfig` and `hostAliases`; `None` for the default (ClusterFirst,
    /// neither of the others). Added in v5: the coordinator withholds a pod with them from
    /// a v4 agent, which reads and writes none.
    pub dns: Option<PodDns>,
}

/// kubelet's threshold for a critical pod: `system-cluster-critical`'s priority.
pub const SYSTEM_CRITICAL_PRIORITY: i32 = 2_000_000_000;
/// The priority of the `system-node-critical` class.
pub const SYSTEM_NODE_CRITICAL_PRIORITY: i32 = 2_000_001_000;

impl PodSpec {
    /// kubelet's critical pod: never evicted under node pressure.
    pub fn is_critical(&self) -> bool {
        self.priority >= SYSTEM_CRITICAL_PRIORITY
    }
}

const POD_SPEC_FIELDS: [&str; 11] = [
    "name",
    "uid",
    "host_network",
    "restart_policy",
    "termination_grace_secs",
    "containers",
    "init_containers",
    "volumes",
    "image_pull_secrets",
    "priority",
    "dns",
];

/// The fields of a `PodSpec` at the version being encoded or decoded.
fn pod_spec_fields() -> &'static [&'static str] {
    if crate::wire::version() >= 5 {
        &POD_SPEC_FIELDS
    } else {
        &POD_SPEC_FIELDS[..9]
    }
}

impl Serialize for PodSpec {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let fields = pod_spec_fields();
        let mut st = s.serialize_struct("PodSpec", fields.len())?;
        st.serialize_field("name", &self.name)?;
        st.serialize_field("uid", &self.uid)?;
        st.serialize_field("host_network", &self.host_network)?;
        st.serialize_field("restart_policy", &self.restart_policy)?;
        st.serialize_field("termination_grace_secs", &self.termination_grace_secs)?;
        st.serialize_field("containers", &self.containers)?;
        st.serialize_field("init_containers", &self.init_containers)?;
        st.serialize_field("volumes", &self.volumes)?;
        st.serialize_field("image_pull_secrets", &self.image_pull_secrets)?;
        if fields.len() > 9 {
            st.serialize_field("priority", &self.priority)?;
            st.serialize_field("dns", &self.dns)?;
        }
        st.end()
    }
}

impl<'de> Deserialize<'de> for PodSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Fields(usize);
        impl<'de> serde::de::Visitor<'de> for Fields {
            type Value = PodSpec;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "a PodSpec of {} fields", self.0)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut a: A,
            ) -> Result<PodSpec, A::Error> {
                macro_rules! field {
                    ($i:expr) => {
                        a.next_element()?
                            .ok_or_else(|| serde::de::Error::invalid_length($i, &self))?
                    };
                }
                Ok(PodSpec {
                    name: field!(0),
                    uid: field!(1),
                    host_network: field!(2),
                    restart_policy: field!(3),
                    termination_grace_secs: field!(4),
                    containers: field!(5),
                    init_containers: field!(6),
                    volumes: field!(7),
                    image_pull_secrets: field!(8),
                    priority: if self.0 > 9 { field!(9) } else { 0 },
                    dns: if self.0 > 10 { field!(10) } else { None },
                })
            }
        }
        let fields = pod_spec_fields();
        d.deserialize_struct("PodSpec", fields, Fields(fields.len()))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvVar {
    pub name: BString<256>,
    pub value: EnvValue,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum EnvValue {
    Literal(BString<4096>),
    /// `valueFrom.secretKeyRef`: a key of a secret in [`DesiredState::secrets`].
    SecretKey {
        secret: BString<253>,
        key: BString<253>,
    },
    /// `valueFrom.configMapKeyRef` (v5 agents only): a key of a ConfigMap the node is sent
    /// in [`Body::ConfigMapPart`]s. An `optional` one that is missing leaves the variable
    /// unset.
    ConfigMapKey {
        config_map: BString<253>,
        key: BString<253>,
        optional: bool,
    },
    /// `envFrom[].configMapRef` (v5 agents only): every key of the ConfigMap whose name is
    /// a valid variable name, named [`EnvVar::name`] (the `prefix`) + key. Kept in the env
    /// list, in place, so the order of precedence stays Kubernetes' (later entries win).
    ConfigMapAll {
        config_map: BString<253>,
        optional: bool,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Volume {
    pub name: BString<63>,
    pub source: VolumeSource,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum VolumeSource {
    /// Files named after the secret's keys, on a tmpfs private to the pod.
    Secret { secret_name: BString<253> },
    /// Scratch space shared by the pod's containers, gone with the pod.
    EmptyDir { size_limit_bytes: Option<u64> },
    /// Only sent when the coordinator's policy allows host paths.
    HostPath { path: BString<4096> },
    /// A ConfigMap's keys as files, written atomically and kept current while the pod runs
    /// (v5 agents only).
    ConfigMap {
        name: BString<253>,
        /// Empty: every key, as a file of its name.
        items: BVec<KeyToPath, MAX_CONFIG_MAP_KEYS>,
        default_mode: u16,
        optional: bool,
    },
}

/// One `items` entry of a `configMap` volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyToPath {
    pub key: BString<253>,
    pub path: BString<4096>,
    pub mode: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeMount {
    pub name: BString<63>,
    pub mount_path: BString<4096>,
    pub read_only: bool,
}

/// k8s `securityContext`, already checked against the coordinator's policy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecurityContext {
    pub privileged: bool,
    pub capabilities_add: BVec<BString<32>, 48>,
    pub capabilities_drop: BVec<BString<32>, 48>,
    pub run_as_user: Option<u32>,
    pub run_as_group: Option<u32>,
    pub read_only_root_filesystem: bool,
    /// Since v3: the container's `seccompProfile.type`, its own over the pod's.
    pub seccomp: SeccompProfile,
}

/// k8s `seccompProfile.type`, resolved for one container. `Localhost` profiles are refused
/// by the coordinator, so they have no variant (a later one goes at the end).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum SeccompProfile {
    /// Nothing asked: the agent's default profile, as kubelet's `--seccomp-default`. An agent
    /// built without seccomp support runs the container unconfined (and says so at start).
    #[default]
    Default,
    /// `RuntimeDefault` asked for explicitly: an agent that cannot apply the default profile
    /// fails the container rather than run it unconfined.
    RuntimeDefault,
    /// `Unconfined`: no filter. Admitted only under `baton server --allow-privileged`.
    Unconfined,
}

/// A k8s probe; the coordinator fills in k8s's defaults and resolves named ports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Probe {
    pub handler: ProbeHandler,
    pub initial_delay_secs: u32,
    pub period_secs: u32,
    pub timeout_secs: u32,
    pub success_threshold: u32,
    pub failure_threshold: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ProbeHandler {
    /// Runs inside the container's namespaces; exit code 0 is success.
    Exec { command: BVec<BString<4096>, 64> },
    /// Success is a status in 200..400. `host` defaults to the pod's address.
    HttpGet {
        path: BString<2048>,
        port: u16,
        https: bool,
        host: Option<BString<253>>,
        headers: BVec<HttpHeader, 16>,
    },
    /// Success is an accepted connection.
    TcpSocket {
        port: u16,
        host: Option<BString<253>>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpHeader {
    pub name: BString<256>,
    pub value: BString<4096>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Port {
    pub container_port: u16,
    pub host_port: Option<u16>,
    pub protocol: Protocol,
}

/// Requests and limits, already converted to integer units.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    pub cpu_request_millis: u32,
    pub cpu_limit_millis: Option<u32>,
    pub memory_request_bytes: u64,
    pub memory_limit_bytes: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContainerSpec {
    pub name: BString<63>,
    pub image: BString<512>,
    pub image_pull_policy: PullPolicy,
    /// Replaces the image's entrypoint when non-empty.
    pub command: BVec<BString<4096>, 64>,
    /// Replaces the image's cmd when non-empty.
    pub args: BVec<BString<4096>, 256>,
    pub env: BVec<EnvVar, 256>,
    pub working_dir: Option<BString<4096>>,
    pub ports: BVec<Port, 32>,
    pub resources: Resources,
    pub volume_mounts: BVec<VolumeMount, 16>,
    pub liveness_probe: Option<Probe>,
    pub readiness_probe: Option<Probe>,
    pub startup_probe: Option<Probe>,
    pub security: SecurityContext,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeStatus {
    pub applied_generation: u64,
    pub pods: BVec<PodStatus, MAX_PODS_PER_NODE>,
}

impl NodeStatus {
    /// FNV-1a over the postcard encoding of `pods`: cheap change detection, so that a
    /// heartbeat can say "this is what I have" in eight bytes. Not a security measure.
    pub fn digest(&self) -> u64 {
        let bytes = postcard::to_allocvec(&self.pods).unwrap_or_default();
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in bytes {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        h
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PodStatus {
    pub name: BString<253>,
    pub uid: BString<64>,
    pub pod_ip: Option<IpAddr>,
    pub containers: BVec<ContainerStatus, MAX_CONTAINERS_PER_POD>,
    /// One per init container, in order; empty once the pod has none.
    pub init_containers: BVec<ContainerStatus, MAX_CONTAINERS_PER_POD>,
    /// Set when the agent evicted the pod under node pressure: why, in kubelet's words
    /// (`The node was low on resource: ephemeral-storage. ...`). Added in v4.
    pub evicted: Option<BString<256>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerStatus {
    pub name: BString<63>,
    pub state: ContainerState,
    pub restart_count: u32,
    /// Running and passing its readiness probe (or running, without one).
    pub ready: bool,
    /// How the previous run of this container ended.
    pub last_termination: Option<Termination>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Termination {
    pub exit_code: i32,
    /// k8s's words: `Completed`, `Error`, `OOMKilled`, or why the agent killed it
    /// (e.g. `LivenessProbeFailed`).
    pub reason: BString<128>,
    /// Unix milliseconds, agent clock.
    pub finished_at_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ContainerState {
    Pending,
    Pulling,
    /// Running since `started_at_ms` (Unix milliseconds, agent clock).
    Running {
        started_at_ms: u64,
    },
    Exited {
        code: i32,
    },
    OomKilled,
    Failed {
        reason: BString<1024>,
    },
}
