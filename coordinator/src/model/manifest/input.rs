//! Pass 3's input: private structs that mirror the Kubernetes shape. serde fills them
//! (type errors carry their path through `serde_path_to_error`) and the validation in the
//! sibling modules turns them into `api` types.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_yaml_ng::Value;

use crate::model::api::{self, PullPolicy, RestartPolicy};

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct InDeployment {
    #[allow(dead_code)]
    pub(super) api_version: String,
    #[allow(dead_code)]
    pub(super) kind: String,
    pub(super) metadata: InMeta,
    pub(super) spec: InDeploymentSpec,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct InPod {
    #[allow(dead_code)]
    pub(super) api_version: String,
    #[allow(dead_code)]
    pub(super) kind: String,
    pub(super) metadata: InMeta,
    pub(super) spec: InPodSpec,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct InNamespace {
    #[allow(dead_code)]
    pub(super) api_version: String,
    #[allow(dead_code)]
    pub(super) kind: String,
    pub(super) metadata: InMeta,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct InMeta {
    pub(super) name: Option<String>,
    pub(super) namespace: Option<String>,
    #[serde(default)]
    pub(super) labels: BTreeMap<String, String>,
    #[serde(default)]
    pub(super) annotations: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct InDeploymentSpec {
    pub(super) replicas: Option<i64>,
    pub(super) selector: Option<InSelector>,
    pub(super) template: InTemplate,
    pub(super) strategy: Option<InStrategy>,
    pub(super) revision_history_limit: Option<i64>,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct InStrategy {
    #[serde(rename = "type")]
    pub(super) type_: Option<api::StrategyType>,
    pub(super) rolling_update: Option<InRollingUpdate>,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct InRollingUpdate {
    /// IntOrString: checked by hand for Kubernetes' messages.
    pub(super) max_surge: Option<Value>,
    pub(super) max_unavailable: Option<Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct InDaemonSet {
    #[allow(dead_code)]
    pub(super) api_version: String,
    #[allow(dead_code)]
    pub(super) kind: String,
    pub(super) metadata: InMeta,
    pub(super) spec: InDaemonSetSpec,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct InDaemonSetSpec {
    pub(super) selector: Option<InSelector>,
    pub(super) template: InTemplate,
    pub(super) update_strategy: Option<InDaemonSetStrategy>,
    pub(super) revision_history_limit: Option<i64>,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct InDaemonSetStrategy {
    #[serde(rename = "type")]
    pub(super) type_: Option<api::DaemonSetStrategyType>,
    pub(super) rolling_update: Option<InRollingUpdate>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct InSelector {
    #[serde(default)]
    pub(super) match_labels: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct InTemplate {
    #[serde(default)]
    pub(super) metadata: InTemplateMeta,
    pub(super) spec: InPodSpec,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct InTemplateMeta {
    #[serde(default)]
    pub(super) labels: BTreeMap<String, String>,
    #[serde(default)]
    pub(super) annotations: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct InPodSpec {
    pub(super) containers: Vec<InContainer>,
    #[serde(default)]
    pub(super) init_containers: Vec<InContainer>,
    #[serde(default)]
    pub(super) node_selector: BTreeMap<String, String>,
    #[serde(default)]
    pub(super) host_network: bool,
    pub(super) dns_policy: Option<String>,
    pub(super) restart_policy: Option<RestartPolicy>,
    pub(super) termination_grace_period_seconds: Option<i64>,
    #[serde(default)]
    pub(super) volumes: Vec<InVolume>,
    #[serde(default)]
    pub(super) image_pull_secrets: Vec<InRef>,
    #[serde(default)]
    pub(super) security_context: InPodSecurityContext,
    #[serde(default)]
    pub(super) tolerations: Vec<InToleration>,
    pub(super) affinity: Option<InAffinity>,
    pub(super) priority_class_name: Option<String>,
    pub(super) priority: Option<i64>,
    pub(super) dns_config: Option<InDnsConfig>,
    #[serde(default)]
    pub(super) host_aliases: Vec<InHostAlias>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct InDnsConfig {
    #[serde(default)]
    pub(super) nameservers: Vec<String>,
    #[serde(default)]
    pub(super) searches: Vec<String>,
    #[serde(default)]
    pub(super) options: Vec<InDnsOption>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct InDnsOption {
    pub(super) name: Option<String>,
    pub(super) value: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct InHostAlias {
    pub(super) ip: Option<String>,
    #[serde(default)]
    pub(super) hostnames: Vec<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct InAffinity {
    pub(super) node_affinity: Option<InNodeAffinity>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct InNodeAffinity {
    #[serde(rename = "requiredDuringSchedulingIgnoredDuringExecution")]
    pub(super) required: Option<InNodeSelector>,
    #[serde(default, rename = "preferredDuringSchedulingIgnoredDuringExecution")]
    pub(super) preferred: Vec<InPreferred>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct InNodeSelector {
    #[serde(default)]
    pub(super) node_selector_terms: Vec<InTerm>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct InTerm {
    #[serde(default)]
    pub(super) match_expressions: Vec<InRequirement>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct InRequirement {
    pub(super) key: Option<String>,
    pub(super) operator: Option<String>,
    #[serde(default)]
    pub(super) values: Vec<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct InPreferred {
    pub(super) weight: Option<i64>,
    pub(super) preference: Option<InTerm>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct InToleration {
    #[serde(default)]
    pub(super) key: String,
    pub(super) operator: Option<String>,
    #[serde(default)]
    pub(super) value: String,
    pub(super) effect: Option<String>,
    pub(super) toleration_seconds: Option<i64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct InRef {
    pub(super) name: Option<String>,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct InPodSecurityContext {
    pub(super) run_as_user: Option<i64>,
    pub(super) run_as_group: Option<i64>,
    pub(super) seccomp_profile: Option<InSeccompProfile>,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct InSeccompProfile {
    #[serde(rename = "type")]
    pub(super) typ: Option<String>,
    pub(super) localhost_profile: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct InVolume {
    pub(super) name: Option<String>,
    pub(super) secret: Option<InSecretVolume>,
    pub(super) empty_dir: Option<InEmptyDir>,
    pub(super) host_path: Option<InHostPath>,
    pub(super) config_map: Option<InConfigMapVolume>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct InConfigMapVolume {
    pub(super) name: Option<String>,
    #[serde(default)]
    pub(super) items: Vec<InKeyToPath>,
    pub(super) default_mode: Option<InMode>,
    #[serde(default)]
    pub(super) optional: bool,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct InKeyToPath {
    pub(super) key: Option<String>,
    pub(super) path: Option<String>,
    pub(super) mode: Option<InMode>,
}

/// A file mode as written: a number, or the YAML 1.1 octal literal Kubernetes' examples
/// use (`0400`), which YAML 1.2 reads as a string.
#[derive(Deserialize)]
#[serde(untagged)]
pub(super) enum InMode {
    Number(i64),
    Text(String),
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct InSecretVolume {
    pub(super) secret_name: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct InEmptyDir {
    pub(super) size_limit: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct InHostPath {
    pub(super) path: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct InVolumeMount {
    pub(super) name: Option<String>,
    pub(super) mount_path: Option<String>,
    #[serde(default)]
    pub(super) read_only: bool,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct InProbe {
    pub(super) exec: Option<InExec>,
    pub(super) http_get: Option<InHttpGet>,
    pub(super) tcp_socket: Option<InTcpSocket>,
    pub(super) initial_delay_seconds: Option<i64>,
    pub(super) period_seconds: Option<i64>,
    pub(super) timeout_seconds: Option<i64>,
    pub(super) success_threshold: Option<i64>,
    pub(super) failure_threshold: Option<i64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct InExec {
    #[serde(default)]
    pub(super) command: Vec<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct InHttpGet {
    pub(super) path: Option<String>,
    /// IntOrString: a number or a named containerPort.
    pub(super) port: Option<Value>,
    pub(super) scheme: Option<api::Scheme>,
    pub(super) host: Option<String>,
    #[serde(default)]
    pub(super) http_headers: Vec<InHeader>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct InHeader {
    pub(super) name: String,
    #[serde(default)]
    pub(super) value: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct InTcpSocket {
    pub(super) port: Option<Value>,
    pub(super) host: Option<String>,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct InSecurityContext {
    pub(super) privileged: Option<bool>,
    pub(super) capabilities: Option<InCapabilities>,
    pub(super) run_as_user: Option<i64>,
    pub(super) run_as_group: Option<i64>,
    pub(super) read_only_root_filesystem: Option<bool>,
    pub(super) seccomp_profile: Option<InSeccompProfile>,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct InCapabilities {
    #[serde(default)]
    pub(super) add: Vec<String>,
    #[serde(default)]
    pub(super) drop: Vec<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct InSecret {
    #[allow(dead_code)]
    pub(super) api_version: String,
    #[allow(dead_code)]
    pub(super) kind: String,
    pub(super) metadata: InMeta,
    #[serde(rename = "type")]
    pub(super) type_: Option<String>,
    #[serde(default)]
    pub(super) data: BTreeMap<String, String>,
    #[serde(default)]
    pub(super) string_data: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct InConfigMap {
    #[allow(dead_code)]
    pub(super) api_version: String,
    #[allow(dead_code)]
    pub(super) kind: String,
    pub(super) metadata: InMeta,
    #[serde(default)]
    pub(super) data: BTreeMap<String, String>,
    #[serde(default)]
    pub(super) binary_data: BTreeMap<String, String>,
    pub(super) immutable: Option<bool>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct InContainer {
    pub(super) name: Option<String>,
    pub(super) image: Option<String>,
    pub(super) image_pull_policy: Option<PullPolicy>,
    #[serde(default)]
    pub(super) command: Vec<String>,
    #[serde(default)]
    pub(super) args: Vec<String>,
    #[serde(default)]
    pub(super) env: Vec<InEnv>,
    #[serde(default)]
    pub(super) env_from: Vec<InEnvFrom>,
    pub(super) working_dir: Option<String>,
    #[serde(default)]
    pub(super) ports: Vec<InPort>,
    #[serde(default)]
    pub(super) resources: InResources,
    #[serde(default)]
    pub(super) volume_mounts: Vec<InVolumeMount>,
    pub(super) liveness_probe: Option<InProbe>,
    pub(super) readiness_probe: Option<InProbe>,
    pub(super) startup_probe: Option<InProbe>,
    pub(super) security_context: Option<InSecurityContext>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct InEnv {
    pub(super) name: String,
    #[serde(default)]
    pub(super) value: String,
    pub(super) value_from: Option<InEnvSource>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct InEnvSource {
    pub(super) secret_key_ref: Option<InSecretKeyRef>,
    pub(super) config_map_key_ref: Option<InConfigMapKeyRef>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct InConfigMapKeyRef {
    pub(super) name: Option<String>,
    pub(super) key: Option<String>,
    #[serde(default)]
    pub(super) optional: bool,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct InEnvFrom {
    #[serde(default)]
    pub(super) prefix: String,
    pub(super) config_map_ref: Option<InConfigMapRef>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct InConfigMapRef {
    pub(super) name: Option<String>,
    #[serde(default)]
    pub(super) optional: bool,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct InSecretKeyRef {
    pub(super) name: Option<String>,
    pub(super) key: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct InPort {
    pub(super) name: Option<String>,
    pub(super) container_port: i64,
    pub(super) host_port: Option<i64>,
    pub(super) protocol: Option<api::Protocol>,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct InResources {
    #[serde(default)]
    pub(super) requests: InResourceList,
    #[serde(default)]
    pub(super) limits: InResourceList,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct InResourceList {
    pub(super) cpu: Option<String>,
    pub(super) memory: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct InJob {
    #[allow(dead_code)]
    pub(super) api_version: String,
    #[allow(dead_code)]
    pub(super) kind: String,
    pub(super) metadata: InMeta,
    pub(super) spec: InJobSpec,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct InJobSpec {
    pub(super) completions: Option<i64>,
    pub(super) parallelism: Option<i64>,
    pub(super) backoff_limit: Option<i64>,
    pub(super) active_deadline_seconds: Option<i64>,
    pub(super) ttl_seconds_after_finished: Option<i64>,
    pub(super) template: InTemplate,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct InCronJob {
    #[allow(dead_code)]
    pub(super) api_version: String,
    #[allow(dead_code)]
    pub(super) kind: String,
    pub(super) metadata: InMeta,
    pub(super) spec: InCronJobSpec,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct InCronJobSpec {
    pub(super) schedule: Option<String>,
    pub(super) time_zone: Option<String>,
    pub(super) concurrency_policy: Option<api::ConcurrencyPolicy>,
    pub(super) starting_deadline_seconds: Option<i64>,
    pub(super) suspend: Option<bool>,
    pub(super) successful_jobs_history_limit: Option<i64>,
    pub(super) failed_jobs_history_limit: Option<i64>,
    pub(super) job_template: InJobTemplate,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct InJobTemplate {
    #[serde(default)]
    pub(super) metadata: InTemplateMeta,
    pub(super) spec: InJobSpec,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct InService {
    #[allow(dead_code)]
    pub(super) api_version: String,
    #[allow(dead_code)]
    pub(super) kind: String,
    pub(super) metadata: InMeta,
    #[serde(default)]
    pub(super) spec: InServiceSpec,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct InServiceSpec {
    #[serde(rename = "type")]
    pub(super) type_: Option<String>,
    #[serde(rename = "clusterIP")]
    pub(super) cluster_ip: Option<String>,
    #[serde(rename = "clusterIPs", default)]
    pub(super) cluster_ips: Vec<String>,
    #[serde(default)]
    pub(super) ports: Vec<InServicePort>,
    #[serde(default)]
    pub(super) selector: BTreeMap<String, String>,
    pub(super) session_affinity: Option<String>,
    pub(super) session_affinity_config: Option<InSessionAffinityConfig>,
    pub(super) allocate_load_balancer_node_ports: Option<bool>,
    pub(super) ip_family_policy: Option<String>,
    #[serde(default)]
    pub(super) ip_families: Vec<String>,
    pub(super) external_traffic_policy: Option<String>,
    pub(super) internal_traffic_policy: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct InServicePort {
    pub(super) name: Option<String>,
    pub(super) protocol: Option<String>,
    pub(super) port: Option<i64>,
    /// IntOrString: checked by hand.
    pub(super) target_port: Option<Value>,
    pub(super) node_port: Option<i64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct InSessionAffinityConfig {
    #[serde(rename = "clientIP")]
    pub(super) client_ip: Option<InClientIpConfig>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct InClientIpConfig {
    pub(super) timeout_seconds: Option<i64>,
}
