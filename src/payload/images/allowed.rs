//! What the container this host creates is granted: the ceiling for every
//! process in a payload's images.

use std::collections::BTreeSet;
use std::ops::RangeInclusive;

use super::SECCOMP_FILTER;
use super::seccomp::SeccompReference;
use crate::payload::Error;

/// Linux capability names by bit number (`linux/capability.h`), as Docker
/// spells them without the `CAP_` prefix.
const CAPABILITIES: [&str; 41] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

/// The 14 capabilities Docker grants a container by default (moby
/// `oci/caps/defaults.go`).
const DOCKER_DEFAULT_CAPS: [&str; 14] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "FSETID",
    "FOWNER",
    "MKNOD",
    "NET_RAW",
    "SETGID",
    "SETUID",
    "SETFCAP",
    "SETPCAP",
    "NET_BIND_SERVICE",
    "SYS_CHROOT",
    "KILL",
    "AUDIT_WRITE",
];

/// `mnt.proto`'s `fstype` numbers ferry accepts.
pub(crate) mod fstype {
    pub(crate) const UNSUPPORTED: u32 = 0;
    pub(crate) const PROC: u32 = 1;
    pub(crate) const SYSFS: u32 = 2;
    pub(crate) const DEVTMPFS: u32 = 3;
    pub(crate) const TMPFS: u32 = 5;
    pub(crate) const DEVPTS: u32 = 6;
    pub(crate) const CGROUP: u32 = 12;
    pub(crate) const MQUEUE: u32 = 14;
    pub(crate) const OVERLAYFS: u32 = 17;
    pub(crate) const CGROUP2: u32 = 23;
}

/// MS_* flags (`linux/mount.h`) a mount may be required to carry.
pub(crate) mod flags {
    pub(crate) const RDONLY: u32 = 1;
    pub(crate) const NOSUID: u32 = 2;
    pub(crate) const NODEV: u32 = 4;
    pub(crate) const NOEXEC: u32 = 8;
}

/// A mount a created container has: where, of which filesystem, which part
/// of it, and the flags it must keep. A payload may not put another
/// filesystem at an allowed place (a `debugfs` over `/proc/kcore`), show
/// another part of it (proc's `/sys` at `/proc`: the host's sysctls,
/// writable) or drop a flag (`/proc/sys` or a cgroup without `ro`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct AllowedMount {
    pub(crate) target: String,
    pub(crate) fstype: u32,
    /// The folder of the filesystem mounted there; `None`: any (a tmpfs, the
    /// container's own overlay, or a bind the runtime maps at restore).
    pub(crate) root: Option<String>,
    /// MS_* flags the mount must have; others it may have.
    pub(crate) required_flags: u32,
}

