use super::*;
use crate::image::ImageStoreConfig;
use baton_proto::PullPolicy;
use serde_json::json;

/// A registry address nothing listens on: a preloaded image must never need it.
const NAME: &str = "127.0.0.1:9/test/app:1";

fn put(dir: &Path, bytes: &[u8]) -> (String, usize) {
    let d = sha256_bytes(bytes);
    let blobs = dir.join("blobs/sha256");
    fs::create_dir_all(&blobs).unwrap();
    fs::write(blobs.join(digest_hex(&d).unwrap()), bytes).unwrap();
    (d, bytes.len())
}

/// An OCI layout with a linux/amd64 + linux/arm64 index named `name`; the arm64 image's
/// layer is left out (only the node's platform may be read).
fn layout(dir: &Path, name: &str, content: &str) {
    layout_with(dir, name, "hello.txt", content)
}

/// [`layout`] with the layer's one file named `file`.
fn layout_with(dir: &Path, name: &str, file: &str, content: &str) {
    let mut layer = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_size(content.len() as u64);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_700_000_000);
    h.set_cksum();
    layer.append_data(&mut h, file, content.as_bytes()).unwrap();
    let layer = layer.into_inner().unwrap();
    let (ld, ls) = put(dir, &layer);
    let mut entries = Vec::new();
    for arch in ["amd64", "arm64"] {
        let config = json!({"architecture": arch, "os": "linux",
            "config": {"Cmd": ["cat", "/hello.txt"]},
            "rootfs": {"type": "layers", "diff_ids": [ld]}});
        let (cd, cs) = put(dir, &serde_json::to_vec(&config).unwrap());
        let (layer_d, layer_s) = if arch == "amd64" {
            (ld.clone(), ls)
        } else {
            (sha256_bytes(b"absent"), 6)
        };
        let manifest = json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": cs},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer_d, "size": layer_s}]});
        let (md, ms) = put(dir, &serde_json::to_vec(&manifest).unwrap());
        entries.push(json!({"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md, "size": ms,
            "platform": {"os": "linux", "architecture": arch}}));
    }
    let index = json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": entries});
    let (id, is) = put(dir, &serde_json::to_vec(&index).unwrap());
    let top = json!({"schemaVersion": 2, "manifests": [
        {"mediaType": "application/vnd.oci.image.index.v1+json", "digest": id, "size": is,
         "annotations": {"org.opencontainers.image.ref.name": name}},
        {"mediaType": "application/vnd.oci.image.index.v1+json", "digest": id, "size": is,
         "annotations": {"org.opencontainers.image.ref.name": "only-a-tag"}}]});
    fs::write(dir.join("index.json"), serde_json::to_vec(&top).unwrap()).unwrap();
    fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
}

/// `tar -C dir -cf out .`, with `./` member names as GNU tar writes them.
fn tar_dir(dir: &Path, out: &Path) {
    let mut b = tar::Builder::new(fs::File::create(out).unwrap());
    b.append_dir_all(".", dir).unwrap();
    b.into_inner().unwrap().sync_all().unwrap();
}

fn store(root: &Path) -> ImageStore {
    ImageStore::new(ImageStoreConfig::new(
        root,
        Platform::new("linux", "amd64", None),
    ))
    .unwrap()
}

#[tokio::test]
async fn preloaded_archives_and_layouts_run_without_a_registry() {
    let tmp = tempfile::tempdir().unwrap();
    let preload = tmp.path().join("preload");
    fs::create_dir_all(&preload).unwrap();
    let src = tmp.path().join("src");
    layout(&src, NAME, "from the archive");
    tar_dir(&src, &preload.join("app.tar"));
    // A layout directory works as well.
    layout(
        &preload.join("other"),
        "registry.lan/other:2",
        "from a directory",
    );
    // A corrupt archive fails alone.
    let bad = tmp.path().join("bad");
    layout(&bad, "registry.lan/bad:1", "corrupt me");
    let layer = fs::read_dir(bad.join("blobs/sha256"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| fs::read(p).unwrap().windows(10).any(|w| w == b"corrupt me"))
        .unwrap();
    let mut bytes = fs::read(&layer).unwrap();
    let at = bytes.windows(10).position(|w| w == b"corrupt me").unwrap();
    bytes[at] = b'C';
    fs::write(&layer, bytes).unwrap();
    tar_dir(&bad, &preload.join("bad.tar"));
    fs::write(preload.join("notes.txt"), "ignored").unwrap();

    let s = store(&tmp.path().join("store"));
    let report = s.preload_dir(&preload).await.unwrap();
    assert_eq!(
        report.imported,
        [NAME, "registry.lan/other:2"],
        "{report:?}"
    );
    assert_eq!(report.failed.len(), 1, "{report:?}");
    assert!(report.failed[0].0.ends_with("bad.tar"));
    assert!(report.failed[0].1.contains("digest mismatch"), "{report:?}");

    for (name, content) in [
        (NAME, "from the archive"),
        ("registry.lan/other:2", "from a directory"),
    ] {
        let cfg = s.ensure(name, PullPolicy::Never).await.unwrap();
        assert_eq!(cfg.cmd, ["cat", "/hello.txt"]);
        let dir = s.inner.layout.layer(digest_hex(&cfg.layers[0]).unwrap());
        assert_eq!(fs::read_to_string(dir.join("hello.txt")).unwrap(), content);
    }
    assert!(matches!(
        s.ensure("registry.lan/bad:1", PullPolicy::Never).await,
        Err(ImageError::NotPresent(_))
    ));
    assert_eq!(s.stats().blob_fetches + s.stats().manifest_fetches, 0);

    // A second preload finds everything in place, and a new store process sees it too.
    assert_eq!(s.preload(&preload.join("app.tar")).await.unwrap(), [NAME]);
    drop(s);
    let again = store(&tmp.path().join("store"));
    again.ensure(NAME, PullPolicy::IfNotPresent).await.unwrap();
}

#[tokio::test]
async fn an_image_for_another_platform_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    layout(&tmp.path().join("l"), NAME, "x");
    let s = ImageStore::new(ImageStoreConfig::new(
        tmp.path().join("store"),
        Platform::new("linux", "riscv64", None),
    ))
    .unwrap();
    let e = s.preload(&tmp.path().join("l")).await.unwrap_err();
    assert!(matches!(e, ImageError::NoMatchingPlatform { .. }), "{e}");
}

/// A layer whose unpack panics is quarantined: refused with the panic's reason from then on,
/// by this store and by the next agent process, instead of being unpacked again (under the
/// device build's abort on panic, again would mean a crash at every start).
#[tokio::test]
async fn a_layer_that_panicked_the_unpack_is_quarantined() {
    crate::crash::install_hook();
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    layout_with(&src, NAME, crate::image::unpack::PANIC_IN_TESTS, "boom");
    let archive = tmp.path().join("app.tar");
    tar_dir(&src, &archive);
    let root = tmp.path().join("store");

    let s = store(&root);
    let first = s.preload(&archive).await.unwrap_err().to_string();
    assert!(first.contains("image store task failed"), "{first}");
    drop(s);
    let again = store(&root).preload(&archive).await.unwrap_err();
    let ImageError::InvalidLayer { digest, reason } = &again else {
        panic!("{again:?}");
    };
    assert!(
        reason.starts_with(&format!(
            "quarantined: unpacking layer {digest} panicked: a test layer's stand-in"
        )) && reason.contains("remove "),
        "{reason}"
    );
    // Nothing of it was left in the store.
    let layer = root.join("layers/sha256").join(digest_hex(digest).unwrap());
    assert!(!layer.exists());
}
