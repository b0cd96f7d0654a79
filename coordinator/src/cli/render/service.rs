//! Services: `get services` and `get endpoints` with kubectl's columns, `describe
//! service` with its endpoints per port.

use std::time::SystemTime;

use super::{age, events_section, kv, labels_str, namespace_kv, selector, table};
use crate::model::api;

/// kubectl's PORT(S): `80:30080/TCP,53/UDP`.
pub fn ports_column(s: &api::Service) -> String {
    if s.spec.ports.is_empty() {
        return "<none>".into();
    }
    s.spec
        .ports
        .iter()
        .map(|p| match p.node_port {
            Some(n) => format!("{}:{n}/{:?}", p.port, p.protocol),
            None => format!("{}/{:?}", p.port, p.protocol),
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// kubectl's EXTERNAL-IP: `<none>` but for a LoadBalancer, which shows its node
/// addresses, `<pending>` while there are none.
pub fn external_ip(s: &api::Service) -> String {
    match s.spec.type_ {
        api::ServiceType::LoadBalancer if s.status.load_balancer.ingress.is_empty() => {
            "<pending>".into()
        }
        api::ServiceType::LoadBalancer => s
            .status
            .load_balancer
            .ingress
            .iter()
            .map(|i| i.ip.as_str())
            .collect::<Vec<_>>()
            .join(","),
        _ => "<none>".into(),
    }
}

/// `get services`: NAME, TYPE, CLUSTER-IP, EXTERNAL-IP, PORT(S), AGE (and SELECTOR wide).
pub fn services_table(services: &[api::Service], wide: bool, now: SystemTime) -> String {
    let rows: Vec<Vec<String>> = services
        .iter()
        .map(|s| {
            let mut row = vec![
                s.metadata.name.clone(),
                s.spec.type_.as_str().to_owned(),
                s.spec.cluster_ip.clone(),
                external_ip(s),
                ports_column(s),
                age(&s.metadata.creation_timestamp, now),
            ];
            if wide {
                row.push(selector(&s.spec.selector));
            }
            row
        })
        .collect();
    let mut header = vec![
        "NAME",
        "TYPE",
        "CLUSTER-IP",
        "EXTERNAL-IP",
        "PORT(S)",
        "AGE",
    ];
    if wide {
        header.push("SELECTOR");
    }
    table(&header, &rows)
}

/// kubectl's ENDPOINTS column: at most three `ip:port`, then `+ N more...`.
fn endpoints_column(e: &api::Endpoints) -> String {
    let all: Vec<String> = e
        .subsets
        .iter()
        .flat_map(|s| {
            s.addresses
                .iter()
                .flat_map(move |a| s.ports.iter().map(move |p| format!("{}:{}", a.ip, p.port)))
        })
        .collect();
    if all.is_empty() {
        return "<none>".into();
    }
    let shown = all.iter().take(3).cloned().collect::<Vec<_>>().join(",");
    match all.len() {
        n if n > 3 => format!("{shown} + {} more...", n - 3),
        _ => shown,
    }
}

/// `get endpoints`: NAME, ENDPOINTS, AGE.
pub fn endpoints_table(eps: &[api::Endpoints], now: SystemTime) -> String {
    let rows: Vec<Vec<String>> = eps
        .iter()
        .map(|e| {
            vec![
                e.metadata.name.clone(),
                endpoints_column(e),
                age(&e.metadata.creation_timestamp, now),
            ]
        })
        .collect();
    table(&["NAME", "ENDPOINTS", "AGE"], &rows)
}

/// kubectl's `describe service`, with each port's endpoints (`10.42.1.5:8080,...`).
pub fn describe_service(
    s: &api::Service,
    endpoints: Option<&api::Endpoints>,
    events: &[api::Event],
    now: SystemTime,
) -> String {
    let mut out = String::new();
    kv(&mut out, "Name", &s.metadata.name);
    namespace_kv(&mut out, &s.metadata);
    kv(&mut out, "Namespace", "default");
    kv(&mut out, "Labels", labels_str(&s.metadata.labels));
    kv(&mut out, "Selector", selector(&s.spec.selector));
    kv(&mut out, "Type", s.spec.type_.as_str());
    kv(&mut out, "IP", &s.spec.cluster_ip);
    if s.spec.type_ == api::ServiceType::LoadBalancer {
        kv(&mut out, "LoadBalancer Ingress", external_ip(s));
    }
    let eps = |name: Option<&str>| {
        let list = endpoints.map(|e| e.addresses_for(name)).unwrap_or_default();
        if list.is_empty() {
            "<none>".to_owned()
        } else {
            list.join(",")
        }
    };
    if s.spec.ports.is_empty() {
        kv(&mut out, "Endpoints", eps(None));
    }
    for p in &s.spec.ports {
        let name = p.name.as_deref().unwrap_or("<unset>");
        kv(
            &mut out,
            "Port",
            format!("{name}  {}/{:?}", p.port, p.protocol),
        );
        kv(
            &mut out,
            "TargetPort",
            format!("{}/{:?}", p.target_port, p.protocol),
        );
        if let Some(n) = p.node_port {
            kv(
                &mut out,
                "NodePort",
                format!("{name}  {n}/{:?}", p.protocol),
            );
        }
        kv(&mut out, "Endpoints", eps(p.name.as_deref()));
    }
    let affinity = match (&s.spec.session_affinity, &s.spec.session_affinity_config) {
        (api::SessionAffinity::ClientIP, Some(c)) => {
            format!("ClientIP ({}s)", c.client_ip.timeout_seconds)
        }
        (a, _) => format!("{a:?}"),
    };
    kv(&mut out, "Session Affinity", affinity);
    out.push_str(&events_section(events, now));
    out
}
