use super::*;

pub(crate) fn sample() -> Manifest {
    Manifest {
        format: FORMAT_VERSION,
        ferry_version: "0.1.0".into(),
        mode: Mode::Criu,
        created_unix: 1_700_000_000,
        source: SourceHost { arch: "x86_64".into(), ..Default::default() },
        container: ContainerSpec {
            name: "web".into(),
            image_id: format!("sha256:{}", "a".repeat(64)),
            image_tags: vec!["web:latest".into()],
            config: RecreateConfig::default(),
            host_config: HostLimits::default(),
        },
        checkpoint_name: Some("ferry".into()),
        rootfs: RootfsChanges::default(),
        entries: vec![Entry::new("checkpoint/core-1.img".into(), 3, "0".repeat(64))],
        snapshot: None,
        delta: None,
    }
}

#[test]
fn sample_manifest_is_valid_and_round_trips() {
    let manifest = sample();
    manifest.validate().unwrap();
    let text = serde_json::to_string(&manifest).unwrap();
    let back: Manifest = serde_json::from_str(&text).unwrap();
    assert_eq!(back.entries, manifest.entries);
    assert_eq!(back.container.config, manifest.container.config);
}

#[test]
fn newer_format_is_refused_by_number() {
    let mut manifest = sample();
    manifest.format = FORMAT_VERSION + 1;
    let error = manifest.validate().unwrap_err().to_string();
    assert!(error.contains(&format!("format {}", FORMAT_VERSION + 1)), "{error}");
}

#[test]
fn entry_paths_that_escape_are_refused() {
    for path in ["../etc/passwd", "/etc/passwd", "checkpoint/../../x", "checkpoint/./a", "other/x", "checkpoint"] {
        assert!(check_entry_path(path).is_err(), "{path} accepted");
    }
    for path in ["manifest.json", "checkpoint/pages-1.img", "rootfs/0.tar", "image.tar"] {
        check_entry_path(path).unwrap();
    }
}

#[test]
fn config_reads_only_allowed_fields_from_docker_inspect() {
    let inspect = serde_json::json!({
        "Cmd": ["/counter", "16"], "Env": ["A=1"], "Image": "x", "Volumes": {"/data": {}},
        "Hostname": "h", "Tty": false, "Labels": {"k": "v"}
    });
    let config: RecreateConfig = serde_json::from_value(inspect).unwrap();
    let back = serde_json::to_value(&config).unwrap();
    assert!(back.get("Volumes").is_none() && back.get("Image").is_none());
    assert_eq!(back["Cmd"][1], "16");
    let host: HostLimits = serde_json::from_value(serde_json::json!({
        "Memory": 134217728, "Privileged": true, "Binds": ["/:/host"], "CapAdd": ["SYS_ADMIN"]
    }))
    .unwrap();
    let back = serde_json::to_value(&host).unwrap();
    assert_eq!(back["Memory"], 134217728);
    assert!(back.get("Privileged").is_none() && back.get("Binds").is_none() && back.get("CapAdd").is_none());
}

#[test]
fn rootfs_target_must_be_absolute_and_plain() {
    let mut manifest = sample();
    manifest.entries.push(Entry::new("rootfs/0.tar".into(), 1, "1".repeat(64)));
    manifest.rootfs.archives.push(RootfsArchive { entry: "rootfs/0.tar".into(), target_dir: "/var/../etc".into() });
    assert!(manifest.validate().is_err());
    manifest.rootfs.archives[0].target_dir = "/var/lib".into();
    manifest.validate().unwrap();
}
