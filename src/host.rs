//! Facts about the machine ferry runs on that the Docker API does not give.

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

/// `criu --version`'s "Version: 4.2" line, or `None` when criu is not on PATH.
pub(crate) fn criu_version() -> Option<String> {
    let output = Command::new("criu").arg("--version").output().ok()?;
    let text = String::from_utf8_lossy(&output.stdout);
    text.lines()
        .find_map(|line| line.strip_prefix("Version:"))
        .map(|v| v.trim().to_string())
}

/// What a CRIU restore on this machine depends on beyond the architecture:
/// the page size (Raspberry Pi 5 kernels use 16 KiB pages) and the CPU
/// features the kernel reports (a process that chose code paths for ARMv8.2
/// atomics or PAC dies with SIGILL on an older core).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub(crate) struct Cpu {
    pub page_size: u64,
    pub hwcap: u64,
    pub hwcap2: u64,
}

impl Cpu {
    /// Why a machine with `target`'s CPU cannot run what was checkpointed on
    /// this one, if it cannot: another page size, or CPU features it lacks.
    /// Unknown values (0, from an older ferry) are held against no one.
    pub(crate) fn cannot_run_on(&self, target: &Cpu) -> Option<String> {
        if self.page_size != 0 && target.page_size != 0 && self.page_size != target.page_size {
            return Some(format!(
                "it was checkpointed on a kernel with {} KiB pages and that one has {} KiB pages: CRIU restores \
                 memory page by page as it was mapped",
                self.page_size / 1024,
                target.page_size / 1024
            ));
        }
        let missing = (self.hwcap & !target.hwcap, self.hwcap2 & !target.hwcap2);
        if missing != (0, 0) && (target.hwcap, target.hwcap2) != (0, 0) {
            return Some(format!(
                "the source CPU has features the target CPU lacks (AT_HWCAP bits {:#x}, AT_HWCAP2 bits {:#x}): the \
                 app may have chosen code paths for them and would die with SIGILL there",
                missing.0, missing.1
            ));
        }
        None
    }
}

pub(crate) fn cpu() -> Cpu {
    // SAFETY: sysconf and getauxval only read process-wide constants.
    let (page_size, hwcap, hwcap2) = unsafe {
        (libc::sysconf(libc::_SC_PAGESIZE), libc::getauxval(libc::AT_HWCAP), libc::getauxval(libc::AT_HWCAP2))
    };
    // c_ulong is 32 bits on armv7: the casts are not idle there.
    #[allow(clippy::unnecessary_cast)]
    Cpu { page_size: u64::try_from(page_size).unwrap_or(0), hwcap: hwcap as u64, hwcap2: hwcap2 as u64 }
}

/// 2 on a unified cgroup hierarchy, 1 on the legacy one.
pub(crate) fn cgroup_version() -> u8 {
    if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() { 2 } else { 1 }
}

pub(crate) fn hostname() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default()
}

