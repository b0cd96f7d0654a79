//! API tokens, roles and TLS against a real server on 127.0.0.1:0, through reqwest and
//! the real `baton` binary.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};
use baton_coordinator::contract::client_config::ClientConfig;
use baton_coordinator::server::{MqttMode, Server, ServerConfig, TlsFiles};
use serde_json::Value;
use tokio::sync::oneshot;

const WEB: &str = "\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: 2
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: echo
        image: 127.0.0.1:5000/http-echo:0.1
";

/// A running server; stops (and releases its store) when dropped.
struct Running {
    url: String,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), baton_coordinator::server::ServerError>>,
}

impl Running {
    async fn start(data: &Path, tls: Option<TlsFiles>) -> Result<Self> {
        let mut cfg = ServerConfig::new(data);
        cfg.http_listen = "127.0.0.1:0".parse()?;
        cfg.mqtt = MqttMode::Embedded {
            listen: "127.0.0.1:0".parse()?,
        };
        let scheme = if tls.is_some() { "https" } else { "http" };
        cfg.tls = tls;
        let server = Server::bind(cfg).await?;
        let url = format!("{scheme}://{}", server.http_addr());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(server.run(async move {
            let _ = stopped.await;
        }));
        Ok(Self {
            url,
            stop: Some(stop),
            task,
        })
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        self.task.abort();
    }
}

