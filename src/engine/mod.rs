//! The Docker Engine API over its Unix socket: typed calls, nothing about migration.
//!
//! Every body travels as a stream in both directions: archives, checkpoints and
//! images are handed over as `impl Read`, never collected in memory.

mod unix;

use std::fmt;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use base64::prelude::BASE64_STANDARD;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use ureq::http::{Response, StatusCode};
use ureq::{Agent, Body, SendBody};

use unix::{NoResolver, UnixConnector};

/// The newest API version ferry was written against (Docker 20.10).
pub(crate) const NEWEST_API: ApiVersion = ApiVersion(1, 41);
/// The checkpoint endpoints appeared in API 1.25.
pub(crate) const OLDEST_API: ApiVersion = ApiVersion(1, 25);

/// Where to find the engine when neither `--docker-socket` nor `DOCKER_HOST` say.
pub(crate) const DEFAULT_SOCKET: &str = "/var/run/docker.sock";

/// Docker error bodies are one short JSON object; anything longer is cut.
const ERROR_BODY_LIMIT: u64 = 64 * 1024;

#[derive(Debug)]
pub(crate) enum Error {
    /// The socket could not be reached at all.
    Unreachable { socket: PathBuf, source: io::Error },
    /// The engine speaks an API older than ferry can use.
    TooOld { version: String },
    /// The engine answered with a non-2xx status.
    Api { request: String, status: u16, message: String },
    /// The connection broke or a stream failed mid-way.
    Io { request: String, source: io::Error },
    /// The engine answered something that is not what the API documents.
    Protocol { request: String, detail: String },
}

impl Error {
    pub(crate) fn status(&self) -> Option<u16> {
        match self {
            Error::Api { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// Docker's own message for a non-2xx answer, e.g. "No such container: web".
    #[cfg(test)]
    pub(crate) fn message(&self) -> Option<&str> {
        match self {
            Error::Api { message, .. } => Some(message),
            _ => None,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Unreachable { socket, source } => write!(
                f,
                "cannot reach the Docker engine at {}: {source} — is dockerd running? \
                 (set --docker-socket or DOCKER_HOST=unix:///path)",
                socket.display()
            ),
            Error::TooOld { version } => write!(
                f,
                "the Docker engine speaks API {version}, but checkpoints need API {OLDEST_API} \
                 or newer — upgrade Docker"
            ),
            Error::Api { request, status, message } => {
                write!(f, "Docker refused {request} (HTTP {status}): {message}")
            }
            Error::Io { request, source } => write!(f, "{request}: connection to Docker failed: {source}"),
            Error::Protocol { request, detail } => {
                write!(f, "{request}: unexpected answer from Docker: {detail}")
            }
        }
    }
}

impl std::error::Error for Error {}

pub(crate) type Result<T> = std::result::Result<T, Error>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct ApiVersion(pub u32, pub u32);

impl ApiVersion {
    pub(crate) fn parse(text: &str) -> Option<ApiVersion> {
        let (major, minor) = text.trim().split_once('.')?;
        Some(ApiVersion(major.parse().ok()?, minor.parse().ok()?))
    }
}

impl fmt::Display for ApiVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.0, self.1)
    }
}

/// Finds the engine's socket: an explicit path wins, then `DOCKER_HOST`, then the default.
pub(crate) fn socket_path(explicit: Option<&Path>) -> std::result::Result<PathBuf, String> {
    if let Some(path) = explicit {
        return Ok(path.to_path_buf());
    }
    match std::env::var("DOCKER_HOST") {
        Ok(host) if !host.is_empty() => match host.strip_prefix("unix://") {
            Some(path) => Ok(PathBuf::from(path)),
            None => Err(format!(
                "DOCKER_HOST={host} is not a Unix socket: ferry talks to the local engine only \
                 (use unix:///var/run/docker.sock or --docker-socket)"
            )),
        },
        _ => Ok(PathBuf::from(DEFAULT_SOCKET)),
    }
}

/// `GET /version`, the subset ferry reads.
#[derive(Debug, Deserialize, Clone)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct Version {
    pub version: String,
    pub api_version: String,
}

