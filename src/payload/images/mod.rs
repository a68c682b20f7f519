//! A payload's CRIU images, checked before anything is restored (issue 11).
//!
//! CRIU restores what its images say: a process's capabilities, ids,
//! seccomp filters and mounts come from `core-*.img`, `seccomp.img` and
//! `mountpoints-*.img`, not from the container Docker creates around it. An
//! edited image would give the restored process powers its container was
//! never granted, so every thread's creds, seccomp mode and filter chain and
//! every mount are held against [`Allowed`] — what the created container is
//! granted — and anything beyond it is refused, naming the image, the task,
//! the field and the value.
//!
//! Only the fields that matter are decoded (see `schema.rs`); a
//! well-formed image is all the rest CRIU checks for itself.

// Restore does not call the check yet (issue 11 wires it in); until then
// only the tests use it.

mod allowed;
mod cgroup;
mod frame;
mod mounts;
mod schema;
mod seccomp;
mod task;

use std::fs;
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use prost::Message;

pub(crate) use allowed::Allowed;
pub(crate) use cgroup::retarget;
use mounts::{check_cgroup, check_mounts};
use schema::InventoryEntry;
use seccomp::{Filters, decode_seccomp};
pub(crate) use seccomp::SeccompReference;
use task::{check_core, check_seccomp_modes, pstree_threads};

use super::Error;

/// SECCOMP_MODE_* of `linux/seccomp.h`, as `core.proto` carries them.
pub(crate) const SECCOMP_DISABLED: i32 = 0;
pub(crate) const SECCOMP_STRICT: i32 = 1;
pub(crate) const SECCOMP_FILTER: i32 = 2;

/// CRIU's images version 1.1 (`CRTOOLS_IMAGES_V1_1` in `magic.h`), the
/// only one CRIU writes since 2014.
const IMAGES_V1_1: u32 = 2;

/// The kinds of image ferry checks, by file name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Inventory,
    Pstree,
    /// `core-<tid>.img`
    Core(u32),
    Seccomp,
    /// `mountpoints-<id>.img`
    Mounts,
    Cgroup,
}

impl Kind {
    fn of(name: &str) -> Option<Kind> {
        let numbered = |prefix: &str| {
            let digits = name.strip_prefix(prefix)?.strip_suffix(".img")?;
            // Digits only: u32::from_str would also take a leading '+'.
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            // CRIU names a file by the number as printf writes it: a
            // "core-01.img" is never read, so it is not checked either.
            digits.parse::<u32>().ok().filter(|number| number.to_string() == digits)
        };
        match name {
            "inventory.img" => Some(Kind::Inventory),
            "pstree.img" => Some(Kind::Pstree),
            "seccomp.img" => Some(Kind::Seccomp),
            "cgroup.img" => Some(Kind::Cgroup),
            _ => {
                if let Some(tid) = numbered("core-") {
                    Some(Kind::Core(tid))
                } else {
                    numbered("mountpoints-").map(|_| Kind::Mounts)
                }
            }
        }
    }

    /// The largest file of this kind ferry reads. Real ones are a few KiB
    /// (core 1.8 KB, mounts 3.4 KB, cgroup 4.3 KB, seccomp 7.8 KB for
    /// Docker's default profile); the limits leave room for many threads,
    /// mounts and filters (the kernel allows 2 MiB of BPF per chain) while
    /// keeping what a payload makes the agent hold small: the file, plus at
    /// most a few times its size decoded (mounts and filters are decoded one
    /// at a time; a cgroup folder is 48 bytes per 2 encoded).
    fn limit(self) -> u64 {
        const KIB: u64 = 1024;
        match self {
            Kind::Inventory => 64 * KIB,
            Kind::Core(_) | Kind::Cgroup => 256 * KIB,
            Kind::Pstree | Kind::Mounts => 1024 * KIB,
            Kind::Seccomp => 4096 * KIB,
        }
    }
}

fn refuse(image: &str, detail: impl Into<String>) -> Error {
    Error::Image { image: image.to_string(), detail: detail.into() }
}

