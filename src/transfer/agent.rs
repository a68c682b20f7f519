//! The agent's state and what it does for each request, apart from HTTP:
//! every handler takes a body as `Read` and returns a wire type or an
//! [`AgentError`], so it can be tested without a socket. `server.rs` routes
//! requests here; `watchdog.rs` fails containers over from the same state.

use std::collections::BTreeMap;
use std::io::{BufReader, Read};
use std::path::PathBuf;
use std::sync::{Mutex, TryLockError};
use std::time::{Duration, Instant};

use super::ledger::{valid_id, Ledger};
use super::{status_for, Failover, Outcome, PeerImage, PeerInfo, RestoreReport, SnapshotInfo};
use crate::board::Tuning;
use crate::engine::Engine;
use crate::error::{io_error, Error, Kind};
use crate::host;
use crate::migration::restore::{self, Prepared, SizeLimit};
use crate::payload;
use crate::snapshots::Store;
use crate::units::{human_bytes, seconds_since};

/// Finished handovers are remembered this long (30 days): a source that
/// comes back asks what became of its commit, and must get the truth.
const RECORDS_KEPT_SECS: u64 = 30 * 24 * 3600;
/// A commit whose agent died mid-start is judged by the container's state
/// once dockerd has had this long to finish the start it was asked for.
const START_SETTLES_SECS: u64 = 60;

/// How `ferry serve` was asked to run.
pub(crate) struct Settings {
    pub token: Option<String>,
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
}

pub(crate) struct Agent {
    pub engine: Engine,
    pub settings: Settings,
    /// Snapshots peers replicate here.
    pub store: Store,
    /// One restore (or failover) at a time: each may need the whole spool.
    pub(super) restore_lock: Mutex<()>,
    /// The containers this agent restored (name → full id), the only ones it
    /// removes, by the id it recorded: a name can since mean another container.
    restored: Mutex<BTreeMap<String, String>>,
    /// Every handover's state, on disk.
    ledger: Ledger,
    /// Held across each read-modify-write of a ledger record, so that a
    /// commit and an abort of one migration can never both win.
    ledger_lock: Mutex<()>,
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
            settings,
            restore_lock: Mutex::new(()),
            restored: Mutex::default(),
            ledger,
            ledger_lock: Mutex::new(()),
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

