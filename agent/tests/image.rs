//! The image store against a real registry (Debian's docker-registry on 127.0.0.1), with
//! images built here from bytes, real overlay mounts, and cleanup on every path.

mod common;

use std::collections::HashSet;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::Result;
use baton_agent::image::{ImageConfig, ImageError, ImageStore, ImageStoreConfig, Platform};
use baton_proto::PullPolicy;
use common::*;

fn store(root: &Path, reg: &Registry, platform: Platform) -> Result<ImageStore> {
    Ok(ImageStore::new(ImageStoreConfig {
        root: root.to_path_buf(),
        insecure_registries: vec![reg.addr().to_owned()],
        platform,
    })?)
}

fn amd64() -> Platform {
    Platform::new("linux", "amd64", None)
}

/// Unmounts and removes a container dir on drop, so a failing assertion leaks no mount.
struct Rootfs<'a> {
    store: &'a ImageStore,
    dir: PathBuf,
}

impl Drop for Rootfs<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.store.unmount_rootfs(&self.dir) {
            eprintln!("cleanup of {} failed: {e}", self.dir.display());
        }
    }
}

/// The two layers of the main test image: a base, and an upper layer that deletes a file
/// and makes a directory opaque.
fn base_layer() -> Result<Layer> {
    layer(&[
        E::Dir("etc"),
        E::File("etc/hostname", b"base\n", 0o644),
        E::File("etc/removed", b"gone soon\n", 0o644),
        E::Hardlink("etc/hostname.hard", "etc/hostname"),
        E::Dir("opq"),
        E::File("opq/a", b"a", 0o644),
        E::File("opq/b", b"b", 0o644),
        E::Dir("bin"),
        E::File("bin/tool", b"#!/bin/sh\necho tool\n", 0o755),
        E::Symlink("bin/sh", "/bin/tool"),
    ])
}

fn upper_layer(arch: &str) -> Result<Layer> {
    layer(&[
        E::Dir("etc"),
        E::Whiteout("etc/removed"),
        E::File("etc/arch", arch.as_bytes(), 0o644),
        E::Dir("opq"),
        E::Opaque("opq"),
        E::File("opq/c", b"c", 0o600),
    ])
}

