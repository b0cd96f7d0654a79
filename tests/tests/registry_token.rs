//! Bearer-token registries (issue 3, "Registries"): Debian's docker-registry (Distribution
//! 2.8) with `auth: token`, in front of which clients must fetch a JWT from a token server
//! ([`baton_e2e::token_server`]) as they do from Docker Hub's `auth.docker.io`.
//!
//! 1. Through the agent's image store as a library, on loopback: a pull with node-level
//!    credentials from a Docker `config.json` goes through the token flow and asks the token
//!    server once per repository, not once per blob; anonymous clients get public
//!    repositories and are refused private ones; a wrong password is refused.
//! 2. End to end on real agents: the same through pods, with credentials from the node's
//!    `--registry-config` and from an `imagePullSecrets` secret held by the coordinator.
//!
//! Every registry, proxy and token server is stopped on drop, also when a test fails.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use baton_e2e::proxy::Proxy;
use baton_e2e::token_server::{Presented, TokenServer};
use baton_e2e::{items, repo_root, sh, wait_for, Broker, Lab};
use serde_json::{json, Value};

const LONG: Duration = Duration::from_secs(180);
const SERVICE: &str = "baton-test-registry";
const ISSUER: &str = "baton-test-token-issuer";
/// The token registry's port in a lab's hub namespace.
const TOKEN_REG_PORT: u16 = 5002;

/// Stops a registry started with images/registry.sh (only signals its pidfile's pid).
struct RegistryGuard {
    addr: String,
    dir: PathBuf,
}

impl Drop for RegistryGuard {
    fn drop(&mut self) {
        let _ = Command::new(repo_root().join("images/registry.sh"))
            .args(["stop", self.addr.as_str()])
            .arg(&self.dir)
            .output();
    }
}

/// Starts a token-auth registry at `addr` serving `storage`, trusting `tokens`' key.
/// `ns` runs it inside a lab's hub namespace.
fn start_token_registry(
    ns: Option<&baton_e2e::Netns>,
    addr: &str,
    dir: &Path,
    storage: &Path,
    tokens: &TokenServer,
) -> Result<RegistryGuard> {
    let script = repo_root().join("images/registry.sh");
    let mut cmd = match ns {
        Some(ns) => ns.cmd(&script),
        None => Command::new(&script),
    };
    let guard = RegistryGuard {
        addr: addr.to_owned(),
        dir: dir.to_path_buf(),
    };
    sh(cmd
        .args(["start", addr])
        .arg(dir)
        .env("REG_STORAGE", storage)
        .env("REG_TOKEN_REALM", tokens.realm())
        .env("REG_TOKEN_SERVICE", tokens.service())
        .env("REG_TOKEN_ISSUER", tokens.issuer())
        .env("REG_TOKEN_ROOTCERTS", tokens.cert_bundle()))?;
    Ok(guard)
}

