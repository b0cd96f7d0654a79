use super::*;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};

/// A tar entry with the exact name and link bytes given, bypassing the checks of
/// `tar::Builder` (which refuses `..`), as a hostile registry would send it.
fn raw_entry(out: &mut Vec<u8>, name: &str, kind: EntryType, link: &str, data: &[u8]) {
    let mut h = tar::Header::new_ustar();
    {
        let bytes = h.as_mut_bytes();
        bytes[..100].fill(0);
        bytes[..name.len()].copy_from_slice(name.as_bytes());
        bytes[157..257].fill(0);
        bytes[157..157 + link.len()].copy_from_slice(link.as_bytes());
    }
    h.set_entry_type(kind);
    h.set_size(data.len() as u64);
    h.set_mode(if kind == EntryType::Directory {
        0o755
    } else {
        0o644
    });
    h.set_mtime(1_700_000_000);
    h.set_uid(0);
    h.set_gid(0);
    h.set_cksum();
    out.extend_from_slice(h.as_bytes());
    out.extend_from_slice(data);
    let pad = (512 - data.len() % 512) % 512;
    out.extend(std::iter::repeat_n(0u8, pad));
}

fn hdr(kind: EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_700_000_000);
    h
}

fn finish(mut out: Vec<u8>) -> Vec<u8> {
    out.extend(std::iter::repeat_n(0u8, 1024));
    out
}

fn run(tar: &[u8]) -> (tempfile::TempDir, Result<String, ImageError>) {
    let dir = tempfile::tempdir().unwrap();
    let blob = dir.path().join("blob");
    fs::write(&blob, tar).unwrap();
    let root = dir.path().join("root");
    fs::create_dir(&root).unwrap();
    let res = extract(&blob, &root, "sha256:test", &Tally::default());
    (dir, res)
}

#[test]
fn markers() {
    assert_eq!(marker(OsStr::new(".wh..wh..opq")), Marker::Opaque);
    assert_eq!(
        marker(OsStr::new(".wh.foo")),
        Marker::Whiteout(OsStr::new("foo"))
    );
    assert_eq!(marker(OsStr::new(".wh..wh.plnk")), Marker::AufsMeta);
    // Not a marker of anything: refused when unpacked (`single_name`).
    assert_eq!(marker(OsStr::new(".wh.")), Marker::Whiteout(OsStr::new("")));
    assert_eq!(
        marker(OsStr::new(".wh..")),
        Marker::Whiteout(OsStr::new("."))
    );
    assert_eq!(
        marker(OsStr::new(".wh...")),
        Marker::Whiteout(OsStr::new(".."))
    );
    assert_eq!(marker(OsStr::new("foo.wh.bar")), Marker::None);
    assert_eq!(marker(OsStr::new(".whale")), Marker::None);
}

#[test]
fn relative_paths() {
    assert_eq!(
        safe_relative(Path::new("./a/./b")).unwrap(),
        PathBuf::from("a/b")
    );
    assert_eq!(safe_relative(Path::new("./")).unwrap(), PathBuf::new());
    assert!(matches!(
        safe_relative(Path::new("/etc/passwd")),
        Err(EntryError::Unsafe(_))
    ));
    assert!(matches!(
        safe_relative(Path::new("a/../../x")),
        Err(EntryError::Unsafe(_))
    ));
    assert!(matches!(
        safe_relative(Path::new("..")),
        Err(EntryError::Unsafe(_))
    ));
}

#[test]
fn whiteouts_become_overlay_markers() {
    let mut t = Vec::new();
    raw_entry(&mut t, "./etc/", EntryType::Directory, "", b"");
    raw_entry(&mut t, "./etc/.wh.passwd", EntryType::Regular, "", b"");
    raw_entry(&mut t, "opq/", EntryType::Directory, "", b"");
    raw_entry(&mut t, "opq/.wh..wh..opq", EntryType::Regular, "", b"");
    raw_entry(&mut t, "opq/new", EntryType::Regular, "", b"n");
    // Whiteout in a directory the layer does not list: created on the way.
    raw_entry(&mut t, "usr/lib/.wh.libx.so", EntryType::Regular, "", b"");
    raw_entry(&mut t, ".wh..wh.plnk", EntryType::Regular, "", b"");
    let (dir, res) = run(&finish(t));
    res.unwrap();
    let root = dir.path().join("root");
    for w in ["etc/passwd", "usr/lib/libx.so"] {
        let m = fs::symlink_metadata(root.join(w)).unwrap();
        assert!(m.file_type().is_char_device(), "{w}");
        assert_eq!(m.rdev(), 0, "{w}");
    }
    assert!(!root.join("etc/.wh.passwd").exists());
    assert_eq!(
        xattr::get(root.join("opq"), OPAQUE_XATTR)
            .unwrap()
            .as_deref(),
        Some(&b"y"[..])
    );
    assert!(!root.join("opq/.wh..wh..opq").exists());
    assert_eq!(fs::read(root.join("opq/new")).unwrap(), b"n");
    assert!(!root.join(".wh..wh.plnk").exists());
}

