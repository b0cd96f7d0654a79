//! The agent's image store end to end (issue 3): real agents pulling from Debian's
//! docker-registry through a byte-counting proxy ([`baton_e2e::proxy`]), so every assertion
//! about "downloaded once" or "not downloaded" is about bytes that crossed a socket.
//!
//! Each test builds its own lab (hub netns with coordinator and registry) and adds agents
//! with the flags it needs; everything (agents, pods, proxies, extra registries, tmpfs
//! mounts) is removed on drop, also when a test fails.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use baton_e2e::fleet::{http_info, wait_cleaned_up};
use baton_e2e::proxy::{Proxy, Rule};
use baton_e2e::{bin, items, repo_root, sh, wait_for, Agent, Broker, Lab, Netns, Proc};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

const LONG: Duration = Duration::from_secs(180);

static NEXT: AtomicU32 = AtomicU32::new(0);

// ----- the rig: a lab plus agents with custom flags ---------------------------------------

/// Something to undo when the rig goes: a tmpfs mount or an extra registry.
enum Cleanup {
    Umount(PathBuf),
    Registry { addr: String, dir: PathBuf },
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        match self {
            Cleanup::Umount(p) => {
                let _ = Command::new("umount").arg("-l").arg(&*p).status();
            }
            // Not through the hub namespace: it is gone by now (the lab drops first),
            // and stopping only signals the pid in the registry's pidfile.
            Cleanup::Registry { addr, dir } => {
                let _ = Command::new(repo_root().join("images/registry.sh"))
                    .args(["stop", addr.as_str()])
                    .arg(&*dir)
                    .output();
            }
        }
    }
}

/// Fields drop in order: the lab (agents stopped and reset) before proxies, mounts and
/// the directory the agents' data lives in.
struct Rig {
    lab: Lab,
    proxies: Vec<Proxy>,
    cleanups: Vec<Cleanup>,
    args: Vec<Vec<String>>,
    tmp: tempfile::TempDir,
}

impl Rig {
    fn new(tag: &str) -> Result<Rig> {
        let tmp = tempfile::Builder::new()
            .prefix(&format!("baton-img-{tag}-"))
            .tempdir()?;
        let lab = Lab::start(tag, 0, Broker::Embedded)?;
        Ok(Rig {
            lab,
            proxies: Vec::new(),
            cleanups: Vec::new(),
            args: Vec::new(),
            tmp,
        })
    }

    /// A proxy in the hub namespace in front of `upstream`; returns its index.
    fn proxy_to(&mut self, upstream: &str) -> Result<usize> {
        let p = Proxy::start(
            Some(&self.lab.hub.0),
            &format!("{}:0", self.lab.hub_ip()),
            upstream,
        )?;
        self.proxies.push(p);
        Ok(self.proxies.len() - 1)
    }

    /// The data dir agent `i` gets (known before it is added, to mount things in it).
    fn data_dir(&self, i: usize) -> PathBuf {
        self.tmp.path().join(format!("agent{}", i + 1))
    }

    /// Adds an agent in its own namespace on the lab's bridge, as [`Lab::start`] does, but
    /// with `extra` flags; waits for it to be Ready. Returns its index.
    fn add_agent(&mut self, extra: &[String]) -> Result<usize> {
        let lab = &mut self.lab;
        let i = lab.agents.len();
        let name = format!("{}-n{}", lab.id, i + 1);
        let ns = Netns::new(&format!("bt-{name}"))?;
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let pid = std::process::id();
        let (a, b) = (format!("vi{pid:x}x{n}a"), format!("vi{pid:x}x{n}b"));
        let ip = |args: &[&str]| sh(Command::new("ip").args(args)).map(|_| ());
        ip(&["link", "add", &a, "type", "veth", "peer", "name", &b])?;
        ip(&["link", "set", &a, "netns", &lab.hub.0])?;
        ip(&["link", "set", &b, "netns", &ns.0])?;
        ip(&[
            "-n", &lab.hub.0, "link", "set", &a, "master", "br-lab", "up",
        ])?;
        ip(&["-n", &ns.0, "link", "set", &b, "name", "eth0"])?;
        let addr = format!("10.213.{}.{}", lab.subnet, 11 + i);
        ip(&[
            "-n",
            &ns.0,
            "addr",
            "add",
            &format!("{addr}/24"),
            "dev",
            "eth0",
        ])?;
        ip(&["-n", &ns.0, "link", "set", "eth0", "up"])?;
        let data_dir = self.tmp.path().join(format!("agent{}", i + 1));
        fs::create_dir_all(&data_dir)?;
        lab.agents.push(Agent {
            name,
            ns,
            addr,
            data_dir,
            proc: None,
            program: None,
        });
        self.args.push(extra.to_vec());
        self.start_agent(i)?;
        Ok(i)
    }

    /// (Re)starts agent `i` with its flags and waits for it to be Ready.
    fn start_agent(&mut self, i: usize) -> Result<()> {
        let mqtt = self.lab.mqtt_url();
        let a = &mut self.lab.agents[i];
        let mut cmd = a.ns.cmd(bin("baton-agent"));
        cmd.args(["--coordinator", &mqtt, "--node-name", &a.name])
            .args(["--heartbeat-secs", "1"])
            .args(baton_e2e::DEV_AGENT_FLAGS)
            .args(["--pod-cidr", &format!("10.42.{}.0/24", i + 1)])
            .args(["--labels", &format!("baton-node={}", a.name)])
            .arg("--data-dir")
            .arg(&a.data_dir)
            .args(&self.args[i])
            // (The lab's eviction levels and 1 s transition period come with `Netns::cmd`:
            // a pull that fills the small image disk for a moment must not keep the node
            // tainted for kubelet's 5 min.)
            .env("RUST_LOG", "info,libcgroups=error,libcontainer=warn");
        let log = a.data_dir.with_extension("log");
        a.proc = Some(Proc::spawn_appending(&a.name.clone(), &mut cmd, log)?);
        let name = a.name.clone();
        let lab = &self.lab;
        wait_for(&format!("node {name} Ready"), LONG, || {
            Ok(node_ready(lab, &name)?.then_some(()))
        })
    }

    fn node(&self, i: usize) -> String {
        self.lab.agents[i].name.clone()
    }

    fn store(&self, i: usize) -> PathBuf {
        self.lab.agents[i].data_dir.join("images")
    }

    /// Runs `f`; on failure prints the logs of every process first.
    fn check(&self, r: Result<()>) -> Result<()> {
        if r.is_err() {
            self.lab.dump_logs();
            for (i, p) in self.proxies.iter().enumerate() {
                eprintln!("----- proxy {i} requests -----");
                for r in p.requests() {
                    eprintln!("{r:?}");
                }
            }
        }
        r
    }
}

fn node_ready(lab: &Lab, name: &str) -> Result<bool> {
    let nodes = lab.get_json(&["get", "nodes"])?;
    Ok(items(&nodes)
        .iter()
        .any(|n| n["metadata"]["name"] == name && n["status"]["ready"] == true))
}

// ----- pods -------------------------------------------------------------------------------

