//! Services in the coordinator (issue 15 part 1) on the real lab: the Kubernetes guestbook
//! (redis leader and followers, a LoadBalancer frontend; kubernetes.io's "Deploying PHP
//! Guestbook application with Redis", all in one file) applies with only its images
//! swapped, `get svc` shows kubectl's columns with the allocated addresses, `describe
//! service` lists exactly the Ready pods' `IP:port`, scaling down updates them, a
//! coordinator restart keeps every ClusterIP and nodePort, and `delete service` frees
//! them.
//!
//! Traffic (issue 15 part 2): a client pod reaches a NodePort Service's ClusterIP and gets
//! answers from both backends on both nodes (the proxy's DNAT and the host-gw routes), a
//! backend reaches itself through it (hairpin), the hub (the lab's host) reaches the
//! NodePort on every node, an agent restart keeps the VIP answering, a node claiming
//! another's pod range is refused it (no route, `describe node` names the holder), and with
//! no endpoints left a connection is refused at once, not left hanging.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use baton_e2e::fleet::{
    is_ready, is_running, node_of, owned_pods, pod_name, uid, wait_pods, EchoDeployment,
};
use baton_e2e::{items, wait_for, Broker, Lab};
use serde_json::Value;

const LONG: Duration = Duration::from_secs(240);

/// The guestbook as the Kubernetes tutorial writes it, with `IMAGE` for its images.
const GUESTBOOK: &str = r#"# SOURCE: https://cloud.google.com/kubernetes-engine/docs/tutorials/guestbook
apiVersion: apps/v1
kind: Deployment
metadata:
  name: redis-leader
  labels:
    app: redis
    role: leader
    tier: backend
spec:
  replicas: 1
  selector:
    matchLabels:
      app: redis
  template:
    metadata:
      labels:
        app: redis
        role: leader
        tier: backend
    spec:
      containers:
      - name: leader
        image: "IMAGE"
        resources:
          requests:
            cpu: 100m
            memory: 100Mi
        ports:
        - containerPort: 6379
---
apiVersion: v1
kind: Service
metadata:
  name: redis-leader
  labels:
    app: redis
    role: leader
    tier: backend
spec:
  ports:
  - port: 6379
    targetPort: 6379
  selector:
    app: redis
    role: leader
    tier: backend
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: redis-follower
  labels:
    app: redis
    role: follower
    tier: backend
spec:
  replicas: 2
  selector:
    matchLabels:
      app: redis
  template:
    metadata:
      labels:
        app: redis
        role: follower
        tier: backend
    spec:
      containers:
      - name: follower
        image: IMAGE
        resources:
          requests:
            cpu: 100m
            memory: 100Mi
        ports:
        - containerPort: 6379
---
apiVersion: v1
kind: Service
metadata:
  name: redis-follower
  labels:
    app: redis
    role: follower
    tier: backend
spec:
  ports:
    # the port that this service should serve on
  - port: 6379
  selector:
    app: redis
    role: follower
    tier: backend
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: frontend
spec:
  replicas: 3
  selector:
    matchLabels:
        app: guestbook
        tier: frontend
  template:
    metadata:
      labels:
        app: guestbook
        tier: frontend
    spec:
      containers:
      - name: php-redis
        image: IMAGE
        env:
        - name: GET_HOSTS_FROM
          value: "dns"
        resources:
          requests:
            cpu: 100m
            memory: 100Mi
        ports:
        - containerPort: 80
---
apiVersion: v1
kind: Service
metadata:
  name: frontend
  labels:
    app: guestbook
    tier: frontend
spec:
  # if your cluster supports it, uncomment the following to automatically create
  # an external load-balanced IP for the frontend service.
  type: LoadBalancer
  ports:
    # the port that this service should serve on
  - port: 80
  selector:
    app: guestbook
    tier: frontend
"#;

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn guestbook_services_get_addresses_and_endpoints() -> Result<()> {
    let mut lab = Lab::start("svc", 2, Broker::Embedded)?;
    let r = scenario(&mut lab);
    if r.is_err() {
        lab.dump_logs();
    }
    r
}

