//! Services: allocation through apply, stable across a restart, freed by delete, refused
//! whole on a collision; Endpoints and the LoadBalancer's addresses in the API's view; the
//! Service table (sent on change, coalesced per window) and nodes' pod ranges (a range
//! another node holds is refused, a pod IP outside its node's range is no endpoint).

use super::*;

const WEB: &str = "apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  type: NodePort
  selector: {app: web}
  ports:
  - {port: 80, targetPort: 8080}
";
const DB: &str = "apiVersion: v1
kind: Service
metadata: {name: db}
spec:
  selector: {app: db}
  ports:
  - {port: 6379}
";

fn get_service(h: &mut Harness, name: &str) -> Result<api::Service, ApiError> {
    match h.api(ApiOp::Get {
        kind: ResourceKind::Service,
        name: Some(name.into()),
    })? {
        ApiReply::Object(ApiObject::Service(s)) => Ok(s),
        other => panic!("not a service: {other:?}"),
    }
}

/// A Hello from a node with pod range 10.42.`i`.0/24 at 192.168.1.`10 + i`.
fn hello_net(i: u8) -> Body {
    hello_at(&format!("10.42.{i}.0/24"), &format!("192.168.1.{}", 10 + i))
}

fn hello_at(cidr: &str, address: &str) -> Body {
    let Body::Hello(mut h) = hello(4000) else {
        unreachable!("hello() is a Hello")
    };
    h.pod_cidr = BString::new(cidr).unwrap();
    h.address = Some(address.parse().unwrap());
    Body::Hello(h)
}

/// Nodes pi-1 and pi-2 with their own pod ranges (10.42.1.0/24, 10.42.2.0/24).
fn two_net_nodes() -> Harness {
    let mut h = Harness::new(Arc::new(MemStore::new()));
    h.send("pi-1", hello_net(1));
    h.send("pi-2", hello_net(2));
    h
}

/// `running_status` with each pod at `ip`.
fn running_at(d: &DesiredState, ip: &str) -> Body {
    let mut st = running_status(d, d.generation);
    let mut pods = st.pods.to_vec();
    for p in &mut pods {
        p.pod_ip = Some(ip.parse().unwrap());
    }
    st.pods = BVec::from_vec(pods).unwrap();
    Body::Status(st)
}

/// The node a pod was placed on among `msgs`, with its desired state.
fn placed(msgs: &[Outbound]) -> (&'static str, DesiredState) {
    ["pi-1", "pi-2"]
        .into_iter()
        .find_map(|n| {
            desired_for(msgs, n)
                .filter(|d| !d.pods.is_empty())
                .map(|d| (n, d))
        })
        .expect("the pod is placed")
}

/// Lets the Service table window pass and ticks: what was held back goes out.
async fn after_window(h: &mut Harness) -> Vec<Outbound> {
    tokio::time::advance(crate::core::services::SERVICE_TABLE_WINDOW).await;
    h.core.handle(Event::Tick);
    h.drain()
}

fn addresses(s: &api::Service) -> (String, Vec<Option<u16>>) {
    (
        s.spec.cluster_ip.clone(),
        s.spec.ports.iter().map(|p| p.node_port).collect(),
    )
}

