//! The cluster names a node answers, from the Service table.

use std::collections::HashMap;
use std::net::Ipv4Addr;

use baton_proto::ServiceTable;

use super::CLUSTER_DOMAIN;

/// What a name under the cluster domain resolves to.
#[derive(Debug, Default)]
pub struct Names {
    /// Lowercase, fully qualified (`web.default.svc.cluster.local.`).
    by_name: HashMap<String, Vec<Ipv4Addr>>,
}

/// The answer for one name.
#[derive(Debug, PartialEq, Eq)]
pub enum Lookup<'a> {
    /// A Service's name: its ClusterIP, or a headless Service's ready pod IPs (maybe none).
    Found(&'a [Ipv4Addr]),
    /// Under the cluster domain, and no such name: NXDOMAIN.
    Missing,
    /// Not the cluster's: for the upstream resolvers.
    Elsewhere,
}

/// A Service's namespace and name: the coordinator names a Service of a namespace other
/// than `default` `<namespace>_<name>` (`_` is in no Kubernetes name).
pub fn split_service(name: &str) -> (&str, &str) {
    name.split_once('_').unwrap_or(("default", name))
}

impl Names {
    pub fn of(table: &ServiceTable) -> Self {
        let mut by_name = HashMap::with_capacity(table.services.len());
        for s in table.services.iter() {
            let (ns, name) = split_service(&s.name);
            let ips = if s.vip.is_unspecified() {
                // Headless: the ready pods themselves.
                let mut ips: Vec<Ipv4Addr> = s.endpoints.iter().map(|e| e.ip).collect();
                ips.dedup();
                ips
            } else {
                vec![s.vip]
            };
            let fqdn = format!("{name}.{ns}.svc.{CLUSTER_DOMAIN}.").to_ascii_lowercase();
            by_name.insert(fqdn, ips);
        }
        Names { by_name }
    }

    /// `name` fully qualified (with its last dot), any case.
    pub fn lookup(&self, name: &str) -> Lookup<'_> {
        let name = name.to_ascii_lowercase();
        let under = name
            .strip_suffix(&format!("{CLUSTER_DOMAIN}."))
            .is_some_and(|rest| rest.is_empty() || rest.ends_with('.'));
        if !under {
            return Lookup::Elsewhere;
        }
        match self.by_name.get(&name) {
            Some(ips) => Lookup::Found(ips),
            None => Lookup::Missing,
        }
    }

    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use baton_proto::{BString, BVec, ServiceEndpoint, ServiceEntry};

    fn entry(name: &str, vip: Ipv4Addr, eps: &[Ipv4Addr]) -> ServiceEntry {
        ServiceEntry {
            name: BString::new(name).unwrap(),
            vip,
            load_balancer: false,
            affinity_secs: 0,
            ports: BVec::new(),
            endpoints: BVec::from_vec(
                eps.iter()
                    .map(|ip| ServiceEndpoint {
                        ip: *ip,
                        target_ports: BVec::new(),
                    })
                    .collect(),
            )
            .unwrap(),
        }
    }

    #[test]
    fn services_headless_services_and_other_names() {
        let (a, b) = (Ipv4Addr::new(10, 42, 1, 5), Ipv4Addr::new(10, 42, 2, 6));
        let table = ServiceTable::new(
            BVec::from_vec(vec![
                entry("web", Ipv4Addr::new(10, 43, 0, 9), &[a]),
                entry("shop_db", Ipv4Addr::UNSPECIFIED, &[a, b]),
            ])
            .unwrap(),
            BVec::new(),
        )
        .unwrap();
        let n = Names::of(&table);
        assert_eq!(n.len(), 2);
        assert_eq!(
            n.lookup("Web.Default.svc.cluster.local."),
            Lookup::Found(&[Ipv4Addr::new(10, 43, 0, 9)])
        );
        assert_eq!(
            n.lookup("db.shop.svc.cluster.local."),
            Lookup::Found(&[a, b])
        );
        // The search path's misses are ours to refuse, at once.
        assert_eq!(
            n.lookup("web.default.default.svc.cluster.local."),
            Lookup::Missing
        );
        assert_eq!(n.lookup("db.default.svc.cluster.local."), Lookup::Missing);
        assert_eq!(n.lookup("cluster.local."), Lookup::Missing);
        assert_eq!(n.lookup("example.com."), Lookup::Elsewhere);
        assert_eq!(n.lookup("notcluster.local."), Lookup::Elsewhere);
    }
}