/// Runs curl (in `ns` if given) and returns (status, headers, body).
fn curl(ns: Option<&baton_e2e::Netns>, args: &[&str]) -> Result<(u16, String, Vec<u8>)> {
    let mut cmd = match ns {
        Some(ns) => ns.cmd("curl"),
        None => Command::new("curl"),
    };
    let out = sh(cmd.args(["-sS", "-D", "/dev/stderr"]).args(args))?;
    let head = String::from_utf8_lossy(&out.stderr).into_owned();
    let status = head
        .lines()
        .rev()
        .find(|l| l.starts_with("HTTP/"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .context("no HTTP status from curl")?;
    Ok((status, head, out.stdout))
}

/// Checks the registry speaks the token protocol and accepts this token server's JWTs,
/// with curl (so a signing or `kid` mistake shows here, not as a puzzling pull failure).
fn preflight(ns: Option<&baton_e2e::Netns>, reg: &str, tokens: &TokenServer) -> Result<()> {
    let (status, head, _) = curl(ns, &[&format!("http://{reg}/v2/")])?;
    ensure!(status == 401, "GET /v2/ answered {status}");
    let challenge = head
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("www-authenticate:"))
        .context("no WWW-Authenticate")?;
    ensure!(
        challenge.contains("Bearer")
            && challenge.contains(&format!("realm=\"{}\"", tokens.realm()))
            && challenge.contains(&format!("service=\"{SERVICE}\"")),
        "unexpected challenge: {challenge}"
    );
    let url = format!("http://{reg}/v2/baton/http-echo/manifests/1");
    let accept = "Accept: application/vnd.oci.image.index.v1+json";
    let (status, head, _) = curl(ns, &["-H", accept, &url])?;
    ensure!(
        status == 401 && head.contains("scope=\"repository:baton/http-echo:pull\""),
        "anonymous manifest GET: {status} {head}"
    );
    let token = tokens.issue(
        Some(("baton", "s3cret")),
        &["repository:baton/http-echo:pull"],
    )?;
    let (status, _, body) = curl(
        ns,
        &[
            "-H",
            accept,
            "-H",
            &format!("Authorization: Bearer {token}"),
            &url,
        ],
    )?;
    ensure!(
        status == 200,
        "the registry refused a token ({status}): {}",
        String::from_utf8_lossy(&body)
    );
    // A token for another repository does not open this one.
    let other = tokens.issue(Some(("baton", "s3cret")), &["repository:baton/kv:pull"])?;
    let (status, _, _) = curl(
        ns,
        &[
            "-H",
            accept,
            "-H",
            &format!("Authorization: Bearer {other}"),
            &url,
        ],
    )?;
    ensure!(
        status == 401,
        "a token for baton/kv opened baton/http-echo: {status}"
    );
    Ok(())
}

/// Token requests since `from` for `scope`.
fn token_requests_for(tokens: &TokenServer, from: usize, scope: &str) -> Vec<Presented> {
    tokens.requests()[from..]
        .iter()
        .filter(|r| r.scopes.iter().any(|s| s == scope))
        .map(|r| r.presented.clone())
        .collect()
}

fn docker_config(dir: &Path, name: &str, registry: &str, password: &str) -> Result<PathBuf> {
    let auth = json!({"auths": {registry: {"username": "baton", "password": password}}});
    let path = dir.join(name);
    fs::write(&path, serde_json::to_vec(&auth)?)?;
    Ok(path)
}

// ----- 1. the image store on loopback ---------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_flow_through_the_image_store() -> Result<()> {
    use baton_agent::image::{ImageStore, ImageStoreConfig, Platform, RegistryConfig};
    use baton_proto::PullPolicy;

    let tmp = tempfile::Builder::new()
        .prefix("baton-tok-lib-")
        .tempdir()?;
    let dir = tmp.path().to_path_buf();
    let free_port = || -> Result<String> {
        let p = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        Ok(format!("127.0.0.1:{p}"))
    };

    // An open registry to push the example images to, then a token registry on its storage.
    let (open_addr, tok_addr) = (free_port()?, free_port()?);
    let storage = dir.join("storage");
    let d = dir.clone();
    let (_open, tokens, _tok, proxy) = tokio::task::spawn_blocking(move || -> Result<_> {
        let open = RegistryGuard {
            addr: open_addr.clone(),
            dir: d.join("open"),
        };
        sh(Command::new(repo_root().join("images/registry.sh"))
            .args(["start", &open_addr])
            .arg(d.join("open"))
            .env("REG_STORAGE", d.join("storage")))?;
        sh(Command::new(repo_root().join("images/build.sh"))
            .arg("--out")
            .arg(d.join("images"))
            .args(["--push", &open_addr]))?;
        let tokens = TokenServer::start(None, "127.0.0.1:0", &d.join("token"), SERVICE, ISSUER)?;
        tokens.add_user("baton", "s3cret");
        tokens.make_public("baton/busybox");
        let tok = start_token_registry(None, &tok_addr, &d.join("tokreg"), &storage, &tokens)?;
        preflight(None, &tok_addr, &tokens)?;
        let proxy = Proxy::start(None, "127.0.0.1:0", &tok_addr)?;
        Ok((open, tokens, tok, proxy))
    })
    .await??;
    let reg = proxy.addr();

    let store = |name: &str, config: Option<&Path>| -> Result<ImageStore> {
        let mut cfg = ImageStoreConfig::new(dir.join(name), Platform::new("linux", "amd64", None));
        cfg.insecure_registries = vec![reg.clone()];
        if let Some(path) = config {
            cfg.registry_config = RegistryConfig::load(path)?;
        }
        Ok(ImageStore::new(cfg)?)
    };
    let echo = format!("{reg}/baton/http-echo:1");
    let echo_scope = "repository:baton/http-echo:pull";

    // Node-level credentials from a Docker config.json: the pull goes through the token
    // flow, and one token serves the index, the manifest and every blob.
    let good = store(
        "good",
        Some(&docker_config(&dir, "good.json", &reg, "s3cret")?),
    )?;
    let img = good.ensure(&echo, PullPolicy::IfNotPresent).await?;
    let asked = token_requests_for(&tokens, 0, echo_scope);
    let blobs: Vec<_> = proxy
        .requests()
        .into_iter()
        .filter(|r| r.method == "GET" && r.path.contains("/blobs/"))
        .collect();
    eprintln!(
        "FIGURE token pull of http-echo:1: {} token request(s), {} blob GETs, {} registry requests in all",
        asked.len(),
        blobs.len(),
        proxy.requests().len()
    );
    ensure!(
        asked == vec![Presented::Valid("baton".into())],
        "token requests for one pull: {asked:?}"
    );
    // The config blob plus every layer.
    ensure!(
        blobs.len() > img.layers.len() && blobs.iter().all(|r| r.status == Some(200)),
        "blob GETs: {blobs:?}"
    );
    ensure!(
        tokens.requests()[0].granted == vec![echo_scope.to_owned()],
        "granted: {:?}",
        tokens.requests()[0].granted
    );
    // Every request after the token was fetched carried it: the only 401 is the /v2/ probe
    // that finds the realm.
    let refused: Vec<_> = proxy
        .requests()
        .into_iter()
        .filter(|r| r.status == Some(401))
        .collect();
    ensure!(
        refused.iter().all(|r| r.path == "/v2/"),
        "requests refused after the token: {refused:?}"
    );

    // Another repository is another scope, so another token; an `Always` re-pull of the
    // first within the token's lifetime reuses the cached one.
    let n = tokens.requests().len();
    good.ensure(&format!("{reg}/baton/busybox:1"), PullPolicy::IfNotPresent)
        .await?;
    good.ensure(&echo, PullPolicy::Always).await?;
    let later: Vec<String> = tokens.requests()[n..]
        .iter()
        .flat_map(|r| r.scopes.clone())
        .collect();
    ensure!(
        later == vec!["repository:baton/busybox:pull".to_owned()],
        "token requests for busybox then a re-pull of http-echo: {later:?}"
    );

    // Anonymous: the token server hands out a token with no access for a private
    // repository, which the registry refuses; a public one pulls.
    let anon = store("anon", None)?;
    let n = tokens.requests().len();
    proxy.clear_log();
    let err = match anon.ensure(&echo, PullPolicy::IfNotPresent).await {
        Ok(_) => bail!("an anonymous pull of a private repository succeeded"),
        Err(e) => e.to_string(),
    };
    ensure!(
        err.starts_with("unauthorized:") && err.contains("no credentials"),
        "{err}"
    );
    let asked = &tokens.requests()[n..];
    ensure!(
        !asked.is_empty()
            && asked
                .iter()
                .all(|r| r.presented == Presented::Anonymous && r.granted.is_empty()),
        "anonymous token requests: {asked:?}"
    );
    ensure!(
        proxy.requests_to("/blobs/").is_empty(),
        "blobs fetched without access"
    );
    anon.ensure(&format!("{reg}/baton/busybox:1"), PullPolicy::IfNotPresent)
        .await
        .context("anonymous pull of a public repository")?;

    // A wrong password: the token server says 401, the pull fails unauthorized.
    let bad = store(
        "bad",
        Some(&docker_config(&dir, "bad.json", &reg, "wrong")?),
    )?;
    let n = tokens.requests().len();
    proxy.clear_log();
    let err = match bad.ensure(&echo, PullPolicy::IfNotPresent).await {
        Ok(_) => bail!("a pull with a wrong password succeeded"),
        Err(e) => e.to_string(),
    };
    ensure!(
        err.starts_with("unauthorized:") && err.contains("check the credentials"),
        "{err}"
    );
    let asked = &tokens.requests()[n..];
    ensure!(
        !asked.is_empty()
            && asked
                .iter()
                .all(|r| r.presented == Presented::Invalid("baton".into()) && r.status == 401),
        "token requests with a wrong password: {asked:?}"
    );
    ensure!(
        proxy
            .requests()
            .iter()
            .all(|r| r.status != Some(200) || r.path == "/v2/"),
        "the registry served something to a wrong password: {:?}",
        proxy.requests()
    );
    Ok(())
}

