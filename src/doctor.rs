//! Host checks: can this machine checkpoint and restore containers?

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use rustls::pki_types::UnixTime;
use serde::Serialize;

use crate::engine::{self, Engine};
use crate::host;
use crate::identity::validity::{Validity, utc};
use crate::identity::{self, Identity, Pinned, Trust, Usage};

/// Below this much free space in the work dir, a checkpoint of a board-sized
/// container (128 MiB of memory) may not fit.
const MIN_FREE_BYTES: u64 = 256 * 1024 * 1024;

/// A certificate that expires within this many days is worth a warning: time
/// to renew it before migrations start failing.
const EXPIRY_WARNING_DAYS: u64 = 30;

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

pub(crate) fn run_checks(socket: &Path, work_dir: &Path, config_dir: &Path) -> Vec<Check> {
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
    checks.extend(identity_checks(config_dir));
    checks
}

/// This host's key, certificate and trust store (issue 12): `serve` and
/// `migrate` need them unless --insecure. A host without a key at all gets
/// one warning; a key that is there but unusable fails.
fn identity_checks(dir: &Path) -> Vec<Check> {
    let key_path = dir.join(identity::KEY_FILE);
    let mode = match std::fs::metadata(&key_path) {
        Ok(metadata) => metadata.permissions().mode() & 0o7777,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return vec![check(
                "tls key",
                false,
                Err((
                    format!("this host has no key ({} is missing)", key_path.display()),
                    "run `ferry keys init`: serve and migrate need it unless --insecure".into(),
                )),
            )];
        }
        Err(e) => {
            return vec![check("tls key", true, Err((format!("cannot stat {}: {e}", key_path.display()), "run ferry doctor as root".into())))];
        }
    };
    let mut checks = vec![check(
        "tls key",
        true,
        if mode & 0o077 == 0 {
            Ok(format!("{} is readable by its owner only ({mode:04o})", key_path.display()))
        } else {
            Err((
                format!("{} is open to group or others (mode {mode:04o}): the key may have leaked", key_path.display()),
                format!("chmod 600 {}, and consider `ferry keys init --force` for a new key", key_path.display()),
            ))
        },
    )];
    let identity = Identity::load(dir);
    checks.push(check(
        "tls cert",
        true,
        match &identity {
            Ok(identity) => Ok(format!("cert.pem is for this key, {}", identity.fingerprint)),
            Err(e) => Err((
                e.message.clone(),
                "`ferry keys install-cert FILE` with the certificate issued for this key, or `ferry keys init --force`".into(),
            )),
        },
    ));
    let trust = Trust::load(dir);
    if let Ok(identity) = &identity {
        let ca = trust.as_ref().map(|t| t.ca.clone()).unwrap_or_default();
        checks.push(expiry_check(identity, ca, UnixTime::now()));
    }
    // An unreadable trust store fails; an empty one only warns.
    checks.push(check(
        "tls trust",
        trust.is_err(),
        match &trust {
            Ok(trust) if trust.is_empty() => Err((
                "no peer is trusted: this host can neither send to nor accept from another".into(),
                "`ferry trust add NAME FINGERPRINT` for each peer, or install the fleet CA as ca.pem".into(),
            )),
            Ok(trust) => Ok(format!(
                "{} pinned peer{}{}",
                trust.pinned.len(),
                if trust.pinned.len() == 1 { "" } else { "s" },
                if trust.ca.is_empty() { "" } else { " and the fleet CA" }
            )),
            Err(e) => Err((e.message.clone(), "fix or remove the file it names (`ferry trust list` reads it)".into())),
        },
    ));
    checks
}

