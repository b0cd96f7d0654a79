use super::*;
use baton_proto::BString;

fn vol(name: &str, source: VolumeSource) -> Volume {
    Volume {
        name: BString::new(name).unwrap(),
        source,
    }
}

fn vm(name: &str, path: &str, ro: bool) -> VolumeMount {
    VolumeMount {
        name: BString::new(name).unwrap(),
        mount_path: BString::new(path).unwrap(),
        read_only: ro,
    }
}

#[test]
fn config_map_volumes_project_items_and_modes_and_follow_changes() {
    use std::os::unix::fs::MetadataExt;
    let tmp = tempfile::tempdir().unwrap();
    let pod = tmp.path().join("pod");
    let cms = crate::config_maps::DeviceConfigMaps::default();
    cms.insert("app", &[("a", b"1"), ("b", b"2")]);
    let cm = |name: &str, items: Vec<baton_proto::KeyToPath>, optional| {
        vol(
            name,
            VolumeSource::ConfigMap {
                name: BString::new("app").unwrap(),
                items: baton_proto::BVec::from_vec(items).unwrap(),
                default_mode: 0o640,
                optional,
            },
        )
    };
    let item = |key: &str, path: &str, mode| baton_proto::KeyToPath {
        key: BString::new(key).unwrap(),
        path: BString::new(path).unwrap(),
        mode,
    };
    let all = cm("all", vec![], false);
    let some = cm("some", vec![item("b", "sub/bee", Some(0o600))], false);
    let vols = [all, some];
    let pv = prepare(&pod, &vols, &Readers::default(), &NoSecrets, &cms).unwrap();
    let all_dir = pv.path("all").unwrap().to_owned();
    assert_eq!(fs::read(all_dir.join("a")).unwrap(), b"1");
    let mode = |p: &Path| fs::metadata(p).unwrap().mode() & 0o777;
    assert_eq!(mode(&all_dir.join("b")), 0o640, "defaultMode");
    let bee = pv.path("some").unwrap().join("sub/bee");
    assert_eq!(fs::read(&bee).unwrap(), b"2");
    assert_eq!(mode(&bee), 0o600, "the item's mode");
    assert!(!pv.path("some").unwrap().join("a").exists(), "only items");
    let m = mounts(&pv, &[vm("all", "/etc/cfg", false)]).unwrap();
    assert!(m[0].read_only, "configMap volumes are read-only");

    // A new version: rewritten in place; unchanged content is left alone.
    cms.insert("app", &[("a", b"new"), ("b", b"2")]);
    assert_eq!(refresh_config_maps(&pod, &vols, &cms).unwrap(), 1);
    assert_eq!(fs::read(all_dir.join("a")).unwrap(), b"new");
    assert_eq!(refresh_config_maps(&pod, &vols, &cms).unwrap(), 0);

    // Missing: an error naming it, unless optional; a missing item key likewise.
    let err = prepare(
        &pod,
        &vols[..1],
        &Readers::default(),
        &NoSecrets,
        &NoSecrets,
    );
    assert_eq!(err.unwrap_err().to_string(), "configmap \"app\" not found");
    let opt = [cm("opt", vec![item("zzz", "z", None)], true)];
    let pv = prepare(&pod, &opt, &Readers::default(), &NoSecrets, &NoSecrets).unwrap();
    assert!(pv.path("opt").unwrap().join("..data").exists());
    let strict = [cm("strict", vec![item("zzz", "z", None)], false)];
    let err = prepare(&pod, &strict, &Readers::default(), &NoSecrets, &cms).unwrap_err();
    assert!(
        err.to_string().contains("non-existent config key: zzz"),
        "{err}"
    );
}

/// Unmounts whatever a test mounted, even if it fails half-way.
struct Cleanup(PathBuf);
impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = teardown(&self.0);
    }
}

