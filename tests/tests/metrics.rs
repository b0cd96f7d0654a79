//! `/metrics` end to end: a real Prometheus server (Debian's) scrapes the coordinator with a
//! read-only token while a real agent runs a real pod, and its query API must see the fleet
//! as the coordinator does (a scrape it cannot parse would leave `up` at 0); without a token
//! the scrape is refused. (`promtool check metrics` of Debian 12 reads only the classic text
//! format, not the OpenMetrics one served here, so it is not used.)

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use baton_e2e::{wait_for, Broker, Lab, Proc};
use serde_json::Value;

const LONG: Duration = Duration::from_secs(120);

/// A Deployment of one echo pod, its image on the lab's registry.
fn web(lab: &Lab) -> String {
    format!(
        "\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: scraped
spec:
  replicas: 1
  selector:
    matchLabels: {{app: scraped}}
  template:
    metadata:
      labels: {{app: scraped}}
    spec:
      containers:
      - name: echo
        image: {}/baton/http-echo:1
",
        lab.registry()
    )
}

/// `curl ARGS` in the hub namespace: (HTTP status, body).
fn curl(lab: &Lab, args: &[&str]) -> Result<(u16, String)> {
    let out = lab
        .hub
        .cmd("curl")
        .args(["-sS", "-w", "\n%{http_code}"])
        .args(args)
        .output()?;
    ensure!(
        out.status.success(),
        "curl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout)?;
    let (body, code) = text.rsplit_once('\n').context("no status line")?;
    Ok((code.trim().parse()?, body.to_owned()))
}

/// The value of a PromQL instant query with one series, as Prometheus answers it now.
fn query(lab: &Lab, promql: &str) -> Result<Option<f64>> {
    let (code, body) = curl(
        lab,
        &[
            "-G",
            "http://127.0.0.1:9090/api/v1/query",
            "--data-urlencode",
            &format!("query={promql}"),
        ],
    )?;
    ensure!(code == 200, "query {promql}: {code} {body}");
    let v: Value = serde_json::from_str(&body)?;
    let Some(first) = v["data"]["result"].as_array().and_then(|r| r.first()) else {
        return Ok(None);
    };
    Ok(first["value"][1].as_str().and_then(|s| s.parse().ok()))
}

#[test]
fn prometheus_scrapes_the_fleet_with_a_read_only_token() -> Result<()> {
    let mut lab = Lab::start_without_agents("metrics", 1, Broker::Embedded)?;
    // Usage sampled every 2 s instead of the lan profile's 30 s.
    lab.agent_args = vec!["--usage-secs".into(), "2".into()];
    lab.start_agent(0)?;
    let r = run(&lab).and_then(|()| top(&lab));
    if r.is_err() {
        lab.dump_logs();
    }
    r
}

/// A pod that spins, capped at 200m: `baton top` sees it use about that much, and
/// Prometheus sees the node's usage.
fn top(lab: &Lab) -> Result<()> {
    lab.apply(&format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: spinner\nspec:\n  containers:\n  - name: main\n    image: {}/baton/busybox:1\n    command: [\"sh\", \"-c\", \"while :; do :; done\"]\n    resources:\n      limits: {{cpu: 200m, memory: 32Mi}}\n",
        lab.registry()
    ))?;
    let row = wait_for("top pods to show the spinner busy", LONG, || {
        let out = lab.baton(&["top", "pods"])?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let row = text
            .lines()
            .find(|l| l.starts_with("spinner "))
            .map(|l| l.split_whitespace().map(str::to_owned).collect::<Vec<_>>());
        let busy = row
            .as_ref()
            .and_then(|r| r[1].strip_suffix('m')?.parse::<u32>().ok());
        Ok(busy.filter(|m| (120..=260).contains(m)).and(row))
    })?;
    println!("FIGURE top pods: {row:?}");
    let nodes = String::from_utf8_lossy(&lab.baton(&["top", "nodes"])?.stdout).into_owned();
    let node = lab.agents[0].name.clone();
    ensure!(
        nodes.lines().next().is_some_and(|h| {
            h.split_whitespace().collect::<Vec<_>>()
                == [
                    "NAME",
                    "CPU(cores)",
                    "CPU%",
                    "MEMORY(bytes)",
                    "MEMORY%",
                    "TEMP",
                    "DISK%",
                ]
        }) && nodes.lines().any(|l| l.starts_with(&format!("{node} "))),
        "{nodes}"
    );
    Ok(())
}

fn run(lab: &Lab) -> Result<()> {
    lab.apply(&web(lab))?;
    wait_for("the pod to run", LONG, || {
        let pods = lab.pods()?;
        Ok((pods.len() == 1 && pods[0]["status"]["phase"] == "Running").then_some(()))
    })?;

    let out = lab.baton(&[
        "token",
        "create",
        "--role",
        "read-only",
        "--name",
        "prometheus",
    ])?;
    let token = String::from_utf8(out.stdout)?.trim().to_owned();
    let url = format!("{}/metrics", lab.api_url());

    let (code, _) = curl(lab, &[&url])?;
    ensure!(code == 401, "a scrape without a token answered {code}");
    let auth = format!("Authorization: Bearer {token}");
    let (code, text) = curl(lab, &["-H", &auth, &url])?;
    ensure!(code == 200, "{code}: {text}");
    ensure!(
        text.contains("baton_pods{phase=\"Running\"} 1\n"),
        "the scrape does not show the running pod:\n{text}"
    );

    // A real Prometheus server, scraping every second with the read-only token.
    let dir = lab.dir.path().join("prometheus");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("token"), &token)?;
    let target = lab
        .api_url()
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned();
    std::fs::write(
        dir.join("prometheus.yml"),
        format!(
            "global: {{scrape_interval: 1s}}\nscrape_configs:\n- job_name: baton\n  authorization: {{credentials_file: {}}}\n  static_configs: [{{targets: ['{target}']}}]\n",
            dir.join("token").display()
        ),
    )?;
    let _prometheus = Proc::spawn(
        "prometheus",
        lab.hub
            .cmd("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg("--web.listen-address=127.0.0.1:9090"),
        dir.join("prometheus.log"),
    )?;
    let ready = |promql: &'static str, ok: fn(f64) -> bool| {
        wait_for(promql, LONG, || {
            Ok(query(lab, promql).ok().flatten().filter(|v| ok(*v)))
        })
    };
    // The scrape itself worked (Prometheus' own `up`), then what it saw.
    ready("up{job=\"baton\"}", |v| v == 1.0)?;
    ready("baton_pods{phase=\"Running\"}", |v| v == 1.0)?;
    ready("baton_nodes{state=\"Ready\"}", |v| v == 1.0)?;
    ready(
        "baton_rollout_replicas{kind=\"Deployment\",name=\"scraped\",state=\"available\"}",
        |v| v == 1.0,
    )?;
    ready("baton_pod_start_duration_seconds_count", |v| v >= 1.0)?;
    ready("baton_store_commit_duration_seconds_count", |v| v >= 1.0)?;
    // The agent's usage report, as a gauge per node.
    ready("max(baton_node_memory_usage_bytes)", |v| v > 0.0)?;
    ready("max(baton_node_disk_usage_bytes)", |v| v > 0.0)?;
    ready(
        "sum(baton_mqtt_messages_total{direction=\"in\",type=\"Status\"})",
        |v| v >= 1.0,
    )?;
    ready(
        "sum(baton_mqtt_payload_bytes_total{direction=\"out\",type=\"Desired\"})",
        |v| v > 0.0,
    )?;
    Ok(())
}
