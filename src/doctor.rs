//! Host checks: can this machine checkpoint and restore containers?

use std::path::Path;
use std::process::Command;

use serde::Serialize;

use crate::engine::{self, Engine};
use crate::host;

/// Below this much free space in the work dir, a checkpoint of a board-sized
/// container (128 MiB of memory) may not fit.
const MIN_FREE_BYTES: u64 = 256 * 1024 * 1024;

#[derive(Debug, Serialize)]
pub(crate) struct Check {
    pub name: &'static str,
    pub ok: bool,
    /// Whether a failure makes ferry unusable (non-zero exit).
    pub required: bool,
    pub detail: String,
    /// What to do when it failed.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub fix: String,
}

fn check(name: &'static str, required: bool, result: Result<String, (String, String)>) -> Check {
    match result {
        Ok(detail) => Check { name, ok: true, required, detail, fix: String::new() },
        Err((detail, fix)) => Check { name, ok: false, required, detail, fix },
    }
}

pub(crate) fn run_checks(socket: &Path, work_dir: &Path) -> Vec<Check> {
    let mut checks = Vec::new();
    let engine = Engine::connect(socket);
    checks.push(check(
        "docker socket",
        true,
        match &engine {
            Ok(_) => Ok(format!("{} answers", socket.display())),
            Err(engine::Error::TooOld { .. }) => Ok(format!("{} answers", socket.display())),
            Err(e) => Err((e.to_string(), "start dockerd, or point --docker-socket / DOCKER_HOST at it".into())),
        },
    ));
    let info = engine.as_ref().ok().and_then(|e| e.info().ok());
    if let Ok(engine) = &engine {
        checks.push(check("api version", true, Ok(format!("using API {}", engine.api_version()))));
    } else if let Err(e @ engine::Error::TooOld { .. }) = &engine {
        checks.push(check("api version", true, Err((e.to_string(), "upgrade Docker to 17.03 or newer".into()))));
    }
    if let Some(info) = &info {
        checks.push(check(
            "experimental",
            true,
            if info.experimental_build {
                Ok(format!("Docker {} has checkpoints enabled", info.server_version))
            } else {
                Err((
                    format!("Docker {} is not in experimental mode", info.server_version),
                    "put {\"experimental\": true} in /etc/docker/daemon.json and restart dockerd".into(),
                ))
            },
        ));
    }
    checks.push(check("criu", true, criu_check()));
    checks.push(check("dirty tracking", false, dirty_tracking_check()));
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let kernel = kernel.trim().to_string();
    let (major, minor) = kernel_version(&kernel);
    checks.push(check(
        "kernel",
        true,
        if (major, minor) >= (3, 11) {
            Ok(kernel.clone())
        } else {
            Err((format!("{kernel} is older than 3.11"), "CRIU needs Linux 3.11 or newer".into()))
        },
    ));
    checks.push(check("kernel c/r", true, checkpoint_restore_check()));
    let driver = info.as_ref().map(|i| i.cgroup_driver.clone()).filter(|d| !d.is_empty()).unwrap_or_else(|| "unknown".into());
    checks.push(check("cgroup", false, Ok(format!("cgroup v{}, Docker's {driver} driver", host::cgroup_version()))));
    checks.push(check("memory cgroup", true, memory_cgroup_check()));
    checks.push(check("apparmor", true, apparmor_check()));
    checks.push(check("page size", false, Ok(format!("{} KiB pages (a payload restores only where they match)", host::cpu().page_size / 1024))));
    checks.push(check("work dir", true, work_dir_check(work_dir)));
    let arch = info.as_ref().map(|i| i.architecture.clone()).unwrap_or_else(|| std::env::consts::ARCH.to_string());
    checks.push(check("arch", false, Ok(arch)));
    checks
}

fn criu_check() -> Result<String, (String, String)> {
    let Some(version) = host::criu_version() else {
        return Err((
            "criu is not on PATH".into(),
            "install CRIU (apt-get install criu; on kernels ≥ 6.16 CRIU 4.2 or newer)".into(),
        ));
    };
    let output = Command::new("criu").arg("check").output();
    match output {
        Ok(out) if out.status.success() => Ok(format!("criu {version}: `criu check` passes")),
        Ok(out) => {
            let text = String::from_utf8_lossy(&out.stderr);
            let last = text.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("no output").trim().to_string();
            Err((format!("criu {version}: `criu check` fails: {last}"), "run `criu check` as root and fix what it names".into()))
        }
        Err(e) => Err((format!("cannot run criu: {e}"), "run ferry doctor as root".into())),
    }
}

