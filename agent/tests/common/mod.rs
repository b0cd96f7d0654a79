//! Helpers for image tests: a real registry, tiny images built from bytes, pushes with
//! oci-client, and mount inspection.

#![allow(dead_code)]

pub mod proxy;
pub mod registry;

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use serde_json::json;
use sha2::{Digest, Sha256};

pub use proxy::CutProxy;
pub use registry::{Registry, RegistryOpts};

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";

pub fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// One entry of a test layer.
pub enum E<'a> {
    Dir(&'a str),
    File(&'a str, &'a [u8], u32),
    Symlink(&'a str, &'a str),
    Hardlink(&'a str, &'a str),
    /// Deletes `path` of a lower layer (`dir/.wh.name`).
    Whiteout(&'a str),
    /// Hides the lower layers' content of `dir` (`dir/.wh..wh..opq`).
    Opaque(&'a str),
}

pub struct Layer {
    pub data: Vec<u8>,
    pub media_type: &'static str,
    pub digest: String,
    pub diff_id: String,
}

fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_700_000_000);
    h
}

fn tarball(entries: &[E]) -> Result<Vec<u8>> {
    use tar::EntryType as T;
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        match *e {
            E::Dir(p) => b.append_data(&mut header(T::Directory, 0o755, 0), p, &[][..])?,
            E::File(p, data, mode) => {
                b.append_data(&mut header(T::Regular, mode, data.len() as u64), p, data)?
            }
            E::Symlink(p, target) => b.append_link(&mut header(T::Symlink, 0o777, 0), p, target)?,
            E::Hardlink(p, target) => b.append_link(&mut header(T::Link, 0o644, 0), p, target)?,
            E::Whiteout(p) => {
                let p = Path::new(p);
                let name = format!(
                    ".wh.{}",
                    p.file_name().context("whiteout name")?.to_string_lossy()
                );
                let path = p.with_file_name(name);
                b.append_data(&mut header(T::Regular, 0o644, 0), path, &[][..])?
            }
            E::Opaque(dir) => b.append_data(
                &mut header(T::Regular, 0o644, 0),
                Path::new(dir).join(".wh..wh..opq"),
                &[][..],
            )?,
        }
    }
    Ok(b.into_inner()?)
}

/// A gzip layer.
pub fn layer(entries: &[E]) -> Result<Layer> {
    let tar = tarball(entries)?;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&tar)?;
    let data = gz.finish()?;
    Ok(Layer {
        digest: sha256(&data),
        diff_id: sha256(&tar),
        data,
        media_type: LAYER_GZIP,
    })
}

/// An uncompressed layer.
pub fn plain_layer(entries: &[E]) -> Result<Layer> {
    let data = tarball(entries)?;
    Ok(Layer {
        digest: sha256(&data),
        diff_id: sha256(&data),
        data,
        media_type: LAYER_TAR,
    })
}

pub struct Pushed {
    pub digest: String,
    pub size: usize,
    pub config_digest: String,
    pub layer_digests: Vec<String>,
    /// Bytes of config + layers, what a cold pull downloads as blobs.
    pub blob_bytes: usize,
}

pub struct Plat<'a> {
    pub os: &'a str,
    pub arch: &'a str,
    pub variant: Option<&'a str>,
}

pub const AMD64: Plat = Plat {
    os: "linux",
    arch: "amd64",
    variant: None,
};
pub const ARM64: Plat = Plat {
    os: "linux",
    arch: "arm64",
    variant: None,
};
pub const ARM_V6: Plat = Plat {
    os: "linux",
    arch: "arm",
    variant: Some("v6"),
};
pub const ARM_V7: Plat = Plat {
    os: "linux",
    arch: "arm",
    variant: Some("v7"),
};

/// oci-client's reqwest has no rustls provider of its own and panics without a process
/// default; the agent installs ring before it builds a client (image/pull.rs), and so must a
/// test that builds one directly.
pub fn install_ring_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

pub fn push_client() -> Client {
    install_ring_provider();
    Client::new(ClientConfig {
        protocol: ClientProtocol::Http,
        ..ClientConfig::default()
    })
}

fn reference(reg: &str, repo: &str, tag: Option<&str>, digest: Option<&str>) -> Reference {
    match (tag, digest) {
        (_, Some(d)) => Reference::with_digest(reg.to_owned(), repo.to_owned(), d.to_owned()),
        (Some(t), None) => Reference::with_tag(reg.to_owned(), repo.to_owned(), t.to_owned()),
        (None, None) => Reference::with_tag(reg.to_owned(), repo.to_owned(), "latest".into()),
    }
}

