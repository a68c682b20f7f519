//! An agent's snapshot store: the periodic snapshots peers send with
//! `ferry replicate`, kept on disk verified, the newest N per container.
//!
//! ```text
//! <spool>/snapshots/<container>/<generation, 20 digits>/   one verified snapshot
//!     snapshot.json  manifest.json  manifest.sig  checkpoint/…  rootfs/…
//! <spool>/snapshots/.incoming-*/                           one being received
//! <spool>/snapshots/<container>/.restoring-*/              one being failed over
//! <spool>/failovers/<container>.json                       the last failover of it
//! ```
//!
//! A snapshot becomes visible only once it is whole and verified: it is
//! unpacked (every digest checked) into `.incoming-*`, written to disk
//! (fsync), then renamed into place. Listing reads only the numbered folders,
//! so a partial or damaged snapshot is never listed or used. The manifest and
//! its seal are kept as they came: before a failover restores a snapshot, the
//! seal is checked again and every file hashed again against the manifest
//! (a disk can be altered after a snapshot was verified); one that fails is
//! set aside as `.damaged-<generation>`, never listed nor used again.

use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{io_error, Error, Kind, Result};
use crate::host;
use crate::payload::{self, Manifest};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct SnapshotInfo {
    /// `<container>@<generation>`, what `ferry failover --snapshot` takes.
    pub id: String,
    pub container: String,
    pub generation: u64,
    pub source_host: String,
    #[serde(default)]
    pub source_agent: Option<String>,
    pub taken_unix: u64,
    pub received_unix: u64,
    pub raw_bytes: u64,
    pub compressed_bytes: u64,
    /// Every entry's digest matched when it was received.
    pub verified: bool,
    /// The fingerprint of the peer that sent it (over TLS): only it may send
    /// more snapshots of this container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sender: Option<String>,
}

/// The record of a container failed over from its snapshots on this host.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Failover {
    pub container: String,
    pub generation: u64,
    pub source_host: String,
    #[serde(default)]
    pub source_agent: Option<String>,
    pub restored_unix: u64,
    pub container_id: String,
    /// How old the snapshot was when it was restored: the state lost.
    pub snapshot_age_secs: u64,
    pub restore_secs: f64,
    /// Whether the failed-over container still runs here (filled in when asked).
    #[serde(default)]
    pub running: bool,
}

pub(crate) struct Store {
    root: PathBuf,
    failovers: PathBuf,
}

const META: &str = "snapshot.json";

impl Store {
    pub(crate) fn new(spool: &Path) -> Store {
        Store { root: spool.join("snapshots"), failovers: spool.join("failovers") }
    }

