//! Pod volumes: emptyDir, hostPath and secret, prepared on the host under the pod's directory
//! and bound into containers by their `volumeMounts`.
//!
//! Layout: `<pod_dir>/volumes/<name>`.
//! - emptyDir: a plain directory (mode 0777, so any user in any container can write), or a
//!   tmpfs of that size when it has a `sizeLimit`: the kernel enforces the limit, where a
//!   directory would need a du-style poller.
//! - secret: a tmpfs (never on disk, so an SD card never holds plaintext) with one file per
//!   key, then remounted read-only. Containers get it read-only whatever their mount says, as
//!   k8s does. Only the containers that mount it may read it ([`Readers`]): the tmpfs is
//!   0700 and its files 0400, owned by their user when they all run as one (`runAsUser`,
//!   `runAsGroup`); root-owned with group read (0750, 0440) when they differ in user but
//!   share a group. k8s's 0644 (`defaultMode`) would let any host user who reached the
//!   directory read the secret; the pod API has no `fsGroup` or `defaultMode` to ask for
//!   more. Containers sharing neither user nor group get 0755/0444, and then only the data
//!   directory's 0700 keeps host users out.
//! - hostPath: the host path itself; the coordinator only sends it when its policy allows.
//!
//! Invariants: everything lives under the pod's directory, so removing a pod removes its
//! volumes; [`teardown`] unmounts the tmpfs volumes first (a `remove_dir_all` over a mount
//! point fails and would leave it mounted). [`prepare`] is idempotent, so adoption after an
//! agent restart reuses what is there (an emptyDir keeps its content).
//!
//! Plaintext secrets come from a [`SecretSource`]: the node loop's view of the unsealed
//! `DesiredState.secrets`. Environment variables from secrets (`secretKeyRef`) resolve from
//! the same source ([`secret_env`]).

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use baton_proto::{ConfigMapData, PodSpec, SecretData, Volume, VolumeMount, VolumeSource};
use nix::mount::{mount, umount2, MntFlags, MsFlags};

use crate::runtime::Mount;

pub mod projection;

/// Where the plaintext of a secret comes from. The node implements it over the unsealed
/// secrets of its desired state; tests use [`StaticSecrets`].
pub trait SecretSource: Send + Sync {
    fn get(&self, name: &str) -> Option<SecretData>;
}

/// Where a node's ConfigMaps come from: [`crate::config_maps::DeviceConfigMaps`], or
/// [`NoSecrets`] (none) in tests.
pub trait ConfigMapSource: Send + Sync {
    fn config_map(&self, name: &str) -> Option<ConfigMapData>;
}

impl ConfigMapSource for NoSecrets {
    fn config_map(&self, _name: &str) -> Option<ConfigMapData> {
        None
    }
}

/// Knows no secret: every reference fails with a clear reason.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoSecrets;

impl SecretSource for NoSecrets {
    fn get(&self, _name: &str) -> Option<SecretData> {
        None
    }
}

/// A settable set of secrets (tests, and a simple holder for the node loop).
#[derive(Debug, Default)]
pub struct StaticSecrets(RwLock<BTreeMap<String, SecretData>>);

impl StaticSecrets {
    /// Adds or replaces `name` with these key/value pairs (pairs beyond the wire bound of 64
    /// are dropped).
    pub fn insert(&self, name: &str, items: &[(&str, &[u8])]) {
        let items = items
            .iter()
            .filter_map(|(k, v)| {
                Some(baton_proto::SecretItem {
                    key: baton_proto::BString::new(*k).ok()?,
                    value: baton_proto::BVec::from_vec(v.to_vec()).ok()?,
                })
            })
            .take(64)
            .collect();
        let data = SecretData {
            items: baton_proto::BVec::from_vec(items).unwrap_or_default(),
        };
        self.0
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.to_owned(), data);
    }
}

