//! Data-driven manifest tests in the style of rust-analyzer's `check(input, expect)`.
//!
//! - `coordinator/tests/manifests/NAME.yaml` is parsed and rendered (objects as YAML, or
//!   `error: ...`), then compared with `NAME.expected`. Run with `UPDATE_EXPECT=1` to
//!   rewrite the `.expected` files after an intended change, and review the diff.
//! - The tables below check one rule each on a small template.

use super::*;
use crate::model::api::RestartPolicy;

fn render(result: Result<Vec<api::Object>, ManifestError>) -> String {
    match result {
        Err(e) => format!("error: {e}\n"),
        Ok(objects) => objects
            .iter()
            .map(|o| match o {
                api::Object::Deployment(d) => serde_yaml_ng::to_string(d),
                api::Object::DaemonSet(d) => serde_yaml_ng::to_string(d),
                api::Object::Job(j) => serde_yaml_ng::to_string(j),
                api::Object::CronJob(c) => serde_yaml_ng::to_string(c),
                api::Object::Pod(p) => serde_yaml_ng::to_string(p),
                api::Object::Secret(s) => serde_yaml_ng::to_string(s),
                api::Object::AgentUpdate(u) => serde_yaml_ng::to_string(u),
                api::Object::ConfigMap(c) => serde_yaml_ng::to_string(c),
                api::Object::Service(s) => serde_yaml_ng::to_string(s),
                api::Object::Namespace(n) => serde_yaml_ng::to_string(n),
            })
            .collect::<Result<Vec<_>, _>>()
            .expect("api objects serialize")
            .join("---\n"),
    }
}