/// `describe service NAME`'s Endpoints, as a set of `ip:port`.
fn described_endpoints(lab: &Lab, name: &str) -> Result<BTreeSet<String>> {
    let text = stdout(&lab.baton(&["describe", "service", name])?);
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("Endpoints:"))
        .with_context(|| format!("no Endpoints line in\n{text}"))?
        .trim();
    Ok(match line {
        "<none>" => BTreeSet::new(),
        l => l.split(',').map(str::to_owned).collect(),
    })
}

/// The Ready, non-terminating pods of a Deployment as `ip:port`.
fn ready_endpoints(lab: &Lab, owner: &str, port: u16) -> Result<BTreeSet<String>> {
    Ok(owned_pods(lab, owner)?
        .iter()
        .filter(|p| is_ready(p))
        .filter_map(|p| {
            p["status"]["podIP"]
                .as_str()
                .map(|ip| format!("{ip}:{port}"))
        })
        .collect())
}

/// Every Service's ClusterIP and nodePorts, by name.
fn addresses(lab: &Lab) -> Result<Vec<(String, String, Vec<Value>)>> {
    let list = lab.get_json(&["get", "svc"])?;
    Ok(items(&list)
        .iter()
        .map(|s| {
            let ports = s["spec"]["ports"].as_array().cloned().unwrap_or_default();
            (
                s["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                s["spec"]["clusterIP"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                ports.iter().map(|p| p["nodePort"].clone()).collect(),
            )
        })
        .collect())
}

fn scenario(lab: &mut Lab) -> Result<()> {
    let manifest = GUESTBOOK.replace("IMAGE", &format!("{}/baton/http-echo:1", lab.registry()));
    let applied = stdout(&lab.apply(&manifest)?);
    for s in ["redis-leader", "redis-follower", "frontend"] {
        ensure!(
            applied.contains(&format!("service/{s} created")),
            "{applied}"
        );
    }
    wait_pods(lab, "frontend", 3, LONG, "3 Ready frontends", is_ready)?;
    wait_pods(
        lab,
        "redis-follower",
        2,
        LONG,
        "2 Ready followers",
        is_ready,
    )?;

    // kubectl's columns, with addresses from 10.43.0.0/16 (.1 kept back) and a nodePort.
    let table = stdout(&lab.baton(&["get", "svc"])?);
    let mut lines = table.lines();
    let header: Vec<&str> = lines
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    ensure!(
        header
            == [
                "NAME",
                "TYPE",
                "CLUSTER-IP",
                "EXTERNAL-IP",
                "PORT(S)",
                "AGE"
            ],
        "{table}"
    );
    let row = |name: &str| -> Vec<String> {
        table
            .lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .unwrap_or_default()
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    };
    let leader = row("redis-leader");
    ensure!(leader[1] == "ClusterIP" && leader[3] == "<none>", "{table}");
    ensure!(leader[4] == "6379/TCP", "{table}");
    let frontend = row("frontend");
    ensure!(frontend[1] == "LoadBalancer", "{table}");
    let follower = row("redis-follower");
    let ips: BTreeSet<&str> = [&leader[2], &follower[2], &frontend[2]]
        .into_iter()
        .map(String::as_str)
        .collect();
    ensure!(
        ips.len() == 3
            && ips
                .iter()
                .all(|ip| ip.starts_with("10.43.0.") && *ip != "10.43.0.1"),
        "three distinct ClusterIPs: {table}"
    );
    let node_port = frontend[4]
        .strip_prefix("80:")
        .and_then(|p| p.strip_suffix("/TCP"))
        .and_then(|p| p.parse::<u16>().ok())
        .with_context(|| format!("PORT(S) 80:<nodePort>/TCP: {table}"))?;
    ensure!((30000..=32767).contains(&node_port), "{table}");
    // EXTERNAL-IP: the Ready nodes' addresses, as k3s's ServiceLB shows them.
    let nodes = lab.get_json(&["get", "nodes"])?;
    let mut node_ips: Vec<String> = items(&nodes)
        .iter()
        .filter_map(|n| n["status"]["address"].as_str().map(str::to_owned))
        .collect();
    node_ips.sort();
    let shown = if node_ips.is_empty() {
        "<pending>".to_owned()
    } else {
        let mut v: Vec<&str> = frontend[3].split(',').collect();
        v.sort();
        v.join(",")
    };
    let want = if node_ips.is_empty() {
        "<pending>".to_owned()
    } else {
        node_ips.join(",")
    };
    ensure!(
        shown == want,
        "EXTERNAL-IP {} for nodes {node_ips:?}",
        frontend[3]
    );

    // describe lists exactly the Ready pods, at the targetPort (defaulted to port).
    let want = ready_endpoints(lab, "frontend", 80)?;
    ensure!(want.len() == 3, "{want:?}");
    ensure!(described_endpoints(lab, "frontend")? == want);
    ensure!(
        described_endpoints(lab, "redis-follower")?
            == ready_endpoints(lab, "redis-follower", 6379)?
    );
    // The selector role=leader keeps the followers out of the leader's endpoints.
    ensure!(
        described_endpoints(lab, "redis-leader")? == ready_endpoints(lab, "redis-leader", 6379)?
    );
    let eps = stdout(&lab.baton(&["get", "endpoints", "frontend"])?);
    ensure!(
        eps.starts_with("NAME") && eps.contains("frontend "),
        "{eps}"
    );

    // Scaled down, the endpoints follow at once (terminating pods leave them).
    lab.baton(&["scale", "deployment", "frontend", "--replicas", "1"])?;
    let left = wait_for("one frontend endpoint", LONG, || {
        let now = described_endpoints(lab, "frontend")?;
        Ok((now.len() == 1).then_some(now))
    })?;
    ensure!(left.is_subset(&want), "{left:?} not among {want:?}");
    ensure!(left == ready_endpoints(lab, "frontend", 80)?, "{left:?}");

    // A restarted coordinator keeps every ClusterIP and nodePort.
    let before = addresses(lab)?;
    ensure!(before.len() == 3, "{before:?}");
    lab.kill_coordinator();
    lab.start_coordinator()?;
    ensure!(
        addresses(lab)? == before,
        "addresses changed across a restart"
    );
    let again = stdout(&lab.apply(&manifest)?);
    ensure!(
        again.contains("service/frontend unchanged"),
        "re-apply after restart: {again}"
    );

    // delete frees the address and the nodePort: a new Service may ask for both.
    let frontend_ip = before
        .iter()
        .find(|(n, ..)| n == "frontend")
        .map(|(_, ip, _)| ip.clone())
        .context("frontend listed")?;
    let taker = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: taker}}\nspec:\n  type: NodePort\n  \
         clusterIP: {frontend_ip}\n  selector: {{app: guestbook}}\n  ports:\n  - {{port: 80, nodePort: {node_port}}}\n"
    );
    let refused = lab.baton_raw(&["apply", "-f", "-"], Some(&taker))?;
    ensure!(
        !refused.status.success()
            && String::from_utf8_lossy(&refused.stderr).contains("already allocated"),
        "{refused:?}"
    );
    let deleted = stdout(&lab.baton(&["delete", "service", "frontend"])?);
    ensure!(deleted.contains("frontend"), "{deleted}");
    ensure!(!lab
        .baton_raw(&["get", "svc", "frontend"], None)?
        .status
        .success());
    ensure!(stdout(&lab.apply(&taker)?).contains("service/taker created"));
    let t = lab.get_json(&["get", "svc", "taker"])?;
    ensure!(t["spec"]["clusterIP"] == frontend_ip.as_str(), "{t}");
    ensure!(t["spec"]["ports"][0]["nodePort"] == node_port, "{t}");
    Ok(())
}

