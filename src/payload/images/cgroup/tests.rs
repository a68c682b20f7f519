//! `cgroup.img` rewritten for a new container: built here with prost in the
//! shape CRIU writes on cgroup v2 (Docker's own namespace per container), and
//! the real v1 image of `testdata/` decoded and encoded again.

use std::fs;
use std::path::PathBuf;

use prost::Message;

use super::*;
use crate::payload::images::schema::{TaskCoreEntry, ThreadCoreEntry};
use crate::testing::TempDir;

const OLD: &str = "/system.slice/docker-0123456789abcdef.scope";
const NEW: &str = "/system.slice/docker-fedcba9876543210.scope";

fn framed<M: Message>(magic: u32, messages: &[M]) -> Vec<u8> {
    frame::encode(magic, messages).unwrap()
}

fn perms(mode: u32) -> Option<CgroupPerms> {
    Some(CgroupPerms { mode, uid: 0, gid: 0 })
}

fn property(name: &str, value: &str) -> CgroupPropEntry {
    CgroupPropEntry { name: name.into(), value: value.into(), perms: perms(0o100644) }
}

fn member(path: &str, cgns_prefix: Option<u32>) -> CgMemberEntry {
    CgMemberEntry { name: String::new(), path: path.into(), cgns_prefix }
}

/// A checkpoint of a container whose root task (set 1) is in its own
/// cgroup `root` and a worker (set 2) in a sub-cgroup, as CRIU dumps it on
/// a cgroup v2 host: one unified hierarchy, every path from its root, the
/// container's cgroup as the namespace root of both.
fn v2_image(root: &str) -> CgroupEntry {
    let prefix = Some(root.len() as u32);
    CgroupEntry {
        sets: vec![
            CgSetEntry { id: 1, ctls: vec![member(root, prefix)] },
            CgSetEntry { id: 2, ctls: vec![member(&format!("{root}/worker"), prefix)] },
        ],
        controllers: vec![CgControllerEntry {
            cnames: ["cpuset", "cpu", "io", "memory", "hugetlb", "pids"].map(String::from).to_vec(),
            dirs: vec![CgroupDirEntry {
                dir_name: root[1..].to_string(),
                children: vec![CgroupDirEntry {
                    dir_name: "worker".into(),
                    children: vec![],
                    properties: vec![property("memory.max", "max")],
                    dir_perms: perms(0o40755),
                }],
                properties: vec![
                    property("memory.max", "134217728"),
                    property("cpu.max", "100000 100000"),
                    CgroupPropEntry { name: "pids.max".into(), value: "max".into(), perms: None },
                ],
                dir_perms: perms(0o40755),
            }],
            is_threaded: Some(false),
        }],
    }
}

/// A checkpoint folder with pstree, the root task's core and `cgroup`.
fn checkpoint(label: &str, cgroup: &CgroupEntry) -> TempDir {
    let dir = TempDir::new(label);
    let pstree = PstreeEntry { pid: Some(1), threads: vec![1] };
    fs::write(dir.path().join("pstree.img"), framed(frame::PSTREE_MAGIC, &[pstree])).unwrap();
    // The thread's set wins over the task's, as in CRIU's restore.
    let core = CoreEntry {
        tc: Some(TaskCoreEntry { cg_set: Some(2), ..Default::default() }),
        thread_core: Some(ThreadCoreEntry { cg_set: Some(1), ..Default::default() }),
    };
    fs::write(dir.path().join("core-1.img"), framed(frame::CORE_MAGIC, &[core])).unwrap();
    fs::write(dir.path().join(NAME), framed(frame::CGROUP_MAGIC, std::slice::from_ref(cgroup))).unwrap();
    dir
}

fn read_back(dir: &Path) -> (Vec<u8>, CgroupEntry) {
    let bytes = fs::read(dir.join(NAME)).unwrap();
    let entry = only(NAME, &bytes, frame::CGROUP_MAGIC).unwrap();
    (bytes, entry)
}

#[test]
fn retarget_moves_every_path_into_the_new_container_and_keeps_everything_else() {
    let dir = checkpoint("cgroup-retarget", &v2_image(OLD));
    let moved = retarget(dir.path(), NEW).unwrap();
    assert_eq!(moved, Retargeted { old: OLD.into(), new: NEW.into(), members: 2, dirs: 1 });

    // What the image must say now: the same image taken in the new
    // container, down to the properties, permissions and set ids.
    let expected = v2_image(NEW);
    let (bytes, entry) = read_back(dir.path());
    assert_eq!(entry, expected);
    assert_eq!(bytes, framed(frame::CGROUP_MAGIC, std::slice::from_ref(&expected)), "framed as CRIU frames it, byte for byte");
    assert_eq!(entry.sets[1].ctls[0].path, format!("{NEW}/worker"));
    assert_eq!(entry.sets[0].ctls[0].cgns_prefix, Some(NEW.len() as u32));
    assert!(!fs::read_dir(dir.path()).unwrap().any(|e| e.unwrap().file_name().to_string_lossy().contains("ferry")));
}

