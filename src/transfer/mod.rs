//! The peer protocol: HTTP/1.1 between `ferry migrate` and `ferry serve`.
//!
//! ```text
//! GET  /health                 no token; "ok"
//! GET  /v1/info                what the peer is and has (PeerInfo)
//! POST /v1/images              body: a `docker save` stream; loads it
//! POST /v1/restore?name=N      body: a ferry payload; unpacks, verifies, restores;
//!                              answers the restore report (JSON). With
//!      &prepare=1              and `X-Ferry-Migration: ID`: only prepares it
//!                              (unpacked, verified, container created, files
//!                              back) — the app does not run until:
//! POST /v1/migrations/ID/commit   starts the prepared container; answers the report
//! POST /v1/migrations/ID/abort    discards it (or refuses a late prepare of ID);
//!                              answers the Outcome after the attempt
//! GET  /v1/migrations/ID       the Outcome of migration ID, from disk
//! POST /v1/snapshots?keep=N    body: a snapshot payload; stored verified, not
//!                              restored; the newest N per container are kept
//! GET  /v1/snapshots           the stored snapshots (SnapshotInfo list)
//! GET  /v1/failovers           the containers failed over here (Failover list)
//! DELETE /v1/containers/NAME   removes a container this agent restored (and
//!                              only those: `ferry bench --to` cleans up with it)
//! GET  /v1/blocks?name=N       the blocks held of container N from the caller
//!                              (BlockOffer): a payload may then be a delta
//! POST /v1/stage               body: a payload (a pre-copy round); stored
//!                              verified as the base of the next delta, not restored
//! POST /v1/fleet/migrate?name=C&to=NODE&generation=G
//!                              (agents in a fleet) migrates container C from
//!                              here to fleet node NODE, the move recorded in etcd
//!                              by a transaction conditioned on C's placement
//!                              being generation G here; answers FleetMove
//! ```
//!
//! Every connection is mutual TLS 1.3 (`tls/`): the agent knows the calling
//! peer, whose key it trusts, before it reads a request; with `--insecure`,
//! plain HTTP. An agent run with a token also wants `Authorization: Bearer
//! <token>` on every endpoint but /health. Errors are answered as
//! `{"error": "...", "exit_code": N}` with an HTTP status that matches their
//! kind.

pub(crate) mod agent;
pub(crate) mod balance;
pub(crate) mod client;
mod downtime;
mod fleet;
mod handover;
pub(crate) mod http;
pub(crate) mod journal;
mod ledger;
pub(crate) mod migrate;
pub(crate) mod pace;
pub(crate) mod precopy;
pub(crate) mod recover;
pub(crate) mod replicate;
pub(crate) mod server;
pub(crate) mod tls;
mod watchdog;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

use crate::error::{Error, Kind, Result};
use crate::migration::restore::Restored;

pub(crate) const HEALTH: &str = "/health";
pub(crate) const INFO: &str = "/v1/info";
pub(crate) const IMAGES: &str = "/v1/images";
pub(crate) const RESTORE: &str = "/v1/restore";
pub(crate) const MIGRATIONS: &str = "/v1/migrations/";
/// `POST /v1/migrations/ID` + this: start the prepared container.
pub(crate) const COMMIT: &str = "/commit";
/// `POST /v1/migrations/ID` + this: discard the prepared container.
pub(crate) const ABORT: &str = "/abort";
pub(crate) const MIGRATION_HEADER: &str = "X-Ferry-Migration";
pub(crate) const SNAPSHOTS: &str = "/v1/snapshots";
pub(crate) const FAILOVERS: &str = "/v1/failovers";
pub(crate) const CONTAINERS: &str = "/v1/containers/";
pub(crate) const BLOCKS: &str = "/v1/blocks";
pub(crate) const STAGE: &str = "/v1/stage";
pub(crate) const FLEET_MIGRATE: &str = "/v1/fleet/migrate";

/// What `POST /v1/fleet/migrate` answers: the move that was made and the
/// paper's Table 1 for it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub(crate) struct FleetMove {
    pub container: String,
    /// The node it left and the node it runs on now.
    pub from: String,
    pub to: String,
    /// Its placement's generation now (the one asked for + 1).
    pub generation: u64,
    pub save_secs: f64,
    pub transfer_secs: f64,
    pub resume_secs: f64,
    pub commit_secs: f64,
    /// From the freeze until it ran on `to`.
    pub downtime_secs: f64,
    /// The whole migration as the source's agent ran it.
    pub elapsed_secs: f64,
    pub bytes_sent: u64,
}

/// What `GET /v1/blocks?name=N` answers: the blocks the agent holds of that
/// container from the caller (its newest snapshot, staged and partial copies),
/// for the caller's next upload to be a delta against them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct BlockOffer {
    pub block_size: u32,
    /// Which copies, for the logs (empty: none).
    pub base: String,
    pub blocks: usize,
    /// The blocks' 16-byte ids, concatenated, in base64.
    pub ids: String,
}