impl AllowedMount {
    fn new(target: &str, fstype: u32, root: Option<&str>, required_flags: u32) -> AllowedMount {
        AllowedMount { target: target.into(), fstype, root: root.map(String::from), required_flags }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Allowed {
    /// Bit N set: capability N may be in any set of any thread.
    pub(crate) caps: u64,
    /// Every uid of every thread (real, effective, saved, fs) must be in here.
    pub(crate) uids: RangeInclusive<u32>,
    /// Every gid, supplementary groups included.
    pub(crate) gids: RangeInclusive<u32>,
    /// The seccomp mode the container's profile implies; a thread may be
    /// stricter, never weaker.
    pub(crate) seccomp_mode: i32,
    /// Where a mount may be, and of which filesystem.
    pub(crate) mounts: BTreeSet<AllowedMount>,
    /// When set, every filter chain must start with it: the filters this
    /// host installs for the container's profile.
    pub(crate) seccomp_reference: Option<SeccompReference>,
    /// When set, every thread's `lsm_profile` must be this label: the
    /// AppArmor profile or SELinux context this host gives a container.
    pub(crate) lsm_label: Option<String>,
}

impl Allowed {
    /// A container created with Docker's defaults: the 14 default
    /// capabilities, the default seccomp profile (filter mode), root user,
    /// and the mounts Docker gives every container.
    ///
    /// The id ranges are open: the default set holds CAP_SETUID and
    /// CAP_SETGID, so the container's root can become any uid and gid, and a
    /// narrower range would refuse real workloads (nginx workers, postgres)
    /// without keeping a single power from them. Narrow it with
    /// [`Allowed::with_ids`] for a container that cannot change ids.
    pub(crate) fn docker_default() -> Allowed {
        Allowed {
            caps: mask_of(DOCKER_DEFAULT_CAPS.iter().copied()).unwrap_or(0),
            uids: 0..=u32::MAX,
            gids: 0..=u32::MAX,
            seccomp_mode: SECCOMP_FILTER,
            mounts: docker_mounts(),
            seccomp_reference: None,
            lsm_label: None,
        }
    }

    /// The default capabilities adjusted by `HostConfig.CapAdd`/`CapDrop`
    /// the way Docker does it (moby `oci/caps.TweakCapabilities`): "ALL" in
    /// CapAdd grants everything but CapDrop; "ALL" in CapDrop grants only
    /// CapAdd; otherwise defaults minus CapDrop plus CapAdd. Names are
    /// case-insensitive, with or without `CAP_`.
    #[cfg(test)]
    pub(crate) fn from_cap_changes(cap_add: &[String], cap_drop: &[String]) -> Result<Allowed, Error> {
        let add = mask_of(cap_add.iter().map(String::as_str).filter(|n| !is_all(n)))?;
        let drop = mask_of(cap_drop.iter().map(String::as_str).filter(|n| !is_all(n)))?;
        let all = (1u64 << CAPABILITIES.len()) - 1;
        let default = Allowed::docker_default();
        let caps = if cap_add.iter().any(|n| is_all(n)) {
            all & !drop
        } else if cap_drop.iter().any(|n| is_all(n)) {
            add
        } else {
            (default.caps & !drop) | add
        };
        Ok(Allowed { caps, ..default })
    }

    /// The ids of a container whose processes keep to its user.
    #[cfg(test)]
    pub(crate) fn with_ids(self, uids: RangeInclusive<u32>, gids: RangeInclusive<u32>) -> Allowed {
        Allowed { uids, gids, ..self }
    }

    /// The container runs with a seccomp mode other than filter
    /// (`SECCOMP_DISABLED` for `seccomp=unconfined`).
    #[cfg(test)]
    pub(crate) fn with_seccomp_mode(self, seccomp_mode: i32) -> Allowed {
        Allowed { seccomp_mode, ..self }
    }

    /// The filters this host installs for the container's profile.
    pub(crate) fn with_seccomp_reference(self, reference: SeccompReference) -> Allowed {
        Allowed { seccomp_reference: Some(reference), ..self }
    }

    /// The LSM label this host gives a container (`None`: no LSM confines
    /// containers here, and any label is no less than none).
    pub(crate) fn with_lsm_label(self, lsm_label: Option<String>) -> Allowed {
        Allowed { lsm_label, ..self }
    }

    /// `HostConfig.Tmpfs` of the created container: a tmpfs at each path.
    pub(crate) fn with_tmpfs<'a>(mut self, targets: impl IntoIterator<Item = &'a str>) -> Allowed {
        for target in targets {
            self.mounts.insert(AllowedMount::new(target, fstype::TMPFS, None, 0));
        }
        self
    }

    /// A container with `Tty` set: runc binds the terminal at /dev/console.
    pub(crate) fn with_tty(mut self) -> Allowed {
        self.mounts.insert(AllowedMount::new("/dev/console", fstype::DEVPTS, None, 0));
        self
    }

    /// The allowed mounts at `target`.
    pub(crate) fn mounts_at<'a>(&'a self, target: &'a str) -> impl Iterator<Item = &'a AllowedMount> + 'a {
        self.mounts.iter().filter(move |m| m.target == target)
    }
}

#[cfg(test)]
fn is_all(name: &str) -> bool {
    name.eq_ignore_ascii_case("ALL")
}