/// Checks every image of the checkpoint in `images_dir` that can grant a
/// power against `allowed`. Nothing is started or written.
pub(crate) fn check(images_dir: &Path, allowed: &Allowed) -> Result<(), Error> {
    let mut images = Vec::new();
    let listing = fs::read_dir(images_dir).map_err(|source| Error::Io { path: images_dir.into(), source })?;
    for dirent in listing {
        let dirent = dirent.map_err(|source| Error::Io { path: images_dir.into(), source })?;
        let name = dirent.file_name().to_string_lossy().into_owned();
        if let Some(kind) = Kind::of(&name) {
            images.push((name, kind));
        }
    }
    // Sorted, so that a payload with several faults is always refused for the same one.
    images.sort();

    // Without seccomp.img a thread in filter mode points at no filter, and is refused.
    let seccomp = match images.iter().find(|(_, kind)| *kind == Kind::Seccomp) {
        Some((name, kind)) => decode_seccomp(name, &read_image(images_dir, name, *kind)?)?,
        None => Filters::default(),
    };
    let mut has_inventory = false;
    let mut modes = std::collections::BTreeMap::new();
    let mut threads = Vec::new();
    for (name, kind) in &images {
        let bytes = read_image(images_dir, name, *kind)?;
        match kind {
            Kind::Inventory => {
                check_inventory(name, &bytes)?;
                has_inventory = true;
            }
            Kind::Pstree => threads = pstree_threads(name, &bytes)?,
            Kind::Core(tid) => {
                modes.insert(*tid, check_core(name, *tid, &bytes, Some(&seccomp), allowed)?);
            }
            Kind::Mounts => check_mounts(name, &bytes, allowed)?,
            Kind::Cgroup => check_cgroup(name, &bytes)?,
            Kind::Seccomp => {}
        }
    }
    if !has_inventory {
        return Err(refuse("inventory.img", "missing: this is not a CRIU checkpoint"));
    }
    // CRIU restores a core image for every thread pstree.img names: each
    // must have been checked above.
    if threads.is_empty() {
        return Err(refuse("pstree.img", "missing or empty: no task to restore"));
    }
    if let Some((tid, _)) = threads.iter().find(|(tid, _)| !modes.contains_key(tid)) {
        return Err(refuse(&format!("core-{tid}.img"), format!("missing for task {tid} listed in pstree.img")));
    }
    check_seccomp_modes(&threads, &modes, allowed)?;
    Ok(())
}

/// Checks one image given as bytes, as [`check`] would check the file
/// `name`. For fuzzing: it never panics, and allocates no more than the
/// messages `bytes` holds. A core image is checked on its own, so its
/// seccomp filter index is only checked against `seccomp.img` by [`check`].
#[cfg(any(test, fuzzing))]
pub(crate) fn check_image_bytes(name: &str, bytes: &[u8], allowed: &Allowed) -> Result<(), Error> {
    let kind = Kind::of(name).ok_or_else(|| refuse(name, "not an image ferry checks"))?;
    if bytes.len() as u64 > kind.limit() {
        return Err(refuse(name, format!("larger than any such image ferry reads ({} bytes)", kind.limit())));
    }
    match kind {
        Kind::Inventory => check_inventory(name, bytes),
        Kind::Pstree => pstree_threads(name, bytes).map(|_| ()),
        // On its own, a core image is judged as a task's leader would be.
        Kind::Core(tid) => {
            let mode = check_core(name, tid, bytes, None, allowed)?;
            check_seccomp_modes(&[(tid, tid)], &[(tid, mode)].into_iter().collect(), allowed)
        }
        Kind::Seccomp => decode_seccomp(name, bytes).map(|_| ()),
        Kind::Mounts => check_mounts(name, bytes, allowed),
        Kind::Cgroup => check_cgroup(name, bytes),
    }
}

/// Makes this host's seccomp filters the bottom of every filter chain in
/// the checkpoint (see [`seccomp::rebase`]); returns how many filters were
/// replaced. A checkpoint without `seccomp.img` is left alone: its threads
/// in filter mode point at no filter and [`check`] refuses them.
pub(crate) fn enforce_seccomp(images_dir: &Path, reference: &SeccompReference) -> Result<usize, Error> {
    let name = "seccomp.img";
    if !images_dir.join(name).exists() {
        return Ok(0);
    }
    let bytes = read_image(images_dir, name, Kind::Seccomp)?;
    let (image, replaced) = seccomp::rebase(name, &bytes, reference)?;
    if replaced > 0 {
        replace_image(images_dir, name, &image)?;
    }
    Ok(replaced)
}

