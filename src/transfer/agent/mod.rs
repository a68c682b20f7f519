//! The agent's state and what it does for each request, apart from HTTP:
//! every handler takes a body as `Read` and returns a wire type or an
//! [`AgentError`], so it can be tested without a socket. `server.rs` routes
//! requests here; `watchdog.rs` fails containers over from the same state.

use std::collections::BTreeMap;
use std::io::{BufReader, Read};
use std::path::PathBuf;
use std::sync::{Mutex, TryLockError};
use std::time::{Duration, Instant};

use super::ledger::{check_id, Ledger};
use super::{status_for, Failover, Outcome, PeerImage, PeerInfo, RestoreReport, SnapshotInfo};
use crate::board::Tuning;
use crate::engine::Engine;
use crate::error::{io_error, Error, Kind};
use crate::host;
use crate::identity::{Peer, Verifier};
use crate::migration::restore::{self, SizeLimit};
use crate::payload;
use crate::snapshots::Store;
use crate::units::human_bytes;


/// How `ferry serve` was asked to run.
pub(crate) struct Settings {
    pub token: Option<String>,
    /// Which payloads and snapshots are accepted (their seals); per request
    /// narrowed to the calling peer's own signature.
    pub verifier: Verifier,
    /// How this agent calls other agents (the watchdog's health checks).
    pub link: super::client::Link,
    pub spool: PathBuf,
    pub max_payload: Option<u64>,
    /// Whether restores may use the fast, symlinked placement.
    pub fast: bool,
    /// Caps for the containers the agent creates, and its I/O buffers.
    pub tuning: Tuning,
    /// Fail a container over by itself when its snapshots stop for this long
    /// and its source's agent does not answer.
    pub failover_after: Option<Duration>,
    /// A prepared container not committed within this long is discarded.
    pub handover_timeout: Duration,
    /// The fleet this agent's node is a member of (`--etcd`).
    pub fleet: Option<crate::fleet::Seat>,
}

pub(crate) struct Agent {
    pub engine: Engine,
    pub settings: Settings,
    /// Snapshots peers replicate here.
    pub store: Store,
    /// One restore (or failover) at a time: each may need the whole spool.
    pub(super) restore_lock: Mutex<()>,
    /// The containers this agent restored (name → full id and the peer that
    /// sent it), the only ones it removes, by the id it recorded (a name can
    /// since mean another container), and only for the peer that sent it.
    pub(super) restored: Mutex<BTreeMap<String, (String, Option<Peer>)>>,
    /// Every handover's state, on disk.
    pub(super) ledger: Ledger,
    /// Held across each read-modify-write of a ledger record, so that a
    /// commit and an abort of one migration can never both win.
    pub(super) ledger_lock: Mutex<()>,
    /// The engine's /info, read once for commits (see [`Agent::engine_info`]).
    engine_info: std::sync::OnceLock<crate::engine::Info>,
    /// Copies kept for deltas: pre-copy rounds, broken uploads.
    pub(crate) kept: kept::Kept,
    /// The block index last built, with what it was built from.
    base_cache: Mutex<Option<kept::CachedBase>>,
    /// One fleet move out of here at a time.
    pub(super) fleet_moving: Mutex<()>,
}

/// An error with the HTTP status to answer it with, when its kind's is not right.
#[derive(Debug)]
pub(crate) struct AgentError {
    pub error: Error,
    pub status: u16,
}

impl From<Error> for AgentError {
    fn from(error: Error) -> AgentError {
        AgentError { status: status_for(error.kind), error }
    }
}

impl From<crate::engine::Error> for AgentError {
    fn from(error: crate::engine::Error) -> AgentError {
        Error::from(error).into()
    }
}

pub(crate) trait WithStatus {
    fn with_status(self, status: u16) -> AgentError;
}

impl WithStatus for Error {
    fn with_status(self, status: u16) -> AgentError {
        AgentError { error: self, status }
    }
}

