//! Pods with DNS settings (`dnsPolicy`, `dnsConfig`, `hostAliases`): sent to a v5 agent,
//! withheld from a v4 one with a reason naming its protocol.

use super::*;

fn pod(name: &str, node: &str, extra: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  nodeSelector: {{kubernetes.io/hostname: {node}}}\n  containers:\n  - name: c\n    image: busybox\n{extra}"
    )
}

const ALIASES: &str = "  hostAliases:\n  - {ip: 10.1.2.3, hostnames: [db.lab]}\n";

#[tokio::test(start_paused = true)]
async fn dns_settings_reach_a_v5_agent_and_are_withheld_from_a_v4_one() {
    let mut h = Harness::new(Arc::new(MemStore::new()));
    for (node, proto) in [("old", 4), ("new", 5)] {
        h.core.handle(Event::Inbound {
            node: nn(node),
            body: hello(4000),
            proto,
        });
    }
    h.drain();
    h.apply(&pod(
        "p",
        "new",
        "  dnsPolicy: None\n  dnsConfig: {nameservers: [192.0.2.53], options: [{name: ndots, value: \"2\"}]}\n",
    ))
    .unwrap();
    h.apply(&pod("q", "old", ALIASES)).unwrap();
    // The default (ClusterFirst spelled out) is what a v4 agent has: it gets that pod.
    h.apply(&pod("r", "old", "  dnsPolicy: ClusterFirst\n"))
        .unwrap();
    let msgs = h.drain();
    let d = desired_for(&msgs, "new").unwrap();
    let dns = d.pods[0].dns.as_ref().expect("DNS settings sent");
    assert_eq!(dns.policy, baton_proto::DnsPolicy::None);
    assert_eq!(dns.nameservers[0].to_string(), "192.0.2.53");
    assert_eq!(
        (
            dns.options[0].name.as_str(),
            dns.options[0].value.as_deref()
        ),
        ("ndots", Some("2"))
    );
    let old: Vec<_> = desired_for(&msgs, "old")
        .map(|d| {
            d.pods
                .iter()
                .map(|p| (p.name.to_string(), p.dns.is_some()))
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(old, [("r".to_string(), false)]);
    let q = h
        .pods()
        .into_iter()
        .find(|p| p.metadata.name == "q")
        .unwrap();
    assert_eq!(
        q.status.reason.as_deref(),
        Some("CreateContainerConfigError")
    );
    assert_eq!(
        q.status.message.as_deref(),
        Some("node old runs an agent of protocol v4, which cannot set a pod's dnsPolicy, dnsConfig or hostAliases; upgrade its agent to protocol v5")
    );
}
