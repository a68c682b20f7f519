//! The engine client against a small fake Docker on a Unix socket: the error
//! paths a real dockerd rarely shows on demand.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::thread;

use super::*;

/// Serves canned answers: `respond(method, path) -> (status, body)`. Records
/// each request line and body it saw.
struct FakeDocker {
    socket: PathBuf,
    seen: Arc<Mutex<Vec<(String, Vec<u8>)>>>,
    _dir: TempDir,
}

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn temp_dir(label: &str) -> TempDir {
    let dir = std::env::temp_dir().join(format!("ferry-test-{label}-{}-{:?}", std::process::id(), thread::current().id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    TempDir(dir)
}

impl FakeDocker {
    fn start(label: &str, respond: impl Fn(&str, &str) -> (u16, String) + Send + 'static) -> FakeDocker {
        let dir = temp_dir(label);
        let socket = dir.0.join("docker.sock");
        let listener = UnixListener::bind(&socket).unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let seen_by_server = seen.clone();
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut request_line = String::new();
                reader.read_line(&mut request_line).unwrap();
                let mut chunked = false;
                let mut length = 0usize;
                loop {
                    let mut line = String::new();
                    reader.read_line(&mut line).unwrap();
                    let lower = line.to_ascii_lowercase();
                    if lower.starts_with("transfer-encoding:") && lower.contains("chunked") {
                        chunked = true;
                    }
                    if let Some(value) = lower.strip_prefix("content-length:") {
                        length = value.trim().parse().unwrap();
                    }
                    if line == "\r\n" {
                        break;
                    }
                }
                let body = if chunked { read_chunked(&mut reader) } else {
                    let mut body = vec![0; length];
                    reader.read_exact(&mut body).unwrap();
                    body
                };
                let mut parts = request_line.split_whitespace();
                let method = parts.next().unwrap_or_default().to_string();
                let path = parts.next().unwrap_or_default().to_string();
                let (status, answer) = respond(&method, &path);
                seen_by_server.lock().unwrap().push((format!("{method} {path}"), body));
                let mut stream = stream;
                write!(
                    stream,
                    "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
                    answer.len()
                )
                .unwrap();
            }
        });
        FakeDocker { socket, seen, _dir: dir }
    }
}

fn read_chunked(reader: &mut impl BufRead) -> Vec<u8> {
    let mut body = Vec::new();
    loop {
        let mut size_line = String::new();
        reader.read_line(&mut size_line).unwrap();
        let size = usize::from_str_radix(size_line.trim(), 16).unwrap();
        let mut chunk = vec![0; size + 2];
        reader.read_exact(&mut chunk).unwrap();
        if size == 0 {
            return body;
        }
        body.extend_from_slice(&chunk[..size]);
    }
}

fn version_answer(api: &str) -> String {
    format!(r#"{{"Version":"20.10.24","ApiVersion":"{api}","MinAPIVersion":"1.12"}}"#)
}

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
    let dir = temp_dir("nosocket");
    let error = Engine::connect(&dir.0.join("nothing.sock")).unwrap_err();
    assert!(matches!(error, Error::Unreachable { .. }), "{error:?}");
    assert!(error.to_string().contains("is dockerd running"), "{error}");
}

#[test]
fn a_socket_nobody_listens_on_is_unreachable() {
    let dir = temp_dir("refused");
    let path = dir.0.join("stale.sock");
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
