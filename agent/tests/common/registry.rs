//! A real registry for tests: Debian's `docker-registry` (Distribution 2.8) on 127.0.0.1 with
//! its storage in a tempdir, killed on drop.

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
}

impl Registry {
    /// Starts a registry on a free loopback port and waits until `GET /v2/` answers.
    pub fn start() -> Result<Self> {
        let mut reg = Registry {
            child: None,
            addr: String::new(),
            dir: tempfile::tempdir()?,
        };
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

    fn spawn(&self) -> Result<Child> {
        let storage = self.dir.path().join("storage");
        fs::create_dir_all(&storage)?;
        let config = self.dir.path().join("config.yml");
        fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {}\n",
                storage.display(),
                self.addr
            ),
        )?;
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
            if http_get_status(&self.addr, "/v2/").ok() == Some(200) {
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