pub(crate) type Handled<T> = std::result::Result<T, AgentError>;

impl Agent {
    pub(crate) fn new(engine: Engine, settings: Settings) -> Agent {
        let store = Store::new(&settings.spool);
        let ledger = Ledger::new(&settings.spool);
        Agent {
            engine,
            store,
            kept: kept::Kept::new(&settings.spool),
            base_cache: Mutex::new(None),
            settings,
            restore_lock: Mutex::new(()),
            restored: Mutex::default(),
            ledger,
            ledger_lock: Mutex::new(()),
            engine_info: std::sync::OnceLock::new(),
            fleet_moving: Mutex::new(()),
        }
    }

    /// Removes what an agent stopped mid-transfer left in the spool: its
    /// half-received payloads (nothing else writes `receive-*` there) and
    /// partial snapshots.
    pub(crate) fn clean_spool(&self) {
        if let Ok(entries) = std::fs::read_dir(&self.settings.spool) {
            for entry in entries.flatten() {
                if entry.file_name().to_string_lossy().starts_with("receive-") {
                    log::info!("removing {}, left by an agent that was stopped mid-transfer", entry.path().display());
                    let _ = std::fs::remove_dir_all(entry.path());
                }
            }
        }
        self.store.clean_partial();
    }

    /// The engine's /info, read once: what a commit needs of it (the data
    /// root) does not change while the agent runs, and /info costs tens of
    /// milliseconds on the one step of a handover while the app is down.
    pub(super) fn engine_info(&self) -> Handled<crate::engine::Info> {
        if let Some(info) = self.engine_info.get() {
            return Ok(info.clone());
        }
        let info = self.engine.info()?;
        Ok(self.engine_info.get_or_init(|| info).clone())
    }