/// MemAvailable from /proc/meminfo, in bytes: what the kernel estimates new
/// work can take without swapping (free memory plus reclaimable cache). 0 if
/// unknown.
pub(crate) fn mem_available_bytes() -> u64 {
    let meminfo = fs::read_to_string("/proc/meminfo").unwrap_or_default();
    meminfo
        .lines()
        .find_map(|line| line.strip_prefix("MemAvailable:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024)
}

/// Bytes available to an unprivileged writer on the filesystem holding `path`.
pub(crate) fn free_bytes(path: &Path) -> io::Result<u64> {
    let c_path = CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: c_path is NUL-terminated and stat is a valid, writable statvfs.
    if unsafe { libc::statvfs(c_path.as_ptr(), &mut stat) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(stat.f_bavail as u64 * stat.f_frsize as u64)
}

/// This process's peak resident set size in KiB (VmHWM), or 0 if unknown.
/// Measured here rather than with `time -v`, whose figure includes the
/// children ferry waits for (runc is a Go program of ~10 MiB).
pub(crate) fn peak_rss_kib() -> u64 {
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

pub(crate) fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

pub(crate) fn stderr_is_terminal() -> bool {
    // SAFETY: isatty only reads the descriptor number.
    unsafe { libc::isatty(2) == 1 }
}

/// A folder of ferry's own under the work dir, removed when dropped unless kept.
#[derive(Debug)]
pub(crate) struct JobDir {
    path: PathBuf,
    keep: bool,
}

impl JobDir {
    /// Reserves `work_dir/<label>-<pid>-<nanos>` without creating it, so that
    /// an unpacker can create it itself.
    pub(crate) fn reserve(work_dir: &Path, label: &str) -> io::Result<JobDir> {
        fs::create_dir_all(work_dir)?;
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        let path = work_dir.join(format!("{label}-{}-{nanos}", std::process::id()));
        Ok(JobDir { path, keep: false })
    }

    pub(crate) fn create(work_dir: &Path, label: &str) -> io::Result<JobDir> {
        let job = JobDir::reserve(work_dir, label)?;
        create_private_dir(&job.path)?;
        Ok(job)
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Keeps the folder on disk (for a person to recover from) and returns its path.
    pub(crate) fn keep(mut self) -> PathBuf {
        self.keep = true;
        self.path.clone()
    }
}

impl Drop for JobDir {
    fn drop(&mut self) {
        if !self.keep {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

/// A file written under a temporary name beside its path, mode 0600 whatever
/// was there before, and moved onto its path only by [`PrivateFile::commit`]:
/// a payload holds the app's memory, and a failed write must leave neither a
/// half payload that looks whole nor an old file made world-readable.
pub(crate) struct PrivateFile {
    path: PathBuf,
    partial: PathBuf,
    done: bool,
}

impl PrivateFile {
    /// Creates the temporary file; returns it for writing.
    pub(crate) fn create(path: &Path) -> io::Result<(PrivateFile, fs::File)> {
        use std::os::unix::fs::OpenOptionsExt;
        let name = path.file_name().ok_or_else(|| io::Error::other("not a file name"))?.to_string_lossy();
        let partial = path.with_file_name(format!(".{name}.partial-{}", std::process::id()));
        let file = fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&partial)?;
        Ok((PrivateFile { path: path.to_path_buf(), partial, done: false }, file))
    }

    /// Moves the finished file onto its path and returns that path.
    pub(crate) fn commit(mut self) -> io::Result<PathBuf> {
        fs::rename(&self.partial, &self.path)?;
        self.done = true;
        Ok(self.path.clone())
    }
}

impl Drop for PrivateFile {
    fn drop(&mut self) {
        if !self.done {
            let _ = fs::remove_file(&self.partial);
        }
    }
}

/// Writes `bytes` as `dir/name` so that it survives a crash the moment this
/// returns, whole or not at all: a temporary file, synced, renamed over the
/// old one, and the folder synced. For records a later ferry must trust.
pub(crate) fn write_durably(dir: &Path, name: &str, bytes: &[u8]) -> io::Result<()> {
    use std::io::Write;
    fs::create_dir_all(dir)?;
    let partial = dir.join(format!(".{name}.partial"));
    let mut file = fs::File::create(&partial)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    fs::rename(&partial, dir.join(name))?;
    fs::File::open(dir)?.sync_all()
}

/// Like [`write_durably`], but the file is `mode` from its first byte, whatever
/// the umask: a private key must never be readable by others, not even while
/// it is being written, and a certificate must be readable by all.
pub(crate) fn write_durably_as(dir: &Path, name: &str, bytes: &[u8], mode: u32) -> io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let partial = dir.join(format!(".{name}.partial-{}", std::process::id()));
    let _ = fs::remove_file(&partial);
    let written = (|| {
        let mut file = fs::OpenOptions::new().write(true).create_new(true).mode(mode & 0o600).open(&partial)?;
        file.set_permissions(fs::Permissions::from_mode(mode))?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&partial, dir.join(name))?;
        fs::File::open(dir)?.sync_all()
    })();
    if written.is_err() {
        let _ = fs::remove_file(&partial);
    }
    written
}

/// Creates a folder only root can enter: checkpoints hold the app's memory,
/// its secrets included.
pub(crate) fn create_private_dir(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new().mode(0o700).create(path)
}

/// Moves a folder: a rename where both sides share a filesystem, else a copy
/// of its plain files and folders followed by removal of the source.
pub(crate) fn move_dir(from: &Path, to: &Path) -> io::Result<()> {
    match fs::rename(from, to) {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
            copy_dir(from, to)?;
            fs::remove_dir_all(from)
        }
        Err(e) => Err(e),
    }
}

fn copy_dir(from: &Path, to: &Path) -> io::Result<()> {
    fs::create_dir(to)?;
    for entry in fs::read_dir(from)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        let target = to.join(entry.file_name());
        if kind.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else if kind.is_file() {
            fs::copy(entry.path(), &target)?;
        } else {
            return Err(io::Error::other(format!("{}: not a plain file", entry.path().display())));
        }
    }
    Ok(())
}

/// Every plain file below `root`, as (path relative to root with '/', absolute path), sorted.
pub(crate) fn list_files(root: &Path) -> io::Result<Vec<(String, PathBuf)>> {
    let mut files = Vec::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in fs::read_dir(&dir)? {
            let entry = entry?;
            let kind = entry.file_type()?;
            let path = entry.path();
            if kind.is_dir() {
                pending.push(path);
            } else if kind.is_file() {
                let relative = path.strip_prefix(root).map_err(io::Error::other)?;
                files.push((relative.to_string_lossy().into_owned(), path));
            } else {
                return Err(io::Error::other(format!("{}: not a plain file", path.display())));
            }
        }
    }
    files.sort();
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn another_page_size_or_missing_cpu_features_cannot_run_the_checkpoint() {
        let pi4 = Cpu { page_size: 4096, hwcap: 0b1011, hwcap2: 0 };
        assert_eq!(pi4.cannot_run_on(&pi4), None);
        let pi5 = Cpu { page_size: 16384, hwcap: 0b1111, hwcap2: 0b1 };
        assert!(pi4.cannot_run_on(&pi5).unwrap().contains("4 KiB pages and that one has 16 KiB"));
        let newer = Cpu { page_size: 4096, hwcap: 0b1111, hwcap2: 0b1 };
        assert_eq!(pi4.cannot_run_on(&newer), None, "an older CPU's features are all on a newer one");
        assert!(newer.cannot_run_on(&pi4).unwrap().contains("AT_HWCAP bits 0x4, AT_HWCAP2 bits 0x1"));
        assert_eq!(Cpu::default().cannot_run_on(&pi5), None, "an older ferry said nothing: nothing held against it");
        let here = cpu();
        assert!(here.page_size >= 4096 && here.page_size.is_power_of_two());
    }
}