/// A one-container pod pinned to `node`. `command` replaces the image's entrypoint.
fn pod(name: &str, node: &str, image: &str, policy: Option<&str>, command: &[&str]) -> String {
    let mut c = format!("  - name: c\n    image: {image}\n");
    if let Some(p) = policy {
        c.push_str(&format!("    imagePullPolicy: {p}\n"));
    }
    if !command.is_empty() {
        c.push_str(&format!("    command: {}\n", json!(command)));
    }
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  nodeSelector: {{baton-node: {node}}}\n  terminationGracePeriodSeconds: 1\n  containers:\n{c}"
    )
}

const SLEEP: &[&str] = &["sleep", "3600"];

fn get_pod(lab: &Lab, name: &str) -> Result<Value> {
    lab.get_json(&["get", "pod", name])
}

fn running(p: &Value) -> bool {
    p["status"]["phase"] == "Running"
        && p["status"]["containerStatuses"][0]["state"]["running"].is_object()
}

fn wait_running(lab: &Lab, name: &str) -> Result<Value> {
    wait_for(&format!("pod {name} Running"), LONG, || {
        let p = get_pod(lab, name)?;
        Ok(running(&p).then_some(p))
    })
}

/// Waits until the pod's container reports a failure containing `needle`; returns it.
fn wait_failed(lab: &Lab, name: &str, needle: &str) -> Result<String> {
    wait_for(&format!("pod {name} to fail with {needle:?}"), LONG, || {
        let p = get_pod(lab, name)?;
        let reason = p["status"]["containerStatuses"][0]["state"]["failed"]["reason"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        if reason.contains(needle) {
            Ok(Some(reason))
        } else {
            bail!("status now: {}", p["status"])
        }
    })
}

fn delete_pod(rig: &Rig, name: &str, node: &str) -> Result<()> {
    let uid = get_pod(&rig.lab, name)?["metadata"]["uid"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    rig.lab.baton(&["delete", "pod", name])?;
    wait_for(&format!("pod {name} gone"), LONG, || {
        let gone = rig
            .lab
            .pods()?
            .iter()
            .all(|p| p["metadata"]["name"] != name);
        Ok(gone.then_some(()))
    })?;
    wait_cleaned_up(&rig.lab, node, &uid, LONG)
}

// ----- registry access from the test -------------------------------------------------------

const INDEX: &str = "application/vnd.oci.image.index.v1+json";
const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

fn curl(lab: &Lab, args: &[&str]) -> Result<Vec<u8>> {
    Ok(sh(lab.hub.cmd("curl").args(["-fsS"]).args(args))?.stdout)
}

fn get_json_url(lab: &Lab, url: &str, accept: &str) -> Result<Value> {
    let body = curl(lab, &["-H", &format!("Accept: {accept}"), url])?;
    Ok(serde_json::from_slice(&body)?)
}

fn sha256(b: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(b)))
}

fn hex_of(d: &str) -> &str {
    d.trim_start_matches("sha256:")
}

/// The linux/amd64 image of a tag in the lab's registry, as the agent will see it.
#[derive(Debug, Clone)]
struct ImageInfo {
    index: String,
    config: String,
    /// (digest, compressed size), bottom first.
    layers: Vec<(String, u64)>,
    diff_ids: Vec<String>,
}

fn image_info(lab: &Lab, repo: &str, tag: &str) -> Result<ImageInfo> {
    let base = format!("http://{}/v2/{repo}", lab.registry());
    let index_bytes = curl(
        lab,
        &[
            "-H",
            &format!("Accept: {INDEX}"),
            &format!("{base}/manifests/{tag}"),
        ],
    )?;
    let index: Value = serde_json::from_slice(&index_bytes)?;
    let entry = index["manifests"]
        .as_array()
        .context("an index")?
        .iter()
        .find(|m| m["platform"]["architecture"] == "amd64")
        .context("an amd64 entry")?
        .clone();
    let manifest = entry["digest"].as_str().context("digest")?.to_owned();
    let m = get_json_url(lab, &format!("{base}/manifests/{manifest}"), MANIFEST)?;
    let config = m["config"]["digest"].as_str().context("config")?.to_owned();
    let cfg = get_json_url(lab, &format!("{base}/blobs/{config}"), "*/*")?;
    Ok(ImageInfo {
        index: sha256(&index_bytes),
        config,
        layers: m["layers"]
            .as_array()
            .context("layers")?
            .iter()
            .map(|l| {
                (
                    l["digest"].as_str().unwrap_or_default().to_owned(),
                    l["size"].as_u64().unwrap_or_default(),
                )
            })
            .collect(),
        diff_ids: cfg["rootfs"]["diff_ids"]
            .as_array()
            .context("diff_ids")?
            .iter()
            .map(|d| d.as_str().unwrap_or_default().to_owned())
            .collect(),
    })
}

/// Uploads one blob to `repo` (Distribution's monolithic upload).
fn put_blob(rig: &Rig, repo: &str, data: &[u8]) -> Result<String> {
    let lab = &rig.lab;
    let digest = sha256(data);
    let file = rig.tmp.path().join(format!("blob-{}", hex_of(&digest)));
    fs::write(&file, data)?;
    let head = curl(
        lab,
        &[
            "-X",
            "POST",
            "-D",
            "-",
            "-o",
            "/dev/null",
            &format!("http://{}/v2/{repo}/blobs/uploads/", lab.registry()),
        ],
    )?;
    let head = String::from_utf8_lossy(&head);
    let location = head
        .lines()
        .find_map(|l| {
            l.split_once(':')
                .filter(|(k, _)| k.eq_ignore_ascii_case("location"))
                .map(|(_, v)| v.trim().to_owned())
        })
        .context("upload location")?;
    let location = if location.starts_with('/') {
        format!("http://{}{location}", lab.registry())
    } else {
        location
    };
    let sep = if location.contains('?') { '&' } else { '?' };
    curl(
        lab,
        &[
            "-X",
            "PUT",
            "-H",
            "Content-Type: application/octet-stream",
            "--data-binary",
            &format!("@{}", file.display()),
            &format!("{location}{sep}digest={digest}"),
        ],
    )?;
    let _ = fs::remove_file(&file);
    Ok(digest)
}

/// A one-file tar (ustar) archive.
fn tar_one(name: &str, data: &[u8]) -> Vec<u8> {
    let mut h = [0u8; 512];
    h[..name.len()].copy_from_slice(name.as_bytes());
    let mut field = |off: usize, s: String| h[off..off + s.len()].copy_from_slice(s.as_bytes());
    field(100, "0000644\0".into());
    field(108, "0000000\0".into());
    field(116, "0000000\0".into());
    field(124, format!("{:011o}\0", data.len()));
    field(136, "00000000000\0".into());
    field(257, "ustar\0".into());
    field(263, "00".into());
    h[156] = b'0';
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|&b| b as u32).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    let mut out = h.to_vec();
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(512) * 512 + 1024, 0);
    out
}

/// Incompressible bytes (xorshift), different for every `seed`.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn gzip(data: &[u8]) -> Result<Vec<u8>> {
    use std::io::Write;
    let mut child = Command::new("gzip")
        .args(["-n", "-1"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let mut stdin = child.stdin.take().context("stdin")?;
    let data = data.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&data));
    let out = child.wait_with_output()?;
    writer
        .join()
        .map_err(|_| anyhow::anyhow!("gzip writer"))??;
    Ok(out.stdout)
}

