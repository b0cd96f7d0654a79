//! Pods with DNS settings (`dnsPolicy`, `dnsConfig`, `hostAliases`) and v4 agents.

use crate::model::api;

use super::Core;

/// The oldest agent protocol that carries a pod's DNS settings.
const POD_DNS_PROTO: u16 = 5;

impl Core {
    /// Why `p` cannot go to its node: it sets `dnsPolicy`, `dnsConfig` or `hostAliases`,
    /// which protocol v4 (Baton 0.1) cannot carry: its agent would run it with the
    /// default resolv.conf and hosts instead.
    pub(super) fn dns_blocker(&self, p: &api::Pod) -> Option<String> {
        if !p.spec.has_dns_settings() {
            return None;
        }
        let node = p.spec.node_name.as_deref()?;
        let version = self.nodes.get(node)?.status.protocol_version;
        (version < POD_DNS_PROTO).then(|| {
            format!(
                "node {node} runs an agent of protocol v{version}, which cannot set a pod's \
                 dnsPolicy, dnsConfig or hostAliases; upgrade its agent to protocol \
                 v{POD_DNS_PROTO}"
            )
        })
    }
}
