//! The engine client against a small fake Docker on a Unix socket: the error
//! paths a real dockerd rarely shows on demand.

use std::os::unix::net::UnixListener;
use std::path::PathBuf;

use super::*;
use crate::testing::{version_answer, FakeDocker, TempDir};

#[test]
fn negotiates_the_lower_api_version() {
    let fake = FakeDocker::start("newer", |_, path| match path {
        "/version" => (200, version_answer("1.45")),
        _ => (200, r#"{"Id":"sha256:abc"}"#.into()),
    });
    let engine = Engine::connect(&fake.socket).unwrap();
    assert_eq!(engine.api_version(), NEWEST_API);
    engine.inspect_image("busybox").unwrap();
    assert!(fake.seen.lock().unwrap().iter().any(|(line, _)| line == "GET /v1.41/images/busybox/json"));

    let fake = FakeDocker::start("older", |_, _| (200, version_answer("1.30")));
    assert_eq!(Engine::connect(&fake.socket).unwrap().api_version(), ApiVersion(1, 30));
}

#[test]
fn refuses_an_engine_without_the_checkpoint_api() {
    let fake = FakeDocker::start("ancient", |_, _| (200, version_answer("1.24")));
    let error = Engine::connect(&fake.socket).unwrap_err();
    assert!(matches!(error, Error::TooOld { .. }), "{error:?}");
    assert!(error.to_string().contains("1.25"), "{error}");
}

#[test]
fn surfaces_dockers_own_message_on_404_409_500() {
    let fake = FakeDocker::start("errors", |_, path| {
        if path == "/version" {
            (200, version_answer("1.41"))
        } else if path.contains("missing") {
            (404, r#"{"message":"No such container: missing"}"#.into())
        } else if path.contains("busy") {
            (409, r#"{"message":"Conflict. The container name \"/busy\" is already in use"}"#.into())
        } else {
            (500, "criu failed: type NOTIFY errno 0\n".into())
        }
    });
    let engine = Engine::connect(&fake.socket).unwrap();
    let missing = engine.inspect_container("missing").unwrap_err();
    assert_eq!(missing.status(), Some(404));
    assert!(is_not_found(&missing));
    assert_eq!(missing.message(), Some("No such container: missing"));
    let busy = engine.create_container("busy", &serde_json::json!({})).unwrap_err();
    assert_eq!(busy.status(), Some(409));
    assert!(busy.to_string().contains("already in use"), "{busy}");
    let failed = engine.checkpoint_create("web", "cp", None, true).unwrap_err();
    assert_eq!(failed.status(), Some(500));
    assert_eq!(failed.message(), Some("criu failed: type NOTIFY errno 0"), "non-JSON bodies are kept as text");
}

#[test]
fn a_missing_socket_is_unreachable_not_a_crash() {
    let dir = TempDir::new("nosocket");
    let error = Engine::connect(&dir.path().join("nothing.sock")).unwrap_err();
    assert!(matches!(error, Error::Unreachable { .. }), "{error:?}");
    assert!(error.to_string().contains("is dockerd running"), "{error}");
}

#[test]
fn a_socket_nobody_listens_on_is_unreachable() {
    let dir = TempDir::new("refused");
    let path = dir.path().join("stale.sock");
    drop(UnixListener::bind(&path).unwrap());
    let error = Engine::connect(&path).unwrap_err();
    assert!(matches!(error, Error::Unreachable { .. }), "{error:?}");
}

#[test]
fn streams_a_request_body_and_encodes_the_path() {
    let fake = FakeDocker::start("archive", |_, path| match path {
        "/version" => (200, version_answer("1.41")),
        _ => (200, String::new()),
    });
    let engine = Engine::connect(&fake.socket).unwrap();
    let payload = vec![7u8; 300_000];
    engine.archive_put("web", "/var/lib/my app", &mut payload.as_slice()).unwrap();
    let seen = fake.seen.lock().unwrap();
    let (line, body) = seen.last().unwrap();
    assert_eq!(line, "PUT /v1.41/containers/web/archive?path=%2Fvar%2Flib%2Fmy%20app");
    assert_eq!(body.len(), payload.len());
}

#[test]
fn reads_the_path_stat_header() {
    let stat = r#"{"name":"data","size":4096,"mode":2147484141,"mtime":"2024-01-01T00:00:00Z","linkTarget":""}"#;
    let header = BASE64_STANDARD.encode(stat);
    let response = ureq::http::Response::builder()
        .header("X-Docker-Container-Path-Stat", header)
        .body(Body::builder().data(""))
        .unwrap();
    let parsed = path_stat("HEAD /archive", &response).unwrap();
    assert!(parsed.is_dir());
}

#[test]
fn docker_host_must_be_a_unix_socket() {
    assert_eq!(socket_path(Some(Path::new("/x.sock"))).unwrap(), PathBuf::from("/x.sock"));
    assert!(ApiVersion::parse("1.41") > ApiVersion::parse("1.9"));
}