/// Pushes `repo:tag`: busybox's amd64 base layer plus one layer holding `file` (a tar,
/// gzipped if `gz`), running `sleep 3600`. Returns the extra layer's digest.
fn push_image(rig: &Rig, repo: &str, file: &[u8], gz: bool) -> Result<String> {
    let tar = tar_one("filler.bin", file);
    let diff_id = sha256(&tar);
    let (blob, media) = if gz {
        (gzip(&tar)?, "application/vnd.oci.image.layer.v1.tar+gzip")
    } else {
        (tar, "application/vnd.oci.image.layer.v1.tar")
    };
    push_layer(rig, repo, &blob, &diff_id, media)
}

/// Pushes `repo:1`: busybox's amd64 base layer plus the layer `blob` (whose uncompressed
/// digest is `diff_id`), running `sleep 3600`. Returns the layer's digest.
fn push_layer(rig: &Rig, repo: &str, blob: &[u8], diff_id: &str, media: &str) -> Result<String> {
    let lab = &rig.lab;
    let bb = image_info(lab, "baton/busybox", "1")?;
    let (base, base_size) = bb.layers[0].clone();
    curl(
        lab,
        &[
            "-X",
            "POST",
            "-o",
            "/dev/null",
            &format!(
                "http://{}/v2/{repo}/blobs/uploads/?mount={base}&from=baton/busybox",
                lab.registry()
            ),
        ],
    )?;
    let layer = put_blob(rig, repo, blob)?;
    let config = json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"], "Cmd": SLEEP},
        "rootfs": {"type": "layers", "diff_ids": [bb.diff_ids[0], diff_id]},
    });
    let config = serde_json::to_vec(&config)?;
    let config_digest = put_blob(rig, repo, &config)?;
    let manifest = json!({
        "schemaVersion": 2, "mediaType": MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config.len()},
        "layers": [
            {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": base, "size": base_size},
            {"mediaType": media, "digest": layer, "size": blob.len()},
        ],
    });
    let file = rig
        .tmp
        .path()
        .join(format!("manifest-{}", repo.replace('/', "_")));
    fs::write(&file, serde_json::to_vec(&manifest)?)?;
    curl(
        lab,
        &[
            "-X",
            "PUT",
            "-H",
            &format!("Content-Type: {MANIFEST}"),
            "--data-binary",
            &format!("@{}", file.display()),
            &format!("http://{}/v2/{repo}/manifests/1", lab.registry()),
        ],
    )?;
    Ok(layer)
}

/// Allocated bytes under `path` (what the agent's disk budget measures), hard links once.
fn du(path: &Path) -> Result<u64> {
    let out = sh(Command::new("du").args(["-s", "-B1"]).arg(path))?;
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .context("du output")?
        .parse()
        .context("du number")
}

fn layer_dir(rig: &Rig, i: usize, digest: &str) -> PathBuf {
    rig.store(i).join("layers/sha256").join(hex_of(digest))
}

// ----- 1. dedup, pull policies, digest pins ------------------------------------------------

#[test]
fn shared_layers_and_concurrent_pulls_download_once_and_policies_hold() -> Result<()> {
    let mut rig = Rig::new("imgd")?;
    let r = dedup_steps(&mut rig);
    rig.check(r)
}

fn dedup_steps(rig: &mut Rig) -> Result<()> {
    let reg = rig.lab.registry();
    let px = rig.proxy_to(&reg)?;
    let p = rig.proxies[px].addr();
    let i = rig.add_agent(&["--insecure-registry".into(), p.clone()])?;
    let node = rig.node(i);
    let echo = image_info(&rig.lab, "baton/http-echo", "1")?;
    let bb = image_info(&rig.lab, "baton/busybox", "1")?;
    ensure!(
        echo.layers[0] == bb.layers[0],
        "http-echo and busybox no longer share their base layer: {echo:?} {bb:?}"
    );
    let (base, base_size) = bb.layers[0].clone();

    // Two pods of one image and a third of an image sharing its base layer, all at once.
    let yaml = [
        pod(
            "echo-a",
            &node,
            &format!("{p}/baton/http-echo:1"),
            None,
            &[],
        ),
        pod(
            "echo-b",
            &node,
            &format!("{p}/baton/http-echo:1"),
            None,
            &[],
        ),
        pod("bb", &node, &format!("{p}/baton/busybox:1"), None, SLEEP),
    ]
    .join("---\n");
    let start = Instant::now();
    rig.lab.apply(&yaml)?;
    let a = wait_running(&rig.lab, "echo-a")?;
    wait_running(&rig.lab, "echo-b")?;
    wait_running(&rig.lab, "bb")?;
    let elapsed = start.elapsed();
    let proxy = &rig.proxies[px];
    let base_gets = proxy.blob_gets(&base);
    ensure!(
        base_gets.len() == 1,
        "the shared base layer was fetched {} times: {base_gets:?}",
        base_gets.len()
    );
    for d in [&echo.layers[1].0, &echo.config, &bb.config] {
        let n = proxy.blob_gets(d).len();
        ensure!(n == 1, "blob {d} fetched {n} times");
    }
    let payload: u64 = echo.layers.iter().map(|l| l.1).sum::<u64>();
    let total = proxy.total_bytes_down();
    // Layers once, plus manifests, configs and HTTP headers (a few KiB).
    ensure!(
        total >= payload && total < payload + 64 * 1024,
        "{total} bytes downloaded for {payload} bytes of layers"
    );
    ensure!(
        base_gets[0].bytes_down < base_size + 2048,
        "base layer: {} bytes relayed for {base_size}",
        base_gets[0].bytes_down
    );
    let layers = fs::read_dir(rig.store(i).join("layers/sha256"))?.count();
    ensure!(layers == 2, "{layers} layers unpacked, expected base + www");
    eprintln!(
        "FIGURE dedup: 3 pods (2 images, 1 shared layer) pulled cold in {:.1?}: {total} bytes over the link for {payload} bytes of layers; {} requests",
        elapsed,
        proxy.requests().len()
    );
    let body = http_info(
        &rig.lab,
        &node,
        a["status"]["podIP"].as_str().unwrap_or_default(),
        Duration::from_secs(10),
    )?;
    ensure!(body.contains("version=1"), "echo-a answered {body:?}");

    // IfNotPresent with the image present: no network at all.
    proxy.clear_log();
    let img1 = format!("{p}/baton/http-echo:1");
    rig.lab
        .apply(&pod("ifnp", &node, &img1, Some("IfNotPresent"), &[]))?;
    wait_running(&rig.lab, "ifnp")?;
    let reqs = proxy.requests();
    ensure!(
        reqs.is_empty(),
        "IfNotPresent went to the registry: {reqs:?}"
    );

    // Always: the manifest is checked again, no blob is fetched.
    rig.lab
        .apply(&pod("always", &node, &img1, Some("Always"), &[]))?;
    wait_running(&rig.lab, "always")?;
    let reqs = proxy.requests();
    ensure!(
        reqs.iter().any(|r| r.path.contains("/manifests/1")),
        "Always did not re-check the manifest: {reqs:?}"
    );
    ensure!(
        reqs.iter().all(|r| !r.path.contains("/blobs/")),
        "Always fetched blobs already present: {reqs:?}"
    );

    // Never with the image absent: a clear failure, and no network.
    proxy.clear_log();
    rig.lab.apply(&pod(
        "never",
        &node,
        &format!("{p}/baton/http-echo:2"),
        Some("Never"),
        &[],
    ))?;
    let reason = wait_failed(&rig.lab, "never", "pull policy is Never")?;
    ensure!(reason.starts_with("ImagePullFailed: "), "{reason}");
    ensure!(proxy.requests().is_empty(), "Never went to the registry");

    // A digest-pinned reference: fetched by that digest, and it runs.
    proxy.clear_log();
    rig.lab.apply(&pod(
        "pinned",
        &node,
        &format!("{p}/baton/busybox@{}", bb.index),
        None,
        SLEEP,
    ))?;
    wait_running(&rig.lab, "pinned")?;
    let reqs = proxy.requests();
    ensure!(
        reqs.iter()
            .any(|r| r.path.ends_with(&format!("/manifests/{}", bb.index))),
        "the pinned digest was not asked for: {reqs:?}"
    );
    ensure!(
        !reqs.iter().any(|r| r.path.contains("/manifests/1")),
        "a pinned pull resolved the tag: {reqs:?}"
    );
    // A pin to a digest the registry does not have fails clearly.
    let missing = format!("sha256:{}", "0".repeat(64));
    rig.lab.apply(&pod(
        "badpin",
        &node,
        &format!("{p}/baton/busybox@{missing}"),
        None,
        SLEEP,
    ))?;
    let reason = wait_failed(&rig.lab, "badpin", "ImagePullFailed")?;
    ensure!(reason.contains("not found"), "{reason}");
    Ok(())
}

