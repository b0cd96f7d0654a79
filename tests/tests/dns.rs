//! Cluster DNS (issue 15) on real agents: a pod's resolv.conf and hosts, a ClusterIP and a
//! headless Service by short and full names (busybox's nslookup inside the container), a
//! connection by name to a Service whose pod is on the other node (curl in the pod's network
//! namespace with the pod's resolv.conf), an
//! upstream name through a fake upstream resolver the test runs in the hub namespace (the
//! agents' `--resolv-conf` names it), NXDOMAIN at once for a cluster name that does not
//! exist, and a Service created or deleted answered correctly within 1 s.
//!
//! Then a pod's DNS settings: `dnsPolicy: None` with a `dnsConfig` (exactly those lines),
//! `Default` (the node's file), `ClusterFirstWithHostNet` on a `hostNetwork` pod (cluster
//! DNS), `hostAliases` in `/etc/hosts` and resolving (curl by the alias, in the pod's
//! network namespace with the pod's hosts file); and SRV records of named ports, for a
//! ClusterIP and a headless Service (busybox's `nslookup -type=SRV` in the container, and
//! asked directly from the pod's network namespace).
//!
//! Figures (printed): answer latency for a Service name against an upstream name, a few
//! hundred queries each from the pod's network namespace; the agent's RSS before and after
//! 20 Services.

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use baton_e2e::fleet::{is_ready, is_running, node_of, pod_ip, pod_name, uid};
use baton_e2e::{wait_for, Broker, Lab};
use hickory_proto::op::{Message, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{Name, RData, Record, RecordType};
use serde_json::Value;

const LONG: Duration = Duration::from_secs(240);
/// What the fake upstream answers for its one name.
const UPSTREAM_NAME: &str = "upstream.example.";
const UPSTREAM_ADDR: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 53);

fn enter(netns: &str) -> Result<()> {
    let f = std::fs::File::open(format!("/run/netns/{netns}"))
        .with_context(|| format!("open netns {netns}"))?;
    nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET)
        .with_context(|| format!("enter netns {netns}"))
}

/// A DNS server on `addr:53` in `netns`, answering [`UPSTREAM_NAME`] and NXDOMAIN for the
/// rest; counts the queries it gets.
fn fake_upstream(netns: &str, addr: Ipv4Addr) -> Result<Arc<AtomicUsize>> {
    let count = Arc::new(AtomicUsize::new(0));
    let (tx, rx) = std::sync::mpsc::channel();
    let (ns, n) = (netns.to_owned(), count.clone());
    std::thread::spawn(move || {
        let sock = enter(&ns).and_then(|()| Ok(UdpSocket::bind((addr, 53))?));
        let sock = match sock {
            Ok(s) => {
                let _ = tx.send(Ok(()));
                s
            }
            Err(e) => {
                let _ = tx.send(Err(e));
                return;
            }
        };
        let mut buf = [0u8; 1500];
        while let Ok((len, peer)) = sock.recv_from(&mut buf) {
            let Ok(req) = Message::from_vec(&buf[..len]) else {
                continue;
            };
            n.fetch_add(1, Ordering::SeqCst);
            let mut resp = Message::error_msg(req.id(), OpCode::Query, ResponseCode::NoError);
            resp.set_recursion_desired(req.recursion_desired())
                .set_recursion_available(true);
            resp.add_queries(req.queries().iter().cloned());
            match req.queries().first() {
                Some(q) if q.name().to_ascii().eq_ignore_ascii_case(UPSTREAM_NAME) => {
                    if q.query_type() == RecordType::A {
                        resp.add_answer(Record::from_rdata(
                            q.name().clone(),
                            60,
                            RData::A(A(UPSTREAM_ADDR)),
                        ));
                    }
                }
                _ => {
                    resp.set_response_code(ResponseCode::NXDomain);
                }
            }
            if let Ok(b) = resp.to_vec() {
                let _ = sock.send_to(&b, peer);
            }
        }
    });
    rx.recv()??;
    Ok(count)
}