impl SecretSource for StaticSecrets {
    fn get(&self, name: &str) -> Option<SecretData> {
        self.0
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error("secret {0:?} not found")]
    SecretNotFound(String),
    #[error("couldn't find key {key} in Secret {secret}")]
    KeyNotFound { secret: String, key: String },
    #[error("key {key} of secret {secret:?} is not valid text for an environment variable")]
    NotText { secret: String, key: String },
    #[error("configmap {0:?} not found")]
    ConfigMapNotFound(String),
    #[error("couldn't find key {key} in ConfigMap {config_map}")]
    ConfigMapKeyNotFound { config_map: String, key: String },
    #[error("configMap volume {volume:?}: {source}")]
    Projection {
        volume: String,
        #[source]
        source: projection::ProjectionError,
    },
    #[error("invalid name {0:?} for a volume or secret key")]
    BadName(String),
    #[error("volume {0:?} is not defined in the pod")]
    UnknownVolume(String),
    #[error("hostPath {0} does not exist")]
    HostPathMissing(PathBuf),
    #[error("i/o error on {}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot mount {}", path.display())]
    Mount {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> VolumeError + '_ {
    move |source| VolumeError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The prepared volumes of one pod: volume name to host path.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodVolumes {
    paths: BTreeMap<String, (PathBuf, bool)>,
}

impl PodVolumes {
    /// Host path of a prepared volume.
    pub fn path(&self, name: &str) -> Option<&Path> {
        self.paths.get(name).map(|(p, _)| p.as_path())
    }
}

pub fn volumes_dir(pod_dir: &Path) -> PathBuf {
    pod_dir.join("volumes")
}

/// A file name that cannot escape its directory: `[A-Za-z0-9._-]`, not `.` or `..`.
fn safe_name(name: &str) -> Result<&str, VolumeError> {
    let ok = !name.is_empty()
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(name)
    } else {
        Err(VolumeError::BadName(name.to_owned()))
    }
}

/// The users (uid, gid) of the containers that mount each volume: who may read a secret.
/// A container without `runAsUser`/`runAsGroup` runs as 0 (the agent ignores an image's
/// `USER`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Readers(BTreeMap<String, Vec<(u32, u32)>>);

impl Readers {
    /// Every container of `pod`, init containers included.
    pub fn of(pod: &PodSpec) -> Self {
        let mut map: BTreeMap<String, Vec<(u32, u32)>> = BTreeMap::new();
        for c in pod.init_containers.iter().chain(pod.containers.iter()) {
            let user = (
                c.security.run_as_user.unwrap_or(0),
                c.security.run_as_group.unwrap_or(0),
            );
            for m in c.volume_mounts.iter() {
                let users = map.entry(m.name.to_string()).or_default();
                if !users.contains(&user) {
                    users.push(user);
                }
            }
        }
        Self(map)
    }

    /// `volume` is mounted by containers running as these (uid, gid) pairs.
    pub fn add(&mut self, volume: &str, uid: u32, gid: u32) {
        let users = self.0.entry(volume.to_owned()).or_default();
        if !users.contains(&(uid, gid)) {
            users.push((uid, gid));
        }
    }

    /// Owner, group, directory mode and file mode of secret volume `volume` (see the module
    /// docs). Nobody mounting it: root's only.
    fn secret_access(&self, volume: &str) -> SecretAccess {
        let users = self.0.get(volume).map(Vec::as_slice).unwrap_or_default();
        let same = |f: fn(&(u32, u32)) -> u32| {
            let first = users.first().map(f)?;
            users.iter().all(|u| f(u) == first).then_some(first)
        };
        match (same(|u| u.0), same(|u| u.1)) {
            (Some(uid), gid) => SecretAccess {
                uid,
                gid: gid.unwrap_or(0),
                dir_mode: 0o700,
                file_mode: 0o400,
            },
            (None, Some(gid)) => SecretAccess {
                uid: 0,
                gid,
                dir_mode: 0o750,
                file_mode: 0o440,
            },
            (None, None) if users.is_empty() => SecretAccess {
                uid: 0,
                gid: 0,
                dir_mode: 0o700,
                file_mode: 0o400,
            },
            (None, None) => SecretAccess {
                uid: 0,
                gid: 0,
                dir_mode: 0o755,
                file_mode: 0o444,
            },
        }
    }
}

/// Who owns a secret volume's tmpfs and files, and their modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct SecretAccess {
    uid: u32,
    gid: u32,
    dir_mode: u32,
    file_mode: u32,
}