/// Writes `image` beside the image `name`, then renames it over: CRIU reads
/// either the old image or the new one, never half of one.
fn replace_image(images_dir: &Path, name: &str, image: &[u8]) -> Result<(), Error> {
    use std::io::Write;
    let path = images_dir.join(name);
    let temporary = images_dir.join(format!(".{name}.ferry"));
    let io_error = |path: &Path| {
        let path = path.to_path_buf();
        move |source| Error::Io { path, source }
    };
    // A leftover of an interrupted run (or anything planted there) goes;
    // create_new then never follows a link.
    match fs::remove_file(&temporary) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io_error(&temporary)(e)),
        _ => {}
    }
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&temporary)
        .map_err(io_error(&temporary))?;
    let written = file.write_all(image).and_then(|()| file.sync_all());
    if let Err(e) = written.and_then(|()| fs::rename(&temporary, &path)) {
        let _ = fs::remove_file(&temporary);
        return Err(io_error(&path)(e));
    }
    Ok(())
}

/// The oldest filter of a real checkpoint's one chain: the one runc installed.
#[cfg(test)]
pub(crate) fn reference_of(dir: &Path) -> SeccompReference {
    let bytes = fs::read(dir.join("seccomp.img")).unwrap();
    let message = frame::open(&bytes, frame::SECCOMP_MAGIC).unwrap().only_message().unwrap();
    let entry: schema::SeccompEntry = decode("seccomp.img", message).unwrap();
    let roots: Vec<_> = entry.seccomp_filters.iter().filter(|f| f.prev.is_none()).collect();
    assert_eq!(roots.len(), 1, "one filter chain in {}", dir.display());
    SeccompReference { programs: vec![roots[0].filter.clone()] }
}

/// Reads a whole image, refusing one larger than its kind's limit before
/// holding more than that in memory.
fn read_image(images_dir: &Path, name: &str, kind: Kind) -> Result<Vec<u8>, Error> {
    let path = images_dir.join(name);
    let io_error = |source| Error::Io { path: path.clone(), source };
    // Not through a link, and never blocking on a FIFO: ferry unpacks
    // regular files only, anything else here was put by someone else.
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(&path)
        .map_err(io_error)?;
    if !file.metadata().map_err(io_error)?.is_file() {
        return Err(refuse(name, "not a regular file"));
    }
    let mut bytes = Vec::new();
    // One byte past the limit tells "too large" from "exactly the limit".
    file.take(kind.limit() + 1).read_to_end(&mut bytes).map_err(io_error)?;
    if bytes.len() as u64 > kind.limit() {
        return Err(refuse(name, format!("larger than any such image ferry reads ({} bytes)", kind.limit())));
    }
    Ok(bytes)
}

fn decode<M: Message + Default>(name: &str, message: &[u8]) -> Result<M, Error> {
    M::decode(message).map_err(|error| refuse(name, format!("not a valid CRIU message: {error}")))
}

fn only<M: Message + Default>(name: &str, bytes: &[u8], magic: u32) -> Result<M, Error> {
    let message = frame::open(bytes, magic).and_then(|entries| entries.only_message()).map_err(|e| refuse(name, e))?;
    decode(name, message)
}

/// Calls `visit` with each message of a multi-entry image in turn, so that
/// memory holds one decoded entry at a time, not a whole table.
fn each<M: Message + Default>(
    name: &str,
    bytes: &[u8],
    magic: u32,
    mut visit: impl FnMut(M) -> Result<(), Error>,
) -> Result<(), Error> {
    let mut entries = frame::open(bytes, magic).map_err(|e| refuse(name, e))?;
    while let Some(message) = entries.next_message().map_err(|e| refuse(name, e))? {
        visit(decode(name, message)?)?;
    }
    Ok(())
}

fn check_inventory(name: &str, bytes: &[u8]) -> Result<(), Error> {
    let inventory: InventoryEntry = only(name, bytes, frame::INVENTORY_MAGIC)?;
    match inventory.img_version {
        Some(IMAGES_V1_1) => Ok(()),
        other => Err(refuse(name, format!("img_version {other:?} is not CRIU's images v1.1 ({IMAGES_V1_1})"))),
    }
}

#[cfg(test)]
mod tests;
