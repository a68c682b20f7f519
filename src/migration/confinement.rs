//! How this host's engine confines a container it creates — its seccomp
//! programs and its LSM label — which a payload's images are held to
//! (issue 11).
//!
//! CRIU restores the filters and the AppArmor/SELinux label its images hold,
//! not the ones the new container's profile would give, so an edited
//! `seccomp.img` could swap Docker's default profile for a program that
//! allows everything, and an edited `core-*.img` could ask for no AppArmor
//! profile at all. This module learns what this host gives by asking the
//! kernel, not by rebuilding it: a probe container is created with the
//! security settings every restored container gets (ferry carries no
//! capability or security option: checkpoint refuses them), and its one
//! process — a few bytes of machine code that wait — is read: its label from
//! `/proc/PID/attr`, as CRIU's dump reads it, and its filters under ptrace
//! with `PTRACE_SECCOMP_GET_FILTER`, as CRIU's dump reads them.
//!
//! Why a probe and not a table: the program depends on the engine's profile,
//! its libseccomp, the architecture and the capabilities, and differs
//! between Docker releases; the label on the LSM the kernel runs and the
//! engine's settings. Only this host knows its own. Why per engine and
//! cached: neither depends on anything a payload chooses, so one probe
//! serves every restore until the engine changes; the agent takes it when it
//! starts, off the migrations' path.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::engine::{self, Engine, Info};
use crate::error::{Error, Kind, Result};
use crate::payload::images::SeccompReference;

/// Where the waiting program is mounted in the probe container; its process
/// is named after it.
const PROBE_PATH: &str = "/ferry-seccomp-probe";
const PROBE_COMM: &str = "ferry-seccomp-p";

/// What a container this engine creates runs under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Confinement {
    pub(crate) seccomp: SeccompReference,
    /// The AppArmor profile or SELinux context, as CRIU records it in
    /// `creds.lsm_profile`; `None` when unconfined or no LSM runs.
    pub(crate) lsm_label: Option<String>,
}

/// By engine (daemon id, version and security options): an engine
/// restarted with another profile or release is probed again.
static CACHE: Mutex<Option<HashMap<String, Confinement>>> = Mutex::new(None);

fn cache_key(info: &Info) -> String {
    format!("{}|{}|{}|{}", info.id, info.server_version, info.architecture, info.security_options.join(","))
}

/// How this engine confines the containers ferry creates, from the cache or
/// a probe container made from `image` (any image present: neither the
/// filters nor the label depend on it). `scratch` is a folder of ferry's own
/// where the probe's program is written for the time of the probe.
pub(crate) fn of_new_containers(engine: &Engine, info: &Info, image: &str, scratch: &Path) -> Result<Confinement> {
    let key = cache_key(info);
    if let Some(found) = CACHE.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert_with(HashMap::new).get(&key) {
        return Ok(found.clone());
    }
    let started = Instant::now();
    let confinement = probe(engine, image, scratch)
        .map_err(|e| e.context("learning how this host's engine confines a container (a probe container)"))?;
    log::info!(
        "a new container here runs under {} seccomp filter(s) ({}) and LSM label {} (probed in {:.2}s)",
        confinement.seccomp.programs.len(),
        confinement.seccomp,
        confinement.lsm_label.as_deref().unwrap_or("none"),
        started.elapsed().as_secs_f64()
    );
    CACHE.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert_with(HashMap::new).insert(key, confinement.clone());
    Ok(confinement)
}

/// Makes `confinement` this engine's, as a probe would have found it: for
/// tests against a fake engine, which runs no process.
#[cfg(test)]
pub(crate) fn assume(info: &Info, confinement: Confinement) {
    CACHE.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert_with(HashMap::new).insert(cache_key(info), confinement);
}

/// Takes the reference now if the engine has any image, so that the first
/// restore does not wait for it; a failure is only logged (the restore will
/// probe again, and say why if it fails there).
pub(crate) fn warm(engine: &Engine, scratch: &Path) {
    let attempt = || -> Result<()> {
        let info = engine.info()?;
        let Some(image) = engine.list_images()?.into_iter().next() else {
            log::debug!("no image on this engine yet: the confinement probe waits for the first restore");
            return Ok(());
        };
        of_new_containers(engine, &info, &image.id, scratch).map(|_| ())
    };
    if let Err(e) = attempt() {
        log::warn!("{e}");
    }
}

