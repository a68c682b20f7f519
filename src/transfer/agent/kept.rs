//! The copies an agent keeps of a peer's container so that its next upload
//! can be a delta (issue 14): the blocks it offers, and where a delta's
//! copies are read from.
//!
//! ```text
//! <spool>/kept/<sender>/<container>/staged/    the last pre-copy round: whole, verified
//! <spool>/kept/<sender>/<container>/partial/   what arrived of an upload whose connection broke
//! ```
//!
//! plus the sender's newest snapshot of the container (the snapshot store).
//! `<sender>` is the peer's key fingerprint (`insecure` without TLS): a peer
//! is offered, and a delta of it may copy, only blocks of copies it sent
//! itself. A kept copy lives [`KEPT_FOR`] from when it began to arrive (its
//! folder's time), and goes as soon as the container runs here; never more
//! than these two per sender and container.
//!
//! A partial copy is a prefix of what the source sent: every whole file in it
//! passed its digest, the one that was cut holds the bytes that came. Nothing
//! of it is trusted by a delta — each block is hashed again as it is copied,
//! and every rebuilt file checked against the signed manifest.

use std::fs;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use super::{Agent, Handled, WithStatus};
use crate::error::{io_error, Error, Kind};
use crate::host;
use crate::identity::Peer;
use crate::payload::{self, delta::Base};
use crate::transfer::{BlockOffer, StageReport};

/// How long a kept copy waits for the next upload of its container.
pub(crate) const KEPT_FOR: Duration = Duration::from_secs(15 * 60);

const STAGED: &str = "staged";
const PARTIAL: &str = "partial";

/// A base built from some copies on disk, and what it was built from.
pub(crate) type CachedBase = (Vec<(PathBuf, SystemTime)>, Arc<Base>);

pub(crate) struct Kept {
    root: PathBuf,
}

impl Kept {
    pub(crate) fn new(spool: &Path) -> Kept {
        Kept { root: spool.join("kept") }
    }

    fn dir(&self, sender: &str, container: &str) -> PathBuf {
        self.root.join(sender).join(container)
    }

    /// The kept copies of `container` from `sender` (staged first), expired ones removed.
    fn copies(&self, sender: &str, container: &str) -> Vec<(&'static str, PathBuf)> {
        let dir = self.dir(sender, container);
        let mut found = Vec::new();
        for kind in [STAGED, PARTIAL] {
            let path = dir.join(kind);
            let Ok(meta) = fs::metadata(&path) else { continue };
            let age = meta.modified().ok().and_then(|m| m.elapsed().ok()).unwrap_or_default();
            if age > KEPT_FOR {
                log::info!("removing the expired {kind} copy of {container} ({})", path.display());
                let _ = fs::remove_dir_all(&path);
            } else {
                found.push((kind, path));
            }
        }
        found
    }

    /// Keeps what arrived of a broken upload as the partial copy.
    pub(crate) fn keep_partial(&self, sender: &str, container: &str, from: &Path) {
        let dir = self.dir(sender, container);
        let target = dir.join(PARTIAL);
        let _ = fs::remove_dir_all(&target);
        let moved = fs::create_dir_all(&dir).and_then(|()| fs::rename(from, &target));
        match moved {
            Ok(()) => log::info!("kept what arrived of {container} for the next attempt ({})", target.display()),
            Err(e) => {
                log::warn!("could not keep the partial upload of {container}: {e}");
                let _ = fs::remove_dir_all(from);
            }
        }
    }

    /// Makes a whole, verified upload the staged copy; the partial one goes.
    fn stage(&self, sender: &str, container: &str, from: &Path) -> std::io::Result<()> {
        let dir = self.dir(sender, container);
        fs::create_dir_all(&dir)?;
        let target = dir.join(STAGED);
        let _ = fs::remove_dir_all(&target);
        fs::rename(from, &target)?;
        let _ = fs::remove_dir_all(dir.join(PARTIAL));
        Ok(())
    }

    /// The container runs here now: its copies have served. Removed on a
    /// thread of its own: unlinking a whole memory image takes tens of
    /// milliseconds, which a source waiting for the commit should not wait.
    pub(crate) fn forget(&self, sender: &str, container: &str) {
        let dir = self.dir(sender, container);
        let aside = self.root.join(format!(".forget-{sender}-{container}"));
        if fs::rename(&dir, &aside).is_ok() {
            std::thread::spawn(move || {
                let _ = fs::remove_dir_all(aside);
            });
        }
    }

    /// Removes every expired copy (and folders left empty).
    pub(crate) fn tidy(&self) {
        let Ok(senders) = fs::read_dir(&self.root) else { return };
        for sender in senders.flatten() {
            if sender.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            let Ok(containers) = fs::read_dir(sender.path()) else { continue };
            for container in containers.flatten() {
                let (sender_name, container_name) =
                    (sender.file_name().to_string_lossy().into_owned(), container.file_name().to_string_lossy().into_owned());
                if !container_name.starts_with('.') && self.copies(&sender_name, &container_name).is_empty() {
                    let _ = fs::remove_dir_all(container.path());
                }
            }
        }
    }
}

/// How a sender is named in the kept copies and snapshots.
pub(crate) fn sender_name(caller: Option<&Peer>) -> String {
    caller.map_or_else(|| "insecure".to_string(), |peer| peer.fingerprint.hex().to_string())
}