    pub(crate) fn restore_options(&self, size_limit: Option<SizeLimit>) -> restore::Options<'_> {
        restore::Options {
            name: None,
            fast: self.settings.fast,
            board: self.settings.tuning.board.as_ref(),
            size_limit,
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
    pub(crate) fn restore(
        &self,
        body: &mut dyn Read,
        declared: Option<u64>,
        name: Option<&str>,
        migration: Option<&str>,
        prepare_only: bool,
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
        if let Some(id) = migration
            && !valid_id(id)
        {
            return Err(Error::new(Kind::Usage, "the migration id must be 1 to 64 letters, digits or dashes").into());
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
            return self.receive_and_restore(body, name, free);
        };
        {
            let _ledger = self.ledger_lock.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(known) = self.ledger.get(id) {
                return Err(Error::new(Kind::Refused, format!("migration {id} is known here already ({:?})", known.outcome))
                    .with_status(409));
            }
            self.ledger.set(id, Outcome::Running, None, 0)?;
        }
        let result = self.receive_and_prepare(body, name, free, id);
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
        self.commit(id)
    }

    /// Starts migration `id`'s prepared container. Answers its report; a
    /// commit repeated after the app runs answers the same report.
    pub(crate) fn commit(&self, id: &str) -> Handled<RestoreReport> {
        let (prepared, expires) = {
            let _ledger = self.ledger_lock.lock().unwrap_or_else(|p| p.into_inner());
            let record = self.known(id)?;
            match (&record.outcome, record.prepared) {
                (Outcome::Prepared, Some(prepared)) => {
                    self.ledger.set(id, Outcome::Committing, Some(prepared.clone()), record.expires_unix)?;
                    (prepared, record.expires_unix)
                }
                (Outcome::Restored { report }, _) => return Ok(report.clone()),
                (outcome, _) => {
                    return Err(Error::new(Kind::Refused, format!("migration {id} cannot be committed: it is {outcome:?}"))
                        .with_status(409));
                }
            }
        };
        let _one_at_a_time = self.restore_lock.lock().unwrap_or_else(|p| p.into_inner());
        let info = self.engine.info()?;
        let result = restore::commit(&self.engine, &info, &prepared, self.settings.fast);
        let _ledger = self.ledger_lock.lock().unwrap_or_else(|p| p.into_inner());
        let _ = std::fs::remove_dir_all(self.ledger.payload_dir(id));
        match result {
            Ok(restored) => {
                self.restored.lock().unwrap_or_else(|p| p.into_inner()).insert(restored.container.clone(), restored.id.clone());
                let mut report = RestoreReport::from(restored);
                report.peak_rss_kib = host::peak_rss_kib();
                self.ledger.set(id, Outcome::Restored { report: report.clone() }, Some(prepared), expires)?;
                Ok(report)
            }
            Err(error) => {
                self.ledger.set(id, Outcome::Failed { error: error.message.clone() }, None, expires)?;
                Err(error.into())
            }
        }
    }

    /// Gives migration `id` up, if it has not been committed: its prepared
    /// container is removed, and a prepare still arriving will be refused.
    /// Answers the outcome after the attempt (`restored` if it was too late).
    pub(crate) fn abort(&self, id: &str) -> Handled<Outcome> {
        if !valid_id(id) {
            return Err(Error::new(Kind::Usage, "the migration id must be 1 to 64 letters, digits or dashes").into());
        }
        let _ledger = self.ledger_lock.lock().unwrap_or_else(|p| p.into_inner());
        let record = self.ledger.get(id);
        match record.as_ref().map(|r| &r.outcome) {
            None | Some(Outcome::Running) => {
                let expires = host::unix_now() + RECORDS_KEPT_SECS;
                self.ledger.set(id, Outcome::Aborted, None, expires)?;
                Ok(Outcome::Aborted)
            }
            Some(Outcome::Prepared) => {
                let prepared = record.and_then(|r| r.prepared);
                self.ledger.set(id, Outcome::Aborted, None, 0)?;
                drop(_ledger);
                if let Some(prepared) = prepared {
                    self.discard(id, &prepared);
                }
                Ok(Outcome::Aborted)
            }
            Some(outcome) => Ok(outcome.clone()),
        }
    }

    /// Removes a prepared, unstarted container and its payload.
    fn discard(&self, id: &str, prepared: &Prepared) {
        log::info!("discarding migration {id}: removing the unstarted {}", prepared.container);
        if let Err(e) = restore::discard(&self.engine, prepared) {
            log::warn!("could not remove the prepared container {}: {e}", prepared.id);
        }
        let _ = std::fs::remove_dir_all(self.ledger.payload_dir(id));
    }

    fn known(&self, id: &str) -> Handled<super::ledger::Record> {
        if !valid_id(id) {
            return Err(Error::new(Kind::Usage, "the migration id must be 1 to 64 letters, digits or dashes").into());
        }
        self.ledger.get(id).ok_or_else(|| Error::new(Kind::NotFound, format!("no migration {id} is known here")).with_status(404))
    }

    /// Settles what needs no client: prepared containers past their expiry
    /// are discarded, receipts an agent died in are failed, commits an agent
    /// died in are judged by the container's state, and finished records are
    /// forgotten after 30 days. Run at start and then every few seconds.
    pub(crate) fn tidy_handovers(&self) {
        let now = host::unix_now();
        for (id, record) in self.ledger.list() {
            match record.outcome {
                Outcome::Prepared if record.expires_unix <= now => {
                    log::warn!("migration {id} was prepared but not committed in time");
                    let _ = self.abort(&id);
                }
                Outcome::Running => {
                    // A receive sets its outcome before it lets go of the
                    // restore lock: a record still `running`, read again
                    // under the ledger lock while nothing holds the restore
                    // lock, is one an agent stopped in the middle of.
                    let _ledger = self.ledger_lock.lock().unwrap_or_else(|p| p.into_inner());
                    let still_running = self.ledger.get(&id).is_some_and(|r| r.outcome == Outcome::Running);
                    if still_running && self.restore_lock.try_lock().is_ok() {
                        let _ = std::fs::remove_dir_all(self.ledger.payload_dir(&id));
                        let error = "the agent stopped while it received the payload".to_string();
                        let _ = self.ledger.set(&id, Outcome::Failed { error }, None, 0);
                    }
                }
                Outcome::Committing if self.restore_lock.try_lock().is_ok() => self.judge_interrupted_commit(&id, record),
                Outcome::Restored { .. } | Outcome::Failed { .. } | Outcome::Aborted
                    if now.saturating_sub(record.updated_unix) > RECORDS_KEPT_SECS =>
                {
                    self.ledger.remove(&id)
                }
                _ => {}
            }
        }
    }

    /// An agent stopped while it started a committed container: dockerd may
    /// still finish that start, so the container's own state decides.
    fn judge_interrupted_commit(&self, id: &str, record: super::ledger::Record) {
        let Some(prepared) = record.prepared else { return };
        let state = self.engine.inspect_container(&prepared.id).map(|c| c.state);
        let _ledger = self.ledger_lock.lock().unwrap_or_else(|p| p.into_inner());
        match state {
            Ok(state) if state.running => {
                let report = RestoreReport { container: prepared.container.clone(), id: prepared.id.clone(), mode: prepared.mode.as_str().into(), ..RestoreReport::default() };
                self.restored.lock().unwrap_or_else(|p| p.into_inner()).insert(prepared.container.clone(), prepared.id.clone());
                let _ = self.ledger.set(id, Outcome::Restored { report }, Some(prepared), record.expires_unix);
            }
            _ if host::unix_now().saturating_sub(record.updated_unix) < START_SETTLES_SECS => {}
            _ => {
                drop(_ledger);
                self.discard(id, &prepared);
                let error = "the agent stopped while it started the container, which did not run".to_string();
                let _ = self.ledger.set(id, Outcome::Failed { error }, None, 0);
            }
        }
    }

    /// The spool's free bytes, once a body of `declared` bytes is known to
    /// fit in them and within --max-payload.
    fn spool_room(&self, declared: Option<u64>) -> Handled<u64> {
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
    fn size_limit(&self, free: u64) -> SizeLimit {
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

    /// Unpacks into the ledger's folder for `id`, verifies, and prepares.
    fn receive_and_prepare(&self, body: &mut dyn Read, name: Option<&str>, free: u64, id: &str) -> Handled<(RestoreReport, Prepared)> {
        let options = restore::Options { name, ..self.restore_options(Some(self.size_limit(free))) };
        let dir = self.ledger.payload_dir(id);
        let info = self.engine.info()?;
        let started = Instant::now();
        let body = BufReader::with_capacity(self.settings.tuning.io_buffer, body);
        let limit = options.size_limit.as_ref().map(|l| l.bytes);
        let unpacked = payload::unpack(body, &dir, &info.architecture, limit).map_err(|e| match (&e, &options.size_limit) {
            (payload::Error::TooLarge { .. }, Some(limit)) => Error::from(e).context(&limit.why),
            _ => Error::from(e),
        })?;
        let unpack_secs = seconds_since(started);
        let started = Instant::now();
        let prepared = restore::prepare(&self.engine, &info, &dir, &unpacked.manifest, &options).inspect_err(|_| {
            let _ = std::fs::remove_dir_all(&dir);
        })?;
        let report = RestoreReport {
            container: prepared.container.clone(),
            id: prepared.id.clone(),
            mode: prepared.mode.as_str().into(),
            unpack_secs,
            prepare_secs: seconds_since(started),
            raw_bytes: unpacked.raw_bytes,
            compressed_bytes: unpacked.compressed_bytes,
            peak_rss_kib: host::peak_rss_kib(),
            restore_secs: 0.0,
        };
        Ok((report, prepared))
    }

    fn receive_and_restore(&self, body: &mut dyn Read, name: Option<&str>, free: u64) -> Handled<RestoreReport> {
        let options = restore::Options { name, ..self.restore_options(Some(self.size_limit(free))) };
        let body = BufReader::with_capacity(self.settings.tuning.io_buffer, body);
        let restored = restore::restore_from(&self.engine, &self.settings.spool, "receive", body, &options)?;
        self.restored.lock().unwrap_or_else(|p| p.into_inner()).insert(restored.container.clone(), restored.id.clone());
        Ok(restored.into())
    }

    /// Stores a snapshot, verified, keeping the newest `keep` of its container
    /// (3 when the client does not say).
    pub(crate) fn receive_snapshot(&self, body: &mut dyn Read, declared: Option<u64>, keep: Option<&str>) -> Handled<SnapshotInfo> {
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
        let stored = self.store.receive(body, &info.architecture, limit, keep)?;
        log::info!("stored snapshot {} ({} bytes) from {}", stored.id, stored.compressed_bytes, stored.source_host);
        Ok(stored)
    }

    /// Removes a container this agent restored, and only those.
    pub(crate) fn remove_restored(&self, name: &str) -> Handled<serde_json::Value> {
        let mut restored = self.restored.lock().unwrap_or_else(|p| p.into_inner());
        let Some(id) = restored.get(name).cloned() else {
            return Err(Error::new(Kind::Refused, format!("'{name}' was not restored by this agent: it removes only what it restored"))
                .with_status(403));
        };
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

    pub(crate) fn outcome(&self, id: &str) -> Handled<Outcome> {
        Ok(self.known(id)?.outcome)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{api_path, info_answer, version_answer, FakeDocker, TempDir};

    fn agent(spool: &std::path::Path, max_payload: Option<u64>) -> (Agent, FakeDocker) {
        let root = spool.to_path_buf();
        let fake = FakeDocker::start("agent", move |method, path| match (method, api_path(path)) {
            ("GET", "/version") => (200, version_answer("1.41")),
            ("GET", "/info") => (200, info_answer(&root)),
            ("GET", "/images/json") => (200, r#"[{"Id":"sha256:app","RepoTags":["app:1"]}]"#.into()),
            _ => (404, format!(r#"{{"message":"the fake has no {method} {path}"}}"#)),
        });
        let settings = Settings {
            token: Some("a-long-enough-token".into()),
            spool: spool.to_path_buf(),
            max_payload,
            fast: true,
            tuning: Tuning::new(None, None, spool),
            failover_after: None,
            handover_timeout: Duration::from_secs(300),
        };
        (Agent::new(fake.engine(), settings), fake)
    }

    /// A body that fails the test if anything reads it.
    struct Untouched;

    impl Read for Untouched {
        fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
            panic!("the body was read");
        }
    }

    #[test]
    fn info_says_what_this_host_is_and_has() {
        let spool = TempDir::new("agent-info");
        let (agent, _fake) = agent(spool.path(), Some(1 << 30));
        let info = agent.info().unwrap();
        assert_eq!(info.arch, "x86_64");
        assert_eq!(info.images.len(), 1);
        assert_eq!(info.images[0].tags, ["app:1"]);
        assert_eq!(info.max_payload_bytes, Some(1 << 30));
        assert!(!info.busy);
        assert!(info.spool_free_bytes > 0);
    }

    #[test]
    fn a_bad_name_or_an_oversized_payload_is_refused_before_the_body_is_read() {
        let spool = TempDir::new("agent-refuse");
        let (agent, fake) = agent(spool.path(), Some(1 << 20));
        let bad_name = agent.restore(&mut Untouched, Some(10), Some("../etc"), None, false).unwrap_err();
        assert_eq!(bad_name.status, 400);
        let too_large = agent.restore(&mut Untouched, Some(2 << 20), Some("web"), Some("m1"), true).unwrap_err();
        assert_eq!(too_large.status, 413);
        assert!(too_large.error.message.contains("--max-payload"), "{}", too_large.error);
        assert!(!fake.lines().iter().any(|l| l.contains("/containers/")), "nothing created: {:?}", fake.lines());
    }

    #[test]
    fn a_restore_that_fails_is_remembered_for_a_late_asker() {
        let spool = TempDir::new("agent-outcome");
        let (agent, _fake) = agent(spool.path(), None);
        let garbage = b"not a payload at all".to_vec();
        let error = agent.restore(&mut garbage.as_slice(), Some(garbage.len() as u64), None, Some("m2"), true).unwrap_err();
        assert_eq!(error.status, 422);
        match agent.outcome("m2").unwrap() {
            Outcome::Failed { error } => assert!(error.contains("corrupt"), "{error}"),
            other => panic!("expected a failure, got {other:?}"),
        }
        assert_eq!(agent.outcome("never-sent").unwrap_err().status, 404);
        let kept: Vec<_> = std::fs::read_dir(spool.path().join("handovers")).unwrap().flatten().map(|e| e.file_name()).collect();
        assert_eq!(kept, ["m2.json"], "the spool keeps the record, nothing of the refused payload");
        let abort = agent.abort("m2").unwrap();
        assert!(matches!(abort, Outcome::Failed { .. }), "a failed migration stays failed: {abort:?}");
    }

    #[test]
    fn an_abort_before_the_payload_arrives_refuses_it_and_a_commit_needs_a_prepare() {
        let spool = TempDir::new("agent-abort");
        let (agent, fake) = agent(spool.path(), None);
        assert_eq!(agent.abort("m3").unwrap(), Outcome::Aborted);
        let late = agent.restore(&mut Untouched, Some(10), Some("web"), Some("m3"), true).unwrap_err();
        assert_eq!(late.status, 409, "{}", late.error);
        assert_eq!(agent.commit("m3").unwrap_err().status, 409);
        assert_eq!(agent.commit("never-prepared").unwrap_err().status, 404);
        assert_eq!(agent.abort("../escape").unwrap_err().status, 400);
        assert!(!fake.lines().iter().any(|l| l.contains("/containers/")), "{:?}", fake.lines());
    }

    #[test]
    fn only_containers_this_agent_restored_can_be_removed() {
        let spool = TempDir::new("agent-remove");
        let (agent, fake) = agent(spool.path(), None);
        let refused = agent.remove_restored("someone-elses").unwrap_err();
        assert_eq!(refused.status, 403);
        assert!(!fake.lines().iter().any(|l| l.starts_with("DELETE")), "{:?}", fake.lines());
    }
}