    pub(crate) fn restore_options(&self, size_limit: Option<SizeLimit>) -> restore::Options<'_> {
        restore::Options {
            name: None,
            fast: self.settings.fast,
            board: self.settings.tuning.board.as_ref(),
            size_limit,
            allow_host_mismatch: false,
            verify: &self.settings.verifier,
        }
    }

    pub(crate) fn info(&self) -> Handled<PeerInfo> {
        let info = self.engine.info()?;
        let images = self
            .engine
            .list_images()?
            .into_iter()
            .map(|image| PeerImage { id: image.id, tags: image.repo_tags.unwrap_or_default() })
            .collect();
        let busy = matches!(self.restore_lock.try_lock(), Err(TryLockError::WouldBlock));
        let spool = &self.settings.spool;
        std::fs::create_dir_all(spool).map_err(|e| io_error(spool.display(), e))?;
        Ok(PeerInfo {
            ferry_version: env!("CARGO_PKG_VERSION").into(),
            hostname: host::hostname(),
            arch: info.architecture,
            kernel: info.kernel_version,
            criu_version: host::criu_version().unwrap_or_default(),
            docker_version: info.server_version,
            spool_free_bytes: host::free_bytes(spool).unwrap_or(0),
            max_payload_bytes: self.settings.max_payload,
            images,
            busy,
            cpu: host::cpu(),
            cgroup_version: host::cgroup_version(),
            payload_format: crate::payload::FORMAT_VERSION,
        })
    }

    pub(crate) fn load_image(&self, body: &mut dyn Read) -> Handled<serde_json::Value> {
        let started = Instant::now();
        self.engine.image_load(body)?;
        Ok(serde_json::json!({ "load_secs": started.elapsed().as_secs_f64() }))
    }

    /// Receives and verifies a payload of `declared` bytes (when the client
    /// said), one at a time, and creates its container. With a `migration` id
    /// every step is recorded on disk; with `prepare_only` the container is
    /// not started until [`Agent::commit`].
    /// `caller` is the peer on the other end (None without TLS): the payload
    /// must be signed by it.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn restore(
        &self,
        body: &mut dyn Read,
        declared: Option<u64>,
        name: Option<&str>,
        migration: Option<&str>,
        prepare_only: bool,
        caller: Option<&Peer>,
    ) -> Handled<RestoreReport> {
        if let Some(name) = name
            && !payload::is_name(name)
        {
            return Err(Error::new(
                Kind::Usage,
                format!("{name:?} is not a container name: 1 to 128 of a-z A-Z 0-9 _ . -, starting with a letter or digit"),
            )
            .into());
        }
        if let Some(id) = migration {
            check_id(id)?;
        }
        if prepare_only && migration.is_none() {
            return Err(Error::new(Kind::Usage, "prepare=1 needs an X-Ferry-Migration id to commit it by").into());
        }
        let _one_at_a_time = match self.restore_lock.try_lock() {
            Ok(guard) => guard,
            Err(TryLockError::WouldBlock) => {
                return Err(Error::new(Kind::Refused, "another restore is running on this agent — try again when it ends")
                    .with_status(503));
            }
            Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
        };
        let free = self.spool_room(declared)?;
        let Some(id) = migration else {
            return self.receive_and_restore(body, name, free, caller);
        };
        {
            let _ledger = self.ledger_lock.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(known) = self.ledger.get(id) {
                return Err(Error::new(Kind::Refused, format!("migration {id} is known here already ({:?})", known.outcome))
                    .with_status(409));
            }
            self.ledger.set(id, Outcome::Running, None, 0)?;
        }
        let result = self.receive_and_prepare(body, name, free, id, caller);
        let _ledger = self.ledger_lock.lock().unwrap_or_else(|p| p.into_inner());
        let (report, prepared) = match result {
            Ok(done) => done,
            Err(error) => {
                self.ledger.set(id, Outcome::Failed { error: error.error.message.clone() }, None, 0)?;
                return Err(error);
            }
        };
        // The source gave up while the payload was arriving: discard.
        if self.ledger.get(id).is_some_and(|r| r.outcome == Outcome::Aborted) {
            drop(_ledger);
            self.discard(id, &prepared);
            return Err(Error::new(Kind::Refused, format!("migration {id} was aborted while it was received")).with_status(409));
        }
        let expires = host::unix_now() + self.settings.handover_timeout.as_secs();
        self.ledger.set(id, Outcome::Prepared, Some(prepared), expires)?;
        drop(_ledger);
        if prepare_only {
            return Ok(report);
        }
        self.commit(id, caller)
    }

    /// The spool's free bytes, once a body of `declared` bytes is known to
    /// fit in them and within --max-payload.
    pub(super) fn spool_room(&self, declared: Option<u64>) -> Handled<u64> {
        let spool = &self.settings.spool;
        std::fs::create_dir_all(spool).map_err(|e| io_error(spool.display(), e))?;
        let free = host::free_bytes(spool).map_err(|e| io_error(spool.display(), e))?;
        if let (Some(length), Some(limit)) = (declared, self.settings.max_payload)
            && length > limit
        {
            return Err(Error::new(
                Kind::Refused,
                format!("payload of {length} bytes is larger than this agent's --max-payload of {limit}"),
            )
            .with_status(413));
        }
        if let Some(length) = declared
            && length > free
        {
            return Err(Error::new(
                Kind::Io,
                format!(
                    "payload of {} does not fit in the agent's spool ({} free) — free space or start the agent with a larger --spool",
                    human_bytes(length),
                    human_bytes(free)
                ),
            )
            .with_status(507));
        }
        Ok(free)
    }

    /// The most a payload may unpack to here, and why.
    pub(super) fn size_limit(&self, free: u64) -> SizeLimit {
        let max = self.settings.max_payload;
        SizeLimit {
            bytes: max.map_or(free, |max| max.min(free)),
            why: format!(
                "the agent's spool {} has {} free and a --max-payload of {}",
                self.settings.spool.display(),
                human_bytes(free),
                max.map_or("none".into(), human_bytes)
            ),
        }
    }

    fn receive_and_restore(&self, body: &mut dyn Read, name: Option<&str>, free: u64, caller: Option<&Peer>) -> Handled<RestoreReport> {
        let verifier = self.settings.verifier.for_peer(caller.map(|c| &c.fingerprint));
        let options = restore::Options { name, verify: &verifier, ..self.restore_options(Some(self.size_limit(free))) };
        let body = BufReader::with_capacity(self.settings.tuning.io_buffer, body);
        let restored = restore::restore_from(&self.engine, &self.settings.spool, "receive", body, &options)?;
        self.record_restored(&restored.container, &restored.id, caller);
        Ok(restored.into())
    }

    /// Remembers a container this agent started for `caller`.
    pub(super) fn record_restored(&self, name: &str, id: &str, caller: Option<&Peer>) {
        self.restored.lock().unwrap_or_else(|p| p.into_inner()).insert(name.to_string(), (id.to_string(), caller.cloned()));
    }

    /// Stores a snapshot, verified, keeping the newest `keep` of its container
    /// (3 when the client does not say). Only the peer that sent a
    /// container's first snapshot here may send more of it.
    pub(crate) fn receive_snapshot(
        &self,
        body: &mut dyn Read,
        declared: Option<u64>,
        keep: Option<&str>,
        caller: Option<&Peer>,
    ) -> Handled<SnapshotInfo> {
        let keep = match keep {
            Some(text) => text.parse::<usize>().ok().filter(|&n| n >= 1).ok_or_else(|| {
                Error::new(Kind::Usage, format!("keep={text} is not a count of snapshots (1 or more)"))
            })?,
            None => 3,
        };
        let free = self.spool_room(declared)?;
        let info = self.engine.info()?;
        let limit = self.size_limit(free).bytes;
        let body = BufReader::with_capacity(self.settings.tuning.io_buffer, body);
        let verifier = self.settings.verifier.for_peer(caller.map(|c| &c.fingerprint));
        let sender = caller.map(|c| c.fingerprint.to_string());
        let resolve = self.resolver(caller);
        let receive = payload::Receive { base: Some(&resolve), ..Default::default() };
        let stored = self.store.receive(body, &info.architecture, (limit, keep), &verifier, sender.as_deref(), &receive)?;
        log::info!("stored snapshot {} ({} bytes) from {}", stored.id, stored.compressed_bytes, stored.source_host);
        Ok(stored)
    }

    /// Removes a container this agent restored, and only for the peer that sent it.
    pub(crate) fn remove_restored(&self, name: &str, caller: Option<&Peer>) -> Handled<serde_json::Value> {
        let mut restored = self.restored.lock().unwrap_or_else(|p| p.into_inner());
        let Some((id, sender)) = restored.get(name).cloned() else {
            return Err(Error::new(Kind::Refused, format!("'{name}' was not restored by this agent: it removes only what it restored"))
                .with_status(403));
        };
        if let Some(sender) = &sender
            && caller.is_none_or(|c| c.fingerprint != sender.fingerprint)
        {
            return Err(Error::new(
                Kind::Refused,
                format!("'{name}' was sent by {}: only that peer may remove it", sender.name),
            )
            .with_status(403));
        }
        match self.engine.remove_container(&id, true) {
            Err(e) if crate::engine::is_not_found(&e) => log::info!("{name} ({}) was already removed", crate::units::short_id(&id)),
            other => other?,
        }
        restored.remove(name);
        Ok(serde_json::json!({ "removed": name }))
    }

    /// The recorded failovers, each saying whether its container still runs here.
    pub(crate) fn failovers(&self) -> Vec<Failover> {
        let mut failovers = self.store.failovers();
        for failover in &mut failovers {
            failover.running = self.engine.inspect_container(&failover.container_id).is_ok_and(|c| c.state.running);
        }
        failovers
    }
}

mod kept;
pub(crate) use kept::sender_name;

#[cfg(test)]
mod tests;
