//! The agent's half of the two-phase handover (see `migrate.rs` for the
//! source's): a payload is prepared — received, verified, its container
//! created and its files back — and runs only when the source commits. Every
//! step is recorded in the ledger on disk first, and a commit and an abort of
//! the same migration can never both win: each reads and changes the record
//! under the ledger lock.

use std::io::{BufReader, Read};
use std::time::Instant;

use super::agent::{Agent, Handled, WithStatus};
use super::ledger::{check_id, Record};
use super::{Outcome, RestoreReport};
use crate::error::{Error, Kind};
use crate::host;
use crate::migration::restore::{self, Prepared};
use crate::units::seconds_since;

/// Finished handovers are remembered this long (30 days): a source that
/// comes back asks what became of its commit, and must get the truth.
pub(super) const RECORDS_KEPT_SECS: u64 = 30 * 24 * 3600;
/// A commit whose agent died mid-start is judged by the container's state
/// once dockerd has had this long to finish the start it was asked for.
const START_SETTLES_SECS: u64 = 60;

/// What the receiving thread tells the one creating the container early.
enum Note {
    Sealed(Box<crate::payload::Manifest>),
    Written(String),
}

impl Agent {
    /// Unpacks into the ledger's folder for `id`, verifies, and prepares.
    pub(super) fn receive_and_prepare(
        &self,
        body: &mut dyn Read,
        name: Option<&str>,
        free: u64,
        id: &str,
        caller: Option<&crate::identity::Peer>,
    ) -> Handled<(RestoreReport, Prepared)> {
        let verifier = self.settings.verifier.for_peer(caller.map(|c| &c.fingerprint));
        let options = restore::Options { name, verify: &verifier, ..self.restore_options(Some(self.size_limit(free))) };
        let dir = self.ledger.payload_dir(id);
        let info = self.engine.info()?;
        let started = Instant::now();
        let body = BufReader::with_capacity(self.settings.tuning.io_buffer, body);
        let resolve = self.resolver(caller);
        // The container is created, from the sealed leading manifest, while
        // the rest of the payload arrives, and the app's files (whose
        // archives lead the payload) are put in as soon as they are here; it
        // runs only once all of it has been checked and the source commits.
        let (notes, noted) = std::sync::mpsc::channel::<Note>();
        let (engine, board, payload_dir) = (&self.engine, options.board, dir.as_path());
        let (unpacked, early) = std::thread::scope(|scope| {
            let creator = scope.spawn(move || {
                let Ok(Note::Sealed(manifest)) = noted.recv() else { return None };
                let mut early = restore::create_early(engine, &manifest, id, board)?;
                let mut awaited: std::collections::BTreeSet<&str> =
                    manifest.rootfs.archives.iter().map(|a| a.entry.as_str()).collect();
                while !awaited.is_empty() {
                    match noted.recv() {
                        Ok(Note::Written(entry)) => awaited.remove(entry.as_str()),
                        Ok(Note::Sealed(_)) => false,
                        Err(_) => return Some(early),
                    };
                }
                if !manifest.rootfs.archives.is_empty() {
                    early.put_files(payload_dir, &manifest);
                }
                Some(early)
            });
            let on_arrival = move |arrived: crate::payload::Arrived<'_>| {
                let note = match arrived {
                    crate::payload::Arrived::Sealed(manifest) => Note::Sealed(Box::new(manifest.clone())),
                    crate::payload::Arrived::Written(entry) => Note::Written(entry.to_string()),
                };
                let _ = notes.send(note);
            };
            let receive = crate::payload::Receive {
                base: Some(&resolve),
                keep_partial: true,
                on_arrival: Some(&on_arrival),
                ..Default::default()
            };
            let unpacked = restore::unpack_verified(body, &dir, &info, &options, &receive).inspect_err(|_| {
                // What arrived from this peer before the stream broke is kept,
                // so that its next attempt sends only the rest.
                if let Some(container) = receive.sealed_container.get()
                    && dir.exists()
                {
                    self.kept.keep_partial(&super::agent::sender_name(caller), container, &dir);
                }
            });
            drop(receive);
            drop(on_arrival);
            (unpacked, creator.join().ok().flatten())
        });
        // A refused payload's early container goes with `early`; a prepared
        // one is in the ledger from here on.
        let prepared = unpacked.and_then(|unpacked| {
            let unpack_secs = seconds_since(started);
            let started = Instant::now();
            restore::prepare_with(&self.engine, &info, &dir, &unpacked.manifest, &options, early)
                .inspect_err(|_| {
                    let _ = std::fs::remove_dir_all(&dir);
                })
                .map(|prepared| (prepared, unpacked, unpack_secs, seconds_since(started)))
        });
        let (prepared, unpacked, unpack_secs, prepare_secs) = prepared?;
        let report = RestoreReport {
            container: prepared.container.clone(),
            id: prepared.id.clone(),
            mode: prepared.mode.as_str().into(),
            unpack_secs,
            prepare_secs,
            raw_bytes: unpacked.raw_bytes,
            compressed_bytes: unpacked.compressed_bytes,
            peak_rss_kib: host::peak_rss_kib(),
            restore_secs: 0.0,
            criu_restore_secs: 0.0,
        };
        Ok((report, prepared))
    }

    /// Starts migration `id`'s prepared container. Answers its report; a
    /// commit repeated after the app runs answers the same report. `caller`
    /// (the peer that prepared it: ids are scoped per peer) may remove it later.
    pub(crate) fn commit(&self, id: &str, caller: Option<&crate::identity::Peer>) -> Handled<RestoreReport> {
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
        let info = self.engine_info()?;
        let result = restore::commit(&self.engine, &info, &prepared, self.settings.fast);
        let _ledger = self.ledger_lock.lock().unwrap_or_else(|p| p.into_inner());
        // The used payload (the app's whole memory: unlinking it takes tens of
        // milliseconds) is removed by `tidy_handovers`, not while the source
        // waits for this answer with its app down.
        match result {
            Ok(restored) => {
                self.record_restored(&restored.container, &restored.id, caller);
                // It runs here: the copies kept for its deltas have served.
                self.kept.forget(&super::agent::sender_name(caller), &restored.container);
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
        check_id(id)?;
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
    pub(super) fn discard(&self, id: &str, prepared: &Prepared) {
        log::info!("discarding migration {id}: removing the unstarted {}", prepared.container);
        if let Err(e) = restore::discard(&self.engine, prepared) {
            log::warn!("could not remove the prepared container {}: {e}", prepared.id);
        }
        let _ = std::fs::remove_dir_all(self.ledger.payload_dir(id));
    }

    fn known(&self, id: &str) -> Handled<Record> {
        check_id(id)?;
        self.ledger.get(id).ok_or_else(|| Error::new(Kind::NotFound, format!("no migration {id} is known here")).with_status(404))
    }

    /// Settles what needs no client: prepared containers past their expiry
    /// are discarded, receipts an agent died in are failed, commits an agent
    /// died in are judged by the container's state, and finished records are
    /// forgotten after 30 days. Run at start and then every few seconds.
    pub(crate) fn tidy_handovers(&self) {
        let now = host::unix_now();
        for (id, record) in self.ledger.list() {
            if matches!(record.outcome, Outcome::Restored { .. } | Outcome::Failed { .. } | Outcome::Aborted) {
                let _ = std::fs::remove_dir_all(self.ledger.payload_dir(&id));
            }
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
                        self.remove_early_container(&id);
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

    /// Removes the container created while the payload of `id` arrived, if
    /// the agent stopped before its prepare ended (it never ran).
    fn remove_early_container(&self, id: &str) {
        let name = restore::early_name(id);
        if self.engine.inspect_container(&name).is_ok_and(|found| !found.state.running) {
            log::info!("removing {name}, created for migration {id}, whose payload never arrived whole");
            if let Err(e) = self.engine.remove_container(&name, true) {
                log::warn!("could not remove {name}: {e}");
            }
        }
    }

    /// An agent stopped while it started a committed container: dockerd may
    /// still finish that start, so the container's own state decides.
    fn judge_interrupted_commit(&self, id: &str, record: Record) {
        let Some(prepared) = record.prepared else { return };
        let state = self.engine.inspect_container(&prepared.id).map(|c| c.state);
        let _ledger = self.ledger_lock.lock().unwrap_or_else(|p| p.into_inner());
        match state {
            Ok(state) if state.running => {
                let report = RestoreReport { container: prepared.container.clone(), id: prepared.id.clone(), mode: prepared.mode.as_str().into(), ..RestoreReport::default() };
                self.record_restored(&prepared.container, &prepared.id, None);
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

    pub(crate) fn outcome(&self, id: &str) -> Handled<Outcome> {
        Ok(self.known(id)?.outcome)
    }
}