fn dir_names(dir: &Path) -> Result<HashSet<String>> {
    let mut names = HashSet::new();
    for e in fs::read_dir(dir)? {
        names.insert(e?.file_name().to_string_lossy().into_owned());
    }
    Ok(names)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_unpack_and_mount_apply_whiteouts() -> Result<()> {
    let reg = Registry::start()?;
    let client = push_client();
    let (base, upper) = (base_layer()?, upper_layer("amd64")?);
    let pushed = push_image(
        &client,
        reg.addr(),
        "app",
        Some("v1"),
        &AMD64,
        &[&base, &upper],
    )
    .await?;

    let tmp = tempfile::tempdir()?;
    let store = store(&tmp.path().join("store"), &reg, amd64())?;
    let reference = format!("{}/app:v1", reg.addr());
    let img = store.ensure(&reference, PullPolicy::IfNotPresent).await?;
    assert_eq!(
        img,
        ImageConfig {
            reference: reference.clone(),
            manifest_digest: pushed.digest.clone(),
            entrypoint: vec!["/bin/tool".into()],
            cmd: vec!["serve".into(), "--port".into(), "80".into()],
            env: vec!["PATH=/bin".into(), "ARCH=amd64".into()],
            working_dir: "/srv".into(),
            layers: vec![base.digest.clone(), upper.digest.clone()],
        }
    );

    // Content-addressed layout: verified blobs, unpacked layers, nothing half done.
    let blobs = tmp.path().join("store/blobs/sha256");
    for d in [
        &pushed.digest,
        &pushed.config_digest,
        &base.digest,
        &upper.digest,
    ] {
        let path = blobs.join(d.trim_start_matches("sha256:"));
        assert_eq!(sha256(&fs::read(&path)?), *d);
    }
    assert!(dir_names(&blobs)?
        .iter()
        .all(|n| !n.contains(".partial") && !n.contains(".tmp")));
    let upper_dir = tmp
        .path()
        .join("store/layers/sha256")
        .join(upper.digest.trim_start_matches("sha256:"));
    assert_eq!(
        fs::symlink_metadata(upper_dir.join("etc/removed"))?.rdev(),
        0
    );
    assert_eq!(
        xattr::get(upper_dir.join("opq"), "trusted.overlay.opaque")?.as_deref(),
        Some(&b"y"[..])
    );

    let container = tmp.path().join("containers/c1");
    let guard = Rootfs {
        store: &store,
        dir: container.clone(),
    };
    let rootfs = store.mount_rootfs(&img, &container)?;
    assert_eq!(rootfs, container.join("rootfs"));
    assert_eq!(fs::read(rootfs.join("etc/hostname"))?, b"base\n");
    assert_eq!(fs::read(rootfs.join("etc/hostname.hard"))?, b"base\n");
    assert_eq!(fs::read(rootfs.join("etc/arch"))?, b"amd64");
    assert!(!rootfs.join("etc/removed").exists(), "whiteout not applied");
    assert_eq!(
        dir_names(&rootfs.join("opq"))?,
        HashSet::from(["c".to_owned()]),
        "opaque dir not applied"
    );
    assert_eq!(fs::metadata(rootfs.join("opq/c"))?.mode() & 0o777, 0o600);
    assert_eq!(fs::metadata(rootfs.join("bin/tool"))?.mode() & 0o777, 0o755);
    assert_eq!(
        fs::read_link(rootfs.join("bin/sh"))?,
        PathBuf::from("/bin/tool")
    );

    // Writes go to the container's upper dir, never into the shared layers.
    fs::write(rootfs.join("etc/hostname"), b"mine\n")?;
    fs::remove_file(rootfs.join("bin/tool"))?;
    assert_eq!(fs::read(container.join("upper/etc/hostname"))?, b"mine\n");
    let base_dir = tmp
        .path()
        .join("store/layers/sha256")
        .join(base.digest.trim_start_matches("sha256:"));
    assert_eq!(fs::read(base_dir.join("etc/hostname"))?, b"base\n");
    assert!(base_dir.join("bin/tool").exists());

    // Idempotent: a second mount_rootfs reuses the mount.
    assert_eq!(store.mount_rootfs(&img, &container)?, rootfs);
    assert_eq!(mounts_under(&container), vec![rootfs.clone()]);

    // unmount_rootfs leaves nothing behind, and may be repeated.
    store.unmount_rootfs(&container)?;
    assert!(mounts_under(&container).is_empty());
    assert!(!container.exists());
    store.unmount_rootfs(&container)?;
    drop(guard);
    // Layers are untouched by the container's life.
    assert_eq!(fs::read(base_dir.join("etc/hostname"))?, b"base\n");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_rootfs_is_detached_and_removed() -> Result<()> {
    let reg = Registry::start()?;
    let client = push_client();
    let base = base_layer()?;
    push_image(&client, reg.addr(), "busy", Some("v1"), &AMD64, &[&base]).await?;
    let tmp = tempfile::tempdir()?;
    let store = store(&tmp.path().join("store"), &reg, amd64())?;
    let img = store
        .ensure(&format!("{}/busy:v1", reg.addr()), PullPolicy::Always)
        .await?;
    let container = tmp.path().join("containers/busy");
    let _guard = Rootfs {
        store: &store,
        dir: container.clone(),
    };
    let rootfs = store.mount_rootfs(&img, &container)?;
    // An open directory on the mount makes a plain umount fail with EBUSY.
    let held = fs::File::open(rootfs.join("etc"))?;
    store.unmount_rootfs(&container)?;
    assert!(mounts_under(&container).is_empty());
    assert!(!container.exists());
    drop(held);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn index_resolves_per_arch() -> Result<()> {
    let reg = Registry::start()?;
    let client = push_client();
    let base = base_layer()?;
    let (up_amd, up_arm) = (upper_layer("amd64")?, upper_layer("arm64")?);
    let amd = push_image(
        &client,
        reg.addr(),
        "multi",
        None,
        &AMD64,
        &[&base, &up_amd],
    )
    .await?;
    let arm = push_image(
        &client,
        reg.addr(),
        "multi",
        None,
        &ARM64,
        &[&base, &up_arm],
    )
    .await?;
    push_index(
        &client,
        reg.addr(),
        "multi",
        "v1",
        &[(&amd, &AMD64), (&arm, &ARM64)],
    )
    .await?;
    let reference = format!("{}/multi:v1", reg.addr());

    let tmp = tempfile::tempdir()?;
    let arm_store = store(
        &tmp.path().join("arm"),
        &reg,
        Platform::new("linux", "arm64", None),
    )?;
    let img = arm_store
        .ensure(&reference, PullPolicy::IfNotPresent)
        .await?;
    assert_eq!(img.manifest_digest, arm.digest);
    assert_eq!(
        img.env,
        vec!["PATH=/bin".to_owned(), "ARCH=arm64".to_owned()]
    );
    let container = tmp.path().join("containers/arm");
    let _guard = Rootfs {
        store: &arm_store,
        dir: container.clone(),
    };
    let rootfs = arm_store.mount_rootfs(&img, &container)?;
    assert_eq!(fs::read(rootfs.join("etc/arch"))?, b"arm64");
    // Only the arm64 blobs were fetched.
    assert_eq!(reg.blob_gets(&up_amd.digest), 0);
    assert_eq!(reg.blob_gets(&amd.config_digest), 0);

    let amd_store = store(&tmp.path().join("amd"), &reg, amd64())?;
    let img = amd_store
        .ensure(&reference, PullPolicy::IfNotPresent)
        .await?;
    assert_eq!(img.manifest_digest, amd.digest);

    let riscv = store(
        &tmp.path().join("riscv"),
        &reg,
        Platform::new("linux", "riscv64", None),
    )?;
    let err = riscv
        .ensure(&reference, PullPolicy::Always)
        .await
        .unwrap_err();
    assert!(
        matches!(err, ImageError::NoMatchingPlatform { .. }),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        format!("no manifest for linux/riscv64 in index of \"{reference}\" (it has: linux/amd64, linux/arm64)")
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arm_variant_selects_v6_or_v7() -> Result<()> {
    let reg = Registry::start()?;
    let client = push_client();
    let base = base_layer()?;
    let (up6, up7) = (upper_layer("armv6")?, upper_layer("armv7")?);
    let v6 = push_image(&client, reg.addr(), "pi", None, &ARM_V6, &[&base, &up6]).await?;
    let v7 = push_image(&client, reg.addr(), "pi", None, &ARM_V7, &[&base, &up7]).await?;
    // v7 first: a resolver that ignores the variant would hand it to a v6 board.
    push_index(
        &client,
        reg.addr(),
        "pi",
        "v1",
        &[(&v7, &ARM_V7), (&v6, &ARM_V6)],
    )
    .await?;
    let reference = format!("{}/pi:v1", reg.addr());
    let tmp = tempfile::tempdir()?;

    let s6 = store(
        &tmp.path().join("v6"),
        &reg,
        Platform::new("linux", "arm", Some("v6")),
    )?;
    assert_eq!(
        s6.ensure(&reference, PullPolicy::Always)
            .await?
            .manifest_digest,
        v6.digest
    );
    let s7 = store(
        &tmp.path().join("v7"),
        &reg,
        Platform::new("linux", "arm", Some("v7")),
    )?;
    assert_eq!(
        s7.ensure(&reference, PullPolicy::Always)
            .await?
            .manifest_digest,
        v7.digest
    );
    assert_eq!(reg.blob_gets(&up7.digest), 1);
    assert_eq!(reg.blob_gets(&up6.digest), 1);

    // A v7-only image cannot run on a v6 board; a v6-only image runs on v7.
    let only7 = push_image(&client, reg.addr(), "only7", None, &ARM_V7, &[&base]).await?;
    push_index(&client, reg.addr(), "only7", "v1", &[(&only7, &ARM_V7)]).await?;
    let err = s6
        .ensure(&format!("{}/only7:v1", reg.addr()), PullPolicy::Always)
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("no manifest for linux/arm/v6 in index"),
        "{err}"
    );
    let only6 = push_image(&client, reg.addr(), "only6", None, &ARM_V6, &[&base]).await?;
    push_index(&client, reg.addr(), "only6", "v1", &[(&only6, &ARM_V6)]).await?;
    let img = s7
        .ensure(&format!("{}/only6:v1", reg.addr()), PullPolicy::Always)
        .await?;
    assert_eq!(img.manifest_digest, only6.digest);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_manifest_of_another_arch_is_rejected() -> Result<()> {
    let reg = Registry::start()?;
    let client = push_client();
    let base = plain_layer(&[E::Dir("etc"), E::File("etc/x", b"x", 0o644)])?;
    push_image(&client, reg.addr(), "armonly", Some("v1"), &ARM64, &[&base]).await?;
    let tmp = tempfile::tempdir()?;
    let s = store(&tmp.path().join("store"), &reg, amd64())?;
    let reference = format!("{}/armonly:v1", reg.addr());
    let err = s.ensure(&reference, PullPolicy::Always).await.unwrap_err();
    assert!(matches!(err, ImageError::WrongPlatform { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!("image \"{reference}\" is built for linux/arm64, this node needs linux/amd64")
    );
    // Nothing was unpacked for it, and it is not recorded as present.
    assert!(dir_names(&tmp.path().join("store/layers/sha256"))?.is_empty());
    let err = s.ensure(&reference, PullPolicy::Never).await.unwrap_err();
    assert!(matches!(err, ImageError::NotPresent(_)), "{err:?}");

    // The same plain-tar image pulls fine on arm64.
    let s = store(
        &tmp.path().join("arm"),
        &reg,
        Platform::new("linux", "arm64", None),
    )?;
    let img = s.ensure(&reference, PullPolicy::Always).await?;
    assert_eq!(img.layers, vec![base.digest.clone()]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_layer_is_downloaded_and_unpacked_once() -> Result<()> {
    let reg = Registry::start()?;
    let client = push_client();
    let base = base_layer()?;
    let (top_a, top_b) = (
        layer(&[E::File("a.txt", b"image a", 0o644)])?,
        layer(&[E::File("b.txt", b"image b", 0o644)])?,
    );
    let a = push_image(
        &client,
        reg.addr(),
        "a",
        Some("v1"),
        &AMD64,
        &[&base, &top_a],
    )
    .await?;
    let b = push_image(
        &client,
        reg.addr(),
        "b",
        Some("v1"),
        &AMD64,
        &[&base, &top_b],
    )
    .await?;
    let tmp = tempfile::tempdir()?;

    // One after the other.
    let s = store(&tmp.path().join("seq"), &reg, amd64())?;
    s.ensure(&format!("{}/a:v1", reg.addr()), PullPolicy::IfNotPresent)
        .await?;
    let after_a = s.stats();
    assert_eq!(after_a.blob_fetches, 3, "{after_a:?}");
    assert_eq!(after_a.blob_bytes as usize, a.blob_bytes);
    s.ensure(&format!("{}/b:v1", reg.addr()), PullPolicy::IfNotPresent)
        .await?;
    let after_b = s.stats();
    assert_eq!(
        after_b.blob_fetches - after_a.blob_fetches,
        2,
        "{after_b:?}"
    );
    assert_eq!(
        (after_b.blob_bytes - after_a.blob_bytes) as usize,
        b.blob_bytes - base.data.len()
    );
    assert_eq!(after_b.layers_unpacked, 3);
    assert_eq!(reg.blob_gets(&base.digest), 1);

    // Both at once, in a fresh store: the layer lock still makes it one download.
    let s = store(&tmp.path().join("par"), &reg, amd64())?;
    let (ref_a, ref_b) = (
        format!("{}/a:v1", reg.addr()),
        format!("{}/b:v1", reg.addr()),
    );
    let (ra, rb) = tokio::join!(
        s.ensure(&ref_a, PullPolicy::Always),
        s.ensure(&ref_b, PullPolicy::Always),
    );
    ra?;
    rb?;
    assert_eq!(s.stats().blob_fetches, 5, "{:?}", s.stats());
    assert_eq!(s.stats().layers_unpacked, 3);
    assert_eq!(reg.blob_gets(&base.digest), 2, "one GET per store");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_ensure_of_one_reference_pulls_once() -> Result<()> {
    let reg = Registry::start()?;
    let client = push_client();
    let (base, upper) = (base_layer()?, upper_layer("amd64")?);
    let pushed = push_image(
        &client,
        reg.addr(),
        "conc",
        Some("v1"),
        &AMD64,
        &[&base, &upper],
    )
    .await?;
    let tmp = tempfile::tempdir()?;
    let s = store(&tmp.path().join("store"), &reg, amd64())?;
    let reference = format!("{}/conc:v1", reg.addr());

    let mut tasks = Vec::new();
    for i in 0..8 {
        let (s, r) = (s.clone(), reference.clone());
        let policy = if i % 2 == 0 {
            PullPolicy::Always
        } else {
            PullPolicy::IfNotPresent
        };
        tasks.push(tokio::spawn(async move { s.ensure(&r, policy).await }));
    }
    for t in tasks {
        assert_eq!(t.await??.manifest_digest, pushed.digest);
    }
    let stats = s.stats();
    assert_eq!(stats.blob_fetches, 3, "{stats:?}");
    assert_eq!(stats.layers_unpacked, 2, "{stats:?}");
    for d in [&pushed.config_digest, &base.digest, &upper.digest] {
        assert_eq!(reg.blob_gets(d), 1, "{d}");
    }

    // Calls polled together join one pull: one manifest GET for all of them.
    let s = store(&tmp.path().join("joined"), &reg, amd64())?;
    let calls = (0..5).map(|_| s.ensure(&reference, PullPolicy::Always));
    for r in futures::future::join_all(calls).await {
        r?;
    }
    assert_eq!(s.stats().manifest_fetches, 1, "{:?}", s.stats());
    assert_eq!(s.stats().blob_fetches, 3);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cold_and_warm_pull_bytes() -> Result<()> {
    let reg = Registry::start()?;
    let client = push_client();
    let (base, upper) = (base_layer()?, upper_layer("amd64")?);
    let pushed = push_image(
        &client,
        reg.addr(),
        "warm",
        Some("v1"),
        &AMD64,
        &[&base, &upper],
    )
    .await?;
    let tmp = tempfile::tempdir()?;
    let s = store(&tmp.path().join("store"), &reg, amd64())?;
    let reference = format!("{}/warm:v1", reg.addr());

    s.ensure(&reference, PullPolicy::Always).await?;
    let cold = s.stats();
    s.ensure(&reference, PullPolicy::Always).await?;
    let always = s.stats();
    s.ensure(&reference, PullPolicy::IfNotPresent).await?;
    let if_not_present = s.stats();
    // Restarted agent, same root: still nothing to download.
    let s2 = store(&tmp.path().join("store"), &reg, amd64())?;
    s2.ensure(&reference, PullPolicy::Always).await?;
    let restarted = s2.stats();

    println!(
        "cold pull: {} blob bytes in {} blobs + {} manifest bytes; warm Always: {} blob bytes + {} manifest bytes; warm IfNotPresent: {} bytes; restarted Always: {} blob bytes + {} manifest bytes",
        cold.blob_bytes,
        cold.blob_fetches,
        cold.manifest_bytes,
        always.blob_bytes - cold.blob_bytes,
        always.manifest_bytes - cold.manifest_bytes,
        (if_not_present.blob_bytes + if_not_present.manifest_bytes)
            - (always.blob_bytes + always.manifest_bytes),
        restarted.blob_bytes,
        restarted.manifest_bytes,
    );
    assert_eq!(cold.blob_bytes as usize, pushed.blob_bytes);
    assert_eq!(cold.manifest_bytes as usize, pushed.size);
    assert_eq!(
        always.blob_bytes, cold.blob_bytes,
        "warm Always downloaded blobs"
    );
    assert_eq!(always.manifest_fetches, cold.manifest_fetches + 1);
    assert_eq!(if_not_present, always, "IfNotPresent touched the network");
    assert_eq!(restarted.blob_fetches, 0);
    assert_eq!(restarted.manifest_fetches, 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_blob_on_disk_is_refetched_not_used() -> Result<()> {
    let reg = Registry::start()?;
    let client = push_client();
    let (base, upper) = (base_layer()?, upper_layer("amd64")?);
    let pushed = push_image(
        &client,
        reg.addr(),
        "rot",
        Some("v1"),
        &AMD64,
        &[&base, &upper],
    )
    .await?;
    let tmp = tempfile::tempdir()?;
    let root = tmp.path().join("store");
    let blob = |d: &str| {
        root.join("blobs/sha256")
            .join(d.trim_start_matches("sha256:"))
    };
    let s = store(&root, &reg, amd64())?;
    let reference = format!("{}/rot:v1", reg.addr());
    s.ensure(&reference, PullPolicy::IfNotPresent).await?;
    assert_eq!(s.stats().blob_fetches, 3);

    // A flipped bit in the config: the local copy no longer counts, the config is fetched
    // again, and the result is the genuine config.
    flip_a_byte(&blob(&pushed.config_digest))?;
    let img = s.ensure(&reference, PullPolicy::IfNotPresent).await?;
    assert_eq!(img.entrypoint, vec!["/bin/tool".to_owned()]);
    assert_eq!(s.stats().blob_fetches, 4);
    assert_eq!(reg.blob_gets(&pushed.config_digest), 2);
    assert_eq!(
        sha256(&fs::read(blob(&pushed.config_digest))?),
        pushed.config_digest
    );

    // A flipped bit in a layer blob whose unpack was lost (an agent killed between
    // download and unpack): the blob is caught before unpacking and fetched again.
    flip_a_byte(&blob(&upper.digest))?;
    fs::remove_dir_all(
        root.join("layers/sha256")
            .join(upper.digest.trim_start_matches("sha256:")),
    )?;
    let img = s.ensure(&reference, PullPolicy::IfNotPresent).await?;
    assert_eq!(s.stats().blob_fetches, 5);
    assert_eq!(reg.blob_gets(&upper.digest), 2);
    assert_eq!(reg.blob_gets(&base.digest), 1);
    let container = tmp.path().join("containers/rot");
    let _guard = Rootfs {
        store: &s,
        dir: container.clone(),
    };
    let rootfs = s.mount_rootfs(&img, &container)?;
    assert_eq!(fs::read(rootfs.join("etc/arch"))?, b"amd64");
    assert!(!rootfs.join("etc/removed").exists());

    // With Never, a corrupt local copy is not present either.
    flip_a_byte(&blob(&pushed.digest))?;
    let err = s.ensure(&reference, PullPolicy::Never).await.unwrap_err();
    assert!(matches!(err, ImageError::NotPresent(_)), "{err:?}");
    assert!(!blob(&pushed.digest).exists(), "corrupt manifest kept");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_blob_from_registry_fails_the_pull() -> Result<()> {
    let reg = Registry::start()?;
    let client = push_client();
    let (base, upper) = (base_layer()?, upper_layer("amd64")?);
    push_image(
        &client,
        reg.addr(),
        "bad",
        Some("v1"),
        &AMD64,
        &[&base, &upper],
    )
    .await?;
    // The registry serves its stored bytes as they are.
    flip_a_byte(&reg.blob_data_path(&upper.digest))?;
    let tmp = tempfile::tempdir()?;
    let root = tmp.path().join("store");
    let s = store(&root, &reg, amd64())?;
    let err = s
        .ensure(&format!("{}/bad:v1", reg.addr()), PullPolicy::Always)
        .await
        .unwrap_err();
    assert!(matches!(err, ImageError::DigestMismatch { .. }), "{err:?}");
    assert!(
        err.to_string()
            .starts_with(&format!("digest mismatch for {}", upper.digest)),
        "{err}"
    );
    // Tried twice (one retry), kept nothing of it, recorded nothing.
    assert_eq!(reg.blob_gets(&upper.digest), 2);
    let blobs = dir_names(&root.join("blobs/sha256"))?;
    assert!(!blobs.contains(upper.digest.trim_start_matches("sha256:")));
    assert!(blobs.iter().all(|n| !n.ends_with(".partial")), "{blobs:?}");
    assert!(!root
        .join("layers/sha256")
        .join(upper.digest.trim_start_matches("sha256:"))
        .exists());
    assert!(dir_names(&root.join("refs"))?.is_empty());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn never_policy_and_missing_images() -> Result<()> {
    let reg = Registry::start()?;
    let client = push_client();
    let base = base_layer()?;
    push_image(&client, reg.addr(), "here", Some("v1"), &AMD64, &[&base]).await?;
    let tmp = tempfile::tempdir()?;
    let s = store(&tmp.path().join("store"), &reg, amd64())?;
    let reference = format!("{}/here:v1", reg.addr());

    let err = s.ensure(&reference, PullPolicy::Never).await.unwrap_err();
    assert!(matches!(err, ImageError::NotPresent(_)), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!("image \"{reference}\" is not present on this node and the pull policy is Never")
    );
    assert_eq!(
        s.stats().manifest_fetches,
        0,
        "Never must not touch the network"
    );

    s.ensure(&reference, PullPolicy::IfNotPresent).await?;
    s.ensure(&reference, PullPolicy::Never).await?;

    let missing = format!("{}/nope:v1", reg.addr());
    let err = s.ensure(&missing, PullPolicy::Always).await.unwrap_err();
    assert!(matches!(err, ImageError::NotFound(_)), "{err:?}");
    assert_eq!(err.to_string(), format!("image \"{missing}\" not found"));
    let missing_tag = format!("{}/here:v2", reg.addr());
    let err = s
        .ensure(&missing_tag, PullPolicy::IfNotPresent)
        .await
        .unwrap_err();
    assert!(matches!(err, ImageError::NotFound(_)), "{err:?}");

    let err = s
        .ensure("Not A Reference!", PullPolicy::Always)
        .await
        .unwrap_err();
    assert!(
        matches!(err, ImageError::InvalidReference { .. }),
        "{err:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_registry_errors_cleanly() -> Result<()> {
    let mut reg = Registry::start()?;
    let client = push_client();
    let base = base_layer()?;
    push_image(&client, reg.addr(), "offline", Some("v1"), &AMD64, &[&base]).await?;
    let tmp = tempfile::tempdir()?;
    let s = store(&tmp.path().join("store"), &reg, amd64())?;
    let reference = format!("{}/offline:v1", reg.addr());
    s.ensure(&reference, PullPolicy::IfNotPresent).await?;
    reg.stop();

    // The local copy still serves IfNotPresent and Never.
    s.ensure(&reference, PullPolicy::IfNotPresent).await?;
    s.ensure(&reference, PullPolicy::Never).await?;

    // Always must re-resolve, and says which registry is down.
    let err = s.ensure(&reference, PullPolicy::Always).await.unwrap_err();
    assert!(matches!(err, ImageError::Unreachable { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.starts_with(&format!("registry {} unreachable: ", reg.addr())),
        "{msg}"
    );
    assert!(msg.to_lowercase().contains("connection refused"), "{msg}");

    let fresh = store(&tmp.path().join("fresh"), &reg, amd64())?;
    let err = fresh
        .ensure(&reference, PullPolicy::IfNotPresent)
        .await
        .unwrap_err();
    assert!(matches!(err, ImageError::Unreachable { .. }), "{err:?}");
    assert!(dir_names(&tmp.path().join("fresh/refs"))?.is_empty());
    Ok(())
}