#[test]
fn traffic_flows_through_a_service() -> Result<()> {
    // The third agent joins late, claiming the first one's pod range.
    let mut lab = Lab::start_without_agents("svct", 3, Broker::Embedded)?;
    let r = lab
        .start_agent(0)
        .and_then(|()| lab.start_agent(1))
        .and_then(|()| traffic(&mut lab));
    if r.is_err() {
        lab.dump_logs();
    }
    r
}

/// `curl` in the network namespace `ns` (a pod's or the hub's): its exit code and output.
fn curl_in(ns: &str, url: &str, max_secs: u32) -> Result<(Option<i32>, String)> {
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", ns, "curl", "-sS", "--max-time"])
        .arg(max_secs.to_string())
        .arg(url)
        .output()?;
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    Ok((out.status.code(), text))
}

/// The `hostname=` (the pod's name) of an http-echo answer.
fn answered_by(body: &str) -> Option<String> {
    body.lines()
        .find_map(|l| l.strip_prefix("hostname="))
        .map(str::to_owned)
}

/// The names of the pods that answered `n` requests to `url` from `ns`; every request
/// must succeed.
fn answers(ns: &str, url: &str, n: usize) -> Result<BTreeSet<String>> {
    let mut seen = BTreeSet::new();
    for _ in 0..n {
        let (code, body) = curl_in(ns, url, 3)?;
        ensure!(code == Some(0), "{url} from {ns}: {body}");
        seen.insert(answered_by(&body).with_context(|| format!("no hostname in {body:?}"))?);
    }
    Ok(seen)
}

