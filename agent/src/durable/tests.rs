use std::os::unix::fs::MetadataExt;
use std::os::unix::fs::PermissionsExt;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use nix::mount::{mount, umount2, MntFlags, MsFlags};

use super::*;

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn mode(p: &Path) -> u32 {
    fs::metadata(p).unwrap().mode() & 0o7777
}

#[test]
fn readers_see_the_old_or_the_whole_new_content() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.bin");
    let a = vec![b'a'; 64 * 1024];
    let b = vec![b'b'; 100 * 1024];
    write(&path, &a, 0o600).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (path, stop) = (path.clone(), stop.clone());
        let (a, b) = (a.clone(), b.clone());
        std::thread::spawn(move || {
            let mut reads = 0;
            while !stop.load(Ordering::Relaxed) {
                let got = fs::read(&path).unwrap();
                assert!(got == a || got == b, "a torn read of {} bytes", got.len());
                reads += 1;
            }
            reads
        })
    };
    for i in 0..200 {
        let content = if i % 2 == 0 { &b } else { &a };
        if i % 4 < 2 {
            write(&path, content, 0o600).unwrap();
        } else {
            write_unsynced(&path, content, 0o600).unwrap();
        }
    }
    stop.store(true, Ordering::Relaxed);
    assert!(reader.join().unwrap() > 0);
    assert_eq!(fs::read(&path).unwrap(), a);
}

#[test]
fn the_mode_is_the_final_one_from_creation() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("identity.json");
    // The temporary file as `write` creates it, before a byte is in it.
    let (f, tmp) = create_temp(&path, 0o600).unwrap();
    assert_eq!(f.metadata().unwrap().len(), 0);
    assert_eq!(
        f.metadata().unwrap().mode() & 0o077,
        0,
        "readable by others while empty"
    );
    drop(f);
    fs::remove_file(tmp).unwrap();

    // Replacing a file an older writer left world-readable: the new one has the new mode.
    fs::write(&path, b"old").unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
    write(&path, b"secret", 0o600).unwrap();
    assert_eq!(mode(&path), 0o600);

    let public = dir.path().join("ref.json");
    write(&public, b"{}", 0o644).unwrap();
    assert_eq!(mode(&public) & !0o644, 0, "more open than asked");
    assert_eq!(mode(&public) & 0o600, 0o600);
}

#[test]
fn no_temporary_file_is_left_behind() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("record.bin");
    write(&path, b"one", 0o600).unwrap();
    write(&path, b"two", 0o600).unwrap();
    write_unsynced(&path, b"three", 0o600).unwrap();
    assert_eq!(names(dir.path()), ["record.bin"]);
    assert_eq!(fs::read(&path).unwrap(), b"three");
}

#[test]
fn a_stale_temporary_file_is_replaced_with_the_right_mode() {
    // Left by an earlier process with our pid, killed mid-write, and (say) made 0644.
    let dir = tempfile::tempdir().unwrap();
    let tmp = temp_sibling(&dir.path().join("identity.json"));
    fs::write(&tmp, b"half").unwrap();
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o644)).unwrap();
    let f = open_new(&tmp, 0o600).unwrap();
    assert_eq!(f.metadata().unwrap().len(), 0);
    assert_eq!(f.metadata().unwrap().mode() & 0o077, 0);
}

#[test]
fn a_failed_write_leaves_the_old_file_whole() {
    let dir = tempfile::tempdir().unwrap();

    let nowhere = dir.path().join("missing/desired.bin");
    assert!(write(&nowhere, b"x", 0o600).is_err());
    assert!(!dir.path().join("missing").exists());

    // Cut off mid-write.
    let path = dir.path().join("desired.bin");
    write(&path, b"old", 0o600).unwrap();
    let err = replace(&path, 0o600, Durability::Synced, |f| {
        f.write_all(b"ne")?;
        Err(io::Error::other("cut off"))
    })
    .unwrap_err();
    assert_eq!(err.to_string(), "cut off");
    assert_eq!(fs::read(&path).unwrap(), b"old");
    assert_eq!(names(dir.path()), ["desired.bin"]);
}

/// A tmpfs mounted on a fresh directory, unmounted on drop (also the reserve's tests').
pub(crate) struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    pub(crate) fn new(size: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        mount(
            Some("tmpfs"),
            dir.path(),
            Some("tmpfs"),
            MsFlags::empty(),
            Some(format!("size={size},mode=0700").as_str()),
        )
        .expect("mount a tmpfs (the agent's tests run as root)");
        Self(dir)
    }

    pub(crate) fn path(&self) -> &Path {
        self.0.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = umount2(self.0.path(), MntFlags::MNT_DETACH);
    }
}

#[test]
fn a_full_or_read_only_filesystem_is_an_error_and_the_old_file_stays() {
    let disk = Tmpfs::new("64k");
    let path = disk.path().join("desired.bin");
    write(&path, b"old", 0o600).unwrap();

    let too_big = vec![0u8; 1 << 20];
    let err = write(&path, &too_big, 0o600).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(nix::libc::ENOSPC), "{err}");
    assert_eq!(fs::read(&path).unwrap(), b"old");
    assert_eq!(names(disk.path()), ["desired.bin"]);

    // Root writes through a 0500 directory, but not through a read-only mount.
    mount(
        None::<&str>,
        disk.path(),
        None::<&str>,
        MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
        None::<&str>,
    )
    .unwrap();
    let err = write(&path, b"new", 0o600).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(nix::libc::EROFS), "{err}");
    assert_eq!(fs::read(&path).unwrap(), b"old");
}

#[test]
fn a_copy_replaces_the_target_with_the_exact_mode_not_less_the_umask() {
    let dir = tempfile::tempdir().unwrap();
    let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
    let content = vec![7u8; 300 * 1024];
    fs::write(&src, &content).unwrap();
    fs::write(&dst, b"old").unwrap();
    // Group- and world-writable: bits any usual umask (022, 077) takes away. The process
    // umask is not changed here: tests run in threads of one process.
    assert_eq!(copy(&src, &dst, 0o777).unwrap(), content.len() as u64);
    assert_eq!(fs::read(&dst).unwrap(), content);
    assert_eq!(mode(&dst), 0o777);
    assert_eq!(names(dir.path()), ["dst", "src"]);
    // A missing source leaves the target as it was.
    assert!(copy(&dir.path().join("nope"), &dst, 0o755).is_err());
    assert_eq!(fs::read(&dst).unwrap(), content);
}
