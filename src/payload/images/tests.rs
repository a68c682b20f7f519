//! Images built here with prost, and real ones from `docker checkpoint
//! create` (testdata/): what passes, and every way one is refused.

use std::path::PathBuf;

use super::allowed::{flags, fstype};
use super::seccomp::{FILTER_FLAG_LOG, FILTER_FLAG_TSYNC};
use super::cgroup::{CgMemberEntry, CgSetEntry, CgroupEntry};
use super::schema::{
    CoreEntry, CredsEntry, MntEntry, PstreeEntry, SeccompEntry, SeccompFilter,
    TaskCoreEntry, ThreadCoreEntry,
};
use super::*;

/// Docker's default capabilities, as `/proc/PID/status` shows them.
const DEFAULT_CAPS: u32 = 0xa804_25fb;
const CAP_SYS_ADMIN: u32 = 1 << 21;

struct Scratch(PathBuf);

impl Scratch {
    fn new(label: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("ferry-images-{label}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    fn write(&self, name: &str, bytes: &[u8]) {
        fs::write(self.0.join(name), bytes).unwrap();
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn testdata(set: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src/payload/images/testdata").join(set)
}

/// An image file as CRIU writes it: magic(s), then length-prefixed messages.
fn image<M: Message>(magic: u32, messages: &[M]) -> Vec<u8> {
    frame::encode(magic, messages).unwrap()
}

fn root_creds() -> CredsEntry {
    CredsEntry {
        cap_inh: vec![0, 0],
        cap_prm: vec![DEFAULT_CAPS, 0],
        cap_eff: vec![DEFAULT_CAPS, 0],
        cap_bnd: vec![DEFAULT_CAPS, 0],
        cap_amb: vec![0, 0],
        groups: vec![0],
        ..Default::default()
    }
}

fn core(creds: CredsEntry, seccomp_mode: i32) -> CoreEntry {
    CoreEntry {
        tc: Some(TaskCoreEntry::default()),
        thread_core: Some(ThreadCoreEntry {
            creds: Some(creds),
            seccomp_mode: Some(seccomp_mode),
            seccomp_filter: Some(0),
            cg_set: None,
        }),
    }
}

fn mount(mnt_id: u32, target: &str, fstype: u32, root: &str, flags: u32) -> MntEntry {
    MntEntry {
        fstype,
        mnt_id,
        flags,
        root: root.into(),
        mountpoint: target.into(),
        source: "none".into(),
        ..Default::default()
    }
}

fn docker_mounts() -> Vec<MntEntry> {
    let hardened = flags::NOSUID | flags::NODEV | flags::NOEXEC;
    vec![
        mount(1, "/", fstype::OVERLAYFS, "/", 0),
        mount(2, "/proc", fstype::PROC, "/", hardened),
        mount(3, "/dev", fstype::TMPFS, "/", flags::NOSUID),
        mount(4, "/dev/shm", fstype::TMPFS, "/", hardened),
        mount(5, "/sys", fstype::SYSFS, "/", flags::RDONLY | hardened),
        mount(6, "/proc/sys", fstype::PROC, "/sys", flags::RDONLY | hardened),
        mount(7, "/etc/hosts", fstype::UNSUPPORTED, "/some/host/path", 0),
    ]
}

/// A checkpoint of one single-threaded task under Docker's defaults.
fn good_checkpoint(label: &str) -> Scratch {
    let scratch = Scratch::new(label);
    scratch.write("inventory.img", &image(frame::INVENTORY_MAGIC, &[InventoryEntry { img_version: Some(2) }]));
    scratch.write("pstree.img", &image(frame::PSTREE_MAGIC, &[PstreeEntry { pid: Some(1), threads: vec![1] }]));
    scratch.write("core-1.img", &image(frame::CORE_MAGIC, &[core(root_creds(), SECCOMP_FILTER)]));
    let filter = SeccompFilter { filter: vec![0x06, 0, 0, 0, 0, 0, 0xff, 0x7f], prev: None, flags: Some(1) };
    scratch.write("seccomp.img", &image(frame::SECCOMP_MAGIC, &[SeccompEntry { seccomp_filters: vec![filter] }]));
    scratch.write("mountpoints-13.img", &image(frame::MNTS_MAGIC, &docker_mounts()));
    scratch
}

fn refusal(dir: &Path, allowed: &Allowed) -> String {
    check(dir, allowed).expect_err("the images were accepted").to_string()
}

#[test]
fn checkpoint_within_docker_defaults_passes() {
    let checkpoint = good_checkpoint("good");
    check(&checkpoint.0, &Allowed::docker_default()).unwrap();
}

#[test]
fn raised_capabilities_are_refused_naming_set_and_value() {
    for field in ["cap_inh", "cap_prm", "cap_eff", "cap_bnd", "cap_amb"] {
        let checkpoint = good_checkpoint(&format!("caps-{field}"));
        let mut creds = root_creds();
        let set = match field {
            "cap_inh" => &mut creds.cap_inh,
            "cap_prm" => &mut creds.cap_prm,
            "cap_eff" => &mut creds.cap_eff,
            "cap_bnd" => &mut creds.cap_bnd,
            _ => &mut creds.cap_amb,
        };
        set[0] = 0xfeff_ffff;
        checkpoint.write("core-1.img", &image(frame::CORE_MAGIC, &[core(creds, SECCOMP_FILTER)]));
        let error = refusal(&checkpoint.0, &Allowed::docker_default());
        assert_eq!(
            error,
            format!("core-1.img: task 1 {field} 0x00000000feffffff exceeds what this host grants (0x00000000a80425fb)")
        );
    }
}

#[test]
fn capability_beyond_the_second_word_is_refused() {
    let checkpoint = good_checkpoint("caps-word3");
    let mut creds = root_creds();
    creds.cap_bnd.push(1);
    checkpoint.write("core-1.img", &image(frame::CORE_MAGIC, &[core(creds, SECCOMP_FILTER)]));
    let error = refusal(&checkpoint.0, &Allowed::docker_default());
    assert!(error.contains("task 1 cap_bnd [a80425fb, 0, 1] exceeds"), "{error}");
}

#[test]
fn seccomp_disabled_is_refused_where_the_profile_filters() {
    let checkpoint = good_checkpoint("seccomp-off");
    checkpoint.write("core-1.img", &image(frame::CORE_MAGIC, &[core(root_creds(), SECCOMP_DISABLED)]));
    let error = refusal(&checkpoint.0, &Allowed::docker_default());
    assert!(error.starts_with("core-1.img: task 1 seccomp_mode 0 is weaker"), "{error}");
    // An unconfined container may be restored unconfined, or stricter.
    check(&checkpoint.0, &Allowed::docker_default().with_seccomp_mode(SECCOMP_DISABLED)).unwrap();
}

#[test]
fn deprecated_task_seccomp_fields_count_as_criu_restores_them() {
    let checkpoint = good_checkpoint("seccomp-old");
    let mut entry = core(root_creds(), SECCOMP_FILTER);
    entry.tc = Some(TaskCoreEntry { old_seccomp_mode: Some(SECCOMP_DISABLED), ..Default::default() });
    checkpoint.write("core-1.img", &image(frame::CORE_MAGIC, &[entry]));
    let error = refusal(&checkpoint.0, &Allowed::docker_default());
    assert!(error.contains("seccomp_mode 0 is weaker"), "{error}");
}

#[test]
fn unknown_seccomp_mode_is_refused() {
    let checkpoint = good_checkpoint("seccomp-unknown");
    checkpoint.write("core-1.img", &image(frame::CORE_MAGIC, &[core(root_creds(), -1)]));
    assert!(refusal(&checkpoint.0, &Allowed::docker_default()).contains("seccomp_mode -1"));
    checkpoint.write("core-1.img", &image(frame::CORE_MAGIC, &[core(root_creds(), SECCOMP_STRICT)]));
    check(&checkpoint.0, &Allowed::docker_default()).unwrap();
}

#[test]
fn seccomp_filter_chain_must_exist_and_end() {
    let checkpoint = good_checkpoint("seccomp-chain");
    let program = vec![0x06, 0, 0, 0, 0, 0, 0xff, 0x7f];
    let looped = SeccompEntry {
        seccomp_filters: vec![
            SeccompFilter { filter: program.clone(), prev: Some(1), flags: None },
            SeccompFilter { filter: program.clone(), prev: Some(0), flags: None },
        ],
    };
    checkpoint.write("seccomp.img", &image(frame::SECCOMP_MAGIC, &[looped]));
    let error = refusal(&checkpoint.0, &Allowed::docker_default());
    assert!(error.contains("seccomp filter chain loops"), "{error}");

    let dangling =
        SeccompEntry { seccomp_filters: vec![SeccompFilter { filter: program, prev: Some(7), flags: None }] };
    checkpoint.write("seccomp.img", &image(frame::SECCOMP_MAGIC, &[dangling]));
    let error = refusal(&checkpoint.0, &Allowed::docker_default());
    assert!(error.contains("seccomp_filter 7 is not in seccomp.img (1 filters)"), "{error}");

    fs::remove_file(checkpoint.0.join("seccomp.img")).unwrap();
    let error = refusal(&checkpoint.0, &Allowed::docker_default());
    assert!(error.contains("seccomp_filter 0 is not in seccomp.img (0 filters)"), "{error}");
}

#[test]
fn seccomp_filter_of_partial_instructions_is_refused() {
    let checkpoint = good_checkpoint("seccomp-len");
    let odd = SeccompEntry { seccomp_filters: vec![SeccompFilter { filter: vec![0; 12], prev: None, flags: None }] };
    checkpoint.write("seccomp.img", &image(frame::SECCOMP_MAGIC, &[odd]));
    let error = refusal(&checkpoint.0, &Allowed::docker_default());
    assert!(error.starts_with("seccomp.img: filter 0 is 12 bytes"), "{error}");
}

/// `BPF_RET | BPF_K` with `SECCOMP_RET_ALLOW`: a filter that allows everything.
const ALLOW_ALL: [u8; 8] = [0x06, 0, 0, 0, 0, 0, 0xff, 0x7f];
/// `SECCOMP_RET_ERRNO | EPERM`: one that denies everything.
const DENY_ALL: [u8; 8] = [0x06, 0, 0, 0, 1, 0, 0x05, 0x00];

fn reference(programs: &[&[u8]]) -> SeccompReference {
    SeccompReference { programs: programs.iter().map(|program| program.to_vec()).collect() }
}

fn seccomp_image(filters: Vec<SeccompFilter>) -> Vec<u8> {
    image(frame::SECCOMP_MAGIC, &[SeccompEntry { seccomp_filters: filters }])
}

fn filters_of(dir: &Path) -> Vec<SeccompFilter> {
    let bytes = fs::read(dir.join("seccomp.img")).unwrap();
    let entry: SeccompEntry = only("seccomp.img", &bytes, frame::SECCOMP_MAGIC).unwrap();
    entry.seccomp_filters
}

#[test]
fn seccomp_chains_must_start_with_this_hosts_program() {
    let checkpoint = good_checkpoint("seccomp-reference");
    check(&checkpoint.0, &Allowed::docker_default().with_seccomp_reference(reference(&[&ALLOW_ALL]))).unwrap();

    let error = refusal(&checkpoint.0, &Allowed::docker_default().with_seccomp_reference(reference(&[&DENY_ALL])));
    assert!(error.starts_with("seccomp.img: task 1's filter 0 (sha256 "), "{error}");
    assert!(error.contains("is not the program this host's engine installs"), "{error}");
    let error =
        refusal(&checkpoint.0, &Allowed::docker_default().with_seccomp_reference(reference(&[&ALLOW_ALL, &DENY_ALL])));
    assert!(error.contains("task 1 runs under 1 seccomp filters, fewer than the 2"), "{error}");

    // A flag CRIU never records is refused, with or without a reference.
    let flagged = SeccompFilter { filter: ALLOW_ALL.to_vec(), prev: None, flags: Some(4) };
    checkpoint.write("seccomp.img", &seccomp_image(vec![flagged]));
    let error = refusal(&checkpoint.0, &Allowed::docker_default());
    assert!(error.contains("task 1's filter 0 has flags 0x4: only TSYNC and LOG"), "{error}");
}

#[test]
fn this_hosts_program_replaces_the_first_filter_of_every_chain_and_the_apps_stay_above() {
    let checkpoint = good_checkpoint("seccomp-rebase");
    // Filter 0: what the source's runtime installed (here: edited to allow
    // everything); 1: one the app stacked on it; 2: a second task's own chain.
    let filters = vec![
        SeccompFilter { filter: ALLOW_ALL.to_vec(), prev: None, flags: Some(FILTER_FLAG_TSYNC) },
        SeccompFilter { filter: DENY_ALL.to_vec(), prev: Some(0), flags: Some(FILTER_FLAG_LOG) },
        SeccompFilter { filter: ALLOW_ALL.to_vec(), prev: None, flags: None },
    ];
    checkpoint.write("seccomp.img", &seccomp_image(filters.clone()));
    let mut core = core(root_creds(), SECCOMP_FILTER);
    core.thread_core.as_mut().unwrap().seccomp_filter = Some(1);
    checkpoint.write("core-1.img", &image(frame::CORE_MAGIC, &[core]));
    let host: &[u8] = &[0x06, 0, 0, 0, 2, 0, 0x05, 0x00];
    let error = refusal(&checkpoint.0, &Allowed::docker_default().with_seccomp_reference(reference(&[host])));
    assert!(error.contains("task 1's filter 0 (sha256 "), "{error}");

    assert_eq!(enforce_seccomp(&checkpoint.0, &reference(&[host])).unwrap(), 2);
    let rebased = filters_of(&checkpoint.0);
    assert_eq!(rebased.len(), 3);
    assert_eq!((rebased[0].filter.as_slice(), rebased[0].prev, rebased[0].flags), (host, None, Some(FILTER_FLAG_TSYNC)));
    assert_eq!(rebased[1], filters[1], "the app's own filter is kept");
    assert_eq!((rebased[2].filter.as_slice(), rebased[2].prev), (host, None));
    check(&checkpoint.0, &Allowed::docker_default().with_seccomp_reference(reference(&[host]))).unwrap();

    // A host whose runtime stacks two programs: the earlier one goes after
    // every existing index, beneath each replaced filter.
    checkpoint.write("seccomp.img", &seccomp_image(filters.clone()));
    let two = reference(&[&DENY_ALL, host]);
    assert_eq!(enforce_seccomp(&checkpoint.0, &two).unwrap(), 2);
    let rebased = filters_of(&checkpoint.0);
    assert_eq!(rebased.len(), 4);
    assert_eq!((rebased[0].filter.as_slice(), rebased[0].prev), (host, Some(3)));
    assert_eq!((rebased[2].filter.as_slice(), rebased[2].prev), (host, Some(3)));
    assert_eq!((rebased[3].filter.as_slice(), rebased[3].prev), (&DENY_ALL[..], None));
    check(&checkpoint.0, &Allowed::docker_default().with_seccomp_reference(two)).unwrap();

    // An engine that installs no filter leaves the image as it is.
    checkpoint.write("seccomp.img", &seccomp_image(filters.clone()));
    assert_eq!(enforce_seccomp(&checkpoint.0, &reference(&[])).unwrap(), 0);
    assert_eq!(filters_of(&checkpoint.0), filters);
}

#[test]
fn real_checkpoints_restore_under_this_hosts_program() {
    // One of this host's runtime's layouts of Docker's default profile,
    // from another checkpoint: the real images, rebased on it, pass; the
    // rewrite keeps every other byte CRIU reads.
    let host = reference_of(&testdata("tmpfs"));
    for set in ["docker-default", "redis-threads"] {
        let copy = Scratch::new(&format!("rebase-{set}"));
        for file in fs::read_dir(testdata(set)).unwrap() {
            let file = file.unwrap();
            fs::copy(file.path(), copy.0.join(file.file_name())).unwrap();
        }
        let before = filters_of(&copy.0);
        enforce_seccomp(&copy.0, &host).unwrap();
        let after = filters_of(&copy.0);
        assert_eq!(after.len(), before.len());
        for (old, new) in before.iter().zip(&after) {
            assert_eq!((old.prev, old.flags), (new.prev, new.flags));
            let expected = if old.prev.is_none() { &host.programs[0] } else { &old.filter };
            assert_eq!(&new.filter, expected);
        }
        check(&copy.0, &Allowed::docker_default().with_seccomp_reference(host.clone())).unwrap();
    }
}

#[test]
fn every_thread_must_carry_the_lsm_label_this_host_gives() {
    let checkpoint = good_checkpoint("lsm");
    let apparmor = Allowed::docker_default().with_lsm_label(Some("docker-default".into()));
    for (label, refused) in [(None, true), (Some("unconfined"), true), (Some("other"), true), (Some("docker-default"), false)] {
        let creds = CredsEntry { lsm_profile: label.map(String::from), ..root_creds() };
        checkpoint.write("core-1.img", &image(frame::CORE_MAGIC, &[core(creds, SECCOMP_FILTER)]));
        match refused {
            true => {
                let error = refusal(&checkpoint.0, &apparmor);
                assert!(error.starts_with("core-1.img: task 1 lsm_profile "), "{error}");
                assert!(error.contains(r#"is not the label this host gives a container ("docker-default")"#), "{error}");
            }
            false => check(&checkpoint.0, &apparmor).unwrap(),
        }
        // Where no LSM confines containers, no label is less than none.
        check(&checkpoint.0, &Allowed::docker_default()).unwrap();
    }
}

#[test]
fn foreign_ids_are_refused_where_the_container_keeps_its_user() {
    let allowed = Allowed::docker_default().with_ids(1000..=1000, 1000..=1000);
    let user = |creds: CredsEntry| CredsEntry {
        uid: 1000,
        euid: 1000,
        suid: 1000,
        fsuid: 1000,
        gid: 1000,
        egid: 1000,
        sgid: 1000,
        fsgid: 1000,
        groups: vec![1000],
        ..creds
    };
    let checkpoint = good_checkpoint("ids");
    checkpoint.write("core-1.img", &image(frame::CORE_MAGIC, &[core(user(root_creds()), SECCOMP_FILTER)]));
    check(&checkpoint.0, &allowed).unwrap();

    let mut creds = user(root_creds());
    creds.euid = 0;
    checkpoint.write("core-1.img", &image(frame::CORE_MAGIC, &[core(creds, SECCOMP_FILTER)]));
    assert_eq!(
        refusal(&checkpoint.0, &allowed),
        "core-1.img: task 1 euid 0 is outside the container's uids 1000..=1000"
    );
    let mut creds = user(root_creds());
    creds.groups.push(0);
    checkpoint.write("core-1.img", &image(frame::CORE_MAGIC, &[core(creds, SECCOMP_FILTER)]));
    assert!(refusal(&checkpoint.0, &allowed).contains("task 1 groups 0 is outside"));
}

#[test]
fn every_thread_listed_in_pstree_is_checked() {
    let checkpoint = good_checkpoint("threads");
    checkpoint.write("pstree.img", &image(frame::PSTREE_MAGIC, &[PstreeEntry { pid: Some(1), threads: vec![1, 9] }]));
    assert_eq!(
        refusal(&checkpoint.0, &Allowed::docker_default()),
        "core-9.img: missing for task 9 listed in pstree.img"
    );
    let mut creds = root_creds();
    creds.cap_eff[0] |= CAP_SYS_ADMIN;
    let thread = CoreEntry { tc: None, ..core(creds, SECCOMP_FILTER) };
    checkpoint.write("core-9.img", &image(frame::CORE_MAGIC, &[thread]));
    let error = refusal(&checkpoint.0, &Allowed::docker_default());
    assert!(error.starts_with("core-9.img: task 9 cap_eff 0x00000000a82425fb exceeds"), "{error}");
}

#[test]
fn core_without_creds_is_refused() {
    let checkpoint = good_checkpoint("no-creds");
    let mut entry = core(root_creds(), SECCOMP_FILTER);
    entry.thread_core.as_mut().unwrap().creds = None;
    checkpoint.write("core-1.img", &image(frame::CORE_MAGIC, &[entry]));
    assert_eq!(refusal(&checkpoint.0, &Allowed::docker_default()), "core-1.img: task 1 has no creds");
}

#[test]
fn mount_the_container_does_not_have_is_refused() {
    let checkpoint = good_checkpoint("tmpfs");
    let mut mounts = docker_mounts();
    mounts.push(mount(40, "/scratch", fstype::TMPFS, "/", 0));
    checkpoint.write("mountpoints-13.img", &image(frame::MNTS_MAGIC, &mounts));
    assert_eq!(
        refusal(&checkpoint.0, &Allowed::docker_default()),
        "mountpoints-13.img: mount 40 mountpoint \"/scratch\" is not a mount of the container this host creates"
    );
    // HostConfig.Tmpfs of the created container carries it.
    check(&checkpoint.0, &Allowed::docker_default().with_tmpfs(["/scratch"])).unwrap();
}

#[test]
fn allowed_mount_with_another_filesystem_part_or_flags_is_refused() {
    let hardened = flags::NOSUID | flags::NODEV | flags::NOEXEC;
    let cases = [
        (mount(6, "/proc/sys", fstype::PROC, "/sys", hardened), "flags 0xe lack the flags 0xf"),
        (mount(2, "/proc", fstype::PROC, "/sys", hardened), "root \"/sys\" is not the part"),
        (mount(9, "/proc/kcore", 11, "/", 0), "fstype 11 is not the filesystem"),
        // The host's devtmpfs may stand in for /dev/null over a masked file
        // (a container CRIU restored has that), and for nothing else.
        (mount(9, "/proc/kcore", fstype::DEVTMPFS, "/sda", 0), "root \"/sda\" is not the part"),
    ];
    for (index, (evil, expected)) in cases.into_iter().enumerate() {
        let checkpoint = good_checkpoint(&format!("mount-{index}"));
        let mut mounts: Vec<_> = docker_mounts().into_iter().filter(|m| m.mountpoint != evil.mountpoint).collect();
        mounts.push(evil);
        checkpoint.write("mountpoints-13.img", &image(frame::MNTS_MAGIC, &mounts));
        let error = refusal(&checkpoint.0, &Allowed::docker_default());
        assert!(error.contains(expected), "{error}");
    }
}

#[test]
fn a_restored_containers_masks_are_the_hosts_null_device() {
    let checkpoint = good_checkpoint("restored-masks");
    let mut mounts: Vec<_> = docker_mounts().into_iter().filter(|m| m.mountpoint != "/proc/kcore").collect();
    mounts.push(mount(9, "/proc/kcore", fstype::DEVTMPFS, "/null", 0));
    checkpoint.write("mountpoints-13.img", &image(frame::MNTS_MAGIC, &mounts));
    check(&checkpoint.0, &Allowed::docker_default()).unwrap();
}

#[test]
fn cgroup_path_leaving_the_container_is_refused() {
    let checkpoint = good_checkpoint("cgroup");
    let member = CgMemberEntry { name: "memory".into(), path: "/docker/../..".into(), cgns_prefix: None };
    let cgroup = CgroupEntry { sets: vec![CgSetEntry { id: 1, ctls: vec![member] }], controllers: vec![] };
    checkpoint.write("cgroup.img", &image(frame::CGROUP_MAGIC, &[cgroup]));
    let error = refusal(&checkpoint.0, &Allowed::docker_default());
    assert!(error.starts_with("cgroup.img: cgroup memory path \"/docker/../..\""), "{error}");
}

#[test]
fn missing_inventory_or_wrong_magic_is_refused() {
    let checkpoint = good_checkpoint("inventory");
    checkpoint.write("inventory.img", &image(frame::CORE_MAGIC, &[InventoryEntry { img_version: Some(2) }]));
    assert!(refusal(&checkpoint.0, &Allowed::docker_default()).starts_with("inventory.img: magic"));
    fs::remove_file(checkpoint.0.join("inventory.img")).unwrap();
    assert!(refusal(&checkpoint.0, &Allowed::docker_default()).starts_with("inventory.img: missing"));
    let core_as_pstree = image(frame::PSTREE_MAGIC, &[core(root_creds(), SECCOMP_FILTER)]);
    let error = check_image_bytes("core-1.img", &core_as_pstree, &Allowed::docker_default()).unwrap_err();
    assert!(error.to_string().contains("image type magic 0x50273030"), "{error}");
}

#[test]
fn truncated_and_oversized_lengths_are_refused_without_allocating() {
    let allowed = Allowed::docker_default();
    let whole = image(frame::CORE_MAGIC, &[core(root_creds(), SECCOMP_FILTER)]);
    for cut in 0..whole.len() {
        let error = check_image_bytes("core-1.img", &whole[..cut], &allowed).unwrap_err().to_string();
        assert!(error.starts_with("core-1.img: "), "{error}");
    }
    // A length of 4 GiB in a 12-byte file: refused by arithmetic, no buffer.
    let mut huge = whole[..8].to_vec();
    huge.extend(u32::MAX.to_le_bytes());
    let error = check_image_bytes("core-1.img", &huge, &allowed).unwrap_err().to_string();
    assert!(error.contains("entry length 4294967295 is beyond the 0 bytes left"), "{error}");
    // Bytes after the one entry CRIU reads.
    let mut trailing = whole.clone();
    trailing.extend([0, 0, 0, 0]);
    let error = check_image_bytes("core-1.img", &trailing, &allowed).unwrap_err().to_string();
    assert!(error.contains("4 unexpected bytes after"), "{error}");
}

#[test]
fn image_file_larger_than_the_limit_is_refused_before_it_is_read() {
    let checkpoint = good_checkpoint("huge");
    let file = fs::File::create(checkpoint.0.join("mountpoints-13.img")).unwrap();
    // Sparse: no disk is used, and the check must not read it all.
    file.set_len(1 << 30).unwrap();
    let error = refusal(&checkpoint.0, &Allowed::docker_default());
    assert_eq!(error, "mountpoints-13.img: larger than any such image ferry reads (1048576 bytes)");
}

#[test]
fn real_docker_checkpoint_passes_docker_defaults() {
    // `docker checkpoint create` of a default container (Docker 20.10, CRIU
    // 4.2, cgroup v1): the small images only, the memory left out.
    check(&testdata("docker-default"), &Allowed::docker_default()).unwrap();
    check(&testdata("tmpfs"), &Allowed::docker_default().with_tmpfs(["/scratch"])).unwrap();
}

#[test]
fn threads_without_a_seccomp_mode_of_their_own_run_under_their_leaders() {
    // Redis (the ferry-redis test image) with its four background threads:
    // CRIU records a mode for the leader only, and the restored threads all
    // run with `Seccomp: 2` (checked on this host).
    check(&testdata("redis-threads"), &Allowed::docker_default()).unwrap();
    let threads = [(1, 1), (7, 1)];
    let allowed = Allowed::docker_default();
    let modes = |leader: Option<i32>, thread: Option<i32>| [(1, leader), (7, thread)].into_iter().collect();
    task::check_seccomp_modes(&threads, &modes(Some(SECCOMP_FILTER), None), &allowed).unwrap();
    let weaker = task::check_seccomp_modes(&threads, &modes(Some(SECCOMP_FILTER), Some(SECCOMP_DISABLED)), &allowed);
    assert!(weaker.unwrap_err().to_string().contains("task 7 seccomp_mode 0"), "a thread's own weaker mode counts");
    let unconfined = task::check_seccomp_modes(&threads, &modes(None, None), &allowed);
    assert!(unconfined.unwrap_err().to_string().contains("task 1 seccomp_mode 0"), "a leader without a mode is unconfined");
}

#[test]
fn real_checkpoint_with_one_capability_bit_flipped_is_refused() {
    let checkpoint = Scratch::new("real-flip");
    for dirent in fs::read_dir(testdata("docker-default")).unwrap() {
        let path = dirent.unwrap().path();
        fs::copy(&path, checkpoint.0.join(path.file_name().unwrap())).unwrap();
    }
    // The attack of issue 11, byte for byte: cap_eff (field 11, varint: key
    // 0x58) of the real image gains CAP_SYS_ADMIN; same varint length, so
    // no length prefix changes.
    let varint = |mut value: u64| {
        let mut bytes = Vec::new();
        while value >= 0x80 {
            bytes.push(value as u8 | 0x80);
            value >>= 7;
        }
        bytes.push(value as u8);
        bytes
    };
    let mut bytes = fs::read(checkpoint.0.join("core-1.img")).unwrap();
    let field = [&[0x58][..], &varint(u64::from(DEFAULT_CAPS))].concat();
    let raised = [&[0x58][..], &varint(u64::from(DEFAULT_CAPS | CAP_SYS_ADMIN))].concat();
    assert_eq!(field.len(), raised.len());
    let at = bytes.windows(field.len()).position(|w| w == field).expect("cap_eff in the real image");
    bytes[at..at + field.len()].copy_from_slice(&raised);
    checkpoint.write("core-1.img", &bytes);
    assert_eq!(
        refusal(&checkpoint.0, &Allowed::docker_default()),
        "core-1.img: task 1 cap_eff 0x00000000a82425fb exceeds what this host grants (0x00000000a80425fb)"
    );
    // A host that grants SYS_ADMIN accepts the same images.
    check(&checkpoint.0, &Allowed::from_cap_changes(&["SYS_ADMIN".into()], &[]).unwrap()).unwrap();
}

#[test]
fn real_unconfined_and_tmpfs_checkpoints_are_refused_under_defaults() {
    // `--security-opt seccomp=unconfined`: the process comes back unconfined.
    let error = refusal(&testdata("unconfined"), &Allowed::docker_default());
    assert_eq!(error, "core-1.img: task 1 seccomp_mode 0 is weaker than the container's profile implies (2)");
    // `--tmpfs /scratch` while the created container has no HostConfig.Tmpfs.
    let error = refusal(&testdata("tmpfs"), &Allowed::docker_default());
    assert!(error.contains("mountpoint \"/scratch\" is not a mount"), "{error}");
}

#[test]
fn capabilities_follow_docker_cap_add_and_cap_drop() {
    let names = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(Allowed::docker_default().caps, u64::from(DEFAULT_CAPS));
    let admin = Allowed::from_cap_changes(&names(&["cap_sys_admin"]), &names(&["NET_RAW"])).unwrap();
    assert_eq!(admin.caps, u64::from((DEFAULT_CAPS | CAP_SYS_ADMIN) & !(1 << 13)));
    let only_bind = Allowed::from_cap_changes(&names(&["NET_BIND_SERVICE"]), &names(&["ALL"])).unwrap();
    assert_eq!(only_bind.caps, 1 << 10);
    let all_but_admin = Allowed::from_cap_changes(&names(&["ALL"]), &names(&["SYS_ADMIN"])).unwrap();
    assert_eq!(all_but_admin.caps, ((1u64 << 41) - 1) & !u64::from(CAP_SYS_ADMIN));
    let error = Allowed::from_cap_changes(&names(&["SYS_EVERYTHING"]), &[]).unwrap_err();
    assert!(error.to_string().contains("unknown capability \"SYS_EVERYTHING\""), "{error}");
}

/// xorshift64: reproducible noise without a dependency.
fn xorshift(seed: &mut u64) -> u64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed
}

#[test]
fn any_bytes_are_refused_or_accepted_without_panic() {
    let allowed = Allowed::docker_default().with_ids(0..=0, 0..=0);
    let mut pstree = image(frame::PSTREE_MAGIC, &[PstreeEntry { pid: Some(1), threads: vec![1, 2] }]);
    pstree.extend(image(frame::PSTREE_MAGIC, &[PstreeEntry { pid: Some(3), threads: vec![] }])[8..].iter());
    let filter = SeccompFilter { filter: vec![0x06, 0, 0, 0, 0, 0, 0xff, 0x7f], prev: Some(0), flags: Some(1) };
    let mut seeds: Vec<(&str, Vec<u8>)> = vec![
        ("inventory.img", image(frame::INVENTORY_MAGIC, &[InventoryEntry { img_version: Some(2) }])),
        ("pstree.img", pstree),
        ("core-1.img", image(frame::CORE_MAGIC, &[core(root_creds(), SECCOMP_FILTER)])),
        ("seccomp.img", image(frame::SECCOMP_MAGIC, &[SeccompEntry { seccomp_filters: vec![filter] }])),
        ("mountpoints-13.img", image(frame::MNTS_MAGIC, &docker_mounts())),
    ];
    // And the real images of a docker checkpoint.
    let names = ["inventory.img", "pstree.img", "core-1.img", "seccomp.img", "mountpoints-13.img", "cgroup.img"];
    for name in names {
        seeds.push((name, fs::read(testdata("docker-default").join(name)).unwrap()));
    }
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut accepted = 0;
    for round in 0..20_000 {
        let (name, original) = &seeds[round % seeds.len()];
        let mut bytes = original.clone();
        match xorshift(&mut seed) % 4 {
            // Flip a few bytes, magic and length prefixes included.
            0 | 1 => {
                for _ in 0..1 + xorshift(&mut seed) % 8 {
                    let at = (xorshift(&mut seed) % bytes.len() as u64) as usize;
                    bytes[at] = xorshift(&mut seed) as u8;
                }
            }
            // Cut it short.
            2 => bytes.truncate((xorshift(&mut seed) % bytes.len() as u64) as usize),
            // Pure noise behind a valid magic.
            _ => {
                bytes.truncate(8);
                let len = xorshift(&mut seed) % 512;
                bytes.extend((0..len).map(|_| xorshift(&mut seed) as u8));
            }
        }
        if check_image_bytes(name, &bytes, &allowed).is_ok() {
            accepted += 1;
        }
    }
    // Most mutations are refused; some (a flipped byte in a string) are fine.
    assert!(accepted < 20_000 / 2, "{accepted} of 20000 mutated images accepted");
}

#[test]
fn tty_container_may_have_its_console() {
    let checkpoint = good_checkpoint("tty");
    let mut mounts = docker_mounts();
    mounts.push(mount(41, "/dev/console", fstype::DEVPTS, "/0", flags::NOSUID | flags::NOEXEC));
    checkpoint.write("mountpoints-13.img", &image(frame::MNTS_MAGIC, &mounts));
    assert!(refusal(&checkpoint.0, &Allowed::docker_default()).contains("\"/dev/console\" is not a mount"));
    check(&checkpoint.0, &Allowed::docker_default().with_tty()).unwrap();
}

#[test]
fn image_that_is_a_link_or_not_canonically_named_is_not_read() {
    let checkpoint = good_checkpoint("link");
    fs::rename(checkpoint.0.join("core-1.img"), checkpoint.0.join("elsewhere")).unwrap();
    std::os::unix::fs::symlink("elsewhere", checkpoint.0.join("core-1.img")).unwrap();
    let error = refusal(&checkpoint.0, &Allowed::docker_default());
    assert!(error.contains("core-1.img"), "{error}");
    assert_eq!(Kind::of("core-01.img"), None);
    assert_eq!(Kind::of("core-+1.img"), None);
    assert_eq!(Kind::of("core-4294967296.img"), None);
    assert_eq!(Kind::of("core-17.img"), Some(Kind::Core(17)));
}
