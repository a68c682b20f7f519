//! `cgroup.img`, whole: its schema, and the move of a checkpoint's cgroup
//! paths from the source container's cgroup to the new container's (issue 10).
//!
//! CRIU restores every task into the cgroup paths this image names, as they
//! were on the source host. On cgroup v2 nothing rewrites them for the new
//! container, so the restored process stays in a cgroup named after the
//! *source* container: the new container's cgroup stays empty, its memory
//! cap does not apply, and the freezer and CRIU cannot take it again.
//! [`retarget`] does what CRIU's own `--cgroup-root` does (`criu/cgroup.c`,
//! `rewrite_cgsets`): every member path under the old container's cgroup and
//! every dumped folder under it move to the new one, and `cgns_prefix`
//! follows.
//!
//! Unlike the checks in `schema.rs`, this module writes the image back, so
//! its schema is complete: prost drops every field it does not know, and a
//! missing field here would silently vanish from the restored cgroups (a
//! property, a permission). Every message of CRIU's `images/cgroup.proto`
//! is declared with every field, its tag, type and label copied from there;
//! the real fixture in `testdata/` round-trips byte for byte.

use std::path::Path;

use super::schema::{CoreEntry, PstreeEntry};
use super::{Kind, frame, only, read_image, refuse, replace_image};
use crate::payload::Error;

/// `cgroup.proto`: `cgroup_perms`.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct CgroupPerms {
    #[prost(uint32, required, tag = "1")]
    pub mode: u32,
    #[prost(uint32, required, tag = "2")]
    pub uid: u32,
    #[prost(uint32, required, tag = "3")]
    pub gid: u32,
}

/// `cgroup.proto`: `cgroup_prop_entry`, one file of a cgroup folder
/// (`memory.max`, …) with the value CRIU writes back.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct CgroupPropEntry {
    #[prost(string, required, tag = "1")]
    pub name: String,
    #[prost(string, required, tag = "2")]
    pub value: String,
    #[prost(message, optional, tag = "3")]
    pub perms: Option<CgroupPerms>,
}

/// `cgroup.proto`: `cgroup_dir_entry`, a tree of folders. A top folder's
/// `dir_name` is its path from the hierarchy root without the leading `/`;
/// a child's is its name under its parent (`dump_cg_dirs` in `criu/cgroup.c`).
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct CgroupDirEntry {
    #[prost(string, required, tag = "1")]
    pub dir_name: String,
    #[prost(message, repeated, tag = "2")]
    pub children: Vec<CgroupDirEntry>,
    #[prost(message, repeated, tag = "3")]
    pub properties: Vec<CgroupPropEntry>,
    #[prost(message, optional, tag = "4")]
    pub dir_perms: Option<CgroupPerms>,
}

/// `cgroup.proto`: `cg_controller_entry`, one hierarchy.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct CgControllerEntry {
    #[prost(string, repeated, tag = "1")]
    pub cnames: Vec<String>,
    #[prost(message, repeated, tag = "2")]
    pub dirs: Vec<CgroupDirEntry>,
    #[prost(bool, optional, tag = "3")]
    pub is_threaded: Option<bool>,
}

/// `cgroup.proto`: `cg_member_entry`, where a set's tasks live in one
/// hierarchy. `path[..cgns_prefix]` is the root of their cgroup namespace.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct CgMemberEntry {
    #[prost(string, required, tag = "1")]
    pub name: String,
    #[prost(string, required, tag = "2")]
    pub path: String,
    #[prost(uint32, optional, tag = "3")]
    pub cgns_prefix: Option<u32>,
}

/// `cgroup.proto`: `cg_set_entry`; a task names its set by `id`
/// (`task_core_entry.cg_set`).
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct CgSetEntry {
    #[prost(uint32, required, tag = "1")]
    pub id: u32,
    #[prost(message, repeated, tag = "2")]
    pub ctls: Vec<CgMemberEntry>,
}

/// `cgroup.proto`: `cgroup_entry`, the only entry of `cgroup.img`.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct CgroupEntry {
    #[prost(message, repeated, tag = "1")]
    pub sets: Vec<CgSetEntry>,
    #[prost(message, repeated, tag = "2")]
    pub controllers: Vec<CgControllerEntry>,
}

/// The longest cgroup path ferry writes into an image. CRIU builds these
/// paths with `sprintf` into `PATH_MAX` buffers after the mount point of the
/// hierarchy and before a file name (`prepare_cgroup_dirs`), so a longer one
/// from a payload must never reach it; real ones are under 100 bytes.
const MAX_PATH: usize = 2048;

/// What [`retarget`] moved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Retargeted {
    /// The source container's cgroup, as the image named it.
    pub old: String,
    /// The new container's cgroup.
    pub new: String,
    /// Member paths (`cg_member_entry.path`) that moved.
    pub members: usize,
    /// Top folders of the dumped trees (`cgroup_dir_entry.dir_name`) that moved.
    pub dirs: usize,
}

