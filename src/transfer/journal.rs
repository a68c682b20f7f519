//! The source's journal of migrations under way: written before the app is
//! frozen and at every phase after, so that a ferry killed at any moment
//! (an OOM kill, an init script's timeout, a reboot) leaves a record that
//! `ferry recover` settles.
//!
//! ```text
//! <work dir>/journal/<id>.json   one migration (an Entry)
//! ```

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{io_error, Error, Kind, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Phase {
    /// About to freeze: the app may be frozen or dumped, nothing was sent.
    Checkpointing,
    /// The checkpoint is taken (the app is stopped here) and on its way; the
    /// peer may prepare it but will not run it: no commit was sent.
    Transferring,
    /// The commit may have been sent: only the peer knows whether the app
    /// runs there, so this host must not run it until the peer says.
    Committing,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Entry {
    pub id: String,
    pub container: String,
    pub container_id: String,
    /// The peer's agent, HOST:PORT.
    pub peer: String,
    pub phase: Phase,
    /// The checkpoint's job folder, once taken: what the app is started from
    /// again here if the peer did not start it.
    #[serde(default)]
    pub checkpoint: Option<PathBuf>,
    pub fast: bool,
    pub started_unix: u64,
}

pub(crate) struct Journal {
    dir: PathBuf,
}

impl Journal {
    pub(crate) fn new(work_dir: &Path) -> Journal {
        Journal { dir: work_dir.join("journal") }
    }

    /// Writes `entry` durably (temporary file, sync, rename, sync the folder):
    /// what is recorded survives a crash the moment this returns.
    pub(crate) fn record(&self, entry: &Entry) -> Result<()> {
        let text = serde_json::to_vec_pretty(entry).map_err(|e| Error::new(Kind::Failure, e.to_string()))?;
        crate::host::write_durably(&self.dir, &format!("{}.json", entry.id), &text)
            .map_err(|e| io_error(format!("recording migration {} in {}", entry.id, self.dir.display()), e))
    }

    pub(crate) fn remove(&self, id: &str) {
        let _ = fs::remove_file(self.dir.join(format!("{id}.json")));
    }

    /// Every unfinished migration, oldest first.
    pub(crate) fn list(&self) -> Vec<Entry> {
        let Ok(files) = fs::read_dir(&self.dir) else { return Vec::new() };
        let mut entries: Vec<Entry> = files
            .flatten()
            .filter(|f| f.file_name().to_string_lossy().ends_with(".json") && !f.file_name().to_string_lossy().starts_with('.'))
            .filter_map(|f| serde_json::from_slice(&fs::read(f.path()).ok()?).ok())
            .collect();
        entries.sort_by_key(|e| e.started_unix);
        entries
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::TempDir;

    #[test]
    fn entries_survive_as_written_and_go_when_removed() {
        let work = TempDir::new("journal");
        let journal = Journal::new(work.path());
        let mut entry = Entry {
            id: "ab12".into(),
            container: "web".into(),
            container_id: "c1".into(),
            peer: "127.0.0.1:7070".into(),
            phase: Phase::Checkpointing,
            checkpoint: None,
            fast: true,
            started_unix: 1,
        };
        journal.record(&entry).unwrap();
        entry.phase = Phase::Committing;
        entry.checkpoint = Some(work.path().join("checkpoint-1"));
        journal.record(&entry).unwrap();
        let listed = journal.list();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].phase, Phase::Committing);
        assert_eq!(listed[0].checkpoint, entry.checkpoint);
        journal.remove("ab12");
        assert!(journal.list().is_empty());
    }
}