fn probe(engine: &Engine, image: &str, scratch: &Path) -> Result<Confinement> {
    let program = idle_program().ok_or_else(|| {
        Error::new(Kind::Refused, format!("no probe program for {}: ferry cannot restore a checkpoint here", std::env::consts::ARCH))
    })?;
    let path = scratch.join(format!(".confinement-probe-{}", std::process::id()));
    let _ = fs::remove_file(&path);
    let written = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o755)
        .open(&path)
        .and_then(|mut file| io::Write::write_all(&mut file, &program))
        .and_then(|()| fs::set_permissions(&path, fs::Permissions::from_mode(0o755)));
    let _remove_program = RemoveFile(&path);
    written.map_err(|e| Error::new(Kind::Io, format!("writing {}: {e}", path.display())))?;

    let name = format!("ferry-probe-{}-{}", std::process::id(), unique());
    let body = json!({
        "Image": image,
        "Entrypoint": [PROBE_PATH],
        "Cmd": [],
        "WorkingDir": "/",
        "Labels": {"ferry.probe": "confinement"},
        "HostConfig": {
            "NetworkMode": "none",
            "Binds": [format!("{}:{PROBE_PATH}:ro", path.display())],
            "LogConfig": {"Type": "none"},
        },
    });
    let id = engine.create_container(&name, &body)?;
    let _remove_container = RemoveContainer { engine, id: &id };
    engine.start_container(&id, None)?;
    let pid = wait_for_probe(engine, &id)?;
    let lsm_label = lsm_label(pid);
    let filters = installed_filters(pid)
        .map_err(|e| Error::new(Kind::Failure, format!("reading the probe's seccomp filters (pid {pid}): {e}")))?;
    Ok(Confinement { seccomp: SeccompReference { programs: filters }, lsm_label })
}

/// Process `pid`'s LSM label as CRIU's dump records it: AppArmor's profile
/// name without its mode (`docker-default`, not `docker-default (enforce)`),
/// SELinux's whole context; `None` for `unconfined` or when no LSM answers.
fn lsm_label(pid: i32) -> Option<String> {
    let text = fs::read(format!("/proc/{pid}/attr/apparmor/current"))
        .or_else(|_| fs::read(format!("/proc/{pid}/attr/current")))
        .ok()?;
    label_of(&text)
}

fn label_of(text: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(text);
    let label = text.trim_end_matches('\0').split_whitespace().next()?;
    (label != "unconfined").then(|| label.to_string())
}

/// The probe's pid once it runs the program: the runtime installs the
/// filters before it executes the container's process, so from then on they
/// are all there.
fn wait_for_probe(engine: &Engine, id: &str) -> Result<i32> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let state = engine.inspect_container(id)?.state;
        if !state.running {
            return Err(Error::new(
                Kind::Failure,
                format!("the probe container stopped ({}) — was the image's filesystem mounted noexec?", state.status),
            ));
        }
        let pid = i32::try_from(state.pid).unwrap_or(0);
        if pid > 0 && fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|comm| comm.trim_end() == PROBE_COMM) {
            return Ok(pid);
        }
        if Instant::now() > deadline {
            return Err(Error::new(Kind::Failure, "the probe container's process did not start in 30 s"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The seccomp filters of process `pid`, oldest first, each as its BPF
/// program (`struct sock_filter[]`), read under ptrace as CRIU's dump reads
/// them. Needs CAP_SYS_ADMIN; the process is stopped for the
/// time of the reads and let go.
fn installed_filters(pid: i32) -> io::Result<Vec<Vec<u8>>> {
    const PTRACE_SECCOMP_GET_FILTER: u32 = 0x420c;
    // A chain holds at most 32768 instructions in all (MAX_INSNS_PER_PATH).
    const MAX_INSTRUCTIONS: i64 = 32768;
    let last_error = io::Error::last_os_error;
    // SAFETY: plain ptrace requests on a pid; every buffer outlives the
    // call it is given to and is as large as the kernel is told.
    unsafe {
        if libc::ptrace(libc::PTRACE_SEIZE as _, pid, 0usize, 0usize) != 0 {
            return Err(last_error());
        }
        let _detach = Detach(pid);
        if libc::ptrace(libc::PTRACE_INTERRUPT as _, pid, 0usize, 0usize) != 0 {
            return Err(last_error());
        }
        let mut status = 0;
        if libc::waitpid(pid, &mut status, libc::__WALL) != pid {
            return Err(last_error());
        }
        let mut filters = Vec::new();
        // ptrace answers a c_long: 32 bits on armv7, where the conversion is not useless.
        #[allow(clippy::useless_conversion)]
        for index in 0usize.. {
            let count = i64::from(libc::ptrace(PTRACE_SECCOMP_GET_FILTER as _, pid, index, std::ptr::null_mut::<u8>()));
            if count < 0 {
                let error = last_error();
                // ENOENT past the oldest filter; EINVAL when there is none.
                if error.raw_os_error() == Some(libc::ENOENT) || (index == 0 && error.raw_os_error() == Some(libc::EINVAL)) {
                    break;
                }
                return Err(error);
            }
            if count == 0 || count > MAX_INSTRUCTIONS {
                return Err(io::Error::other(format!("filter {index} has {count} instructions")));
            }
            let mut program = vec![0u8; count as usize * 8];
            if i64::from(libc::ptrace(PTRACE_SECCOMP_GET_FILTER as _, pid, index, program.as_mut_ptr())) != count {
                return Err(last_error());
            }
            filters.push(program);
        }
        // The kernel counts from the newest.
        filters.reverse();
        Ok(filters)
    }
}

struct Detach(i32);

impl Drop for Detach {
    fn drop(&mut self) {
        // SAFETY: detaching a tracee this thread seized.
        unsafe {
            libc::ptrace(libc::PTRACE_DETACH as _, self.0, 0usize, 0usize);
        }
    }
}

struct RemoveFile<'a>(&'a Path);

impl Drop for RemoveFile<'_> {
    fn drop(&mut self) {
        let _ = fs::remove_file(self.0);
    }
}

struct RemoveContainer<'a> {
    engine: &'a Engine,
    id: &'a str,
}