const NAME: &str = "cgroup.img";

/// Rewrites `cgroup.img` in `images_dir` so that CRIU restores the tasks
/// into `new_cgroup` (a path from the hierarchy root, such as
/// `/system.slice/docker-<id>.scope`) instead of the source container's
/// cgroup. The old cgroup is the root of the root task's cgroup namespace,
/// read from the image; an image where it cannot be told, or that names a
/// path outside it, is refused and left as it was. The file is replaced
/// whole (written beside it, then renamed), never half written.
pub(crate) fn retarget(images_dir: &Path, new_cgroup: &str) -> Result<Retargeted, Error> {
    // The hierarchy root is no container's cgroup, and no cap applies there.
    check_absolute(new_cgroup)
        .and_then(|()| if new_cgroup == "/" { Err("is the hierarchy root") } else { Ok(()) })
        .map_err(|why| refuse(NAME, format!("new cgroup {new_cgroup:?} {why}")))?;
    let root_set = root_task_cg_set(images_dir)?;
    let bytes = read_image(images_dir, NAME, Kind::Cgroup)?;
    let mut cgroup: CgroupEntry = only(NAME, &bytes, frame::CGROUP_MAGIC)?;
    let moved = retarget_entry(&mut cgroup, root_set, new_cgroup)?;
    write_image(images_dir, &cgroup)?;
    Ok(moved)
}

/// The rewrite itself, on a decoded image.
fn retarget_entry(cgroup: &mut CgroupEntry, root_set: u32, new: &str) -> Result<Retargeted, Error> {
    let old = container_cgroup(cgroup, root_set)?;
    let mut moved = Retargeted { old: old.clone(), new: new.to_string(), members: 0, dirs: 0 };

    for set in &mut cgroup.sets {
        for member in &mut set.ctls {
            let at = || format!("set {} cgroup {:?} path {:?}", set.id, member.name, member.path);
            check_absolute(&member.path).map_err(|why| refuse(NAME, format!("{} {why}", at())))?;
            // A task outside the container's cgroup would be restored there
            // on this host, outside every cap of the new container.
            let rest = below(&member.path, &old)
                .ok_or_else(|| refuse(NAME, format!("{} is outside the container's cgroup {old}", at())))?;
            let prefix = match member.cgns_prefix {
                // CRIU writes no prefix for a task in the host's namespace,
                // and reads 0 the same way.
                None | Some(0) => member.cgns_prefix,
                // A nested namespace root keeps its place under the container.
                Some(prefix) => {
                    let prefix = prefix as usize;
                    if prefix < old.len() || !member.path.is_char_boundary(prefix) || below(&member.path[..prefix], &old).is_none() {
                        return Err(refuse(NAME, format!("{} has a cgroup namespace root outside {old}", at())));
                    }
                    Some(to_u32(prefix - old.len() + new.len())?)
                }
            };
            member.path = joined(new, rest)?;
            member.cgns_prefix = prefix;
            moved.members += 1;
        }
    }

    // Top folders hold their path from the hierarchy root, without the
    // leading '/'; children hold one name each and move with their parent.
    let old_dir = &old[1..];
    let new_dir = &new[1..];
    for controller in &mut cgroup.controllers {
        for top in &mut controller.dirs {
            check_relative(&top.dir_name).map_err(|why| refuse(NAME, format!("cgroup folder {:?} {why}", top.dir_name)))?;
            // CRIU dumps the folders its tasks live in: with every task under
            // the container's cgroup, a top folder elsewhere was not dumped
            // from this container.
            let rest = below(&top.dir_name, old_dir).ok_or_else(|| {
                refuse(NAME, format!("cgroup folder {:?} is outside the container's cgroup {old}", top.dir_name))
            })?;
            top.dir_name = joined(new_dir, rest)?;
            check_children(&top.children, top.dir_name.len())?;
            moved.dirs += 1;
        }
    }
    if moved.members == 0 {
        return Err(refuse(NAME, "names no task's cgroup: nothing to restore into the new container"));
    }
    Ok(moved)
}

/// The source container's cgroup: the root of the root task's cgroup
/// namespace. Docker gives a container its own namespace on cgroup v2, so
/// the root task's set names it in every hierarchy, the same in each.
fn container_cgroup(cgroup: &CgroupEntry, root_set: u32) -> Result<String, Error> {
    let set = cgroup
        .sets
        .iter()
        .find(|set| set.id == root_set)
        .ok_or_else(|| refuse(NAME, format!("has no set {root_set}, the root task's")))?;
    let mut roots = Vec::new();
    for member in &set.ctls {
        let Some(prefix) = member.cgns_prefix.filter(|p| *p > 0) else { continue };
        let root = member.path.get(..prefix as usize).ok_or_else(|| {
            refuse(NAME, format!("cgroup {:?} path {:?} is shorter than its cgns_prefix {prefix}", member.name, member.path))
        })?;
        roots.push(root);
    }
    let mut roots = roots.into_iter();
    let root = roots.next().ok_or_else(|| {
        refuse(
            NAME,
            format!(
                "the root task's set {root_set} has no cgroup namespace root, so the source container's cgroup \
                 cannot be told (was it started with --cgroupns=host?)"
            ),
        )
    })?;
    if let Some(other) = roots.find(|other| other != &root) {
        return Err(refuse(NAME, format!("the root task's cgroup namespace roots differ ({root:?}, {other:?})")));
    }
    check_absolute(root).map_err(|why| refuse(NAME, format!("the root task's cgroup namespace root {root:?} {why}")))?;
    if root == "/" {
        return Err(refuse(NAME, "the root task's cgroup namespace root is the hierarchy root, not a container's cgroup"));
    }
    Ok(root.to_string())
}