/// Pushes an image for one platform; tagged if `tag` is given, else only by digest.
pub async fn push_image(
    client: &Client,
    reg: &str,
    repo: &str,
    tag: Option<&str>,
    plat: &Plat<'_>,
    layers: &[&Layer],
) -> Result<Pushed> {
    let base = reference(reg, repo, tag, None);
    client
        .store_auth_if_needed(base.resolve_registry(), &RegistryAuth::Anonymous)
        .await;
    let mut config = json!({
        "architecture": plat.arch,
        "os": plat.os,
        "config": {
            "Entrypoint": ["/bin/tool"],
            "Cmd": ["serve", "--port", "80"],
            "Env": ["PATH=/bin", format!("ARCH={}", plat.arch)],
            "WorkingDir": "/srv",
        },
        "rootfs": {
            "type": "layers",
            "diff_ids": layers.iter().map(|l| l.diff_id.clone()).collect::<Vec<_>>(),
        },
    });
    if let Some(v) = plat.variant {
        config["variant"] = v.into();
    }
    let config = serde_json::to_vec(&config)?;
    let config_digest = sha256(&config);
    for l in layers {
        client.push_blob(&base, l.data.clone(), &l.digest).await?;
    }
    client
        .push_blob(&base, config.clone(), &config_digest)
        .await?;
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": { "mediaType": OCI_CONFIG, "digest": config_digest, "size": config.len() },
        "layers": layers.iter().map(|l| json!({
            "mediaType": l.media_type, "digest": l.digest, "size": l.data.len(),
        })).collect::<Vec<_>>(),
    }))?;
    let digest = sha256(&manifest);
    let target = match tag {
        Some(_) => base.clone(),
        None => reference(reg, repo, None, Some(&digest)),
    };
    client
        .push_manifest_raw(&target, manifest.clone(), OCI_MANIFEST.parse()?)
        .await?;
    Ok(Pushed {
        digest,
        size: manifest.len(),
        config_digest,
        layer_digests: layers.iter().map(|l| l.digest.clone()).collect(),
        blob_bytes: config.len() + layers.iter().map(|l| l.data.len()).sum::<usize>(),
    })
}

/// Pushes an index over already pushed per-platform images.
pub async fn push_index(
    client: &Client,
    reg: &str,
    repo: &str,
    tag: &str,
    entries: &[(&Pushed, &Plat<'_>)],
) -> Result<String> {
    let target = reference(reg, repo, Some(tag), None);
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": entries.iter().map(|(p, plat)| {
            let mut platform = json!({ "os": plat.os, "architecture": plat.arch });
            if let Some(v) = plat.variant {
                platform["variant"] = v.into();
            }
            json!({ "mediaType": OCI_MANIFEST, "digest": p.digest, "size": p.size, "platform": platform })
        }).collect::<Vec<_>>(),
    }))?;
    client
        .push_manifest_raw(&target, index.clone(), OCI_INDEX.parse()?)
        .await?;
    Ok(sha256(&index))
}

/// Mount points (from /proc/self/mountinfo) at or under `path`.
pub fn mounts_under(path: &Path) -> Vec<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    info.lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .map(PathBuf::from)
        .filter(|m| m.starts_with(path))
        .collect()
}

/// Flips one bit in the middle of a file.
pub fn flip_a_byte(path: &Path) -> Result<()> {
    let mut bytes = std::fs::read(path).with_context(|| format!("read {}", path.display()))?;
    let i = bytes.len() / 2;
    bytes[i] ^= 0x01;
    std::fs::write(path, bytes)?;
    Ok(())
}

/// A tmpfs of a fixed size mounted on a fresh directory, unmounted (lazily, so a leftover
/// mount below cannot keep it) and removed on drop.
pub struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    pub fn mount(bytes: u64) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        nix::mount::mount(
            Some("tmpfs"),
            dir.path(),
            Some("tmpfs"),
            nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV,
            Some(format!("size={bytes},mode=0755").as_str()),
        )
        .context("mount tmpfs")?;
        Ok(Tmpfs { dir })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        if let Err(e) = nix::mount::umount2(self.dir.path(), nix::mount::MntFlags::MNT_DETACH) {
            eprintln!("cannot unmount tmpfs {}: {e}", self.dir.path().display());
        }
    }
}

/// `n` random (incompressible) bytes.
pub fn random_bytes(n: usize) -> Vec<u8> {
    use rand::RngCore;
    let mut v = vec![0u8; n];
    rand::thread_rng().fill_bytes(&mut v);
    v
}

/// Fills the filesystem holding `path` with a file `path`, leaving about `leave` bytes free.
pub fn fill_leaving(path: &Path, leave: u64) -> Result<()> {
    let st = nix::sys::statvfs::statvfs(path.parent().context("no parent")?)?;
    let avail = st.blocks_available() as u64 * st.fragment_size() as u64;
    let size = avail.saturating_sub(leave);
    let mut f = std::fs::File::create(path)?;
    let chunk = vec![0xa5u8; 64 * 1024];
    let mut left = size;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        f.write_all(&chunk[..n])?;
        left -= n as u64;
    }
    f.sync_all()?;
    Ok(())
}