// ----- 2. resume after a killed agent; corrupt and truncated blobs -----------------------

#[test]
fn killed_mid_pull_resumes_and_corrupt_blobs_are_refetched() -> Result<()> {
    let mut rig = Rig::new("imgr")?;
    let r = resume_steps(&mut rig);
    rig.check(r)
}

fn resume_steps(rig: &mut Rig) -> Result<()> {
    let reg = rig.lab.registry();
    let px = rig.proxy_to(&reg)?;
    let p = rig.proxies[px].addr();
    let i = rig.add_agent(&["--insecure-registry".into(), p.clone()])?;
    let node = rig.node(i);
    let echo = image_info(&rig.lab, "baton/http-echo", "1")?;
    let (base, base_size) = echo.layers[0].clone();
    let top = echo.layers[1].0.clone();
    let blobs = rig.store(i).join("blobs/sha256");
    let partial = blobs.join(format!("{}.partial", hex_of(&base)));

    // A slow link for the big layer, so the agent can be killed in the middle of it.
    rig.proxies[px].set_rules(vec![Rule {
        path_contains: base.clone(),
        bytes_per_sec: Some(64 * 1024),
        ..Rule::default()
    }]);
    let img = format!("{p}/baton/http-echo:1");
    rig.lab.apply(&pod("echo", &node, &img, None, &[]))?;
    wait_for("a third of the base layer on disk", LONG, || {
        let have = fs::metadata(&partial).map(|m| m.len()).unwrap_or(0);
        Ok((have > base_size / 3 && layer_dir(rig, i, &top).is_dir()).then_some(()))
    })?;
    rig.lab.kill_agent(i);
    let have = fs::metadata(&partial)?.len();
    ensure!(have < base_size, "the base layer finished before the kill");
    let before = rig.proxies[px].requests().len();
    rig.proxies[px].set_rules(Vec::new());

    rig.start_agent(i)?;
    let pod_v = wait_running(&rig.lab, "echo")?;
    let proxy = &rig.proxies[px];
    let after: Vec<_> = proxy.requests().split_off(before);
    let base_after: Vec<_> = after
        .iter()
        .filter(|r| r.method == "GET" && r.path.contains(&format!("/blobs/{base}")))
        .collect();
    ensure!(
        base_after.len() == 1,
        "base layer fetched {} times after the restart: {after:?}",
        base_after.len()
    );
    let resumed = base_after[0];
    ensure!(
        resumed.range.as_deref() == Some(&format!("bytes={have}-")),
        "not resumed from the {have} bytes on disk: {resumed:?}"
    );
    ensure!(resumed.status == Some(206), "{resumed:?}");
    ensure!(
        resumed.bytes_down < base_size - have + 2048,
        "{} bytes relayed to finish {} missing",
        resumed.bytes_down,
        base_size - have
    );
    for d in [&echo.config, &top] {
        let n = proxy.blob_gets(d).len();
        ensure!(n == 1, "completed blob {d} downloaded {n} times");
    }
    let total_base: u64 = proxy.blob_gets(&base).iter().map(|r| r.bytes_down).sum();
    eprintln!(
        "FIGURE resume: killed at {have}/{base_size} bytes; {total_base} bytes relayed for the layer in all (headers and bytes lost in flight included)"
    );
    ensure!(layer_dir(rig, i, &base).is_dir(), "base layer not unpacked");
    ensure!(!partial.exists(), "partial left behind");
    let body = http_info(
        &rig.lab,
        &node,
        pod_v["status"]["podIP"].as_str().unwrap_or_default(),
        Duration::from_secs(10),
    )?;
    ensure!(body.contains("version=1"), "{body:?}");

    // A corrupt config blob is never used: it is deleted and fetched again.
    let config_file = blobs.join(hex_of(&echo.config));
    let mut bytes = fs::read(&config_file)?;
    bytes[10] ^= 0x55;
    fs::write(&config_file, &bytes)?;
    // A truncated, wrong partial of http-echo:2's top layer: resumed, fails its digest,
    // discarded and fetched whole.
    let echo2 = image_info(&rig.lab, "baton/http-echo", "2")?;
    let top2 = echo2.layers[1].0.clone();
    fs::write(
        blobs.join(format!("{}.partial", hex_of(&top2))),
        vec![b'x'; 100],
    )?;
    proxy.clear_log();
    rig.lab.apply(&pod("again", &node, &img, None, &[]))?;
    wait_running(&rig.lab, "again")?;
    let n = proxy.blob_gets(&echo.config).len();
    ensure!(n == 1, "corrupt config fetched {n} times");
    ensure!(
        proxy.blob_gets(&base).is_empty() && proxy.blob_gets(&top).is_empty(),
        "layers fetched again: {:?}",
        proxy.requests()
    );
    ensure!(
        rig.lab.agent_log(i).contains("corrupt"),
        "the agent did not report the corrupt blob"
    );
    rig.lab.apply(&pod(
        "v2",
        &node,
        &format!("{p}/baton/http-echo:2"),
        None,
        &[],
    ))?;
    let v2 = wait_running(&rig.lab, "v2")?;
    let gets = proxy.blob_gets(&top2);
    ensure!(
        gets.len() == 2
            && gets[0].range.as_deref() == Some("bytes=100-")
            && gets[1].range.is_none(),
        "a bad partial must be resumed, fail, and be fetched whole: {gets:?}"
    );
    let body = http_info(
        &rig.lab,
        &node,
        v2["status"]["podIP"].as_str().unwrap_or_default(),
        Duration::from_secs(10),
    )?;
    ensure!(body.contains("version=2"), "{body:?}");
    Ok(())
}

// ----- 3. GC under a tiny budget ------------------------------------------------------