/// What `POST /v1/stage` answers: a pre-copy round was received and kept.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct StageReport {
    pub container: String,
    pub unpack_secs: f64,
    pub raw_bytes: u64,
    pub compressed_bytes: u64,
}

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
    /// Page size and CPU features: a source refuses, before it freezes the
    /// app, a peer whose CPU could not run it (0: an older agent did not say).
    #[serde(default)]
    pub cpu: crate::host::Cpu,
    #[serde(default)]
    pub cgroup_version: u8,
    /// The newest payload format the agent reads (0: an older agent, which
    /// reads format 4 at most).
    #[serde(default)]
    pub payload_format: u32,
}

impl PeerInfo {
    /// Whether payloads may go to this agent in one pass (format 5).
    pub(crate) fn reads_one_pass(&self) -> bool {
        self.payload_format >= crate::payload::FORMAT_STREAMED
    }
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
    /// What a client may do about it, when it can do something: `retry`
    /// (busy, try again shortly) or `base-missing` (send the whole payload).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remedy: Option<String>,
}

pub(crate) const REMEDY_RETRY: &str = "retry";
pub(crate) const REMEDY_WHOLE: &str = "base-missing";

/// What `POST /v1/restore` answers: what the agent's restore did.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub(crate) struct RestoreReport {
    pub container: String,
    pub id: String,
    pub mode: String,
    /// Receiving, checking and unpacking the payload.
    pub unpack_secs: f64,
    /// Creating the container until it runs.
    pub restore_secs: f64,
    pub raw_bytes: u64,
    pub compressed_bytes: u64,
    /// The agent's peak RSS since it started.
    #[serde(default)]
    pub peak_rss_kib: u64,
    /// Creating the container and putting its files back (two-phase handover:
    /// before the commit; `restore_secs` is then the start alone).
    #[serde(default)]
    pub prepare_secs: f64,
    /// CRIU's own restore time, from its statistics (0: none kept, or an
    /// older agent).
    #[serde(default)]
    pub criu_restore_secs: f64,
}

impl From<Restored> for RestoreReport {
    fn from(restored: Restored) -> RestoreReport {
        RestoreReport {
            container: restored.container,
            id: restored.id,
            mode: restored.mode.to_string(),
            unpack_secs: restored.unpack_secs,
            restore_secs: restored.restore_secs,
            raw_bytes: restored.raw_bytes,
            compressed_bytes: restored.compressed_bytes,
            peak_rss_kib: restored.peak_rss_kib,
            prepare_secs: 0.0,
            criu_restore_secs: restored.criu_restore_secs,
        }
    }
}

/// What became of one migration on the agent (`GET /v1/migrations/ID`, and
/// the answer to an abort). Kept on disk: an agent restarted in the middle
/// still answers truthfully.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "state", rename_all = "lowercase")]
pub(crate) enum Outcome {
    /// The payload is being received and checked.
    Running,
    /// The container is created, its files in place; it has not run and
    /// runs only if the source commits.
    Prepared,
    /// The commit arrived: the container is being started.
    Committing,
    /// The app runs here.
    Restored { report: RestoreReport },
    /// It failed before it ran: the app never ran here.
    Failed { error: String },
    /// The source (or the agent, once the prepared copy expired) gave it up:
    /// the app never ran here and never will.
    Aborted,
}

/// `GET /v1/snapshots` answers a list of these and `POST /v1/snapshots` one;
/// `GET /v1/failovers` a list of [`Failover`]. They are the snapshot store's
/// own records, sent as stored: a field added there is a field added here.
pub(crate) use crate::snapshots::{Failover, SnapshotInfo};

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
    if let Ok(meta) = fs::metadata(path)
        && meta.permissions().mode() & 0o077 != 0
    {
        log::warn!("token file {} is readable by other users: chmod 600 it", path.display());
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
        Kind::Peer | Kind::OutcomeUnknown | Kind::Disconnected => 502,
        Kind::BaseMissing => 409,
        Kind::Criu | Kind::Failure => 500,
    }
}

/// The pipe a packer thread writes a payload into and an HTTP body reads it
/// from. Linux's default pipe holds 64 KiB, so packer and sender would take
/// turns every 64 KiB; a larger one (1 MiB, kernel memory, not the process's)
/// lets each run on its own core. Best effort: a kernel that refuses keeps 64 KiB.
pub(crate) fn payload_pipe() -> std::io::Result<(std::io::PipeReader, std::io::PipeWriter)> {
    use std::os::fd::AsRawFd;
    let (reader, writer) = std::io::pipe()?;
    // SAFETY: fcntl on a descriptor this function owns; no memory is passed.
    let resized = unsafe { libc::fcntl(writer.as_raw_fd(), libc::F_SETPIPE_SZ, PAYLOAD_PIPE_BYTES) };
    if resized < 0 {
        log::debug!("the payload pipe keeps its default size: {}", std::io::Error::last_os_error());
    }
    Ok((reader, writer))
}

const PAYLOAD_PIPE_BYTES: libc::c_int = 1 << 20;

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