impl Drop for RemoveContainer<'_> {
    fn drop(&mut self) {
        match self.engine.remove_container(self.id, true) {
            Err(e) if !engine::is_not_found(&e) => log::warn!("could not remove the probe container {}: {e}", self.id),
            _ => {}
        }
    }
}

fn unique() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0)
}

/// A static executable of this architecture that waits for a signal and
/// does nothing else: the probe container's process. Written here, not
/// taken from the image, so that the probe works with any image (distroless
/// ones have no `sleep`) and ferry's own binary need not be static.
pub(crate) fn idle_program() -> Option<Vec<u8>> {
    match std::env::consts::ARCH {
        "x86_64" => Some(idle_x86_64()),
        "aarch64" => Some(idle_aarch64()),
        "arm" => Some(idle_arm()),
        _ => None,
    }
}

/// `pause()` in a loop: `mov eax, 34; syscall; jmp -9`.
fn idle_x86_64() -> Vec<u8> {
    elf64(62, &[0xb8, 0x22, 0, 0, 0, 0x0f, 0x05, 0xeb, 0xf7])
}

/// `ppoll(NULL, 0, NULL, NULL)` in a loop (arm64 has no `pause`).
fn idle_aarch64() -> Vec<u8> {
    let words: [u32; 7] = [
        0xd280_0000, // mov x0, #0
        0xd280_0001, // mov x1, #0
        0xd280_0002, // mov x2, #0
        0xd280_0003, // mov x3, #0
        0xd280_0928, // mov x8, #73 (ppoll)
        0xd400_0001, // svc #0
        0x17ff_fffa, // b -6 instructions
    ];
    elf64(183, &words.iter().flat_map(|w| w.to_le_bytes()).collect::<Vec<u8>>())
}

/// `pause()` in a loop, EABI.
fn idle_arm() -> Vec<u8> {
    let words: [u32; 3] = [
        0xe3a0_701d, // mov r7, #29 (pause)
        0xef00_0000, // svc #0
        0xeaff_fffc, // b -4 instructions from pc+8
    ];
    elf32_arm(&words.iter().flat_map(|w| w.to_le_bytes()).collect::<Vec<u8>>())
}

/// A 64-bit little-endian ELF executable: one read+execute segment holding
/// the headers and `code`, entered at `code`.
fn elf64(machine: u16, code: &[u8]) -> Vec<u8> {
    const BASE: u64 = 0x40_0000;
    const HEADERS: u64 = 64 + 56;
    let size = HEADERS + code.len() as u64;
    let mut elf = Vec::with_capacity(size as usize);
    elf.extend_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    elf.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    elf.extend_from_slice(&machine.to_le_bytes());
    elf.extend_from_slice(&1u32.to_le_bytes());
    elf.extend_from_slice(&(BASE + HEADERS).to_le_bytes()); // entry
    elf.extend_from_slice(&64u64.to_le_bytes()); // program headers
    elf.extend_from_slice(&0u64.to_le_bytes()); // no section headers
    elf.extend_from_slice(&0u32.to_le_bytes()); // flags
    for half in [64u16, 56, 1, 0, 0, 0] {
        elf.extend_from_slice(&half.to_le_bytes());
    }
    elf.extend_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    elf.extend_from_slice(&5u32.to_le_bytes()); // R + X
    for word in [0, BASE, BASE, size, size, 0x1000] {
        elf.extend_from_slice(&word.to_le_bytes());
    }
    elf.extend_from_slice(code);
    elf
}

