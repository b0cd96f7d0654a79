//! Service validation, one rule a row, as the API server words it where it can.

use super::*;

fn svc(spec: &str) -> String {
    format!("apiVersion: v1\nkind: Service\nmetadata: {{name: web}}\nspec:\n{spec}")
}

#[test]
fn service_rules() {
    let port80 = "  selector: {app: web}\n  ports:\n  - {port: 80}\n";
    let cases: Vec<(&str, String, &str)> = vec![
        ("plain", svc(port80), "ok"),
        (
            "SCTP",
            svc("  ports:\n  - {port: 80, protocol: SCTP}\n"),
            "error: document 1: spec.ports[0].protocol: SCTP is not supported by Baton (TCP or UDP)",
        ),
        (
            "port out of range",
            svc("  ports:\n  - {port: 70000}\n"),
            "error: document 1: spec.ports[0].port: must be between 1 and 65535, got 70000",
        ),
        (
            "targetPort out of range",
            svc("  ports:\n  - {port: 80, targetPort: 0}\n"),
            "error: document 1: spec.ports[0].targetPort: must be between 1 and 65535, got 0",
        ),
        (
            "targetPort name not IANA",
            svc("  ports:\n  - {port: 80, targetPort: Web_Port}\n"),
            "error: document 1: spec.ports[0].targetPort: ",
        ),
        (
            "two ports, one unnamed",
            svc("  ports:\n  - {name: a, port: 80}\n  - {port: 81}\n"),
            "error: document 1: spec.ports[1].name: required when a Service has more than one port",
        ),
        (
            "duplicate port names",
            svc("  ports:\n  - {name: a, port: 80}\n  - {name: a, port: 81}\n"),
            "error: document 1: spec.ports[1].name: duplicate port name \"a\"",
        ),
        (
            "nodePort out of range",
            svc("  type: NodePort\n  ports:\n  - {port: 80, nodePort: 8080}\n"),
            "error: document 1: spec.ports[0].nodePort: provided port is not in the valid range: 30000-32767, got 8080",
        ),
        (
            "nodePort on ClusterIP",
            svc("  ports:\n  - {port: 80, nodePort: 30080}\n"),
            "error: document 1: spec.ports[0].nodePort: may not be used when type is ClusterIP",
        ),
        (
            "no ports",
            svc("  selector: {app: web}\n"),
            "error: document 1: spec.ports: required (only a headless Service may have none)",
        ),
        (
            "ExternalName",
            svc("  type: ExternalName\n  externalName: db.example.com\n"),
            "error: document 1: spec.externalName: field not supported by Baton",
        ),
        (
            "headless NodePort",
            svc("  type: NodePort\n  clusterIP: None\n  ports:\n  - {port: 80}\n"),
            "error: document 1: spec.clusterIP: a headless Service (None) must be of type ClusterIP, not NodePort",
        ),
        (
            "IPv6 address",
            svc("  clusterIP: fd00::10\n  ports:\n  - {port: 80}\n"),
            "error: document 1: spec.clusterIP: \"fd00::10\" must be an IPv4 address or \"None\" (Baton is IPv4 only)",
        ),
        (
            "dual stack required",
            svc(&format!("  ipFamilyPolicy: RequireDualStack\n{port80}")),
            "error: document 1: spec.ipFamilyPolicy: \"RequireDualStack\" is not supported by Baton (supported: SingleStack, PreferDualStack)",
        ),
        (
            "local traffic policy",
            svc(&format!("  externalTrafficPolicy: Local\n{port80}")),
            "error: document 1: spec.externalTrafficPolicy: \"Local\" is not supported by Baton (supported: Cluster)",
        ),
        (
            "affinity timeout without ClientIP",
            svc(&format!("  sessionAffinityConfig: {{clientIP: {{timeoutSeconds: 5}}}}\n{port80}")),
            "error: document 1: spec.sessionAffinityConfig: must not be set when sessionAffinity is None",
        ),
        (
            "affinity timeout over a day",
            svc(&format!("  sessionAffinity: ClientIP\n  sessionAffinityConfig: {{clientIP: {{timeoutSeconds: 90000}}}}\n{port80}")),
            "error: document 1: spec.sessionAffinityConfig.clientIP.timeoutSeconds: must be between 1 and 86400, got 90000",
        ),
        (
            "clusterIPs disagree",
            svc(&format!("  clusterIP: 10.43.0.5\n  clusterIPs: [10.43.0.6]\n{port80}")),
            "error: document 1: spec.clusterIPs: must be one address equal to spec.clusterIP (Baton is IPv4 single stack)",
        ),
        (
            "name with a leading digit",
            svc(port80).replace("name: web", "name: 1web"),
            "error: document 1: metadata.name: \"1web\" must start with a lowercase letter (a Service name is a DNS-1035 label)",
        ),
    ];
    let mut failures = Vec::new();
    for (what, input, want) in cases {
        let got = match parse_manifests(&input) {
            Ok(_) => "ok".to_owned(),
            Err(e) => format!("error: {e}"),
        };
        if !got.starts_with(want) || (want == "ok") != (got == "ok") {
            failures.push(format!("{what}:\n  want {want}\n  got  {got}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn service_defaults() {
    let objects = parse_manifests(&svc("  ports:\n  - {port: 80, targetPort: http}\n")).unwrap();
    let [api::Object::Service(s)] = objects.as_slice() else {
        panic!("one service: {objects:?}");
    };
    assert_eq!(s.spec.type_, api::ServiceType::ClusterIP);
    assert_eq!(
        s.spec.cluster_ip, "",
        "allocated by the core, not the parser"
    );
    assert_eq!(s.spec.ports[0].protocol, api::Protocol::TCP);
    assert_eq!(
        s.spec.ports[0].target_port,
        api::TargetPort::Name("http".into())
    );
    let objects = parse_manifests(&svc("  ports:\n  - {port: 53, protocol: UDP}\n")).unwrap();
    let [api::Object::Service(s)] = objects.as_slice() else {
        panic!("one service");
    };
    // targetPort defaults to port.
    assert_eq!(s.spec.ports[0].target_port, api::TargetPort::Number(53));
}