#[test]
fn gc_under_a_tiny_budget_removes_lru_unused_images_only() -> Result<()> {
    let mut rig = Rig::new("imgg")?;
    let r = gc_steps(&mut rig);
    rig.check(r)
}

fn gc_steps(rig: &mut Rig) -> Result<()> {
    const F: usize = 640 * 1024;
    let mut layers = Vec::new();
    for (k, name) in ["a", "b", "c", "d"].iter().enumerate() {
        layers.push(push_image(
            rig,
            &format!("fill/{name}"),
            &noise(F, k as u64 + 1),
            false,
        )?);
    }
    let reg = rig.lab.registry();
    let px = rig.proxy_to(&reg)?;
    let p = rig.proxies[px].addr();
    let insecure = vec!["--insecure-registry".to_string(), p.clone()];
    let i = rig.add_agent(&insecure)?;
    let node = rig.node(i);
    let img = |n: &str| format!("{p}/fill/{n}:1");

    // Measure what the running pod's image takes, then restart with a budget that holds
    // it plus about two and a half more images of this size.
    rig.lab.apply(&pod("a", &node, &img("a"), None, &[]))?;
    wait_running(&rig.lab, "a")?;
    let used = du(&rig.store(i))?;
    let one = du(&layer_dir(rig, i, &layers[0]))? + 3 * 4096;
    let budget = used + one + 2 * F as u64 + one / 2;
    rig.lab.agents[i].proc.take(); // SIGTERM; its pod keeps running
    rig.args[i].extend(["--image-disk-budget".into(), budget.to_string()]);
    rig.start_agent(i)?;
    wait_running(&rig.lab, "a")?;

    // b, then c, each run and deleted; then b used again, so c is the least recent.
    for name in ["b", "c", "b"] {
        rig.lab.apply(&pod(name, &node, &img(name), None, &[]))?;
        wait_running(&rig.lab, name)?;
        delete_pod(rig, name, &node)?;
    }
    for (k, l) in layers.iter().take(3).enumerate() {
        ensure!(layer_dir(rig, i, l).is_dir(), "image {k} missing before d");
    }
    rig.lab.apply(&pod("d", &node, &img("d"), None, &[]))?;
    wait_running(&rig.lab, "d")?;
    ensure!(
        layer_dir(rig, i, &layers[0]).is_dir(),
        "the running pod's image was collected"
    );
    ensure!(
        !layer_dir(rig, i, &layers[2]).exists(),
        "c, the least recently used image, was kept"
    );
    ensure!(
        layer_dir(rig, i, &layers[1]).is_dir(),
        "b, used more recently than c, was collected"
    );
    ensure!(layer_dir(rig, i, &layers[3]).is_dir(), "d missing");
    let now = du(&rig.store(i))?;
    ensure!(now <= budget, "store uses {now} of a {budget} budget");
    ensure!(running(&get_pod(&rig.lab, "a")?), "pod a stopped");
    eprintln!("FIGURE gc: budget {budget} B, store after collection {now} B");
    Ok(())
}

// ----- 4. a full disk ---------------------------------------------------------------

#[test]
fn disk_full_pull_fails_clearly_and_harms_nothing() -> Result<()> {
    let mut rig = Rig::new("imgf")?;
    let r = full_steps(&mut rig);
    rig.check(r)
}

fn full_steps(rig: &mut Rig) -> Result<()> {
    // An image too big to store at all (refused before downloading), and a small gzip
    // "bomb" that only fills the disk when unpacked.
    let big = push_image(rig, "fill/big", &noise(12 << 20, 7), false)?;
    push_image(rig, "fill/bomb", &vec![0u8; 24 << 20], true)?;
    let reg = rig.lab.registry();
    let px = rig.proxy_to(&reg)?;
    let p = rig.proxies[px].addr();
    let store = rig.data_dir(0).join("images");
    fs::create_dir_all(&store)?;
    sh(Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=8m", "baton-img-test"])
        .arg(&store))?;
    rig.cleanups.push(Cleanup::Umount(store.clone()));
    let i = rig.add_agent(&["--insecure-registry".into(), p.clone()])?;
    let node = rig.node(i);

    rig.lab.apply(&pod(
        "web",
        &node,
        &format!("{p}/baton/http-echo:1"),
        None,
        &[],
    ))?;
    let web = wait_running(&rig.lab, "web")?;
    let web_uid = web["metadata"]["uid"].clone();

    rig.lab
        .apply(&pod("big", &node, &format!("{p}/fill/big:1"), None, &[]))?;
    let reason = wait_failed(&rig.lab, "big", "ImagePullFailed: disk budget")?;
    eprintln!("FIGURE disk-full (too big): {reason}");
    ensure!(
        rig.proxies[px].blob_gets(&big).is_empty(),
        "the link was spent on an image that cannot fit"
    );

    rig.lab
        .apply(&pod("bomb", &node, &format!("{p}/fill/bomb:1"), None, &[]))?;
    let reason = wait_failed(&rig.lab, "bomb", "ImagePullFailed: disk budget")?;
    eprintln!("FIGURE disk-full (fills while unpacking): {reason}");

    // Nothing else harmed: the running pod still answers, the node is Ready, the disk is
    // not left full, and the image already there still starts pods.
    let web = get_pod(&rig.lab, "web")?;
    ensure!(running(&web) && web["metadata"]["uid"] == web_uid, "{web}");
    let body = http_info(
        &rig.lab,
        &node,
        web["status"]["podIP"].as_str().unwrap_or_default(),
        Duration::from_secs(10),
    )?;
    ensure!(body.contains("version=1"), "{body:?}");
    ensure!(node_ready(&rig.lab, &node)?, "node not Ready");
    let left: Vec<_> = fs::read_dir(store.join("layers/sha256"))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp-"))
        .collect();
    ensure!(left.is_empty(), "half-unpacked layers left: {left:?}");
    let st = sh(Command::new("df")
        .args(["-B1", "--output=avail"])
        .arg(&store))?;
    let avail: u64 = String::from_utf8_lossy(&st.stdout)
        .lines()
        .nth(1)
        .unwrap_or_default()
        .trim()
        .parse()?;
    ensure!(
        avail > 2 << 20,
        "the failed pulls left the disk full ({avail} B free)"
    );
    rig.lab.apply(&pod(
        "web2",
        &node,
        &format!("{p}/baton/http-echo:1"),
        None,
        &[],
    ))?;
    wait_running(&rig.lab, "web2")?;
    Ok(())
}

// ----- 5. auth and TLS -----------------------------------------------------------------

#[test]
fn registry_auth_and_tls() -> Result<()> {
    let mut rig = Rig::new("imga")?;
    let r = auth_steps(&mut rig);
    rig.check(r)
}

