//! Board profiles: the container caps ferry applies on a class of device, and
//! ferry's own buffer sizes and work dir there.
//!
//! The profiles in boards/ are compiled into the binary (one file to copy
//! onto a board); `--board FILE` reads another one from disk.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{Error, Kind, Result};

/// (file name, contents) of every built-in profile.
const BUILT_IN: [(&str, &str); 5] = [
    ("edge-128m.json", include_str!("../boards/edge-128m.json")),
    ("pi-zero-2w.json", include_str!("../boards/pi-zero-2w.json")),
    ("rpi3b.json", include_str!("../boards/rpi3b.json")),
    ("rpi4b.json", include_str!("../boards/rpi4b.json")),
    ("rpi5.json", include_str!("../boards/rpi5.json")),
];

const LZ4_BLOCKS_KIB: [u32; 4] = [64, 256, 1024, 4096];

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Board {
    pub name: String,
    pub description: String,
    /// Memory cap of the containers ferry creates (MemorySwap is set equal: no swap).
    pub memory_mib: u64,
    /// CPU cap of the containers ferry creates (Docker's NanoCpus / 1e9).
    pub cpus: f64,
    /// ferry's read and write buffers.
    pub io_buffer_kib: u32,
    /// lz4 block size of the payloads ferry writes.
    pub lz4_block_kib: u32,
    /// Where ferry keeps checkpoints in transit unless --work-dir says otherwise.
    pub work_dir: PathBuf,
}

impl Board {
    /// A built-in profile by name, or a JSON file when `name_or_path` is a path.
    pub(crate) fn load(name_or_path: &str) -> Result<Board> {
        let is_path = name_or_path.contains('/') || name_or_path.ends_with(".json");
        let (origin, text) = if is_path {
            let text = std::fs::read_to_string(name_or_path)
                .map_err(|e| Error::new(Kind::NotFound, format!("cannot read the board profile {name_or_path}: {e}")))?;
            (name_or_path.to_string(), text)
        } else {
            let file = format!("{name_or_path}.json");
            let Some((_, text)) = BUILT_IN.iter().find(|(f, _)| *f == file) else {
                return Err(Error::new(
                    Kind::Usage,
                    format!("no board named '{name_or_path}' — `ferry boards` lists them; or pass a profile file"),
                ));
            };
            (format!("boards/{file}"), text.to_string())
        };
        Board::parse(&origin, &text)
    }

    pub(crate) fn all() -> Vec<Board> {
        BUILT_IN.iter().filter_map(|(file, text)| Board::parse(&format!("boards/{file}"), text).ok()).collect()
    }

    fn parse(origin: &str, text: &str) -> Result<Board> {
        let board: Board = serde_json::from_str(text)
            .map_err(|e| Error::new(Kind::Usage, format!("board profile {origin}: {e}")))?;
        board.validate(origin)?;
        Ok(board)
    }

    fn validate(&self, origin: &str) -> Result<()> {
        let bad = |field: &str, value: String, allowed: &str| {
            Err(Error::new(Kind::Usage, format!("board profile {origin}: field '{field}' is {value}; allowed: {allowed}")))
        };
        if self.name.is_empty() || !self.name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return bad("name", format!("{:?}", self.name), "letters, digits and '-'");
        }
        if !(16..=65536).contains(&self.memory_mib) {
            return bad("memory_mib", self.memory_mib.to_string(), "16 to 65536");
        }
        if !(0.1..=64.0).contains(&self.cpus) {
            return bad("cpus", self.cpus.to_string(), "0.1 to 64");
        }
        if !(4..=1024).contains(&self.io_buffer_kib) {
            return bad("io_buffer_kib", self.io_buffer_kib.to_string(), "4 to 1024");
        }
        if !LZ4_BLOCKS_KIB.contains(&self.lz4_block_kib) {
            return bad("lz4_block_kib", self.lz4_block_kib.to_string(), "64, 256, 1024 or 4096");
        }
        if !self.work_dir.is_absolute() {
            return bad("work_dir", self.work_dir.display().to_string(), "an absolute path");
        }
        Ok(())
    }

    pub(crate) fn memory_bytes(&self) -> i64 {
        (self.memory_mib as i64) << 20
    }

    pub(crate) fn nano_cpus(&self) -> i64 {
        (self.cpus * 1e9).round() as i64
    }

    pub(crate) fn io_buffer(&self) -> usize {
        self.io_buffer_kib as usize * 1024
    }

    pub(crate) fn lz4_block(&self) -> lz4_flex::frame::BlockSize {
        use lz4_flex::frame::BlockSize;
        match self.lz4_block_kib {
            256 => BlockSize::Max256KB,
            1024 => BlockSize::Max1MB,
            4096 => BlockSize::Max4MB,
            _ => BlockSize::Max64KB,
        }
    }

    /// Overrides the memory and CPU caps of a container's `HostConfig`.
    /// CpuQuota/CpuPeriod are cleared: Docker refuses them beside NanoCpus.
    pub(crate) fn apply(&self, host_config: &mut crate::payload::HostLimits) {
        host_config.memory = self.memory_bytes();
        host_config.memory_swap = self.memory_bytes();
        host_config.nano_cpus = self.nano_cpus();
        host_config.cpu_quota = 0;
        host_config.cpu_period = 0;
    }
}