#[tokio::test(start_paused = true)]
async fn services_keep_their_addresses_across_reapply_and_restart_and_free_them_on_delete() {
    let mut h = two_nodes();
    let applied = h.apply(&format!("{WEB}---\n{DB}")).unwrap();
    assert!(applied.iter().all(|a| a.action == ApplyAction::Created));
    let web = get_service(&mut h, "web").unwrap();
    assert_eq!(addresses(&web), ("10.43.0.2".into(), vec![Some(30000)]));
    assert_eq!(
        get_service(&mut h, "db").unwrap().spec.cluster_ip,
        "10.43.0.3"
    );
    assert_eq!(h.apply(WEB).unwrap()[0].action, ApplyAction::Unchanged);

    // A restarted coordinator reads the same addresses back and allocates around them.
    let store = h.store.clone();
    drop(h);
    let mut h = Harness::new(store);
    assert_eq!(
        addresses(&get_service(&mut h, "web").unwrap()),
        addresses(&web)
    );
    assert_eq!(h.apply(WEB).unwrap()[0].action, ApplyAction::Unchanged);
    let third = DB.replace("name: db", "name: cache");
    h.apply(&third).unwrap();
    assert_eq!(
        get_service(&mut h, "cache").unwrap().spec.cluster_ip,
        "10.43.0.4"
    );

    // Delete frees them: a new Service may take web's nodePort and address.
    h.api(ApiOp::Delete {
        kind: ResourceKind::Service,
        name: "web".into(),
    })
    .unwrap();
    assert!(matches!(
        get_service(&mut h, "web"),
        Err(ApiError::NotFound(_))
    ));
    let taker = WEB
        .replace("name: web", "name: taker")
        .replace("targetPort: 8080", "targetPort: 8080, nodePort: 30000");
    h.apply(&taker).unwrap();
    assert_eq!(
        addresses(&get_service(&mut h, "taker").unwrap()),
        ("10.43.0.2".into(), vec![Some(30000)])
    );
}

#[tokio::test(start_paused = true)]
async fn a_collision_refuses_the_whole_apply() {
    let mut h = two_nodes();
    let a = WEB.replace("targetPort: 8080", "targetPort: 8080, nodePort: 31000");
    let b = a.replace("name: web", "name: other");
    let err = h.apply(&format!("{a}---\n{b}---\n{DB}")).unwrap_err();
    assert_eq!(
        err.to_string(),
        "service \"other\": spec.ports[0].nodePort: provided port is already \
         allocated to service \"web\"",
    );
    assert!(matches!(
        get_service(&mut h, "web"),
        Err(ApiError::NotFound(_))
    ));
    assert!(matches!(
        get_service(&mut h, "db"),
        Err(ApiError::NotFound(_))
    ));
    // A given clusterIP cannot change on re-apply.
    h.apply(DB).unwrap();
    let moved = DB.replace("spec:\n", "spec:\n  clusterIP: 10.43.5.5\n");
    assert!(matches!(h.apply(&moved), Err(ApiError::Conflict(m)) if m.contains("immutable")));
}

/// A LoadBalancer in front of the `web` pods.
const LB_WEB: &str = "apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  type: LoadBalancer
  selector: {app: web}
  ports:
  - {name: http, port: 80, targetPort: 8080}
";

#[tokio::test(start_paused = true)]
async fn endpoints_follow_ready_pods_and_a_load_balancer_shows_ready_nodes() {
    let mut h = two_net_nodes();
    h.apply(&format!("{}---\n{LB_WEB}", deployment("web", 1, "100m")))
        .unwrap();
    // Scheduled but not yet running: no endpoints.
    let msgs = h.drain();
    assert!(get_eps(&mut h).subsets.is_empty());
    let (node, d) = placed(&msgs);
    let ip = if node == "pi-1" {
        "10.42.1.5"
    } else {
        "10.42.2.5"
    };
    h.send(node, running_at(&d, ip));
    let eps = get_eps(&mut h);
    assert_eq!(eps.addresses_for(Some("http")), [format!("{ip}:8080")]);
    assert_eq!(eps.subsets[0].addresses[0].node_name.as_deref(), Some(node));

    // The LoadBalancer lists the Ready nodes' addresses.
    let lb = get_service(&mut h, "web").unwrap();
    let ingress: Vec<_> = lb
        .status
        .load_balancer
        .ingress
        .iter()
        .map(|i| i.ip.as_str())
        .collect();
    assert_eq!(ingress, ["192.168.1.11", "192.168.1.12"]);

    // Scaled to zero, the terminating pod leaves the endpoints at once.
    h.api(ApiOp::Scale {
        name: "web".into(),
        replicas: 0,
    })
    .unwrap();
    assert!(get_eps(&mut h).subsets.is_empty());
}

