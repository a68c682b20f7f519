//! `manifest.json`: what a payload carries and how to recreate its container.
//!
//! Only allow-listed container settings are carried: a payload can ask the
//! restoring host for a command, environment, limits and published ports, and
//! never for privileges, devices, host namespaces or bind mounts.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Component, Path};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{Error, Result, CHECKPOINT_DIR, IMAGE_ENTRY, ROOTFS_DIR};

/// Bumped whenever a reader of the previous version would misread a payload.
///
/// 2: `manifest.sig` may follow the manifest (see `seal.rs`); format 1
/// payloads, which never have one, are still read.
/// 3: entries carry a BLAKE3 digest instead of SHA-256 (formats 1 and 2 are
/// still read and checked with SHA-256).
/// 4: an entry may be sent as a content delta (`delta.rs`).
/// 5: one pass (`pack.rs`): the manifest that leads lists sizes without
/// digests, and the same manifest with every entry's BLAKE3 closes the stream
/// (`manifest.final.json`, sealed by `manifest.final.sig`), so a sender hashes
/// its files as it sends them instead of reading them once more beforehand.
pub(crate) const FORMAT_VERSION: u32 = 5;
/// The format of a payload that carries no delta, written for readers older
/// than format 5.
pub(crate) const FORMAT_WHOLE: u32 = 3;
/// The format of a payload with delta entries.
pub(crate) const FORMAT_DELTA: u32 = 4;
/// The one-pass format.
pub(crate) const FORMAT_STREAMED: u32 = 5;

/// The largest manifest ferry reads; a checkpoint of thousands of files stays far below.
pub(crate) const MANIFEST_LIMIT: u64 = 4 * 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Mode {
    /// CRIU images: the process carries on where it was.
    Criu,
    /// A committed image: the container starts afresh from its filesystem.
    Commit,
}

impl Mode {
    /// The name used on the command line, in reports and in the manifest.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Mode::Criu => "criu",
            Mode::Commit => "commit",
        }
    }
}

impl std::str::FromStr for Mode {
    type Err = String;

    fn from_str(text: &str) -> std::result::Result<Mode, String> {
        match text {
            "criu" => Ok(Mode::Criu),
            "commit" => Ok(Mode::Commit),
            other => Err(format!("unknown mode '{other}': use criu or commit")),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Manifest {
    pub format: u32,
    pub ferry_version: String,
    pub mode: Mode,
    /// Seconds since the Unix epoch when the checkpoint was taken.
    pub created_unix: u64,
    pub source: SourceHost,
    pub container: ContainerSpec,
    /// The CRIU checkpoint's name (criu mode).
    #[serde(default)]
    pub checkpoint_name: Option<String>,
    #[serde(default)]
    pub rootfs: RootfsChanges,
    pub entries: Vec<Entry>,
    /// Set on the periodic snapshots of `ferry replicate`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<SnapshotTag>,
    /// Set when some entries are sent as deltas against the receiver's blocks (format 4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delta: Option<DeltaSpec>,
}

/// How the delta entries of a payload were cut.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct DeltaSpec {
    pub block_size: u32,
    /// What the receiver offered, for the logs (e.g. `snapshot web@12, staged`).
    #[serde(default)]
    pub base: String,
}

/// What makes a payload one of a series of snapshots.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct SnapshotTag {
    /// Grows by one with every snapshot a source takes of a container.
    pub generation: u64,
    /// The source's agent, which a peer asks before it fails the container over.
    #[serde(default)]
    pub source_agent: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub(crate) struct SourceHost {
    pub hostname: String,
    /// As the engine reports it (`uname -m`): x86_64, aarch64, armv7l.
    pub arch: String,
    pub kernel: String,
    pub criu_version: String,
    pub docker_version: String,
    /// Page size and CPU features of the source (0: an older ferry did not say).
    #[serde(default)]
    pub cpu: crate::host::Cpu,
    #[serde(default)]
    pub cgroup_version: u8,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ContainerSpec {
    pub name: String,
    /// `sha256:…` of the image the container runs.
    pub image_id: String,
    #[serde(default)]
    pub image_tags: Vec<String>,
    pub config: RecreateConfig,
    pub host_config: HostLimits,
}

/// The allow-listed part of Docker's container `Config`, in Docker's own
/// field names so that it reads straight from inspect and writes straight into create.
#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct RecreateConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<Vec<String>>,
    #[serde(default)]
    pub working_dir: String,
    #[serde(default)]
    pub user: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exposed_ports: Option<BTreeMap<String, Value>>,
    #[serde(default)]
    pub hostname: String,
    /// A restored process keeps its terminal, so the new container needs the same.
    #[serde(default)]
    pub tty: bool,
    #[serde(default)]
    pub open_stdin: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<String>,
}

/// The allow-listed part of Docker's `HostConfig`: limits and published ports.
#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct HostLimits {
    #[serde(default)]
    pub memory: i64,
    #[serde(default)]
    pub memory_swap: i64,
    #[serde(default)]
    pub nano_cpus: i64,
    #[serde(default)]
    pub cpu_quota: i64,
    #[serde(default)]
    pub cpu_period: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_bindings: Option<BTreeMap<String, Option<Vec<PortBinding>>>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_policy: Option<RestartPolicy>,
    /// tmpfs mounts (path → mount options): CRIU restores their contents, so
    /// the new container must have the same ones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tmpfs: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct PortBinding {
    #[serde(default)]
    pub host_ip: String,
    #[serde(default)]
    pub host_port: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct RestartPolicy {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub maximum_retry_count: i64,
}

/// Files the app changed in its container's filesystem.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub(crate) struct RootfsChanges {
    pub archives: Vec<RootfsArchive>,
    /// Absolute paths the app deleted from its image's files.
    pub deleted: Vec<String>,
}

/// One `GET /containers/{id}/archive` answer, to be put back into `target_dir`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct RootfsArchive {
    /// The payload entry holding the tar.
    pub entry: String,
    /// The absolute folder in the container the tar is extracted into.
    pub target_dir: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct Entry {
    /// Relative path inside the payload.
    pub path: String,
    pub size: u64,
    /// Lower-case hex SHA-256 of the entry's bytes (formats 1 and 2).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sha256: String,
    /// Lower-case hex BLAKE3 of the entry's bytes (format 3 on).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub blake3: String,
    /// Delta entries instead (format 4): the BLAKE3 of the BLAKE3s of its
    /// blocks (`DigestKind::Blake3Blocks`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub blocks_blake3: String,
    /// Sent as a delta of this many bytes (format 4); `size` and the digest
    /// are those of the file it rebuilds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delta: Option<u64>,
}

impl Entry {
    /// An entry of a payload of this format, with its digest.
    pub(crate) fn new(path: String, size: u64, blake3: String) -> Entry {
        Entry { path, size, sha256: String::new(), blake3, blocks_blake3: String::new(), delta: None }
    }