/// Incremental snapshots (CRIU pre-dump / parent images) need the kernel's
/// soft-dirty bits (CONFIG_MEM_SOFT_DIRTY, x86 only); without them every
/// snapshot is a full one.
fn dirty_tracking_check() -> Result<String, (String, String)> {
    let output = Command::new("criu").args(["check", "--feature", "mem_dirty_track"]).output();
    match output {
        Ok(out) if out.status.success() && !String::from_utf8_lossy(&out.stderr).contains("OFF") => {
            Ok("memory dirty tracking works: incremental snapshots are possible".into())
        }
        _ => Err((
            "this kernel has no memory dirty tracking (CONFIG_MEM_SOFT_DIRTY)".into(),
            "every snapshot is a full one; incremental snapshots need an x86 kernel with soft-dirty".into(),
        )),
    }
}

/// CRIU needs CONFIG_CHECKPOINT_RESTORE; /proc/sys/kernel/ns_last_pid exists
/// only in kernels built with it.
fn checkpoint_restore_check() -> Result<String, (String, String)> {
    if Path::new("/proc/sys/kernel/ns_last_pid").exists() {
        Ok("the kernel has CONFIG_CHECKPOINT_RESTORE".into())
    } else {
        Err((
            "the kernel lacks CONFIG_CHECKPOINT_RESTORE (no /proc/sys/kernel/ns_last_pid)".into(),
            "use a kernel built with CONFIG_CHECKPOINT_RESTORE=y (Debian's and Raspberry Pi OS's are)".into(),
        ))
    }
}

/// Board caps are memory limits: Raspberry Pi kernels have shipped with the
/// memory controller off, and then Docker cannot cap a container at all.
fn memory_cgroup_check() -> Result<String, (String, String)> {
    let enabled = if host::cgroup_version() == 2 {
        std::fs::read_to_string("/sys/fs/cgroup/cgroup.controllers").unwrap_or_default().split_whitespace().any(|c| c == "memory")
    } else {
        std::fs::read_to_string("/proc/cgroups")
            .unwrap_or_default()
            .lines()
            .any(|l| l.split_whitespace().next() == Some("memory") && l.split_whitespace().nth(3) == Some("1"))
    };
    if enabled {
        Ok("the memory controller is enabled".into())
    } else {
        Err((
            "the memory cgroup controller is off: memory caps cannot apply".into(),
            "add `cgroup_enable=memory cgroup_memory=1` to the kernel command line (/boot/firmware/cmdline.txt on \
             Raspberry Pi OS) and reboot"
                .into(),
        ))
    }
}

/// With AppArmor on, Docker loads its profile through apparmor_parser, and
/// `docker run` fails without it.
fn apparmor_check() -> Result<String, (String, String)> {
    let on = std::fs::read_to_string("/sys/module/apparmor/parameters/enabled").is_ok_and(|v| v.trim() == "Y");
    if !on {
        return Ok("AppArmor is off".into());
    }
    let parser = ["/sbin/apparmor_parser", "/usr/sbin/apparmor_parser"].iter().any(|p| Path::new(p).exists());
    if parser {
        Ok("AppArmor is on and apparmor_parser is installed".into())
    } else {
        Err(("AppArmor is on but apparmor_parser is missing: containers cannot start".into(), "apt-get install apparmor".into()))
    }
}

fn work_dir_check(work_dir: &Path) -> Result<String, (String, String)> {
    if let Err(e) = std::fs::create_dir_all(work_dir) {
        return Err((format!("cannot create {}: {e}", work_dir.display()), "pass --work-dir on a writable disk".into()));
    }
    match host::free_bytes(work_dir) {
        Ok(free) if free >= MIN_FREE_BYTES => Ok(format!("{} has {} free", work_dir.display(), crate::units::human_bytes(free))),
        Ok(free) => Err((
            format!("{} has only {} free", work_dir.display(), crate::units::human_bytes(free)),
            "free space or pass --work-dir on a larger disk".into(),
        )),
        Err(e) => Err((format!("cannot stat {}: {e}", work_dir.display()), "pass --work-dir".into())),
    }
}

fn kernel_version(release: &str) -> (u32, u32) {
    let mut parts = release.split(|c: char| !c.is_ascii_digit()).filter_map(|p| p.parse().ok());
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}