/// ferry's read and write buffers when no board profile says otherwise.
pub(crate) const DEFAULT_IO_BUFFER: usize = 64 * 1024;

/// What a `--board` decides for ferry's own I/O, with the defaults where no
/// board is given: every layer that reads, writes or packs takes one of these.
#[derive(Debug, Clone)]
pub(crate) struct Tuning {
    pub board: Option<Board>,
    pub io_buffer: usize,
    pub lz4_block: lz4_flex::frame::BlockSize,
    /// Where checkpoints in transit go: the user's choice, else the board's, else the default.
    pub work_dir: PathBuf,
}

impl Tuning {
    /// `chosen_work_dir` is the user's own (--work-dir, $FERRY_WORK_DIR): a
    /// board profile's work dir yields to it, and `default_work_dir` to both.
    pub(crate) fn new(board: Option<Board>, chosen_work_dir: Option<&Path>, default_work_dir: &Path) -> Tuning {
        let work_dir = match (chosen_work_dir, &board) {
            (Some(chosen), _) => chosen.to_path_buf(),
            (None, Some(board)) => board.work_dir.clone(),
            (None, None) => default_work_dir.to_path_buf(),
        };
        Tuning {
            io_buffer: board.as_ref().map_or(DEFAULT_IO_BUFFER, Board::io_buffer),
            lz4_block: board.as_ref().map_or(crate::payload::LZ4_BLOCK, Board::lz4_block),
            board,
            work_dir,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_built_in_profile_is_valid() {
        assert_eq!(Board::all().len(), BUILT_IN.len());
        for name in ["rpi3b", "rpi4b", "rpi5", "pi-zero-2w", "edge-128m"] {
            let board = Board::load(name).unwrap();
            assert_eq!(board.name, name, "file name and name field agree");
        }
        let edge = Board::load("edge-128m").unwrap();
        assert_eq!(edge.memory_bytes(), 128 << 20);
        assert_eq!(edge.nano_cpus(), 1_000_000_000);
    }

    #[test]
    fn a_bad_field_names_the_file_the_field_and_the_range() {
        let text = include_str!("../boards/edge-128m.json").replace("\"memory_mib\": 128", "\"memory_mib\": 8");
        let error = Board::parse("my-board.json", &text).unwrap_err().to_string();
        assert_eq!(error, "board profile my-board.json: field 'memory_mib' is 8; allowed: 16 to 65536");
        let text = include_str!("../boards/edge-128m.json").replace("\"lz4_block_kib\": 64", "\"lz4_block_kib\": 100");
        let error = Board::parse("b.json", &text).unwrap_err().to_string();
        assert!(error.contains("'lz4_block_kib' is 100; allowed: 64, 256, 1024 or 4096"), "{error}");
        let text = include_str!("../boards/edge-128m.json").replace("\"cpus\"", "\"cpu\"");
        assert!(Board::parse("c.json", &text).unwrap_err().to_string().contains("c.json"));
    }

    #[test]
    fn unknown_board_names_point_to_the_list() {
        let error = Board::load("cray-1").unwrap_err();
        assert_eq!(error.kind, Kind::Usage);
        assert!(error.message.contains("ferry boards"));
    }

    #[test]
    fn caps_replace_the_manifests_limits() {
        let mut limits = crate::payload::HostLimits { memory: 1 << 30, cpu_quota: 50_000, ..Default::default() };
        Board::load("edge-128m").unwrap().apply(&mut limits);
        assert_eq!((limits.memory, limits.memory_swap, limits.nano_cpus, limits.cpu_quota), (128 << 20, 128 << 20, 1_000_000_000, 0));
    }
}