/// `GET /info`, the subset ferry reads.
#[derive(Debug, Deserialize, Clone)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct Info {
    pub docker_root_dir: PathBuf,
    pub architecture: String,
    pub kernel_version: String,
    pub experimental_build: bool,
    #[serde(default)]
    pub server_version: String,
    #[serde(default)]
    pub driver: String,
    /// "systemd" or "cgroupfs": where runc puts a container's cgroup.
    /// Defaulted because engines before API 1.20 do not report it.
    #[serde(default)]
    pub cgroup_driver: String,
    /// "1" or "2" (reported since API 1.41; empty on older engines).
    #[serde(default)]
    pub cgroup_version: String,
    /// The daemon's own id: another daemon, another runtime.
    #[serde(default, rename = "ID")]
    pub id: String,
    /// e.g. `name=seccomp,profile=default`, `name=apparmor`.
    #[serde(default)]
    pub security_options: Vec<String>,
}

#[derive(Debug, Deserialize, Clone)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct ContainerState {
    pub status: String,
    pub running: bool,
    #[serde(default)]
    pub paused: bool,
    /// The main process's pid as the engine sees it (0 when not running).
    #[serde(default)]
    pub pid: i64,
}

#[derive(Debug, Deserialize, Clone)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct MountPoint {
    #[serde(rename = "Type", default)]
    pub kind: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub destination: String,
}

#[derive(Debug, Deserialize, Clone, Default)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct GraphDriver {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub data: Option<std::collections::BTreeMap<String, String>>,
}

/// `GET /containers/{id}/json`. `config` and `host_config` stay raw JSON: the
/// caller picks the fields it allows through.
#[derive(Debug, Deserialize, Clone)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct ContainerInspect {
    pub id: String,
    pub name: String,
    /// The image id (`sha256:…`).
    pub image: String,
    pub state: ContainerState,
    pub config: Value,
    pub host_config: Value,
    #[serde(default)]
    pub mounts: Vec<MountPoint>,
    #[serde(default)]
    pub graph_driver: GraphDriver,
}

impl ContainerInspect {
    /// The name without Docker's leading slash.
    pub(crate) fn short_name(&self) -> &str {
        self.name.trim_start_matches('/')
    }
}

#[derive(Debug, Deserialize, Clone)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct ImageInspect {
    pub id: String,
    #[serde(default)]
    pub repo_tags: Option<Vec<String>>,
}

/// One row of `GET /containers/{id}/changes`.
#[derive(Debug, Deserialize, Clone, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct Change {
    pub path: String,
    /// 0 modified, 1 added, 2 deleted.
    pub kind: u8,
}

pub(crate) const CHANGE_MODIFIED: u8 = 0;
pub(crate) const CHANGE_ADDED: u8 = 1;
pub(crate) const CHANGE_DELETED: u8 = 2;

/// The `X-Docker-Container-Path-Stat` header of the archive endpoints.
#[derive(Debug, Deserialize, Clone)]
pub(crate) struct PathStat {
    pub mode: u32,
}

impl PathStat {
    /// Go's `os.ModeDir` bit, as Docker encodes it.
    pub(crate) fn is_dir(&self) -> bool {
        self.mode & (1 << 31) != 0
    }
}