#[test]
fn preserves_modes_symlinks_and_hardlinks() {
    let mut b = tar::Builder::new(Vec::new());
    b.append_data(&mut hdr(EntryType::Directory, 0o750, 0), "bin", &[][..])
        .unwrap();
    b.append_data(
        &mut hdr(EntryType::Regular, 0o4755, 3),
        "bin/tool",
        &b"abc"[..],
    )
    .unwrap();
    b.append_link(
        &mut hdr(EntryType::Symlink, 0o777, 0),
        "bin/sh",
        "/bin/tool",
    )
    .unwrap();
    b.append_link(&mut hdr(EntryType::Link, 0o644, 0), "bin/tool2", "bin/tool")
        .unwrap();
    b.append_data(&mut hdr(EntryType::Fifo, 0o600, 0), "bin/fifo", &[][..])
        .unwrap();
    let (dir, res) = run(&b.into_inner().unwrap());
    res.unwrap();
    let root = dir.path().join("root");
    assert_eq!(
        fs::metadata(root.join("bin")).unwrap().mode() & 0o7777,
        0o750
    );
    assert_eq!(
        fs::metadata(root.join("bin/tool")).unwrap().mode() & 0o7777,
        0o4755
    );
    // Absolute symlinks are fine inside a rootfs; they are not followed here.
    assert_eq!(
        fs::read_link(root.join("bin/sh")).unwrap(),
        PathBuf::from("/bin/tool")
    );
    let ino = |p: &str| fs::metadata(root.join(p)).unwrap().ino();
    assert_eq!(ino("bin/tool"), ino("bin/tool2"));
    let fifo = fs::symlink_metadata(root.join("bin/fifo")).unwrap();
    assert!(fifo.file_type().is_fifo());
    assert_eq!(fifo.mode() & 0o7777, 0o600);
}

#[test]
fn refuses_parent_dir_and_absolute_paths() {
    for name in ["../evil", "a/../../evil", "/evil"] {
        let mut t = Vec::new();
        raw_entry(&mut t, name, EntryType::Regular, "", b"x");
        let (dir, res) = run(&finish(t));
        let err = res.unwrap_err();
        assert!(
            matches!(err, ImageError::InvalidLayer { .. }),
            "{name}: {err}"
        );
        assert!(!dir.path().join("evil").exists());
    }
}

#[test]
fn refuses_writing_through_a_symlink() {
    let outside = tempfile::tempdir().unwrap();
    let target = outside.path().to_str().unwrap().to_owned();
    let mut t = Vec::new();
    raw_entry(&mut t, "escape", EntryType::Symlink, &target, b"");
    raw_entry(&mut t, "escape/pwned", EntryType::Regular, "", b"x");
    let (_dir, res) = run(&finish(t));
    assert!(
        matches!(res, Err(ImageError::InvalidLayer { .. })),
        "{res:?}"
    );
    assert!(!outside.path().join("pwned").exists());

    // A whiteout or opaque marker under the symlink must not touch the outside either.
    for marker in ["escape/.wh.victim", "escape/.wh..wh..opq"] {
        fs::write(outside.path().join("victim"), b"keep").unwrap();
        let mut t = Vec::new();
        raw_entry(&mut t, "escape", EntryType::Symlink, &target, b"");
        raw_entry(&mut t, marker, EntryType::Regular, "", b"");
        let (_dir, res) = run(&finish(t));
        assert!(
            matches!(res, Err(ImageError::InvalidLayer { .. })),
            "{marker}: {res:?}"
        );
        assert_eq!(fs::read(outside.path().join("victim")).unwrap(), b"keep");
        assert_eq!(xattr::get(outside.path(), OPAQUE_XATTR).unwrap(), None);
    }
}

