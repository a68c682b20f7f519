//! The few fields of CRIU's image messages that decide a restored process's
//! powers, with the tag numbers of CRIU's own `.proto` files (`images/` in
//! the CRIU sources, proto2). `cgroup.img`, which ferry also writes, has its
//! complete schema in `cgroup.rs`.
//!
//! Only these fields are declared: prost skips every field it does not know,
//! so a partial message decodes a full image, and ferry needs no protoc and
//! no generated code. A field CRIU marks `required` is declared `optional`
//! here when ferry must tell "absent" from zero (an absent `creds` falls back
//! to CRIU's legacy per-task creds file, which ferry never carries).
//! Repeated scalars are `packed = "false"` because proto2 writes them that
//! way; prost reads both encodings, as CRIU's protobuf-c does.

/// `inventory.proto`: `inventory_entry`.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct InventoryEntry {
    /// `required uint32 img_version = 1`
    #[prost(uint32, optional, tag = "1")]
    pub img_version: Option<u32>,
}

/// `pstree.proto`: `pstree_entry`, one per task.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct PstreeEntry {
    /// `required uint32 pid = 1`
    #[prost(uint32, optional, tag = "1")]
    pub pid: Option<u32>,
    /// `repeated uint32 threads = 5`
    #[prost(uint32, repeated, packed = "false", tag = "5")]
    pub threads: Vec<u32>,
}

/// `core.proto`: `core_entry`, one per thread (`core-<tid>.img`).
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct CoreEntry {
    /// `optional task_core_entry tc = 3` (set for a task's main thread)
    #[prost(message, optional, tag = "3")]
    pub tc: Option<TaskCoreEntry>,
    /// `optional thread_core_entry thread_core = 5`
    #[prost(message, optional, tag = "5")]
    pub thread_core: Option<ThreadCoreEntry>,
}

/// `core.proto`: `task_core_entry`. CRIU's restore moves these deprecated
/// per-task seccomp fields over the per-thread ones when they are present
/// (`cr-restore.c`), so they count as much as the new ones.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct TaskCoreEntry {
    /// `optional uint32 cg_set = 9`: the task's set in `cgroup.img`
    #[prost(uint32, optional, tag = "9")]
    pub cg_set: Option<u32>,
    /// `optional seccomp_mode old_seccomp_mode = 11` (an enum: a varint)
    #[prost(int32, optional, tag = "11")]
    pub old_seccomp_mode: Option<i32>,
    /// `optional uint32 old_seccomp_filter = 12`
    #[prost(uint32, optional, tag = "12")]
    pub old_seccomp_filter: Option<u32>,
}

/// `core.proto`: `thread_core_entry`.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct ThreadCoreEntry {
    /// `optional creds_entry creds = 10`
    #[prost(message, optional, tag = "10")]
    pub creds: Option<CredsEntry>,
    /// `optional seccomp_mode seccomp_mode = 11` (an enum: a varint)
    #[prost(int32, optional, tag = "11")]
    pub seccomp_mode: Option<i32>,
    /// `optional uint32 seccomp_filter = 12`: index into `seccomp.img`
    #[prost(uint32, optional, tag = "12")]
    pub seccomp_filter: Option<u32>,
    /// `optional uint32 cg_set = 16`: the thread's set in `cgroup.img`;
    /// newer CRIU writes it, and reads it before `task_core_entry.cg_set`
    #[prost(uint32, optional, tag = "16")]
    pub cg_set: Option<u32>,
}

/// `creds.proto`: `creds_entry`. Capability sets are arrays of 32-bit words,
/// lowest word first (CRIU's `CR_CAP_SIZE` is 2).
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct CredsEntry {
    #[prost(uint32, required, tag = "1")]
    pub uid: u32,
    #[prost(uint32, required, tag = "2")]
    pub gid: u32,
    #[prost(uint32, required, tag = "3")]
    pub euid: u32,
    #[prost(uint32, required, tag = "4")]
    pub egid: u32,
    #[prost(uint32, required, tag = "5")]
    pub suid: u32,
    #[prost(uint32, required, tag = "6")]
    pub sgid: u32,
    #[prost(uint32, required, tag = "7")]
    pub fsuid: u32,
    #[prost(uint32, required, tag = "8")]
    pub fsgid: u32,
    #[prost(uint32, repeated, packed = "false", tag = "9")]
    pub cap_inh: Vec<u32>,
    #[prost(uint32, repeated, packed = "false", tag = "10")]
    pub cap_prm: Vec<u32>,
    #[prost(uint32, repeated, packed = "false", tag = "11")]
    pub cap_eff: Vec<u32>,
    #[prost(uint32, repeated, packed = "false", tag = "12")]
    pub cap_bnd: Vec<u32>,
    /// `repeated uint32 groups = 14`: supplementary groups
    #[prost(uint32, repeated, packed = "false", tag = "14")]
    pub groups: Vec<u32>,
    /// `optional string lsm_profile = 15`: the AppArmor profile or SELinux
    /// context CRIU gives the task (none: it stays as CRIU runs, unconfined)
    #[prost(string, optional, tag = "15")]
    pub lsm_profile: Option<String>,
    /// `repeated uint32 cap_amb = 19`
    #[prost(uint32, repeated, packed = "false", tag = "19")]
    pub cap_amb: Vec<u32>,
}

/// `seccomp.proto`: `seccomp_entry`, the only entry of `seccomp.img`. Only
/// the tests build one: ferry walks its field by hand, one filter at a time.
#[cfg(test)]
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct SeccompEntry {
    /// `repeated seccomp_filter seccomp_filters = 1`
    #[prost(message, repeated, tag = "1")]
    pub seccomp_filters: Vec<SeccompFilter>,
}

/// `seccomp.proto`: `seccomp_filter`, one BPF program of a chain.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct SeccompFilter {
    /// `required bytes filter = 1`: `struct sock_filter` array
    #[prost(bytes = "vec", required, tag = "1")]
    pub filter: Vec<u8>,
    /// `optional uint32 prev = 2`: index of the filter installed before this one
    #[prost(uint32, optional, tag = "2")]
    pub prev: Option<u32>,
    /// `optional uint32 flags = 3`
    #[prost(uint32, optional, tag = "3")]
    pub flags: Option<u32>,
}

/// `mnt.proto`: `mnt_entry`, one per mount of a mount namespace.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct MntEntry {
    /// `required uint32 fstype = 1` (the `fstype` enum's number)
    #[prost(uint32, required, tag = "1")]
    pub fstype: u32,
    /// `required uint32 mnt_id = 2`
    #[prost(uint32, required, tag = "2")]
    pub mnt_id: u32,
    /// `required uint32 flags = 5`: MS_* flags of the mount
    #[prost(uint32, required, tag = "5")]
    pub flags: u32,
    /// `required string root = 6`
    #[prost(string, required, tag = "6")]
    pub root: String,
    /// `required string mountpoint = 7`
    #[prost(string, required, tag = "7")]
    pub mountpoint: String,
    /// `required string source = 8`
    #[prost(string, required, tag = "8")]
    pub source: String,
    /// `optional bool ext_mount = 13`: a mount the container runtime provides at restore
    #[prost(bool, optional, tag = "13")]
    pub ext_mount: Option<bool>,
    /// `optional string fsname = 14`
    #[prost(string, optional, tag = "14")]
    pub fsname: Option<String>,
    /// `optional string ext_key = 18`
    #[prost(string, optional, tag = "18")]
    pub ext_key: Option<String>,
}