#[test]
fn secrets_resolve_for_env_with_clear_errors() {
    let s = StaticSecrets::default();
    s.insert("db", &[("password", b"hunter2"), ("bin", b"a\0b")]);
    assert_eq!(secret_env(&s, "db", "password").unwrap(), "hunter2");
    let e = secret_env(&s, "nope", "x").unwrap_err().to_string();
    assert_eq!(e, "secret \"nope\" not found");
    assert!(matches!(
        secret_env(&s, "db", "user"),
        Err(VolumeError::KeyNotFound { .. })
    ));
    assert!(matches!(
        secret_env(&s, "db", "bin"),
        Err(VolumeError::NotText { .. })
    ));
    assert!(NoSecrets.get("db").is_none());
}

#[test]
fn empty_dir_secret_and_host_path_are_prepared_and_torn_down() {
    let dir = tempfile::tempdir().unwrap();
    let pod = dir.path().join("pod");
    let _c = Cleanup(pod.clone());
    let s = StaticSecrets::default();
    s.insert("db", &[("password", b"hunter2")]);
    let vols = vec![
        vol(
            "scratch",
            VolumeSource::EmptyDir {
                size_limit_bytes: None,
            },
        ),
        vol(
            "small",
            VolumeSource::EmptyDir {
                size_limit_bytes: Some(1 << 20),
            },
        ),
        vol(
            "creds",
            VolumeSource::Secret {
                secret_name: BString::new("db").unwrap(),
            },
        ),
        vol(
            "host",
            VolumeSource::HostPath {
                path: BString::new(dir.path().to_str().unwrap()).unwrap(),
            },
        ),
    ];
    let mut readers = Readers::default();
    readers.add("creds", 1000, 2000);
    let pv = prepare(&pod, &vols, &readers, &s, &NoSecrets).unwrap();
    let creds = pv.path("creds").unwrap().to_owned();
    assert_eq!(fs::read(creds.join("password")).unwrap(), b"hunter2");
    // Its one reader's, and nobody else's.
    use std::os::unix::fs::MetadataExt;
    let file = fs::metadata(creds.join("password")).unwrap();
    assert_eq!(
        (file.mode() & 0o7777, file.uid(), file.gid()),
        (0o400, 1000, 2000)
    );
    let tmpfs = fs::metadata(&creds).unwrap();
    assert_eq!((tmpfs.mode() & 0o7777, tmpfs.uid()), (0o700, 1000));
    // Read-only: even root cannot add a file.
    assert!(fs::write(creds.join("x"), b"1").is_err());
    let small = pv.path("small").unwrap().to_owned();
    let mounted = mount_points_under(&volumes_dir(&pod));
    assert!(
        mounted.contains(&small) && mounted.contains(&creds),
        "{mounted:?}"
    );
    // The size limit holds.
    assert!(fs::write(small.join("big"), vec![0u8; 2 << 20]).is_err());
    fs::write(pv.path("scratch").unwrap().join("keep"), b"1").unwrap();
    // Idempotent: a second prepare (adoption) keeps content and mounts once.
    let again = prepare(&pod, &vols, &readers, &s, &NoSecrets).unwrap();
    assert_eq!(again, pv);
    assert!(pv.path("scratch").unwrap().join("keep").exists());
    assert_eq!(mount_points_under(&volumes_dir(&pod)).len(), 2);

    let m = mounts(
        &pv,
        &[
            vm("scratch", "/data", false),
            vm("creds", "/etc/creds", false),
            vm("host", "/h", true),
        ],
    )
    .unwrap();
    assert_eq!(
        m.iter()
            .map(|m| (m.destination.as_str(), m.read_only))
            .collect::<Vec<_>>(),
        [("/data", false), ("/etc/creds", true), ("/h", true)]
    );
    assert!(matches!(
        mounts(&pv, &[vm("other", "/x", false)]),
        Err(VolumeError::UnknownVolume(_))
    ));

    teardown(&pod).unwrap();
    assert!(mount_points_under(&volumes_dir(&pod)).is_empty());
    fs::remove_dir_all(&pod).unwrap();
}

