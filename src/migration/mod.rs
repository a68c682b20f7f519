//! The verbs on a container, one file each, as a migration runs them:
//!
//! ```text
//! preflight   may this container be carried? (one inspect, before anything stops)
//! checkpoint  running container → checkpoint dir (CRIU images + rootfs changes, or a committed image)
//! rootfs      the app's changed files: captured on the source, put back (with whiteouts) on the target
//! restore     unpacked payload → a new container, created and started
//! cgroup      on cgroup v2, the checkpoint's cgroup paths moved to the new container's
//! confinement the seccomp filters and LSM label this host's engine gives a container, for restore to hold images to
//! resume      the start from CRIU images: place them, start, prove CRIU restored, clean up
//! failover    a stored snapshot → a running container, recorded
//! ```
//!
//! This layer talks to the engine and reads payloads; it knows nothing of peers
//! or of the command line.

pub(crate) mod cgroup;
pub(crate) mod checkpoint;
pub(crate) mod failover;
pub(crate) mod preflight;
pub(crate) mod restore;
pub(crate) mod resume;
pub(crate) mod confinement;
pub(crate) mod rootfs;

use crate::engine;
use crate::error::{Error, Kind};

/// The checkpoint name ferry gives CRIU images inside a payload.
pub(crate) const CHECKPOINT_NAME: &str = "ferry";

/// A Docker error from a checkpoint or restore call, as a CRIU failure.
pub(crate) fn criu_error(container: &str, what: &str, error: engine::Error) -> Error {
    match error {
        engine::Error::Api { status, message, .. } if status != 404 && status != 409 => Error::new(
            Kind::Criu,
            format!(
                "CRIU could not {what} '{container}': {message} — `ferry doctor` checks CRIU; \
                 the CRIU log named above says why"
            ),
        ),
        other => Error::from(other).context(format!("{what} of '{container}'")),
    }
}