#[test]
fn retarget_between_drivers_and_nested_namespaces_keeps_each_prefix_in_place() {
    // A cgroupfs source restored under systemd: old and new differ in length.
    let old = "/docker/0123456789abcdef";
    let mut image = v2_image(old);
    // The worker unshared its own namespace in its sub-cgroup.
    image.sets[1].ctls[0].cgns_prefix = Some(format!("{old}/worker").len() as u32);
    let dir = checkpoint("cgroup-nested", &image);
    retarget(dir.path(), NEW).unwrap();
    let (_, entry) = read_back(dir.path());
    assert_eq!(entry.sets[0].ctls[0].cgns_prefix, Some(NEW.len() as u32));
    let worker = &entry.sets[1].ctls[0];
    assert_eq!((worker.path.as_str(), worker.cgns_prefix), (format!("{NEW}/worker").as_str(), Some(worker.path.len() as u32)));
    assert_eq!(entry.controllers[0].dirs[0].dir_name, &NEW[1..]);
}

#[test]
fn retarget_refuses_an_image_that_leaves_the_container_or_hides_it() {
    let outside = |image: &mut CgroupEntry| image.sets[1].ctls[0].path = "/system.slice".into();
    let climbs = |image: &mut CgroupEntry| image.sets[1].ctls[0].path = format!("{OLD}/../../init.scope");
    let host_ns = |image: &mut CgroupEntry| image.sets[0].ctls[0].cgns_prefix = None;
    let root_ns = |image: &mut CgroupEntry| {
        image.sets[0].ctls[0].path = "/".into();
        image.sets[0].ctls[0].cgns_prefix = Some(1);
    };
    let long_prefix = |image: &mut CgroupEntry| image.sets[0].ctls[0].cgns_prefix = Some(4096);
    let ns_above = |image: &mut CgroupEntry| image.sets[1].ctls[0].cgns_prefix = Some("/system.slice".len() as u32);
    let folder_outside = |image: &mut CgroupEntry| image.controllers[0].dirs[0].dir_name = "init.scope".into();
    let folder_climbs = |image: &mut CgroupEntry| image.controllers[0].dirs[0].children[0].dir_name = "../../x".into();
    let no_root_set = |image: &mut CgroupEntry| image.sets[0].id = 7;
    type Edit<'a> = &'a dyn Fn(&mut CgroupEntry);
    let cases: [(Edit, &str); 9] = [
        (&outside, "is outside the container's cgroup"),
        (&climbs, "is not a plain path"),
        (&host_ns, "cannot be told (was it started with --cgroupns=host?)"),
        (&root_ns, "is the hierarchy root"),
        (&long_prefix, "is shorter than its cgns_prefix 4096"),
        (&ns_above, "has a cgroup namespace root outside"),
        (&folder_outside, "cgroup folder \"init.scope\" is outside"),
        (&folder_climbs, "is not a plain name"),
        (&no_root_set, "has no set 1, the root task's"),
    ];
    for (index, (edit, expected)) in cases.into_iter().enumerate() {
        let mut image = v2_image(OLD);
        edit(&mut image);
        let dir = checkpoint(&format!("cgroup-refused-{index}"), &image);
        let before = fs::read(dir.path().join(NAME)).unwrap();
        let error = retarget(dir.path(), NEW).unwrap_err().to_string();
        assert!(error.starts_with("cgroup.img: ") && error.contains(expected), "case {index}: {error}");
        assert_eq!(fs::read(dir.path().join(NAME)).unwrap(), before, "case {index}: the image is left as it was");
    }
}

#[test]
fn retarget_refuses_a_new_cgroup_that_is_not_a_plain_absolute_path() {
    for new in ["system.slice/docker-x.scope", "/system.slice/../x", "/", "/a//b", &format!("/{}", "a".repeat(MAX_PATH))] {
        let dir = checkpoint("cgroup-new", &v2_image(OLD));
        let error = retarget(dir.path(), new).unwrap_err().to_string();
        assert!(error.contains("new cgroup"), "{new}: {error}");
    }
}

#[test]
fn retarget_never_writes_through_a_planted_link() {
    let dir = checkpoint("cgroup-link", &v2_image(OLD));
    let victim = dir.path().join("victim");
    fs::write(&victim, b"keep").unwrap();
    std::os::unix::fs::symlink(&victim, dir.path().join(".cgroup.img.ferry")).unwrap();
    retarget(dir.path(), NEW).unwrap();
    assert_eq!(fs::read(&victim).unwrap(), b"keep");
    assert_eq!(read_back(dir.path()).1, v2_image(NEW));
}

#[test]
fn real_cgroup_image_round_trips_byte_for_byte() {
    // Proof that the schema is complete: prost would drop any field it
    // does not declare, and the encoding would come out shorter.
    let path: PathBuf = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/payload/images/testdata/docker-default/cgroup.img");
    let bytes = fs::read(path).unwrap();
    let mut entries = frame::open(&bytes, frame::CGROUP_MAGIC).unwrap();
    let message = entries.next_message().unwrap().unwrap();
    assert!(entries.next_message().unwrap().is_none());
    let entry = CgroupEntry::decode(message).unwrap();
    assert!(!entry.sets.is_empty() && !entry.controllers.is_empty());
    assert!(entry.controllers.iter().flat_map(|c| &c.dirs).any(|d| !d.properties.is_empty()), "properties were decoded");
    assert_eq!(entry.encode_to_vec(), message);
    assert_eq!(framed(frame::CGROUP_MAGIC, &[entry]), bytes);
}
