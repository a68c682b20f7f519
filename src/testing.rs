//! Test helpers shared by the unit tests of every layer: a scratch folder and
//! a fake Docker Engine on a Unix socket, so that restore, commit mode and the
//! agent's handlers can be tested without a real engine.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread;

use crate::engine::Engine;

/// Pseudo-random bytes (xorshift): incompressible like real memory pages.
pub(crate) fn noise(len: usize, mut seed: u64) -> Vec<u8> {
    seed |= 1;
    (0..len)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed as u8
        })
        .collect()
}

/// A folder for one test, removed when dropped.
pub(crate) struct TempDir(PathBuf);

impl TempDir {
    pub(crate) fn new(label: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("ferry-test-{label}-{}-{:?}", std::process::id(), thread::current().id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    pub(crate) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Each request the fake saw: "METHOD /path?query" and its body.
pub(crate) type Seen = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

/// Serves canned answers: `respond(method, path) -> (status, body)`, where
/// `path` is as sent (with the `/v1.41` prefix; see [`api_path`]). Records
/// each request line and body it saw. One request per connection.
pub(crate) struct FakeDocker {
    pub(crate) socket: PathBuf,
    pub(crate) seen: Seen,
    _dir: TempDir,
}

impl FakeDocker {
    pub(crate) fn start(label: &str, respond: impl Fn(&str, &str) -> (u16, String) + Send + 'static) -> FakeDocker {
        let dir = TempDir::new(label);
        let socket = dir.path().join("docker.sock");
        let listener = UnixListener::bind(&socket).unwrap();
        let seen: Seen = Arc::default();
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
                let body = if chunked {
                    read_chunked(&mut reader)
                } else {
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

    /// An engine client connected to this fake (it must answer /version).
    pub(crate) fn engine(&self) -> Engine {
        Engine::connect(&self.socket).unwrap()
    }

    /// The request lines seen so far.
    pub(crate) fn lines(&self) -> Vec<String> {
        self.seen.lock().unwrap().iter().map(|(line, _)| line.clone()).collect()
    }
}

/// A request path without its API version prefix: `/v1.41/info` → `/info`.
pub(crate) fn api_path(path: &str) -> &str {
    match path.strip_prefix("/v1.") {
        Some(rest) => rest.find('/').map_or(path, |slash| &rest[slash..]),
        None => path,
    }
}

pub(crate) fn version_answer(api: &str) -> String {
    format!(r#"{{"Version":"20.10.24","ApiVersion":"{api}","MinAPIVersion":"1.12"}}"#)
}

/// `GET /info` of an experimental x86_64 engine whose data root is `root`.
pub(crate) fn info_answer(root: &Path) -> String {
    serde_json::json!({
        "Architecture": "x86_64", "KernelVersion": "6.1.0", "ServerVersion": "20.10.24",
        "ExperimentalBuild": true, "DockerRootDir": root, "Driver": "overlay2",
        "OperatingSystem": "Debian", "NCPU": 2, "MemTotal": 1_u64 << 30,
    })
    .to_string()
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