impl Agent {
    /// The copies a delta of `container` from `caller` may refer to: the
    /// caller's newest snapshot of it here, and its kept copies.
    fn base_dirs(&self, container: &str, caller: Option<&Peer>) -> (Vec<PathBuf>, String) {
        let mut dirs = Vec::new();
        let mut labels = Vec::new();
        let fingerprint = caller.map(|c| c.fingerprint.to_string());
        if let Some(newest) = self.store.of(container).into_iter().rev().find(|s| s.sender == fingerprint) {
            dirs.push(self.store.path_of(container, newest.generation));
            labels.push(format!("snapshot {}", newest.id));
        }
        for (kind, path) in self.kept.copies(&sender_name(caller), container) {
            dirs.push(path);
            labels.push(kind.to_string());
        }
        (dirs, labels.join(", "))
    }

    /// The block index of `dirs`, from the cache when they did not change.
    fn base_of(&self, dirs: Vec<PathBuf>) -> std::io::Result<Arc<Base>> {
        let stamps: Vec<(PathBuf, SystemTime)> = dirs
            .into_iter()
            .map(|d| {
                let stamp = fs::metadata(&d).and_then(|m| m.modified()).unwrap_or(SystemTime::UNIX_EPOCH);
                (d, stamp)
            })
            .collect();
        let mut cache = self.base_cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((key, base)) = cache.as_ref()
            && *key == stamps
        {
            return Ok(base.clone());
        }
        let started = Instant::now();
        let dirs: Vec<PathBuf> = stamps.iter().map(|(d, _)| d.clone()).collect();
        let base = Arc::new(Base::index(&dirs, payload::delta::BLOCK_SIZE)?);
        log::info!("indexed {} blocks of {} copies in {:.2}s", base.len(), dirs.len(), started.elapsed().as_secs_f64());
        *cache = Some((stamps, base.clone()));
        Ok(base)
    }

    /// `GET /v1/blocks?name=N`: the blocks this agent holds of `container`
    /// from the caller, for its next upload to be a delta.
    pub(crate) fn blocks(&self, container: &str, caller: Option<&Peer>) -> Handled<BlockOffer> {
        check_name(container)?;
        self.kept.tidy();
        let (dirs, label) = self.base_dirs(container, caller);
        if dirs.is_empty() {
            return Ok(BlockOffer { block_size: payload::delta::BLOCK_SIZE, base: String::new(), blocks: 0, ids: String::new() });
        }
        let base = self.base_of(dirs).map_err(|e| io_error(format!("indexing the copies of {container}"), e))?;
        use base64::Engine as _;
        let ids = base64::engine::general_purpose::STANDARD.encode(base.ids());
        Ok(BlockOffer { block_size: base.block_size, base: label, blocks: base.len(), ids })
    }

    /// What resolves the base of a delta from `caller`, once its manifest names the container.
    pub(crate) fn resolver<'a>(&'a self, caller: Option<&'a Peer>) -> impl Fn(&str) -> Option<Arc<Base>> + 'a {
        move |container: &str| {
            let (dirs, _) = self.base_dirs(container, caller);
            if dirs.is_empty() {
                return None;
            }
            self.base_of(dirs).inspect_err(|e| log::warn!("cannot index the copies of {container}: {e}")).ok()
        }
    }

    /// `POST /v1/stage`: a pre-copy round. The payload is received and
    /// verified like any other, and kept as the staged copy of its container
    /// for the next upload's delta; no container is created.
    pub(crate) fn stage(&self, body: &mut dyn Read, declared: Option<u64>, caller: Option<&Peer>) -> Handled<StageReport> {
        let free = self.spool_room(declared)?;
        let limit = self.size_limit(free).bytes;
        let info = self.engine_info()?;
        let verifier = self.settings.verifier.for_peer(caller.map(|c| &c.fingerprint));
        let sender = sender_name(caller);
        // `receive-*`: what an agent stopped mid-transfer left is removed at its next start.
        let incoming =
            host::JobDir::reserve(&self.settings.spool, "receive-stage").map_err(|e| io_error(self.settings.spool.display(), e))?;
        let dest = incoming.path().to_path_buf();
        let resolve = self.resolver(caller);
        let receive = payload::Receive { base: Some(&resolve), keep_partial: true, ..Default::default() };
        let started = Instant::now();
        let body = BufReader::with_capacity(self.settings.tuning.io_buffer, body);
        let unpacked = match payload::unpack_with(body, &dest, &info.architecture, Some(limit), &verifier, &receive) {
            Ok(unpacked) => unpacked,
            Err(error) => {
                if let Some(container) = receive.sealed_container.get()
                    && dest.exists()
                {
                    self.kept.keep_partial(&sender, container, &dest);
                }
                return Err(crate::error::Error::from(error).into());
            }
        };
        let container = unpacked.manifest.container.name.clone();
        self.kept.stage(&sender, &container, &dest).map_err(|e| io_error(format!("keeping the staged copy of {container}"), e))?;
        Ok(StageReport {
            container,
            unpack_secs: started.elapsed().as_secs_f64(),
            raw_bytes: unpacked.raw_bytes,
            compressed_bytes: unpacked.compressed_bytes,
        })
    }
}

fn check_name(name: &str) -> Handled<()> {
    if payload::is_name(name) {
        Ok(())
    } else {
        Err(Error::new(Kind::Usage, format!("{name:?} is not a container name")).with_status(400))
    }
}