fn pod_ns(pod: &Value) -> String {
    baton_agent::network::pod_netns_name(&node_of(pod), &uid(pod))
}

fn traffic(lab: &mut Lab) -> Result<()> {
    let reg = lab.registry();
    let n1 = lab.agents[0].name.clone();
    let web = EchoDeployment::new(2).yaml(&reg);
    let svc = "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec:\n  type: NodePort\n  \
               selector: {app: web}\n  ports:\n  - {port: 80, targetPort: 8080, nodePort: 30080}\n";
    let client = format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: client}}\nspec:\n  nodeSelector: \
         {{kubernetes.io/hostname: {n1}}}\n  terminationGracePeriodSeconds: 0\n  containers:\n  \
         - name: c\n    image: {reg}/baton/busybox:1\n    command: [sleep, '3600']\n"
    );
    lab.apply(&format!("{web}---\n{svc}---\n{client}"))?;
    let backends = wait_pods(lab, "web", 2, LONG, "2 Ready web pods", is_ready)?;
    let names: BTreeSet<String> = backends.iter().map(pod_name).collect();
    let nodes: BTreeSet<String> = backends.iter().map(node_of).collect();
    let client = wait_for("the client pod to run", LONG, || {
        Ok(lab
            .pods()?
            .into_iter()
            .find(|p| pod_name(p) == "client" && is_running(p)))
    })?;
    let client_ns = pod_ns(&client);
    let vip = lab.get_json(&["get", "svc", "web"])?["spec"]["clusterIP"]
        .as_str()
        .context("a ClusterIP")?
        .to_owned();
    let url = format!("http://{vip}/cgi-bin/info");

    // Both backends answer the client, wherever they run (both nodes when spread).
    wait_for(
        "answers from both backends through the ClusterIP",
        Duration::from_secs(60),
        || Ok(answers(&client_ns, &url, 20).ok().filter(|s| *s == names)),
    )
    .with_context(|| format!("backends {names:?} on {nodes:?}"))?;
    eprintln!("both backends answered through {vip}, on nodes {nodes:?}");
    // And by their pod IPs, on either node (host-gw routes).
    for b in &backends {
        let ip = b["status"]["podIP"].as_str().context("a pod IP")?;
        let seen = answers(&client_ns, &format!("http://{ip}:8080/cgi-bin/info"), 1)?;
        ensure!(seen.contains(&pod_name(b)), "{seen:?}");
    }

    // In-cluster traffic keeps its source: every backend, on either node, sees the client
    // pod's own address through the ClusterIP (kube-proxy's promise; only NodePort and
    // LoadBalancer traffic is masqueraded).
    let client_ip = client["status"]["podIP"]
        .as_str()
        .context("the client's pod IP")?
        .to_owned();
    let mut seen_from = BTreeSet::new();
    for _ in 0..20 {
        let (code, body) = curl_in(&client_ns, &url, 3)?;
        ensure!(code == Some(0), "{url}: {body}");
        let remote = body
            .lines()
            .find_map(|l| l.strip_prefix("remote="))
            .with_context(|| format!("no remote= in {body:?}"))?;
        // busybox httpd listens on IPv6 and writes IPv4 clients as [::ffff:a.b.c.d].
        let remote = remote
            .strip_prefix("[::ffff:")
            .and_then(|r| r.strip_suffix(']'))
            .unwrap_or(remote);
        ensure!(
            remote == client_ip,
            "a backend saw {remote}, not the client's {client_ip}: {body}"
        );
        seen_from.extend(answered_by(&body));
    }
    ensure!(seen_from == names, "source checked on {seen_from:?} only");

    // sessionAffinity: ClientIP sends one client to one backend, every time.
    lab.apply(
        "apiVersion: v1\nkind: Service\nmetadata: {name: sticky}\nspec:\n  selector: {app: web}\n  \
         sessionAffinity: ClientIP\n  ports:\n  - {port: 80, targetPort: 8080}\n",
    )?;
    let sticky = lab.get_json(&["get", "svc", "sticky"])?["spec"]["clusterIP"]
        .as_str()
        .context("sticky's ClusterIP")?
        .to_owned();
    let sticky_url = format!("http://{sticky}/cgi-bin/info");
    let pinned = wait_for("the sticky Service to answer", LONG, || {
        Ok(answers(&client_ns, &sticky_url, 1).ok())
    })?;
    let all = answers(&client_ns, &sticky_url, 30)?;
    ensure!(
        all == pinned,
        "ClientIP affinity: answered by {all:?} after {pinned:?}"
    );
    lab.baton(&["delete", "service", "sticky"])?;

    udp_through_a_service(lab, &client_ns, &client_ip, &backends, &names)?;

    // Hairpin: a backend reaches its own Service (and so, at times, itself).
    for b in &backends {
        let seen = answers(&pod_ns(b), &url, 10)?;
        ensure!(seen.is_subset(&names), "{seen:?}");
    }

    // The NodePort on every node, from the hub (the lab's host).
    let hub = lab.hub.0.clone();
    for a in &lab.agents[..2] {
        let seen = answers(&hub, &format!("http://{}:30080/cgi-bin/info", a.addr), 10)?;
        ensure!(seen.is_subset(&names) && !seen.is_empty(), "{seen:?}");
    }

    load_balancer_nodes(lab, &hub, &names)?;

    // An agent restart writes the same rules back: the VIP keeps answering, also while
    // the agent is down (the rules are the kernel's).
    lab.kill_agent(0);
    ensure!(!answers(&client_ns, &url, 5)?.is_empty());
    lab.start_agent(0)?;
    ensure!(!answers(&client_ns, &url, 10)?.is_empty());

    intruder(lab, &client_ns, &url, &names)?;

    // No endpoints: refused at once (curl's 7), not a timeout (28).
    lab.baton(&["scale", "deployment", "web", "--replicas", "0"])?;
    wait_for(
        "the connection to be refused",
        Duration::from_secs(30),
        || {
            let started = std::time::Instant::now();
            let (code, body) = curl_in(&client_ns, &url, 5)?;
            Ok((code == Some(7)).then_some((started.elapsed(), body)))
        },
    )
    .and_then(|(took, body)| {
        ensure!(
            took < Duration::from_secs(2),
            "refused after {took:?}: {body}"
        );
        Ok(())
    })?;
    Ok(())
}