/// Creates (or finds again) every volume of a pod. Idempotent; a secret volume an older
/// agent left open (0755 and 0644) is closed to its [`Readers`].
pub fn prepare(
    pod_dir: &Path,
    volumes: &[Volume],
    readers: &Readers,
    secrets: &dyn SecretSource,
    config_maps: &dyn ConfigMapSource,
) -> Result<PodVolumes, VolumeError> {
    let base = volumes_dir(pod_dir);
    let mut out = PodVolumes::default();
    let mounted = mount_points_under(&base);
    for v in volumes {
        let name = safe_name(&v.name)?;
        let dir = base.join(name);
        match &v.source {
            VolumeSource::HostPath { path } => {
                let p = PathBuf::from(path.as_str());
                if !p.is_absolute() || !p.exists() {
                    return Err(VolumeError::HostPathMissing(p));
                }
                out.paths.insert(name.to_owned(), (p, false));
            }
            VolumeSource::EmptyDir { size_limit_bytes } => {
                fs::create_dir_all(&dir).map_err(io_err(&dir))?;
                if let Some(size) = size_limit_bytes {
                    if !mounted.contains(&dir) {
                        mount_tmpfs(&dir, *size, "1777")?;
                    }
                }
                fs::set_permissions(&dir, fs::Permissions::from_mode(0o1777))
                    .map_err(io_err(&dir))?;
                out.paths.insert(name.to_owned(), (dir, false));
            }
            VolumeSource::Secret { secret_name } => {
                let data = secrets
                    .get(secret_name)
                    .ok_or_else(|| VolumeError::SecretNotFound(secret_name.to_string()))?;
                fs::create_dir_all(&dir).map_err(io_err(&dir))?;
                let access = readers.secret_access(name);
                if mounted.contains(&dir) {
                    tighten_secret(&dir, access)?;
                } else {
                    write_secret(&dir, &data, access)?;
                }
                out.paths.insert(name.to_owned(), (dir, true));
            }
            VolumeSource::ConfigMap { .. } => {
                write_config_map(&dir, v, config_maps)?;
                out.paths.insert(name.to_owned(), (dir, true));
            }
        }
    }
    Ok(out)
}

/// Writes a `configMap` volume's files with the projection writer (an atomic `..data`
/// swap); `Ok(false)` when they were already current. A missing ConfigMap fails unless the
/// volume is optional (then the volume is empty until it comes).
fn write_config_map(
    dir: &Path,
    v: &Volume,
    config_maps: &dyn ConfigMapSource,
) -> Result<bool, VolumeError> {
    let VolumeSource::ConfigMap {
        name,
        items,
        default_mode,
        optional,
    } = &v.source
    else {
        return Ok(false);
    };
    let data = match config_maps.config_map(name) {
        Some(d) => d,
        None if *optional => ConfigMapData::default(),
        None => return Err(VolumeError::ConfigMapNotFound(name.to_string())),
    };
    let map: BTreeMap<String, Vec<u8>> = data
        .items
        .iter()
        .map(|i| (i.key.to_string(), i.value.to_vec()))
        .collect();
    let items: Vec<projection::KeyToPath> = items
        .iter()
        .map(|i| projection::KeyToPath {
            key: i.key.to_string(),
            path: i.path.to_string(),
            mode: i.mode.map(u32::from),
        })
        .collect();
    let wrap = |source| VolumeError::Projection {
        volume: v.name.to_string(),
        source,
    };
    let files =
        projection::project(&map, &items, u32::from(*default_mode), *optional).map_err(wrap)?;
    projection::AtomicDir::new(dir).write(&files).map_err(wrap)
}