#[test]
fn refuses_hardlink_out_of_the_layer() {
    let mut t = Vec::new();
    raw_entry(
        &mut t,
        "passwd",
        EntryType::Link,
        "../../../etc/passwd",
        b"",
    );
    let (_dir, res) = run(&finish(t));
    assert!(
        matches!(res, Err(ImageError::InvalidLayer { .. })),
        "{res:?}"
    );
    let mut t = Vec::new();
    raw_entry(&mut t, "passwd", EntryType::Link, "/etc/passwd", b"");
    let (dir, res) = run(&finish(t));
    assert!(
        matches!(res, Err(ImageError::InvalidLayer { .. })),
        "{res:?}"
    );
    assert!(!dir.path().join("root/passwd").exists());
}

#[test]
fn drops_overlay_xattrs_from_the_tarball() {
    let mut b = tar::Builder::new(Vec::new());
    b.append_pax_extensions([
        ("SCHILY.xattr.trusted.overlay.redirect", &b"/etc"[..]),
        ("SCHILY.xattr.user.baton", &b"kept"[..]),
    ])
    .unwrap();
    b.append_data(&mut hdr(EntryType::Regular, 0o644, 1), "f", &b"x"[..])
        .unwrap();
    let (dir, res) = run(&b.into_inner().unwrap());
    res.unwrap();
    let f = dir.path().join("root/f");
    assert_eq!(xattr::get(&f, "trusted.overlay.redirect").unwrap(), None);
    assert_eq!(
        xattr::get(&f, "user.baton").unwrap().as_deref(),
        Some(&b"kept"[..])
    );
}

#[test]
fn gzip_and_plain_give_the_same_diff_id_and_bad_diff_id_leaves_nothing() {
    let mut t = Vec::new();
    raw_entry(&mut t, "a", EntryType::Regular, "", b"hello");
    let tar = finish(t);
    let diff_id = format!("sha256:{}", hex::encode(Sha256::digest(&tar)));
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    io::Write::write_all(&mut gz, &tar).unwrap();
    let gz = gz.finish().unwrap();
    assert_eq!(run(&tar).1.unwrap(), diff_id);
    assert_eq!(run(&gz).1.unwrap(), diff_id);

    let dir = tempfile::tempdir().unwrap();
    let blob = dir.path().join("blob");
    fs::write(&blob, &gz).unwrap();
    let dest = dir.path().join("layer");
    let wrong = format!("sha256:{}", "0".repeat(64));
    assert!(unpack_layer(&blob, &dest, "sha256:x", &wrong, &Tally::default()).is_err());
    assert!(!dest.exists());
    let left: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(left.len(), 1, "temp dir left behind");
    unpack_layer(&blob, &dest, "sha256:x", &diff_id, &Tally::default()).unwrap();
    assert_eq!(fs::read(dest.join("a")).unwrap(), b"hello");
}

#[test]
fn media_types() {
    assert!(supported_media_type(
        "application/vnd.oci.image.layer.v1.tar+gzip"
    ));
    assert!(supported_media_type(
        "application/vnd.oci.image.layer.v1.tar"
    ));
    assert!(supported_media_type(
        "application/vnd.docker.image.rootfs.diff.tar.gzip"
    ));
    assert!(!supported_media_type(
        "application/vnd.oci.image.layer.v1.tar+zstd"
    ));
    assert!(!supported_media_type(
        "application/vnd.oci.image.config.v1+json"
    ));
}

#[test]
fn single_names() {
    for ok in ["a", "...", ".a", "a.b", ".wh.x"] {
        assert!(single_name(OsStr::new(ok)), "{ok}");
    }
    for bad in ["", ".", ".."] {
        assert!(!single_name(OsStr::new(bad)), "{bad:?}");
    }
}

