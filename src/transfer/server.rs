//! The agent: a small synchronous HTTP/1.1 server that receives payloads and
//! images from peers and restores them on this host. What a connection may
//! cost it (size, time, count) is bounded in `transfer::http`.

use std::collections::VecDeque;
use std::io::{self, Read};
use std::path::PathBuf;
use std::sync::{Mutex, TryLockError};
use std::thread;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::http::{self, Method, Request};
use super::{
    authorized, status_for, ErrorBody, Outcome, PeerImage, PeerInfo, FAILOVERS, HEALTH, IMAGES, INFO, MIGRATIONS,
    MIGRATION_HEADER, RESTORE, SNAPSHOTS, CONTAINERS,
};
use crate::snapshots::Store;
use crate::commands::restore;
use crate::engine::Engine;
use crate::error::{Error, Kind, Result};
use crate::host;

/// How many migration outcomes the agent remembers for late askers.
const OUTCOMES_KEPT: usize = 32;
/// What a refused upload may still send before the agent stops reading it.
const DRAIN_LIMIT: u64 = 64 << 30;

pub(crate) struct Agent {
    pub engine: Engine,
    pub token: Option<String>,
    pub spool: PathBuf,
    pub max_payload: Option<u64>,
    /// Whether restores may use the fast, symlinked placement.
    pub fast: bool,
    /// Caps for the containers the agent creates.
    pub board: Option<crate::board::Board>,
    /// Snapshots peers replicate here.
    pub store: Store,
    /// Fail a container over by itself when its snapshots stop for this long
    /// and its source's agent does not answer.
    pub failover_after: Option<Duration>,
    restore_lock: Mutex<()>,
    /// Names of the containers this agent restored, the only ones it removes.
    restored: Mutex<std::collections::BTreeSet<String>>,
    outcomes: Mutex<VecDeque<(String, Outcome)>>,
}

impl Agent {
    pub(crate) fn new(
        engine: Engine,
        token: Option<String>,
        spool: PathBuf,
        max_payload: Option<u64>,
        fast: bool,
        board: Option<crate::board::Board>,
        failover_after: Option<Duration>,
    ) -> Agent {
        let store = Store::new(&spool);
        Agent { engine, token, spool, max_payload, fast, board, store, failover_after, restore_lock: Mutex::new(()), restored: Mutex::default(), outcomes: Mutex::new(VecDeque::new()) }
    }
}

/// Serves until the listener fails. Each connection has its own thread.
pub(crate) fn serve(agent: &Agent, listen: &str) -> Result<()> {
    let server = http::Server::bind(listen, http::Limits::default())
        .map_err(|e| Error::new(Kind::Usage, format!("cannot listen on {listen}: {e}")))?;
    remove_stale_receives(agent);
    agent.store.clean_partial();
    log::info!("agent listening on {listen}, spool {}", agent.spool.display());
    thread::scope(|scope| {
        if let Some(after) = agent.failover_after {
            scope.spawn(move || watch_for_failover(agent, after));
        }
        let error = server.serve(&|request| handle(agent, request));
        log::error!("the listener failed: {error}");
    });
    Ok(())
}