// ----- 2. real agents, node credentials and imagePullSecrets ------------------------------

fn get_pod(lab: &Lab, name: &str) -> Result<Value> {
    lab.get_json(&["get", "pod", name])
}

fn wait_running(lab: &Lab, name: &str) -> Result<Value> {
    wait_for(&format!("pod {name} Running"), LONG, || {
        let p = get_pod(lab, name)?;
        let running = p["status"]["phase"] == "Running"
            && p["status"]["containerStatuses"][0]["state"]["running"].is_object();
        Ok(running.then_some(p))
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

/// A pod pinned to `node` that sleeps, always pulling, with extra pod-spec YAML.
fn pod(name: &str, node: &str, image: &str, spec_extra: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  nodeSelector: {{kubernetes.io/hostname: {node}}}\n  terminationGracePeriodSeconds: 1\n{spec_extra}  containers:\n  - name: c\n    image: {image}\n    imagePullPolicy: Always\n    command: [sleep, '3600']\n"
    )
}

#[test]
fn agents_pull_through_the_token_flow() -> Result<()> {
    let mut lab = Lab::start("tok", 3, Broker::Embedded)?;
    let r = agent_steps(&mut lab);
    if r.is_err() {
        lab.dump_logs();
    }
    r
}

fn agent_steps(lab: &mut Lab) -> Result<()> {
    let hub = lab.hub_ip();
    let dir = lab.dir.path().join("token-test");
    fs::create_dir_all(&dir)?;
    let tokens = TokenServer::start(
        Some(&lab.hub.0),
        &format!("{hub}:0"),
        &dir.join("token"),
        SERVICE,
        ISSUER,
    )?;
    tokens.add_user("baton", "s3cret");
    tokens.make_public("baton/busybox");
    let tok_addr = format!("{hub}:{TOKEN_REG_PORT}");
    let _registry = start_token_registry(
        Some(&lab.hub),
        &tok_addr,
        &dir.join("tokreg"),
        &lab.dir.path().join("registry/storage"),
        &tokens,
    )?;
    preflight(Some(&lab.hub), &tok_addr, &tokens)?;
    let proxy = Proxy::start(Some(&lab.hub.0), &format!("{hub}:0"), &tok_addr)?;
    let reg = proxy.addr();

    // Secrets are only sealed to enrolled nodes: restart the fleet enrolled, each agent
    // with its own node-level registry config (A right, B wrong, C none).
    lab.restart_coordinator_enrolling(&[])?;
    let configs = [
        Some(docker_config(&dir, "good.json", &reg, "s3cret")?),
        Some(docker_config(&dir, "bad.json", &reg, "wrong")?),
        None,
    ];
    for (i, config) in configs.iter().enumerate() {
        let mut args = vec![
            "--join-token".to_string(),
            lab.join_token(&[])?,
            "--coordinator-api".to_string(),
            lab.enroll_api(),
            "--insecure-registry".to_string(),
            reg.clone(),
        ];
        if let Some(path) = config {
            args.push("--registry-config".into());
            args.push(path.display().to_string());
        }
        lab.agent_args = args;
        lab.spawn_agent(i)?;
        // The node may still show Ready from before the restart: wait for the identity too.
        let (name, id_file) = (
            lab.agents[i].name.clone(),
            lab.agents[i].data_dir.join("identity.json"),
        );
        wait_for(&format!("{name} enrolled and Ready"), LONG, || {
            let nodes = lab.get_json(&["get", "nodes"])?;
            let ready = items(&nodes)
                .iter()
                .any(|n| n["metadata"]["name"] == name.as_str() && n["status"]["ready"] == true);
            Ok((ready && id_file.exists()).then_some(()))
        })?;
    }
    lab.agent_args.clear();
    let node = |i: usize| lab.agents[i].name.clone();
    let (na, nb, nc) = (node(0), node(1), node(2));
    let echo = format!("{reg}/baton/http-echo:1");
    let echo_scope = "repository:baton/http-echo:pull";

    // A: node credentials, one token for the whole pull.
    let n = tokens.requests().len();
    proxy.clear_log();
    lab.apply(&pod("good", &na, &echo, ""))?;
    wait_running(lab, "good")?;
    let asked = token_requests_for(&tokens, n, echo_scope);
    let blob_gets = proxy
        .requests()
        .iter()
        .filter(|r| r.method == "GET" && r.path.contains("/blobs/"))
        .count();
    eprintln!(
        "FIGURE agent token pull of http-echo:1: {} token request(s), {blob_gets} blob GETs",
        asked.len()
    );
    ensure!(
        asked == vec![Presented::Valid("baton".into())],
        "token requests for one pull by the agent: {asked:?}"
    );
    ensure!(blob_gets >= 3, "only {blob_gets} blob GETs");

    // B: a wrong password in the node's config.
    lab.apply(&pod("badpw", &nb, &echo, ""))?;
    let reason = wait_failed(lab, "badpw", "ImagePullFailed: unauthorized")?;
    eprintln!("FIGURE token registry, wrong password: {reason}");
    ensure!(
        tokens
            .requests()
            .iter()
            .any(|r| r.presented == Presented::Invalid("baton".into()) && r.status == 401),
        "the token server never saw the wrong password"
    );

    // C: no credentials. A private repository is refused, a public one pulls anonymously.
    let n = tokens.requests().len();
    lab.apply(&pod("anon", &nc, &echo, ""))?;
    let reason = wait_failed(lab, "anon", "ImagePullFailed: unauthorized")?;
    eprintln!("FIGURE token registry, anonymous: {reason}");
    ensure!(
        token_requests_for(&tokens, n, echo_scope)
            .iter()
            .all(|p| *p == Presented::Anonymous),
        "C sent credentials it does not have"
    );
    lab.apply(&pod("public", &nc, &format!("{reg}/baton/busybox:1"), ""))?;
    wait_running(lab, "public")?;

    // C again, with the credentials in a coordinator secret (imagePullSecrets).
    let cfg = json!({"auths": {reg.clone(): {"username": "baton", "password": "s3cret"}}});
    lab.apply(&format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: regcred\ntype: kubernetes.io/dockerconfigjson\nstringData:\n  .dockerconfigjson: '{cfg}'\n"
    ))?;
    let n = tokens.requests().len();
    lab.apply(&pod(
        "withsecret",
        &nc,
        &echo,
        "  imagePullSecrets: [{name: regcred}]\n",
    ))?;
    wait_running(lab, "withsecret")?;
    let asked = token_requests_for(&tokens, n, echo_scope);
    ensure!(
        asked.contains(&Presented::Valid("baton".into())),
        "the secret's credentials never reached the token server: {asked:?}"
    );
    Ok(())
}