/// Issue 9.1: a whiteout named `..` (`.wh...`) at the top of a layer made the agent remove
/// `<layer tmp>/..`, i.e. every unpacked layer of the node. Here in a store-like layout,
/// with a sibling layer that must survive, and `.` and the empty name too.
#[test]
fn whiteout_of_dot_dot_dot_or_nothing_is_refused_and_touches_nothing() {
    for name in [
        ".wh...",
        "./.wh...",
        ".wh..",
        ".wh.",
        "sub/.wh...",
        "sub/.wh..",
    ] {
        let dir = tempfile::tempdir().unwrap();
        let layers = dir.path().join("layers/sha256");
        let sibling = layers.join("other");
        fs::create_dir_all(&sibling).unwrap();
        fs::write(sibling.join("bin"), b"keep").unwrap();
        fs::create_dir(layers.join("sub")).unwrap();
        let mut t = Vec::new();
        raw_entry(&mut t, "sub/", EntryType::Directory, "", b"");
        raw_entry(&mut t, "sub/f", EntryType::Regular, "", b"f");
        raw_entry(&mut t, name, EntryType::Regular, "", b"");
        let tar = finish(t);
        let blob = dir.path().join("blob");
        fs::write(&blob, &tar).unwrap();
        let diff_id = format!("sha256:{}", hex::encode(Sha256::digest(&tar)));
        let dest = layers.join("new");
        let err =
            unpack_layer(&blob, &dest, "sha256:x", &diff_id, &Tally::default()).expect_err(name);
        assert!(
            matches!(&err, ImageError::InvalidLayer { reason, .. } if reason.contains("whiteout")),
            "{name}: {err}"
        );
        assert_eq!(fs::read(sibling.join("bin")).unwrap(), b"keep", "{name}");
        assert!(layers.join("sub").is_dir(), "{name}");
        let left: Vec<_> = fs::read_dir(&layers)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        let mut left = left;
        left.sort();
        assert_eq!(left, ["other", "sub"], "{name}");
    }
}

#[test]
fn device_nodes_lose_special_bits() {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = hdr(EntryType::Char, 0o4777, 0);
    h.set_device_major(1).unwrap();
    h.set_device_minor(3).unwrap();
    b.append_data(&mut h, "null", &[][..]).unwrap();
    b.append_data(&mut hdr(EntryType::Fifo, 0o7644, 0), "fifo", &[][..])
        .unwrap();
    let (dir, res) = run(&b.into_inner().unwrap());
    res.unwrap();
    let root = dir.path().join("root");
    let null = fs::symlink_metadata(root.join("null")).unwrap();
    assert!(null.file_type().is_char_device());
    assert_eq!(null.mode() & 0o7777, 0o777);
    let fifo = fs::symlink_metadata(root.join("fifo")).unwrap();
    assert_eq!(fifo.mode() & 0o7777, 0o644);
}

#[test]
fn refuses_directory_entry_over_an_outside_symlink() {
    let outside = tempfile::tempdir().unwrap();
    fs::set_permissions(outside.path(), fs::Permissions::from_mode(0o700)).unwrap();
    let target = outside.path().to_str().unwrap().to_owned();
    let mut t = Vec::new();
    raw_entry(&mut t, "escape", EntryType::Symlink, &target, b"");
    raw_entry(&mut t, "escape", EntryType::Directory, "", b"");
    let (_dir, res) = run(&finish(t));
    assert!(res.is_err(), "{res:?}");
    let mode = fs::metadata(outside.path()).unwrap().mode() & 0o7777;
    assert_eq!(mode, 0o700, "the outside directory's mode changed");
}

/// A gzip of zeros: a tar with one file of `len` zero bytes.
fn bomb(len: u64) -> (Vec<u8>, String) {
    let mut h = hdr(EntryType::Regular, 0o644, len);
    h.set_path("zeros").unwrap();
    h.set_cksum();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut hasher = Sha256::new();
    let mut put = |b: &[u8]| {
        hasher.update(b);
        io::Write::write_all(&mut gz, b).unwrap();
    };
    put(h.as_bytes());
    let chunk = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        put(&chunk[..n]);
        left -= n as u64;
    }
    put(&[0u8; 1024]);
    (
        gz.finish().unwrap(),
        format!("sha256:{}", hex::encode(hasher.finalize())),
    )
}

/// Issue 9.4: the budget is counted while unpacking, and the unpack stops within one read
/// buffer of it, leaving nothing behind.
#[test]
fn bomb_stops_at_the_meter_limit_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (gz, diff_id) = bomb(64 << 20);
    assert!(gz.len() < 1 << 20, "{}", gz.len());
    let blob = dir.path().join("blob");
    fs::write(&blob, &gz).unwrap();
    let dest = dir.path().join("layer");
    let limit = 4 << 20;
    let tally = Tally {
        limit: Some(limit),
        ..Tally::default()
    };
    let err = unpack_layer(&blob, &dest, "sha256:x", &diff_id, &tally).unwrap_err();
    assert!(matches!(err, ImageError::DiskBudget(_)), "{err}");
    // Charged = read from the stream; nothing beyond the refused read was written.
    assert!(
        tally.charged.get() <= limit + (64 << 10),
        "{}",
        tally.charged.get()
    );
    let left: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(left.len(), 1, "partial layer left behind");

    // Under no limit, the same layer unpacks, and the accounting covers what it takes.
    let tally = Tally::default();
    let (gz, diff_id) = bomb(3 << 20);
    fs::write(&blob, &gz).unwrap();
    unpack_layer(&blob, &dest, "sha256:x", &diff_id, &tally).unwrap();
    assert!(crate::image::gc::du(&dest).unwrap() <= tally.charged.get());
}