/// Queries `server:53` for `name` from inside `netns`, `n` times: the answers' A addresses
/// and response code of the last, and each query's time.
struct Asked {
    code: ResponseCode,
    ips: Vec<Ipv4Addr>,
    times: Vec<Duration>,
    last: Message,
}

fn ask(netns: &str, server: Ipv4Addr, name: &str, t: RecordType, n: usize) -> Result<Asked> {
    let (ns, name) = (netns.to_owned(), name.to_owned());
    std::thread::spawn(move || -> Result<Asked> {
        enter(&ns)?;
        let sock = UdpSocket::bind("0.0.0.0:0")?;
        sock.set_read_timeout(Some(Duration::from_secs(5)))?;
        sock.connect(SocketAddr::from((server, 53)))?;
        let mut times = Vec::with_capacity(n);
        let mut last = None;
        for i in 0..n {
            let mut m = Message::new();
            m.set_id(i as u16).set_recursion_desired(true);
            m.add_query(Query::query(Name::from_ascii(&name)?, t));
            let started = Instant::now();
            sock.send(&m.to_vec()?)?;
            let mut buf = [0u8; 4096];
            let len = sock.recv(&mut buf).context("no DNS answer")?;
            times.push(started.elapsed());
            let resp = Message::from_vec(&buf[..len])?;
            ensure!(resp.id() == i as u16, "answer to another query");
            last = Some(resp);
        }
        let resp = last.context("no query")?;
        let ips = resp
            .answers()
            .iter()
            .filter_map(|r| r.data().as_a().map(|a| a.0))
            .collect();
        Ok(Asked {
            code: resp.response_code(),
            ips,
            times,
            last: resp,
        })
    })
    .join()
    .map_err(|_| anyhow::anyhow!("query thread panicked"))?
}

/// Polls `f` every 20 ms until it gives a value, failing once `deadline` has passed since
/// `since`; the value and when it came.
fn within<T>(
    what: &str,
    since: Instant,
    deadline: Duration,
    mut f: impl FnMut() -> Result<Option<T>>,
) -> Result<(T, Duration)> {
    loop {
        if let Some(v) = f()? {
            return Ok((v, since.elapsed()));
        }
        ensure!(
            since.elapsed() < deadline,
            "{what}: not within {deadline:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn percentile(times: &[Duration], p: f64) -> Duration {
    let mut t = times.to_vec();
    t.sort();
    t[((t.len() - 1) as f64 * p).round() as usize]
}

/// `baton exec client -- args`: its exit status and output.
fn exec(lab: &Lab, pod: &str, args: &[&str]) -> Result<(bool, String)> {
    let mut all = vec!["exec", pod, "--"];
    all.extend_from_slice(args);
    let out = lab.baton_raw(&all, None)?;
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    Ok((out.status.success(), text))
}

fn rss_kib(pid: u32) -> Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("VmRSS")
}

fn echo_pod(name: &str, node: &str, reg: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, labels: {{app: {name}}}}}\nspec:\n  \
         nodeSelector: {{kubernetes.io/hostname: {node}}}\n  terminationGracePeriodSeconds: 0\n  \
         containers:\n  - name: c\n    image: {reg}/baton/http-echo:1\n    ports:\n    \
         - containerPort: 8080\n"
    )
}

fn service(name: &str, selector: &str, headless: bool) -> String {
    let ip = if headless { "  clusterIP: None\n" } else { "" };
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}}}\nspec:\n{ip}  selector: \
         {{app: {selector}}}\n  ports:\n  - {{port: 80, targetPort: 8080}}\n"
    )
}

#[test]
fn cluster_dns_from_inside_a_container() -> Result<()> {
    // hostNetwork for the ClusterFirstWithHostNet pod.
    let mut lab =
        Lab::start_without_agents_with("dns", 2, Broker::Embedded, &["--allow-host-network"])?;
    let r = run(&mut lab);
    if r.is_err() {
        lab.dump_logs();
    }
    r
}