/// What a request carries.
enum RequestBody<'a> {
    Empty,
    Bytes(&'a [u8]),
    /// Sent chunked, as it is read.
    Stream(&'a mut dyn Read),
}

/// A client for one Docker engine, bound to the API version both sides
/// speak. A clone shares its connection pool.
#[derive(Debug, Clone)]
pub(crate) struct Engine {
    agent: Agent,
    socket: PathBuf,
    api: ApiVersion,
}

impl Engine {
    /// Connects and negotiates the API version: the lower of the daemon's and
    /// [`NEWEST_API`]; refuses engines older than [`OLDEST_API`].
    pub(crate) fn connect(socket: &Path) -> Result<Engine> {
        let config = Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(10)))
            .user_agent(concat!("ferry/", env!("CARGO_PKG_VERSION")))
            .build();
        let connector = UnixConnector { socket_path: socket.to_path_buf() };
        let agent = Agent::with_parts(config, connector, NoResolver);
        let mut engine = Engine { agent, socket: socket.to_path_buf(), api: OLDEST_API };
        let version = engine.version()?;
        let daemon_api = ApiVersion::parse(&version.api_version).ok_or_else(|| Error::Protocol {
            request: "GET /version".into(),
            detail: format!("ApiVersion {:?} is not MAJOR.MINOR", version.api_version),
        })?;
        if daemon_api < OLDEST_API {
            return Err(Error::TooOld { version: version.api_version });
        }
        engine.api = daemon_api.min(NEWEST_API);
        log::debug!("docker engine {} at {}, using API {}", version.version, socket.display(), engine.api);
        Ok(engine)
    }

    pub(crate) fn api_version(&self) -> ApiVersion {
        self.api
    }

    fn url(&self, path_and_query: &str) -> String {
        format!("http://docker/v{}{}", self.api, path_and_query)
    }

    /// Sends one request and turns transport failures and non-2xx answers into [`Error`].
    fn send(&self, method: &str, path: &str, body: RequestBody<'_>, content_type: Option<&str>) -> Result<Response<Body>> {
        let request_name = format!("{method} {}", path.split('?').next().unwrap_or(path));
        let mut builder = ureq::http::Request::builder().method(method).uri(self.url(path));
        if let Some(content_type) = content_type {
            builder = builder.header("Content-Type", content_type);
        }
        let protocol = |e: ureq::http::Error| Error::Protocol { request: request_name.clone(), detail: e.to_string() };
        let result = match body {
            // An explicit empty body: Docker refuses a start request whose
            // body it cannot see the end of ("non-empty request body").
            RequestBody::Empty => self.agent.run(builder.body(&[][..]).map_err(protocol)?),
            RequestBody::Bytes(bytes) => self.agent.run(builder.body(bytes).map_err(protocol)?),
            RequestBody::Stream(reader) => {
                self.agent.run(builder.body(SendBody::from_reader(reader)).map_err(protocol)?)
            }
        };
        let response = result.map_err(|e| self.transport_error(&request_name, e))?;
        if response.status().is_success() {
            return Ok(response);
        }
        Err(api_error(request_name, response))
    }

    fn transport_error(&self, request: &str, error: ureq::Error) -> Error {
        match error {
            ureq::Error::Io(source)
                if matches!(
                    source.kind(),
                    io::ErrorKind::NotFound
                        | io::ErrorKind::ConnectionRefused
                        | io::ErrorKind::PermissionDenied
                ) =>
            {
                Error::Unreachable { socket: self.socket.clone(), source }
            }
            ureq::Error::Io(source) => Error::Io { request: request.to_string(), source },
            other => Error::Io { request: request.to_string(), source: io::Error::other(other) },
        }
    }

    fn get_json<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        let response = self.send("GET", path, RequestBody::Empty, None)?;
        read_json(path, response)
    }

    fn post_json<T: DeserializeOwned>(&self, path: &str, body: &Value) -> Result<T> {
        let response = self.send_json("POST", path, body)?;
        read_json(path, response)
    }

    fn send_json(&self, method: &str, path: &str, body: &Value) -> Result<Response<Body>> {
        let encoded = serde_json::to_vec(body).map_err(|e| Error::Protocol {
            request: format!("{method} {path}"),
            detail: e.to_string(),
        })?;
        self.send(method, path, RequestBody::Bytes(&encoded), Some("application/json"))
    }

    /// Sends a request whose answer carries nothing ferry needs.
    fn call(&self, method: &str, path: &str) -> Result<()> {
        let response = self.send(method, path, RequestBody::Empty, None)?;
        drain(path, response)
    }

    /// `GET /version`. Unversioned: it is how the version is negotiated.
    pub(crate) fn version(&self) -> Result<Version> {
        let request = ureq::http::Request::get("http://docker/version")
            .body(())
            .map_err(|e| Error::Protocol { request: "GET /version".into(), detail: e.to_string() })?;
        let response = self.agent.run(request).map_err(|e| self.transport_error("GET /version", e))?;
        if !response.status().is_success() {
            return Err(api_error("GET /version".into(), response));
        }
        read_json("/version", response)
    }

    pub(crate) fn info(&self) -> Result<Info> {
        self.get_json("/info")
    }

    pub(crate) fn inspect_container(&self, name_or_id: &str) -> Result<ContainerInspect> {
        self.get_json(&format!("/containers/{}/json", encode(name_or_id)))
    }

    /// `POST /containers/create`; returns the new container's id.
    pub(crate) fn create_container(&self, name: &str, body: &Value) -> Result<String> {
        #[derive(Deserialize)]
        #[serde(rename_all = "PascalCase")]
        struct Created {
            id: String,
        }
        let created: Created = self.post_json(&format!("/containers/create?name={}", encode(name)), body)?;
        Ok(created.id)
    }

    /// `POST /containers/{id}/start`, from a checkpoint in the container's own
    /// checkpoints directory when `checkpoint` is given.
    pub(crate) fn start_container(&self, id: &str, checkpoint: Option<&str>) -> Result<()> {
        let path = match checkpoint {
            Some(name) => format!("/containers/{}/start?checkpoint={}", encode(id), encode(name)),
            None => format!("/containers/{}/start", encode(id)),
        };
        self.call("POST", &path)
    }

    pub(crate) fn stop_container(&self, id: &str, grace_secs: u32) -> Result<()> {
        match self.call("POST", &format!("/containers/{}/stop?t={grace_secs}", encode(id))) {
            // 304: already stopped.
            Err(e) if e.status() == Some(304) => Ok(()),
            other => other,
        }
    }

    /// `POST /containers/{id}/pause`: freezes every process (cgroup freezer).
    pub(crate) fn pause_container(&self, id: &str) -> Result<()> {
        self.call("POST", &format!("/containers/{}/pause", encode(id)))
    }

    pub(crate) fn unpause_container(&self, id: &str) -> Result<()> {
        self.call("POST", &format!("/containers/{}/unpause", encode(id)))
    }

    /// `POST /containers/{id}/kill` (SIGKILL).
    pub(crate) fn kill_container(&self, id: &str) -> Result<()> {
        self.call("POST", &format!("/containers/{}/kill", encode(id)))
    }

    /// `POST /containers/{id}/rename`: 409 when `name` is taken.
    pub(crate) fn rename_container(&self, id: &str, name: &str) -> Result<()> {
        self.call("POST", &format!("/containers/{}/rename?name={}", encode(id), encode(name)))
    }

    pub(crate) fn remove_container(&self, id: &str, force: bool) -> Result<()> {
        self.call("DELETE", &format!("/containers/{}?force={force}&v=true", encode(id)))
    }

    pub(crate) fn container_changes(&self, id: &str) -> Result<Vec<Change>> {
        // Docker answers `null` for a container with no changes.
        let changes: Option<Vec<Change>> = self.get_json(&format!("/containers/{}/changes", encode(id)))?;
        Ok(changes.unwrap_or_default())
    }

    /// The last `tail` lines a container wrote to stdout, at most 64 KiB.
    /// Docker multiplexes a non-TTY container's streams into frames of an
    /// 8-byte header (stream, 3 zero bytes, big-endian length) and the bytes.
    pub(crate) fn logs(&self, id: &str, tail: u32) -> Result<String> {
        let path = format!("/containers/{}/logs?stdout=1&tail={tail}", encode(id));
        let response = self.send("GET", &path, RequestBody::Empty, None)?;
        let mut raw = Vec::new();
        response
            .into_body()
            .into_reader()
            .take(64 * 1024)
            .read_to_end(&mut raw)
            .map_err(|source| Error::Io { request: path.clone(), source })?;
        let mut text = String::new();
        let mut rest = raw.as_slice();
        while rest.len() >= 8 && rest[1..4] == [0, 0, 0] {
            let size = u32::from_be_bytes([rest[4], rest[5], rest[6], rest[7]]) as usize;
            let end = (8 + size).min(rest.len());
            text.push_str(&String::from_utf8_lossy(&rest[8..end]));
            rest = &rest[end..];
        }
        if text.is_empty() {
            // A TTY container's log is not multiplexed.
            text = String::from_utf8_lossy(rest).into_owned();
        }
        Ok(text)
    }

    /// `HEAD /containers/{id}/archive`: what is at `path` in the container.
    pub(crate) fn stat_path(&self, id: &str, path: &str) -> Result<PathStat> {
        let request = format!("/containers/{}/archive?path={}", encode(id), encode(path));
        let response = self.send("HEAD", &request, RequestBody::Empty, None)?;
        path_stat(&request, &response)
    }

    /// `GET /containers/{id}/archive`: a tar stream of `path`, its entry named
    /// after the path's last component.
    pub(crate) fn archive_get(&self, id: &str, path: &str) -> Result<(PathStat, impl Read + use<>)> {
        let request = format!("/containers/{}/archive?path={}", encode(id), encode(path));
        let response = self.send("GET", &request, RequestBody::Empty, None)?;
        let stat = path_stat(&request, &response)?;
        Ok((stat, response.into_body().into_reader()))
    }

    /// `PUT /containers/{id}/archive`: extracts a tar stream into `dir` inside the container.
    pub(crate) fn archive_put(&self, id: &str, dir: &str, tar: &mut dyn Read) -> Result<()> {
        let path = format!("/containers/{}/archive?path={}", encode(id), encode(dir));
        let response = self.send("PUT", &path, RequestBody::Stream(tar), Some("application/x-tar"))?;
        drain(&path, response)
    }

    /// `POST /containers/{id}/checkpoints`: CRIU dumps the container into
    /// `dir/name` (or Docker's own checkpoints directory when `dir` is `None`).
    pub(crate) fn checkpoint_create(&self, id: &str, name: &str, dir: Option<&Path>, exit: bool) -> Result<()> {
        let mut body = serde_json::json!({ "CheckpointID": name, "Exit": exit });
        if let Some(dir) = dir {
            body["CheckpointDir"] = Value::String(dir.display().to_string());
        }
        let path = format!("/containers/{}/checkpoints", encode(id));
        let response = self.send_json("POST", &path, &body)?;
        drain(&path, response)
    }

    pub(crate) fn checkpoint_delete(&self, id: &str, name: &str) -> Result<()> {
        self.call("DELETE", &format!("/containers/{}/checkpoints/{}", encode(id), encode(name)))
    }

    pub(crate) fn inspect_image(&self, name_or_id: &str) -> Result<ImageInspect> {
        self.get_json(&format!("/images/{}/json", encode(name_or_id)))
    }

    /// `GET /containers/json`: the running containers, by name (without
    /// Docker's leading slash) and id.
    pub(crate) fn running_containers(&self) -> Result<Vec<(String, String)>> {
        #[derive(Deserialize)]
        #[serde(rename_all = "PascalCase")]
        struct Summary {
            id: String,
            #[serde(default)]
            names: Vec<String>,
        }
        let list: Vec<Summary> = self.get_json("/containers/json")?;
        Ok(list
            .into_iter()
            .map(|s| (s.names.first().map(|n| n.trim_start_matches('/').to_string()).unwrap_or_default(), s.id))
            .collect())
    }

    /// The memory container `id` holds, as `docker stats` counts it: its
    /// cgroup's usage less the page cache it could drop (`inactive_file`,
    /// `total_inactive_file` on cgroup v1). `one-shot` (API 1.41) answers at
    /// once instead of after a second sample.
    pub(crate) fn memory_in_use(&self, id: &str) -> Result<u64> {
        let stats: Value = self.get_json(&format!("/containers/{}/stats?stream=false&one-shot=true", encode(id)))?;
        let memory = &stats["memory_stats"];
        let usage = memory["usage"].as_u64().unwrap_or(0);
        let cache = memory["stats"]["inactive_file"].as_u64().or(memory["stats"]["total_inactive_file"].as_u64());
        Ok(usage.saturating_sub(cache.unwrap_or(0)))
    }

    /// `GET /images/json`: the images this engine has.
    pub(crate) fn list_images(&self) -> Result<Vec<ImageInspect>> {
        #[derive(Deserialize)]
        #[serde(rename_all = "PascalCase")]
        struct Summary {
            id: String,
            #[serde(default)]
            repo_tags: Option<Vec<String>>,
        }
        let list: Vec<Summary> = self.get_json("/images/json")?;
        Ok(list
            .into_iter()
            .map(|s| ImageInspect { id: s.id, repo_tags: s.repo_tags })
            .collect())
    }

    /// `POST /commit`; returns the new image's id.
    pub(crate) fn commit(&self, id: &str, repo: &str, tag: &str, pause: bool) -> Result<String> {
        #[derive(Deserialize)]
        #[serde(rename_all = "PascalCase")]
        struct Committed {
            id: String,
        }
        let path = format!(
            "/commit?container={}&repo={}&tag={}&pause={pause}",
            encode(id),
            encode(repo),
            encode(tag)
        );
        let committed: Committed = self.post_json(&path, &serde_json::json!({}))?;
        Ok(committed.id)
    }

    /// `GET /images/get`: a `docker save` tar stream of the named images.
    pub(crate) fn image_save(&self, names: &[&str]) -> Result<impl Read + use<>> {
        let query: Vec<String> = names.iter().map(|n| format!("names={}", encode(n))).collect();
        let response = self.send("GET", &format!("/images/get?{}", query.join("&")), RequestBody::Empty, None)?;
        Ok(response.into_body().into_reader())
    }

    /// `POST /images/load` from a `docker save` tar stream. Docker reports a
    /// failed load inside a 200 answer, so the progress stream is read for errors.
    pub(crate) fn image_load(&self, tar: &mut dyn Read) -> Result<()> {
        let path = "/images/load?quiet=1";
        let response = self.send("POST", path, RequestBody::Stream(tar), Some("application/x-tar"))?;
        let reader = io::BufReader::new(response.into_body().into_reader());
        for message in serde_json::Deserializer::from_reader(reader).into_iter::<Value>() {
            let message = message.map_err(|e| Error::Protocol { request: path.into(), detail: e.to_string() })?;
            if let Some(error) = message.get("error").and_then(Value::as_str) {
                return Err(Error::Api { request: "POST /images/load".into(), status: 200, message: error.into() });
            }
        }
        Ok(())
    }

    pub(crate) fn remove_image(&self, name_or_id: &str) -> Result<()> {
        self.call("DELETE", &format!("/images/{}?noprune=false", encode(name_or_id)))
    }
}