/// A UDP echo in a pod's network namespace: answers every datagram with `<name> <source>`.
/// busybox's `nc` here has no UDP mode, so the listener is the host's Python in the pod's
/// namespace: what the Service proxy sees is the same, a socket on the pod's address.
const UDP_ECHO: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", 5300))
while True:
    d, a = s.recvfrom(2048)
    s.sendto((sys.argv[1] + " " + a[0]).encode(), a)
"#;

/// `n` datagrams to `ip:port`, each from a new socket (a new conntrack entry): the answers.
const UDP_ASK: &str = r#"
import socket, sys
for _ in range(int(sys.argv[3])):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(2)
    s.sendto(b"hi", (sys.argv[1], int(sys.argv[2])))
    print(s.recvfrom(2048)[0].decode())
    s.close()
"#;

/// A `protocol: UDP` Service port: datagrams to the ClusterIP reach both backends, with
/// the client's own address as their source.
fn udp_through_a_service(
    lab: &mut Lab,
    client_ns: &str,
    client_ip: &str,
    backends: &[Value],
    names: &BTreeSet<String>,
) -> Result<()> {
    lab.apply(
        "apiVersion: v1\nkind: Service\nmetadata: {name: udp}\nspec:\n  selector: {app: web}\n  \
         ports:\n  - {name: echo, port: 5353, targetPort: 5300, protocol: UDP}\n",
    )?;
    let vip = lab.get_json(&["get", "svc", "udp"])?["spec"]["clusterIP"]
        .as_str()
        .context("udp's ClusterIP")?
        .to_owned();
    let mut echoes = Vec::new();
    for (i, b) in backends.iter().enumerate() {
        echoes.push(baton_e2e::Proc::spawn(
            &format!("udp-echo-{i}"),
            std::process::Command::new("ip")
                .args(["netns", "exec", &pod_ns(b), "python3", "-c", UDP_ECHO])
                .arg(pod_name(b)),
            lab.dir.path().join(format!("udp-echo-{i}.log")),
        )?);
    }
    let ask = |n: usize| -> Result<Vec<(String, String)>> {
        let out = std::process::Command::new("ip")
            .args([
                "netns", "exec", client_ns, "python3", "-c", UDP_ASK, &vip, "5353",
            ])
            .arg(n.to_string())
            .output()?;
        ensure!(
            out.status.success(),
            "UDP to {vip}:5353: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_once(' '))
            .map(|(a, b)| (a.to_owned(), b.to_owned()))
            .collect())
    };
    let answers = wait_for("UDP answers from both backends", LONG, || {
        let got = ask(20)?;
        let from: BTreeSet<String> = got.iter().map(|(n, _)| n.clone()).collect();
        ensure!(from == *names, "answered by {from:?} of {names:?}");
        Ok(Some(got))
    })?;
    for (name, source) in &answers {
        ensure!(
            source == client_ip,
            "{name} saw the datagram from {source}, not the client's {client_ip}"
        );
    }
    drop(echoes);
    lab.baton(&["delete", "service", "udp"])?;
    Ok(())
}