fn auth_steps(rig: &mut Rig) -> Result<()> {
    let dir = rig.tmp.path().join("pki");
    fs::create_dir_all(&dir)?;
    let hub_ip = rig.lab.hub_ip();
    let ossl = |args: &[&str]| sh(Command::new("openssl").current_dir(&dir).args(args)).map(|_| ());
    ossl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=baton-test-ca",
    ])?;
    ossl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "srv.key",
        "-out",
        "srv.csr",
        "-subj",
        "/CN=registry",
    ])?;
    fs::write(dir.join("ext"), format!("subjectAltName=IP:{hub_ip}\n"))?;
    ossl(&[
        "x509",
        "-req",
        "-in",
        "srv.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "srv.pem",
        "-days",
        "2",
        "-extfile",
        "ext",
    ])?;
    let htp = sh(Command::new("htpasswd").args(["-Bbn", "baton", "s3cret"]))?;
    fs::write(dir.join("htpasswd"), &htp.stdout)?;

    // A TLS + htpasswd registry serving the lab registry's storage.
    let addr = format!("{hub_ip}:5443");
    let reg_dir = rig.tmp.path().join("secure-registry");
    sh(rig
        .lab
        .hub
        .cmd(repo_root().join("images/registry.sh"))
        .args(["start", &addr])
        .arg(&reg_dir)
        .env("REG_HTPASSWD", dir.join("htpasswd"))
        .env("REG_TLS_CERT", dir.join("srv.pem"))
        .env("REG_TLS_KEY", dir.join("srv.key"))
        .env("REG_STORAGE", rig.lab.dir.path().join("registry/storage")))?;
    rig.cleanups.push(Cleanup::Registry {
        addr: addr.clone(),
        dir: reg_dir,
    });
    let sx = rig.proxy_to(&addr)?;
    let secure = rig.proxies[sx].addr();
    let plain_reg = rig.lab.registry();
    let px = rig.proxy_to(&plain_reg)?;
    let plain = rig.proxies[px].addr();

    let conf = |name: &str, password: &str, ca: bool| -> Result<String> {
        let mut v = json!({"auths": {secure.clone(): {"username": "baton", "password": password}}});
        if ca {
            v["caFiles"] = json!({secure.clone(): dir.join("ca.pem")});
        }
        let path = dir.join(name);
        fs::write(&path, serde_json::to_vec(&v)?)?;
        Ok(path.display().to_string())
    };
    let good = conf("good.json", "s3cret", true)?;
    let bad = conf("bad.json", "wrong", true)?;
    let no_ca = conf("noca.json", "s3cret", false)?;
    let a = rig.add_agent(&["--registry-config".into(), good])?;
    let b = rig.add_agent(&["--registry-config".into(), bad])?;
    let c = rig.add_agent(&["--registry-config".into(), no_ca])?;
    let (na, nb, nc) = (rig.node(a), rig.node(b), rig.node(c));
    let img = format!("{secure}/baton/http-echo:1");

    // Right password and the CA trusted: it pulls and runs.
    rig.lab.apply(&pod("good", &na, &img, None, &[]))?;
    let good_pod = wait_running(&rig.lab, "good")?;
    let body = http_info(
        &rig.lab,
        &na,
        good_pod["status"]["podIP"].as_str().unwrap_or_default(),
        Duration::from_secs(10),
    )?;
    ensure!(body.contains("version=1"), "{body:?}");

    // Wrong password: a clear status, and the agent stays healthy.
    rig.lab.apply(&pod("badpw", &nb, &img, None, &[]))?;
    let reason = wait_failed(&rig.lab, "badpw", "ImagePullFailed: unauthorized")?;
    eprintln!("FIGURE auth failure: {reason}");
    ensure!(
        node_ready(&rig.lab, &nb)?,
        "agent with a wrong password not Ready"
    );
    ensure!(
        rig.lab.agents[b]
            .proc
            .as_mut()
            .is_some_and(|p| p.is_running()),
        "agent exited"
    );

    // No CA: a TLS error, never a fall back to plain HTTP.
    rig.lab.apply(&pod("noca", &nc, &img, None, &[]))?;
    let reason = wait_failed(&rig.lab, "noca", "ImagePullFailed: tls error")?;
    eprintln!("FIGURE no CA: {reason}");
    // A plain-HTTP registry not marked insecure is spoken to over TLS only.
    rig.lab.apply(&pod(
        "plain",
        &nc,
        &format!("{plain}/baton/http-echo:1"),
        None,
        &[],
    ))?;
    wait_failed(&rig.lab, "plain", "ImagePullFailed")?;
    let conns = rig.proxies[px].connections();
    ensure!(
        !conns.is_empty() && conns.iter().all(|c| c.is_tls()),
        "a registry not marked insecure got plain HTTP: {conns:?}"
    );
    ensure!(
        rig.proxies[px].requests().is_empty(),
        "plain HTTP requests reached an unmarked registry"
    );
    ensure!(
        rig.proxies[sx].connections().iter().all(|c| c.is_tls()),
        "the TLS registry was downgraded"
    );
    Ok(())
}

// ----- 6. arm64 from the index, through the store as a library; figures ------------------

/// A registry on loopback with the example images, and a proxy in front of it.
struct LocalRegistry {
    proxy: Proxy,
    addr: String,
    dir: tempfile::TempDir,
}

impl LocalRegistry {
    fn start() -> Result<LocalRegistry> {
        let dir = tempfile::Builder::new()
            .prefix("baton-img-arm-")
            .tempdir()?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let addr = format!("127.0.0.1:{port}");
        sh(Command::new(repo_root().join("images/registry.sh"))
            .args(["start", &addr])
            .arg(dir.path().join("registry")))?;
        let reg = LocalRegistry {
            proxy: Proxy::start(None, "127.0.0.1:0", &addr)?,
            addr,
            dir,
        };
        sh(Command::new(repo_root().join("images/build.sh"))
            .arg("--out")
            .arg(reg.dir.path().join("images"))
            .args(["--push", &reg.addr]))?;
        Ok(reg)
    }
}

impl Drop for LocalRegistry {
    fn drop(&mut self) {
        let _ = Command::new(repo_root().join("images/registry.sh"))
            .args(["stop", &self.addr])
            .arg(self.dir.path().join("registry"))
            .output();
    }
}