fn api_error(request: String, response: Response<Body>) -> Error {
    let status = response.status();
    let mut text = String::new();
    let _ = response.into_body().into_reader().take(ERROR_BODY_LIMIT).read_to_string(&mut text);
    let message = serde_json::from_str::<Value>(&text)
        .ok()
        .and_then(|v| v.get("message").and_then(Value::as_str).map(str::to_owned))
        .unwrap_or_else(|| {
            let trimmed = text.trim();
            if trimmed.is_empty() {
                status.canonical_reason().unwrap_or("no message").to_string()
            } else {
                trimmed.to_string()
            }
        });
    Error::Api { request, status: status.as_u16(), message }
}

fn read_json<T: DeserializeOwned>(path: &str, response: Response<Body>) -> Result<T> {
    let reader = io::BufReader::new(response.into_body().into_reader());
    serde_json::from_reader(reader).map_err(|e| Error::Protocol { request: path.to_string(), detail: e.to_string() })
}

fn drain(path: &str, response: Response<Body>) -> Result<()> {
    io::copy(&mut response.into_body().into_reader(), &mut io::sink())
        .map(|_| ())
        .map_err(|source| Error::Io { request: path.to_string(), source })
}

fn path_stat(request: &str, response: &Response<Body>) -> Result<PathStat> {
    let protocol = |detail: String| Error::Protocol { request: request.to_string(), detail };
    let header = response
        .headers()
        .get("X-Docker-Container-Path-Stat")
        .ok_or_else(|| protocol("no X-Docker-Container-Path-Stat header".into()))?;
    let decoded = BASE64_STANDARD
        .decode(header.as_bytes())
        .map_err(|e| protocol(format!("path stat is not base64: {e}")))?;
    serde_json::from_slice(&decoded).map_err(|e| protocol(format!("path stat: {e}")))
}

/// Percent-encodes a path segment or query value.
fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Whether Docker answered "not found" for this call.
pub(crate) fn is_not_found(error: &Error) -> bool {
    error.status() == Some(StatusCode::NOT_FOUND.as_u16())
}

#[cfg(test)]
mod tests;