/// Brings the `configMap` volumes of a prepared pod to the ConfigMaps' current content
/// (a running container sees the swap through its bind mount). Volumes not prepared yet
/// are left to [`prepare`]. Returns how many changed.
pub fn refresh_config_maps(
    pod_dir: &Path,
    volumes: &[Volume],
    config_maps: &dyn ConfigMapSource,
) -> Result<usize, VolumeError> {
    let base = volumes_dir(pod_dir);
    let mut changed = 0;
    for v in volumes {
        if !matches!(v.source, VolumeSource::ConfigMap { .. }) {
            continue;
        }
        let dir = base.join(safe_name(&v.name)?);
        if dir.join(projection::DATA_LINK).exists() && write_config_map(&dir, v, config_maps)? {
            changed += 1;
        }
    }
    Ok(changed)
}

/// The value of `key` in ConfigMap `name` for an environment variable: `None` when it is
/// missing and `optional`.
pub fn config_map_env(
    config_maps: &dyn ConfigMapSource,
    name: &str,
    key: &str,
    optional: bool,
) -> Result<Option<String>, VolumeError> {
    let Some(data) = config_maps.config_map(name) else {
        return if optional {
            Ok(None)
        } else {
            Err(VolumeError::ConfigMapNotFound(name.to_owned()))
        };
    };
    match data.get(key) {
        Some(v) => Ok(Some(String::from_utf8_lossy(v).replace('\0', ""))),
        None if optional => Ok(None),
        None => Err(VolumeError::ConfigMapKeyNotFound {
            config_map: name.to_owned(),
            key: key.to_owned(),
        }),
    }
}

/// A tmpfs sized for the secret, one file per key, owned and moded per `access`, then
/// remounted read-only. The files are written 0600 and handed over only once complete.
fn write_secret(dir: &Path, data: &SecretData, access: SecretAccess) -> Result<(), VolumeError> {
    for item in data.items.iter() {
        safe_name(&item.key)?;
    }
    let bytes: u64 = data.items.iter().map(|i| i.value.len() as u64 + 4096).sum();
    mount_tmpfs(dir, bytes + 64 * 1024, "0700")?;
    let result = (|| {
        for item in data.items.iter() {
            let path = dir.join(item.key.as_str());
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&path)
                .map_err(io_err(&path))?;
            f.write_all(&item.value).map_err(io_err(&path))?;
        }
        set_access(dir, access)?;
        remount(dir, MsFlags::MS_RDONLY)
    })();
    if result.is_err() {
        let _ = umount2(dir, MntFlags::MNT_DETACH);
    }
    result
}

/// Owner and modes of a secret tmpfs and of every file in it.
fn set_access(dir: &Path, a: SecretAccess) -> Result<(), VolumeError> {
    let (uid, gid) = (
        Some(nix::unistd::Uid::from_raw(a.uid)),
        Some(nix::unistd::Gid::from_raw(a.gid)),
    );
    let rd = fs::read_dir(dir).map_err(io_err(dir))?;
    for e in rd {
        let path = e.map_err(io_err(dir))?.path();
        nix::unistd::chown(&path, uid, gid).map_err(|e| io_err(&path)(e.into()))?;
        fs::set_permissions(&path, fs::Permissions::from_mode(a.file_mode))
            .map_err(io_err(&path))?;
    }
    nix::unistd::chown(dir, uid, gid).map_err(|e| io_err(dir)(e.into()))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(a.dir_mode)).map_err(io_err(dir))
}

