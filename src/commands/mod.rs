//! One thin file per subcommand: arguments → options → one call → print.

pub(crate) mod bench;
pub(crate) mod boards;
pub(crate) mod checkpoint;
pub(crate) mod doctor;
pub(crate) mod failover;
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
use crate::transfer::{self, client::Peer};

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

/// A peer's agent as `--to ADDR --token-file FILE` name it.
pub(crate) fn peer(addr: &str, token_file: Option<&Path>, timeout: Duration) -> Result<Peer> {
    let token = token_file.map(transfer::load_token).transpose()?;
    Ok(Peer::new(addr, token, timeout))
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
