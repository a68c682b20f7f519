//! The peer protocol: HTTP/1.1 between `ferry migrate` and `ferry serve`.
//!
//! ```text
//! GET  /health                 no token; "ok"
//! GET  /v1/info                what the peer is and has (PeerInfo)
//! POST /v1/images              body: a `docker save` stream; loads it
//! POST /v1/restore?name=N      body: a ferry payload; unpacks, verifies, restores;
//!                              answers the restore report (JSON)
//! GET  /v1/migrations/ID       the outcome of the restore sent with
//!                              `X-Ferry-Migration: ID`, for a client whose
//!                              connection broke before the answer came
//! POST /v1/snapshots?keep=N    body: a snapshot payload; stored verified, not
//!                              restored; the newest N per container are kept
//! GET  /v1/snapshots           the stored snapshots (SnapshotInfo list)
//! GET  /v1/failovers           the containers failed over here (Failover list)
//! DELETE /v1/containers/NAME   removes a container this agent restored (and
//!                              only those: `ferry bench --to` cleans up with it)
//! ```
//!
//! Every endpoint but /health needs `Authorization: Bearer <token>`. Errors are
//! answered as `{"error": "...", "exit_code": N}` with an HTTP status that
//! matches their kind.

pub(crate) mod client;
pub(crate) mod http;
pub(crate) mod server;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

use crate::error::{Error, Kind, Result};

pub(crate) const HEALTH: &str = "/health";
pub(crate) const INFO: &str = "/v1/info";
pub(crate) const IMAGES: &str = "/v1/images";
pub(crate) const RESTORE: &str = "/v1/restore";
pub(crate) const MIGRATIONS: &str = "/v1/migrations/";
pub(crate) const MIGRATION_HEADER: &str = "X-Ferry-Migration";
pub(crate) const SNAPSHOTS: &str = "/v1/snapshots";
pub(crate) const FAILOVERS: &str = "/v1/failovers";
pub(crate) const CONTAINERS: &str = "/v1/containers/";

/// What `GET /v1/info` answers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct PeerInfo {
    pub ferry_version: String,
    pub hostname: String,
    pub arch: String,
    pub kernel: String,
    pub criu_version: String,
    pub docker_version: String,
    /// Free bytes in the agent's spool, where payloads are unpacked.
    pub spool_free_bytes: u64,
    /// The largest payload the agent accepts, if limited.
    pub max_payload_bytes: Option<u64>,
    pub images: Vec<PeerImage>,
    /// A restore is running: another one would be refused now.
    pub busy: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct PeerImage {
    pub id: String,
    #[serde(default)]
    pub tags: Vec<String>,
}

/// The body of every error answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ErrorBody {
    pub error: String,
    pub exit_code: u8,
}

/// The outcome of one migration's restore, kept by the agent for late askers.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "lowercase")]
pub(crate) enum Outcome {
    Running,
    Restored { report: crate::commands::restore::Report },
    Failed { error: String },
}

/// Reads the shared token: the file's content without surrounding white space.
pub(crate) fn load_token(path: &Path) -> Result<String> {
    let text = fs::read_to_string(path).map_err(|e| {
        Error::new(Kind::Usage, format!("cannot read the token file {}: {e}", path.display()))
    })?;
    let token = text.trim().to_string();
    if token.len() < 16 {
        return Err(Error::new(
            Kind::Usage,
            format!("the token in {} is shorter than 16 characters — use a long random one, e.g. `head -c 32 /dev/urandom | base64`", path.display()),
        ));
    }
    if let Ok(meta) = fs::metadata(path) {
        if meta.permissions().mode() & 0o077 != 0 {
            log::warn!("token file {} is readable by other users: chmod 600 it", path.display());
        }
    }
    Ok(token)
}

/// Whether an `Authorization` header carries the token, compared in constant time.
pub(crate) fn authorized(expected: &str, header: Option<&str>) -> bool {
    let Some(given) = header.and_then(|h| h.strip_prefix("Bearer ")) else { return false };
    // ct_eq compares equal-length slices in constant time; a length mismatch
    // is answered at once, which tells an attacker only the length.
    given.as_bytes().ct_eq(expected.as_bytes()).into()
}

/// The HTTP status that matches an error's kind.
pub(crate) fn status_for(kind: Kind) -> u16 {
    match kind {
        Kind::Usage => 400,
        Kind::NotFound => 404,
        Kind::Refused => 409,
        Kind::BadPayload => 422,
        Kind::Docker => 503,
        Kind::Io => 507,
        Kind::Peer => 502,
        Kind::Criu | Kind::Failure => 500,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_exact_bearer_token_is_authorized() {
        let token = "s3cret-s3cret-s3cret";
        assert!(authorized(token, Some("Bearer s3cret-s3cret-s3cret")));
        assert!(!authorized(token, Some("Bearer s3cret-s3cret-s3creT")));
        assert!(!authorized(token, Some("Bearer s3cret")));
        assert!(!authorized(token, Some("s3cret-s3cret-s3cret")));
        assert!(!authorized(token, None));
    }
}

/// Shows bytes written and the rate on stderr while a payload streams, only
/// when stderr is a terminal: scripts and init systems get no noise.
pub(crate) struct Progress<W> {
    inner: W,
    label: &'static str,
    bytes: u64,
    started: std::time::Instant,
    last: std::time::Instant,
    enabled: bool,
}

impl<W> Progress<W> {
    pub(crate) fn new(inner: W, label: &'static str) -> Progress<W> {
        let now = std::time::Instant::now();
        Progress { inner, label, bytes: 0, started: now, last: now, enabled: crate::host::stderr_is_terminal() }
    }

    fn show(&self) {
        let secs = self.started.elapsed().as_secs_f64().max(0.001);
        let rate = (self.bytes as f64 / secs) as u64;
        eprint!("\r{} {} ({}/s)   ", self.label, crate::commands::human_bytes(self.bytes), crate::commands::human_bytes(rate));
    }
}

impl<W: std::io::Write> std::io::Write for Progress<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.bytes += n as u64;
        if self.enabled && self.last.elapsed() >= std::time::Duration::from_millis(250) {
            self.last = std::time::Instant::now();
            self.show();
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

impl<W> Drop for Progress<W> {
    fn drop(&mut self) {
        if self.enabled && self.bytes > 0 {
            self.show();
            eprintln!();
        }
    }
}