    /// Which digest the entry carries, and its hex value (`block_size`: of
    /// the manifest's deltas, for a delta entry's).
    pub(crate) fn digest(&self, block_size: Option<u32>) -> (super::DigestKind, &str) {
        match (block_size, self.delta) {
            (Some(size), Some(_)) => (super::DigestKind::Blake3Blocks(size), &self.blocks_blake3),
            _ if self.blake3.is_empty() => (super::DigestKind::Sha256, &self.sha256),
            _ => (super::DigestKind::Blake3, &self.blake3),
        }
    }
}

impl Manifest {
    /// Checks everything the manifest says before anything is written: a
    /// whole manifest, every entry with its digest.
    pub(crate) fn validate(&self) -> Result<()> {
        self.validate_as(false)
    }

    /// [`validate`](Self::validate) for the manifest that leads a one-pass
    /// payload (format 5): the same, but no entry has a digest yet.
    pub(crate) fn validate_head(&self) -> Result<()> {
        if self.format != FORMAT_STREAMED {
            return Err(Error::Manifest(format!("a manifest without digests in a payload of format {}", self.format)));
        }
        self.validate_as(true)
    }

    /// Whether the manifest leads a one-pass payload, its digests at the end.
    pub(crate) fn is_streamed(&self) -> bool {
        self.format == FORMAT_STREAMED
    }