    /// Removes what an agent stopped mid-transfer or mid-failover left behind.
    pub(crate) fn clean_partial(&self) {
        let Ok(entries) = fs::read_dir(&self.root) else { return };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(".incoming-") {
                log::info!("removing the partial snapshot {}", entry.path().display());
                let _ = fs::remove_dir_all(entry.path());
            }
        }
    }

    /// Receives one snapshot: unpacks and verifies it, writes it to disk, makes
    /// it visible, then keeps only the newest `keep` of its container.
    pub(crate) fn receive(
        &self,
        body: impl Read,
        host_arch: &str,
        (limit, keep): (u64, usize),
        verify: &dyn payload::Verify,
        sender: Option<&str>,
        receive: &payload::Receive<'_>,
    ) -> Result<SnapshotInfo> {
        fs::create_dir_all(&self.root).map_err(|e| io_error(self.root.display(), e))?;
        let incoming = host::JobDir::reserve(&self.root, ".incoming").map_err(|e| io_error(self.root.display(), e))?;
        // A delta is rebuilt here: every snapshot is stored whole, so that
        // retention can delete any of them without breaking another.
        let unpacked = payload::unpack_with(body, incoming.path(), host_arch, Some(limit), verify, receive)?;
        let manifest = unpacked.manifest;
        let Some(tag) = manifest.snapshot.clone() else {
            return Err(Error::new(Kind::BadPayload, "this payload is not a snapshot (no generation): send it to /v1/restore"));
        };
        if let Some(other) = self.of(&manifest.container.name).into_iter().find(|s| s.sender.as_deref() != sender) {
            return Err(Error::new(
                Kind::Refused,
                format!(
                    "snapshots of '{}' here come from another peer ({}): only it may send more",
                    manifest.container.name,
                    other.sender.as_deref().unwrap_or("a peer without TLS")
                ),
            ));
        }
        let info = SnapshotInfo {
            id: format!("{}@{}", manifest.container.name, tag.generation),
            container: manifest.container.name.clone(),
            generation: tag.generation,
            source_host: manifest.source.hostname.clone(),
            source_agent: tag.source_agent,
            taken_unix: manifest.created_unix,
            received_unix: host::unix_now(),
            raw_bytes: unpacked.raw_bytes,
            compressed_bytes: unpacked.compressed_bytes,
            verified: true,
            sender: sender.map(str::to_string),
        };
        let manifest_path = incoming.path().join(payload::MANIFEST_ENTRY);
        fs::write(&manifest_path, &unpacked.manifest_json).map_err(|e| io_error(manifest_path.display(), e))?;
        if let Some(seal) = &unpacked.seal {
            write_json(&incoming.path().join(payload::SEAL_ENTRY), seal)?;
        }
        write_json(&incoming.path().join(META), &info)?;
        sync_tree(incoming.path()).map_err(|e| io_error(format!("writing {} to disk", incoming.path().display()), e))?;

        let container_dir = self.root.join(&info.container);
        fs::create_dir_all(&container_dir).map_err(|e| io_error(container_dir.display(), e))?;
        let target = container_dir.join(format!("{:020}", info.generation));
        if target.exists() {
            return Err(Error::new(
                Kind::Refused,
                format!("snapshot {} is already stored here: generations only grow", info.id),
            ));
        }
        fs::rename(incoming.path(), &target).map_err(|e| io_error(target.display(), e))?;
        incoming.keep();
        let _ = File::open(&container_dir).and_then(|d| d.sync_all());
        self.retain(&info.container, keep);
        Ok(info)
    }

    /// Every stored snapshot, by container then generation.
    pub(crate) fn list(&self) -> Vec<SnapshotInfo> {
        let mut all = Vec::new();
        let Ok(containers) = fs::read_dir(&self.root) else { return all };
        for container in containers.flatten() {
            if container.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            all.extend(self.of(&container.file_name().to_string_lossy()));
        }
        all.sort_by(|a, b| (&a.container, a.generation).cmp(&(&b.container, b.generation)));
        all
    }

    /// The verified snapshots of one container, oldest first.
    pub(crate) fn of(&self, container: &str) -> Vec<SnapshotInfo> {
        let Ok(entries) = fs::read_dir(self.root.join(container)) else { return Vec::new() };
        let mut found: Vec<SnapshotInfo> = entries
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().bytes().all(|b| b.is_ascii_digit()))
            .filter_map(|e| fs::read(e.path().join(META)).ok())
            .filter_map(|bytes| serde_json::from_slice(&bytes).ok())
            .collect();
        found.sort_by_key(|s: &SnapshotInfo| s.generation);
        found
    }

    fn dir(&self, container: &str, generation: u64) -> PathBuf {
        self.root.join(container).join(format!("{generation:020}"))
    }

    /// Where a stored snapshot's files are (a delta's base may be read from there).
    pub(crate) fn path_of(&self, container: &str, generation: u64) -> PathBuf {
        self.dir(container, generation)
    }

    /// Keeps the newest `keep` snapshots of a container, deletes the rest.
    fn retain(&self, container: &str, keep: usize) {
        let stored = self.of(container);
        let excess = stored.len().saturating_sub(keep.max(1));
        for old in &stored[..excess] {
            log::debug!("retention: deleting snapshot {}", old.id);
            let _ = fs::remove_dir_all(self.dir(container, old.generation));
        }
    }

    /// Takes a snapshot out of the store for a failover: the newest verified
    /// one, or `generation`. Renamed aside so that retention cannot delete it
    /// meanwhile; put back if the failover fails. Its seal must still satisfy
    /// `verify` and its files the manifest, else it is set aside for good.
    pub(crate) fn checkout(&self, container: &str, generation: Option<u64>, verify: &dyn payload::Verify) -> Result<Checkout> {
        let stored = self.of(container);
        let chosen = match generation {
            Some(g) => stored.into_iter().find(|s| s.generation == g),
            None => stored.into_iter().last(),
        };
        let Some(info) = chosen else {
            return Err(Error::new(
                Kind::NotFound,
                format!(
                    "no verified snapshot of '{container}'{} here — `ferry snapshots` lists them",
                    generation.map(|g| format!(" at generation {g}")).unwrap_or_default()
                ),
            ));
        };
        let stored_at = self.dir(container, info.generation);
        let aside = self.root.join(container).join(format!(".restoring-{:020}", info.generation));
        fs::rename(&stored_at, &aside).map_err(|e| io_error(stored_at.display(), e))?;
        match check_stored(&aside, verify) {
            Ok(manifest) => Ok(Checkout { info, manifest, aside, stored_at, used: false }),
            Err(error) => {
                let damaged = self.root.join(container).join(format!(".damaged-{:020}", info.generation));
                let _ = fs::remove_dir_all(&damaged);
                let _ = fs::rename(&aside, &damaged);
                log::error!("snapshot {} failed its check and is set aside in {}: {error}", info.id, damaged.display());
                Err(Error::new(
                    Kind::BadPayload,
                    format!("snapshot {} was altered on disk since it was received ({}): it is never used", info.id, error.message),
                ))
            }
        }
    }

    pub(crate) fn record_failover(&self, failover: &Failover) -> Result<()> {
        fs::create_dir_all(&self.failovers).map_err(|e| io_error(self.failovers.display(), e))?;
        let path = self.failovers.join(format!("{}.json", failover.container));
        let temporary = path.with_extension("json.new");
        write_json(&temporary, failover)?;
        let _ = File::open(&temporary).and_then(|f| f.sync_all());
        fs::rename(&temporary, &path).map_err(|e| io_error(path.display(), e))
    }

    pub(crate) fn failovers(&self) -> Vec<Failover> {
        let Ok(entries) = fs::read_dir(&self.failovers) else { return Vec::new() };
        entries
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
            .filter_map(|e| fs::read(e.path()).ok())
            .filter_map(|bytes| serde_json::from_slice(&bytes).ok())
            .collect()
    }
}

