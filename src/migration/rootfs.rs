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
    put_archives(engine, id, dir, manifest)?;
    delete_again(engine, info, id, manifest)
}

/// Puts the payload's archives of the app's files into the created container `id`.
pub(crate) fn put_archives(engine: &Engine, id: &str, dir: &Path, manifest: &Manifest) -> Result<()> {
    for archive in &manifest.rootfs.archives {
        let path = dir.join(&archive.entry);
        let mut file = File::open(&path).map_err(|e| io_error(path.display(), e))?;
        engine
            .archive_put(id, &archive.target_dir, &mut file)
            .map_err(|e| Error::from(e).context(format!("putting back the app's files in {}", archive.target_dir)))?;
    }
    Ok(())
}

/// Deletes again, in the created container `id`, what the app had deleted.
pub(crate) fn delete_again(engine: &Engine, info: &Info, id: &str, manifest: &Manifest) -> Result<()> {
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
        whiteout(Path::new(&upper), deleted).map_err(|e| {
            let kind = if e.raw_os_error() == Some(libc::ELOOP) { Kind::BadPayload } else { Kind::Io };
            Error::new(kind, format!("deleting {deleted} again in the new container: {e}"))
        })?;
    }
    Ok(())
}

/// Writes the whiteout for `deleted` (an absolute path in the container)
/// inside `upper`, never following a link: each folder on the way is opened
/// relative to the last with O_NOFOLLOW (and made if missing), and the device
/// is made relative to the last one. The payload's own archives were put
/// into the same upper dir just before, so a link there — `link -> /` with
/// `/link/x` deleted — would otherwise lead the write onto the host.
fn whiteout(upper: &Path, deleted: &str) -> io::Result<()> {
    let parts: Vec<&str> = deleted.split('/').filter(|p| !p.is_empty()).collect();
    let Some((last, folders)) = parts.split_last() else {
        return Err(io::Error::other("the root folder cannot be deleted"));
    };
    let mut dir = open_dir(libc::AT_FDCWD, upper.as_os_str().as_bytes())?;
    for folder in folders {
        dir = match open_dir(dir.fd, folder.as_bytes()) {
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                let name = c_name(folder.as_bytes())?;
                // SAFETY: dir.fd is an open directory and name is NUL-terminated.
                if unsafe { libc::mkdirat(dir.fd, name.as_ptr(), 0o755) } != 0 {
                    return Err(io::Error::last_os_error());
                }
                open_dir(dir.fd, folder.as_bytes())?
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => {
                return Err(io::Error::from_raw_os_error(libc::ELOOP));
            }
            other => other?,
        };
    }
    let name = c_name(last.as_bytes())?;
    // SAFETY: dir.fd is an open directory and name is NUL-terminated; a 0:0
    // character device with no permission bits is overlayfs' whiteout.
    if unsafe { libc::mknodat(dir.fd, name.as_ptr(), libc::S_IFCHR, 0) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// An open directory, closed when dropped.
struct Dir {
    fd: libc::c_int,
}

impl Drop for Dir {
    fn drop(&mut self) {
        // SAFETY: fd was opened by open_dir and is closed once.
        unsafe { libc::close(self.fd) };
    }
}

/// Opens `name` under `at` as a directory, refusing a link (ELOOP) or a
/// file (ENOTDIR) in its place.
fn open_dir(at: libc::c_int, name: &[u8]) -> io::Result<Dir> {
    let name = c_name(name)?;
    let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    // SAFETY: name is NUL-terminated; `at` is AT_FDCWD or an open directory.
    let fd = unsafe { libc::openat(at, name.as_ptr(), flags) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(Dir { fd })
}

fn c_name(name: &[u8]) -> io::Result<CString> {
    CString::new(name).map_err(io::Error::other)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::FileTypeExt;

    use super::*;
    use crate::testing::TempDir;

    #[test]
    fn whiteouts_are_made_inside_the_upper_dir_and_never_through_a_link() {
        let scratch = TempDir::new("whiteout");
        let upper = scratch.path().join("upper");
        let outside = scratch.path().join("host");
        fs::create_dir_all(&upper).unwrap();
        fs::create_dir_all(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, upper.join("link")).unwrap();
        fs::write(upper.join("file"), b"x").unwrap();

        let through_link = whiteout(&upper, "/link/x").unwrap_err();
        assert_eq!(through_link.raw_os_error(), Some(libc::ELOOP), "{through_link}");
        let deeper = whiteout(&upper, "/link/a/b").unwrap_err();
        assert_eq!(deeper.raw_os_error(), Some(libc::ELOOP), "{deeper}");
        let through_file = whiteout(&upper, "/file/x").unwrap_err();
        assert_eq!(through_file.raw_os_error(), Some(libc::ELOOP), "{through_file}");
        assert_eq!(fs::read_dir(&outside).unwrap().count(), 0, "nothing was written outside");

        whiteout(&upper, "/etc/app/deleted.conf").unwrap();
        let made = fs::symlink_metadata(upper.join("etc/app/deleted.conf")).unwrap();
        assert!(made.file_type().is_char_device());
    }
}