/// Brings a mounted secret volume (adopted from an earlier agent) to `access` if it is not
/// there: remounted writable for the change, read-only again after.
fn tighten_secret(dir: &Path, access: SecretAccess) -> Result<(), VolumeError> {
    use std::os::unix::fs::MetadataExt;
    let is = |p: &Path, mode: u32| {
        fs::symlink_metadata(p).is_ok_and(|m| {
            m.mode() & 0o7777 == mode && m.uid() == access.uid && m.gid() == access.gid
        })
    };
    let files_ok = fs::read_dir(dir)
        .map_err(io_err(dir))?
        .flatten()
        .all(|e| is(&e.path(), access.file_mode));
    if files_ok && is(dir, access.dir_mode) {
        return Ok(());
    }
    remount(dir, MsFlags::empty())?;
    let result = set_access(dir, access);
    remount(dir, MsFlags::MS_RDONLY)?;
    result
}

fn remount(dir: &Path, extra: MsFlags) -> Result<(), VolumeError> {
    mount(
        None::<&str>,
        dir,
        None::<&str>,
        MsFlags::MS_REMOUNT | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | extra,
        None::<&str>,
    )
    .map_err(|source| VolumeError::Mount {
        path: dir.to_owned(),
        source,
    })
}

fn mount_tmpfs(dir: &Path, size: u64, mode: &str) -> Result<(), VolumeError> {
    let opts = format!("size={size},mode={mode}");
    mount(
        Some("tmpfs"),
        dir,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(opts.as_str()),
    )
    .map_err(|source| VolumeError::Mount {
        path: dir.to_owned(),
        source,
    })
}

/// The bind mounts for a container's `volumeMounts`. Secret volumes are always read-only.
pub fn mounts(vols: &PodVolumes, volume_mounts: &[VolumeMount]) -> Result<Vec<Mount>, VolumeError> {
    volume_mounts
        .iter()
        .map(|m| {
            let (source, always_ro) = vols
                .paths
                .get(m.name.as_str())
                .ok_or_else(|| VolumeError::UnknownVolume(m.name.to_string()))?;
            Ok(Mount {
                source: source.clone(),
                destination: m.mount_path.to_string(),
                read_only: m.read_only || *always_ro,
            })
        })
        .collect()
}

/// The value of `key` in `secret`, for an environment variable.
pub fn secret_env(
    secrets: &dyn SecretSource,
    secret: &str,
    key: &str,
) -> Result<String, VolumeError> {
    let data = secrets
        .get(secret)
        .ok_or_else(|| VolumeError::SecretNotFound(secret.to_owned()))?;
    let item = data
        .items
        .iter()
        .find(|i| i.key.as_str() == key)
        .ok_or_else(|| VolumeError::KeyNotFound {
            secret: secret.to_owned(),
            key: key.to_owned(),
        })?;
    String::from_utf8(item.value.to_vec())
        .ok()
        .filter(|s| !s.contains('\0'))
        .ok_or_else(|| VolumeError::NotText {
            secret: secret.to_owned(),
            key: key.to_owned(),
        })
}

/// Unmounts every mount under the pod's volumes directory (deepest first). Idempotent; the
/// caller removes the directory afterwards.
pub fn teardown(pod_dir: &Path) -> Result<(), VolumeError> {
    let mut points = mount_points_under(&volumes_dir(pod_dir));
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    let mut first_err = None;
    for p in points {
        if let Err(source) = umount2(&p, MntFlags::MNT_DETACH) {
            if source != nix::errno::Errno::EINVAL && source != nix::errno::Errno::ENOENT {
                first_err.get_or_insert(VolumeError::Mount { path: p, source });
            }
        }
    }
    first_err.map_or(Ok(()), Err)
}

/// Mount points at or below `dir`, from `/proc/self/mountinfo`.
fn mount_points_under(dir: &Path) -> Vec<PathBuf> {
    let Ok(text) = fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape_mountinfo(p)))
        .filter(|p| p.starts_with(dir))
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' {
            if let Some(v) = s
                .get(i + 1..i + 4)
                .and_then(|o| u8::from_str_radix(o, 8).ok())
            {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests;
