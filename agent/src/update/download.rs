//! Fetching a release binary from the coordinator: `GET <api><download_path>` with the
//! node's bearer token and, on an enrolled node, its signature (`baton-node`,
//! `baton-timestamp-ms`, `baton-signature`: a device enrolled through `--enroll-listen`
//! holds no token, and that listener serves release binaries to signed requests), resumed with `Range: bytes=N-` from a `.part` file that survives
//! restarts. The sha256 is computed while writing (over the part already on disk first),
//! so the caller checks size, digest and signature without reading the file again.
//!
//! The part file is written with mode 0600 and never made executable here: only
//! `Layout::stage`, after verification, does that.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    #[error("cannot {what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read the token file {path}: {source}")]
    Token {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot sign the download with the node identity: {0}")]
    Identity(#[from] crate::identity::IdentityError),
    #[error("bad CA for the download: {0}")]
    Ca(reqwest::Error),
    #[error("GET {url}: {source}")]
    Http { url: String, source: reqwest::Error },
    #[error("GET {url}: {status}")]
    Status { url: String, status: u16 },
    #[error("GET {url}: the server sent more than the release's {size} bytes")]
    TooLong { url: String, size: u64 },
    #[error("GET {url}: no data for {secs} s")]
    Stalled { url: String, secs: u64 },
}

/// Where and how to download from.
#[derive(Debug, Clone)]
pub struct Source {
    /// The coordinator's API URL (`--coordinator-api`, else `--registry-mirror`).
    pub api: String,
    /// A file holding the bearer token (`--registry-mirror-token-file`), read at each
    /// download so a rotated token is used.
    pub token_file: Option<PathBuf>,
    /// A PEM CA for an https API (`--registry-mirror-ca`).
    pub ca: Option<PathBuf>,
    /// The node's identity file, read at each download (a rotated key is used): when it
    /// exists, the request is signed and the coordinator's CA is trusted.
    pub identity: Option<PathBuf>,
}

/// A download that ended: the bytes and digest of the whole file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Downloaded {
    pub size: u64,
    pub sha256: [u8; 32],
}

/// How long a download may go without a byte before it is abandoned (and resumed later).
const STALL: Duration = Duration::from_secs(60);

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> DownloadError {
    let path = path.to_owned();
    move |source| DownloadError::Io { what, path, source }
}

/// Hashes what `part` already holds (at most `size` bytes; more is cut), to resume after it.
fn resume_from(part: &Path, size: u64) -> Result<(u64, Sha256), DownloadError> {
    let mut h = Sha256::new();
    let mut f = match std::fs::File::open(part) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((0, h)),
        Err(e) => return Err(io("open", part)(e)),
    };
    let len = f.metadata().map_err(io("stat", part))?.len();
    if len > size {
        drop(f);
        std::fs::remove_file(part).map_err(io("remove", part))?;
        return Ok((0, Sha256::new()));
    }
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = f.read(&mut buf).map_err(io("read", part))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok((len, h))
}

/// Downloads the release with digest `sha256` (`size` bytes) into `part`, resuming what it
/// holds. `progress` is called with the bytes on disk as they grow.
pub async fn fetch(
    src: &Source,
    sha256: &[u8; 32],
    size: u64,
    part: &Path,
    mut progress: impl FnMut(u64),
) -> Result<Downloaded, DownloadError> {
    if let Some(dir) = part.parent() {
        std::fs::create_dir_all(dir).map_err(io("create", dir))?;
    }
    let (mut have, mut hasher) = resume_from(part, size)?;
    if have < size {
        let path = baton_proto::release::download_path(sha256);
        let url = format!("{}{path}", src.api.trim_end_matches('/'));
        let identity = match &src.identity {
            Some(p) => crate::identity::IdentityFile::load(p)?,
            None => None,
        };
        crate::mqtt_tls::install_ring_provider();
        let mut client = reqwest::Client::builder().connect_timeout(Duration::from_secs(15));
        let mut pems = Vec::new();
        if let Some(ca) = &src.ca {
            pems.push(std::fs::read(ca).map_err(io("read", ca))?);
        }
        if let Some(id) = &identity {
            pems.push(id.ca_certificate.clone().into_bytes());
        }
        for pem in &pems {
            // Beside the system's roots, as before.
            client = client.tls_certs_merge(
                reqwest::Certificate::from_pem_bundle(pem).map_err(DownloadError::Ca)?,
            );
        }
        let client = client.build().map_err(DownloadError::Ca)?;
        let mut req = client.get(&url);
        if let Some(id) = &identity {
            for (name, value) in id.download_headers(&path)? {
                req = req.header(name, value);
            }
        }
        if let Some(t) = &src.token_file {
            let token = std::fs::read_to_string(t).map_err(|source| DownloadError::Token {
                path: t.clone(),
                source,
            })?;
            req = req.bearer_auth(token.trim());
        }
        if have > 0 {
            req = req.header(reqwest::header::RANGE, format!("bytes={have}-"));
        }
        let http = |source| DownloadError::Http {
            url: url.clone(),
            source,
        };
        let mut resp = req.send().await.map_err(http)?;
        let status = resp.status().as_u16();
        let append = match status {
            206 => true,
            // The server ignored the range: start over.
            200 => false,
            // The server disagrees with the part: drop it, the next attempt starts over.
            416 => {
                let _ = std::fs::remove_file(part);
                return Err(DownloadError::Status { url, status });
            }
            _ => return Err(DownloadError::Status { url, status }),
        };
        if !append {
            have = 0;
            hasher = Sha256::new();
        }
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .append(append)
            .truncate(!append)
            .mode_0600()
            .open(part)
            .map_err(io("open", part))?;
        progress(have);
        loop {
            let chunk = tokio::time::timeout(STALL, resp.chunk())
                .await
                .map_err(|_| DownloadError::Stalled {
                    url: url.clone(),
                    secs: STALL.as_secs(),
                })?
                .map_err(http)?;
            let Some(chunk) = chunk else { break };
            if have + chunk.len() as u64 > size {
                drop(f);
                let _ = std::fs::remove_file(part);
                return Err(DownloadError::TooLong { url, size });
            }
            f.write_all(&chunk).map_err(io("write", part))?;
            hasher.update(&chunk);
            have += chunk.len() as u64;
            progress(have);
        }
        f.sync_all().map_err(io("sync", part))?;
    }
    Ok(Downloaded {
        size: have,
        sha256: hasher.finalize().into(),
    })
}

/// `OpenOptions::mode(0o600)`, named: a download is never readable by others nor
/// executable.
trait Mode0600 {
    fn mode_0600(&mut self) -> &mut Self;
}

impl Mode0600 for std::fs::OpenOptions {
    fn mode_0600(&mut self) -> &mut Self {
        use std::os::unix::fs::OpenOptionsExt;
        self.mode(0o600)
    }
}

#[cfg(test)]
#[path = "download_tests.rs"]
pub(crate) mod tests;
