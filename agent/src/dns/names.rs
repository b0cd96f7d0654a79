//! The cluster names a node answers, from the Service table: A records for Services
//! (and for a headless Service's pods, `<a-b-c-d>.<svc>.<ns>.svc...`, as CoreDNS names
//! them), SRV records for their named ports.

use std::collections::HashMap;
use std::net::Ipv4Addr;

use baton_proto::{Protocol, ServiceTable};

use super::CLUSTER_DOMAIN;

/// What a name under the cluster domain resolves to.
#[derive(Debug, Default)]
pub struct Names {
    /// Lowercase, fully qualified (`web.default.svc.cluster.local.`).
    by_name: HashMap<String, Records>,
}

#[derive(Debug)]
enum Records {
    A(Vec<Ipv4Addr>),
    Srv(Vec<Srv>),
}

/// One SRV record: `port` at `target`, whose address is `addr`.
#[derive(Debug, PartialEq, Eq)]
pub struct Srv {
    pub port: u16,
    /// Fully qualified, with its last dot.
    pub target: String,
    pub addr: Ipv4Addr,
}

/// The answer for one name.
#[derive(Debug, PartialEq, Eq)]
pub enum Lookup<'a> {
    /// A Service's name: its ClusterIP, or a headless Service's ready pod IPs (maybe none).
    Found(&'a [Ipv4Addr]),
    /// A named port's SRV records (`_<port>._<proto>.<svc>.<ns>.svc...`).
    Srv(&'a [Srv]),
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
            let fqdn = format!("{name}.{ns}.svc.{CLUSTER_DOMAIN}.").to_ascii_lowercase();
            let headless = s.vip.is_unspecified();
            // Headless: the ready pods themselves, each also by a name of its own (the
            // target of its SRV records).
            let pod = |ip: Ipv4Addr| format!("{}.{fqdn}", ip.to_string().replace('.', "-"));
            let ips = if headless {
                let mut ips: Vec<Ipv4Addr> = s.endpoints.iter().map(|e| e.ip).collect();
                ips.dedup();
                for ip in &ips {
                    by_name.insert(pod(*ip), Records::A(vec![*ip]));
                }
                ips
            } else {
                vec![s.vip]
            };
            for (i, p) in s.ports.iter().enumerate() {
                let Some(port_name) = &p.name else { continue };
                let proto = match p.protocol {
                    Protocol::Tcp => "tcp",
                    Protocol::Udp => "udp",
                };
                let srv = if headless {
                    // The pod's port behind it (none where the pod lacks a named one).
                    let eps = s.endpoints.iter();
                    eps.filter_map(|e| {
                        let port = e.target_ports.get(i).copied().filter(|&p| p != 0)?;
                        Some(Srv {
                            port,
                            target: pod(e.ip),
                            addr: e.ip,
                        })
                    })
                    .collect()
                } else {
                    vec![Srv {
                        port: p.port,
                        target: fqdn.clone(),
                        addr: s.vip,
                    }]
                };
                let key = format!("_{port_name}._{proto}.{fqdn}").to_ascii_lowercase();
                by_name.insert(key, Records::Srv(srv));
            }
            by_name.insert(fqdn, Records::A(ips));
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
            Some(Records::A(ips)) => Lookup::Found(ips),
            Some(Records::Srv(srv)) => Lookup::Srv(srv),
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
    use baton_proto::{BString, BVec, ServiceEndpoint, ServiceEntry, ServicePortEntry};

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
        // Two Services, and the headless one's two pods.
        assert_eq!(n.len(), 4);
        assert_eq!(
            n.lookup("10-42-2-6.db.shop.svc.cluster.local."),
            Lookup::Found(&[b])
        );
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

    /// SRV records of named ports: a ClusterIP Service's to its name and port, a headless
    /// one's to each ready pod's name and port; none for an unnamed port.
    #[test]
    fn srv_records_of_named_ports() {
        let (a, b) = (Ipv4Addr::new(10, 42, 1, 5), Ipv4Addr::new(10, 42, 2, 6));
        let port = |port, protocol, name: Option<&str>| ServicePortEntry {
            port,
            protocol,
            node_port: None,
            name: name.map(|n| BString::new(n).unwrap()),
        };
        let mut web = entry("web", Ipv4Addr::new(10, 43, 0, 9), &[a]);
        web.ports = BVec::from_vec(vec![
            port(80, Protocol::Tcp, Some("http")),
            port(81, Protocol::Tcp, None),
        ])
        .unwrap();
        let mut db = entry("shop_db", Ipv4Addr::UNSPECIFIED, &[]);
        db.ports = BVec::from_vec(vec![port(53, Protocol::Udp, Some("dns"))]).unwrap();
        db.endpoints = BVec::from_vec(vec![
            ServiceEndpoint {
                ip: a,
                target_ports: BVec::from_vec(vec![5353]).unwrap(),
            },
            ServiceEndpoint {
                ip: b,
                // The pod lacks the named port.
                target_ports: BVec::from_vec(vec![0]).unwrap(),
            },
        ])
        .unwrap();
        let table = ServiceTable::new(BVec::from_vec(vec![web, db]).unwrap(), BVec::new()).unwrap();
        let n = Names::of(&table);
        assert_eq!(
            n.lookup("_HTTP._tcp.web.default.svc.cluster.local."),
            Lookup::Srv(&[Srv {
                port: 80,
                target: "web.default.svc.cluster.local.".into(),
                addr: Ipv4Addr::new(10, 43, 0, 9),
            }])
        );
        assert_eq!(
            n.lookup("_http._udp.web.default.svc.cluster.local."),
            Lookup::Missing
        );
        assert_eq!(
            n.lookup("_dns._udp.db.shop.svc.cluster.local."),
            Lookup::Srv(&[Srv {
                port: 5353,
                target: "10-42-1-5.db.shop.svc.cluster.local.".into(),
                addr: a,
            }])
        );
    }
}