fn run(lab: &mut Lab) -> Result<()> {
    // The nodes' upstream resolver is the hub's address, where the fake upstream listens.
    let hub_ip: Ipv4Addr = lab.hub_ip().parse()?;
    let upstream_hits = fake_upstream(&lab.hub.0.clone(), hub_ip)?;
    let conf = lab.dir.path().join("upstream-resolv.conf");
    std::fs::write(
        &conf,
        format!("# the lab's upstream\nnameserver {hub_ip}\nsearch lab.example\n"),
    )?;
    lab.agent_args = vec!["--resolv-conf".into(), conf.display().to_string()];
    lab.start_agent(0)?;
    lab.start_agent(1)?;
    let (n1, n2) = (lab.agents[0].name.clone(), lab.agents[1].name.clone());
    let reg = lab.registry();
    let agent_pid = lab.agents[0]
        .proc
        .as_ref()
        .and_then(|p| p.pid())
        .context("agent pid")?;

    let client = format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: client}}\nspec:\n  nodeSelector: \
         {{kubernetes.io/hostname: {n1}}}\n  terminationGracePeriodSeconds: 0\n  containers:\n  \
         - name: c\n    image: {reg}/baton/busybox:1\n    command: [sleep, '3600']\n"
    );
    // `near` on the client's node, `far` on the other; `both` is a headless Service of both.
    let near = echo_pod("near", &n1, &reg).replace("app: near", "app: near, tier: both");
    let far = echo_pod("far", &n2, &reg).replace("app: far", "app: far, tier: both");
    let both = service("both", "x", true).replace("{app: x}", "{tier: both}");
    let docs = [
        client,
        near,
        far,
        service("near", "near", false),
        service("far", "far", false),
        both,
    ];
    lab.apply(&docs.join("---\n"))?;
    let pods = wait_for("the three pods to be Ready", LONG, || {
        let pods = lab.pods()?;
        let ok = |n: &str| pods.iter().any(|p| pod_name(p) == n && is_ready(p));
        Ok((ok("client") && ok("near") && ok("far")).then_some(pods))
    })?;
    let by_name = |n: &str| -> Result<&Value> {
        pods.iter()
            .find(|p| pod_name(p) == n)
            .with_context(|| format!("pod {n}"))
    };
    let client = by_name("client")?;
    ensure!(is_running(client) && node_of(client) == n1);
    let client_ns = baton_agent::network::pod_netns_name(&n1, &uid(client));
    let client_ip = pod_ip(client);
    let (near_ip, far_ip) = (pod_ip(by_name("near")?), pod_ip(by_name("far")?));
    let vip = |svc: &str| -> Result<Ipv4Addr> {
        Ok(lab.get_json(&["get", "svc", svc])?["spec"]["clusterIP"]
            .as_str()
            .context("a ClusterIP")?
            .parse()?)
    };
    let (near_vip, far_vip) = (vip("near")?, vip("far")?);
    let gateway = Ipv4Addr::new(10, 42, 1, 1);

    // The pod's files, kubelet's: the node's search domains after the cluster's.
    let (_, resolv) = exec(lab, "client", &["cat", "/etc/resolv.conf"])?;
    ensure!(
        resolv
            == format!(
                "nameserver {gateway}\nsearch default.svc.cluster.local svc.cluster.local \
                 cluster.local lab.example\noptions ndots:5\n"
            ),
        "{resolv}"
    );
    let (_, hosts) = exec(lab, "client", &["cat", "/etc/hosts"])?;
    ensure!(
        hosts.contains("127.0.0.1\tlocalhost") && hosts.contains(&format!("{client_ip}\tclient\n")),
        "{hosts}"
    );

    // Names from inside the container (busybox's nslookup reads our resolv.conf).
    for (name, want) in [
        ("near", vec![near_vip.to_string()]),
        ("near.default.svc.cluster.local", vec![near_vip.to_string()]),
        ("far", vec![far_vip.to_string()]),
        ("both", vec![near_ip.clone(), far_ip.clone()]),
        (
            "both.default.svc.cluster.local",
            vec![near_ip.clone(), far_ip.clone()],
        ),
    ] {
        // busybox's nslookup asks every search domain at once and fails if any of them
        // is NXDOMAIN (as `near.svc.cluster.local` is, with CoreDNS too): the answer for
        // the first one is what counts.
        let (_, out) = exec(lab, "client", &["nslookup", name])?;
        let full = if name.contains('.') {
            name.to_owned()
        } else {
            format!("{name}.default.svc.cluster.local")
        };
        ensure!(
            out.contains(&format!("Name:\t{full}\n")),
            "nslookup {name}: {out}"
        );
        for ip in &want {
            ensure!(
                out.contains(&format!("Address: {ip}")),
                "nslookup {name}: {out}"
            );
        }
        eprintln!("nslookup {name}: {want:?}");
    }
    let before = upstream_hits.load(Ordering::SeqCst);
    let (ok, out) = exec(lab, "client", &["nslookup", UPSTREAM_NAME])?;
    ensure!(
        ok && out.contains(&format!("Address: {UPSTREAM_ADDR}")),
        "{out}"
    );
    ensure!(
        upstream_hits.load(Ordering::SeqCst) > before,
        "the upstream was not asked"
    );
    let started = Instant::now();
    let (ok, out) = exec(
        lab,
        "client",
        &["nslookup", "nope.default.svc.cluster.local"],
    )?;
    let took = started.elapsed();
    ensure!(!ok && out.contains("NXDOMAIN"), "{out}");
    eprintln!("nslookup of a missing name: NXDOMAIN, whole exec {took:?}");

    // A connection by name, to the Service whose pod runs on the other node. busybox's
    // wget cannot resolve (Debian's static busybox links glibc, whose static resolver
    // crashes without its NSS modules), so the host's curl does it in the pod's network
    // namespace with the pod's own resolv.conf mounted over /etc/resolv.conf: the pod's
    // search path, ndots and nameserver, through its network.
    let pod_resolv = lab.agents[0]
        .data_dir
        .join("pods")
        .join(uid(client))
        .join("etc/resolv.conf");
    for (url, who) in [
        ("http://far/cgi-bin/info", "hostname=far"),
        (
            "http://near.default.svc.cluster.local/cgi-bin/info",
            "hostname=near",
        ),
    ] {
        let out = std::process::Command::new("unshare")
            .args(["-m", "sh", "-c"])
            .arg(
                "mount --bind \"$1\" /etc/resolv.conf && \
                 exec nsenter --net=/run/netns/\"$2\" curl -sS --max-time 5 \"$3\"",
            )
            .args(["sh"])
            .arg(&pod_resolv)
            .args([&client_ns, url])
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        ensure!(
            out.status.success() && text.contains(who),
            "curl {url}: {text}"
        );
        eprintln!("curl {url} from the client pod: {who}");
    }

    // From the pod's network namespace, timed: NXDOMAIN at once; latencies.
    let missing = ask(
        &client_ns,
        gateway,
        "nope.default.svc.cluster.local.",
        RecordType::A,
        50,
    )?;
    ensure!(missing.code == ResponseCode::NXDomain);
    let worst = percentile(&missing.times, 1.0);
    ensure!(
        worst < Duration::from_millis(100),
        "NXDOMAIN took up to {worst:?}"
    );
    let aaaa = ask(
        &client_ns,
        gateway,
        "near.default.svc.cluster.local.",
        RecordType::AAAA,
        1,
    )?;
    ensure!(aaaa.code == ResponseCode::NoError && aaaa.ips.is_empty());
    let svc = ask(
        &client_ns,
        gateway,
        "near.default.svc.cluster.local.",
        RecordType::A,
        300,
    )?;
    ensure!(svc.ips == [near_vip], "{:?}", svc.ips);
    let up = ask(&client_ns, gateway, UPSTREAM_NAME, RecordType::A, 300)?;
    ensure!(up.ips == [UPSTREAM_ADDR], "{:?}", up.ips);
    eprintln!(
        "FIGURE dns latency (300 queries each, from the pod's netns): service name p50 {:?} \
         p99 {:?}; upstream name p50 {:?} p99 {:?}; NXDOMAIN max {worst:?} of 50",
        percentile(&svc.times, 0.5),
        percentile(&svc.times, 0.99),
        percentile(&up.times, 0.5),
        percentile(&up.times, 0.99),
    );

    // A Service created, then deleted: the answer follows within 1 s.
    let name = "late.default.svc.cluster.local.";
    let applied = Instant::now();
    lab.apply(&service("late", "near", false))?;
    let second = Duration::from_secs(1);
    let (answered, created_in) = within("the new Service's name", applied, second, || {
        let a = ask(&client_ns, gateway, name, RecordType::A, 1)?;
        Ok((a.code == ResponseCode::NoError && a.ips.len() == 1).then(|| a.ips[0]))
    })?;
    ensure!(answered == vip("late")?, "{answered}");
    let deleting = Instant::now();
    lab.baton(&["delete", "service", "late"])?;
    let ((), deleted_in) = within("the deleted Service's name to go", deleting, second, || {
        let a = ask(&client_ns, gateway, name, RecordType::A, 1)?;
        Ok((a.code == ResponseCode::NXDomain).then_some(()))
    })?;
    eprintln!(
        "FIGURE a created Service answered {created_in:?} after `apply` began; a deleted one \
         NXDOMAIN {deleted_in:?} after `delete` began"
    );

    // RSS with 20 Services more (names asked for).
    let rss_before = rss_kib(agent_pid)?;
    let many: Vec<String> = (0..20)
        .map(|i| service(&format!("s{i}"), "near", false))
        .collect();
    lab.apply(&many.join("---\n"))?;
    wait_for("the 20 Services' names", Duration::from_secs(30), || {
        let a = ask(
            &client_ns,
            gateway,
            "s19.default.svc.cluster.local.",
            RecordType::A,
            1,
        )?;
        Ok((a.code == ResponseCode::NoError).then_some(()))
    })?;
    for i in 0..20 {
        let a = ask(
            &client_ns,
            gateway,
            &format!("s{i}.default.svc.cluster.local."),
            RecordType::A,
            5,
        )?;
        ensure!(a.ips.len() == 1, "s{i}");
    }
    let rss_after = rss_kib(agent_pid)?;
    eprintln!("FIGURE agent RSS: {rss_before} KiB with 3 Services, {rss_after} KiB with 23 (all asked for)");

    pod_dns_settings(lab, &conf, &client_ns, &near_ip, &far_ip)
}

