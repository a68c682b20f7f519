//! A task's and its threads' powers: `pstree.img` and `core-<tid>.img`.

use super::allowed::Allowed;
use super::schema::{CoreEntry, CredsEntry, PstreeEntry};
use super::seccomp::{Filters, at_least_as_strict, check_filter_chain};
use super::{SECCOMP_DISABLED, SECCOMP_FILTER};
use super::{each, frame, only, refuse};
use crate::payload::Error;

/// Every thread id of every task, with the pid of its task (its leader), as
/// CRIU will look for their core images.
pub(super) fn pstree_threads(name: &str, bytes: &[u8]) -> Result<Vec<(u32, u32)>, Error> {
    let mut threads = Vec::new();
    each(name, bytes, frame::PSTREE_MAGIC, |task: PstreeEntry| {
        let pid = task.pid.ok_or_else(|| refuse(name, "a task has no pid"))?;
        if task.threads.is_empty() {
            threads.push((pid, pid));
        } else {
            threads.extend(task.threads.iter().map(|tid| (*tid, pid)));
        }
        Ok(())
    })?;
    Ok(threads)
}

/// Checks the seccomp mode every thread will be restored with. CRIU records
/// a mode only for a thread that has one of its own; the other threads of a
/// task are restored under their leader's filter (a restored Redis's
/// threads, recorded without a mode, all run with `Seccomp: 2`), so a thread
/// without a mode counts as its leader. A leader without one is unconfined.
pub(super) fn check_seccomp_modes(
    threads: &[(u32, u32)],
    modes: &std::collections::BTreeMap<u32, Option<i32>>,
    allowed: &Allowed,
) -> Result<(), Error> {
    for (tid, leader) in threads {
        let own = modes.get(tid).copied().flatten();
        let mode = if tid == leader { own } else { own.or_else(|| modes.get(leader).copied().flatten()) };
        let mode = mode.unwrap_or(SECCOMP_DISABLED);
        if !at_least_as_strict(mode, allowed.seccomp_mode) {
            return Err(refuse(
                &format!("core-{tid}.img"),
                format!(
                    "task {tid} seccomp_mode {mode} is weaker than the container's profile implies ({})",
                    allowed.seccomp_mode
                ),
            ));
        }
    }
    Ok(())
}

/// Checks a thread's creds and, when it has a seccomp filter of its own, the
/// filter chain; returns the seccomp mode recorded for it (see
/// [`check_seccomp_modes`] for what an absent one means).
pub(super) fn check_core(
    name: &str,
    tid: u32,
    bytes: &[u8],
    seccomp: Option<&Filters>,
    allowed: &Allowed,
) -> Result<Option<i32>, Error> {
    let core: CoreEntry = only(name, bytes, frame::CORE_MAGIC)?;
    let thread = core.thread_core.ok_or_else(|| refuse(name, format!("task {tid} has no thread_core")))?;
    // Without creds in thread_core CRIU reads the legacy creds-<pid>.img,
    // which ferry neither carries nor checks.
    let creds = thread.creds.as_ref().ok_or_else(|| refuse(name, format!("task {tid} has no creds")))?;
    check_creds(name, tid, creds, allowed)?;

    // CRIU's restore lets the deprecated per-task fields override the
    // per-thread ones (cr-restore.c).
    let task = core.tc.as_ref();
    let mode = task.and_then(|tc| tc.old_seccomp_mode).or(thread.seccomp_mode);
    let filter = task.and_then(|tc| tc.old_seccomp_filter).or(thread.seccomp_filter);
    if let Some(seccomp) = seccomp
        && mode == Some(SECCOMP_FILTER)
    {
        check_filter_chain(name, tid, filter.unwrap_or(0), seccomp, allowed.seccomp_reference.as_ref())?;
    }
    Ok(mode)
}

fn check_creds(name: &str, tid: u32, creds: &CredsEntry, allowed: &Allowed) -> Result<(), Error> {
    for (field, words) in [
        ("cap_inh", &creds.cap_inh),
        ("cap_prm", &creds.cap_prm),
        ("cap_eff", &creds.cap_eff),
        ("cap_bnd", &creds.cap_bnd),
        ("cap_amb", &creds.cap_amb),
    ] {
        // Word 0 holds capabilities 0–31, word 1 32–63. A third word has no
        // capability today: any bit set in it is refused as well.
        let beyond = words.iter().skip(2).any(|word| *word != 0);
        let set = words.iter().take(2).enumerate().fold(0u64, |set, (i, word)| set | u64::from(*word) << (32 * i));
        if beyond || set & !allowed.caps != 0 {
            let shown = if beyond { format!("{words:x?}") } else { format!("{set:#018x}") };
            return Err(refuse(
                name,
                format!("task {tid} {field} {shown} exceeds what this host grants ({:#018x})", allowed.caps),
            ));
        }
    }
    // CRIU gives each task the label its image names, and none (CRIU's own:
    // unconfined) when it names none.
    if let Some(label) = &allowed.lsm_label
        && creds.lsm_profile.as_ref() != Some(label)
    {
        return Err(refuse(
            name,
            format!(
                "task {tid} lsm_profile {:?} is not the label this host gives a container ({label:?}) — a payload \
                 from a host without that AppArmor/SELinux setup, or edited",
                creds.lsm_profile.as_deref().unwrap_or("none")
            ),
        ));
    }
    for (field, id) in [("uid", creds.uid), ("euid", creds.euid), ("suid", creds.suid), ("fsuid", creds.fsuid)] {
        if !allowed.uids.contains(&id) {
            return Err(refuse(
                name,
                format!("task {tid} {field} {id} is outside the container's uids {:?}", allowed.uids),
            ));
        }
    }
    let gids = [("gid", creds.gid), ("egid", creds.egid), ("sgid", creds.sgid), ("fsgid", creds.fsgid)];
    for (field, id) in gids.into_iter().chain(creds.groups.iter().map(|g| ("groups", *g))) {
        if !allowed.gids.contains(&id) {
            return Err(refuse(
                name,
                format!("task {tid} {field} {id} is outside the container's gids {:?}", allowed.gids),
            ));
        }
    }
    Ok(())
}