/// The children of a moved folder: plain names, and no path longer than
/// CRIU's buffers once joined under the new top folder.
fn check_children(children: &[CgroupDirEntry], parent_len: usize) -> Result<(), Error> {
    for child in children {
        let name = &child.dir_name;
        if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\0']) {
            return Err(refuse(NAME, format!("cgroup folder name {name:?} is not a plain name")));
        }
        let len = parent_len + 1 + name.len();
        if len > MAX_PATH {
            return Err(refuse(NAME, format!("cgroup folder path is longer than {MAX_PATH} bytes")));
        }
        // prost bounds the nesting at decode, so the recursion is bounded too.
        check_children(&child.children, len)?;
    }
    Ok(())
}

/// What follows `root` in `path` ("" or "/…"), if `path` is `root` or under it.
fn below<'a>(path: &'a str, root: &str) -> Option<&'a str> {
    let rest = path.strip_prefix(root)?;
    (rest.is_empty() || rest.starts_with('/')).then_some(rest)
}

fn joined(new: &str, rest: &str) -> Result<String, Error> {
    let path = format!("{new}{rest}");
    if path.len() > MAX_PATH {
        return Err(refuse(NAME, format!("a cgroup path under {new} would be longer than {MAX_PATH} bytes")));
    }
    Ok(path)
}

fn to_u32(value: usize) -> Result<u32, Error> {
    u32::try_from(value).map_err(|_| refuse(NAME, format!("cgroup namespace prefix {value} is out of range")))
}

/// A cgroup path from the hierarchy root: `/`, then plain names.
fn check_absolute(path: &str) -> Result<(), &'static str> {
    if path.len() > MAX_PATH {
        return Err("is too long");
    }
    match path.strip_prefix('/') {
        None => Err("is not absolute"),
        Some("") => Ok(()),
        Some(rest) => check_relative(rest),
    }
}

/// Plain names joined by single slashes: never `..`, which would climb
/// out of the cgroup CRIU creates the folder in, nor `.`, empty names or NUL.
fn check_relative(path: &str) -> Result<(), &'static str> {
    if path.len() > MAX_PATH {
        return Err("is too long");
    }
    if path.is_empty() {
        return Err("is the hierarchy root");
    }
    if path.contains('\0') {
        return Err("holds a NUL byte");
    }
    if path.split('/').any(|part| part.is_empty() || part == "." || part == "..") {
        return Err("is not a plain path (empty, '.' or '..' part)");
    }
    Ok(())
}

/// The cgroup set of the root task: the first task of `pstree.img`
/// (CRIU writes the tree root first), read from its core image as CRIU's
/// restore reads it (`cr-restore.c`): the thread's `cg_set` when present,
/// the task's otherwise.
fn root_task_cg_set(images_dir: &Path) -> Result<u32, Error> {
    let pstree = read_image(images_dir, "pstree.img", Kind::Pstree)?;
    let mut entries = frame::open(&pstree, frame::PSTREE_MAGIC).map_err(|e| refuse("pstree.img", e))?;
    let first = entries.next_message().map_err(|e| refuse("pstree.img", e))?.ok_or_else(|| refuse("pstree.img", "names no task"))?;
    let root: PstreeEntry = super::decode("pstree.img", first)?;
    let pid = root.pid.ok_or_else(|| refuse("pstree.img", "the root task has no pid"))?;
    let name = format!("core-{pid}.img");
    let core: CoreEntry = only(&name, &read_image(images_dir, &name, Kind::Core(pid))?, frame::CORE_MAGIC)?;
    core.thread_core
        .and_then(|thread| thread.cg_set)
        .or_else(|| core.tc.and_then(|tc| tc.cg_set))
        .ok_or_else(|| refuse(&name, format!("the root task {pid} names no cgroup set")))
}

/// Writes `cgroup` as CRIU frames it over the old image.
fn write_image(images_dir: &Path, cgroup: &CgroupEntry) -> Result<(), Error> {
    let image = frame::encode(frame::CGROUP_MAGIC, std::slice::from_ref(cgroup)).map_err(|detail| refuse(NAME, detail))?;
    replace_image(images_dir, NAME, &image)
}

#[cfg(test)]
mod tests;
