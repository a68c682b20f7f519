//! One thin file per subcommand: arguments → options → one call → print.

pub(crate) mod balance;
pub(crate) mod bench;
pub(crate) mod boards;
pub(crate) mod checkpoint;
pub(crate) mod doctor;
pub(crate) mod failover;
pub(crate) mod fleet;
pub(crate) mod keys;
pub(crate) mod migrate;
pub(crate) mod recover;
pub(crate) mod replicate;
pub(crate) mod restore;
pub(crate) mod serve;
pub(crate) mod snapshots;
pub(crate) mod trust;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use crate::board::{Board, Tuning};
use crate::engine::{self, Engine};
use crate::error::{Error, Kind, Result};
use crate::fleet::etcd::{self, Etcd, EtcdTls};
use crate::identity::{self, Identity};
use crate::transfer::tls::Tls;
use crate::transfer::{self, client::{Link, Peer}, pace};

/// What every command gets from the global options.
#[derive(Debug, Clone)]
pub(crate) struct Context {
    pub docker_socket: Option<PathBuf>,
    /// The work dir in force: --work-dir, $FERRY_WORK_DIR, or the default.
    pub work_dir: PathBuf,
    /// The work dir the user chose, if any: a board profile's yields to it.
    pub chosen_work_dir: Option<PathBuf>,
    /// Whether the fast checkpoint and restore paths may be tried (see runc.rs
    /// and migration/resume.rs); off with --portable.
    pub fast: bool,
}

impl Context {
    pub(crate) fn engine(&self) -> Result<Engine> {
        let socket = engine::socket_path(self.docker_socket.as_deref()).map_err(|m| Error::new(Kind::Usage, m))?;
        Ok(Engine::connect(&socket)?)
    }

    /// Loads the `--board` a command was given and what it decides for
    /// ferry's own I/O: buffer and lz4 block sizes, and work dir unless the
    /// user chose one.
    pub(crate) fn tuning(&self, board: Option<&str>) -> Result<Tuning> {
        let board = board.map(Board::load).transpose()?;
        Ok(Tuning::new(board, self.chosen_work_dir.as_deref(), &self.work_dir))
    }
}

/// etcd at `urls` (`--etcd`), for every command that takes it: over TLS when
/// they are `https://`, trusting the CA in `etcd_ca` (`--etcd-ca`, else the
/// fleet CA) and presenting this host's key and certificate.
pub(crate) fn etcd_client(urls: &str, etcd_ca: Option<&Path>) -> Result<Etcd> {
    let tls = if etcd::wants_tls(urls)? {
        Some(EtcdTls::load(&identity::config_dir(), etcd_ca)?)
    } else if let Some(ca) = etcd_ca {
        return Err(Error::new(
            Kind::Usage,
            format!("--etcd-ca {} is for https:// etcd URLs, and --etcd gives http:// ones: give https:// URLs, or drop --etcd-ca", ca.display()),
        ));
    } else {
        None
    };
    Ok(Etcd::connect_with(urls, tls)?)
}

/// This host's key, to sign what it writes, when it has one; a payload
/// written without is unsigned, and other hosts restore it only when told to.
pub(crate) fn own_signer() -> Result<Option<Identity>> {
    let dir = identity::config_dir();
    if !dir.join(identity::KEY_FILE).exists() {
        log::warn!("this host has no key ({}): the payload is UNSIGNED — run `ferry keys init`", dir.display());
        return Ok(None);
    }
    Identity::load(&dir).map(Some)
}

/// How this host reaches peers, as `--token-file FILE` and `--insecure` say:
/// mutual TLS with this host's key and trust store, payloads signed by the
/// key; or, with `--insecure`, plain HTTP and unsigned payloads.
pub(crate) fn link(token_file: Option<&Path>, insecure: bool) -> Result<Link> {
    let token = token_file.map(transfer::load_token).transpose()?;
    if insecure {
        log::warn!(
            "--insecure: plain HTTP, peers NOT authenticated, payloads UNSIGNED and readable by anyone on the network"
        );
        return Ok(Link { token, ..Link::default() });
    }
    let tls = credentials()?;
    Ok(Link { token, signer: Some(tls.identity().clone()), tls: Some(tls.client_config()?) })
}

/// This host's key and whom it trusts, for mutual TLS: both must be there.
pub(crate) fn credentials() -> Result<Tls> {
    let dir = identity::config_dir();
    if !dir.join(identity::KEY_FILE).exists() {
        return Err(Error::new(
            Kind::Usage,
            format!(
                "this host has no key in {}: run `ferry keys init`, then trust each peer with `ferry trust add NAME \
                 FINGERPRINT` — or pass --insecure on a network you trust",
                dir.display()
            ),
        ));
    }
    Tls::load(&dir)
}

/// `--limit-rate RATE`: bytes per second with the usual suffixes (2M is
/// 2 MiB/s), at least [`pace::MIN_RATE`].
pub(crate) fn parse_rate(text: &str) -> std::result::Result<u64, String> {
    let rate = crate::units::parse_size(text)?;
    if rate < pace::MIN_RATE {
        return Err(format!("'{text}' is below 1K bytes per second, at which a payload of a few MiB takes hours"));
    }
    Ok(rate)
}

/// A peer's agent as `--to ADDR` names it, reached over `link`.
pub(crate) fn peer(addr: &str, link: &Link, timeout: Duration) -> Peer {
    Peer::new(addr, link, timeout)
}

/// Prints a command's result: its one-line summary, or with `json` the whole
/// report as one JSON object. On stdout, unless stdout carries a payload.
pub(crate) fn print_report(line: &str, report: &impl Serialize, json: bool, stdout_is_payload: bool) {
    let text = if json { serde_json::to_string(report).unwrap_or_default() } else { line.to_string() };
    if stdout_is_payload {
        eprintln!("{text}");
    } else {
        let mut stdout = std::io::stdout().lock();
        // A closed stdout (ferry … | head) is no reason to fail a finished migration.
        let _ = writeln!(stdout, "{text}");
        let _ = stdout.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limit_rate_reads_bytes_per_second_with_suffixes_and_refuses_a_crawl() {
        assert_eq!(parse_rate("2M").unwrap(), 2 << 20);
        assert_eq!(parse_rate("512k").unwrap(), 512 << 10);
        assert_eq!(parse_rate("1024").unwrap(), 1024);
        assert!(parse_rate("0").unwrap_err().contains("below 1K"));
        assert!(parse_rate("100").is_err());
        assert!(parse_rate("fast").is_err());
    }
}