fn layout_manifest(dir: &Path, repo: &str, tag: &str, arch: &str) -> Result<Value> {
    let root = dir.join("images/baton").join(repo);
    let blob = |d: &str| -> Result<Value> {
        Ok(serde_json::from_slice(&fs::read(
            root.join("blobs/sha256").join(hex_of(d)),
        )?)?)
    };
    let top: Value = serde_json::from_slice(&fs::read(root.join("index.json"))?)?;
    let idx_d = top["manifests"]
        .as_array()
        .context("index.json")?
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .context("tag")?["digest"]
        .as_str()
        .context("digest")?
        .to_owned();
    let idx = blob(&idx_d)?;
    let m = idx["manifests"]
        .as_array()
        .context("index")?
        .iter()
        .find(|m| m["platform"]["architecture"] == arch)
        .context("platform")?["digest"]
        .as_str()
        .context("digest")?
        .to_owned();
    blob(&m)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arm64_node_gets_the_arm64_manifest_and_pull_figures() -> Result<()> {
    use baton_agent::image::{ImageStore, ImageStoreConfig, Platform};
    use baton_proto::PullPolicy;

    let reg = tokio::task::spawn_blocking(LocalRegistry::start).await??;
    let p = reg.proxy.addr();
    let arm = layout_manifest(reg.dir.path(), "http-echo", "1", "arm64")?;
    let amd = layout_manifest(reg.dir.path(), "http-echo", "1", "amd64")?;
    let digest = |m: &Value, i: usize| {
        m["layers"][i]["digest"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    let (arm_base, amd_base) = (digest(&arm, 0), digest(&amd, 0));
    ensure!(
        arm_base != amd_base,
        "the arm64 and amd64 base layers are the same blob"
    );

    let store_dir = tempfile::tempdir()?;
    let mut cfg = ImageStoreConfig::new(
        store_dir.path().join("arm64"),
        Platform::new("linux", "arm64", None),
    );
    cfg.insecure_registries = vec![p.clone()];
    let store = ImageStore::new(cfg)?;
    let img = store
        .ensure(&format!("{p}/baton/http-echo:1"), PullPolicy::IfNotPresent)
        .await?;
    ensure!(img.layers[0] == arm_base, "picked {:?}", img.layers);
    ensure!(
        reg.proxy.blob_gets(&arm_base).len() == 1,
        "arm64 layer not fetched once"
    );
    ensure!(
        reg.proxy.blob_gets(&amd_base).is_empty(),
        "the amd64 layer was fetched"
    );
    let busybox = store_dir
        .path()
        .join("arm64/layers/sha256")
        .join(hex_of(&arm_base))
        .join("bin/busybox");
    let elf = fs::read(&busybox)?;
    ensure!(
        elf.len() > 20 && elf[18] == 0xB7,
        "bin/busybox is not an aarch64 ELF"
    );

    // Figures on amd64: cold, warm (IfNotPresent, Always), and a second image sharing the
    // base layer. Reported, not asserted on time.
    let mut cfg = ImageStoreConfig::new(
        store_dir.path().join("amd64"),
        Platform::new("linux", "amd64", None),
    );
    cfg.insecure_registries = vec![p.clone()];
    let store = ImageStore::new(cfg)?;
    let echo = format!("{p}/baton/http-echo:1");
    let mut figures = Vec::new();
    for (what, image, policy) in [
        ("cold http-echo:1", echo.as_str(), PullPolicy::IfNotPresent),
        ("warm IfNotPresent", echo.as_str(), PullPolicy::IfNotPresent),
        ("warm Always", echo.as_str(), PullPolicy::Always),
        (
            "busybox:1 after http-echo:1",
            &format!("{p}/baton/busybox:1"),
            PullPolicy::IfNotPresent,
        ),
        // The seed's todo app: frontend cold, its store (shares the base layer), the
        // frontend's v2 (differs only in its config), then everything warm.
        (
            "cold todo-app:1",
            &format!("{p}/baton/todo-app:1"),
            PullPolicy::IfNotPresent,
        ),
        (
            "kv:1 after todo-app:1",
            &format!("{p}/baton/kv:1"),
            PullPolicy::IfNotPresent,
        ),
        (
            "todo-app:2 after todo-app:1",
            &format!("{p}/baton/todo-app:2"),
            PullPolicy::IfNotPresent,
        ),
        (
            "warm todo-app:1 IfNotPresent",
            &format!("{p}/baton/todo-app:1"),
            PullPolicy::IfNotPresent,
        ),
        (
            "warm todo-app:1 Always",
            &format!("{p}/baton/todo-app:1"),
            PullPolicy::Always,
        ),
    ] {
        let before = reg.proxy.total_bytes_down();
        let t = Instant::now();
        store.ensure(image, policy).await?;
        let took = t.elapsed();
        let bytes = reg.proxy.total_bytes_down() - before;
        figures.push(format!("{what}: {bytes} B over the link, {took:.2?}"));
    }
    ensure!(
        reg.proxy.blob_gets(&amd_base).len() == 1,
        "the shared amd64 base layer was fetched more than once"
    );
    // Disk per image against its layers, compressed and unpacked.
    let layers_dir = store_dir.path().join("amd64/layers/sha256");
    let mut compressed = 0u64;
    let mut unpacked_tar = 0u64;
    let mut on_disk = 0u64;
    for l in amd["layers"].as_array().context("layers")? {
        let d = l["digest"].as_str().unwrap_or_default();
        compressed += l["size"].as_u64().unwrap_or_default();
        let blob = reg
            .dir
            .path()
            .join("images/baton/http-echo/blobs/sha256")
            .join(hex_of(d));
        let out = sh(Command::new("sh")
            .arg("-c")
            .arg(format!("gzip -dc {} | wc -c", blob.display())))?;
        unpacked_tar += String::from_utf8_lossy(&out.stdout).trim().parse::<u64>()?;
        on_disk += du(&layers_dir.join(hex_of(d)))?;
    }
    let whole = du(&store_dir.path().join("amd64"))?;
    figures.push(format!(
        "http-echo:1 amd64: layers {compressed} B compressed, {unpacked_tar} B as tar; unpacked on disk {on_disk} B"
    ));
    let todo = layout_manifest(reg.dir.path(), "todo-app", "1", "amd64")?;
    let mut todo_compressed = 0u64;
    let mut todo_on_disk = 0u64;
    for l in todo["layers"].as_array().context("todo-app layers")? {
        todo_compressed += l["size"].as_u64().unwrap_or_default();
        todo_on_disk += du(&layers_dir.join(hex_of(l["digest"].as_str().unwrap_or_default())))?;
    }
    figures.push(format!(
        "todo-app:1 amd64: layers {todo_compressed} B compressed; unpacked on disk {todo_on_disk} B; whole store (5 images) {whole} B"
    ));
    for f in &figures {
        eprintln!("FIGURE {f}");
    }
    Ok(())
}

// ----- 7. hostile layers (issue 9) -------------------------------------------------------

/// Names of the unpacked layers in agent `i`'s store.
fn layer_names(rig: &Rig, i: usize) -> Result<std::collections::BTreeSet<String>> {
    Ok(fs::read_dir(rig.store(i).join("layers/sha256"))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect())
}

/// Issue 9.1: a layer whose only entry is a whiteout named `..` (`.wh...`) made the agent
/// remove `<layer tmp>/..`, i.e. `<data-dir>/images/layers/sha256`: every layer on the
/// node, so the running pods' root filesystems went empty while they showed Running. Here a
/// real agent pulls such an image from the registry while a pod runs on it.
#[test]
fn whiteout_of_dot_dot_fails_the_pull_and_harms_no_other_pod() -> Result<()> {
    let mut rig = Rig::new("imgw")?;
    let r = whiteout_steps(&mut rig);
    rig.check(r)
}

fn whiteout_steps(rig: &mut Rig) -> Result<()> {
    let tar = tar_one(".wh...", b"");
    push_layer(
        rig,
        "evil/dotdot",
        &tar,
        &sha256(&tar),
        "application/vnd.oci.image.layer.v1.tar",
    )?;
    let reg = rig.lab.registry();
    let px = rig.proxy_to(&reg)?;
    let p = rig.proxies[px].addr();
    let i = rig.add_agent(&["--insecure-registry".into(), p.clone()])?;
    let node = rig.node(i);
    let echo = format!("{p}/baton/http-echo:1");

    rig.lab.apply(&pod("web", &node, &echo, None, &[]))?;
    let web = wait_running(&rig.lab, "web")?;
    let ip = web["status"]["podIP"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let before = layer_names(rig, i)?;
    ensure!(!before.is_empty(), "no layers after the first pull");

    rig.lab.apply(&pod(
        "evil",
        &node,
        &format!("{p}/evil/dotdot:1"),
        None,
        &[],
    ))?;
    wait_failed(&rig.lab, "evil", "ImagePullFailed")?;
    // Let the agent retry the pull: each retry used to wipe the store again.
    std::thread::sleep(Duration::from_secs(12));

    let after = layer_names(rig, i)?;
    ensure!(
        before.is_subset(&after),
        "layers removed: before {before:?}, after {after:?}"
    );
    ensure!(
        !after.iter().any(|n| n.contains(".tmp-")),
        "half-unpacked layer left: {after:?}"
    );
    // The running pod's rootfs is whole: its CGI script and the shell that runs it come
    // from the layers.
    let web = get_pod(&rig.lab, "web")?;
    ensure!(running(&web), "{web}");
    let body = http_info(&rig.lab, &node, &ip, Duration::from_secs(10))?;
    ensure!(body.contains("version=1"), "{body:?}");
    // The pull failed for what the layer is, and says so.
    let reason = wait_failed(&rig.lab, "evil", "ImagePullFailed: invalid layer")?;
    eprintln!("FIGURE whiteout ..: {reason}");
    ensure!(reason.contains("whiteout"), "{reason}");
    // And the image still starts pods from the store without pulling it again.
    let gets = rig.proxies[px].requests().len();
    rig.lab.apply(&pod("web2", &node, &echo, None, &[]))?;
    wait_running(&rig.lab, "web2")?;
    let manifest_only = rig.proxies[px].requests()[gets..]
        .iter()
        .all(|r| !r.path.contains("/blobs/"));
    ensure!(manifest_only, "http-echo's blobs were fetched again");
    Ok(())
}

/// A gzip of a tar holding one file of `len` zero bytes, made by a streaming `gzip`;
/// returns it and the tar's digest (its diff_id).
fn gzip_zeros(len: u64) -> Result<(Vec<u8>, String)> {
    use std::io::Write;
    let mut head = tar_one("zeros", b"");
    head.truncate(512);
    head[124..136].copy_from_slice(format!("{len:011o}\0").as_bytes());
    head[148..156].copy_from_slice(b"        ");
    let sum: u32 = head.iter().map(|&b| b as u32).sum();
    head[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    let mut child = Command::new("gzip")
        .args(["-n", "-9"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let mut stdin = child.stdin.take().context("stdin")?;
    let writer = std::thread::spawn(move || -> std::io::Result<String> {
        let mut hasher = Sha256::new();
        let mut put = |b: &[u8]| {
            hasher.update(b);
            stdin.write_all(b)
        };
        put(&head)?;
        let chunk = vec![0u8; 1 << 20];
        let mut left = len;
        while left > 0 {
            let n = left.min(chunk.len() as u64) as usize;
            put(&chunk[..n])?;
            left -= n as u64;
        }
        put(&[0u8; 1024])?;
        Ok(format!("sha256:{}", hex::encode(hasher.finalize())))
    });
    let out = child.wait_with_output()?;
    let diff_id = writer
        .join()
        .map_err(|_| anyhow::anyhow!("gzip writer"))??;
    ensure!(out.status.success(), "gzip failed");
    Ok((out.stdout, diff_id))
}

/// Allocated bytes under `root` (st_blocks, hard links once), without a subprocess, so
/// it can sample a store many times a second.
fn allocated(root: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    let mut seen = std::collections::HashSet::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let Ok(m) = fs::symlink_metadata(&p) else {
            continue;
        };
        if m.nlink() > 1 && !m.is_dir() && !seen.insert(m.ino()) {
            continue;
        }
        total += m.blocks() * 512;
        if m.is_dir() {
            if let Ok(rd) = fs::read_dir(&p) {
                stack.extend(rd.filter_map(|e| e.ok()).map(|e| e.path()));
            }
        }
    }
    total
}

/// Issue 9.4: the budget was checked only once a layer was unpacked, so a small gzip that
/// expands hugely filled the disk first. A real bomb layer (384 MiB of zeros in well under
/// 1 MiB of gzip) pulled under `--image-disk-budget 64Mi`: the pull fails with
/// `disk budget`, and the store, sampled all along, never grows past the budget plus one
/// read buffer.
#[test]
fn gzip_bomb_stops_at_the_disk_budget_while_unpacking() -> Result<()> {
    let mut rig = Rig::new("imgb")?;
    let r = bomb_steps(&mut rig);
    rig.check(r)
}

fn bomb_steps(rig: &mut Rig) -> Result<()> {
    const BUDGET: u64 = 64 << 20;
    const BOMB: u64 = 384 << 20;
    // What the unpacker may write past its accounting: one read of the tar stream (8 KiB),
    // and the temporary directory's own block; rounded up generously.
    const ONE_BUFFER: u64 = 64 << 10;
    let (gz, diff_id) = gzip_zeros(BOMB)?;
    ensure!(gz.len() < 1 << 20, "bomb is {} B compressed", gz.len());
    let bomb = push_layer(
        rig,
        "fill/bomb",
        &gz,
        &diff_id,
        "application/vnd.oci.image.layer.v1.tar+gzip",
    )?;
    let reg = rig.lab.registry();
    let px = rig.proxy_to(&reg)?;
    let p = rig.proxies[px].addr();
    let i = rig.add_agent(&[
        "--insecure-registry".into(),
        p.clone(),
        "--image-disk-budget".into(),
        "64Mi".into(),
    ])?;
    let node = rig.node(i);
    rig.lab.apply(&pod(
        "web",
        &node,
        &format!("{p}/baton/http-echo:1"),
        None,
        &[],
    ))?;
    let web = wait_running(&rig.lab, "web")?;

    let store = rig.store(i);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let (store, stop) = (store.clone(), stop.clone());
        std::thread::spawn(move || {
            let (mut peak, mut samples) = (0u64, 0u64);
            while !stop.load(Ordering::Relaxed) {
                peak = peak.max(allocated(&store));
                samples += 1;
                std::thread::sleep(Duration::from_millis(5));
            }
            (peak, samples)
        })
    };
    rig.lab
        .apply(&pod("bomb", &node, &format!("{p}/fill/bomb:1"), None, &[]))?;
    let reason = wait_failed(&rig.lab, "bomb", "ImagePullFailed: disk budget");
    stop.store(true, Ordering::Relaxed);
    let (peak, samples) = sampler
        .join()
        .map_err(|_| anyhow::anyhow!("sampler panicked"))?;
    let reason = reason?;
    eprintln!(
        "FIGURE gzip bomb: {} B gzip expanding to {BOMB} B, budget {BUDGET} B: store peak {peak} B over {samples} samples; {reason}",
        gz.len()
    );
    ensure!(
        !rig.proxies[px].blob_gets(&bomb).is_empty(),
        "the bomb was never downloaded"
    );
    ensure!(
        peak <= BUDGET + ONE_BUFFER,
        "the store grew to {peak} B under a {BUDGET} B budget"
    );
    let left: Vec<_> = layer_names(rig, i)?
        .into_iter()
        .filter(|n| n.contains(".tmp-") || n == hex_of(&bomb))
        .collect();
    ensure!(left.is_empty(), "partial bomb layer left: {left:?}");
    let now = du(&store)?;
    ensure!(now <= BUDGET, "store at {now} B after the failed pull");
    let web_now = get_pod(&rig.lab, "web")?;
    ensure!(
        running(&web_now) && web_now["metadata"]["uid"] == web["metadata"]["uid"],
        "{web_now}"
    );
    Ok(())
}