/// A previous agent killed mid-transfer leaves its half-received payload in
/// the spool: nothing else writes `receive-*` there, so remove them.
fn remove_stale_receives(agent: &Agent) {
    let Ok(entries) = std::fs::read_dir(&agent.spool) else { return };
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().starts_with("receive-") {
            log::info!("removing {}, left by an agent that was stopped mid-transfer", entry.path().display());
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

fn handle(agent: &Agent, mut request: Request) {
    let started = Instant::now();
    let method = request.method();
    let url = request.url().to_string();
    let (path, query) = url.split_once('?').unwrap_or((url.as_str(), ""));
    let result = if method == Method::Get && path == HEALTH {
        Ok(Reply::text("ok\n"))
    } else if let Some(token) = &agent.token
        && !authorized(token, header(&request, "Authorization").as_deref())
    {
        Err(Error::new(Kind::Usage, "missing or wrong token — give the agent's token with --token-file").with_status(401))
    } else {
        match (&method, path) {
            (Method::Get, INFO) => info(agent).map(Reply::json),
            (Method::Post, IMAGES) => load_image(agent, &mut request).map(Reply::json),
            (Method::Post, RESTORE) => restore_payload(agent, &mut request, query).map(Reply::json),
            (Method::Get, p) if p.starts_with(MIGRATIONS) => outcome(agent, &p[MIGRATIONS.len()..]).map(Reply::json),
            (Method::Post, SNAPSHOTS) => receive_snapshot(agent, &mut request, query).map(Reply::json),
            (Method::Get, SNAPSHOTS) => Ok(Reply::json(agent.store.list())),
            (Method::Get, FAILOVERS) => Ok(Reply::json(failovers(agent))),
            (Method::Delete, p) if p.starts_with(CONTAINERS) => remove_restored(agent, &p[CONTAINERS.len()..]).map(Reply::json),
            _ => Err(Error::new(Kind::NotFound, format!("no such endpoint: {method} {path}")).with_status(404)),
        }
    };
    let (status, body, content_type) = match result {
        Ok(reply) => (200, reply.body, reply.content_type),
        Err(error) => {
            let status = error.status.unwrap_or_else(|| status_for(error.inner.kind));
            // Read what a token holder is still sending, so that it gets this
            // answer instead of a broken pipe; a stranger's body is never read:
            // answering before it closes the connection.
            let limit = if status == 401 { 0 } else { DRAIN_LIMIT };
            let _ = io::copy(&mut request.as_reader().take(limit), &mut io::sink());
            log::warn!("{method} {path}: {}", error.inner);
            let body = ErrorBody { error: error.inner.message, exit_code: error.inner.kind.exit_code() };
            (status, serde_json::to_string(&body).unwrap_or_default(), "application/json")
        }
    };
    log::info!("{method} {path} → {status} in {:.3}s", started.elapsed().as_secs_f64());
    if let Err(e) = request.respond(status, content_type, body.as_bytes()) {
        log::warn!("could not answer {method} {path}: {e}");
    }
}

struct Reply {
    body: String,
    content_type: &'static str,
}

impl Reply {
    fn text(body: &str) -> Reply {
        Reply { body: body.to_string(), content_type: "text/plain" }
    }

    fn json(value: impl Serialize) -> Reply {
        Reply { body: serde_json::to_string(&value).unwrap_or_default(), content_type: "application/json" }
    }
}

/// An error with the HTTP status to answer it with, when its kind's is not right.
struct HttpError {
    inner: Error,
    status: Option<u16>,
}

impl From<Error> for HttpError {
    fn from(inner: Error) -> HttpError {
        HttpError { inner, status: None }
    }
}

impl From<crate::engine::Error> for HttpError {
    fn from(error: crate::engine::Error) -> HttpError {
        Error::from(error).into()
    }
}

trait WithStatus {
    fn with_status(self, status: u16) -> HttpError;
}

impl WithStatus for Error {
    fn with_status(self, status: u16) -> HttpError {
        HttpError { inner: self, status: Some(status) }
    }
}

type Handled<T> = std::result::Result<T, HttpError>;

fn header(request: &Request, name: &'static str) -> Option<String> {
    request.header(name).map(str::to_string)
}

fn info(agent: &Agent) -> Handled<PeerInfo> {
    let info = agent.engine.info()?;
    let images = agent
        .engine
        .list_images()?
        .into_iter()
        .map(|image| PeerImage { id: image.id, tags: image.repo_tags.unwrap_or_default() })
        .collect();
    let busy = matches!(agent.restore_lock.try_lock(), Err(TryLockError::WouldBlock));
    std::fs::create_dir_all(&agent.spool).map_err(|e| crate::error::io_error(agent.spool.display(), e))?;
    Ok(PeerInfo {
        ferry_version: env!("CARGO_PKG_VERSION").into(),
        hostname: host::hostname(),
        arch: info.architecture,
        kernel: info.kernel_version,
        criu_version: host::criu_version().unwrap_or_default(),
        docker_version: info.server_version,
        spool_free_bytes: host::free_bytes(&agent.spool).unwrap_or(0),
        max_payload_bytes: agent.max_payload,
        images,
        busy,
    })
}

fn load_image(agent: &Agent, request: &mut Request) -> Handled<serde_json::Value> {
    let started = Instant::now();
    agent.engine.image_load(request.as_reader())?;
    Ok(serde_json::json!({ "load_secs": started.elapsed().as_secs_f64() }))
}

fn restore_payload(agent: &Agent, request: &mut Request, query: &str) -> Handled<restore::Report> {
    let name = query_value(query, "name");
    if let Some(name) = &name
        && !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
    {
        return Err(Error::new(Kind::Usage, format!("'{name}' is not a container name")).into());
    }
    let migration = header(request, MIGRATION_HEADER).filter(|id| id.len() <= 64);
    let _one_at_a_time = match agent.restore_lock.try_lock() {
        Ok(guard) => guard,
        Err(TryLockError::WouldBlock) => {
            return Err(Error::new(Kind::Refused, "another restore is running on this agent — try again when it ends").with_status(503));
        }
        Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
    };
    std::fs::create_dir_all(&agent.spool).map_err(|e| crate::error::io_error(agent.spool.display(), e))?;
    let free = host::free_bytes(&agent.spool).map_err(|e| crate::error::io_error(agent.spool.display(), e))?;
    let declared = request.body_length();
    if let (Some(length), Some(limit)) = (declared, agent.max_payload)
        && length > limit
    {
        return Err(Error::new(Kind::Refused, format!("payload of {length} bytes is larger than this agent's --max-payload of {limit}")).with_status(413));
    }
    if let Some(length) = declared
        && length > free
    {
        return Err(too_small(length, free));
    }
    if let Some(id) = &migration {
        remember(agent, id, Outcome::Running);
    }
    let limit = agent.max_payload.map_or(free, |max| max.min(free));
    let result = receive_and_restore(agent, request.as_reader(), name.as_deref(), limit, free);
    if let Some(id) = &migration {
        let outcome = match &result {
            Ok(report) => Outcome::Restored { report: report.clone() },
            Err(error) => Outcome::Failed { error: error.inner.message.clone() },
        };
        remember(agent, id, outcome);
    }
    result
}

fn receive_and_restore(agent: &Agent, body: &mut dyn Read, name: Option<&str>, limit: u64, free: u64) -> Handled<restore::Report> {
    let options = restore::Options { name, fast: agent.fast, board: agent.board.as_ref(), max_raw_bytes: Some(limit) };
    let report = restore::restore_from(&agent.engine, &agent.spool, "receive", body, &options).map_err(|e| {
        if e.message.contains("allowed here") {
            e.context(format!(
                "the agent's spool {} has {} free and a --max-payload of {}",
                agent.spool.display(),
                crate::commands::human_bytes(free),
                agent.max_payload.map_or("none".into(), crate::commands::human_bytes)
            ))
        } else {
            e
        }
    })?;
    agent.restored.lock().unwrap_or_else(|p| p.into_inner()).insert(report.container.clone());
    Ok(report)
}

fn receive_snapshot(agent: &Agent, request: &mut Request, query: &str) -> Handled<crate::snapshots::SnapshotInfo> {
    let keep = match query_value(query, "keep") {
        Some(text) => text.parse::<usize>().ok().filter(|&n| n >= 1).ok_or_else(|| {
            Error::new(Kind::Usage, format!("keep={text} is not a count of snapshots (1 or more)"))
        })?,
        None => 3,
    };
    std::fs::create_dir_all(&agent.spool).map_err(|e| crate::error::io_error(agent.spool.display(), e))?;
    let free = host::free_bytes(&agent.spool).map_err(|e| crate::error::io_error(agent.spool.display(), e))?;
    if let Some(length) = request.body_length()
        && length > free
    {
        return Err(too_small(length, free));
    }
    let info = agent.engine.info()?;
    let limit = agent.max_payload.map_or(free, |max| max.min(free));
    let stored = agent.store.receive(request.as_reader(), &info.architecture, limit, keep)?;
    log::info!("stored snapshot {} ({} bytes) from {}", stored.id, stored.compressed_bytes, stored.source_host);
    Ok(stored)
}

/// Automatic failover: every second, a container whose newest snapshot is
/// older than `after`, that does not run here, was not failed over already,
/// and whose source's agent does not answer, is restored from that snapshot.
fn watch_for_failover(agent: &Agent, after: Duration) {
    log::info!("automatic failover after {:.1}s without snapshots", after.as_secs_f64());
    let mut warned = std::collections::BTreeSet::new();
    loop {
        thread::sleep(Duration::from_secs(1));
        let snapshots = agent.store.list();
        let failed_over = agent.store.failovers();
        let containers: std::collections::BTreeSet<&str> = snapshots.iter().map(|s| s.container.as_str()).collect();
        for container in containers {
            let Some(latest) = snapshots.iter().filter(|s| s.container == container).max_by_key(|s| s.generation) else {
                continue;
            };
            let silent = host::unix_now().saturating_sub(latest.received_unix);
            if silent < after.as_secs().max(1) || failed_over.iter().any(|f| f.container == container && f.generation >= latest.generation) {
                continue;
            }
            let Some(source) = &latest.source_agent else {
                if warned.insert(container.to_string()) {
                    log::warn!("snapshots of {container} stopped {silent}s ago, but its source named no agent to ask (ferry replicate --self): not failing over");
                }
                continue;
            };
            if agent.engine.inspect_container(container).is_ok_and(|c| c.state.running) {
                continue;
            }
            if super::client::Peer::new(source, agent.token.clone(), Duration::from_secs(3)).healthy() {
                continue;
            }
            let Ok(_one_at_a_time) = agent.restore_lock.lock() else { continue };
            log::warn!("no snapshot of {container} for {silent}s and its source's agent {source} does not answer: failing over");
            let options = restore::Options { name: None, fast: agent.fast, board: agent.board.as_ref(), max_raw_bytes: None };
            match crate::commands::failover::failover(&agent.engine, &agent.store, container, None, &options) {
                Ok(done) => log::warn!(
                    "failed {container} over from generation {} ({}s old): runs here as {}",
                    done.generation,
                    done.snapshot_age_secs,
                    &done.container_id[..12.min(done.container_id.len())]
                ),
                Err(e) => log::error!("failover of {container} failed: {e}"),
            }
        }
    }
}

fn remove_restored(agent: &Agent, name: &str) -> Handled<serde_json::Value> {
    let mut restored = agent.restored.lock().unwrap_or_else(|p| p.into_inner());
    if !restored.contains(name) {
        return Err(Error::new(Kind::Refused, format!("'{name}' was not restored by this agent: it removes only what it restored")).with_status(403));
    }
    agent.engine.remove_container(name, true)?;
    restored.remove(name);
    Ok(serde_json::json!({ "removed": name }))
}

/// The recorded failovers, each saying whether its container still runs here.
fn failovers(agent: &Agent) -> Vec<crate::snapshots::Failover> {
    let mut failovers = agent.store.failovers();
    for failover in &mut failovers {
        failover.running = agent.engine.inspect_container(&failover.container_id).is_ok_and(|c| c.state.running);
    }
    failovers
}

fn too_small(length: u64, free: u64) -> HttpError {
    Error::new(
        Kind::Io,
        format!(
            "payload of {} does not fit in the agent's spool ({} free) — free space or start the agent with a larger --spool",
            crate::commands::human_bytes(length),
            crate::commands::human_bytes(free)
        ),
    )
    .with_status(507)
}

fn remember(agent: &Agent, id: &str, outcome: Outcome) {
    let mut outcomes = agent.outcomes.lock().unwrap_or_else(|p| p.into_inner());
    outcomes.retain(|(known, _)| known != id);
    outcomes.push_back((id.to_string(), outcome));
    while outcomes.len() > OUTCOMES_KEPT {
        outcomes.pop_front();
    }
}

fn outcome(agent: &Agent, id: &str) -> Handled<Outcome> {
    let outcomes = agent.outcomes.lock().unwrap_or_else(|p| p.into_inner());
    outcomes
        .iter()
        .find(|(known, _)| known == id)
        .map(|(_, outcome)| outcome.clone())
        .ok_or_else(|| Error::new(Kind::NotFound, format!("no migration {id} is known here")).with_status(404))
}

/// The value of `key` in a query string of plain (unencoded) names.
fn query_value(query: &str, key: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == key && !v.is_empty()).then(|| v.to_string())
    })
}