/// The 32-bit ARM (EABI 5) form of [`elf64`].
fn elf32_arm(code: &[u8]) -> Vec<u8> {
    const BASE: u32 = 0x1_0000;
    const HEADERS: u32 = 52 + 32;
    let size = HEADERS + code.len() as u32;
    let mut elf = Vec::with_capacity(size as usize);
    elf.extend_from_slice(&[0x7f, b'E', b'L', b'F', 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    elf.extend_from_slice(&2u16.to_le_bytes());
    elf.extend_from_slice(&40u16.to_le_bytes()); // EM_ARM
    elf.extend_from_slice(&1u32.to_le_bytes());
    for word in [BASE + HEADERS, 52, 0, 0x0500_0000] {
        elf.extend_from_slice(&word.to_le_bytes());
    }
    for half in [52u16, 32, 1, 0, 0, 0] {
        elf.extend_from_slice(&half.to_le_bytes());
    }
    for word in [1, 0, BASE, BASE, size, size, 5, 0x1000] {
        elf.extend_from_slice(&word.to_le_bytes());
    }
    elf.extend_from_slice(code);
    elf
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_read_as_criu_records_them() {
        assert_eq!(label_of(b"docker-default (enforce)\n").as_deref(), Some("docker-default"));
        assert_eq!(label_of(b"system_u:system_r:container_t:s0:c1,c2\0").as_deref(), Some("system_u:system_r:container_t:s0:c1,c2"));
        assert_eq!(label_of(b"unconfined\n"), None);
        assert_eq!(label_of(b""), None);
    }

    #[test]
    fn idle_programs_are_whole_elf_executables_entered_at_their_code() {
        for (elf, class, machine, entry) in [
            (idle_x86_64(), 2u8, 62u16, 0x40_0000u64 + 120),
            (idle_aarch64(), 2, 183, 0x40_0000 + 120),
            (idle_arm(), 1, 40, 0x1_0000 + 84),
        ] {
            assert_eq!(&elf[..4], b"\x7fELF");
            assert_eq!(elf[4], class);
            assert_eq!(u16::from_le_bytes([elf[18], elf[19]]), machine);
            let found = if class == 2 {
                u64::from_le_bytes(elf[24..32].try_into().unwrap())
            } else {
                u64::from(u32::from_le_bytes(elf[24..28].try_into().unwrap()))
            };
            assert_eq!(found, entry);
            // The one segment covers the whole file.
            let filesz = if class == 2 {
                u64::from_le_bytes(elf[64 + 32..64 + 40].try_into().unwrap())
            } else {
                u64::from(u32::from_le_bytes(elf[52 + 16..52 + 20].try_into().unwrap()))
            };
            assert_eq!(filesz, elf.len() as u64);
        }
    }

    /// This architecture's program runs, waits, and dies of the signal
    /// docker rm -f sends; ptrace reads that it has no seccomp filter.
    /// Where tests run under qemu-user, the child would need binfmt_misc:
    /// there the program is run by the field test's guests instead.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn this_architectures_idle_program_waits_until_killed() {
        use std::os::unix::process::ExitStatusExt;
        let dir = std::env::temp_dir().join(format!("ferry-idle-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("idle");
        fs::write(&path, idle_program().unwrap()).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
        let mut child = std::process::Command::new(&path).spawn().unwrap();
        std::thread::sleep(Duration::from_millis(200));
        assert!(child.try_wait().unwrap().is_none(), "the idle program exited");
        if nix_is_root() {
            assert!(installed_filters(child.id() as i32).unwrap().is_empty(), "an unconfined child has no filter");
            std::thread::sleep(Duration::from_millis(50));
            assert!(child.try_wait().unwrap().is_none(), "the idle program did not go on after ptrace let it go");
        }
        child.kill().unwrap();
        assert_eq!(child.wait().unwrap().signal(), Some(libc::SIGKILL));
        fs::remove_dir_all(&dir).unwrap();
    }

    fn nix_is_root() -> bool {
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() == 0 }
    }
}
