//! The client's side of `baton image import`: the body it streams to the coordinator's
//! `ImportImages` route (`crate::contract::routes`), an OCI archive as it is or an OCI
//! layout directory tarred on the fly. The server's side is `crate::registry`.

use std::fs;
use std::io::{self, Write};
use std::path::Path;

use tokio::sync::mpsc;

#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    /// A directory that is not an OCI image layout. Worded as the server words an archive
    /// without one, since the directory is sent as such an archive.
    #[error("the archive has no index.json: not an OCI image layout (use `skopeo copy ... oci-archive:FILE`, or `docker save` of Docker 25 or newer)")]
    NoIndex,
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
}

impl UploadError {
    fn io(context: String) -> impl FnOnce(io::Error) -> UploadError {
        move |source| UploadError::Io { context, source }
    }
}

/// The body `baton image import PATH` uploads: the file itself if `path` is an archive, or
/// a tar of `path` built on the fly if it is an OCI layout directory (only `oci-layout`,
/// `index.json` and `blobs/sha256/*` go in). Streamed either way, never held in memory.
pub async fn upload_body(path: &Path) -> Result<reqwest::Body, UploadError> {
    let meta = tokio::fs::metadata(path)
        .await
        .map_err(UploadError::io(format!("cannot read {}", path.display())))?;
    if !meta.is_dir() {
        let f = tokio::fs::File::open(path)
            .await
            .map_err(UploadError::io(format!("cannot open {}", path.display())))?;
        let stream = futures::stream::try_unfold(f, |mut f| async move {
            use tokio::io::AsyncReadExt;
            let mut buf = vec![0u8; 256 * 1024];
            let n = f.read(&mut buf).await?;
            if n == 0 {
                return Ok::<_, io::Error>(None);
            }
            buf.truncate(n);
            Ok(Some((buf, f)))
        });
        return Ok(reqwest::Body::wrap_stream(stream));
    }
    if !path.join("index.json").is_file() {
        return Err(UploadError::NoIndex);
    }
    let (tx, rx) = mpsc::channel::<io::Result<Vec<u8>>>(8);
    let dir = path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let mut w = ChannelWriter {
            tx: tx.clone(),
            buf: Vec::new(),
        };
        let result = tar_layout(&dir, &mut w).and_then(|()| w.flush());
        if let Err(e) = result {
            // The server sees a broken body and refuses the import.
            let _ = tx.blocking_send(Err(e));
        }
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    Ok(reqwest::Body::wrap_stream(stream))
}

/// Writes a tar of the OCI layout at `dir` to `w`.
fn tar_layout(dir: &Path, w: &mut impl Write) -> io::Result<()> {
    let mut b = tar::Builder::new(w);
    b.mode(tar::HeaderMode::Deterministic);
    for name in ["oci-layout", "index.json"] {
        let p = dir.join(name);
        if p.is_file() {
            b.append_path_with_name(&p, name)?;
        }
    }
    let blobs = dir.join("blobs").join("sha256");
    let mut names: Vec<_> = fs::read_dir(&blobs)?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name())
        .collect();
    names.sort();
    for n in names {
        let p = blobs.join(&n);
        if p.is_file() {
            b.append_path_with_name(&p, Path::new("blobs/sha256").join(&n))?;
        }
    }
    b.into_inner()?.flush()
}

/// A blocking [`Write`] that sends 256 KiB chunks to an async receiver.
struct ChannelWriter {
    tx: mpsc::Sender<io::Result<Vec<u8>>>,
    buf: Vec<u8>,
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= 256 * 1024 {
            self.flush()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::take(&mut self.buf);
        self.tx
            .blocking_send(Ok(chunk))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the upload stopped"))
    }
}