/// Runs `baton` with exactly these BATON_* variables.
fn baton(
    env: &[(&str, &str)],
    args: &[&str],
    stdin: Option<&str>,
) -> Result<(i32, String, String)> {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_baton"));
    cmd.args(args)
        .env_remove("BATON_SERVER")
        .env_remove("BATON_TOKEN")
        .env_remove("BATON_CONFIG")
        .env_remove("RUST_LOG")
        .env("HOME", "/nonexistent")
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn()?;
    if let Some(text) = stdin {
        use std::io::Write;
        child
            .stdin
            .take()
            .context("stdin")?
            .write_all(text.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    Ok((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

async fn call(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    token: Option<&str>,
    body: &str,
) -> Result<(u16, Value)> {
    let mut req = http.request(method, url).body(body.to_owned());
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.timeout(Duration::from_secs(20)).send().await?;
    let status = resp.status().as_u16();
    Ok((status, resp.json().await?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_and_roles_over_http_and_the_cli() -> Result<()> {
    let data = tempfile::tempdir()?;
    let server = Running::start(data.path(), None).await?;
    let url = server.url.clone();
    let conf = data.path().join("admin.conf");
    let conf_s = conf.to_str().context("utf-8 path")?;

    // admin.conf is private, names this server and works with the real CLI.
    let mode = std::fs::metadata(&conf)?.permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let admin_conf = ClientConfig::load(&conf)?;
    assert_eq!(admin_conf.server.as_deref(), Some(url.as_str()));
    let admin = admin_conf.token.context("admin token")?;
    let logs_dir = std::fs::read_dir(data.path())?;
    for f in logs_dir.flatten() {
        if f.path() != conf && f.path().is_file() {
            let bytes = std::fs::read(f.path())?;
            assert!(
                !bytes.windows(admin.len()).any(|w| w == admin.as_bytes()),
                "the admin token leaked into {}",
                f.path().display()
            );
        }
    }
    let (code, out, err) = baton(&[("BATON_CONFIG", conf_s)], &["token", "list"], None)?;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("admin") && !out.contains(&admin), "{out}");

    let http = reqwest::Client::new();
    let pods = format!("{url}/api/v1/pods");
    // No token, or a wrong one: 401 with a JSON error. /healthz stays open.
    let (code, v) = call(&http, reqwest::Method::GET, &pods, None, "").await?;
    assert_eq!(code, 401, "{v}");
    assert!(
        v["error"]
            .as_str()
            .is_some_and(|e| e.contains("unauthorized")),
        "{v}"
    );
    let (code, _) = call(&http, reqwest::Method::GET, &pods, Some("0123"), "").await?;
    assert_eq!(code, 401);
    let (code, _) = call(
        &http,
        reqwest::Method::GET,
        &format!("{url}/healthz"),
        None,
        "",
    )
    .await?;
    assert_eq!(code, 200);

    // The admin makes a read-only token with the CLI; it is printed once.
    let (code, ro, err) = baton(
        &[("BATON_CONFIG", conf_s)],
        &["token", "create", "--role", "read-only", "--name", "viewer"],
        None,
    )?;
    assert_eq!(code, 0, "{err}");
    let ro = ro.trim().to_owned();
    assert!(
        ro.len() >= 32 && ro.bytes().all(|b| b.is_ascii_hexdigit()),
        "{ro}"
    );

    // The admin applies; read-only can read but not write, and the store is unchanged.
    let (code, v) = call(
        &http,
        reqwest::Method::POST,
        &format!("{url}/api/v1/apply"),
        Some(&admin),
        WEB,
    )
    .await?;
    assert_eq!(code, 200, "{v}");
    let (code, before) = call(
        &http,
        reqwest::Method::GET,
        &format!("{url}/api/v1/deployments"),
        Some(&ro),
        "",
    )
    .await?;
    assert_eq!(code, 200);
    assert_eq!(before["items"][0]["spec"]["replicas"], 2, "{before}");
    for (method, path, body) in [
        (
            reqwest::Method::POST,
            "/api/v1/apply",
            WEB.replace("replicas: 2", "replicas: 5"),
        ),
        (
            reqwest::Method::DELETE,
            "/api/v1/deployments/web",
            String::new(),
        ),
        (
            reqwest::Method::POST,
            "/api/v1/deployments/web/scale",
            r#"{"replicas": 0}"#.into(),
        ),
        (
            reqwest::Method::POST,
            "/api/v1/tokens",
            r#"{"name": "x", "role": "admin"}"#.into(),
        ),
    ] {
        let (code, v) = call(
            &http,
            method.clone(),
            &format!("{url}{path}"),
            Some(&ro),
            &body,
        )
        .await?;
        assert_eq!(code, 403, "{method} {path}: {v}");
        assert!(
            v["error"].as_str().is_some_and(|e| e.contains("read-only")),
            "{v}"
        );
    }
    let (_, after) = call(
        &http,
        reqwest::Method::GET,
        &format!("{url}/api/v1/deployments"),
        Some(&admin),
        "",
    )
    .await?;
    assert_eq!(after, before);

    // The CLI with the read-only token (flags/env over no config): get works, apply is
    // refused plainly.
    let ro_env = [("BATON_SERVER", url.as_str()), ("BATON_TOKEN", ro.as_str())];
    let (code, out, err) = baton(&ro_env, &["get", "deployments"], None)?;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("web"), "{out}");
    let (code, _, err) = baton(&ro_env, &["apply", "-f", "-"], Some(WEB))?;
    assert_eq!(code, 1);
    assert!(
        err.contains("Forbidden") && err.contains("read-only"),
        "{err}"
    );
    // Without any credentials the CLI says what to do.
    let (code, _, err) = baton(&[("BATON_SERVER", url.as_str())], &["get", "pods"], None)?;
    assert_eq!(code, 1);
    assert!(
        err.contains("no credentials: pass --token, set BATON_CONFIG"),
        "{err}"
    );

    // The admin can scale; then deletes the token, which stops working at once.
    let (code, _, err) = baton(
        &[("BATON_CONFIG", conf_s)],
        &["scale", "deploy/web", "--replicas", "1"],
        None,
    )?;
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = baton(
        &[("BATON_CONFIG", conf_s)],
        &["token", "delete", "viewer"],
        None,
    )?;
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "token \"viewer\" deleted");
    let (code, _, err) = baton(&ro_env, &["get", "pods"], None)?;
    assert_eq!(code, 1);
    assert!(err.contains("Unauthorized"), "{err}");
    Ok(())
}

/// A self-signed certificate for 127.0.0.1, made with the openssl CLI.
fn self_signed(dir: &Path) -> Result<TlsFiles> {
    let cert = dir.join("api.crt");
    let key = dir.join("api.key");
    let out = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=baton-test",
        ])
        .args(["-addext", "subjectAltName=IP:127.0.0.1"])
        // A leaf, not a CA: webpki refuses a CA certificate as a server's own.
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .context("openssl (scripts/install-deps.sh installs it)")?;
    anyhow::ensure!(
        out.status.success(),
        "openssl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(TlsFiles { cert, key })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_the_ca_from_the_config() -> Result<()> {
    let data = tempfile::tempdir()?;
    let certs = tempfile::tempdir()?;
    let tls = self_signed(certs.path())?;
    let server = Running::start(data.path(), Some(tls.clone())).await?;
    let conf = data.path().join("admin.conf");
    let admin_conf = ClientConfig::load(&conf)?;
    assert_eq!(admin_conf.server.as_deref(), Some(server.url.as_str()));
    assert!(server.url.starts_with("https://"));
    assert_eq!(
        admin_conf.certificate_authority.as_deref(),
        tls.cert.to_str()
    );

    // The generated config (CA path) works.
    let conf_s = conf.to_str().context("utf-8 path")?;
    let (code, out, err) = baton(&[("BATON_CONFIG", conf_s)], &["token", "list"], None)?;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("admin"), "{out}");

    // So does an inline PEM.
    let inline = ClientConfig {
        certificate_authority: Some(std::fs::read_to_string(&tls.cert)?),
        ..admin_conf.clone()
    };
    let inline_path = certs.path().join("inline.conf");
    std::fs::write(&inline_path, inline.to_yaml())?;
    let (code, _, err) = baton(
        &[("BATON_CONFIG", inline_path.to_str().context("utf-8")?)],
        &["get", "pods"],
        None,
    )?;
    assert_eq!(code, 0, "{err}");

    // Without the CA the certificate is not trusted, and the CLI says so.
    let bare = ClientConfig {
        certificate_authority: None,
        ..admin_conf
    };
    let bare_path = certs.path().join("bare.conf");
    std::fs::write(&bare_path, bare.to_yaml())?;
    let (code, _, err) = baton(
        &[("BATON_CONFIG", bare_path.to_str().context("utf-8")?)],
        &["get", "pods"],
        None,
    )?;
    assert_eq!(code, 1);
    assert!(
        err.contains("cannot verify the TLS certificate") && err.contains("certificate-authority"),
        "{err}"
    );

    // Plain HTTP to the TLS port does not get through.
    let plain = server.url.replace("https://", "http://");
    let r = reqwest::Client::new()
        .get(format!("{plain}/healthz"))
        .timeout(Duration::from_secs(10))
        .send()
        .await;
    assert!(r.map(|r| !r.status().is_success()).unwrap_or(true));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_listen_needs_tls() -> Result<()> {
    let data = tempfile::tempdir()?;
    let mut cfg = ServerConfig::new(data.path());
    cfg.http_listen = "0.0.0.0:0".parse()?;
    cfg.mqtt = MqttMode::Embedded {
        listen: "127.0.0.1:0".parse()?,
    };
    let err = Server::bind(cfg)
        .await
        .err()
        .context("served 0.0.0.0 in clear")?;
    assert!(err.to_string().contains("without TLS"), "{err}");
    assert!(!data.path().join("admin.conf").exists());
    Ok(())
}
