//! The fast checkpoint path: CRIU through runc directly, beside Docker.
//!
//! Docker's checkpoint API is slow because of copies, not CRIU: CRIU writes
//! into a containerd temp dir, containerd tars that into its content store
//! (with SHA-256), and dockerd reads it back 32 KiB per gRPC call. Measured
//! here on a 128 MiB container: 2.4 s through the API, 0.17 s with
//! `runc checkpoint` on the same Docker-managed container, whose images Docker
//! then restores as well as its own. So when the container's runc state is
//! on this host, ferry asks runc; when anything about that fails, it falls
//! back to the API, which always works.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Where Docker's runc keeps container state: Docker's own containerd, then
/// a system containerd.
const RUNC_ROOTS: [&str; 3] =
    ["/run/docker/runtime-runc/moby", "/var/run/docker/runtime-runc/moby", "/run/containerd/runc/moby"];

/// The runc root that holds this container's state, if runc manages it here.
pub(crate) fn state_root(container_id: &str) -> Option<PathBuf> {
    RUNC_ROOTS
        .iter()
        .map(PathBuf::from)
        .find(|root| root.join(container_id).join("state.json").is_file())
}

/// Freezes every process of the container (its cgroup freezer).
pub(crate) fn pause(root: &Path, container_id: &str) -> Result<(), String> {
    run(root, &["pause", container_id])
}

/// Thaws a container frozen by [`pause`].
pub(crate) fn resume(root: &Path, container_id: &str) -> Result<(), String> {
    run(root, &["resume", container_id])
}

fn run(root: &Path, args: &[&str]) -> Result<(), String> {
    let output = Command::new("runc").arg("--root").arg(root).args(args).output();
    match output {
        Ok(out) if out.status.success() => Ok(()),
        Ok(out) => Err(format!("runc {} failed: {}", args[0], String::from_utf8_lossy(&out.stderr).trim())),
        Err(e) => Err(format!("cannot run runc: {e}")),
    }
}

/// Dumps the container with `runc checkpoint`: CRIU's images into `images`,
/// its logs and statistics into `work`. Without `leave_running` runc kills
/// the container, and Docker sees it exit.
pub(crate) fn checkpoint(root: &Path, container_id: &str, images: &Path, work: &Path, leave_running: bool) -> Result<(), String> {
    let mut command = Command::new("runc");
    command
        .arg("--root")
        .arg(root)
        .arg("checkpoint")
        .arg("--image-path")
        .arg(images)
        .arg("--work-path")
        .arg(work);
    if leave_running {
        command.arg("--leave-running");
    }
    command.arg(container_id);
    let output = command.output().map_err(|e| format!("cannot run runc: {e}"))?;
    if output.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    let last = stderr.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("no message").trim();
    Err(format!("runc checkpoint failed ({}): {last}; see {}", output.status, work.join("dump.log").display()))
}
