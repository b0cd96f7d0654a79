use super::*;
use baton_proto::BString;

#[test]
fn the_record_survives_a_restart_and_a_bad_file_is_an_empty_record() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("record.bin");
    assert_eq!(PodRecord::load(&path), PodRecord::default());
    let rec = PodRecord {
        init_done: true,
        containers: vec![ContainerRecord {
            name: "web".into(),
            restarts: 3,
            last_termination: Some(Termination {
                exit_code: 137,
                reason: BString::new("OOMKilled").unwrap(),
                finished_at_ms: 1_700_000_000_000,
            }),
        }],
    };
    rec.store(&path).unwrap();
    assert_eq!(PodRecord::load(&path), rec);
    assert_eq!(PodRecord::load(&path).container("web").unwrap().restarts, 3);
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, ["record.bin"], "a temporary file left behind");
    std::fs::write(&path, b"\xff\xff\xff").unwrap();
    assert_eq!(PodRecord::load(&path), PodRecord::default());
}

/// Container `c` of image busybox, nothing else set.
fn busybox_container() -> ContainerSpec {
    ContainerSpec {
        name: BString::new("c").unwrap(),
        image: BString::new("busybox").unwrap(),
        image_pull_policy: baton_proto::PullPolicy::IfNotPresent,
        command: baton_proto::BVec::new(),
        args: baton_proto::BVec::new(),
        env: baton_proto::BVec::new(),
        working_dir: None,
        ports: baton_proto::BVec::new(),
        resources: Default::default(),
        volume_mounts: baton_proto::BVec::new(),
        liveness_probe: None,
        readiness_probe: None,
        startup_probe: None,
        security: Default::default(),
    }
}

#[test]
fn config_map_env_resolves_with_prefix_optional_and_missing() {
    let cms = crate::config_maps::DeviceConfigMaps::default();
    cms.insert(
        "game",
        &[("lives", b"3"), ("ui.file", b"x"), ("bad=key", b"no")],
    );
    let img = ImageConfig {
        reference: "busybox".into(),
        manifest_digest: String::new(),
        entrypoint: vec![],
        cmd: vec!["sh".into()],
        env: vec![],
        working_dir: String::new(),
        layers: vec![],
    };
    fn s<const N: usize>(v: &str) -> BString<N> {
        BString::new(v).unwrap()
    }
    let var = |name: &str, value: EnvValue| baton_proto::EnvVar {
        name: s(name),
        value,
    };
    let mut c = busybox_container();
    c.env = baton_proto::BVec::from_vec(vec![
        var(
            "CFG_",
            EnvValue::ConfigMapAll {
                config_map: s("game"),
                optional: false,
            },
        ),
        // A later entry wins over envFrom, as in Kubernetes.
        var("CFG_lives", EnvValue::Literal(s("9"))),
        var(
            "LIVES",
            EnvValue::ConfigMapKey {
                config_map: s("game"),
                key: s("lives"),
                optional: false,
            },
        ),
        var(
            "GONE",
            EnvValue::ConfigMapKey {
                config_map: s("game"),
                key: s("nope"),
                optional: true,
            },
        ),
        var(
            "",
            EnvValue::ConfigMapAll {
                config_map: s("absent"),
                optional: true,
            },
        ),
    ])
    .unwrap();
    let none = crate::volumes::NoSecrets;
    let env = environment(&c, &img, "p", &none, &cms).unwrap();
    for want in ["CFG_lives=9", "CFG_ui.file=x", "LIVES=3"] {
        assert!(env.contains(&want.to_owned()), "{want} in {env:?}");
    }
    assert!(!env
        .iter()
        .any(|e| e.starts_with("GONE=") || e.contains("bad")));
    // Not optional and missing: the pod waits with kubelet's reason.
    let err = environment(&c, &img, "p", &none, &none).unwrap_err();
    assert_eq!(
        err.to_string(),
        "CreateContainerConfigError: configmap \"game\" not found"
    );
    c.env = baton_proto::BVec::from_vec(vec![var(
        "X",
        EnvValue::ConfigMapKey {
            config_map: s("game"),
            key: s("nope"),
            optional: false,
        },
    )])
    .unwrap();
    assert_eq!(
        environment(&c, &img, "p", &none, &cms)
            .unwrap_err()
            .to_string(),
        "CreateContainerConfigError: couldn't find key nope in ConfigMap game"
    );
}

