//! Settling the migrations a killed or cut-off `ferry migrate` left in the
//! journal, each by what the peer says — never by a guess:
//!
//! ```text
//! checkpointing  nothing was sent: if the app was stopped, start it again here
//! transferring   no commit was sent, so the peer never runs it: tell it to
//!                discard its copy, start the app again here from its checkpoint
//! committing     ask the peer: it runs there → remove the stopped source here;
//!                it did not and never will → start it again here; no answer →
//!                leave it stopped and say so (exit 10), to be asked again later
//! ```

use std::fs;
use std::time::Duration;

use serde::Serialize;

use super::client::Peer;
use super::journal::{Entry, Journal, Phase};
use super::migrate::{settle, Settled};
use crate::engine::Engine;
use crate::error::{Error, Kind, Result};
use crate::migration::checkpoint::start_again;

/// What became of one unfinished migration.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Settlement {
    pub id: String,
    pub container: String,
    pub peer: String,
    /// `peer` (the app runs there), `here` (it runs here again), or `unknown`.
    pub runs: &'static str,
    pub detail: String,
}

/// Settles every entry in the journal under `work_dir`, asking each peer for
/// at most `within`. Fails with `OutcomeUnknown` if a peer could not be asked.
pub(crate) fn recover(engine: &Engine, work_dir: &std::path::Path, token: Option<String>, within: Duration) -> Result<Vec<Settlement>> {
    let journal = Journal::new(work_dir);
    let mut settled = Vec::new();
    for entry in journal.list() {
        let peer = Peer::new(&entry.peer, token.clone(), Duration::from_secs(30), None);
        let (runs, detail) = match settle_one(engine, &peer, &entry, within) {
            Ok(done) => done,
            Err(error) => ("unknown", error.to_string()),
        };
        log::info!("migration {} of {} to {}: runs {runs} — {detail}", entry.id, entry.container, entry.peer);
        if runs != "unknown" {
            if let Some(dir) = &entry.checkpoint {
                let _ = fs::remove_dir_all(dir);
            }
            journal.remove(&entry.id);
        }
        settled.push(Settlement { id: entry.id.clone(), container: entry.container.clone(), peer: entry.peer.clone(), runs, detail });
    }
    Ok(settled)
}

fn settle_one(engine: &Engine, peer: &Peer, entry: &Entry, within: Duration) -> Result<(&'static str, String)> {
    let running_here = || engine.inspect_container(&entry.container_id).is_ok_and(|c| c.state.running);
    match entry.phase {
        Phase::Checkpointing if running_here() => Ok(("here", "it was never frozen".into())),
        Phase::Checkpointing => {
            // Killed mid-dump: the images may be incomplete; a cold start
            // loses the app's memory but does not leave it down.
            engine.start_container(&entry.container_id, None)?;
            Ok(("here", "it was stopped mid-checkpoint and was started afresh (its memory is lost)".into()))
        }
        Phase::Transferring => {
            if let Err(e) = peer.quick().abort(&entry.id) {
                log::warn!("could not tell {} to discard migration {} (it expires there by itself): {e}", entry.peer, entry.id);
            }
            start_here(engine, entry, "no commit was sent")
        }
        Phase::Committing => match settle(peer, &entry.id, within) {
            Settled::Restored(report) => {
                if let Err(e) = engine.remove_container(&entry.container_id, true) {
                    log::warn!("{} runs on {}, but the stopped source could not be removed: {e}", entry.container, entry.peer);
                }
                Ok(("peer", format!("it runs on {} as {}", entry.peer, crate::units::short_id(&report.id))))
            }
            Settled::NotStarted(reason) => start_here(engine, entry, &format!("the peer did not start it ({reason})")),
            Settled::Unknown => Err(Error::new(
                Kind::OutcomeUnknown,
                format!("{} does not answer: {} stays stopped here until it does", entry.peer, entry.container),
            )),
        },
    }
}

fn start_here(engine: &Engine, entry: &Entry, why: &str) -> Result<(&'static str, String)> {
    let Some(dir) = &entry.checkpoint else {
        return Err(Error::new(Kind::NotFound, format!("{why}, but the journal names no checkpoint for {}", entry.container)));
    };
    let info = engine.info()?;
    start_again(engine, &info, &entry.container_id, dir, entry.fast)
        .map_err(|e| e.context(format!("{why}; starting {} again here from {}", entry.container, dir.display())))?;
    Ok(("here", format!("{why}: started again here from its checkpoint")))
}