/// A LoadBalancer answers on every node's address, and once a node carries k3s's
/// `enablelb` label (Baton's own here), on the labelled nodes only, which are then its
/// EXTERNAL-IPs; the label's removal brings the others back.
fn load_balancer_nodes(lab: &mut Lab, hub: &str, names: &BTreeSet<String>) -> Result<()> {
    lab.apply(
        "apiVersion: v1\nkind: Service\nmetadata: {name: web-lb}\nspec:\n  type: LoadBalancer\n  \
         selector: {app: web}\n  ports:\n  - {port: 8081, targetPort: 8080}\n",
    )?;
    let addrs: Vec<String> = lab.agents[..2].iter().map(|a| a.addr.to_string()).collect();
    let external = |lab: &Lab| -> Result<BTreeSet<String>> {
        let s = lab.get_json(&["get", "svc", "web-lb"])?;
        Ok(s["status"]["loadBalancer"]["ingress"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|i| i["ip"].as_str().map(str::to_owned))
            .collect())
    };
    let serves = |addr: &str| -> Result<bool> {
        let (code, body) = curl_in(hub, &format!("http://{addr}:8081/cgi-bin/info"), 3)?;
        Ok(code == Some(0) && answered_by(&body).is_some_and(|n| names.contains(&n)))
    };
    let all: BTreeSet<String> = addrs.iter().cloned().collect();
    let on_both = |lab: &Lab| -> Result<Option<()>> {
        let (ext, on1, on2) = (external(lab)?, serves(&addrs[0])?, serves(&addrs[1])?);
        ensure!(
            ext == all && on1 && on2,
            "EXTERNAL-IP {ext:?}, answers on {}: {on1}, on {}: {on2}",
            addrs[0],
            addrs[1]
        );
        Ok(Some(()))
    };
    wait_for("the LoadBalancer on both nodes", LONG, || on_both(lab))?;

    let n2 = lab.agents[1].name.clone();
    lab.baton(&["label", "node", &n2, "baton.io/enablelb=true"])?;
    let only: BTreeSet<String> = [addrs[1].clone()].into();
    let started = std::time::Instant::now();
    wait_for("the LoadBalancer on the labelled node only", LONG, || {
        let (ext, on2, on1) = (external(lab)?, serves(&addrs[1])?, serves(&addrs[0])?);
        ensure!(
            ext == only && on2 && !on1,
            "EXTERNAL-IP {ext:?}, answers on {}: {on2}, on {}: {on1}",
            addrs[1],
            addrs[0]
        );
        Ok(Some(()))
    })?;
    eprintln!(
        "FIGURE services: LoadBalancer on the labelled node only {:?} after the label",
        started.elapsed()
    );
    // Only the LoadBalancer's own address rule went: the unlabelled node keeps the
    // ClusterIP and the NodePort.
    ensure!(!answers(hub, &format!("http://{}:30080/cgi-bin/info", addrs[0]), 3)?.is_empty());

    lab.baton(&["label", "node", &n2, "baton.io/enablelb-"])?;
    wait_for("the LoadBalancer on both nodes again", LONG, || {
        on_both(lab)
    })?;
    lab.baton(&["delete", "service", "web-lb"])?;
    Ok(())
}