#[test]
fn secret_env_resolves_or_names_what_is_missing() {
    let secrets = crate::volumes::StaticSecrets::default();
    secrets.insert("db", &[("password", b"hunter2")]);
    let img = ImageConfig {
        reference: "busybox".into(),
        manifest_digest: String::new(),
        entrypoint: vec![],
        cmd: vec!["sh".into()],
        env: vec!["A=0".into()],
        working_dir: String::new(),
        layers: vec![],
    };
    let mut c = busybox_container();
    c.env = baton_proto::BVec::from_vec(vec![
        baton_proto::EnvVar {
            name: BString::new("A").unwrap(),
            value: EnvValue::Literal(BString::new("1").unwrap()),
        },
        baton_proto::EnvVar {
            name: BString::new("PW").unwrap(),
            value: EnvValue::SecretKey {
                secret: BString::new("db").unwrap(),
                key: BString::new("password").unwrap(),
            },
        },
    ])
    .unwrap();
    let env = environment(&c, &img, "p", &secrets, &crate::volumes::NoSecrets).unwrap();
    assert!(env.contains(&"PW=hunter2".to_owned()), "{env:?}");
    assert!(env.contains(&"A=1".to_owned()));
    let err = environment(
        &c,
        &img,
        "p",
        &crate::volumes::NoSecrets,
        &crate::volumes::NoSecrets,
    )
    .unwrap_err();
    assert_eq!(
        err,
        WorkerError::CreateContainerConfig("secret \"db\" not found".into())
    );
    assert_eq!(
        err.to_string(),
        "CreateContainerConfigError: secret \"db\" not found"
    );
}

/// The reason words and texts the status showed when they were built with `format!`.
#[test]
fn worker_errors_read_as_kubelet_reasons() {
    for (e, text) in [
        (WorkerError::ImagePull("x".into()), "ImagePullFailed: x"),
        (
            WorkerError::NetworkSetup("x".into()),
            "NetworkSetupFailed: x",
        ),
        (
            WorkerError::CreateContainerConfig("x".into()),
            "CreateContainerConfigError: x",
        ),
        (
            WorkerError::CreateContainer("x".into()),
            "CreateContainerError: x",
        ),
        (WorkerError::HostPort("x".into()), "HostPortFailed: x"),
        (WorkerError::Panicked("x".into()), "worker panicked: x"),
    ] {
        assert_eq!(e.to_string(), text);
    }
}

#[test]
fn container_errors_keep_their_causes() {
    let io = std::io::Error::other("no such file or directory");
    let e = crate::runtime::RuntimeError::Backend {
        op: crate::runtime::Operation::Create,
        id: ContainerId::new("u-echo").unwrap(),
        source: Box::new(crate::runtime::RuntimeError::Io {
            path: "/run/netns/x".into(),
            source: io,
        }),
    };
    assert_eq!(
        error_chain(&e),
        "failed to create container u-echo: i/o error on /run/netns/x: no such file or directory"
    );
    // A cause its parent already printed is not repeated.
    let e = crate::node::AgentError::DataDir {
        path: "/d".into(),
        source: std::io::Error::other("denied"),
    };
    assert_eq!(error_chain(&e), "cannot prepare data directory /d: denied");
}

#[tokio::test(start_paused = true)]
async fn a_failed_cleanup_is_retried_until_it_succeeds_or_the_last_attempt() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;
    // Fails twice, then succeeds: three attempts, none of them the last.
    let calls = Arc::new(Mutex::new(Vec::new()));
    let c = calls.clone();
    let n = AtomicUsize::new(0);
    let left = until_clean("u", move |last| {
        c.lock().unwrap().push(last);
        usize::from(n.fetch_add(1, Ordering::SeqCst) < 2)
    })
    .await;
    assert_eq!(left, 0);
    assert_eq!(*calls.lock().unwrap(), vec![false, false, false]);
    // Always fails: five attempts (after 1, 2, 4 and 8 s), the fifth told it is the last.
    let calls = Arc::new(Mutex::new(Vec::new()));
    let c = calls.clone();
    let before = tokio::time::Instant::now();
    let left = until_clean("u", move |last| {
        c.lock().unwrap().push(last);
        2
    })
    .await;
    assert_eq!(left, 2);
    assert_eq!(
        *calls.lock().unwrap(),
        vec![false, false, false, false, true]
    );
    assert_eq!(before.elapsed(), Duration::from_secs(15));
}

#[test]
fn a_pod_of_a_namespace_has_its_own_name_as_hostname() {
    assert_eq!(hostname("web-5d9f-abcde"), "web-5d9f-abcde");
    assert_eq!(hostname("team-a_web-5d9f-abcde"), "web-5d9f-abcde");
    assert_eq!(hostname(&"x".repeat(80)).len(), 63);
}
