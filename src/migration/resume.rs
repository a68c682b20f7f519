//! Starting a created container from CRIU images: place the images where
//! Docker looks, start, prove CRIU really restored, and remove every copy of
//! the images the start made.

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::criu_error;
use crate::engine::{Engine, Info};
use crate::error::{io_error, Error, Kind, Result};
use crate::units::short_id;

/// Starts container `id` from the CRIU images in `images`, proves that CRIU
/// really restored it, and cleans up every copy of the images the restore made.
///
/// Docker 20.10 answers 403 to `checkpoint-dir` on start, so the images go
/// into the container's own checkpoints folder. Docker then streams that
/// folder into containerd's content store, and containerd extracts it again:
/// two full copies of the app's memory, 2.1 s for 128 MiB here. The fast way
/// (`fast`) places the small image files there but each `pages-*.img` as a
/// relative symlink back into `images`: Docker's tar keeps the link, CRIU
/// follows it (an absolute link would be opened inside the container's root),
/// and the same restore takes 0.35 s. If the fast start fails it is retried
/// the portable way, with the files themselves.
pub(crate) fn start_from_checkpoint(engine: &Engine, info: &Info, id: &str, images: &Path, name: &str, fast: bool) -> Result<()> {
    let checkpoints = info.docker_root_dir.join("containers").join(id).join("checkpoints");
    let placed = checkpoints.join(name);
    fs::create_dir_all(&checkpoints).map_err(|e| io_error(checkpoints.display(), e))?;
    let clear = |placed: &Path| match fs::remove_dir_all(placed) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_error(placed.display(), e)),
        _ => Ok(()),
    };
    clear(&placed)?;
    if fast {
        let linked = place_linked(images, &placed)
            .map_err(|e| io_error(format!("placing the checkpoint in {}", placed.display()), e))
            .and_then(|()| start_placed(engine, info, id, name, &placed));
        match linked {
            Ok(()) => return Ok(()),
            Err(error) => {
                log::warn!("fast restore failed ({error}); retrying the portable way");
                clear(&placed)?;
            }
        }
    }
    crate::host::move_dir(images, &placed)
        .map_err(|e| io_error(format!("placing the checkpoint in {}", placed.display()), e))?;
    start_placed(engine, info, id, name, &placed)
}

/// Copies the small image files into `placed` and links each `pages-*.img`
/// back to `images` by a relative path that climbs to `/` from any depth.
fn place_linked(images: &Path, placed: &Path) -> io::Result<()> {
    let images = fs::canonicalize(images)?;
    let climb = "../".repeat(32);
    fs::create_dir(placed)?;
    for entry in fs::read_dir(&images)? {
        let entry = entry?;
        let file_name = entry.file_name();
        let target = placed.join(&file_name);
        if !entry.file_type()?.is_file() {
            return Err(io::Error::other(format!("{}: not a plain file", entry.path().display())));
        }
        if file_name.to_string_lossy().starts_with("pages-") {
            let absolute = images.join(&file_name);
            let relative = format!("{climb}{}", absolute.to_string_lossy().trim_start_matches('/'));
            std::os::unix::fs::symlink(relative, &target)?;
        } else {
            fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

/// Starts from the checkpoint already in `placed`, then removes `placed` and
/// containerd's extraction of it.
fn start_placed(engine: &Engine, info: &Info, id: &str, name: &str, placed: &Path) -> Result<()> {
    let leaks_before = containerd_extractions();
    // Filesystem timestamps are coarser than SystemTime: allow a second.
    let since = SystemTime::now() - Duration::from_secs(1);
    let started = engine.start_container(id, Some(name));
    // containerd extracts the checkpoint into $TMPDIR/ctrd-checkpoint* for every
    // restore, failed ones too, and never deletes it (containerd issue 10166).
    remove_extractions(&leaks_before, placed);
    // The images were read: remove them, through Docker when it knows them.
    let removed = match engine.checkpoint_delete(id, name) {
        Ok(()) => Ok(()),
        Err(_) => fs::remove_dir_all(placed),
    };
    started.map_err(|e| criu_error(short_id(id), "restore", e))?;
    if let Err(e) = removed {
        log::warn!("could not remove the used checkpoint {}: {e}", placed.display());
    }
    if restore_log(&info.docker_root_dir, id, since).is_none() {
        return Err(Error::new(
            Kind::Criu,
            format!(
                "container {} started but CRIU left no restore log: Docker cold-started it instead of restoring \
                 its state",
                short_id(id)
            ),
        ));
    }
    Ok(())
}

/// The folders where containerd's runc shim runs CRIU for container `id`
/// (its work dir: restore.log, stats-restore), most likely first: under the
/// engine's data root for Docker ≥ 20.10 with its own containerd, else under
/// a system containerd's root.
pub(crate) fn task_dirs(docker_root: &Path, id: &str) -> [PathBuf; 2] {
    [
        docker_root.join("containerd/daemon/io.containerd.runtime.v2.task/moby").join(id),
        PathBuf::from("/var/lib/containerd/io.containerd.runtime.v2.task/moby").join(id),
    ]
}

/// CRIU's restore.log for a running container, if written at or after `since`.
pub(crate) fn restore_log(docker_root: &Path, id: &str, since: SystemTime) -> Option<PathBuf> {
    task_dirs(docker_root, id)
        .iter()
        .map(|dir| dir.join("restore.log"))
        .find(|log| fs::metadata(log).and_then(|m| m.modified()).is_ok_and(|written| written >= since))
}

fn find_file(dir: &Path, name: &str, depth: u32) -> Option<PathBuf> {
    let entries = fs::read_dir(dir).ok()?;
    let mut subdirs = Vec::new();
    for entry in entries.flatten() {
        if entry.file_name() == name {
            return Some(entry.path());
        }
        if depth > 0 && entry.file_type().is_ok_and(|t| t.is_dir()) {
            subdirs.push(entry.path());
        }
    }
    subdirs.into_iter().find_map(|d| find_file(&d, name, depth - 1))
}

fn extraction_root() -> PathBuf {
    std::env::var_os("TMPDIR").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/tmp"))
}

pub(crate) fn containerd_extractions() -> BTreeSet<PathBuf> {
    let Ok(entries) = fs::read_dir(extraction_root()) else { return BTreeSet::new() };
    entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("ctrd-checkpoint"))
        .map(|e| e.path())
        .collect()
}

/// Removes the extractions that appeared since `before` and hold our
/// checkpoint (same inventory.img), leaving other restores' alone.
pub(crate) fn remove_extractions(before: &BTreeSet<PathBuf>, ours: &Path) {
    let Ok(inventory) = fs::read(ours.join("inventory.img")) else { return };
    for dir in containerd_extractions().difference(before) {
        let same = find_file(dir, "inventory.img", 2).and_then(|p| fs::read(p).ok()).is_some_and(|c| c == inventory);
        if same {
            log::debug!("removing containerd's leftover {}", dir.display());
            if let Err(e) = fs::remove_dir_all(dir) {
                log::warn!("could not remove containerd's leftover {}: {e}", dir.display());
            }
        }
    }
}
