//! One file per subcommand; each reads like the steps a user would describe.
//! Only here do the engine and the payload meet.

pub(crate) mod bench;
pub(crate) mod boards;
pub(crate) mod checkpoint;
pub(crate) mod doctor;
pub(crate) mod failover;
pub(crate) mod migrate;
pub(crate) mod restore;
pub(crate) mod serve;
pub(crate) mod snapshots;
pub(crate) mod replicate;

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use serde_json::Value;

use crate::board::Board;
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

    /// Loads the `--board` a command was given and what it decides for
    /// ferry's own I/O: buffer size, and work dir unless the user chose one.
    pub(crate) fn tuning(&self, board: Option<&str>) -> Result<Tuning> {
        let board = board.map(Board::load).transpose()?;
        let work_dir = match (&self.chosen_work_dir, &board) {
            (None, Some(board)) => board.work_dir.clone(),
            _ => self.work_dir.clone(),
        };
        let io_buffer = board.as_ref().map_or(DEFAULT_IO_BUFFER, Board::io_buffer);
        Ok(Tuning { board, io_buffer, work_dir })
    }
}

/// ferry's read and write buffers when no board profile says otherwise.
pub(crate) const DEFAULT_IO_BUFFER: usize = 64 * 1024;

pub(crate) struct Tuning {
    pub board: Option<Board>,
    pub io_buffer: usize,
    pub work_dir: PathBuf,
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

/// Parses a size such as `512M`, `2G`, `1048576` (binary units).
pub(crate) fn parse_size(text: &str) -> std::result::Result<u64, String> {
    let text = text.trim();
    let (number, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len()));
    let multiplier: u64 = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 1,
        "K" | "KB" | "KIB" => 1 << 10,
        "M" | "MB" | "MIB" => 1 << 20,
        "G" | "GB" | "GIB" => 1 << 30,
        "T" | "TB" | "TIB" => 1 << 40,
        other => return Err(format!("unknown size unit '{other}' in '{text}': use K, M, G or T")),
    };
    let value: u64 = number.parse().map_err(|_| format!("'{text}' is not a size such as 512M or 2G"))?;
    value.checked_mul(multiplier).ok_or_else(|| format!("size '{text}' is too large"))
}

/// Parses a duration such as `2s`, `500ms`, `5m`, `1h` (a bare number is seconds).
pub(crate) fn parse_duration(text: &str) -> std::result::Result<std::time::Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number.parse().map_err(|_| format!("'{text}' is not a duration such as 2s, 500ms or 5m"))?;
    let seconds = match unit {
        "" | "s" => value,
        "ms" => value / 1000.0,
        "m" | "min" => value * 60.0,
        "h" => value * 3600.0,
        other => return Err(format!("unknown duration unit '{other}' in '{text}': use ms, s, m or h")),
    };
    if !(0.001..=86_400.0 * 365.0).contains(&seconds) {
        return Err(format!("duration '{text}' is out of range"));
    }
    Ok(std::time::Duration::from_secs_f64(seconds))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_in_binary_units() {
        assert_eq!(parse_size("512M").unwrap(), 512 << 20);
        assert_eq!(parse_size("2g").unwrap(), 2 << 30);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert!(parse_size("12 parsecs").unwrap_err().contains("unknown size unit"));
        assert!(parse_size("M").is_err());
    }

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("2s").unwrap(), std::time::Duration::from_secs(2));
        assert_eq!(parse_duration("500ms").unwrap(), std::time::Duration::from_millis(500));
        assert_eq!(parse_duration("1m").unwrap(), std::time::Duration::from_secs(60));
        assert_eq!(parse_duration("3").unwrap(), std::time::Duration::from_secs(3));
        assert!(parse_duration("2 fortnights").is_err());
        assert!(parse_duration("0s").is_err());
    }
}
