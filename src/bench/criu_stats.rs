//! CRIU's own statistics: the `stats-dump` and `stats-restore` images it
//! leaves in its work dir, as Podman's `--print-stats` shows them.
//!
//! An image is two magic words (IMG_SERVICE 0x55105940, STATS 0x57093306), a
//! little-endian u32 size, then one protobuf `stats_entry`
//! (criu/images/stats.proto): field 1 `dump_stats_entry`, field 2
//! `restore_stats_entry`. Only varint fields are used, decoded here by hand.

use std::path::Path;

use serde::Serialize;

const IMG_SERVICE: u32 = 0x5510_5940;
const STATS_MAGIC: u32 = 0x5709_3306;

/// `dump_stats_entry`: times in microseconds.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub(crate) struct DumpStats {
    pub freezing_time_us: u64,
    /// How long the app's processes were frozen: the figure edge users care about.
    pub frozen_time_us: u64,
    pub memdump_time_us: u64,
    pub memwrite_time_us: u64,
    pub pages_scanned: u64,
    pub pages_written: u64,
}

/// `restore_stats_entry`: times in microseconds.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub(crate) struct RestoreStats {
    pub forking_time_us: u64,
    pub restore_time_us: u64,
    pub pages_restored: u64,
}

pub(crate) fn read_dump(path: &Path) -> Option<DumpStats> {
    let fields = message_fields(&std::fs::read(path).ok()?, 1)?;
    let get = |n| fields.iter().find(|(f, _)| *f == n).map_or(0, |(_, v)| *v);
    Some(DumpStats {
        freezing_time_us: get(1),
        frozen_time_us: get(2),
        memdump_time_us: get(3),
        memwrite_time_us: get(4),
        pages_scanned: get(5),
        pages_written: get(7),
    })
}

pub(crate) fn read_restore(path: &Path) -> Option<RestoreStats> {
    let fields = message_fields(&std::fs::read(path).ok()?, 2)?;
    let get = |n| fields.iter().find(|(f, _)| *f == n).map_or(0, |(_, v)| *v);
    Some(RestoreStats { forking_time_us: get(3), restore_time_us: get(4), pages_restored: get(5) })
}

/// The varint fields of the sub-message `which` of a stats image.
fn message_fields(image: &[u8], which: u64) -> Option<Vec<(u64, u64)>> {
    let word = |at: usize| image.get(at..at + 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
    if word(0)? != IMG_SERVICE || word(4)? != STATS_MAGIC {
        return None;
    }
    let size = word(8)? as usize;
    let entry = image.get(12..12 + size)?;
    let mut at = 0;
    while at < entry.len() {
        let key = varint(entry, &mut at)?;
        let (field, wire) = (key >> 3, key & 7);
        match wire {
            0 => {
                varint(entry, &mut at)?;
            }
            2 => {
                let len = varint(entry, &mut at)? as usize;
                let body = entry.get(at..at + len)?;
                at += len;
                if field == which {
                    return varint_fields(body);
                }
            }
            _ => return None,
        }
    }
    None
}

fn varint_fields(message: &[u8]) -> Option<Vec<(u64, u64)>> {
    let mut fields = Vec::new();
    let mut at = 0;
    while at < message.len() {
        let key = varint(message, &mut at)?;
        if key & 7 != 0 {
            return None;
        }
        fields.push((key >> 3, varint(message, &mut at)?));
    }
    Some(fields)
}

fn varint(bytes: &[u8], at: &mut usize) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *bytes.get(*at)?;
        *at += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Real images CRIU 4.2 wrote here: a 16 MiB counter dumped by runc and
    /// restored by Docker.
    const DUMP: &[u8] = &[
        0x40, 0x59, 0x10, 0x55, 0x06, 0x33, 0x09, 0x57, 0x25, 0x00, 0x00, 0x00, 0x0a, 0x23, 0x08, 0xa3, 0x03, 0x10,
        0x90, 0xc2, 0x03, 0x18, 0xd1, 0x37, 0x20, 0xa3, 0x2e, 0x28, 0x99, 0x20, 0x30, 0x00, 0x38, 0x92, 0x20, 0x40,
        0x00, 0x48, 0x00, 0x50, 0x08, 0x58, 0x08, 0x60, 0x00, 0x68, 0x00, 0x70, 0x00,
    ];
    const RESTORE: &[u8] = &[
        0x40, 0x59, 0x10, 0x55, 0x06, 0x33, 0x09, 0x57, 0x0f, 0x00, 0x00, 0x00, 0x12, 0x0d, 0x08, 0x00, 0x10, 0x00,
        0x18, 0x01, 0x20, 0xb2, 0x9a, 0x0d, 0x28, 0x92, 0x20,
    ];

    #[test]
    fn decodes_real_dump_and_restore_stats() {
        let scratch = crate::testing::TempDir::new("stats");
        let dir = scratch.path();
        std::fs::write(dir.join("stats-dump"), DUMP).unwrap();
        std::fs::write(dir.join("stats-restore"), RESTORE).unwrap();
        let dump = read_dump(&dir.join("stats-dump")).unwrap();
        assert_eq!(dump.frozen_time_us, 57_616);
        assert_eq!(dump.freezing_time_us, 419);
        assert_eq!(dump.pages_written, 4114);
        let restore = read_restore(&dir.join("stats-restore")).unwrap();
        assert_eq!(restore.restore_time_us, 216_370);
        assert_eq!(restore.pages_restored, 4114);
        assert!(read_restore(&dir.join("stats-dump")).is_none(), "a dump image has no restore entry");
        std::fs::write(dir.join("garbage"), b"not an image at all").unwrap();
        assert!(read_dump(&dir.join("garbage")).is_none());
    }
}
