//! The app's own files: what it added, changed and deleted in its container's
//! filesystem. Captured on the source through Docker's archive API; put back
//! on the target, deletions as overlayfs whiteouts.

use std::ffi::CString;
use std::fs::{self, File};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::engine::{Engine, Info, CHANGE_ADDED, CHANGE_DELETED, CHANGE_MODIFIED};
use crate::error::{io_error, Error, Kind, Result};
use crate::payload::{self, Manifest, RootfsArchive, RootfsChanges};

/// Saves the files the app added or changed, one archive per top-most path,
/// under `dir`; returns what the manifest says of them and the files to pack.
pub(crate) fn capture(engine: &Engine, id: &str, dir: &Path) -> Result<(RootfsChanges, Vec<(String, PathBuf)>)> {
    let mut changes = engine.container_changes(id)?;
    changes.sort_by(|a, b| a.path.cmp(&b.path));
    let mut rootfs = RootfsChanges::default();
    let mut files = Vec::new();
    let mut taken: Vec<String> = Vec::new();
    for change in changes {
        let inside_taken = taken.iter().any(|t| change.path.starts_with(&format!("{t}/")));
        if inside_taken {
            continue;
        }
        match change.kind {
            CHANGE_DELETED => {
                rootfs.deleted.push(change.path);
                continue;
            }
            CHANGE_MODIFIED => {
                // A modified folder is listed because something inside it changed:
                // those children are listed too, and the folder itself is in the image.
                if engine.stat_path(id, &change.path)?.is_dir() {
                    continue;
                }
            }
            CHANGE_ADDED => {}
            other => log::warn!("unknown change kind {other} for {}", change.path),
        }
        if files.is_empty() {
            fs::create_dir_all(dir).map_err(|e| io_error(dir.display(), e))?;
        }
        let entry = format!("{}/{}.tar", payload::ROOTFS_DIR, files.len());
        let path = dir.join(format!("{}.tar", files.len()));
        let (_, mut archive) = engine.archive_get(id, &change.path)?;
        let mut file = File::create(&path).map_err(|e| io_error(path.display(), e))?;
        io::copy(&mut archive, &mut file).map_err(|e| io_error(format!("saving {} from the container", change.path), e))?;
        let target_dir = Path::new(&change.path).parent().unwrap_or(Path::new("/")).display().to_string();
        log::debug!("rootfs change {} → {entry}", change.path);
        rootfs.archives.push(RootfsArchive { entry: entry.clone(), target_dir });
        files.push((entry, path));
        taken.push(change.path);
    }
    Ok((rootfs, files))
}

/// Puts the app's own files back into the created container `id`, and
/// deletes what it had deleted.
pub(crate) fn apply(engine: &Engine, info: &Info, id: &str, dir: &Path, manifest: &Manifest) -> Result<()> {
    for archive in &manifest.rootfs.archives {
        let path = dir.join(&archive.entry);
        let mut file = File::open(&path).map_err(|e| io_error(path.display(), e))?;
        engine
            .archive_put(id, &archive.target_dir, &mut file)
            .map_err(|e| Error::from(e).context(format!("putting back the app's files in {}", archive.target_dir)))?;
    }
    if manifest.rootfs.deleted.is_empty() {
        return Ok(());
    }
    // Docker's API cannot delete a file in a container that is not running:
    // write overlayfs whiteouts (0:0 character devices) into its upper layer.
    let inspect = engine.inspect_container(id)?;
    let upper = inspect.graph_driver.data.as_ref().and_then(|d| d.get("UpperDir")).cloned();
    let Some(upper) = upper.filter(|_| inspect.graph_driver.name == "overlay2") else {
        return Err(Error::new(
            Kind::Refused,
            format!(
                "the app deleted {} file(s) from its image, and this engine's storage driver '{}' gives ferry \
                 no way to delete them again — use overlay2",
                manifest.rootfs.deleted.len(),
                info.driver
            ),
        ));
    };
    for deleted in &manifest.rootfs.deleted {
        let whiteout = Path::new(&upper).join(deleted.trim_start_matches('/'));
        if let Some(parent) = whiteout.parent() {
            fs::create_dir_all(parent).map_err(|e| io_error(parent.display(), e))?;
        }
        mknod_whiteout(&whiteout).map_err(|e| io_error(format!("deleting {deleted} again"), e))?;
    }
    Ok(())
}

fn mknod_whiteout(path: &Path) -> io::Result<()> {
    let c_path = CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
    // SAFETY: c_path is NUL-terminated; a 0:0 character device with no permission bits is overlayfs' whiteout.
    if unsafe { libc::mknod(c_path.as_ptr(), libc::S_IFCHR, 0) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