/// Whether this host's own certificate is usable now and in a month, asked of
/// the same [`Trust::identify`] peers run (with this host's key pinned), so
/// the answer covers what they check: dates, key usage, the CA's signature.
fn expiry_check(identity: &Identity, ca: Vec<rustls::pki_types::CertificateDer<'static>>, now: UnixTime) -> Check {
    let own = Trust { pinned: vec![Pinned { name: "this host".into(), fingerprint: identity.fingerprint.clone() }], ca };
    let usable_at = |at: UnixTime| {
        [Usage::Agent, Usage::Source].into_iter().try_for_each(|usage| own.identify(&identity.cert, &[], at, usage).map(drop))
    };
    let expires = Validity::of(&identity.cert).map_or_else(|| "on an unreadable date".into(), |v| utc(v.not_after));
    let fix = "`ferry keys init --force` for a new key and certificate (then `ferry trust add` it on the peers), or \
               `ferry keys install-cert` one the fleet CA renewed"
        .to_string();
    let soon = UnixTime::since_unix_epoch(Duration::from_secs(now.as_secs() + EXPIRY_WARNING_DAYS * 86_400));
    let (ok, required, detail) = match (usable_at(now), usable_at(soon)) {
        (Err(why), _) => (false, true, format!("the certificate is not usable now (it expires {expires}): {why}")),
        (Ok(()), Err(_)) => (false, false, format!("the certificate expires {expires}, within {EXPIRY_WARNING_DAYS} days")),
        (Ok(()), Ok(())) => (true, true, format!("the certificate is valid until {expires}")),
    };
    Check { name: "tls expiry", ok, required, detail, fix: if ok { String::new() } else { fix } }
}

fn criu_check() -> Result<String, (String, String)> {
    let Some(version) = host::criu_version() else {
        // Debian has no criu package for armhf: a 32-bit board has commit mode only.
        let fix = if cfg!(target_arch = "arm") {
            "Debian has no CRIU for 32-bit ARM: move containers with `ferry checkpoint C --mode commit` and \
             `ferry restore` (files, not the running process), or run a 64-bit OS and install criu"
        } else {
            "install CRIU (apt-get install criu; on kernels ≥ 6.16 CRIU 4.2 or newer)"
        };
        return Err(("criu is not on PATH".into(), fix.into()));
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::keys::{self, NewKey};
    use crate::identity::testing;
    use crate::testing::TempDir;

    fn statuses(checks: &[Check]) -> Vec<(&'static str, &'static str)> {
        checks.iter().map(|c| (c.name, if c.ok { "ok" } else if c.required { "fail" } else { "warn" })).collect()
    }

    #[test]
    fn no_key_is_one_warning() {
        let dir = TempDir::new("doctor-no-key");
        let checks = identity_checks(dir.path());
        assert_eq!(statuses(&checks), [("tls key", "warn")]);
        assert!(checks[0].fix.contains("ferry keys init"), "{}", checks[0].fix);
    }

    #[test]
    fn a_new_key_passes_and_an_empty_trust_store_warns() {
        let dir = TempDir::new("doctor-new-key");
        keys::init(dir.path(), &NewKey { name: "edge-1", sans: &[], days: 3650, force: false }).unwrap();
        let checks = identity_checks(dir.path());
        assert_eq!(statuses(&checks), [("tls key", "ok"), ("tls cert", "ok"), ("tls expiry", "ok"), ("tls trust", "warn")]);
        assert!(checks[3].fix.contains("ferry trust add"), "{}", checks[3].fix);
    }

    #[test]
    fn a_key_others_can_read_fails() {
        let dir = TempDir::new("doctor-open-key");
        keys::init(dir.path(), &NewKey { name: "edge-1", sans: &[], days: 3650, force: false }).unwrap();
        let key_path = dir.path().join(identity::KEY_FILE);
        std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let checks = identity_checks(dir.path());
        assert_eq!(statuses(&checks)[0], ("tls key", "fail"));
        assert!(checks[0].fix.contains("chmod 600"), "{}", checks[0].fix);
    }

    #[test]
    fn an_expiring_certificate_warns_and_an_expired_one_fails() {
        let dir = TempDir::new("doctor-expiry");
        testing::self_signed("edge-1", &[], -1..10).install(dir.path());
        assert_eq!(statuses(&identity_checks(dir.path()))[2], ("tls expiry", "warn"));
        testing::self_signed("edge-1", &[], -10..-1).install(dir.path());
        assert_eq!(statuses(&identity_checks(dir.path()))[2], ("tls expiry", "fail"));
    }

    #[test]
    fn a_ca_issued_certificate_is_checked_against_the_ca() {
        let dir = TempDir::new("doctor-ca");
        let fleet = testing::ca("fleet");
        fleet.install_as_ca(dir.path());
        testing::issued_by(&fleet, "edge-1", &[], -1..365).install(dir.path());
        let checks = identity_checks(dir.path());
        assert_eq!(statuses(&checks), [("tls key", "ok"), ("tls cert", "ok"), ("tls expiry", "ok"), ("tls trust", "ok")]);
        assert!(checks[3].detail.contains("fleet CA"), "{}", checks[3].detail);
    }
}