#[test]
fn data_files() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/manifests");
    let update = std::env::var_os("UPDATE_EXPECT").is_some();
    let mut inputs: Vec<_> = std::fs::read_dir(&dir)
        .expect("read tests/manifests")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    inputs.sort();
    assert!(inputs.len() >= 7, "test data missing in {}", dir.display());
    let mut failures = Vec::new();
    for input in inputs {
        let yaml = std::fs::read_to_string(&input).expect("read input");
        let actual = render(parse_manifests(&yaml));
        let expected_path = input.with_extension("expected");
        if update {
            std::fs::write(&expected_path, &actual).expect("write expected");
            continue;
        }
        let expected = std::fs::read_to_string(&expected_path).unwrap_or_default();
        if actual != expected {
            failures.push(format!(
                "{}:\n--- expected\n{expected}\n--- actual\n{actual}",
                input.display()
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{}\n(run with UPDATE_EXPECT=1 to update)",
        failures.join("\n")
    );
}

/// A valid Deployment; `{M}` metadata, `{D}` deployment spec, `{S}` pod spec and `{C}`
/// container lines are substituted by each case (already indented).
const TEMPLATE: &str = "\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
{M}spec:
  replicas: 2
  selector:
    matchLabels:
      app: web
{D}  template:
    metadata:
      labels:
        app: web
    spec:
{S}      containers:
      - name: web
        image: nginx:1.25
{C}";

fn doc(m: &str, d: &str, s: &str, c: &str) -> String {
    TEMPLATE
        .replace("{M}", m)
        .replace("{D}", d)
        .replace("{S}", s)
        .replace("{C}", c)
}

/// Parses `input` and compares its rendering with `expect` (`error: ...` or `ok`).
fn check(name: &str, input: &str, expect: &str) {
    let result = parse_manifests(input);
    let actual = match &result {
        Ok(_) => "ok".to_string(),
        Err(e) => format!("error: {e}"),
    };
    assert_eq!(actual, expect, "case {name:?}, input:\n{input}");
}

#[test]
fn unsupported_fields_are_named_by_path() {
    let cases: &[(&str, String, &str)] = &[
        (
            "container securityContext beyond the supported fields",
            doc("", "", "", "        securityContext: {runAsUser: 0, seLinuxOptions: {level: s0}, allowPrivilegeEscalation: true}\n"),
            "error: document 1: spec.template.spec.containers[0].securityContext.seLinuxOptions: field not supported by Baton; spec.template.spec.containers[0].securityContext.allowPrivilegeEscalation: field not supported by Baton",
        ),
        (
            "grpc probe",
            doc("", "", "", "        livenessProbe:\n          grpc: {port: 9000}\n"),
            "error: document 1: spec.template.spec.containers[0].livenessProbe.grpc: field not supported by Baton",
        ),
        (
            "projected volume and hostPath type",
            doc("", "", "      volumes:\n      - {name: a, projected: {sources: []}}\n      - {name: b, hostPath: {path: /x, type: Directory}}\n", ""),
            "error: document 1: spec.template.spec.volumes[0].projected: field not supported by Baton; spec.template.spec.volumes[1].hostPath.type: field not supported by Baton",
        ),
        (
            "extended resource",
            doc("", "", "", "        resources:\n          limits:\n            nvidia.com/gpu: 1\n"),
            "error: document 1: spec.template.spec.containers[0].resources.limits.nvidia.com/gpu: field not supported by Baton",
        ),
        (
            "env valueFrom",
            doc("", "", "", "        env:\n        - name: A\n          valueFrom: {fieldRef: {fieldPath: spec.nodeName}}\n"),
            "error: document 1: spec.template.spec.containers[0].env[0].valueFrom.fieldRef: field not supported by Baton",
        ),
        (
            "strategy fields beyond the supported ones",
            doc("", "  strategy:\n    blueGreen: {}\n  progressDeadlineSeconds: 60\n", "", ""),
            "error: document 1: spec.strategy.blueGreen: field not supported by Baton; spec.progressDeadlineSeconds: field not supported by Baton",
        ),
        (
            "selector matchExpressions",
            doc("", "", "", "").replace("    matchLabels:", "    matchExpressions: []\n    matchLabels:"),
            "error: document 1: spec.selector.matchExpressions: field not supported by Baton",
        ),
        (
            "generateName",
            doc("  generateName: web-\n", "", "", ""),
            "error: document 1: metadata.generateName: field not supported by Baton",
        ),
        (
            "creationTimestamp with a value",
            doc("  creationTimestamp: \"2026-01-01T00:00:00Z\"\n", "", "", ""),
            "error: document 1: metadata.creationTimestamp: field not supported by Baton (set by the coordinator)",
        ),
        (
            "nodeName set by hand",
            doc("", "", "      nodeName: pi-1\n", ""),
            "error: document 1: spec.template.spec.nodeName: field not supported by Baton",
        ),
        (
            "all unsupported fields are listed",
            doc("", "", "      readinessGates: []\n", "        lifecycle: {}\n"),
            "error: document 1: spec.template.spec.readinessGates: field not supported by Baton; spec.template.spec.containers[0].lifecycle: field not supported by Baton",
        ),
        (
            "typo at the top",
            doc("", "", "", "") + "specs: {}\n",
            "error: document 1: specs: field not supported by Baton",
        ),
    ];
    for (name, input, expect) in cases {
        check(name, input, expect);
    }
}

#[test]
fn validation_rules() {
    let long = "a".repeat(MAX_DEPLOYMENT_NAME_LEN + 1);
    let cases: Vec<(&str, String, &str)> = vec![
        ("template itself", doc("", "", "", ""), "ok"),
        (
            "name not DNS-1123",
            doc("", "", "", "").replace("name: web\nspec", "name: Web_1\nspec"),
            "error: document 1: metadata.name: \"Web_1\" must consist of lowercase alphanumerics or '-' and start and end with an alphanumeric (RFC 1123 label)",
        ),
        (
            "deployment name too long for pod names",
            doc("", "", "", "").replace("name: web\nspec", &format!("name: {long}\nspec")),
            "error: document 1: metadata.name: \"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\" must be at most 46 characters",
        ),
        (
            "namespace",
            doc("  namespace: Kube_System\n", "", "", ""),
            "error: document 1: metadata.namespace: \"Kube_System\" must consist of lowercase alphanumerics or '-' and start and end with an alphanumeric (RFC 1123 label)",
        ),
        (
            "missing name",
            doc("", "", "", "").replace("  name: web\nspec", "  labels: {a: b}\nspec"),
            "error: document 1: metadata.name: required",
        ),
        (
            "bad label value",
            doc("  labels:\n    app: \"-x\"\n", "", "", ""),
            "error: document 1: metadata.labels.app: \"-x\" must be at most 63 alphanumerics, '-', '_' or '.', starting and ending alphanumeric",
        ),
        (
            "label value must be a string",
            doc("  labels:\n    tier: 1\n", "", "", ""),
            "error: document 1: metadata.labels.tier: invalid type: integer `1`, expected a string",
        ),
        (
            "no containers",
            doc("", "", "", "").replace("      - name: web\n        image: nginx:1.25\n", " []\n").replace("containers:\n []", "containers: []"),
            "error: document 1: spec.template.spec.containers: at least one container is required",
        ),
        (
            "containers null",
            doc("", "", "", "").replace("      - name: web\n        image: nginx:1.25\n", "").replace("containers:\n", "containers: null\n"),
            "error: document 1: spec.template.spec: missing field `containers`",
        ),
        (
            "duplicate container names",
            doc("", "", "", "      - name: web\n        image: busybox\n"),
            "error: document 1: spec.template.spec.containers[1].name: duplicate container name \"web\"",
        ),
        (
            "empty image",
            doc("", "", "", "").replace("image: nginx:1.25", "image: \"\""),
            "error: document 1: spec.template.spec.containers[0].image: required",
        ),
        (
            "bad quantity",
            doc("", "", "", "        resources:\n          requests:\n            memory: 1.5Gb\n"),
            "error: document 1: spec.template.spec.containers[0].resources.requests.memory: quantity \"1.5Gb\" has an unknown suffix \"Gb\"",
        ),
        (
            "negative quantity",
            doc("", "", "", "        resources:\n          limits:\n            cpu: -1\n"),
            "error: document 1: spec.template.spec.containers[0].resources.limits.cpu: quantity \"-1\" is negative",
        ),
        (
            "request above limit",
            doc("", "", "", "        resources:\n          requests: {cpu: 2}\n          limits: {cpu: 500m}\n"),
            "error: document 1: spec.template.spec.containers[0].resources.requests.cpu: request 2 must be less than or equal to the limit 500m",
        ),
        (
            "memory request above limit",
            doc("", "", "", "        resources:\n          requests: {memory: 1Gi}\n          limits: {memory: 512Mi}\n"),
            "error: document 1: spec.template.spec.containers[0].resources.requests.memory: request 1Gi must be less than or equal to the limit 512Mi",
        ),
        (
            "port out of range",
            doc("", "", "", "        ports:\n        - containerPort: 70000\n"),
            "error: document 1: spec.template.spec.containers[0].ports[0].containerPort: must be between 1 and 65535, got 70000",
        ),
        (
            "host port zero",
            doc("", "", "", "        ports:\n        - containerPort: 80\n          hostPort: 0\n"),
            "error: document 1: spec.template.spec.containers[0].ports[0].hostPort: must be between 1 and 65535, got 0",
        ),
        (
            "SCTP",
            doc("", "", "", "        ports:\n        - containerPort: 80\n          protocol: SCTP\n"),
            "error: document 1: spec.template.spec.containers[0].ports[0].protocol: unknown variant `SCTP`, expected `TCP` or `UDP`",
        ),
        (
            "duplicate host port",
            doc("", "", "", "        ports:\n        - {containerPort: 80, hostPort: 8080}\n      - name: two\n        image: x\n        ports:\n        - {containerPort: 81, hostPort: 8080}\n"),
            "error: document 1: spec.template.spec.containers[1].ports[0].hostPort: duplicate host port 8080/TCP in the pod",
        ),
        (
            "same host port, other protocol",
            doc("", "", "", "        ports:\n        - {containerPort: 53, hostPort: 53}\n        - {containerPort: 53, hostPort: 53, protocol: UDP}\n"),
            "ok",
        ),
        (
            "hostNetwork port mismatch",
            doc("", "", "      hostNetwork: true\n", "        ports:\n        - {containerPort: 80, hostPort: 8080}\n"),
            "error: document 1: spec.template.spec.containers[0].ports[0].hostPort: must match containerPort when hostNetwork is true",
        ),
        (
            "bad port name",
            doc("", "", "", "        ports:\n        - {containerPort: 80, name: HTTP}\n"),
            "error: document 1: spec.template.spec.containers[0].ports[0].name: \"HTTP\" must be at most 15 lowercase alphanumerics or '-', contain a letter, and not start, end or repeat '-' (IANA service name)",
        ),
        (
            "env name with =",
            doc("", "", "", "        env:\n        - {name: \"A=B\", value: x}\n"),
            "error: document 1: spec.template.spec.containers[0].env[0].name: \"A=B\" must be non-empty printable ASCII without '='",
        ),
        (
            "env value must be a string",
            doc("", "", "", "        env:\n        - {name: A, value: 1}\n"),
            "error: document 1: spec.template.spec.containers[0].env[0].value: invalid type: integer `1`, expected a string",
        ),
        (
            "replicas too many",
            doc("", "", "", "").replace("replicas: 2", "replicas: 50001"),
            "error: document 1: spec.replicas: must be between 0 and 50000, got 50001",
        ),
        (
            "replicas negative",
            doc("", "", "", "").replace("replicas: 2", "replicas: -1"),
            "error: document 1: spec.replicas: must be between 0 and 50000, got -1",
        ),
        (
            "replicas not a number",
            doc("", "", "", "").replace("replicas: 2", "replicas: two"),
            "error: document 1: spec.replicas: invalid type: string \"two\", expected i64",
        ),
        (
            "selector missing",
            doc("", "", "", "").replace("  selector:\n    matchLabels:\n      app: web\n", ""),
            "error: document 1: spec.selector: required",
        ),
        (
            "selector empty",
            doc("", "", "", "").replace("    matchLabels:\n      app: web\n", "    matchLabels: {}\n"),
            "error: document 1: spec.selector.matchLabels: must not be empty",
        ),
        (
            "selector does not match template",
            doc("", "", "", "").replace("      app: web\n  template", "      app: api\n  template"),
            "error: document 1: spec.template.metadata.labels: `selector` does not match template `labels`",
        ),
        (
            "reserved label",
            doc("", "", "", "").replace("        app: web\n", "        app: web\n        pod-template-hash: abc\n"),
            "error: document 1: spec.template.metadata.labels.pod-template-hash: label is reserved: Baton sets it on the pods it creates",
        ),
        (
            "deployment restartPolicy",
            doc("", "", "      restartPolicy: Never\n", ""),
            "error: document 1: spec.template.spec.restartPolicy: must be Always for a Deployment, got Never",
        ),
        (
            "dnsPolicy ClusterFirst, the default, spelled out",
            doc("", "", "      dnsPolicy: ClusterFirst\n", ""),
            "ok",
        ),
        (
            "dnsPolicy None with dnsConfig, and hostAliases, as the Kubernetes docs write them",
            doc("", "", "      dnsPolicy: None\n      dnsConfig:\n        nameservers: [192.0.2.1, \"2001:db8::1\"]\n        searches: [ns1.svc.cluster-domain.example, my.dns.search.suffix.]\n        options:\n        - {name: ndots, value: \"2\"}\n        - name: edns0\n      hostAliases:\n      - ip: 127.0.0.1\n        hostnames: [foo.local, bar.local]\n", ""),
            "ok",
        ),
        (
            "dnsPolicy Default",
            doc("", "", "      dnsPolicy: Default\n", ""),
            "ok",
        ),
        (
            "dnsPolicy ClusterFirstWithHostNet",
            doc("", "", "      hostNetwork: true\n      dnsPolicy: ClusterFirstWithHostNet\n", ""),
            "ok",
        ),
        (
            "unknown dnsPolicy",
            doc("", "", "      dnsPolicy: Cluster\n", ""),
            "error: document 1: spec.template.spec.dnsPolicy: must be ClusterFirst, ClusterFirstWithHostNet, Default or None, got \"Cluster\"",
        ),
        (
            "dnsPolicy None without dnsConfig",
            doc("", "", "      dnsPolicy: None\n", ""),
            "error: document 1: spec.template.spec.dnsConfig: required when dnsPolicy is None",
        ),
        (
            "dnsPolicy None without nameservers",
            doc("", "", "      dnsPolicy: None\n      dnsConfig: {searches: [lab]}\n", ""),
            "error: document 1: spec.template.spec.dnsConfig.nameservers: at least one nameserver is required when dnsPolicy is None",
        ),
        (
            "four nameservers",
            doc("", "", "      dnsConfig: {nameservers: [1.1.1.1, 1.0.0.1, 8.8.8.8, 8.8.4.4]}\n", ""),
            "error: document 1: spec.template.spec.dnsConfig.nameservers: must not have more than 3 nameservers, got 4",
        ),
        (
            "a nameserver that is not an address",
            doc("", "", "      dnsConfig: {nameservers: [1.1.1.1, dns.example]}\n", ""),
            "error: document 1: spec.template.spec.dnsConfig.nameservers[1]: \"dns.example\" is not an IP address",
        ),
        (
            "a search domain that is not one",
            doc("", "", "      dnsConfig: {searches: [lab, Bad_Domain]}\n", ""),
            "error: document 1: spec.template.spec.dnsConfig.searches[1]: \"Bad_Domain\" must be a lowercase RFC 1123 subdomain",
        ),
        (
            "33 search domains",
            doc("", "", &format!("      dnsConfig: {{searches: [{}]}}\n", vec!["a"; 33].join(", ")), ""),
            "error: document 1: spec.template.spec.dnsConfig.searches: must not have more than 32 search paths, got 33",
        ),
        (
            "search domains of more than 2048 characters",
            doc("", "", &format!("      dnsConfig: {{searches: [{}]}}\n", vec![format!("{}.{}.{}", "a".repeat(63), "b".repeat(63), "c".repeat(63)); 11].join(", ")), ""),
            "error: document 1: spec.template.spec.dnsConfig.searches: must not have more than 2048 characters (including spaces) in the search list",
        ),
        (
            "a dnsConfig option without a name",
            doc("", "", "      dnsConfig: {options: [{name: ndots, value: \"1\"}, {value: \"2\"}]}\n", ""),
            "error: document 1: spec.template.spec.dnsConfig.options[1].name: required",
        ),
        (
            "a hostAlias without an address",
            doc("", "", "      hostAliases:\n      - {hostnames: [a]}\n", ""),
            "error: document 1: spec.template.spec.hostAliases[0].ip: required",
        ),
        (
            "a hostAlias with a bad address",
            doc("", "", "      hostAliases:\n      - {ip: 10.0.0.300, hostnames: [a]}\n", ""),
            "error: document 1: spec.template.spec.hostAliases[0].ip: \"10.0.0.300\" is not an IP address",
        ),
        (
            "a hostAlias with a bad hostname",
            doc("", "", "      hostAliases:\n      - {ip: 10.0.0.3, hostnames: [ok, \"not ok\"]}\n", ""),
            "error: document 1: spec.template.spec.hostAliases[0].hostnames[1]: \"not ok\" must be a lowercase RFC 1123 subdomain",
        ),
        (
            "unknown restartPolicy",
            doc("", "", "      restartPolicy: Sometimes\n", ""),
            "error: document 1: spec.template.spec.restartPolicy: unknown variant `Sometimes`, expected one of `Always`, `OnFailure`, `Never`",
        ),
        (
            "negative grace period",
            doc("", "", "      terminationGracePeriodSeconds: -5\n", ""),
            "error: document 1: spec.template.spec.terminationGracePeriodSeconds: must be between 0 and 4294967295, got -5",
        ),
        (
            "bad nodeSelector key",
            doc("", "", "      nodeSelector:\n        \"bad key\": x\n", ""),
            "error: document 1: spec.template.spec.nodeSelector.bad key: key must be [prefix/]name: a DNS subdomain prefix and a name of at most 63 alphanumerics, '-', '_' or '.', starting and ending alphanumeric",
        ),
        (
            "tolerations as kubectl examples write them",
            doc("", "", "      tolerations:\n      - {key: dedicated, operator: Equal, value: cams, effect: NoSchedule}\n      - {operator: Exists}\n      - {key: maintenance, operator: Exists, effect: NoExecute, tolerationSeconds: 300}\n", ""),
            "ok",
        ),
        (
            "node affinity as the Kubernetes docs write it",
            doc("", "", "      affinity:\n        nodeAffinity:\n          requiredDuringSchedulingIgnoredDuringExecution:\n            nodeSelectorTerms:\n            - matchExpressions:\n              - {key: topology.kubernetes.io/zone, operator: In, values: [antarctica-east1, antarctica-west1]}\n          preferredDuringSchedulingIgnoredDuringExecution:\n          - weight: 1\n            preference:\n              matchExpressions:\n              - {key: another-node-label-key, operator: In, values: [another-node-label-value]}\n", ""),
            "ok",
        ),
        (
            "node affinity In without values",
            doc("", "", "      affinity:\n        nodeAffinity:\n          requiredDuringSchedulingIgnoredDuringExecution:\n            nodeSelectorTerms:\n            - matchExpressions:\n              - {key: zone, operator: In}\n", ""),
            "error: document 1: spec.template.spec.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0].matchExpressions[0].values: must be non-empty with In and NotIn",
        ),
        (
            "pod anti-affinity is named",
            doc("", "", "      affinity:\n        podAntiAffinity: {}\n", ""),
            "error: document 1: spec.template.spec.affinity.podAntiAffinity: field not supported by Baton",
        ),
        (
            "the built-in priority classes",
            doc("", "", "      priorityClassName: system-node-critical\n      priority: 2000001000\n", ""),
            "ok",
        ),
        (
            "a priority class Baton does not have",
            doc("", "", "      priorityClassName: high-priority\n", ""),
            "error: document 1: spec.template.spec.priorityClassName: no PriorityClass named \"high-priority\": only system-node-critical and system-cluster-critical exist",
        ),
        (
            "a priority its class does not give",
            doc("", "", "      priorityClassName: system-cluster-critical\n      priority: 7\n", ""),
            "error: document 1: spec.template.spec.priority: must be 2000000000, the priority of \"system-cluster-critical\", got 7",
        ),
        (
            "a priority without a class",
            doc("", "", "      priority: 2000001000\n", ""),
            "error: document 1: spec.template.spec.priority: must be 0, the priority of no priorityClassName, got 2000001000",
        ),
        (
            "toleration with an unknown operator",
            doc("", "", "      tolerations:\n      - {key: a, operator: In}\n", ""),
            "error: document 1: spec.template.spec.tolerations[0].operator: must be Equal or Exists, got \"In\"",
        ),
        (
            "toleration Equal without a key",
            doc("", "", "      tolerations:\n      - {value: x}\n", ""),
            "error: document 1: spec.template.spec.tolerations[0].operator: must be Exists when `key` is empty (it then tolerates every taint)",
        ),
        (
            "tolerationSeconds without NoExecute",
            doc("", "", "      tolerations:\n      - {key: a, operator: Exists, effect: NoSchedule, tolerationSeconds: 5}\n", ""),
            "error: document 1: spec.template.spec.tolerations[0].tolerationSeconds: only applies to `effect: NoExecute`",
        ),
        (
            "unsupported apiVersion",
            doc("", "", "", "").replace("apps/v1", "extensions/v1beta1"),
            "error: document 1: kind Deployment (apiVersion extensions/v1beta1) is not supported by Baton; supported: Deployment (apps/v1), DaemonSet (apps/v1), Job (batch/v1), CronJob (batch/v1), Pod (v1), Secret (v1), ConfigMap (v1), Service (v1), Namespace (v1), AgentUpdate (baton.io/v1alpha1)",
        ),
        (
            "missing metadata",
            "apiVersion: v1\nkind: Pod\nspec: {containers: [{name: a, image: b}]}\n".to_string(),
            "error: document 1: missing field `metadata`",
        ),
        (
            "command must be a list",
            doc("", "", "", "        command: /bin/sh\n"),
            "error: document 1: spec.template.spec.containers[0].command: invalid type: string \"/bin/sh\", expected a sequence",
        ),
        ("missing kind", "apiVersion: v1\nmetadata: {name: x}\n".to_string(), "error: document 1: kind: required"),
        ("not a mapping", "- a\n- b\n".to_string(), "error: document 1: expected a mapping with apiVersion and kind"),
        ("empty manifest", "\n---\n# just a comment\n".to_string(), "error: no objects in manifest"),
        (
            "duplicate object",
            format!("{}---\n{}", doc("", "", "", ""), doc("", "", "", "")),
            "error: document 2: deployment/web is already defined in document 1",
        ),
        (
            "error in a later document fails the whole manifest",
            format!("{}---\n{}", doc("", "", "", ""), doc("", "", "", "").replace("name: web\nspec", "name: w2\nspec").replace("replicas: 2", "replicas: -3")),
            "error: document 2: spec.replicas: must be between 0 and 50000, got -3",
        ),
        (
            "duplicate YAML key",
            "apiVersion: v1\nkind: Pod\nkind: Pod\n".to_string(),
            "error: document 1: invalid YAML: duplicate entry with key \"kind\"",
        ),
    ];
    for (name, input, expect) in &cases {
        check(name, input, expect);
    }
}

/// `spec.strategy` and `spec.revisionHistoryLimit`: Kubernetes' defaults and rules.
#[test]
fn strategies() {
    let with = |d: &str| doc("", d, "", "");
    let ok = |input: &str| -> api::DeploymentSpec {
        match parse_manifests(input) {
            Ok(o) => match o.as_slice() {
                [api::Object::Deployment(d)] => d.spec.clone(),
                other => panic!("want one deployment, got {other:?}"),
            },
            Err(e) => panic!("{e}\n{input}"),
        }
    };
    let ru = |s: &api::DeploymentSpec| {
        let r = s.strategy.rolling_update.expect("rolling update");
        (r.max_surge.to_string(), r.max_unavailable.to_string())
    };
    // Defaults: RollingUpdate 25%/25%, 10 revisions; also for `strategy: {}`.
    for input in [
        with(""),
        with("  strategy: {}\n"),
        with("  strategy:\n    type: RollingUpdate\n"),
    ] {
        let s = ok(&input);
        assert_eq!(s.strategy.type_, api::StrategyType::RollingUpdate);
        assert_eq!(ru(&s), ("25%".into(), "25%".into()));
        assert_eq!(s.revision_history_limit, 10);
    }
    let s = ok(&with(
        "  revisionHistoryLimit: 3\n  strategy:\n    rollingUpdate: {maxSurge: 2, maxUnavailable: 0%}\n",
    ));
    assert_eq!(ru(&s), ("2".into(), "0%".into()));
    assert_eq!(s.revision_history_limit, 3);
    let s = ok(&with("  strategy:\n    rollingUpdate: {maxSurge: 0}\n"));
    assert_eq!(
        ru(&s),
        ("0".into(), "25%".into()),
        "the other default stays"
    );
    let s = ok(&with("  strategy:\n    type: Recreate\n"));
    assert_eq!(s.strategy.type_, api::StrategyType::Recreate);
    assert_eq!(s.strategy.rolling_update, None);

    let cases: Vec<(&str, String, &str)> = vec![
        (
            "both zero",
            with("  strategy:\n    rollingUpdate: {maxSurge: 0, maxUnavailable: 0}\n"),
            "error: document 1: spec.strategy.rollingUpdate.maxUnavailable: may not be 0 when `maxSurge` is 0",
        ),
        (
            "both zero as percentages",
            with("  strategy:\n    rollingUpdate: {maxSurge: 0%, maxUnavailable: \"0%\"}\n"),
            "error: document 1: spec.strategy.rollingUpdate.maxUnavailable: may not be 0 when `maxSurge` is 0",
        ),
        (
            "negative surge",
            with("  strategy:\n    rollingUpdate: {maxSurge: -1}\n"),
            "error: document 1: spec.strategy.rollingUpdate.maxSurge: must be greater than or equal to 0, got -1",
        ),
        (
            "not a percentage",
            with("  strategy:\n    rollingUpdate: {maxSurge: ten}\n"),
            "error: document 1: spec.strategy.rollingUpdate.maxSurge: \"ten\": a valid percent string must be a numeric string followed by an ending '%' (e.g. '1%' or '93%')",
        ),
        (
            "fractional",
            with("  strategy:\n    rollingUpdate: {maxUnavailable: 1.5}\n"),
            "error: document 1: spec.strategy.rollingUpdate.maxUnavailable: must be an integer or a percentage, got 1.5",
        ),
        (
            "unavailable above 100%",
            with("  strategy:\n    rollingUpdate: {maxUnavailable: 150%}\n"),
            "error: document 1: spec.strategy.rollingUpdate.maxUnavailable: must not be greater than 100%",
        ),
        (
            "surge above 100% is fine",
            with("  strategy:\n    rollingUpdate: {maxSurge: 200%}\n"),
            "ok",
        ),
        (
            "unknown type",
            with("  strategy:\n    type: BlueGreen\n"),
            "error: document 1: spec.strategy.type: unknown variant `BlueGreen`, expected `Recreate` or `RollingUpdate`",
        ),
        (
            "recreate with rollingUpdate",
            with("  strategy:\n    type: Recreate\n    rollingUpdate: {maxSurge: 1}\n"),
            "error: document 1: spec.strategy.rollingUpdate: may not be specified when strategy `type` is 'Recreate'",
        ),
        (
            "negative history limit",
            with("  revisionHistoryLimit: -1\n"),
            "error: document 1: spec.revisionHistoryLimit: must be between 0 and 4294967295, got -1",
        ),
    ];
    for (name, input, expect) in &cases {
        check(name, input, expect);
    }
}

#[test]
fn yaml_errors_carry_line_and_column() {
    let err = parse_manifests("apiVersion: v1\nkind: Pod\nmetadata:\n  name: [unclosed\n")
        .expect_err("malformed");
    let msg = err.to_string();
    assert!(msg.starts_with("document 1: invalid YAML: "), "{msg}");
    assert!(msg.contains("line "), "{msg}");
    assert!(msg.contains("column "), "{msg}");
}

#[test]
fn defaults_and_conversions() {
    let input = doc(
        "",
        "",
        "",
        "        resources:\n          limits: {cpu: 1, memory: 64Mi}\n",
    )
    .replace("  replicas: 2\n", "");
    let objects = parse_manifests(&input).expect("valid");
    let [api::Object::Deployment(d)] = objects.as_slice() else {
        panic!("want one deployment, got {objects:?}");
    };
    assert_eq!(d.spec.replicas, 1, "replicas default to 1 as in Kubernetes");
    assert_eq!(
        (d.api_version.as_str(), d.kind.as_str()),
        ("apps/v1", "Deployment")
    );
    assert!(d.metadata.uid.is_empty() && d.metadata.creation_timestamp.is_empty());
    let c = &d.spec.template.spec.containers[0];
    assert_eq!(
        c.resources.limits.cpu.as_deref(),
        Some("1"),
        "numeric quantity kept as text"
    );
    assert_eq!(d.spec.template.spec.restart_policy, RestartPolicy::Always);
}

proptest::proptest! {
    /// Whatever the input, parsing returns instead of panicking.
    #[test]
    fn never_panics(input in "\\PC{0,200}") {
        let _ = parse_manifests(&input);
    }

    /// Mutating a valid manifest byte-wise never panics either.
    #[test]
    fn mutated_manifests_never_panic(pos in 0usize..400, byte in proptest::num::u8::ANY) {
        let mut bytes = doc("", "", "", "        ports: [{containerPort: 80}]\n").into_bytes();
        let i = pos % bytes.len();
        bytes[i] = byte;
        if let Ok(input) = String::from_utf8(bytes) {
            let _ = parse_manifests(&input);
        }
    }
}

#[test]
fn pod_feature_rules() {
    let c = |lines: &str| doc("", "", "", lines);
    let s = |lines: &str| doc("", "", lines, "");
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "probe without a handler",
            c("        livenessProbe: {periodSeconds: 5}\n"),
            "error: document 1: spec.template.spec.containers[0].livenessProbe: must specify a handler type: exec, httpGet or tcpSocket",
        ),
        (
            "probe with two handlers",
            c("        readinessProbe:\n          exec: {command: [\"true\"]}\n          tcpSocket: {port: 80}\n"),
            "error: document 1: spec.template.spec.containers[0].readinessProbe: may not specify more than 1 handler type",
        ),
        (
            "liveness successThreshold must be 1",
            c("        livenessProbe:\n          tcpSocket: {port: 80}\n          successThreshold: 2\n"),
            "error: document 1: spec.template.spec.containers[0].livenessProbe.successThreshold: must be 1, got 2",
        ),
        (
            "startup successThreshold must be 1",
            c("        startupProbe:\n          tcpSocket: {port: 80}\n          successThreshold: 3\n"),
            "error: document 1: spec.template.spec.containers[0].startupProbe.successThreshold: must be 1, got 3",
        ),
        (
            "readiness may need several successes",
            c("        readinessProbe:\n          tcpSocket: {port: 80}\n          successThreshold: 3\n"),
            "ok",
        ),
        (
            "period must be positive",
            c("        readinessProbe:\n          tcpSocket: {port: 80}\n          periodSeconds: 0\n"),
            "error: document 1: spec.template.spec.containers[0].readinessProbe.periodSeconds: must be greater than or equal to 1, got 0",
        ),
        (
            "negative delay",
            c("        readinessProbe:\n          tcpSocket: {port: 80}\n          initialDelaySeconds: -1\n"),
            "error: document 1: spec.template.spec.containers[0].readinessProbe.initialDelaySeconds: must be greater than or equal to 0, got -1",
        ),
        (
            "unknown named port",
            c("        livenessProbe:\n          httpGet: {path: /, port: metrics}\n"),
            "error: document 1: spec.template.spec.containers[0].livenessProbe.httpGet.port: no port named \"metrics\" in the container's ports",
        ),
        (
            "port out of range",
            c("        livenessProbe:\n          tcpSocket: {port: 70000}\n"),
            "error: document 1: spec.template.spec.containers[0].livenessProbe.tcpSocket.port: must be between 1 and 65535, got 70000",
        ),
        (
            "bad scheme",
            c("        livenessProbe:\n          httpGet: {port: 80, scheme: FTP}\n"),
            "error: document 1: spec.template.spec.containers[0].livenessProbe.httpGet.scheme: unknown variant `FTP`, expected `HTTP` or `HTTPS`",
        ),
        (
            "empty exec command",
            c("        livenessProbe:\n          exec: {command: []}\n"),
            "error: document 1: spec.template.spec.containers[0].livenessProbe.exec.command: required",
        ),
        (
            "probes on init containers",
            s("      initContainers:\n      - name: i\n        image: busybox:1\n        readinessProbe: {exec: {command: [\"true\"]}}\n"),
            "error: document 1: spec.template.spec.initContainers[0].readinessProbe: must not be set for init containers",
        ),
        (
            "init and main containers share names",
            s("      initContainers:\n      - name: web\n        image: busybox:1\n"),
            "error: document 1: spec.template.spec.containers[0].name: duplicate container name \"web\"",
        ),
        (
            "mount of a missing volume",
            c("        volumeMounts: [{name: data, mountPath: /data}]\n"),
            "error: document 1: spec.template.spec.containers[0].volumeMounts[0].name: no volume named \"data\" in the pod's volumes",
        ),
        (
            "relative mount path",
            doc("", "", "      volumes: [{name: d, emptyDir: {}}]\n", "        volumeMounts: [{name: d, mountPath: data}]\n"),
            "error: document 1: spec.template.spec.containers[0].volumeMounts[0].mountPath: \"data\" must be an absolute path",
        ),
        (
            "relative working directory",
            c("        workingDir: ../../..\n"),
            "error: document 1: spec.template.spec.containers[0].workingDir: \"../../..\" must be an absolute path",
        ),
        (
            "working directory without a leading slash",
            c("        workingDir: app\n"),
            "error: document 1: spec.template.spec.containers[0].workingDir: \"app\" must be an absolute path",
        ),
        (
            "an empty working directory is unset, as in Kubernetes",
            c("        workingDir: \"\"\n"),
            "ok",
        ),
        (
            "relative working directory of an init container",
            s("      initContainers:\n      - name: i\n        image: busybox:1\n        workingDir: tmp\n"),
            "error: document 1: spec.template.spec.initContainers[0].workingDir: \"tmp\" must be an absolute path",
        ),
        (
            "absolute working directories are fine, `..` inside the root included",
            s("      initContainers:\n      - name: i\n        image: busybox:1\n        workingDir: /srv/../tmp\n"),
            "ok",
        ),
        (
            "volume without a source",
            s("      volumes: [{name: d}]\n"),
            "error: document 1: spec.template.spec.volumes[0]: must specify a volume type: secret, configMap, emptyDir or hostPath",
        ),
        (
            "volume with two sources",
            s("      volumes: [{name: d, emptyDir: {}, hostPath: {path: /x}}]\n"),
            "error: document 1: spec.template.spec.volumes[0]: may not specify more than 1 volume type",
        ),
        (
            "duplicate volume",
            s("      volumes: [{name: d, emptyDir: {}}, {name: d, emptyDir: {}}]\n"),
            "error: document 1: spec.template.spec.volumes[1].name: duplicate volume name \"d\"",
        ),
        (
            "hostPath with ..",
            s("      volumes: [{name: d, hostPath: {path: /data/../etc}}]\n"),
            "error: document 1: spec.template.spec.volumes[0].hostPath.path: \"/data/../etc\" must not contain '..'",
        ),
        (
            "bad emptyDir size",
            s("      volumes: [{name: d, emptyDir: {sizeLimit: lots}}]\n"),
            "error: document 1: spec.template.spec.volumes[0].emptyDir.sizeLimit: quantity \"lots\" is not a valid Kubernetes quantity",
        ),
        (
            "env value and valueFrom",
            c("        env:\n        - name: A\n          value: x\n          valueFrom: {secretKeyRef: {name: s, key: k}}\n"),
            "error: document 1: spec.template.spec.containers[0].env[0].valueFrom: may not be specified when `value` is not empty",
        ),
        (
            "secret key with a slash",
            c("        env:\n        - name: A\n          valueFrom: {secretKeyRef: {name: s, key: a/b}}\n"),
            "error: document 1: spec.template.spec.containers[0].env[0].valueFrom.secretKeyRef.key: \"a/b\": a valid key must consist of alphanumerics, '-', '_' or '.' (at most 253)",
        ),
        (
            "secretKeyRef without a key",
            c("        env:\n        - name: A\n          valueFrom: {secretKeyRef: {name: s}}\n"),
            "error: document 1: spec.template.spec.containers[0].env[0].valueFrom.secretKeyRef.key: required",
        ),
        (
            "negative runAsUser",
            s("      securityContext: {runAsUser: -1}\n"),
            "error: document 1: spec.template.spec.securityContext.runAsUser: must be between 0 and 2147483647, got -1",
        ),
        (
            "lower-case capability",
            c("        securityContext: {capabilities: {add: [net_admin]}}\n"),
            "error: document 1: spec.template.spec.containers[0].securityContext.capabilities.add[0]: \"net_admin\" must be a capability name in upper case, e.g. NET_ADMIN",
        ),
        (
            "configMapKeyRef and envFrom accepted",
            c("        envFrom: [{prefix: G_, configMapRef: {name: game, optional: true}}]\n        env:\n        - name: A\n          valueFrom: {configMapKeyRef: {name: game, key: lives, optional: true}}\n        volumeMounts: [{name: cfg, mountPath: /config}]\n")
                .replace("      containers:", "      volumes:\n      - name: cfg\n        configMap:\n          name: game\n          defaultMode: 0400\n          optional: true\n          items: [{key: a.b, path: sub/a, mode: 0600}]\n      containers:"),
            "ok",
        ),
        (
            "configMapKeyRef without a key",
            c("        env:\n        - name: A\n          valueFrom: {configMapKeyRef: {name: game}}\n"),
            "error: document 1: spec.template.spec.containers[0].env[0].valueFrom.configMapKeyRef.key: required",
        ),
        (
            "two valueFrom sources",
            c("        env:\n        - name: A\n          valueFrom: {configMapKeyRef: {name: g, key: k}, secretKeyRef: {name: s, key: k}}\n"),
            "error: document 1: spec.template.spec.containers[0].env[0].valueFrom: may not have more than one field specified",
        ),
        (
            "envFrom secretRef is not supported",
            c("        envFrom: [{secretRef: {name: s}}]\n"),
            "error: document 1: spec.template.spec.containers[0].envFrom[0].secretRef: field not supported by Baton",
        ),
        (
            "envFrom without a source",
            c("        envFrom: [{prefix: X_}]\n"),
            "error: document 1: spec.template.spec.containers[0].envFrom[0]: must specify configMapRef",
        ),
        (
            "configMap item escaping its volume",
            s("      volumes: [{name: v, configMap: {name: g, items: [{key: k, path: ../x}]}}]\n"),
            "error: document 1: spec.template.spec.volumes[0].configMap.items[0].path: \"../x\" must be a relative path without '..' that does not start with '..'",
        ),
        (
            "configMap volume with more items than an agent takes",
            s(&format!(
                "      volumes: [{{name: v, configMap: {{name: g, items: [{}]}}}}]\n",
                (0..=baton_proto::MAX_CONFIG_MAP_KEYS)
                    .map(|i| format!("{{key: k{i}, path: p{i}}}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
            "error: document 1: spec.template.spec.volumes[0].configMap.items: 1,025 items, at most 1,024 (the agent's limit)",
        ),
        (
            "configMap defaultMode out of range",
            s("      volumes: [{name: v, configMap: {name: g, defaultMode: 01000}}]\n"),
            "error: document 1: spec.template.spec.volumes[0].configMap.defaultMode: 512 must be a number between 0 and 0777 (octal), both inclusive",
        ),
        (
            "configMap volume unknown field",
            s("      volumes: [{name: v, configMap: {name: g, localObjectReference: x}}]\n"),
            "error: document 1: spec.template.spec.volumes[0].configMap.localObjectReference: field not supported by Baton",
        ),
        (
            "imagePullSecrets name",
            s("      imagePullSecrets: [{name: Reg_Cred}]\n"),
            "error: document 1: spec.template.spec.imagePullSecrets[0].name: \"Reg_Cred\" must be a lowercase RFC 1123 subdomain: labels of alphanumerics or '-' separated by '.', at most 253 characters",
        ),
    ];
    for (name, input, expect) in cases {
        let result = parse_manifests(&input);
        let actual = match &result {
            Ok(_) => "ok".to_string(),
            Err(e) => format!("error: {e}"),
        };
        // Quantity messages carry the parser's detail after the value; compare the head.
        assert!(
            actual == expect || actual.starts_with(expect),
            "case {name:?}:\n  want {expect}\n  got  {actual}"
        );
    }
}

#[test]
fn seccomp_profiles() {
    let c = |lines: &str| doc("", "", "", lines);
    let s = |lines: &str| doc("", "", lines, "");
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "RuntimeDefault on the container",
            c("        securityContext: {seccompProfile: {type: RuntimeDefault}}\n"),
            "ok",
        ),
        (
            "Unconfined on the pod parses (the policy gates it)",
            s("      securityContext: {seccompProfile: {type: Unconfined}}\n"),
            "ok",
        ),
        (
            "Localhost on the container",
            c("        securityContext:\n          seccompProfile: {type: Localhost, localhostProfile: my.json}\n"),
            "error: document 1: spec.template.spec.containers[0].securityContext.seccompProfile.type: Localhost seccomp profiles are not supported by Baton (use RuntimeDefault, or Unconfined where the coordinator's policy allows it)",
        ),
        (
            "Localhost on the pod",
            s("      securityContext: {seccompProfile: {type: Localhost}}\n"),
            "error: document 1: spec.template.spec.securityContext.seccompProfile.type: Localhost seccomp profiles are not supported by Baton (use RuntimeDefault, or Unconfined where the coordinator's policy allows it)",
        ),
        (
            "unknown type",
            c("        securityContext: {seccompProfile: {type: Strict}}\n"),
            "error: document 1: spec.template.spec.containers[0].securityContext.seccompProfile.type: \"Strict\" must be RuntimeDefault, Unconfined or Localhost",
        ),
        (
            "type missing",
            s("      securityContext: {seccompProfile: {}}\n"),
            "error: document 1: spec.template.spec.securityContext.seccompProfile.type: required",
        ),
        (
            "localhostProfile without Localhost",
            c("        securityContext: {seccompProfile: {type: RuntimeDefault, localhostProfile: x.json}}\n"),
            "error: document 1: spec.template.spec.containers[0].securityContext.seccompProfile.localhostProfile: may only be set with type Localhost",
        ),
    ];
    for (name, input, expect) in &cases {
        check(name, input, expect);
    }
    // Both levels reach the API objects; leaving them out keeps them out (and the
    // template hash of existing Deployments unchanged).
    let both = parse_manifests(&doc(
        "",
        "",
        "      securityContext: {seccompProfile: {type: Unconfined}}\n",
        "        securityContext: {seccompProfile: {type: RuntimeDefault}}\n",
    ))
    .unwrap();
    let api::Object::Deployment(d) = &both[0] else {
        panic!("a deployment")
    };
    let spec = &d.spec.template.spec;
    assert_eq!(
        spec.security_context.seccomp_profile.map(|p| p.typ),
        Some(api::SeccompProfileType::Unconfined)
    );
    assert_eq!(
        spec.containers[0]
            .security_context
            .as_ref()
            .and_then(|sc| sc.seccomp_profile)
            .map(|p| p.typ),
        Some(api::SeccompProfileType::RuntimeDefault)
    );
    let yaml = render(Ok(both));
    assert!(
        yaml.contains("seccompProfile:\n") && yaml.contains("type: Unconfined"),
        "{yaml}"
    );
    let plain = render(parse_manifests(&doc("", "", "", "")));
    assert!(!plain.contains("seccomp"), "{plain}");
}

#[test]
fn probe_defaults_and_named_ports() {
    let input = doc(
        "",
        "",
        "",
        "        ports: [{name: http, containerPort: 8080}]\n        livenessProbe:\n          httpGet: {port: http}\n",
    );
    let api::Object::Deployment(d) = parse_manifests(&input).unwrap().remove(0) else {
        panic!("not a deployment")
    };
    let p = d.spec.template.spec.containers[0]
        .liveness_probe
        .clone()
        .unwrap();
    assert_eq!(
        p,
        api::Probe {
            handler: api::ProbeHandler::HttpGet {
                path: "/".into(),
                port: 8080,
                scheme: api::Scheme::HTTP,
                host: None,
                http_headers: vec![],
            },
            initial_delay_seconds: 0,
            period_seconds: 10,
            timeout_seconds: 1,
            success_threshold: 1,
            failure_threshold: 3,
        }
    );
}

#[test]
fn secret_rules() {
    let secret =
        |body: &str| format!("apiVersion: v1\nkind: Secret\nmetadata: {{name: db}}\n{body}");
    let big = "a".repeat(baton_proto::MAX_SEALED_BYTES);
    let cases: Vec<(&str, String, &str)> = vec![
        ("empty", secret(""), "ok"),
        (
            "bad base64",
            secret("data: {pw: \"not base64!\"}\n"),
            "error: document 1: data.pw: invalid base64",
        ),
        (
            "bad key",
            secret("stringData: {\"a/b\": x}\n"),
            "error: document 1: stringData.a/b: \"a/b\": a valid key must consist of alphanumerics, '-', '_' or '.' (at most 253)",
        ),
        (
            "unknown type",
            secret("type: kubernetes.io/tls\n"),
            "error: document 1: type: \"kubernetes.io/tls\" is not supported by Baton; supported: Opaque, kubernetes.io/dockerconfigjson",
        ),
        (
            "dockerconfigjson without its key",
            secret("type: kubernetes.io/dockerconfigjson\nstringData: {other: x}\n"),
            "error: document 1: data[.dockerconfigjson]: required for type kubernetes.io/dockerconfigjson",
        ),
        (
            "dockerconfigjson that is not JSON",
            secret("type: kubernetes.io/dockerconfigjson\nstringData: {.dockerconfigjson: \"{nope\"}\n"),
            "error: document 1: data[.dockerconfigjson]: invalid JSON",
        ),
        (
            "too big",
            secret(&format!("stringData: {{k: {big}}}\n")),
            "error: document 1: data: the secret is 65593 bytes (keys, values and encryption overhead); at most 65536 are supported",
        ),
        (
            "unknown field",
            secret("immutable: true\n"),
            "error: document 1: immutable: field not supported by Baton",
        ),
        (
            "name is a subdomain",
            "apiVersion: v1\nkind: Secret\nmetadata: {name: db.prod}\n".to_string(),
            "ok",
        ),
    ];
    for (name, input, expect) in cases {
        let actual = match parse_manifests(&input) {
            Ok(_) => "ok".to_string(),
            Err(e) => format!("error: {e}"),
        };
        assert!(
            actual == expect || actual.starts_with(expect),
            "case {name:?}:\n  want {expect}\n  got  {actual}"
        );
    }
    // A secret's Debug never shows values.
    let api::Object::Secret(s) = parse_manifests(&secret("stringData: {pw: hunter2}\n"))
        .unwrap()
        .remove(0)
    else {
        panic!("not a secret")
    };
    assert_eq!(s.data["pw"], b"hunter2");
    assert!(!format!("{s:?}").contains("hunter2"));
}

#[test]
fn config_map_rules() {
    let cm =
        |body: &str| format!("apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: cfg}}\n{body}");
    // `n` keys `<prefix>0..`, each with the value `x`, as block-style YAML lines.
    let keys = |prefix: &str, n: usize| -> String {
        (0..n).map(|i| format!("  {prefix}{i}: x\n")).collect()
    };
    // Exactly 1 MiB of keys and values passes; one byte more is refused, naming the object.
    let at_limit = "a".repeat(api::MAX_CONFIG_MAP_BYTES - 1);
    let over = "a".repeat(api::MAX_CONFIG_MAP_BYTES);
    let cases: Vec<(&str, String, &str)> = vec![
        ("empty", cm(""), "ok"),
        ("at the limit", cm(&format!("data: {{k: {at_limit}}}\n")), "ok"),
        (
            "over the limit",
            cm(&format!("data: {{k: {over}}}\n")),
            "error: document 1: data: ConfigMap \"cfg\" is too long: 1048577 bytes of keys and \
             values in data and binaryData; must have at most 1048576 bytes (1 MiB)",
        ),
        (
            "binary counts toward the limit",
            cm(&format!(
                "data: {{k: {}}}\nbinaryData: {{b: AAAA}}\n",
                "a".repeat(api::MAX_CONFIG_MAP_BYTES - 3)
            )),
            "error: document 1: data: ConfigMap \"cfg\" is too long: 1048578 bytes",
        ),
        (
            "at most 1,024 keys",
            cm(&format!("data:\n{}", keys("d", 1024))),
            "ok",
        ),
        (
            "more keys than an agent takes",
            cm(&format!("data:\n{}", keys("d", 1500))),
            "error: document 1: data: 1,500 keys, at most 1,024 (the agent's limit)",
        ),
        (
            "binaryData's keys count with data's",
            cm(&format!(
                "data:\n{}binaryData:\n{}",
                keys("d", 1000),
                keys("b", 25).replace(": x", ": AAAA")
            )),
            "error: document 1: binaryData: 25 keys, 1,025 with data's 1,000; at most 1,024 in \
             data and binaryData together (the agent's limit)",
        ),
        (
            "bad base64",
            cm("binaryData: {b: \"not base64!\"}\n"),
            "error: document 1: binaryData.b: invalid base64",
        ),
        (
            "a key in both maps",
            cm("data: {k: x}\nbinaryData: {k: AAAA}\n"),
            "error: document 1: binaryData.k: duplicate of key \"k\" in data",
        ),
        (
            "bad key",
            cm("data: {\"a/b\": x}\n"),
            "error: document 1: data.a/b: \"a/b\": a valid key must consist of alphanumerics",
        ),
        (
            "value not a string",
            cm("data: {k: [1]}\n"),
            "error: document 1: data.k:",
        ),
        (
            "unknown fields by path",
            cm("stringData: {a: b}\nmetadata2: 1\n"),
            "error: document 1: stringData: field not supported by Baton; metadata2: field not supported by Baton",
        ),
        (
            "immutable must be a bool",
            cm("immutable: maybe\n"),
            "error: document 1: immutable:",
        ),
        ("name is a subdomain", "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: game.demo}\n".into(), "ok"),
        (
            "name required",
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {labels: {a: b}}\n".into(),
            "error: document 1: metadata.name: required",
        ),
    ];
    for (name, input, expect) in cases {
        let actual = match parse_manifests(&input) {
            Ok(_) => "ok".to_string(),
            Err(e) => format!("error: {e}"),
        };
        assert!(
            actual == expect || actual.starts_with(expect),
            "case {name:?}:\n  want {expect}\n  got  {}",
            &actual[..actual.len().min(300)]
        );
    }
    let api::Object::ConfigMap(c) = parse_manifests(&cm(
        "data: {a: x}\nbinaryData: {b: AAEC}\nimmutable: true\n",
    ))
    .unwrap()
    .remove(0) else {
        panic!("not a configmap")
    };
    assert_eq!(c.binary_data["b"], vec![0, 1, 2]);
    assert_eq!((c.key_count(), c.size_bytes(), c.immutable), (2, 6, true));
}

#[test]
fn base64_round_trips_and_is_strict() {
    for bytes in [
        &b""[..],
        b"f",
        b"fo",
        b"foo",
        b"foob",
        b"fooba",
        b"foobar",
        &[0, 255, 128],
    ] {
        let enc = api::base64::encode(bytes);
        assert_eq!(api::base64::decode(&enc).as_deref(), Some(bytes), "{enc}");
    }
    assert_eq!(api::base64::encode(b"foobar"), "Zm9vYmFy");
    assert_eq!(api::base64::encode(b"fo"), "Zm8=");
    for bad in ["Zm8", "Zm9=Zm8=", "Zm9v!", "Zm9=", "Z==="] {
        assert_eq!(api::base64::decode(bad), None, "{bad}");
    }
}

mod service;