fn mask_of<'a>(names: impl Iterator<Item = &'a str>) -> Result<u64, Error> {
    let mut mask = 0u64;
    for name in names {
        let upper = name.to_ascii_uppercase();
        let bare = upper.strip_prefix("CAP_").unwrap_or(&upper);
        let bit = CAPABILITIES
            .iter()
            .position(|known| *known == bare)
            .ok_or_else(|| Error::Manifest(format!("unknown capability {name:?}")))?;
        mask |= 1 << bit;
    }
    Ok(mask)
}

/// The mounts of a container Docker creates with default options, as real
/// checkpoints' `mountpoints-*.img` show them (Docker 20.10, runc): the root,
/// the kernel filesystems, the three files Docker bind-mounts, and the masked
/// and read-only paths of its default spec (moby `oci/defaults.go`; a path
/// the host kernel lacks is simply not mounted). Flags as runc sets them.
fn docker_mounts() -> BTreeSet<AllowedMount> {
    use flags::*;
    use fstype::*;
    let hardened = NOSUID | NODEV | NOEXEC;
    let mut mounts = BTreeSet::from([
        AllowedMount::new("/", OVERLAYFS, None, 0),
        AllowedMount::new("/proc", PROC, Some("/"), hardened),
        AllowedMount::new("/dev", TMPFS, None, NOSUID),
        AllowedMount::new("/dev/pts", DEVPTS, Some("/"), NOSUID | NOEXEC),
        AllowedMount::new("/dev/shm", TMPFS, None, hardened),
        AllowedMount::new("/dev/mqueue", MQUEUE, Some("/"), hardened),
        AllowedMount::new("/sys", SYSFS, Some("/"), RDONLY | hardened),
        // cgroup v2: one read-only cgroup2; cgroup v1: a tmpfs with one
        // read-only cgroup mount per controller below it (added below).
        AllowedMount::new("/sys/fs/cgroup", CGROUP2, None, RDONLY | hardened),
        AllowedMount::new("/sys/fs/cgroup", TMPFS, None, hardened),
        // Bind mounts of host files: CRIU records them as external mounts
        // that runc maps back to this host's files at restore.
        AllowedMount::new("/etc/hostname", UNSUPPORTED, None, 0),
        AllowedMount::new("/etc/hosts", UNSUPPORTED, None, 0),
        AllowedMount::new("/etc/resolv.conf", UNSUPPORTED, None, 0),
    ]);
    // Masked files: /dev/null (on the container's /dev tmpfs) bound over them
    // — or, in a container that CRIU restored, the host's /dev/null (the
    // null device of devtmpfs, and nothing else of it).
    for target in [
        "/proc/kcore",
        "/proc/keys",
        "/proc/latency_stats",
        "/proc/timer_list",
        "/proc/timer_stats",
        "/proc/sched_debug",
    ] {
        mounts.insert(AllowedMount::new(target, TMPFS, None, 0));
        mounts.insert(AllowedMount::new(target, DEVTMPFS, Some("/null"), 0));
    }
    // Masked folders: an empty read-only tmpfs over them.
    for target in ["/proc/asound", "/proc/acpi", "/proc/scsi", "/sys/firmware", "/sys/devices/virtual/powercap"] {
        mounts.insert(AllowedMount::new(target, TMPFS, None, RDONLY));
    }
    // Read-only paths: each bound onto itself, read-only.
    for target in ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"] {
        let root = target.trim_start_matches("/proc");
        mounts.insert(AllowedMount::new(target, PROC, Some(root), RDONLY | hardened));
    }
    for controller in [
        "blkio",
        "cpu",
        "cpuacct",
        "cpu,cpuacct",
        "cpuset",
        "devices",
        "freezer",
        "hugetlb",
        "memory",
        "net_cls",
        "net_prio",
        "net_cls,net_prio",
        "perf_event",
        "pids",
        "rdma",
        "misc",
        "systemd",
    ] {
        let target = format!("/sys/fs/cgroup/{controller}");
        mounts.insert(AllowedMount::new(&target, CGROUP, None, RDONLY | hardened));
    }
    mounts
}