    fn validate_as(&self, head: bool) -> Result<()> {
        if self.format > FORMAT_VERSION || self.format == 0 {
            return Err(Error::Format { found: self.format });
        }
        let bad = |what: String| Err(Error::Manifest(what));
        if !is_name(&self.container.name) {
            return bad(format!("container name {:?} is not a Docker name", self.container.name));
        }
        if !is_image_id(&self.container.image_id) {
            return bad(format!("image id {:?} is not sha256:<64 hex>", self.container.image_id));
        }
        match (self.mode, &self.checkpoint_name) {
            (Mode::Criu, Some(name)) if is_name(name) => {}
            (Mode::Criu, other) => return bad(format!("checkpoint name {other:?} is missing or not a name")),
            (Mode::Commit, _) => {}
        }
        if self.entries.iter().try_fold(0u64, |sum, e| sum.checked_add(e.size)).is_none() {
            return bad("the entries' sizes add up to more than any disk holds".into());
        }
        let mut seen = BTreeSet::new();
        for entry in &self.entries {
            check_entry_path(&entry.path)?;
            // One digest per entry, the one of the manifest's format (and of a delta).
            let (kind, digest) = entry.digest(self.block_size());
            let wanted = match (self.format, self.block_size(), entry.delta) {
                (4.., Some(size), Some(_)) => super::DigestKind::Blake3Blocks(size),
                (3.., _, _) => super::DigestKind::Blake3,
                _ => super::DigestKind::Sha256,
            };
            let is_hex = digest.len() == 64 && digest.bytes().all(|b| b.is_ascii_hexdigit());
            let digests = [&entry.sha256, &entry.blake3, &entry.blocks_blake3].iter().filter(|d| !d.is_empty()).count();
            if head {
                if digests != 0 {
                    return bad(format!("entry {} has a digest in a manifest that leads (format {})", entry.path, self.format));
                }
            } else if kind != wanted || !is_hex || digests != 1 {
                return bad(format!("entry {} has no {} digest (format {})", entry.path, wanted.name(), self.format));
            }
            if !seen.insert(entry.path.as_str()) {
                return bad(format!("entry {} is listed twice", entry.path));
            }
            if let Some(delta) = entry.delta {
                let Some(spec) = self.delta.as_ref().filter(|_| self.format == FORMAT_DELTA) else {
                    return bad(format!("entry {} is a delta in a payload that says nothing of deltas", entry.path));
                };
                if delta > super::delta::max_delta_size(entry.size, spec.block_size) {
                    return bad(format!("entry {}: a delta of {delta} bytes cannot rebuild {} bytes", entry.path, entry.size));
                }
            }
        }
        if let Some(spec) = &self.delta {
            let size = spec.block_size;
            if self.format != FORMAT_DELTA || !super::delta::BLOCK_SIZES.contains(&size) || !size.is_power_of_two() {
                return bad(format!("delta blocks of {size} bytes (format {}) are not a delta ferry writes", self.format));
            }
        }
        for archive in &self.rootfs.archives {
            if !seen.contains(archive.entry.as_str()) || !archive.entry.starts_with("rootfs/") {
                return bad(format!("rootfs archive {} is not an entry of the payload", archive.entry));
            }
            check_container_path(&archive.target_dir)?;
        }
        for deleted in &self.rootfs.deleted {
            check_container_path(deleted)?;
            if deleted == "/" {
                return bad("the root folder cannot be deleted".into());
            }
        }
        if self.mode == Mode::Commit && !seen.contains(IMAGE_ENTRY) {
            return bad(format!("commit-mode payload has no {IMAGE_ENTRY}"));
        }
        Ok(())
    }

    /// The block size of the payload's deltas, if it has any.
    pub(crate) fn block_size(&self) -> Option<u32> {
        self.delta.as_ref().map(|d| d.block_size)
    }

    /// Sum of the sizes of every entry: what unpacking writes to disk
    /// (`validate` has checked that it does not overflow).
    pub(crate) fn raw_size(&self) -> u64 {
        self.entries.iter().fold(0u64, |sum, e| sum.saturating_add(e.size))
    }
}

/// The one spelling ferry uses for a CPU architecture.
pub(crate) fn normalize_arch(arch: &str) -> &str {
    match arch {
        "amd64" | "x86-64" => "x86_64",
        "arm64" | "aarch64_be" => "aarch64",
        "armhf" | "armv7" | "arm" => "armv7l",
        other => other,
    }
}

/// Docker's container-name rule, [a-zA-Z0-9][a-zA-Z0-9_.-]+, at most 128
/// long: checked wherever a name comes from outside, before anything is read.
pub(crate) fn is_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphanumeric())
        && bytes.all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
        && name.len() <= 128
}

fn is_image_id(id: &str) -> bool {
    id.strip_prefix("sha256:")
        .is_some_and(|hex| hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// An entry path must be relative, made of plain components, and under one of
/// the folders the format defines.
pub(crate) fn check_entry_path(path: &str) -> Result<()> {
    let refuse = |reason: &str| Err(Error::Unsafe { entry: path.to_string(), reason: reason.to_string() });
    if path.is_empty() || path.contains('\0') || path.contains('\\') {
        return refuse("empty or unusual characters");
    }
    if path.starts_with('/') {
        return refuse("absolute paths are never unpacked");
    }
    // Split by hand: Path::components() would quietly drop "." and "a//b".
    for segment in path.split('/') {
        match segment {
            ".." => return refuse("'..' would leave the destination"),
            "" | "." => return refuse("only plain relative paths are allowed"),
            _ => {}
        }
    }
    let top = path.split('/').next().unwrap_or_default();
    let known = top == super::MANIFEST_ENTRY
        || path == IMAGE_ENTRY
        || (top == CHECKPOINT_DIR && path.len() > CHECKPOINT_DIR.len() + 1)
        || (top == ROOTFS_DIR && path.len() > ROOTFS_DIR.len() + 1);
    if !known {
        return refuse("not a part of the payload format");
    }
    Ok(())
}

/// A path inside the container: absolute, plain, no `..`.
fn check_container_path(path: &str) -> Result<()> {
    let parsed = Path::new(path);
    let plain = parsed.is_absolute()
        && !path.contains('\0')
        && parsed.components().all(|c| matches!(c, Component::RootDir | Component::Normal(_)));
    if plain {
        Ok(())
    } else {
        Err(Error::Manifest(format!("container path {path:?} must be absolute without '..'")))
    }
}

#[cfg(test)]
mod tests;