/// Many tiny files and empty directories cost a block each on disk, much more than their
/// share of the tar stream; the accounting must not fall short of what `du` measures.
#[test]
fn accounting_covers_small_files_directories_and_long_symlinks() {
    let mut t = Vec::new();
    for i in 0..200 {
        raw_entry(&mut t, &format!("d{i}/"), EntryType::Directory, "", b"");
        raw_entry(&mut t, &format!("d{i}/f"), EntryType::Regular, "", b"x");
        raw_entry(
            &mut t,
            &format!("implicit{i}/deeper/f"),
            EntryType::Regular,
            "",
            b"y",
        );
        raw_entry(
            &mut t,
            &format!("l{i}"),
            EntryType::Symlink,
            &"t".repeat(90),
            b"",
        );
    }
    let tar = finish(t);
    let dir = tempfile::tempdir().unwrap();
    let blob = dir.path().join("blob");
    fs::write(&blob, &tar).unwrap();
    let diff_id = format!("sha256:{}", hex::encode(Sha256::digest(&tar)));
    let dest = dir.path().join("layer");
    let tally = Tally::default();
    unpack_layer(&blob, &dest, "sha256:x", &diff_id, &tally).unwrap();
    let used = crate::image::gc::du(&dest).unwrap();
    assert!(
        used <= tally.charged.get(),
        "du {used} > charged {}",
        tally.charged.get()
    );
    assert!(
        tally.charged.get() > tar.len() as u64,
        "no per-entry charges"
    );
}

mod property {
    use crate::image::hostile::{self, Entry, ABSOLUTE, KINDS, MAX_ENTRIES, PARTS};
    use proptest::prelude::*;

    fn entry() -> impl Strategy<Value = Entry> {
        let part = 0..PARTS.len() as u8;
        (
            (
                prop::collection::vec(part.clone(), 1..4),
                any::<bool>(),
                any::<bool>(),
                0..KINDS.len() as u8,
                prop::option::weighted(0.3, 0..ABSOLUTE.len() as u8),
                prop::collection::vec(part, 1..4),
            ),
            (
                prop::sample::select(vec![0o644, 0o755, 0o4755, 0o2755, 0o1777, 0, 0o7777]),
                prop::sample::select(vec![0, 1000]),
                0u32..16,
                0u32..16,
                prop_oneof![0u32..64, 4000u32..5000, Just(70_000)],
                0u8..4,
            ),
        )
            .prop_map(
                |(
                    (path, leading_slash, trailing_slash, kind, link_abs, link_parts),
                    (mode, uid, major, minor, size, xattr),
                )| Entry {
                    path,
                    leading_slash,
                    trailing_slash,
                    kind,
                    link_abs,
                    link_parts,
                    mode,
                    uid,
                    gid: uid,
                    major,
                    minor,
                    size,
                    xattr,
                },
            )
    }

    /// Issue 9.1: whatever the entries, nothing outside the layer's directory is created,
    /// changed or removed; a refused layer leaves nothing; the meter charges at least what
    /// the layer takes and stops at its limit.
    #[test]
    fn hostile_entries_touch_nothing_outside_the_layer() {
        let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
            cases: 600,
            failure_persistence: None,
            ..ProptestConfig::default()
        });
        let inputs = (
            prop::collection::vec(entry(), 1..MAX_ENTRIES),
            prop::option::weighted(0.2, 0u64..100_000),
            any::<bool>(),
        );
        let result = runner.run(&inputs, |(entries, limit, gzip)| {
            let r = hostile::check(&entries, limit, gzip);
            prop_assert!(r.is_ok(), "{}", r.unwrap_err());
            Ok(())
        });
        hostile::cleanup();
        result.unwrap();
    }

    /// The fuzz target's decoder on a few fixed inputs, so it is built and run here too.
    #[test]
    fn fuzz_decoder_inputs_pass() {
        for input in [
            &b""[..],
            b"\x00\x00\x08\x05\x00\x00\x00\x00",
            b"\x03\x10\x01\x08\x06\x00\x85\x00\x02\xff\xc8",
        ] {
            let (entries, limit, gzip) = hostile::decode(input);
            hostile::check(&entries, limit, gzip).unwrap();
        }
        hostile::cleanup();
    }
}
