//! The image store against a real registry (Debian's docker-registry on 127.0.0.1), with
//! images built here from bytes, real overlay mounts, and cleanup on every path.

mod common;

use std::collections::HashSet;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use std::collections::BTreeSet;

use anyhow::{Context, Result};
use baton_agent::image::{
    Credentials, DiskLimits, DiskSize, ImageConfig, ImageError, ImageStore, ImageStoreConfig,
    Platform, RegistryConfig,
};
use baton_proto::PullPolicy;
use common::*;

/// A store config pulling from `registry` over plain HTTP.
fn config(root: &Path, registry: &str, platform: Platform) -> ImageStoreConfig {
    ImageStoreConfig {
        insecure_registries: vec![registry.to_owned()],
        ..ImageStoreConfig::new(root, platform)
    }
}

fn store(root: &Path, reg: &Registry, platform: Platform) -> Result<ImageStore> {
    Ok(ImageStore::new(config(root, reg.addr(), platform))?)
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

    // Content-addressed layout: verified manifest and config, unpacked layers whose
    // compressed blobs are gone, nothing half done.
    let blobs = tmp.path().join("store/blobs/sha256");
    for d in [&pushed.digest, &pushed.config_digest] {
        let path = blobs.join(d.trim_start_matches("sha256:"));
        assert_eq!(sha256(&fs::read(&path)?), *d);
    }
    for d in [&base.digest, &upper.digest] {
        assert!(
            !blobs.join(d.trim_start_matches("sha256:")).exists(),
            "layer blob kept after unpack"
        );
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
    let mut rotten = upper.data.clone();
    let mid = rotten.len() / 2;
    rotten[mid] ^= 0x01;
    fs::write(blob(&upper.digest), rotten)?;
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
    // Tried twice (one retry), kept nothing of it, recorded nothing. (The other layer's
    // download, cut short by the failure, may stay as a partial to resume.)
    assert_eq!(reg.blob_gets(&upper.digest), 2);
    let blobs = dir_names(&root.join("blobs/sha256"))?;
    let hex = upper.digest.trim_start_matches("sha256:");
    assert!(!blobs.contains(hex));
    assert!(!blobs.contains(&format!("{hex}.partial")), "{blobs:?}");
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

/// An image with one plain layer holding `size` random bytes in `data/blob`, and its name.
struct Unique {
    reference: String,
    layer: Layer,
    data: Vec<u8>,
}

async fn push_unique(
    client: &oci_client::Client,
    reg: &str,
    name: &str,
    size: usize,
) -> Result<Unique> {
    let data = random_bytes(size);
    let layer = plain_layer(&[
        E::Dir("data"),
        E::File("data/blob", &data, 0o644),
        E::File("name", name.as_bytes(), 0o644),
    ])?;
    push_image(client, reg, name, Some("v1"), &AMD64, &[&layer]).await?;
    Ok(Unique {
        reference: format!("{reg}/{name}:v1"),
        layer,
        data,
    })
}

fn set(refs: &[&Unique]) -> BTreeSet<String> {
    refs.iter().map(|u| u.reference.clone()).collect()
}

fn layer_dir(root: &Path, digest: &str) -> PathBuf {
    root.join("layers/sha256")
        .join(digest.trim_start_matches("sha256:"))
}

async fn present(s: &ImageStore, u: &Unique) -> bool {
    s.ensure(&u.reference, PullPolicy::Never).await.is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn budget_removes_unused_images_lru_first_and_never_in_use_ones() -> Result<()> {
    let reg = Registry::start()?;
    let client = push_client();
    // e is small and f big: the budget holds while a layer unpacks next to its blob too
    // (issue 9.4), so e must fit beside three images with its blob, and f must not fit
    // up front once e is stored.
    let mut images = Vec::new();
    for (name, size) in [
        ("a", 512 << 10),
        ("b", 512 << 10),
        ("c", 512 << 10),
        ("d", 512 << 10),
        ("e", 128 << 10),
        ("f", 768 << 10),
    ] {
        images.push(push_unique(&client, reg.addr(), name, size).await?);
    }
    let [a, b, c, d, e, f] = &images[..] else {
        unreachable!()
    };
    let tmp = tempfile::tempdir()?;
    // What one image costs on this filesystem, measured in a scratch store.
    let probe = store(&tmp.path().join("probe"), &reg, amd64())?;
    probe.ensure(&a.reference, PullPolicy::IfNotPresent).await?;
    let one = probe.disk_usage().await?.total();
    assert!(one >= 512 << 10, "{one}");
    // Four and a half images: three at rest plus a fourth one's unpacked layer and its
    // blob during the pull.
    let budget = one * 9 / 2;
    let root = tmp.path().join("store");
    let s = ImageStore::new(ImageStoreConfig {
        limits: DiskLimits {
            budget: Some(DiskSize::Bytes(budget)),
            min_free: Some(DiskSize::Bytes(0)),
        },
        ..config(&root, reg.addr(), amd64())
    })?;

    s.ensure(&a.reference, PullPolicy::IfNotPresent).await?;
    s.set_in_use(&set(&[a]));
    s.ensure(&b.reference, PullPolicy::IfNotPresent).await?;
    s.ensure(&c.reference, PullPolicy::IfNotPresent).await?;
    // b is used again, so c becomes the least recently used image no pod uses.
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    s.ensure(&b.reference, PullPolicy::IfNotPresent).await?;

    s.ensure(&d.reference, PullPolicy::IfNotPresent).await?;
    assert!(!present(&s, c).await, "the LRU unused image was kept");
    assert!(!layer_dir(&root, &c.layer.digest).exists());
    assert!(present(&s, a).await, "an in-use image was removed");
    assert!(
        present(&s, b).await,
        "a recently used image was removed first"
    );
    assert!(present(&s, d).await);
    assert!(s.disk_usage().await?.total() <= budget);

    // Nothing unused left: e still fits at rest, but no image may go for it.
    s.set_in_use(&set(&[a, b, d]));
    s.ensure(&e.reference, PullPolicy::IfNotPresent).await?;
    for u in [a, b, d, e] {
        assert!(present(&s, u).await, "{} removed", u.reference);
    }

    // Everything in use and no room: refused before downloading, nothing harmed.
    s.set_in_use(&set(&[a, b, d, e]));
    let err = s
        .ensure(&f.reference, PullPolicy::IfNotPresent)
        .await
        .unwrap_err();
    assert!(matches!(err, ImageError::DiskBudget(_)), "{err:?}");
    assert!(err.to_string().starts_with("disk budget: "), "{err}");
    assert_eq!(reg.blob_gets(&f.layer.digest), 0, "downloaded in vain");
    println!("{err}");
    for u in [a, b, d, e] {
        assert!(present(&s, u).await, "{} removed", u.reference);
    }
    assert!(s.disk_usage().await?.total() <= budget);
    let img = s.ensure(&a.reference, PullPolicy::Never).await?;
    let container = tmp.path().join("containers/a");
    let _guard = Rootfs {
        store: &s,
        dir: container.clone(),
    };
    let rootfs = s.mount_rootfs(&img, &container)?;
    assert_eq!(fs::read(rootfs.join("data/blob"))?, a.data);
    assert_eq!(fs::read(rootfs.join("name"))?, b"a");

    // A periodic collection with the pods gone frees what they pinned, but never a
    // mounted image's layers.
    s.set_in_use(&BTreeSet::new());
    let err = s.ensure(&f.reference, PullPolicy::IfNotPresent).await;
    assert!(err.is_ok(), "{err:?}");
    assert!(
        layer_dir(&root, &a.layer.digest).exists(),
        "mounted layer removed"
    );
    assert_eq!(fs::read(rootfs.join("data/blob"))?, a.data);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_disk_fails_the_pull_cleanly_and_harms_nothing() -> Result<()> {
    let reg = Registry::start()?;
    let client = push_client();
    let small = push_unique(&client, reg.addr(), "small", 64 << 10).await?;
    let big = push_unique(&client, reg.addr(), "big", 1 << 20).await?;
    // Compresses to a few KiB and unpacks to 2 MiB: only unpacking can hit the full disk.
    let zeros = vec![0u8; 2 << 20];
    let bomb = layer(&[E::File("zeros", &zeros, 0o644)])?;
    push_image(&client, reg.addr(), "bomb", Some("v1"), &AMD64, &[&bomb]).await?;
    let bomb_ref = format!("{}/bomb:v1", reg.addr());

    let disk = Tmpfs::mount(8 << 20)?;
    let tmp = tempfile::tempdir()?;
    let root = disk.path().join("images");
    let s = ImageStore::new(ImageStoreConfig {
        limits: DiskLimits {
            budget: None,
            min_free: Some(DiskSize::Bytes(128 << 10)),
        },
        ..config(&root, reg.addr(), amd64())
    })?;
    let img = s.ensure(&small.reference, PullPolicy::IfNotPresent).await?;
    s.set_in_use(&set(&[&small]));
    let container = tmp.path().join("containers/small");
    let _guard = Rootfs {
        store: &s,
        dir: container.clone(),
    };
    let rootfs = s.mount_rootfs(&img, &container)?;
    let filler = disk.path().join("filler");
    fill_leaving(&filler, 512 << 10)?;

    // 1 MiB of incompressible layer cannot fit in 512 KiB: refused before downloading.
    let err = s
        .ensure(&big.reference, PullPolicy::Always)
        .await
        .unwrap_err();
    assert!(matches!(err, ImageError::DiskBudget(_)), "{err:?}");
    assert!(err.to_string().starts_with("disk budget: "), "{err}");
    assert_eq!(reg.blob_gets(&big.layer.digest), 0);
    println!("{err}");

    // The bomb passes the check up front; while unpacking it is stopped at the free-disk
    // floor, before it fills the disk (issue 9.4: it used to run into ENOSPC).
    let err = s.ensure(&bomb_ref, PullPolicy::Always).await.unwrap_err();
    assert!(matches!(err, ImageError::DiskBudget(_)), "{err:?}");
    assert!(err.to_string().starts_with("disk budget: "), "{err}");
    assert!(err.to_string().contains("free on the disk"), "{err}");
    println!("{err}");

    // Nothing harmed, nothing half done left behind.
    assert_eq!(fs::read(rootfs.join("data/blob"))?, small.data);
    assert!(present(&s, &small).await);
    let layers = dir_names(&root.join("layers/sha256"))?;
    assert_eq!(
        layers,
        HashSet::from([small.layer.digest.trim_start_matches("sha256:").to_owned()]),
        "leftovers of the failed pulls"
    );

    // With space again, both pulls succeed.
    fs::remove_file(&filler)?;
    s.ensure(&big.reference, PullPolicy::IfNotPresent).await?;
    let img = s.ensure(&bomb_ref, PullPolicy::IfNotPresent).await?;
    let bomb_dir = tmp.path().join("containers/bomb");
    let _bomb_guard = Rootfs {
        store: &s,
        dir: bomb_dir.clone(),
    };
    let bomb_root = s.mount_rootfs(&img, &bomb_dir)?;
    assert_eq!(fs::metadata(bomb_root.join("zeros"))?.len(), 2 << 20);
    assert_eq!(fs::read(rootfs.join("data/blob"))?, small.data);
    Ok(())
}

/// Allocated bytes under `root` (st_blocks, hard links once), as the store measures.
fn allocated(root: &Path) -> u64 {
    let mut total = 0;
    let mut seen = HashSet::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let Ok(m) = fs::symlink_metadata(&p) else {
            continue;
        };
        if m.nlink() > 1 && !m.is_dir() && !seen.insert(m.ino()) {
            continue;
        }
        total += m.blocks() * 512;
        if m.is_dir() {
            if let Ok(rd) = fs::read_dir(&p) {
                stack.extend(rd.filter_map(|e| e.ok()).map(|e| e.path()));
            }
        }
    }
    total
}

/// Samples [`allocated`] of `root` until dropped; the peak is what it saw.
struct Sampler {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<u64>>,
}

impl Sampler {
    fn start(root: &Path) -> Sampler {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (root, flag) = (root.to_path_buf(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut peak = 0;
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                peak = peak.max(allocated(&root));
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
            peak
        });
        Sampler {
            stop,
            thread: Some(thread),
        }
    }

    fn peak(mut self) -> u64 {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread
            .take()
            .map_or(0, |t| t.join().unwrap_or(u64::MAX))
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Issue 9.4: a layer is metered while it unpacks. One that needs more than the headroom
/// gets it from unused images, collected mid-unpack (as the check after each layer always
/// did); a bomb with nothing left to collect is stopped at the budget, and the store,
/// sampled throughout, never exceeds the budget by more than one read buffer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unpack_is_metered_collects_unused_images_and_stops_at_the_budget() -> Result<()> {
    const MIB: u64 = 1 << 20;
    let reg = Registry::start()?;
    let client = push_client();
    let old = push_unique(&client, reg.addr(), "old", 4 << 20).await?;
    let zeros = vec![0u8; 12 << 20];
    let fits = layer(&[E::File("zeros", &zeros, 0o644)])?;
    push_image(&client, reg.addr(), "fits", Some("v1"), &AMD64, &[&fits]).await?;
    let zeros = vec![0u8; 96 << 20];
    let bomb = layer(&[E::File("zeros", &zeros, 0o644)])?;
    drop(zeros);
    push_image(&client, reg.addr(), "bomb", Some("v1"), &AMD64, &[&bomb]).await?;
    let (fits_ref, bomb_ref) = (
        format!("{}/fits:v1", reg.addr()),
        format!("{}/bomb:v1", reg.addr()),
    );

    let tmp = tempfile::tempdir()?;
    let root = tmp.path().join("store");
    let budget = 14 * MIB;
    let s = ImageStore::new(ImageStoreConfig {
        limits: DiskLimits {
            budget: Some(DiskSize::Bytes(budget)),
            min_free: Some(DiskSize::Bytes(0)),
        },
        ..config(&root, reg.addr(), amd64())
    })?;
    s.ensure(&old.reference, PullPolicy::IfNotPresent).await?;

    // 4 MiB stored + 12 MiB unpacked > 14 MiB: `old`, unused, makes room while `fits`
    // unpacks.
    let sampler = Sampler::start(&root);
    s.ensure(&fits_ref, PullPolicy::IfNotPresent).await?;
    let peak = sampler.peak();
    assert!(!present(&s, &old).await, "the unused image was kept");
    assert!(peak <= budget + (64 << 10), "peak {peak} over {budget}");

    // Everything in use: the 96 MiB bomb is stopped at the budget.
    s.set_in_use(&BTreeSet::from([fits_ref.clone()]));
    let sampler = Sampler::start(&root);
    let err = s
        .ensure(&bomb_ref, PullPolicy::IfNotPresent)
        .await
        .unwrap_err();
    let peak = sampler.peak();
    println!("{err}; store peak {peak} B of a {budget} B budget");
    assert!(matches!(err, ImageError::DiskBudget(_)), "{err:?}");
    assert!(err.to_string().contains("budget (stopped after"), "{err}");
    assert!(peak <= budget + (64 << 10), "peak {peak} over {budget}");
    let layers = dir_names(&root.join("layers/sha256"))?;
    assert_eq!(
        layers,
        HashSet::from([fits.digest.trim_start_matches("sha256:").to_owned()]),
        "leftovers of the stopped unpack"
    );
    assert!(s.disk_usage().await?.total() <= budget);
    let img = s.ensure(&fits_ref, PullPolicy::Never).await?;
    let container = tmp.path().join("containers/fits");
    let _guard = Rootfs {
        store: &s,
        dir: container.clone(),
    };
    let rootfs = s.mount_rootfs(&img, &container)?;
    assert_eq!(fs::metadata(rootfs.join("zeros"))?.len(), 12 << 20);
    Ok(())
}

/// Layers carry setuid-root files and device nodes, so the store is root's alone (0700);
/// containers still read their files through overlayfs, whatever user they run as.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_is_root_only_yet_rootfs_files_stay_readable_to_other_users() -> Result<()> {
    let reg = Registry::start()?;
    let client = push_client();
    let u = push_unique(&client, reg.addr(), "perm", 4 << 10).await?;
    let tmp = tempfile::tempdir()?;
    let root = tmp.path().join("store");
    let s = store(&root, &reg, amd64())?;
    let img = s.ensure(&u.reference, PullPolicy::IfNotPresent).await?;
    assert_eq!(fs::metadata(&root)?.mode() & 0o7777, 0o700);
    let container = tmp.path().join("containers/perm");
    let _guard = Rootfs {
        store: &s,
        dir: container.clone(),
    };
    let rootfs = s.mount_rootfs(&img, &container)?;
    let as_user = |path: &Path| {
        std::process::Command::new("setpriv")
            .args([
                "--reuid",
                "1000",
                "--regid",
                "1000",
                "--clear-groups",
                "cat",
            ])
            .arg(path)
            .output()
    };
    let through_overlay = as_user(&rootfs.join("name"))?;
    assert!(through_overlay.status.success(), "{through_overlay:?}");
    assert_eq!(through_overlay.stdout, b"perm");
    let direct = as_user(&layer_dir(&root, &u.layer.digest).join("name"))?;
    assert!(
        !direct.status.success(),
        "a host user read a layer: {direct:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_download_resumes_with_a_range_request() -> Result<()> {
    let reg = Registry::start()?;
    let client = push_client();
    let data = random_bytes(1 << 20);
    let big = plain_layer(&[E::File("big", &data, 0o644)])?;
    push_image(&client, reg.addr(), "resume", Some("v1"), &AMD64, &[&big]).await?;

    let proxy = CutProxy::start(reg.addr())?;
    let reference = format!("{}/resume:v1", proxy.addr());
    let needle = format!("/blobs/{} ", big.digest);
    let tmp = tempfile::tempdir()?;
    let root = tmp.path().join("store");
    let partial = root.join("blobs/sha256").join(format!(
        "{}.partial",
        big.digest.trim_start_matches("sha256:")
    ));

    // The link drops 300 KiB into the layer.
    proxy.watch(&needle, 300 << 10);
    let s = ImageStore::new(config(&root, proxy.addr(), amd64()))?;
    let err = s.ensure(&reference, PullPolicy::Always).await.unwrap_err();
    assert!(matches!(err, ImageError::Registry { .. }), "{err:?}");
    let have = fs::metadata(&partial)
        .context("the partial download was not kept")?
        .len();
    assert!(have > 0 && have < big.data.len() as u64, "{have}");
    drop(s);

    // A restarted agent on the same store asks only for the rest.
    proxy.watch(&needle, 0);
    let s = ImageStore::new(config(&root, proxy.addr(), amd64()))?;
    let img = s.ensure(&reference, PullPolicy::IfNotPresent).await?;
    let rest = big.data.len() as u64 - have;
    let stats = s.stats();
    assert_eq!(stats.blob_bytes_resumed, have, "{stats:?}");
    // The config arrived whole before the cut and is not fetched again.
    assert_eq!(stats.blob_bytes, rest, "{stats:?}");
    assert_eq!(stats.blob_fetches, 1, "{stats:?}");
    assert!(
        proxy.requests().contains(&format!("range: bytes={have}-")),
        "no range request: {}",
        proxy.requests()
    );
    let through = proxy.watched_bytes();
    assert!(
        through >= rest && through < rest + 4096,
        "{through} bytes through the link for {rest} missing"
    );
    assert!(!partial.exists());
    let container = tmp.path().join("containers/resume");
    let _guard = Rootfs {
        store: &s,
        dir: container.clone(),
    };
    let rootfs = s.mount_rootfs(&img, &container)?;
    assert_eq!(fs::read(rootfs.join("big"))?, data);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_partial_download_is_discarded_and_fetched_again() -> Result<()> {
    let reg = Registry::start()?;
    let client = push_client();
    let data = random_bytes(256 << 10);
    let l = plain_layer(&[E::File("f", &data, 0o644)])?;
    push_image(&client, reg.addr(), "trunc", Some("v1"), &AMD64, &[&l]).await?;
    let reference = format!("{}/trunc:v1", reg.addr());
    let tmp = tempfile::tempdir()?;
    let root = tmp.path().join("store");
    let s = store(&root, &reg, amd64())?;
    let hex = l.digest.trim_start_matches("sha256:");
    // Bytes that are not the blob's prefix (a torn write, a flipped bit).
    fs::write(
        root.join("blobs/sha256").join(format!("{hex}.partial")),
        random_bytes(100 << 10),
    )?;
    let img = s.ensure(&reference, PullPolicy::IfNotPresent).await?;
    assert_eq!(
        reg.blob_gets(&l.digest),
        2,
        "resumed, failed the digest, refetched"
    );
    assert_eq!(s.stats().blob_bytes_resumed, 100 << 10);
    let container = tmp.path().join("containers/trunc");
    let _guard = Rootfs {
        store: &s,
        dir: container.clone(),
    };
    let rootfs = s.mount_rootfs(&img, &container)?;
    assert_eq!(fs::read(rootfs.join("f"))?, data);

    // A partial longer than the blob cannot be a prefix of it either.
    let other = plain_layer(&[E::File("g", &data[..1000], 0o644)])?;
    push_image(&client, reg.addr(), "long", Some("v1"), &AMD64, &[&other]).await?;
    fs::write(
        root.join("blobs/sha256").join(format!(
            "{}.partial",
            other.digest.trim_start_matches("sha256:")
        )),
        random_bytes(other.data.len() + 10),
    )?;
    s.ensure(&format!("{}/long:v1", reg.addr()), PullPolicy::IfNotPresent)
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_basic_auth_over_tls_with_a_custom_ca() -> Result<()> {
    let (user, password) = ("baton", "s3cret");
    let reg = Registry::start_with(RegistryOpts {
        htpasswd: Some((user.into(), password.into())),
        tls: true,
    })?;
    let ca = fs::read(reg.ca_pem())?;
    install_ring_provider();
    let client = oci_client::Client::new(oci_client::client::ClientConfig {
        protocol: oci_client::client::ClientProtocol::Https,
        extra_root_certificates: vec![oci_client::client::Certificate {
            encoding: oci_client::client::CertificateEncoding::Pem,
            data: ca.clone(),
        }],
        ..Default::default()
    });
    client
        .store_auth_if_needed(
            reg.addr(),
            &oci_client::secrets::RegistryAuth::Basic(user.into(), password.into()),
        )
        .await;
    let base = base_layer()?;
    let pushed = push_image(&client, reg.addr(), "private", Some("v1"), &AMD64, &[&base]).await?;
    let reference = format!("{}/private:v1", reg.addr());
    let tmp = tempfile::tempdir()?;
    let https = |name: &str, registry_config: RegistryConfig| -> Result<ImageStore> {
        Ok(ImageStore::new(ImageStoreConfig {
            registry_config,
            ..ImageStoreConfig::new(tmp.path().join(name), amd64())
        })?)
    };

    // The node's config.json as `docker login` writes it, plus this registry's CA.
    fs::write(tmp.path().join("ca.pem"), &ca)?;
    let config_json = tmp.path().join("config.json");
    fs::write(
        &config_json,
        serde_json::json!({
            "auths": { reg.addr(): { "auth": "YmF0b246czNjcmV0" } },
            "caFiles": { reg.addr(): "ca.pem" },
        })
        .to_string(),
    )?;
    let s = https("ok", RegistryConfig::load(&config_json)?)?;
    let img = s.ensure(&reference, PullPolicy::Always).await?;
    assert_eq!(img.manifest_digest, pushed.digest);

    // A wrong password.
    let wrong = RegistryConfig::default()
        .with_credentials(
            reg.addr(),
            Credentials::Basic {
                username: user.into(),
                password: "nope".into(),
            },
        )
        .with_ca(reg.addr(), ca.clone());
    let s = https("wrong", wrong)?;
    let err = s.ensure(&reference, PullPolicy::Always).await.unwrap_err();
    assert!(matches!(err, ImageError::Unauthorized { .. }), "{err:?}");
    assert!(err.to_string().starts_with("unauthorized: "), "{err}");
    println!("{err}");
    assert!(dir_names(&tmp.path().join("wrong/refs"))?.is_empty());

    // No credentials on the node: unauthorized too, and it says so; a pod's own
    // credentials (imagePullSecret) pull it.
    let s = https(
        "anon",
        RegistryConfig::default().with_ca(reg.addr(), ca.clone()),
    )?;
    let err = s.ensure(&reference, PullPolicy::Always).await.unwrap_err();
    assert!(err.to_string().starts_with("unauthorized: "), "{err}");
    assert!(err.to_string().contains("no credentials"), "{err}");
    let creds = Credentials::Basic {
        username: user.into(),
        password: password.into(),
    };
    let img = s
        .ensure_with(&reference, PullPolicy::Always, Some(&creds))
        .await?;
    assert_eq!(img.manifest_digest, pushed.digest);

    // The right password but a CA nobody trusts.
    let s = https(
        "untrusted",
        RegistryConfig::default().with_credentials(reg.addr(), creds.clone()),
    )?;
    let err = s.ensure(&reference, PullPolicy::Always).await.unwrap_err();
    assert!(matches!(err, ImageError::Tls { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.starts_with(&format!("tls error with registry {}", reg.addr())),
        "{msg}"
    );
    assert!(msg.to_lowercase().contains("certificate"), "{msg}");
    println!("{err}");

    // The CA given node-wide (--registry-ca) works as well.
    let s = ImageStore::new(ImageStoreConfig {
        registry_ca: vec![ca.clone()],
        registry_config: RegistryConfig::default().with_credentials(reg.addr(), creds),
        ..ImageStoreConfig::new(tmp.path().join("node-ca"), amd64())
    })?;
    s.ensure(&reference, PullPolicy::Always).await?;
    Ok(())
}

/// Figures for docs/benchmarks.md: the example http-echo image built with images/build.sh,
/// pushed to a registry started here, pulled cold and warm; disk used with and without the
/// compressed layer blobs kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_echo_pull_figures_and_blob_deletion_saving() -> Result<()> {
    let reg = Registry::start()?;
    let tmp = tempfile::tempdir()?;
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = std::process::Command::new(repo.join("images/build.sh"))
        .arg("--out")
        .arg(tmp.path().join("oci"))
        .arg("--push")
        .arg(reg.addr())
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "build.sh: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reference = format!("{}/baton/http-echo:1", reg.addr());

    let mut usage = Vec::new();
    for keep in [true, false] {
        let root = tmp.path().join(if keep { "keep" } else { "drop" });
        let s = ImageStore::new(ImageStoreConfig {
            keep_layer_blobs: keep,
            ..config(&root, reg.addr(), Platform::host())
        })?;
        let t = std::time::Instant::now();
        let img = s.ensure(&reference, PullPolicy::Always).await?;
        let cold_time = t.elapsed();
        let cold = s.stats();
        let t = std::time::Instant::now();
        s.ensure(&reference, PullPolicy::Always).await?;
        let warm_time = t.elapsed();
        let warm = s.stats();
        let du = s.disk_usage().await?;
        let layer_bytes: u64 = img
            .layers
            .iter()
            .map(|d| {
                fs::metadata(reg.blob_data_path(d))
                    .map(|m| m.len())
                    .unwrap_or(0)
            })
            .sum();
        println!(
            "http-echo keep_layer_blobs={keep}: cold {} blob + {} manifest bytes in {:?}; warm {} blob + {} manifest bytes in {:?}; disk {} (blobs {}, layers {}, refs {}) vs {} compressed layer bytes in {} layers",
            cold.blob_bytes,
            cold.manifest_bytes,
            cold_time,
            warm.blob_bytes - cold.blob_bytes,
            warm.manifest_bytes - cold.manifest_bytes,
            warm_time,
            du.total(),
            du.blobs,
            du.layers,
            du.refs,
            layer_bytes,
            img.layers.len(),
        );
        assert_eq!(
            warm.blob_bytes, cold.blob_bytes,
            "warm pull downloaded blobs"
        );
        assert!(cold.blob_bytes >= layer_bytes);
        usage.push((du, layer_bytes));
    }
    let ((kept, layer_bytes), (dropped, _)) = (usage[0], usage[1]);
    assert_eq!(kept.layers, dropped.layers);
    // Dropping the blobs saves at least their bytes (allocation rounds up).
    assert!(
        kept.blobs - dropped.blobs >= layer_bytes,
        "{kept:?} vs {dropped:?}"
    );
    Ok(())
}
