use std::path::PathBuf;

use super::*;
use crate::migration::confinement::Confinement;
use crate::payload::{ContainerSpec, SourceHost};
use crate::testing::{api_path, info_answer, version_answer, FakeDocker, TempDir};

const ID: &str = "c0ffee0123456789";

fn manifest(mode: Mode) -> Manifest {
    Manifest {
        format: payload::FORMAT_VERSION,
        ferry_version: "test".into(),
        mode,
        created_unix: 1_700_000_000,
        source: SourceHost { arch: "x86_64".into(), ..Default::default() },
        container: ContainerSpec {
            name: "web".into(),
            image_id: "sha256:feed".into(),
            image_tags: vec!["ferry-commit/web:1".into()],
            config: Default::default(),
            host_config: Default::default(),
        },
        checkpoint_name: None,
        rootfs: Default::default(),
        entries: Vec::new(),
        snapshot: None,
        delta: None,
    }
}

/// A fake engine with a committed image; `start` answers the container's start.
fn engine_with(root: PathBuf, start: u16, experimental: bool) -> FakeDocker {
    engine_on_cgroup(root, start, experimental, "1")
}

fn engine_on_cgroup(root: PathBuf, start: u16, experimental: bool, cgroup_version: &'static str) -> FakeDocker {
    FakeDocker::start("restore", move |method, path| match (method, api_path(path)) {
        ("GET", "/version") => (200, version_answer("1.41")),
        ("GET", "/info") => {
            let mut info: serde_json::Value = serde_json::from_str(&info_answer(&root)).unwrap();
            info["ExperimentalBuild"] = experimental.into();
            info["CgroupVersion"] = cgroup_version.into();
            info["CgroupDriver"] = "systemd".into();
            // One engine per test: each assumes its own confinement.
            info["ID"] = root.display().to_string().into();
            (200, info.to_string())
        }
        ("POST", p) if p.starts_with("/images/load") => (200, r#"{"stream":"Loaded image"}"#.into()),
        ("GET", p) if p.starts_with("/images/") => (200, r#"{"Id":"sha256:feed","RepoTags":["ferry-commit/web:1"]}"#.into()),
        ("POST", p) if p.starts_with("/containers/create") => (201, format!(r#"{{"Id":"{ID}","Warnings":[]}}"#)),
        ("POST", p) if p.ends_with("/start") => (start, if start < 300 { String::new() } else { r#"{"message":"port is taken"}"#.into() }),
        ("GET", p) if p.starts_with(&format!("/containers/{ID}/json")) => (
            200,
            serde_json::json!({"Id": ID, "Name": "/web", "Image": "sha256:feed", "State": {"Status": "running", "Running": true},
                               "Config": {}, "HostConfig": {}})
            .to_string(),
        ),
        ("DELETE", _) => (204, String::new()),
        _ => (404, format!(r#"{{"message":"the fake has no {method} {path}"}}"#)),
    })
}

fn payload_dir(label: &str) -> TempDir {
    let dir = TempDir::new(label);
    std::fs::write(dir.path().join(payload::IMAGE_ENTRY), b"a docker save tar").unwrap();
    dir
}

#[test]
fn commit_mode_loads_the_image_creates_with_the_boards_caps_and_starts() {
    let dir = payload_dir("restore-commit");
    let fake = engine_with(dir.path().to_path_buf(), 204, true);
    let engine = fake.engine();
    let info = engine.info().unwrap();
    let board = Board::load("edge-128m").unwrap();
    let options = Options { name: Some("web2"), board: Some(&board), ..Options::default() };
    let restored = restore_unpacked(&engine, &info, dir.path(), &manifest(Mode::Commit), &options).unwrap();
    assert_eq!((restored.container.as_str(), restored.id.as_str(), restored.mode), ("web2", ID, "commit"));

    let seen = fake.seen.lock().unwrap();
    let lines: Vec<&str> = seen.iter().map(|(line, _)| line.as_str()).collect();
    let load = lines.iter().position(|l| l.contains("/images/load")).expect("the image was loaded");
    let create = lines.iter().position(|l| l.contains("/containers/create?name=web2")).expect("the container was created");
    let start = lines.iter().position(|l| l.ends_with(&format!("/containers/{ID}/start"))).expect("and started");
    assert!(load < create && create < start, "{lines:?}");
    let body: serde_json::Value = serde_json::from_slice(&seen[create].1).unwrap();
    assert_eq!(body["Image"], "sha256:feed");
    assert_eq!(body["HostConfig"]["Memory"], 128 << 20, "the board's cap, not the payload's");
    assert!(!lines.iter().any(|l| l.starts_with("DELETE")), "nothing removed on success: {lines:?}");
}

#[test]
fn a_failed_start_removes_the_created_container() {
    let dir = payload_dir("restore-fails");
    let fake = engine_with(dir.path().to_path_buf(), 500, true);
    let engine = fake.engine();
    let info = engine.info().unwrap();
    let error = restore_unpacked(&engine, &info, dir.path(), &manifest(Mode::Commit), &Options::default()).unwrap_err();
    assert!(error.message.contains("port is taken"), "{error}");
    assert!(fake.lines().iter().any(|l| l.starts_with(&format!("DELETE /v1.41/containers/{ID}?force=true"))), "{:?}", fake.lines());
}

#[test]
fn criu_payloads_need_an_experimental_engine_and_create_nothing_without_one() {
    let dir = payload_dir("restore-no-experimental");
    let fake = engine_with(dir.path().to_path_buf(), 204, false);
    let engine = fake.engine();
    let info = engine.info().unwrap();
    let error = restore_unpacked(&engine, &info, dir.path(), &manifest(Mode::Criu), &Options::default()).unwrap_err();
    assert_eq!(error.kind, Kind::Docker);
    assert!(error.message.contains("experimental"), "{error}");
    assert!(!fake.lines().iter().any(|l| l.contains("/containers/create")), "{:?}", fake.lines());
}

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/src/payload/images/testdata/docker-default");

/// A payload folder holding a real checkpoint (cgroup v1, Docker's
/// default profile), as unpack leaves it.
fn criu_payload_dir(label: &str) -> TempDir {
    let dir = TempDir::new(label);
    let images = dir.path().join(payload::CHECKPOINT_DIR);
    std::fs::create_dir_all(&images).unwrap();
    for file in std::fs::read_dir(FIXTURE).unwrap() {
        let file = file.unwrap();
        std::fs::copy(file.path(), images.join(file.file_name())).unwrap();
    }
    dir
}

#[test]
fn criu_restore_on_cgroup_v1_leaves_the_cgroup_image_alone() {
    let dir = criu_payload_dir("restore-cgroup-v1");
    let cgroup_img = dir.path().join(payload::CHECKPOINT_DIR).join("cgroup.img");
    let before = std::fs::read(&cgroup_img).unwrap();
    let fake = engine_on_cgroup(dir.path().to_path_buf(), 204, true, "1");
    let engine = fake.engine();
    let info = engine.info().unwrap();
    confinement::assume(&info, Confinement { seccomp: images::reference_of(Path::new(FIXTURE)), lsm_label: None });
    let prepared = prepare(&engine, &info, dir.path(), &manifest(Mode::Criu), &Options::default()).unwrap();
    assert_eq!(prepared.id, ID);
    assert_eq!(std::fs::read(&cgroup_img).unwrap(), before);
}

#[test]
fn criu_restore_puts_this_engines_filter_beneath_the_apps() {
    let dir = criu_payload_dir("restore-seccomp");
    let fake = engine_on_cgroup(dir.path().to_path_buf(), 204, true, "1");
    let engine = fake.engine();
    let info = engine.info().unwrap();
    let this_hosts = vec![0x06, 0, 0, 0, 1, 0, 0x05, 0x00];
    let seccomp = images::SeccompReference { programs: vec![this_hosts.clone()] };
    confinement::assume(&info, Confinement { seccomp, lsm_label: None });
    prepare(&engine, &info, dir.path(), &manifest(Mode::Criu), &Options::default()).unwrap();
    let images_dir = dir.path().join(payload::CHECKPOINT_DIR);
    assert_eq!(images::reference_of(&images_dir).programs, vec![this_hosts], "the fixture's filter is replaced");
}

#[test]
fn criu_restore_on_cgroup_v2_refuses_images_it_cannot_move_and_removes_the_container() {
    // The fixture was taken on cgroup v1 in the host's cgroup namespace:
    // no namespace root says which cgroup was the container's.
    let dir = criu_payload_dir("restore-cgroup-v2");
    let cgroup_img = dir.path().join(payload::CHECKPOINT_DIR).join("cgroup.img");
    let before = std::fs::read(&cgroup_img).unwrap();
    let fake = engine_on_cgroup(dir.path().to_path_buf(), 204, true, "2");
    let engine = fake.engine();
    let info = engine.info().unwrap();
    confinement::assume(&info, Confinement { seccomp: images::reference_of(Path::new(FIXTURE)), lsm_label: None });
    let error = prepare(&engine, &info, dir.path(), &manifest(Mode::Criu), &Options::default()).unwrap_err();
    assert_eq!(error.kind, Kind::BadPayload, "{error}");
    assert!(error.message.contains("cgroup.img") && error.message.contains("cannot be told"), "{error}");
    let lines = fake.lines();
    assert!(lines.iter().any(|l| l.starts_with(&format!("GET /v1.41/containers/{ID}/json"))), "{lines:?}");
    assert!(lines.iter().any(|l| l.starts_with(&format!("DELETE /v1.41/containers/{ID}"))), "{lines:?}");
    assert_eq!(std::fs::read(&cgroup_img).unwrap(), before);
}