/// Runs `cmd` (a host program, with `args`) in the network namespace `netns` with the
/// pod files `etc` (the pod's `etc/` directory) mounted over the host's, as the pod's
/// containers have them: what glibc's resolver in the pod would do.
fn in_pod_net(netns: &str, etc: &std::path::Path, cmd: &[&str]) -> Result<(bool, String)> {
    let out = std::process::Command::new("unshare")
        .args(["-m", "sh", "-c"])
        .arg(
            "mount --bind \"$1/resolv.conf\" /etc/resolv.conf && \
             mount --bind \"$1/hosts\" /etc/hosts && shift 2 && \
             exec nsenter --net=/run/netns/\"$0\" \"$@\"",
        )
        .arg(netns)
        .arg(etc)
        .arg("--")
        .args(cmd)
        .output()?;
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    Ok((out.status.success(), text))
}

/// An SRV record's port and target.
type SrvRecord = (u16, String);

/// `dnsPolicy`, `dnsConfig`, `hostAliases` and SRV records.
fn pod_dns_settings(
    lab: &mut Lab,
    node_resolv: &std::path::Path,
    client_ns: &str,
    near_ip: &str,
    far_ip: &str,
) -> Result<()> {
    let (n1, reg) = (lab.agents[0].name.clone(), lab.registry());
    let gateway = Ipv4Addr::new(10, 42, 1, 1);
    let busybox = |name: &str, spec: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  nodeSelector: \
             {{kubernetes.io/hostname: {n1}}}\n  terminationGracePeriodSeconds: 0\n{spec}  \
             containers:\n  - name: c\n    image: {reg}/baton/busybox:1\n    command: [sleep, '3600']\n"
        )
    };
    let custom = busybox(
        "custom",
        &format!(
            "  dnsPolicy: None\n  dnsConfig:\n    nameservers: [{gateway}, 192.0.2.1]\n    \
             searches: [default.svc.cluster.local, lab.example]\n    options:\n    \
             - {{name: ndots, value: \"2\"}}\n    - name: edns0\n  hostAliases:\n  \
             - {{ip: {near_ip}, hostnames: [alias.lab, alias]}}\n  - {{ip: {far_ip}, hostnames: [far.lab]}}\n"
        ),
    );
    let dflt = busybox("dflt", "  dnsPolicy: Default\n");
    let hostnet = busybox(
        "hostnet",
        "  hostNetwork: true\n  dnsPolicy: ClusterFirstWithHostNet\n",
    );
    // Named ports: a ClusterIP Service and a headless one of both echo pods.
    let named = "apiVersion: v1\nkind: Service\nmetadata: {name: named}\nspec:\n  selector: \
                 {app: near}\n  ports:\n  - {name: http, port: 80, targetPort: 8080}\n  \
                 - {name: dns, port: 53, targetPort: 8053, protocol: UDP}\n";
    let headless = "apiVersion: v1\nkind: Service\nmetadata: {name: hl}\nspec:\n  clusterIP: \
                    None\n  selector: {tier: both}\n  ports:\n  - {name: web, port: 80, targetPort: 8080}\n";
    lab.apply(&[custom, dflt, hostnet, named.into(), headless.into()].join("---\n"))?;
    let pods = wait_for("the DNS-setting pods to run", LONG, || {
        let pods = lab.pods()?;
        // A hostNetwork pod has no pod IP of its own: the phase only.
        let ok = |n: &str| {
            pods.iter()
                .any(|p| pod_name(p) == n && p["status"]["phase"] == "Running")
        };
        Ok((ok("custom") && ok("dflt") && ok("hostnet")).then_some(pods))
    })?;

    // dnsPolicy None: exactly dnsConfig's lines.
    let (_, resolv) = exec(lab, "custom", &["cat", "/etc/resolv.conf"])?;
    ensure!(
        resolv
            == format!(
                "nameserver {gateway}\nnameserver 192.0.2.1\nsearch default.svc.cluster.local \
                 lab.example\noptions ndots:2 edns0\n"
            ),
        "dnsPolicy None: {resolv}"
    );
    // Default: the node's file (the agent's --resolv-conf), as it is.
    let (_, resolv) = exec(lab, "dflt", &["cat", "/etc/resolv.conf"])?;
    ensure!(
        resolv == std::fs::read_to_string(node_resolv)?,
        "dnsPolicy Default: {resolv}"
    );
    // ClusterFirstWithHostNet: cluster DNS on the host's network.
    let (_, resolv) = exec(lab, "hostnet", &["cat", "/etc/resolv.conf"])?;
    ensure!(
        resolv.starts_with(&format!(
            "nameserver {gateway}\nsearch default.svc.cluster.local "
        )),
        "ClusterFirstWithHostNet: {resolv}"
    );
    eprintln!("dnsPolicy None, Default and ClusterFirstWithHostNet: the files kubelet writes");

    // hostAliases: in /etc/hosts, and resolving.
    let (_, hosts) = exec(lab, "custom", &["cat", "/etc/hosts"])?;
    ensure!(
        hosts.contains("\tcustom\n")
            && hosts.ends_with(&format!(
                "\n# Entries added by HostAliases.\n{near_ip}\talias.lab\talias\n{far_ip}\tfar.lab\n"
            )),
        "hostAliases: {hosts}"
    );
    let custom = pods
        .iter()
        .find(|p| pod_name(p) == "custom")
        .context("custom")?;
    let netns = baton_agent::network::pod_netns_name(&n1, &uid(custom));
    let etc = lab.agents[0]
        .data_dir
        .join("pods")
        .join(uid(custom))
        .join("etc");
    for (alias, who) in [("alias", "hostname=near"), ("far.lab", "hostname=far")] {
        let url = format!("http://{alias}:8080/cgi-bin/info");
        let (ok, out) = in_pod_net(&netns, &etc, &["curl", "-sS", "--max-time", "5", &url])?;
        ensure!(ok && out.contains(who), "curl {url}: {out}");
        eprintln!("curl {url} by its hostAlias: {who}");
    }

    // SRV of a ClusterIP Service's named ports: its name and port.
    let named_vip: Ipv4Addr = lab.get_json(&["get", "svc", "named"])?["spec"]["clusterIP"]
        .as_str()
        .context("a ClusterIP")?
        .parse()?;
    let srv = |name: &str| -> Result<(Vec<SrvRecord>, Vec<Ipv4Addr>)> {
        let a = ask(client_ns, gateway, name, RecordType::SRV, 1)?;
        ensure!(a.code == ResponseCode::NoError, "{name}: {:?}", a.code);
        let mut recs: Vec<SrvRecord> = a
            .last
            .answers()
            .iter()
            .filter_map(|r| r.data().as_srv())
            .map(|s| (s.port(), s.target().to_ascii()))
            .collect();
        recs.sort();
        let mut addrs: Vec<Ipv4Addr> = a
            .last
            .additionals()
            .iter()
            .filter_map(|r| r.data().as_a().map(|a| a.0))
            .collect();
        addrs.sort();
        Ok((recs, addrs))
    };
    let (recs, addrs) = srv("_http._tcp.named.default.svc.cluster.local.")?;
    ensure!(
        recs == [(80, "named.default.svc.cluster.local.".to_string())] && addrs == [named_vip],
        "{recs:?} {addrs:?}"
    );
    let (recs, _) = srv("_dns._udp.named.default.svc.cluster.local.")?;
    ensure!(recs.len() == 1 && recs[0].0 == 53, "{recs:?}");
    let missing = ask(
        client_ns,
        gateway,
        "_http._udp.named.default.svc.cluster.local.",
        RecordType::SRV,
        1,
    )?;
    ensure!(missing.code == ResponseCode::NXDomain, "{:?}", missing.code);
    // A headless one's: each ready pod, by a name that resolves to it, and its port.
    let (recs, addrs) = srv("_web._tcp.hl.default.svc.cluster.local.")?;
    let pod_name_of = |ip: &str| format!("{}.hl.default.svc.cluster.local.", ip.replace('.', "-"));
    let mut want = vec![(8080, pod_name_of(near_ip)), (8080, pod_name_of(far_ip))];
    want.sort();
    ensure!(recs == want && addrs.len() == 2, "{recs:?} {addrs:?}");
    let a = ask(client_ns, gateway, &pod_name_of(near_ip), RecordType::A, 1)?;
    ensure!(a.ips == [near_ip.parse::<Ipv4Addr>()?], "{:?}", a.ips);
    // busybox's nslookup in the container: `service = priority weight port target`.
    let (_, out) = exec(
        lab,
        "client",
        &[
            "nslookup",
            "-type=SRV",
            "_http._tcp.named.default.svc.cluster.local",
        ],
    )?;
    ensure!(
        out.contains("80 named.default.svc.cluster.local"),
        "nslookup -type=SRV: {out}"
    );
    eprintln!(
        "SRV of named ports: headless {recs:?}; busybox's nslookup -type=SRV: {}",
        out.lines()
            .find(|l| l.contains("service ="))
            .unwrap_or_default()
    );
    Ok(())
}