#[test]
fn missing_secret_or_host_path_and_bad_names_fail_before_mounting() {
    let dir = tempfile::tempdir().unwrap();
    let pod = dir.path().join("pod");
    let _c = Cleanup(pod.clone());
    let cases = [
        (
            vol(
                "s",
                VolumeSource::Secret {
                    secret_name: BString::new("db").unwrap(),
                },
            ),
            "secret \"db\" not found",
        ),
        (
            vol(
                "h",
                VolumeSource::HostPath {
                    path: BString::new("/does/not/exist").unwrap(),
                },
            ),
            "hostPath /does/not/exist does not exist",
        ),
        (
            vol(
                "..",
                VolumeSource::EmptyDir {
                    size_limit_bytes: None,
                },
            ),
            "invalid name \"..\" for a volume or secret key",
        ),
    ];
    for (v, want) in cases {
        assert_eq!(
            prepare(&pod, &[v], &Readers::default(), &NoSecrets, &NoSecrets)
                .unwrap_err()
                .to_string(),
            want
        );
    }
    assert!(mount_points_under(&volumes_dir(&pod)).is_empty());
}

#[test]
fn a_secret_is_readable_by_the_containers_that_mount_it_only() {
    let access = |users: &[(u32, u32)]| {
        let mut r = Readers::default();
        for (u, g) in users {
            r.add("v", *u, *g);
        }
        let a = r.secret_access("v");
        (a.uid, a.gid, a.dir_mode, a.file_mode)
    };
    assert_eq!(access(&[]), (0, 0, 0o700, 0o400));
    assert_eq!(access(&[(0, 0)]), (0, 0, 0o700, 0o400));
    assert_eq!(access(&[(1000, 0)]), (1000, 0, 0o700, 0o400));
    assert_eq!(access(&[(1000, 5), (1000, 6)]), (1000, 0, 0o700, 0o400));
    assert_eq!(access(&[(1000, 5), (1001, 5)]), (0, 5, 0o750, 0o440));
    assert_eq!(access(&[(1000, 5), (0, 0)]), (0, 0, 0o755, 0o444));
}

/// An agent upgraded from one that made secret volumes 0755 with 0644 files closes them
/// when it adopts the pod.
#[test]
fn an_old_open_secret_volume_is_closed_on_adoption() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let pod = dir.path().join("pod");
    let _c = Cleanup(pod.clone());
    let creds = volumes_dir(&pod).join("creds");
    fs::create_dir_all(&creds).unwrap();
    mount_tmpfs(&creds, 1 << 20, "0755").unwrap();
    fs::write(creds.join("password"), b"hunter2").unwrap();
    fs::set_permissions(creds.join("password"), fs::Permissions::from_mode(0o644)).unwrap();
    remount(&creds, MsFlags::MS_RDONLY).unwrap();
    let s = StaticSecrets::default();
    s.insert("db", &[("password", b"hunter2")]);
    let vols = [vol(
        "creds",
        VolumeSource::Secret {
            secret_name: BString::new("db").unwrap(),
        },
    )];
    let mut readers = Readers::default();
    readers.add("creds", 1000, 1000);
    prepare(&pod, &vols, &readers, &s, &NoSecrets).unwrap();
    let file = fs::metadata(creds.join("password")).unwrap();
    assert_eq!((file.mode() & 0o7777, file.uid()), (0o400, 1000));
    assert_eq!(fs::metadata(&creds).unwrap().mode() & 0o7777, 0o700);
    assert!(fs::write(creds.join("x"), b"1").is_err(), "left writable");
    assert_eq!(mount_points_under(&volumes_dir(&pod)).len(), 1);
}

#[test]
fn mountinfo_escapes() {
    assert_eq!(unescape_mountinfo("/a\\040b"), "/a b");
    assert_eq!(unescape_mountinfo("/plain"), "/plain");
    assert_eq!(unescape_mountinfo("/x\\"), "/x\\");
}
