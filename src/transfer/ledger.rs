//! The agent's record of every handover, on disk, so that an agent restarted
//! between prepare and commit still answers truthfully:
//!
//! ```text
//! <spool>/handovers/<id>.json      what became of migration <id> (a Record)
//! <spool>/handovers/<id>.payload/  its unpacked payload, until started or discarded
//! ```
//!
//! Each record is written with `host::write_durably`: a crash leaves the old
//! record or the new one, never half of one.

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::Outcome;
use crate::error::{io_error, Error, Kind, Result};
use crate::host;
use crate::migration::restore::Prepared;

/// What the agent knows of one migration.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Record {
    pub outcome: Outcome,
    /// The created, unstarted container while the outcome is `prepared` or `committing`.
    #[serde(default)]
    pub prepared: Option<Prepared>,
    /// A prepared container not committed by then is discarded.
    pub expires_unix: u64,
    pub updated_unix: u64,
}

pub(crate) struct Ledger {
    dir: PathBuf,
}

/// Migration ids are the client's; they name files here, so only a short
/// run of letters, digits and dashes is accepted.
pub(crate) fn valid_client_id(id: &str) -> bool {
    (1..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// What a client's migration id must be, as the agent answers it.
pub(crate) const CLIENT_ID_RULE: &str = "the migration id must be 1 to 64 letters, digits or dashes";

/// An id as the ledger keeps it: the client's, or over TLS the caller's
/// fingerprint (64 hex digits), a dash and the client's.
pub(crate) fn valid_id(id: &str) -> bool {
    (1..=129).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// Refuses an id the ledger would not keep (it names files).
pub(crate) fn check_id(id: &str) -> Result<()> {
    if valid_id(id) { Ok(()) } else { Err(Error::new(Kind::Usage, CLIENT_ID_RULE)) }
}

impl Ledger {
    pub(crate) fn new(spool: &Path) -> Ledger {
        Ledger { dir: spool.join("handovers") }
    }

    fn record_path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    pub(crate) fn payload_dir(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.payload"))
    }

    pub(crate) fn get(&self, id: &str) -> Option<Record> {
        let text = fs::read(self.record_path(id)).ok()?;
        serde_json::from_slice(&text).ok()
    }

    pub(crate) fn put(&self, id: &str, record: &Record) -> Result<()> {
        let text = serde_json::to_vec(record).map_err(|e| Error::new(Kind::Failure, e.to_string()))?;
        host::write_durably(&self.dir, &format!("{id}.json"), &text)
            .map_err(|e| io_error(format!("recording migration {id} in {}", self.dir.display()), e))
    }

    /// A record with `outcome`, keeping what the old one prepared.
    pub(crate) fn set(&self, id: &str, outcome: Outcome, prepared: Option<Prepared>, expires_unix: u64) -> Result<()> {
        self.put(id, &Record { outcome, prepared, expires_unix, updated_unix: host::unix_now() })
    }

    /// Every record, oldest first.
    pub(crate) fn list(&self) -> Vec<(String, Record)> {
        let Ok(entries) = fs::read_dir(&self.dir) else { return Vec::new() };
        let mut records: Vec<(String, Record)> = entries
            .flatten()
            .filter_map(|entry| {
                let name = entry.file_name().to_string_lossy().into_owned();
                let id = name.strip_suffix(".json").filter(|id| valid_id(id))?.to_string();
                Some((id.clone(), self.get(&id)?))
            })
            .collect();
        records.sort_by_key(|(_, record)| record.updated_unix);
        records
    }

    /// Forgets a finished migration and whatever of its payload is left.
    pub(crate) fn remove(&self, id: &str) {
        let _ = fs::remove_dir_all(self.payload_dir(id));
        let _ = fs::remove_file(self.record_path(id));
    }
}
