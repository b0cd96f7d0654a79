//! Services: allocation through apply, stable across a restart, freed by delete, refused
//! whole on a collision; Endpoints and the LoadBalancer's addresses in the API's view.

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

#[tokio::test(start_paused = true)]
async fn endpoints_follow_ready_pods_and_a_load_balancer_shows_ready_nodes() {
    let mut h = two_nodes();
    let svc = "apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  type: LoadBalancer
  selector: {app: web}
  ports:
  - {name: http, port: 80, targetPort: 8080}
";
    h.apply(&format!("{}---\n{svc}", deployment("web", 1, "100m")))
        .unwrap();
    let get_eps = |h: &mut Harness| match h.api(ApiOp::Get {
        kind: ResourceKind::Endpoints,
        name: Some("web".into()),
    }) {
        Ok(ApiReply::Object(ApiObject::Endpoints(e))) => e,
        other => panic!("not endpoints: {other:?}"),
    };
    // Scheduled but not yet running: no endpoints.
    let msgs = h.drain();
    assert!(get_eps(&mut h).subsets.is_empty());
    let (node, d) = ["pi-1", "pi-2"]
        .into_iter()
        .find_map(|n| {
            desired_for(&msgs, n)
                .filter(|d| !d.pods.is_empty())
                .map(|d| (n, d))
        })
        .expect("the pod is placed");
    h.send(node, Body::Status(running_status(&d, d.generation)));
    let eps = get_eps(&mut h);
    assert_eq!(eps.addresses_for(Some("http")), ["10.42.1.5:8080"]);
    assert_eq!(eps.subsets[0].addresses[0].node_name.as_deref(), Some(node));

    // Both nodes said Hello from 192.168.1.10: the LoadBalancer lists the Ready ones.
    let lb = get_service(&mut h, "web").unwrap();
    let ingress: Vec<_> = lb
        .status
        .load_balancer
        .ingress
        .iter()
        .map(|i| i.ip.as_str())
        .collect();
    assert_eq!(ingress, ["192.168.1.10", "192.168.1.10"]);

    // Scaled to zero, the terminating pod leaves the endpoints at once.
    h.api(ApiOp::Scale {
        name: "web".into(),
        replicas: 0,
    })
    .unwrap();
    assert!(get_eps(&mut h).subsets.is_empty());
}

#[tokio::test(start_paused = true)]
async fn services_are_watched_with_their_addresses() {
    use crate::contract::watch::Change;
    use crate::core::watch::{WatchRequest, Watched};
    let mut h = two_nodes();
    let (reply, mut rx) = tokio::sync::oneshot::channel();
    h.core.handle(Event::Watch(WatchRequest {
        what: Watched::Kind(ResourceKind::Service),
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
    h.send("pi-1", hello(4000));
    h.send("pi-2", hello(4000));
    let sent = tables(&h.drain());
    let nodes: Vec<&str> = sent.iter().map(|(n, _)| n.as_str()).collect();
    // pi-1 again when pi-2's route joined the table.
    assert_eq!(nodes, ["pi-1", "pi-1", "pi-2"]);
    assert!(sent[2].1.services.is_empty());
    assert_eq!(sent[2].1.routes.len(), 2, "every node's pod route");
    assert_eq!(sent[1].1, sent[2].1);

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

    // The pod is Ready: a new table to both nodes, and no pod spec sent again.
    let (node, d) = ["pi-1", "pi-2"]
        .into_iter()
        .find_map(|n| {
            desired_for(&msgs, n)
                .filter(|d| !d.pods.is_empty())
                .map(|d| (n, d))
        })
        .expect("the pod is placed");
    h.send(node, Body::Status(running_status(&d, d.generation)));
    let msgs = h.drain();
    let sent = tables(&msgs);
    assert_eq!(sent.len(), 2);
    let eps = &sent[0].1.services[0].endpoints;
    assert_eq!(eps.len(), 1);
    assert_eq!(eps[0].ip.to_string(), "10.42.1.5");
    assert_eq!(&eps[0].target_ports[..], [8080]);
    assert!(!msgs.iter().any(|m| matches!(m.body, Body::Desired(_))));

    // A change elsewhere leaves the table as it was: nothing is sent.
    h.apply("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: game}\ndata: {a: \"1\"}\n")
        .unwrap();
    assert!(tables(&h.drain()).is_empty());
    // A reconnecting agent gets it again, and only it.
    h.send("pi-1", hello(4000));
    let sent = tables(&h.drain());
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].0, "pi-1");
    assert_eq!(sent[0].1.services[0].endpoints.len(), 1);

    // A v4 agent is never sent one; its route goes to the others.
    h.core.handle(Event::Inbound {
        node: nn("old"),
        body: hello(4000),
        proto: 4,
    });
    let sent = tables(&h.drain());
    let nodes: Vec<&str> = sent.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(nodes, ["pi-1", "pi-2"]);
    assert_eq!(sent[0].1.routes.len(), 3);
}
