//! Where the restored tasks live: `mountpoints-*.img` and `cgroup.img`.

use super::allowed::Allowed;
use super::cgroup::{CgroupDirEntry, CgroupEntry};
use super::schema::MntEntry;
use super::{each, frame, only, refuse};
use crate::payload::Error;

pub(super) fn check_mounts(name: &str, bytes: &[u8], allowed: &Allowed) -> Result<(), Error> {
    each(name, bytes, frame::MNTS_MAGIC, |mount: MntEntry| {
        let at = format!("mount {} mountpoint {:?}", mount.mnt_id, mount.mountpoint);
        let candidates: Vec<_> = allowed.mounts_at(&mount.mountpoint).collect();
        if candidates.is_empty() {
            return Err(refuse(name, format!("{at} is not a mount of the container this host creates")));
        }
        let candidates: Vec<_> = candidates.into_iter().filter(|m| m.fstype == mount.fstype).collect();
        if candidates.is_empty() {
            return Err(refuse(
                name,
                format!("{at} fstype {} is not the filesystem the container has there", mount.fstype),
            ));
        }
        let candidates: Vec<_> =
            candidates.into_iter().filter(|m| m.root.as_ref().is_none_or(|root| *root == mount.root)).collect();
        if candidates.is_empty() {
            return Err(refuse(name, format!("{at} root {:?} is not the part the container has there", mount.root)));
        }
        if !candidates.iter().any(|m| mount.flags & m.required_flags == m.required_flags) {
            let required = candidates.iter().map(|m| m.required_flags).fold(u32::MAX, |a, b| a & b);
            return Err(refuse(
                name,
                format!("{at} flags {:#x} lack the flags {required:#x} the container has there", mount.flags),
            ));
        }
        Ok(())
    })
}

/// CRIU puts tasks back into the cgroups `cgroup.img` names, relative to the
/// container's: a `..` would move them out of it.
pub(super) fn check_cgroup(name: &str, bytes: &[u8]) -> Result<(), Error> {
    let cgroup: CgroupEntry = only(name, bytes, frame::CGROUP_MAGIC)?;
    for member in cgroup.sets.iter().flat_map(|set| &set.ctls) {
        if member.path.split('/').any(|part| part == "..") {
            return Err(refuse(
                name,
                format!("cgroup {} path {:?} leaves the container's cgroup", member.name, member.path),
            ));
        }
    }
    let mut dirs: Vec<&CgroupDirEntry> = cgroup.controllers.iter().flat_map(|c| &c.dirs).collect();
    // A work list rather than recursion; prost already bounds the depth at decode.
    while let Some(dir) = dirs.pop() {
        if dir.dir_name.split('/').any(|part| part == "..") {
            return Err(refuse(name, format!("cgroup folder {:?} leaves the container's cgroup", dir.dir_name)));
        }
        dirs.extend(&dir.children);
    }
    Ok(())
}