/// A third node reporting the first node's pod range (an agent given the same
/// `--pod-cidr`) is refused it: `describe node` names the holder, the other nodes keep
/// routing the range to the first node, and the Service keeps answering from its pods.
fn intruder(lab: &mut Lab, client_ns: &str, url: &str, names: &BTreeSet<String>) -> Result<()> {
    let (n1, n3) = (lab.agents[0].name.clone(), lab.agents[2].name.clone());
    lab.agent_args = vec!["--pod-cidr".into(), "10.42.1.0/24".into()];
    let started = lab.start_agent(2);
    lab.agent_args.clear();
    started?;
    let node = wait_for(
        "the third node's range to be refused",
        Duration::from_secs(30),
        || {
            let n = lab.get_json(&["get", "node", &n3])?;
            Ok(n["status"]["podCidrRefused"].is_string().then_some(n))
        },
    )?;
    let why = node["status"]["podCidrRefused"]
        .as_str()
        .unwrap_or_default();
    ensure!(why.contains(&format!("held by node {n1}")), "{why}");
    let holder = lab.get_json(&["get", "node", &n1])?;
    ensure!(holder["status"]["podCidrHeld"] == true, "{holder}");
    let described = stdout(&lab.baton(&["describe", "node", &n3])?);
    ensure!(
        described.contains("PodCIDRRefused") && described.contains(&format!("held by node {n1}")),
        "{described}"
    );
    // A table the intruder's Hello would have changed has had time to arrive (500 ms).
    std::thread::sleep(Duration::from_secs(2));
    let (n2_ns, a1, a3) = (
        lab.agents[1].ns.0.clone(),
        lab.agents[0].addr.clone(),
        lab.agents[2].addr.clone(),
    );
    let out = std::process::Command::new("ip")
        .args(["-n", &n2_ns, "route", "show", "10.42.1.0/24"])
        .output()?;
    let route = String::from_utf8_lossy(&out.stdout).into_owned();
    ensure!(
        route.contains(&format!("via {a1}")) && !route.contains(&a3),
        "node 2 routes the range to the first node only: {route:?}"
    );
    ensure!(answers(client_ns, url, 20)? == *names);
    Ok(())
}
