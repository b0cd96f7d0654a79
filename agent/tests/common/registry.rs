//! A real registry for tests: Debian's `docker-registry` (Distribution 2.8) on 127.0.0.1 with
//! its storage in a tempdir, killed on drop. Optionally with htpasswd (bcrypt, made with
//! `htpasswd`) basic auth and TLS from a CA made here with `openssl`.

use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

const BINARY: &str = "/usr/bin/docker-registry";

pub struct Registry {
    child: Option<Child>,
    addr: String,
    dir: tempfile::TempDir,
    opts: RegistryOpts,
}

/// How to start a registry: plain HTTP and anonymous by default.
#[derive(Default, Clone)]
pub struct RegistryOpts {
    /// Basic auth with one user (`user`, `password`).
    pub htpasswd: Option<(String, String)>,
    /// HTTPS with a server certificate for 127.0.0.1 signed by a fresh CA ([`Registry::ca_pem`]).
    pub tls: bool,
}

impl Registry {
    /// Starts a registry on a free loopback port and waits until `GET /v2/` answers.
    pub fn start() -> Result<Self> {
        Self::start_with(RegistryOpts::default())
    }

    pub fn start_with(opts: RegistryOpts) -> Result<Self> {
        let mut reg = Registry {
            child: None,
            addr: String::new(),
            dir: tempfile::tempdir()?,
            opts,
        };
        reg.prepare()?;
        // The port is free when we look; another process may grab it before the registry
        // binds, so try a few.
        let mut last_err = anyhow::anyhow!("registry did not start");
        for _ in 0..5 {
            let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
            reg.addr = format!("127.0.0.1:{port}");
            reg.child = Some(reg.spawn()?);
            match reg.wait_ready() {
                Ok(()) => return Ok(reg),
                Err(e) => {
                    last_err = e;
                    reg.stop();
                }
            }
        }
        Err(last_err)
    }

    /// Writes the htpasswd file and the certificates the options ask for.
    fn prepare(&self) -> Result<()> {
        let d = self.dir.path();
        if let Some((user, password)) = &self.opts.htpasswd {
            let out = Command::new("htpasswd")
                .args(["-Bbn", user, password])
                .output()
                .context("run htpasswd (apache2-utils; scripts/install-deps.sh)")?;
            if !out.status.success() {
                bail!("htpasswd failed: {}", String::from_utf8_lossy(&out.stderr));
            }
            fs::write(d.join("htpasswd"), out.stdout)?;
        }
        if self.opts.tls {
            make_ca_and_cert(d, "ca", "server")?;
        }
        Ok(())
    }

    /// The PEM of the CA that signed the registry's certificate (TLS registries).
    pub fn ca_pem(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    fn spawn(&self) -> Result<Child> {
        let storage = self.dir.path().join("storage");
        fs::create_dir_all(&storage)?;
        let config = self.dir.path().join("config.yml");
        let mut yml = format!(
            "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {}\n",
            storage.display(),
            self.addr
        );
        if self.opts.tls {
            let d = self.dir.path().display();
            yml += &format!("  tls:\n    certificate: {d}/server.pem\n    key: {d}/server.key\n");
        }
        if self.opts.htpasswd.is_some() {
            let d = self.dir.path().display();
            yml += &format!("auth:\n  htpasswd:\n    realm: baton-test\n    path: {d}/htpasswd\n");
        }
        fs::write(&config, yml)?;
        let log = fs::File::create(self.dir.path().join("registry.log"))?;
        Command::new(BINARY)
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("spawn {BINARY}"))
    }

    fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    bail!("registry exited with {status}: {}", self.log());
                }
            }
            let ready = if self.opts.tls {
                // No TLS client here: the port accepting is enough, the first pull retries
                // nothing, so also give the server a moment after bind.
                TcpStream::connect(&self.addr).is_ok()
            } else {
                matches!(http_get_status(&self.addr, "/v2/").ok(), Some(200 | 401))
            };
            if ready {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("registry on {} not ready: {}", self.addr, self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `127.0.0.1:PORT`, as it appears in image references.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The registry's on-disk copy of a blob (to corrupt it on purpose).
    pub fn blob_data_path(&self, digest: &str) -> PathBuf {
        let hex = digest.trim_start_matches("sha256:");
        self.dir
            .path()
            .join("storage/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// How many times the registry served `GET .../blobs/<digest>` (from its access log).
    pub fn blob_gets(&self, digest: &str) -> usize {
        let needle = format!("/blobs/{digest} ");
        self.log()
            .lines()
            .filter(|l| l.contains("\"GET /v2/") && l.contains(&needle))
            .count()
    }

    /// Kills the registry; the storage stays until drop.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Makes `<ca>.pem`/`<ca>.key` (a self-signed CA) and `<name>.pem`/`<name>.key` (a server
/// certificate for 127.0.0.1 signed by it) in `dir`, with openssl.
pub fn make_ca_and_cert(dir: &std::path::Path, ca: &str, name: &str) -> Result<()> {
    let run = |args: &[&str]| -> Result<()> {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .context("run openssl")?;
        if !out.status.success() {
            bail!("openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    };
    let (ca_key, ca_pem) = (format!("{ca}.key"), format!("{ca}.pem"));
    let (key, csr, pem) = (
        format!("{name}.key"),
        format!("{name}.csr"),
        format!("{name}.pem"),
    );
    run(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        &ca_key,
        "-out",
        &ca_pem,
        "-days",
        "2",
        "-subj",
        "/CN=baton test CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ])?;
    run(&[
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        &key,
        "-out",
        &csr,
        "-subj",
        "/CN=127.0.0.1",
    ])?;
    fs::write(
        dir.join(format!("{name}.ext")),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
    )?;
    run(&[
        "x509",
        "-req",
        "-in",
        &csr,
        "-CA",
        &ca_pem,
        "-CAkey",
        &ca_key,
        "-CAcreateserial",
        "-out",
        &pem,
        "-days",
        "2",
        "-extfile",
        &format!("{name}.ext"),
    ])?;
    Ok(())
}

/// A minimal HTTP/1.0 GET on loopback, returning the status code.
fn http_get_status(addr: &str, path: &str) -> Result<u16> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut buf = String::new();
    s.read_to_string(&mut buf)?;
    let status = buf
        .split_whitespace()
        .nth(1)
        .context("no status line")?
        .parse()?;
    Ok(status)
}