/// A snapshot taken out of the store; goes back unless [`Checkout::used`].
pub(crate) struct Checkout {
    pub info: SnapshotInfo,
    pub manifest: Manifest,
    aside: PathBuf,
    stored_at: PathBuf,
    used: bool,
}

impl Checkout {
    pub(crate) fn path(&self) -> &Path {
        &self.aside
    }

    /// The snapshot was restored: delete it.
    pub(crate) fn used(mut self) {
        self.used = true;
        let _ = fs::remove_dir_all(&self.aside);
    }
}

impl Drop for Checkout {
    fn drop(&mut self) {
        if !self.used {
            // The portable restore moves the images away: a snapshot that
            // lost them is no longer whole, and must not be listed again.
            if self.aside.join(payload::CHECKPOINT_DIR).exists() {
                let _ = fs::rename(&self.aside, &self.stored_at);
            } else {
                let _ = fs::remove_dir_all(&self.aside);
            }
        }
    }
}

/// A stored snapshot's manifest, once its seal and every file check out.
fn check_stored(dir: &Path, verify: &dyn payload::Verify) -> Result<Manifest> {
    let manifest_json = fs::read(dir.join(payload::MANIFEST_ENTRY)).map_err(|e| io_error(dir.display(), e))?;
    let seal = match fs::read(dir.join(payload::SEAL_ENTRY)) {
        Ok(bytes) => Some(
            serde_json::from_slice::<payload::Seal>(&bytes).map_err(|e| Error::new(Kind::BadPayload, format!("its seal: {e}")))?,
        ),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(io_error(dir.display(), e)),
    };
    verify.verify(&manifest_json, seal.as_ref()).map_err(|why| Error::new(Kind::BadPayload, why))?;
    let manifest: Manifest =
        serde_json::from_slice(&manifest_json).map_err(|e| Error::new(Kind::BadPayload, format!("its manifest: {e}")))?;
    manifest.validate()?;
    payload::verify_tree(dir, &manifest, &[payload::MANIFEST_ENTRY, payload::SEAL_ENTRY, META])?;
    Ok(manifest)
}

fn write_json(path: &Path, value: &impl Serialize) -> Result<()> {
    let bytes = serde_json::to_vec_pretty(value).map_err(|e| Error::new(Kind::Failure, e.to_string()))?;
    fs::write(path, bytes).map_err(|e| io_error(path.display(), e))
}

/// fsync every file and folder below `dir`, so a snapshot that is visible
/// survives a power cut.
fn sync_tree(dir: &Path) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            sync_tree(&entry.path())?;
        } else {
            File::open(entry.path())?.sync_all()?;
        }
    }
    File::open(dir)?.sync_all()
}