/// With k3s's `enablelb` label (or Baton's) on some nodes, only they serve LoadBalancer
/// ports: the API lists their addresses, and the table sent to every node names them.
#[tokio::test(start_paused = true)]
async fn a_load_balancer_is_served_by_the_labelled_nodes_only_when_some_are() {
    let mut h = Harness::new(Arc::new(MemStore::new()));
    h.send("pi-1", hello_net(1));
    let Body::Hello(mut labelled) = hello_net(2) else {
        unreachable!("hello_net() is a Hello")
    };
    labelled.labels = BVec::from_vec(vec![baton_proto::Label {
        key: BString::new("svccontroller.k3s.cattle.io/enablelb").unwrap(),
        value: BString::new("true").unwrap(),
    }])
    .unwrap();
    h.send("pi-2", Body::Hello(labelled));
    h.apply(LB_WEB).unwrap();
    let ingress = |h: &mut Harness| -> Vec<String> {
        let s = get_service(h, "web").unwrap();
        s.status
            .load_balancer
            .ingress
            .iter()
            .map(|i| i.ip.clone())
            .collect()
    };
    assert_eq!(ingress(&mut h), ["192.168.1.12"]);
    h.drain();
    let sent = tables(&after_window(&mut h).await);
    let lb: Vec<_> = sent.iter().map(|(_, t)| t.lb_nodes.clone()).collect();
    assert!(!lb.is_empty());
    for l in lb {
        assert_eq!(
            l.as_deref(),
            Some(&["192.168.1.12".parse::<std::net::Ipv4Addr>().unwrap()][..])
        );
    }

    // Without the label anywhere (pi-2 says hello without it), every node serves it again.
    h.send("pi-2", hello_net(2));
    assert_eq!(ingress(&mut h), ["192.168.1.11", "192.168.1.12"]);
    let sent = tables(&after_window(&mut h).await);
    assert!(!sent.is_empty() && sent.iter().all(|(_, t)| t.lb_nodes.is_none()));
}

