//! One file per subcommand; each reads like the steps a user would describe.
//! Only here do the engine and the payload meet.

pub(crate) mod boards;
pub(crate) mod checkpoint;
pub(crate) mod doctor;
pub(crate) mod migrate;
pub(crate) mod restore;
pub(crate) mod serve;

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use serde_json::Value;

use crate::engine::{self, Engine};
use crate::error::{Error, Kind, Result};

/// What every command gets from the global options.
#[derive(Debug, Clone)]
pub(crate) struct Context {
    pub docker_socket: Option<PathBuf>,
    /// The work dir in force: --work-dir, $FERRY_WORK_DIR, or the default.
    pub work_dir: PathBuf,
    /// The work dir the user chose, if any: a board profile's yields to it.
    pub chosen_work_dir: Option<PathBuf>,
    /// Whether the fast checkpoint and restore paths may be tried (see runc.rs
    /// and restore::start_from_checkpoint); off with --portable.
    pub fast: bool,
}

impl Context {
    pub(crate) fn engine(&self) -> Result<Engine> {
        let socket = engine::socket_path(self.docker_socket.as_deref()).map_err(|m| Error::new(Kind::Usage, m))?;
        Ok(Engine::connect(&socket)?)
    }
}

/// Where a command's one-line summary or JSON goes: stdout, unless stdout
/// carries a payload.
pub(crate) fn print_report(line: &str, json: Option<&Value>, stdout_is_payload: bool) {
    let text = match json {
        Some(value) => value.to_string(),
        None => line.to_string(),
    };
    if stdout_is_payload {
        eprintln!("{text}");
    } else {
        let mut stdout = std::io::stdout().lock();
        // A closed stdout (ferry … | head) is no reason to fail a finished migration.
        let _ = writeln!(stdout, "{text}");
        let _ = stdout.flush();
    }
}

/// Seconds since `start`, rounded to milliseconds for reports.
pub(crate) fn seconds_since(start: Instant) -> f64 {
    (start.elapsed().as_secs_f64() * 1000.0).round() / 1000.0
}

/// Bytes as a person reads them.
pub(crate) fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{bytes} B") } else { format!("{value:.1} {}", UNITS[unit]) }
}

/// Looks a container up, turning "no such container" into a clear not-found.
pub(crate) fn inspect_named(engine: &Engine, name: &str) -> Result<engine::ContainerInspect> {
    engine.inspect_container(name).map_err(|e| {
        if engine::is_not_found(&e) {
            Error::new(Kind::NotFound, format!("no container named '{name}' on this host — `docker ps -a` lists them"))
        } else {
            e.into()
        }
    })
}