fn get_eps(h: &mut Harness) -> api::Endpoints {
    match h.api(ApiOp::Get {
        kind: ResourceKind::Endpoints,
        name: Some("web".into()),
    }) {
        Ok(ApiReply::Object(ApiObject::Endpoints(e))) => e,
        other => panic!("not endpoints: {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn services_are_watched_with_their_addresses() {
    use crate::contract::watch::Change;
    use crate::core::watch::{WatchRequest, Watched};
    let mut h = two_nodes();
    let (reply, mut rx) = tokio::sync::oneshot::channel();
    h.core.handle(Event::Watch(WatchRequest {
        what: Watched::Kind(ResourceKind::Service),
        namespace: None,
        since: None,
        reply,
    }));
    let mut w = rx.try_recv().expect("the core answers").unwrap();
    h.apply(WEB).unwrap();
    h.api(ApiOp::Delete {
        kind: ResourceKind::Service,
        name: "web".into(),
    })
    .unwrap();
    let mut seen = Vec::new();
    while let Ok(e) = w.live.try_recv() {
        seen.push(e);
    }
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(
        (seen[0].change, seen[1].change),
        (Change::Added, Change::Deleted)
    );
    let Some(ApiObject::Service(s)) = &seen[0].object else {
        panic!("a service: {:?}", seen[0]);
    };
    assert_eq!(s.spec.cluster_ip, "10.43.0.2");
}

/// The Service tables among `msgs`, by node.
fn tables(msgs: &[Outbound]) -> Vec<(String, baton_proto::ServiceTable)> {
    msgs.iter()
        .filter_map(|m| match &m.body {
            Body::ServiceTable(t) => {
                assert!(!m.retain, "a table goes on the control topic, not retained");
                Some((m.node.as_str().to_owned(), t.clone()))
            }
            _ => None,
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn nodes_are_sent_the_service_table_only_when_it_changes() {
    let mut h = Harness::new(Arc::new(MemStore::new()));
    h.send("pi-1", hello_net(1));
    h.send("pi-2", hello_net(2));
    let sent = tables(&h.drain());
    let nodes: Vec<&str> = sent.iter().map(|(n, _)| n.as_str()).collect();
    // The first table goes at once; pi-2's route changed it within the window: held.
    assert_eq!(nodes, ["pi-1"]);
    let sent = tables(&after_window(&mut h).await);
    let nodes: Vec<&str> = sent.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(nodes, ["pi-1", "pi-2"]);
    assert!(sent[1].1.services.is_empty());
    assert_eq!(sent[1].1.routes.len(), 2, "every node's pod route");
    assert_eq!(sent[0].1, sent[1].1);

    let svc = "apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  type: NodePort
  sessionAffinity: ClientIP
  selector: {app: web}
  ports:
  - {name: http, port: 80, targetPort: 8080}
";
    // The window has passed: a change goes out at once.
    tokio::time::advance(crate::core::services::SERVICE_TABLE_WINDOW).await;
    h.apply(&format!("{}---\n{svc}", deployment("web", 1, "100m")))
        .unwrap();
    let msgs = h.drain();
    let sent = tables(&msgs);
    assert_eq!(sent.len(), 2, "{sent:?}");
    let t = &sent[0].1;
    t.check().unwrap();
    let web = &t.services[0];
    assert_eq!(web.name.as_str(), "web");
    assert_eq!(
        web.vip.to_string(),
        get_service(&mut h, "web").unwrap().spec.cluster_ip
    );
    assert_eq!(web.affinity_secs, 10800);
    assert_eq!(web.ports[0].port, 80);
    assert!(web.ports[0].node_port.is_some());
    assert!(web.endpoints.is_empty(), "not running yet");

    // The pod is Ready (right after): a new table to both nodes when the window ends, and
    // no pod spec sent again.
    let (node, d) = placed(&msgs);
    let ip = if node == "pi-1" {
        "10.42.1.5"
    } else {
        "10.42.2.5"
    };
    h.send(node, running_at(&d, ip));
    assert!(tables(&h.drain()).is_empty(), "held back");
    let msgs = after_window(&mut h).await;
    let sent = tables(&msgs);
    assert_eq!(sent.len(), 2);
    let eps = &sent[0].1.services[0].endpoints;
    assert_eq!(eps.len(), 1);
    assert_eq!(eps[0].ip.to_string(), ip);
    assert_eq!(&eps[0].target_ports[..], [8080]);
    assert!(!msgs.iter().any(|m| matches!(m.body, Body::Desired(_))));

    // A change elsewhere leaves the table as it was: nothing is sent.
    h.apply("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: game}\ndata: {a: \"1\"}\n")
        .unwrap();
    assert!(tables(&h.drain()).is_empty());
    assert!(tables(&after_window(&mut h).await).is_empty());
    // A reconnecting agent gets it again at once (the table did not change), and only it.
    h.send("pi-1", hello_net(1));
    let sent = tables(&h.drain());
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].0, "pi-1");
    assert_eq!(sent[0].1.services[0].endpoints.len(), 1);

    // A v4 agent is never sent one; its route goes to the others.
    h.core.handle(Event::Inbound {
        node: nn("old"),
        body: hello_net(3),
        proto: 4,
    });
    let sent = tables(&h.drain());
    let nodes: Vec<&str> = sent.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(nodes, ["pi-1", "pi-2"]);
    assert_eq!(sent[0].1.routes.len(), 3);
}

#[tokio::test(start_paused = true)]
async fn fifty_joins_in_one_window_cost_one_table_per_node() {
    let mut h = Harness::new(Arc::new(MemStore::new()));
    h.send("n-0", hello_net(100));
    assert_eq!(tables(&h.drain()).len(), 1, "the first table goes at once");
    // A cold start: 50 more nodes within the window, each changing the table's routes.
    for i in 1..=50u8 {
        h.send(&format!("n-{i}"), hello_net(100 + i));
    }
    let sent = tables(&h.drain());
    assert!(sent.is_empty(), "held back: {} sent", sent.len());
    // Nothing before the window ends...
    tokio::time::advance(crate::core::services::SERVICE_TABLE_WINDOW / 2).await;
    h.core.handle(Event::Tick);
    assert!(tables(&h.drain()).is_empty());
    // ...then one table per node, with every route (51 sends, not 51*52/2).
    let sent = tables(&after_window(&mut h).await);
    assert_eq!(sent.len(), 51);
    let nodes: BTreeSet<&str> = sent.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(nodes.len(), 51, "one each");
    assert!(sent.iter().all(|(_, t)| t.routes.len() == 51));
    assert!(tables(&after_window(&mut h).await).is_empty());
}

#[tokio::test(start_paused = true)]
async fn the_run_loop_sends_a_held_table_when_it_is_due_without_a_tick() {
    let (tx, mut out) = mpsc::channel(64);
    let core = Core::new(Arc::new(MemStore::new()), tx, TIMEOUT).unwrap();
    let (events, rx) = mpsc::channel(64);
    let task = tokio::spawn(core.run(rx));
    for i in 1..=3u8 {
        events
            .send(Event::Inbound {
                node: nn(&format!("pi-{i}")),
                body: hello_net(i),
                proto: baton_proto::PROTO_VERSION,
            })
            .await
            .unwrap();
    }
    let start = Instant::now();
    let mut last = HashMap::new();
    while last.len() < 3 || last.values().any(|n: &usize| *n < 3) {
        let m = tokio::time::timeout(Duration::from_secs(5), out.recv())
            .await
            .expect("the held table goes out without a tick")
            .unwrap();
        if let Body::ServiceTable(t) = m.body {
            last.insert(m.node.to_string(), t.routes.len());
        }
    }
    assert!(start.elapsed() <= crate::core::services::SERVICE_TABLE_WINDOW);
    drop(events);
    task.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_table_dropped_on_a_full_queue_is_sent_again_after_the_window() {
    // Room for one message: the Hello's desired state takes it, the table is dropped.
    let (tx, mut out) = mpsc::channel(1);
    let mut core = Core::new(Arc::new(MemStore::new()), tx, TIMEOUT).unwrap();
    core.handle(Event::Inbound {
        node: nn("pi-1"),
        body: hello_net(1),
        proto: baton_proto::PROTO_VERSION,
    });
    let first = out.try_recv().unwrap();
    assert!(matches!(first.body, Body::Desired(_)), "{first:?}");
    assert!(out.try_recv().is_err(), "the table was dropped");
    tokio::time::advance(crate::core::services::SERVICE_TABLE_WINDOW).await;
    core.handle(Event::Tick);
    let again = out.try_recv().expect("sent again");
    assert!(matches!(again.body, Body::ServiceTable(_)), "{again:?}");
}

fn node_events(h: &mut Harness, node: &str) -> Vec<api::Event> {
    let ApiReply::Events(ev) = h
        .api(ApiOp::Events {
            object: Some(format!("node/{node}")),
        })
        .unwrap()
    else {
        panic!("not events")
    };
    ev
}

#[tokio::test(start_paused = true)]
async fn a_node_claiming_a_held_range_gets_no_route_and_says_who_holds_it() {
    let store = Arc::new(MemStore::new());
    let mut h = Harness::new(store.clone());
    h.send("pi-1", hello_net(1));
    h.send("pi-2", hello_net(2));
    // pi-3 claims pi-1's range; pi-4 one over the Services' addresses.
    h.send("pi-3", hello_at("10.42.1.0/24", "192.168.1.13"));
    h.send("pi-4", hello_at("10.43.0.0/24", "192.168.1.14"));
    after_window(&mut h).await;
    let (n3, n1) = (h.node("pi-3"), h.node("pi-1"));
    assert!(n1.status.pod_cidr_held && n1.status.pod_cidr_refused.is_none());
    assert!(!n3.status.pod_cidr_held);
    let why = n3.status.pod_cidr_refused.clone().expect("refused");
    assert!(why.contains("held by node pi-1"), "{why}");
    let ev = node_events(&mut h, "pi-3");
    let refused: Vec<_> = ev.iter().filter(|e| e.reason == "PodCIDRRefused").collect();
    assert_eq!(refused.len(), 1, "{ev:?}");
    assert!(
        refused[0].message.contains("pi-1"),
        "{}",
        refused[0].message
    );
    assert!(h
        .node("pi-4")
        .status
        .pod_cidr_refused
        .unwrap()
        .contains("service CIDR"));

    // The table routes the holders only.
    tokio::time::advance(crate::core::services::SERVICE_TABLE_WINDOW).await;
    h.send("pi-1", hello_net(1));
    let sent = tables(&h.drain());
    let routes: Vec<String> = sent[0]
        .1
        .routes
        .iter()
        .map(|r| format!("{} via {}", r.cidr, r.via))
        .collect();
    assert_eq!(
        routes,
        [
            "10.42.1.0/24 via 192.168.1.11",
            "10.42.2.0/24 via 192.168.1.12"
        ]
    );

    // pi-3 saying Hello again (or the coordinator restarting) changes nothing: the
    // first holder keeps it, and no second event.
    h.send("pi-3", hello_at("10.42.1.0/24", "192.168.1.13"));
    let mut h = Harness::new(store);
    h.send("pi-3", hello_at("10.42.1.0/24", "192.168.1.13"));
    h.send("pi-1", hello_net(1));
    assert!(h.node("pi-1").status.pod_cidr_held);
    assert!(!h.node("pi-3").status.pod_cidr_held);
    let count = |h: &mut Harness| {
        node_events(h, "pi-3")
            .iter()
            .filter(|e| e.reason == "PodCIDRRefused")
            .count()
    };
    assert_eq!(count(&mut h), 1);

    // The holder moves to another range: pi-3 is granted its claim.
    h.send("pi-1", hello_net(9));
    assert!(h.node("pi-1").status.pod_cidr_held);
    let n3 = h.node("pi-3");
    assert!(n3.status.pod_cidr_held && n3.status.pod_cidr_refused.is_none());
    let reasons = h.reasons("node/pi-3");
    assert_eq!(reasons.last().map(String::as_str), Some("PodCIDRGranted"));
}

#[tokio::test(start_paused = true)]
async fn a_pod_reporting_an_ip_outside_its_nodes_range_is_no_endpoint_and_said_once() {
    let mut h = two_net_nodes();
    h.apply(&format!("{}---\n{WEB}", deployment("web", 1, "100m")))
        .unwrap();
    let (node, d) = placed(&h.drain());
    let other = if node == "pi-1" {
        "10.42.2.7"
    } else {
        "10.42.1.7"
    };
    let pod = d.pods[0].name.to_string();
    h.send(node, running_at(&d, other));
    assert!(
        get_eps(&mut h).subsets.is_empty(),
        "posing as the other node's pod"
    );
    let outside = |h: &mut Harness| {
        h.reasons(&format!("pod/{pod}"))
            .iter()
            .filter(|r| *r == "PodIPOutsideNodeCIDR")
            .count()
    };
    assert_eq!(outside(&mut h), 1);
    // The same report again (a full status repeats it): no second event.
    h.send(node, running_at(&d, other));
    assert_eq!(outside(&mut h), 1);
    // Its own range's address: an endpoint.
    let own = if node == "pi-1" {
        "10.42.1.7"
    } else {
        "10.42.2.7"
    };
    h.send(node, running_at(&d, own));
    assert_eq!(get_eps(&mut h).addresses_for(None), [format!("{own}:8080")]);
    assert_eq!(outside(&mut h), 1);
}
